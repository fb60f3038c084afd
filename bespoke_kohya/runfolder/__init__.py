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

A run folder travels (a `results.tar.gz` from a rented box, a friend's run for `report
--compare`), so everything in it is untrusted input: its files are opened only as regular
files inside the run, never through a symbolic link (`bespoke_kohya.regular`), each JSON
file is size-bounded and checked by its schema, and the folders the tool writes into are
refused when they are links (`check_layout`), so nothing is ever written outside the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..atomic import write_json_atomic
from ..regular import no_links_below, open_regular, read_regular

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

# Bounds on what a run file may hold, far above anything bespoke-kohya writes, so a tampered file is
# refused in one line instead of filling memory. Every engine's preset caps its epochs at MAX_EPOCH.
MAX_EPOCH = 1000
MAX_JSON_BYTES = 64 * 1024 * 1024  # run.json, samples.json, bundle.json, reproduce.json, metrics.json
MAX_CSV_BYTES = 256 * 1024 * 1024  # logs/loss.csv: ~50 bytes a step, so millions of steps

# The folders the tool reads from and writes into: none may be a link (it would lead reads and writes out of the run).
LAYOUT_DIRS = (CONFIG, DATA, CHECKPOINTS, LOGS, TENSORBOARD, SAMPLES, f"{SAMPLES}/{ADHOC}", REPORT)
# Fix of a link or special file inside a run.
LAYOUT_FIX = "a run folder holds only regular files and folders: replace it by the real one (or unpack the run again)"


def check_layout(run_dir: Path) -> None:
    """Refuse a run whose folders (config/, data/, checkpoints/, logs/, samples/, report/ …) are links or special files."""
    for rel in LAYOUT_DIRS:
        no_links_below(Path(run_dir), Path(run_dir) / rel, LAYOUT_FIX)


def epoch_number(key: Any, low: int = 1) -> int:
    """An epoch key of a run file ("3") as a number from ``low`` to MAX_EPOCH; ValueError saying why otherwise.

    Only plain decimal digits: int() would also take " 3", "+3", "3_0" and "٣", and a huge
    number of digits takes quadratic time to convert.
    """
    text = str(key)
    if not (isinstance(key, (str, int)) and not isinstance(key, bool) and 0 < len(text) <= 4 and text.isascii() and text.isdigit()):
        raise ValueError(f"epoch {key!r} is not a whole number from {low} to {MAX_EPOCH}")
    number = int(text)
    if not low <= number <= MAX_EPOCH or text != str(number):  # "01" and "1" would be two keys for one epoch
        raise ValueError(f"epoch {key!r} is not a whole number from {low} to {MAX_EPOCH}")
    return number


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


def load_object(path: Path, fix: str, newest: int | None = None, *, root: Path | None = None) -> dict[str, Any] | None:
    """A JSON object file, or None when there is none; a damaged or newer one is a one-line UserError ending in ``fix``.

    ``root``: the run folder it lies in; no component below it may be a link. The file itself is
    opened as a regular file only (no link, FIFO or device) and refused over MAX_JSON_BYTES.
    """
    if root is not None:
        no_links_below(Path(root), path, LAYOUT_FIX)
    raw = read_regular(path, limit=MAX_JSON_BYTES, what="JSON file", fix=fix)
    if raw is None:
        return None
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
    check_layout(run_dir)
    doc = load_object(run_dir / RUN_JSON, "restore it from a copy or render the run again", newest=RUN_VERSION, root=run_dir)
    if doc is None:
        raise UserError(f"{run_dir}: not a run directory (no run.json); pass a folder made by `bespoke-kohya train`")
    return doc


def write_run_document(run_dir: Path, doc: dict[str, Any]) -> None:
    """Replace run.json atomically (stamping the format version)."""
    write_json_atomic(Path(run_dir) / RUN_JSON, {"version": RUN_VERSION, **{k: v for k, v in doc.items() if k != "version"}})


def samples_document(run_dir: Path) -> dict[str, Any] | None:
    """samples/samples.json as a plain dict (checked like run.json), or None before the first `sample`."""
    fix = f"delete it (and the epoch-* folders beside it) and run `bespoke-kohya sample --run {shlex.quote(str(run_dir))}` again"
    path = Path(run_dir) / SAMPLES_JSON
    doc = load_object(path, fix, newest=SAMPLES_VERSION, root=run_dir)
    if doc is None:
        return None
    if not isinstance(doc.get("epochs"), dict):
        raise UserError(f"{path}: has no 'epochs' table, so it was not written by `sample`; {fix}")
    for table in ("epochs", "adhoc"):
        if not isinstance(doc.get(table) or {}, dict):
            raise UserError(f"{path}: {table}: expected a table of epoch → images, found {type(doc[table]).__name__}; {fix}")
        for key in doc.get(table) or {}:
            try:
                epoch_number(key, low=0)
            except ValueError as exc:
                raise UserError(f"{path}: {table}: {exc}; {fix}") from None
    return doc


def epoch_checkpoints(run: dict[str, Any], run_dir: Path | None = None) -> dict[int, str]:
    """{epoch: checkpoint path relative to the run} recorded in a run.json document; a bad epoch key is one line."""
    epochs = run.get("epochs") or {}
    where = f"{Path(run_dir) / RUN_JSON}" if run_dir is not None else RUN_JSON
    if not isinstance(epochs, dict):
        raise UserError(f"{where}: epochs: expected a table of epoch → checkpoint, found {type(epochs).__name__}; restore it from a copy or render the run again")
    out = {}
    for key, value in epochs.items():
        try:
            out[epoch_number(key)] = str(value)
        except ValueError as exc:
            raise UserError(f"{where}: epochs: {exc}; restore it from a copy or render the run again") from None
    return out


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
    todo = [e for e, checkpoint in epoch_checkpoints(run_document(run_dir), run_dir).items() if not epoch_drawn(sampled.get(str(e)), checkpoint=checkpoint)]
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
    doc = load_object(Path(run_dir) / BUNDLE_JSON, "unpack the bundle again", root=run_dir)
    if doc is None:
        raise UserError(f"{Path(run_dir) / BUNDLE_JSON}: not found; is this a bespoke-kohya run folder (unpacked from a bundle)?")
    return doc


def write_bundle_document(run_dir: Path, doc: dict[str, Any]) -> None:
    write_json_atomic(Path(run_dir) / BUNDLE_JSON, doc)


METRICS_JSON = "report/metrics.json"


def metrics_document(run_dir: Path) -> dict[str, Any] | None:
    """The last report's metrics.json, or None when absent, damaged, a link or a special file: it is only a cache."""
    try:
        return load_object(Path(run_dir) / METRICS_JSON, "", root=run_dir)
    except UserError:
        return None


def reproduce_document(run_dir: Path) -> dict[str, Any] | None:
    """reproduce.json (the checklist table), if the run has one."""
    return load_object(Path(run_dir) / REPRODUCE_JSON, "run `bespoke-kohya reproduce` again", root=run_dir)


def write_reproduce_document(run_dir: Path, doc: dict[str, Any]) -> None:
    write_json_atomic(Path(run_dir) / REPRODUCE_JSON, doc)


def file_sha256(path: Path, what: str = "checkpoint") -> str:
    """SHA-256 of a run file (a checkpoint), so samples of a since-retrained epoch can be told apart; UserError if unreadable."""
    digest = hashlib.sha256()
    fix = f"restore the {what} file from a copy of the run or train that epoch again"
    # Links are followed (the caller checked the path resolves inside the run); a FIFO or device is refused, never waited on.
    fd = open_regular(path, follow=True, fix=fix)
    if fd is None:
        raise UserError(f"{path}: {what} file not found; check run.json's checkpoints or train the run first")
    try:
        with os.fdopen(fd, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise UserError(f"{path}: cannot read this {what} file ({exc.strerror or exc}); {fix}") from None
    return digest.hexdigest()
