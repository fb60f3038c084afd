"""`python -m bespoke_kohya.bundle`: what go.sh asks inside an unpacked bundle, in the standard library only.

go.sh runs it straight from the bundled wheel, before this package's dependencies (rich,
pydantic, torch) are installed: whether each stage is done, the run's pre-flight, the engine's
tools (the command that installs them and the environment that finds them), its base model,
the interpreter that must see the GPU, and packing the results. What is engine-specific comes
from the engine's optional ``gosh.py`` (found through the registry); an engine without one
has no tools, no pre-flight and no base outside the run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

from ..engines import engine_hooks
from ..errors import UserError
from ..runfolder import INSTALL_DONE, REPORT, RESULTS, RUN_JSON, SAMPLES_JSON, Status, bundle_document, epoch_checkpoints, run_document, unsampled_epochs

STAGES = ("install", "tools", "base", "train", "sample", "report", "results")
# `state` exits with this when a stage still has work to do (0: done; 2: a UserError).
NOT_DONE = 10


class StageState(NamedTuple):
    """Whether a go.sh stage is complete, and why (one line for the terminal)."""

    done: bool
    reason: str


def human_size(size: int) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _hooks(record: dict[str, Any]) -> ModuleType | None:
    """The run's engine's go.sh hooks (its gosh.py), or None when it has none."""
    return engine_hooks(str(record.get("engine") or (record.get("resolved") or {}).get("engine")), "gosh")


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else 0.0


def stage_state(run_dir: Path, stage: str) -> StageState:
    """Whether `stage` of go.sh is already done in `run_dir`, and why (checks real state, not only markers)."""
    return StageState(*_stage_state(run_dir, stage))


def _stage_state(run_dir: Path, stage: str) -> tuple[bool, str]:
    if stage not in STAGES:
        raise UserError(f"stage {stage!r}: expected one of {', '.join(STAGES)}")
    bundle = bundle_document(run_dir)
    record = run_document(run_dir)
    hooks = _hooks(record)
    epochs = epoch_checkpoints(record, run_dir)
    if stage == "install":
        wheel = bundle.get("wheel")
        if not (run_dir / ".venv" / "bin" / "bespoke-kohya").is_file():
            return False, ".venv has no bespoke-kohya yet"
        marker = run_dir / INSTALL_DONE
        if not marker.is_file() or marker.read_text(encoding="utf-8").strip() != wheel:
            return False, f"{wheel} is not installed into .venv yet"
        return True, f"{wheel} is installed in .venv"
    if stage == "tools":
        if hooks is None or not hasattr(hooks, "tools_state"):
            return True, f"the {record.get('engine')} engine needs no tools beyond this package"
        return hooks.tools_state(run_dir, bundle)
    if stage == "base":
        return _base_state(run_dir, bundle, hooks)
    if stage == "train":
        status = record.get("status")
        if status == Status.FINISHED:
            return True, f"training finished ({len(epochs)} epoch checkpoints)"
        if status == Status.RENDERED:
            return False, "not trained yet"
        return False, f"status {status}: training continues from its last saved state"
    if stage == "sample":
        if not epochs:
            return False, "no epoch checkpoints yet (train first)"
        todo = unsampled_epochs(run_dir)
        if todo:
            return False, f"epochs {','.join(map(str, todo))} not sampled yet"
        return True, f"every epoch is sampled ({len(epochs)})"
    page = run_dir / REPORT / "index.html"
    if stage == "report":
        newest = max(_mtime(run_dir / SAMPLES_JSON), _mtime(run_dir / RUN_JSON))
        if page.is_file() and _mtime(page) >= newest and newest > 0:
            return True, "report/index.html is up to date"
        return False, "report/index.html is missing or older than the samples"
    results = run_dir / RESULTS
    if results.is_file() and page.is_file() and _mtime(results) >= _mtime(page):
        return True, f"{RESULTS} is up to date"
    return False, f"{RESULTS} is missing or older than the report"


def _base_state(run_dir: Path, bundle: dict[str, Any], hooks: ModuleType | None) -> tuple[bool, str]:
    """The base model the bundle recorded: the engine's own check when it has one, else a local path that must exist."""
    value, key = bundle.get("base"), bundle.get("base_key") or "the base"
    if hooks is not None and hasattr(hooks, "base_state"):
        return hooks.base_state(run_dir, value)
    if not value:
        return True, "the run starts from nothing outside this folder"
    path = Path(value).expanduser()
    path = path if path.is_absolute() else run_dir / path
    if path.exists():
        return True, f"local base {value} is present"
    return False, f"{key} = {value} is not on this machine: copy it to {value} in this folder, or run BASE_MODEL=/path/to/model ./go.sh"


def _preflight(run_dir: Path, cpu: bool, base: str | None) -> int:
    record = run_document(run_dir)
    hooks = _hooks(record)
    if hooks is None or not hasattr(hooks, "preflight"):
        print(f"  ok: the {record.get('engine')} engine needs no pre-flight")
        return 0
    return int(hooks.preflight(run_dir, record, cpu=cpu, base=base, before_install=True))


def _tools_command(run_dir: Path) -> list[str]:
    hooks = _hooks(run_document(run_dir))
    if hooks is None or not hasattr(hooks, "tools_command"):
        return []
    args = [str(a) for a in hooks.tools_command(run_dir, bundle_document(run_dir))]
    if any("\n" in a for a in args):  # go.sh reads one argument a line
        raise UserError(f"the engine's install command has an argument with a line break: {args!r}")
    return args


def _simple(run_dir: Path, hook: str, default: Any) -> Any:
    hooks = _hooks(run_document(run_dir))
    return getattr(hooks, hook)(run_dir) if hooks is not None and hasattr(hooks, hook) else default


def main(argv: list[str] | None = None) -> int:
    """The helper go.sh calls inside an unpacked bundle (standard library only)."""
    parser = argparse.ArgumentParser(prog="python -m bespoke_kohya.bundle", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("state", help=f"exit 0 when a stage is done, {NOT_DONE} when not; print why")
    p.add_argument("run", type=Path)
    p.add_argument("stage", choices=STAGES)
    p = sub.add_parser("preflight", help="the run's checks before anything is installed; exit 1 when one fails")
    p.add_argument("run", type=Path)
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--base", default=None)
    for name, text in (("unsampled", "comma-separated epochs that have a checkpoint but no samples"),
                       ("tools-command", "the arguments after `bespoke-kohya` that install the engine's tools, one a line (none: no tools)"),
                       ("tools-env", "KEY=VALUE lines the later stages need to find the engine's tools"),
                       ("gpu-python", "the interpreter whose torch must see the GPU"),
                       ("usage-env", "the engine's own go.sh settings, for --help"),
                       ("pack-results", f"write RUN/{RESULTS} to copy home")):
        sub.add_parser(name, help=text).add_argument("run", type=Path)
    p = sub.add_parser("set-base", help="train from this local base model (rewrites the engine's config and run.json)")
    p.add_argument("run", type=Path)
    p.add_argument("path")
    args = parser.parse_args(argv)
    run_dir = args.run
    try:
        if args.command == "state":
            done, why = stage_state(run_dir, args.stage)
            print(why)
            return 0 if done else NOT_DONE
        if args.command == "preflight":
            return _preflight(run_dir.resolve(), args.cpu, args.base)
        if args.command == "unsampled":
            print(",".join(map(str, unsampled_epochs(run_dir))))
        elif args.command == "tools-command":
            print("\n".join(_tools_command(run_dir.resolve())))
        elif args.command == "tools-env":
            print("\n".join(f"{k}={v}" for k, v in _simple(run_dir.resolve(), "tools_env", {}).items()))
        elif args.command == "gpu-python":
            print(_simple(run_dir.resolve(), "gpu_python", str(run_dir.resolve() / ".venv" / "bin" / "python")))
        elif args.command == "usage-env":
            hooks = _hooks(run_document(run_dir))
            print(getattr(hooks, "USAGE_ENV", "") if hooks is not None else "")
        elif args.command == "set-base":
            from .base import set_base  # needs the installed package (pydantic): go.sh runs it with .venv's python

            print(set_base(run_dir, args.path))
        else:
            from .results import pack_results

            path, size = pack_results(run_dir)
            print(f"wrote {path.name} ({human_size(size)}): copy it home and unpack it there, then `bespoke-kohya report --run {path.parent.name}`")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0
