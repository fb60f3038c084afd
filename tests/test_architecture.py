"""The house rules the code layout promises (docs/architecture.md), checked on the source itself."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bespoke_kohya"
LATER_STAGES = ("sample", "report", "bundle", "reproduce")
ENGINES = ("kohya", "pixel24")


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


# ------------------------------------------------------------------ engines own their code (issue 22)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its __init__)."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(path: Path, files: dict[str, Path]) -> set[str]:
    """The package's modules ``path`` imports (any level, inside functions and TYPE_CHECKING blocks too).

    ``from .x import y`` imports the module ``x.y`` when there is one (``from . import collect``
    does not run through the package's own __init__ twice), else ``x``.
    """
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            subs = {f"{module}.{a.name}" for a in node.names} & set(files)
            found |= subs if subs else {module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    out = set()
    for name in found:
        while name and name not in files:
            name = name.rpartition(".")[0]
        if name:
            out.add(name)
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports."""
    files = source_files()
    return {name: imported_modules(path, files) - {name} for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def outside(engine: str) -> list[Path]:
    """The package's files that are not the engine's own package."""
    own = PACKAGE / "engines" / engine
    return [p for p in sorted(PACKAGE.rglob("*.py")) if own not in p.parents]


@pytest.mark.parametrize("engine", ENGINES)
def test_nothing_outside_an_engine_imports_it(engine: str) -> None:
    # The registry finds engines by name (importlib), so no import statement names them.
    package = f"bespoke_kohya.engines.{engine}"
    hits = {p.relative_to(PACKAGE).as_posix(): sorted(m for m in imports_of(p) if m == package or m.startswith(package + "."))
            for p in outside(engine)}
    assert not {k: v for k, v in hits.items() if v}


def engine_section_uses(path: Path, engine: str) -> list[str]:
    """Lines of ``path`` reading the engine's own preset table or comparing a preset's engine with its name."""
    section = re.compile(rf"""(?<![\w.])\w+\.{engine}\b(?!\s*import)|\[["']{engine}["']\]|\.get\(["']{engine}["']""")
    branch = re.compile(rf"""\.engine\s*[!=]=|["']{engine}["']\s*(==|!=|in\b)|(==|!=)\s*["']{engine}["']""")
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        code = line.split("#", 1)[0]
        if "bespoke_kohya.engines." in code or f"engines.{engine}" in code:
            continue  # a module path (the registry, a docstring), not a preset table
        if section.search(code) or branch.search(code):
            lines.append(line.strip())
    return lines


@pytest.mark.parametrize("engine", ENGINES)
def test_no_engine_section_is_read_or_branched_on_outside_its_engine(engine: str) -> None:
    hits = {p.relative_to(PACKAGE).as_posix(): found for p in outside(engine) if (found := engine_section_uses(p, engine))}
    assert not hits, f"read the engine through bespoke_kohya.engines instead: {hits}"


def test_the_section_pattern_catches_a_reader_and_a_branch(tmp_path: Path) -> None:
    stray = tmp_path / "stray.py"
    stray.write_text('k = preset.kohya.resolution\nif preset.engine == "pixel24":\n    x = resolved.get("kohya")\n'
                     'ok = get_engine(preset.engine).describe(preset)\nREGISTRY = {"kohya": "bespoke_kohya.engines.kohya"}\n', encoding="utf-8")
    # Any comparison of a preset's engine is a branch, whichever name it compares with.
    assert engine_section_uses(stray, "kohya") == ["k = preset.kohya.resolution", 'if preset.engine == "pixel24":', 'x = resolved.get("kohya")']
    assert engine_section_uses(stray, "pixel24") == ['if preset.engine == "pixel24":']


def test_the_registry_is_one_line_per_engine_package() -> None:
    from bespoke_kohya.engines import REGISTRY, get_engine

    assert sorted(REGISTRY) == sorted(ENGINES)
    for name, package in REGISTRY.items():
        assert (PACKAGE.parent / package.replace(".", "/") / "engine.py").is_file() and get_engine(name).name == name


def test_engine_packages_import_nothing_when_a_bundle_looks_into_them() -> None:
    # go.sh's standard-library helper imports engines/<name>/gosh.py before anything is installed.
    for engine in ENGINES:
        assert imports_of(PACKAGE / "engines" / engine / "__init__.py") == set()
    stdlib_only = ["engines/__init__.py", "engines/kohya/gosh.py", "bundle/__init__.py", "bundle/__main__.py", "bundle/gohelper.py",
                   "bundle/results.py", "bundle/tarball.py", "runfolder/__init__.py", "atomic.py", "errors.py", "paths.py"]
    third_party = {"pydantic", "numpy", "torch", "PIL", "rich", "diffusers", "jinja2", "safetensors", "transformers"}
    for rel in stdlib_only:
        tree = ast.parse((PACKAGE / rel).read_text(encoding="utf-8"))
        top = {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module and not n.level}
        top |= {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        assert not top & third_party, (rel, top & third_party)


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
