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

A run packed by `bundle` for a GPU box also holds (bundle, go.sh)::

    RUN/bundle.json           what was packed      RUN/go.sh          the entry script
    RUN/wheels/*.whl          this package         RUN/base/          a packed local base model
    RUN/vendor/               the engine's tools   RUN/results.tar.gz what travels home
    RUN/logs/go-*.log         each stage's output

This module is standard-library only, because `go.sh` asks `bespoke_kohya.bundle` about a
run before anything is installed; the typed models and their readers and writers live in
`runfolder.records` (pydantic). No other module opens these files by name.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..atomic import write_json_atomic

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
# What `bundle` adds to a run, and go.sh writes on the GPU box.
BUNDLE_JSON = "bundle.json"
GO_SH = "go.sh"
WHEELS = "wheels"
BASE_DIR = "base"
VENDOR = "vendor"
RESULTS = "results.tar.gz"
INSTALL_DONE = "logs/go-install.done"  # its content: the name of the wheel installed into .venv


def epoch_folder(epoch: int) -> str:
    """``samples/epoch-NNN``'s last part: one epoch's images (epoch 0: the base model alone)."""
    return f"epoch-{epoch:03d}"


def training_folder_name(num_repeats: int, concept: str) -> str:
    """``data/``'s one folder: kohya's DreamBooth convention `<repeats>_<concept>` (every engine trains from it)."""
    return f"{num_repeats}_{concept}"

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


def now_iso() -> str:
    """UTC time, seconds precision (every timestamp in run files)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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


# Anything, so a criterion of `epoch_drawn` is left out.
ANY: Any = object()


def epoch_drawn(entry: Any, *, checkpoint: Any = ANY, suite_id: Any = ANY, pairs: list[tuple[str, int]] | tuple = ()) -> bool:
    """Whether samples.json's ``entry`` for an epoch holds images drawn with ``checkpoint`` (None: the base alone),
    under ``suite_id``, covering every (prompt id, seed) of ``pairs``; criteria left as ANY are not checked.

    The one answer to "is this epoch sampled" for `sample`, `train`, `report` and go.sh.
    """
    if not isinstance(entry, dict) or not entry.get("images") or not isinstance(entry["images"], list):
        return False
    if checkpoint is not ANY and entry.get("checkpoint") != checkpoint:
        return False
    if suite_id is not ANY and entry.get("suite_id") != suite_id:
        return False
    have = {(img.get("prompt_id"), img.get("seed")) for img in entry["images"] if isinstance(img, dict)}
    return all(pair in have for pair in pairs)


def unsampled_epochs(run_dir: Path, base: bool = False) -> list[int]:
    """Recorded epochs whose checkpoint has no drawn entry in samples/samples.json yet, and 0 (the base alone) when
    ``base`` and it was never drawn; sorted."""
    sampled = (samples_document(run_dir) or {}).get("epochs", {})
    todo = [e for e, checkpoint in epoch_checkpoints(run_document(run_dir)).items() if not epoch_drawn(sampled.get(str(e)), checkpoint=checkpoint)]
    if base and not epoch_drawn(sampled.get("0"), checkpoint=None):
        todo.append(0)
    return sorted(todo)


def inside_run(run_dir: Path, rel: str) -> str | None:
    """A path a run file records, as a POSIX path inside the run; None when it leads outside (absolute, `..`, a link out)."""
    root = Path(run_dir).resolve()
    try:
        return (root / rel).resolve().relative_to(root).as_posix()
    except (ValueError, OSError, RuntimeError):
        return None


def bundle_document(run_dir: Path) -> dict[str, Any]:
    """bundle.json of a run unpacked from a bundle (what was packed, for go.sh); a UserError when it is missing or damaged."""
    doc = load_object(Path(run_dir) / BUNDLE_JSON, "unpack the bundle again")
    if doc is None:
        raise UserError(f"{Path(run_dir) / BUNDLE_JSON}: not found; is this a bespoke-kohya run folder (unpacked from a bundle)?")
    return doc


def write_bundle_document(run_dir: Path, doc: dict[str, Any]) -> None:
    write_json_atomic(Path(run_dir) / BUNDLE_JSON, doc)


def reproduce_document(run_dir: Path) -> dict[str, Any] | None:
    """reproduce.json (the checklist table), if the run has one."""
    return load_object(Path(run_dir) / REPRODUCE_JSON, "run `bespoke-kohya reproduce` again")


def write_reproduce_document(run_dir: Path, doc: dict[str, Any]) -> None:
    write_json_atomic(Path(run_dir) / REPRODUCE_JSON, doc)


def file_sha256(path: Path, what: str = "checkpoint") -> str:
    """SHA-256 of a run file (a checkpoint), so samples of a since-retrained epoch can be told apart; UserError if unreadable."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        raise UserError(f"{path}: {what} file not found; check run.json's checkpoints or train the run first") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not a {what} file; restore the file from a copy of the run or train that epoch again") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read this {what} file ({exc.strerror or exc})") from None
    return digest.hexdigest()
