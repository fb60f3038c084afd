"""The run folder contract: its layout, the status of a run, and raw document IO.

A run folder is made by `train` (via `render`) and read by every later stage::

    RUN/run.json              RunRecord: what was trained, how, its status and epoch checkpoints
    RUN/config/               train.toml, dataset.toml, preset.json (render)
    RUN/data/                 the prepared training images (render)
    RUN/checkpoints/          one file per epoch (the engine)
    RUN/logs/loss.csv         LossRow per optimiser step; logs/train.log
    RUN/logs/validation.csv   ValidationRow per epoch: the held-out images' loss (dataset.validation_split)
    RUN/samples/samples.json  Samples: the suite and each epoch's images (sample); `adhoc`: --prompt draws
    RUN/samples/adhoc/        ad-hoc prompts' images, apart from the suite the report compares
    RUN/.train.lock           flock held by the process training the run; .sample.lock: sampling it (runfolder.lock)
    RUN/report/               index.html + metrics.json (report)
    RUN/reproduce.json        the checklist table (reproduce)

This module is standard-library only, because `go.sh` asks `bespoke_kohya.bundle` about a
run before anything is installed; the typed models and their readers and writers live in
`runfolder.records` (pydantic). No other module opens these files by name.
"""

from __future__ import annotations

import json
import shlex
from enum import StrEnum
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..jsonfile import write_json_atomic

RUN_JSON = "run.json"
CONFIG = "config"
DATA = "data"
CHECKPOINTS = "checkpoints"
LOGS = "logs"
TRAIN_LOG = "logs/train.log"
LOSS_CSV = "logs/loss.csv"
VALIDATION_CSV = "logs/validation.csv"
TENSORBOARD = "logs/tensorboard"
SAMPLES = "samples"
SAMPLES_JSON = "samples/samples.json"
ADHOC = "adhoc"  # samples/adhoc/epoch-NNN/: ad-hoc prompts (`sample --prompt`), kept apart from the suite
REPORT = "report"
REPRODUCE_JSON = "reproduce.json"

# Format versions this bespoke-kohya writes; a file without one is version 1 (written before versions).
RUN_VERSION = 1
SAMPLES_VERSION = 1


class Status(StrEnum):
    """A run's training status: rendered → running → finished | failed | interrupted (dry-run: rendered, command shown)."""

    RENDERED = "rendered"
    DRY_RUN = "dry-run"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


NOT_TRAINED = (Status.RENDERED, Status.DRY_RUN)


def load_object(path: Path, fix: str, newest: int | None = None) -> dict[str, Any] | None:
    """A JSON object file, or None when there is none; a damaged or newer one is a one-line UserError ending in ``fix``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc}); {fix}") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text, so not written by bespoke-kohya; {fix}") from None
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); {fix}") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: expected a JSON object, found {type(doc).__name__}; {fix}")
    version = doc.get("version", 1)
    if newest is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
        raise UserError(f"{path}: format version {version!r} is not a positive whole number; {fix}")
    if newest is not None and version > newest:
        raise UserError(f"{path}: format version {version} was written by a newer bespoke-kohya (this one reads up to {newest}); upgrade bespoke-kohya")
    return doc


def run_document(run_dir: Path) -> dict[str, Any]:
    """run.json as a plain dict (checked: an object, UTF-8, not newer), for standard-library-only callers."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory; pass a folder made by `bespoke-kohya train`")
    doc = load_object(run_dir / RUN_JSON, "restore it from a copy or render the run again", newest=RUN_VERSION)
    if doc is None:
        raise UserError(f"{run_dir}: not a run directory (no run.json); pass a folder made by `bespoke-kohya train`")
    return doc


def write_run_document(run_dir: Path, doc: dict[str, Any]) -> None:
    """Replace run.json atomically (stamping the format version)."""
    write_json_atomic(Path(run_dir) / RUN_JSON, {"version": RUN_VERSION, **{k: v for k, v in doc.items() if k != "version"}})


def samples_document(run_dir: Path) -> dict[str, Any] | None:
    """samples/samples.json as a plain dict (checked like run.json), or None before the first `sample`."""
    fix = f"delete it (and the epoch-* folders beside it) and run `bespoke-kohya sample --run {shlex.quote(str(run_dir))}` again"
    doc = load_object(Path(run_dir) / SAMPLES_JSON, fix, newest=SAMPLES_VERSION)
    if doc is not None and not isinstance(doc.get("epochs"), dict):
        raise UserError(f"{Path(run_dir) / SAMPLES_JSON}: has no 'epochs' table, so it was not written by `sample`; {fix}")
    return doc


def epoch_checkpoints(run: dict[str, Any]) -> dict[int, str]:
    """{epoch: checkpoint path relative to the run} recorded in a run.json document."""
    return {int(k): str(v) for k, v in (run.get("epochs") or {}).items()}


def inside_run(run_dir: Path, rel: str) -> str | None:
    """A path a run file records, as a POSIX path inside the run; None when it leads outside (absolute, `..`, a link out)."""
    root = Path(run_dir).resolve()
    try:
        return (root / rel).resolve().relative_to(root).as_posix()
    except (ValueError, OSError, RuntimeError):
        return None


def recorded_dataset(run_dir: Path, run: dict[str, Any]) -> Path | None:
    """The training originals run.json names (bundles record them relative to the run), or None."""
    recorded = str((run.get("dataset") or {}).get("path") or "")
    if recorded in ("", "."):
        return None
    return Path(recorded) if Path(recorded).is_absolute() else Path(run_dir) / recorded


def reproduce_document(run_dir: Path) -> dict[str, Any] | None:
    """reproduce.json (the checklist table), if the run has one."""
    return load_object(Path(run_dir) / REPRODUCE_JSON, "run `bespoke-kohya reproduce` again")


def write_reproduce_document(run_dir: Path, doc: dict[str, Any]) -> None:
    write_json_atomic(Path(run_dir) / REPRODUCE_JSON, doc)
