"""The house rules the code layout promises (docs/architecture.md), checked on the source itself."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bespoke_kohya"
LATER_STAGES = ("sample", "report", "bundle", "reproduce", "smoke")
# Verbs that must work the same for every engine (they ask the engine registry instead).
ENGINE_NEUTRAL = ("train", "sample", "report", "smoke", "reproduce", "cli", "render", "runfolder/__init__", "runfolder/records", "engines/session")


def imports_of(path: Path) -> set[str]:
    """Every bespoke_kohya module ``path`` imports (at any level, inside functions too), as dotted names."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("bespoke_kohya")}


def modules(name: str) -> list[Path]:
    """The source files of a stage: ``name.py``, or every module of the subpackage ``name/`` (report)."""
    if (PACKAGE / name).is_dir():
        return sorted((PACKAGE / name).rglob("*.py"))
    assert (PACKAGE / f"{name}.py").is_file(), f"no module or package bespoke_kohya.{name.replace('/', '.')}"
    return [PACKAGE / f"{name}.py"]


def stage_imports(name: str) -> set[str]:
    return set().union(*(imports_of(path) for path in modules(name)))


@pytest.mark.parametrize("stage", LATER_STAGES)
def test_later_stages_import_nothing_from_train(stage: str) -> None:
    # Data flows one way: a later stage reads a run through the run contract, never through train.
    assert not {m for m in stage_imports(stage) if m == "bespoke_kohya.train" or m.startswith("bespoke_kohya.train.")}


def test_the_import_checker_sees_function_level_imports(tmp_path: Path) -> None:
    assert "bespoke_kohya.train" in stage_imports("cli")  # cli runs the train verb, inside cmd_train
    assert "bespoke_kohya.runfolder.records" in stage_imports("report")  # from report/collect.py
    assert len(modules("report")) >= 5  # the subpackage's modules, not one file


def test_the_import_checker_resolves_relative_imports_in_a_subpackage() -> None:
    # report/collect.py's `from ..runfolder import ...` is bespoke_kohya.runfolder, not bespoke_kohya.report.runfolder.
    found = imports_of(PACKAGE / "report" / "collect.py")
    assert "bespoke_kohya.runfolder" in found and not any(m.startswith("bespoke_kohya.report.runfolder") for m in found)


ENGINE_TEST = re.compile(r"""\.engine\s*[!=]=|["'](kohya|pixel24)["']\s*(==|!=|in\b)|(==|!=)\s*["'](kohya|pixel24)["']""")


@pytest.mark.parametrize("name", ENGINE_NEUTRAL)
def test_no_engine_is_branched_on_outside_the_engines(name: str) -> None:
    hits = [line.strip() for path in modules(name) for line in path.read_text(encoding="utf-8").splitlines() if ENGINE_TEST.search(line)]
    assert not hits, f"{name} branches on an engine name; ask bespoke_kohya.engines instead: {hits}"


def test_the_engine_pattern_catches_a_branch() -> None:
    assert ENGINE_TEST.search('if preset.engine == "pixel24":') and ENGINE_TEST.search('native = "pixel24" == x')
    assert not ENGINE_TEST.search('get_engine(preset.engine).native_art')


RUN_FILES = {"run.json": "RUN_JSON", "samples.json": "SAMPLES_JSON", "loss.csv": "LOSS_CSV", "reproduce.json": "REPRODUCE_JSON"}
IO = re.compile(r"read_text|read_bytes|write_text|write_bytes|\bopen\(|json\.loads?\(|csv\.|write_json_atomic|load_object")


def io_lines(path: Path, filename: str) -> list[str]:
    """Lines of ``path`` that read or write ``filename`` (by literal name or by the contract's constant)."""
    name = re.compile(rf"""["'][^"'\n]*{re.escape(filename)}["']|\b{RUN_FILES[filename]}\b""")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if name.search(line) and IO.search(line)]


@pytest.mark.parametrize("filename", sorted(RUN_FILES))
def test_each_run_file_is_read_and_written_only_by_the_run_contract(filename: str) -> None:
    # Other modules may name a run file (messages, modification times); only runfolder/ opens it.
    users = {path.relative_to(PACKAGE).as_posix(): io_lines(path, filename) for path in PACKAGE.rglob("*.py") if path.parent.name != "runfolder"}
    assert not {k: v for k, v in users.items() if v}


def test_the_io_pattern_catches_a_hand_written_run_file(tmp_path: Path) -> None:
    stray = tmp_path / "stray.py"
    stray.write_text('(run_dir / "run.json").write_text(json.dumps(record))\nlog(f"see {run_dir / RUN_JSON}")\n', encoding="utf-8")
    assert io_lines(stray, "run.json") == ['(run_dir / "run.json").write_text(json.dumps(record))']


def test_the_product_never_looks_beside_the_checkout() -> None:
    # Nothing outside the repository may be assumed on a user's machine (only tests use ../shared).
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert '"shared"' not in text and "parents[2]" not in text, path
