"""Typed run files: run.json, samples/samples.json and logs/loss.csv, each with one reader and one writer.

The models accept keys they do not know (``extra="allow"``), so a file written by a
same-version bespoke-kohya with more fields survives a read-modify-write. Every write is
atomic (a temporary file renamed over the old one).

Each file is a schema with the limits the presets have (epoch keys from 1 to MAX_EPOCH,
seeds within MAX_SEED, CSV rows typed cell by cell): a run folder may come from another
machine or be edited by hand, and a bad value is one UserError naming the file, the field
and what to do, never a traceback further on.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import platform
import shlex
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .. import __version__
from ..errors import UserError
from ..atomic import umask, write_atomic, write_json_atomic
from ..regular import no_links_below, read_regular, read_text
from ..settings import MAX_SEED
from . import (DATA, LAYOUT_FIX, LOSS_CSV, MAX_CSV_BYTES, MAX_EPOCH, VALIDATION_CSV, NOT_TRAINED, REPRODUCE_JSON, RUN_JSON, RUN_VERSION, SAMPLES_JSON, SAMPLES_VERSION, Status,
               epoch_number, lock, reproduce_document, run_document, samples_document, write_run_document)


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(), "bespoke_kohya": __version__}
    for dist in ("torch", "diffusers", "transformers", "accelerate"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def _problem(path: Path, exc: ValidationError, fix: str) -> UserError:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    return UserError(f"{path}: {where}: {first['msg'].removeprefix('Value error, ')}; {fix}")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


# Text fields: bounded, so a tampered file cannot make every later page or line enormous.
# (no NUL: no file name holds one, and the OS refuses it with an error of its own).
Name = Annotated[str, Field(max_length=4096, pattern=r"^[^\x00]*$")]
RelPath = Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[^\x00]+$")]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


def _epoch_table(table: dict[str, Any], low: int) -> dict[str, Any]:
    """A table keyed by epoch: every key a whole number from ``low`` to MAX_EPOCH (the presets' own cap)."""
    for key in table:
        epoch_number(key, low)  # ValueError → a validation error naming the field
    return table


# ------------------------------------------------------------------ run.json


class CaptionsRef(_Open):
    """Which captions went into data/ (the preset's dataset.captions) and what the caption lint found."""

    mode: Name = "raw"  # "raw" | "normalised"
    problems: dict[Name, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)  # caption problems by kind
    changed: Annotated[int, Field(ge=0)] | None = None  # captions the normalisation changed (normalised mode only)


class DatasetRef(_Open):
    # Where the dataset was on the machine that made the run: shown, compared, never opened (the run's own data/ is).
    path: Name = ""
    content_hash: Name | None = None
    images: Annotated[int, Field(ge=0)] | None = None
    captions: CaptionsRef | None = None  # absent in runs made before `dataset.captions`
    # Prepared image files (in data/<repeats>_<concept>/) held out from training (dataset.validation_split);
    # None in runs made before held-out validation, [] when the split is off or the folder too small.
    heldout: list[Name] | None = None


class Failure(_Open):
    cause: Name | None = None
    tail: list[Name] = Field(default_factory=list)
    recognised: bool = False  # the cause is a known one, said in one line: the tail stays in the log


class RunRecord(_Open):
    """run.json: everything needed to reproduce a run and compare its epochs."""

    version: int = RUN_VERSION
    id: Name
    preset: Name
    engine: Name
    script: Name | None = None
    resolved: dict[str, Any]
    overrides: list[Name] = Field(default_factory=list)
    dataset: DatasetRef = Field(default_factory=DatasetRef)
    versions: dict[Name, Name | None] = Field(default_factory=dict)
    status: Status
    created: Name | None = None
    epochs: dict[str, RelPath] = Field(default_factory=dict)  # "epoch" (1 to MAX_EPOCH) → checkpoint path inside the run
    command: list[Name] | None = None
    cwd: Name | None = None
    started: Name | None = None
    ended: Name | None = None
    exit_code: int | None = None
    failure: Failure | None = None

    @field_validator("epochs")
    @classmethod
    def _epoch_keys(cls, value: dict[str, str]) -> dict[str, str]:
        return _epoch_table(value, low=1)

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, value: str) -> str:
        from ..engines import engine_names

        if value not in engine_names():
            raise ValueError(f"{value[:40]!r} is not an engine this bespoke-kohya has ({', '.join(engine_names())})")
        return value

    def checkpoints(self) -> dict[int, str]:
        """{epoch: checkpoint path relative to the run}, by epoch."""
        return {int(k): v for k, v in sorted(self.epochs.items(), key=lambda kv: int(kv[0]))}

    def preset_model(self, run_dir: Path) -> Any:
        """The resolved preset the run was rendered with, as its engine's preset class (the engine reads its settings from it)."""
        from ..presets import validate_preset

        try:
            return validate_preset(self.resolved, "resolved")
        except UserError as exc:
            lines = str(exc).splitlines()  # a preset file lists every problem; a run file says the first in one line
            more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
            raise UserError(f"{Path(run_dir) / RUN_JSON}: {lines[0]}{more}; restore run.json from a copy of the run, or train a new run") from None

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


# What a `running` run whose trainer is gone was (the process could not say so itself).
GONE = "the training process ended without recording how (killed, out of memory, or the machine stopped)"


def _parse_run(run_dir: Path) -> RunRecord:
    doc = run_document(run_dir)
    try:
        return RunRecord.model_validate(doc)
    except ValidationError as exc:
        raise _problem(Path(run_dir) / RUN_JSON, exc, "restore it from a copy or render the run again") from None


def _as_interrupted(record: RunRecord) -> RunRecord:
    """A `running` record nobody trains any more: interrupted after the epochs it records (resume continues it)."""
    if record.status == Status.RUNNING:
        record.status = Status.INTERRUPTED
        record.failure = record.failure or Failure(cause=GONE)
    return record


def read_run(run_dir: Path) -> RunRecord:
    """The run.json of a run directory, or a UserError naming the file and what is wrong.

    A run that says `running` while no process holds its training lock was killed
    (SIGKILL, out of memory): it reads as `interrupted` (run.json itself is left alone).
    """
    record = _parse_run(run_dir)
    if record.status == Status.RUNNING and lock.holder(run_dir, lock.TRAIN) is None:
        _as_interrupted(record)
    return record


def write_run(run_dir: Path, record: RunRecord) -> None:
    write_run_document(run_dir, record.as_dict())


class RunHandle:
    """A run folder and its record: what an engine gets to train, resume and record epochs into."""

    def __init__(self, run_dir: Path, record: RunRecord) -> None:
        self.dir = Path(run_dir)
        self.record = record
        self._training = False  # holds the run's training lock

    @classmethod
    def open(cls, run_dir: Path) -> "RunHandle":
        return cls(Path(run_dir), read_run(run_dir))

    @classmethod
    def open_to_train(cls, run_dir: Path) -> "RunHandle":
        """The run with its training lock held (refused in one line while another process trains it)."""
        run = cls(Path(run_dir), _parse_run(run_dir))  # not a run: refused before any lock file is made
        run.claim_training()
        try:
            run.record = _as_interrupted(_parse_run(run.dir))  # read again under the lock: `running` now means killed
            if run.record.status != Status.FINISHED:  # (a finished run brought home has no data/ and needs none)
                run.check_trainable()
        except BaseException:
            run.release_training()
            raise
        return run

    def check_trainable(self) -> None:
        """What training needs besides run.json: a valid resolved preset and the prepared images in data/ (one line if not)."""
        self.record.preset_model(self.dir)
        no_links_below(self.dir, self.training_folder, LAYOUT_FIX)  # training reads every file in it: none may lead out of the run
        data = self.dir / DATA
        folders = [p for p in sorted(data.iterdir()) if p.is_dir()] if data.is_dir() else []
        if not any(any(folder.iterdir()) for folder in folders):
            raise UserError(f"{data}: the prepared training images are missing (no data/ folder, or nothing in it); restore data/ from a copy of the run, "
                            f"or train a new run with `bespoke-kohya train --preset {self.record.preset} --dataset DATASET`")

    def claim_training(self) -> None:
        """Hold the training lock until release_training() (a handle that already holds it keeps it)."""
        if not self._training:
            lock.acquire(self.dir, lock.TRAIN)
            self._training = True

    def release_training(self) -> None:
        if getattr(self, "_training", False):  # (__del__ of a half-built handle)
            lock.release(self.dir, lock.TRAIN)
            self._training = False

    def __del__(self) -> None:
        self.release_training()

    @property
    def trained(self) -> bool:
        return self.record.status not in NOT_TRAINED

    def save(self, **changes: Any) -> None:
        """Apply ``changes`` to the record and write run.json."""
        for key, value in changes.items():
            setattr(self.record, key, value)
        write_run(self.dir, self.record)

    def record_epoch(self, epoch: int, checkpoint: str) -> None:
        """An epoch's checkpoint is complete on disk: list it in run.json at once."""
        epochs = {**self.record.epochs, str(epoch): checkpoint}
        self.save(epochs=dict(sorted(epochs.items(), key=lambda kv: int(kv[0]))))

    def path(self, rel: str) -> Path:
        return self.dir / rel

    @property
    def training_folder(self) -> Path:
        """``data/<repeats>_<concept>``: the prepared images every engine trains from."""
        from .data import training_folder

        return training_folder(self.dir, self.record.resolved)

    def heldout_captions(self, files: list[str] | None = None) -> list[tuple[str, str | None]]:
        """(file, caption as trained) of each held-out image (run.json dataset.heldout, or ``files`` of them), in that order.

        The caption is the prepared ``data/<repeats>_<concept>/<stem><caption_extension>``, the
        text training would have seen. None when that file is not there (a run brought home
        without its data/, or a name that is not a plain file name) or is empty.
        """
        files = self.record.dataset.heldout or [] if files is None else files
        if not files:
            return []
        d = self.record.preset_model(self.dir).dataset
        folder = self.training_folder
        out: list[tuple[str, str | None]] = []
        for file in files:
            if Path(file).name != file or file in ("", ".", ".."):  # run.json may be edited: only plain names inside data/
                out.append((file, None))
                continue
            path = folder / Path(file).with_suffix(d.caption_extension).name
            no_links_below(self.dir, path, LAYOUT_FIX)
            text = read_text(path, what="held-out caption", fix="restore data/ from a copy of the run", follow=False)
            out.append((file, text.strip() or None if text is not None else None))
        return out


# ------------------------------------------------------------------ samples/samples.json


class GridRecord(_Open):
    """The art-pixel grid post-processing found in a full-size sample (postprocess.Grid.to_dict)."""

    pitch_x: Annotated[float, Field(allow_inf_nan=False, gt=0, le=4096)]
    pitch_y: Annotated[float, Field(allow_inf_nan=False, gt=0, le=4096)]
    offset_x: Annotated[float, Field(allow_inf_nan=False, ge=-4096, le=4096)]
    offset_y: Annotated[float, Field(allow_inf_nan=False, ge=-4096, le=4096)]
    score: Annotated[float, Field(allow_inf_nan=False, ge=0, le=1)] | None = None


class SampleImage(_Open):
    prompt_id: Annotated[str, Field(min_length=1, max_length=200)]
    prompt: Name = ""
    seed: Seed
    full: RelPath | None = None
    art: RelPath | None = None
    preview: RelPath | None = None
    grid: GridRecord | None = None
    heldout: Name | None = None  # a held-out caption's draw: the prepared image file (run.json dataset.heldout) the prompt is the caption of


class SampledEpoch(_Open):
    checkpoint: RelPath | None = None
    sha256: Name | None = None
    base_only: bool = False
    suite_id: Name | None = None
    images: list[SampleImage] = Field(default_factory=list)


class SuitePrompt(_Open):
    """One prompt of the suite (checked, then kept as the plain {id, prompt} table samples.json holds)."""

    id: Annotated[str, Field(min_length=1, max_length=200)]
    prompt: Name = ""


class Samples(_Open):
    """samples.json: the prompt × seed suite and, per epoch (0: the base alone, up to MAX_EPOCH), the images drawn with it."""

    version: int = SAMPLES_VERSION
    epochs: dict[str, SampledEpoch] = Field(default_factory=dict)
    settings: dict[str, Any] | None = None
    prompts: list[dict[str, Any]] | None = None  # each a SuitePrompt
    seeds: list[Seed] | None = None
    suite_id: Name | None = None
    # `sample --prompt`: prompts tried beside the suite (samples/adhoc/), never compared by the report.
    adhoc: dict[str, SampledEpoch] = Field(default_factory=dict)
    # sha256 of the document as read (canonical JSON): the report says which samples its numbers came from.
    digest: str | None = Field(default=None, exclude=True)

    @field_validator("epochs", "adhoc")
    @classmethod
    def _epoch_keys(cls, value: dict[str, SampledEpoch]) -> dict[str, SampledEpoch]:
        return _epoch_table(value, low=0)

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        return None if value is None else [SuitePrompt.model_validate(p).model_dump() for p in value]

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=False, exclude={"digest"})


def read_samples(run_dir: Path) -> Samples | None:
    """samples/samples.json, or None before the first `sample`; damaged or newer files are a UserError."""
    doc = samples_document(run_dir)
    if doc is None:
        return None
    path = Path(run_dir) / SAMPLES_JSON
    try:
        samples = Samples.model_validate(doc)
    except ValidationError as exc:
        raise _problem(path, exc, f"delete it (and the epoch-* folders beside it) and run `bespoke-kohya sample --run {shlex.quote(str(run_dir))}` again") from None
    # The digest is of the document as validated (canonical JSON), not of a second read that could differ from the first.
    samples.digest = hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()
    return samples


def write_samples(run_dir: Path, samples: Samples) -> None:
    write_json_atomic(Path(run_dir) / SAMPLES_JSON, samples.as_dict())


# ------------------------------------------------------------------ reproduce.json


class ReproduceStep(_Open):
    """One row of the `reproduce` checklist (reproduce.Step)."""

    step: Annotated[int, Field(ge=0, le=100)]
    name: Name = ""
    check: Name = ""
    status: Annotated[str, Field(max_length=40)]
    evidence: Name = ""
    reason: Name = ""
    command: Name = ""


class ReproduceTable(_Open):
    steps: Annotated[list[ReproduceStep], Field(max_length=100)] = Field(default_factory=list)
    exit_code: int | None = None


def read_reproduce(run_dir: Path) -> ReproduceTable | None:
    """reproduce.json (the checklist table) if the run has one; a damaged one is one line naming the field."""
    doc = reproduce_document(run_dir)
    if doc is None:
        return None
    try:
        return ReproduceTable.model_validate(doc)
    except ValidationError as exc:
        raise _problem(Path(run_dir) / REPRODUCE_JSON, exc, "delete it, or run `bespoke-kohya reproduce` again") from None


# ------------------------------------------------------------------ logs/loss.csv

# Bounds of a CSV cell, far above what any run writes (a million steps; a loss or rate of any sane size).
MAX_STEP = 1_000_000_000
Step = Annotated[int, Field(ge=0, le=MAX_STEP)]
Epoch = Annotated[int, Field(ge=0, le=MAX_EPOCH)]
Number = float  # any float, NaN and inf too: a diverged step is a fact to show (the report leaves it out of the plot)


class LossRow(BaseModel):
    """One optimiser step: its loss, the epoch's running average and the learning rate (None: not recorded)."""

    model_config = ConfigDict(extra="forbid")

    step: Step
    epoch: Epoch | None = None
    loss: Number | None = None
    avg_loss: Number | None = None
    lr: Number | None = None


LOSS_FIELDS = list(LossRow.model_fields)


def _cell(key: str, value: Any) -> str:
    if value is None or value == "":
        return ""
    if key in ("step", "epoch"):
        return str(int(value))
    return f"{float(value):.6g}" if key == "lr" else f"{float(value):.6f}"


def _remove_stale(path: Path) -> None:
    """Temporary copies of ``path`` a killed writer left (``.loss.csv.XXXX``); called under the training lock, so none is in use."""
    for stale in path.parent.glob(f".{path.name}.*") if path.parent.is_dir() else []:
        if stale.is_file() and not stale.is_symlink():
            stale.unlink(missing_ok=True)


class LossLog:
    """Writes logs/loss.csv row by row (flushed per epoch) into a temporary file renamed into place on close."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOSS_CSV
        no_links_below(Path(run_dir), self.path.parent, LAYOUT_FIX)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(self.path)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        self._fh = os.fdopen(fd, "w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._fh)
        self._csv.writerow(LOSS_FIELDS)

    def append(self, row: LossRow) -> None:
        self._csv.writerow([_cell(k, getattr(row, k)) for k in LOSS_FIELDS])

    def flush(self) -> None:
        """Make the rows so far visible as logs/loss.csv (an interrupted run keeps its curve)."""
        self._fh.flush()
        with open(self._tmp, "rb") as src:
            rows = src.read()
        # A fresh temporary name (never a fixed one a run from elsewhere could have made a link), renamed over loss.csv.
        write_atomic(self.path, lambda tmp: tmp.write_bytes(rows))

    def close(self) -> None:
        self._fh.close()
        Path(self._tmp).chmod(0o666 & ~umask())
        os.replace(self._tmp, self.path)

    def __enter__(self) -> "LossLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_loss(run_dir: Path, rows: list[LossRow]) -> None:
    """Replace logs/loss.csv with ``rows``."""
    with LossLog(run_dir) as log:
        for row in rows:
            log.append(row)


def read_loss(run_dir: Path) -> list[LossRow]:
    """The rows of logs/loss.csv ([] when there is none), each checked as a LossRow (empty cells: not recorded)."""
    return _typed_rows(run_dir, LOSS_CSV, LossRow, "the loss curve")


def _typed_rows(run_dir: Path, rel: str, model: type[BaseModel], what: str) -> list[Any]:
    """Every row of a run's CSV log as ``model``; a bad row is one line naming the file, the row, the column and what to do."""
    path = Path(run_dir) / rel
    fix = f"delete it ({what} is then left out) or restore it from a copy of the run"
    rows = []
    for number, raw in enumerate(_csv_rows(run_dir, path, fix), start=2):  # row 1 is the header
        cells = {k: v for k, v in raw.items() if v not in (None, "")}
        unknown = [k for k in cells if k not in model.model_fields]
        if unknown:
            raise UserError(f"{path}: row {number}: column {unknown[0]!r} is not one bespoke-kohya writes ({', '.join(model.model_fields)}); {fix}")
        try:
            rows.append(model.model_validate(cells))
        except ValidationError as exc:
            first = exc.errors()[0]
            column = ".".join(str(p) for p in first["loc"]) or "(row)"
            got = "" if first["type"] == "missing" else f" (got {str(first.get('input'))[:40]!r})"
            raise UserError(f"{path}: row {number}: {column}: {first['msg']}{got}; {fix}") from None
    return rows


def _csv_rows(run_dir: Path, path: Path, fix: str) -> list[dict[str, str]]:
    """The rows of a run's CSV log as dicts ([] when there is none): a regular file inside the run, bounded in size."""
    no_links_below(Path(run_dir), path, fix)
    raw = read_regular(path, limit=MAX_CSV_BYTES, what="CSV log", fix=fix)
    if raw is None:
        return []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text, so not written by bespoke-kohya; {fix}") from None
    reader = csv.DictReader(io.StringIO(text, newline=""), restkey="(extra cells)")
    try:
        return list(reader)  # the csv module's own cell limit (128 KiB) bounds each cell; its error is said in one line below
    except csv.Error as exc:
        raise UserError(f"{path}: row {reader.line_num}: not a CSV row bespoke-kohya writes ({exc}); {fix}") from None


# ------------------------------------------------------------------ logs/validation.csv


class ValidationRow(BaseModel):
    """The held-out (validation) loss at the end of one epoch: the images held out by dataset.validation_split.

    kohya: sd-scripts' `loss/validation/epoch_average`; pixel24: the masked-pixel cross-entropy on the
    held-out images at fixed mask ratios and seeds (so epochs compare on the same draws).
    """

    model_config = ConfigDict(extra="forbid")

    epoch: Epoch
    step: Step | None = None
    loss: Number | None = None


VALIDATION_FIELDS = list(ValidationRow.model_fields)


def write_validation(run_dir: Path, rows: list[ValidationRow]) -> None:
    """Replace logs/validation.csv with ``rows`` (atomically; one row per epoch)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            out = csv.writer(fh)
            out.writerow(VALIDATION_FIELDS)
            for row in sorted(rows, key=lambda r: r.epoch):
                out.writerow([_cell(k, getattr(row, k)) for k in VALIDATION_FIELDS])

    no_links_below(Path(run_dir), Path(run_dir) / VALIDATION_CSV, LAYOUT_FIX)
    write_atomic(Path(run_dir) / VALIDATION_CSV, write)


def read_validation(run_dir: Path) -> list[ValidationRow]:
    """The rows of logs/validation.csv ([] when there is none), one per epoch (a later row of an epoch wins)."""
    rows = {row.epoch: row for row in _typed_rows(run_dir, VALIDATION_CSV, ValidationRow, "the validation curve")}
    return [rows[e] for e in sorted(rows)]
