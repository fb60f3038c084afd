"""Typed run files: run.json, samples/samples.json and logs/loss.csv, each with one reader and one writer.

The models accept keys they do not know (``extra="allow"``), so a file written by a
same-version bespoke-kohya with more fields survives a read-modify-write. Every write is
atomic (a temporary file renamed over the old one).
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import platform
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import __version__
from ..errors import UserError
from ..atomic import umask, write_atomic, write_json_atomic
from . import DATA, LOSS_CSV, VALIDATION_CSV, NOT_TRAINED, RUN_JSON, RUN_VERSION, SAMPLES_JSON, SAMPLES_VERSION, Status, lock, run_document, samples_document, write_run_document


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
    return UserError(f"{path}: {where}: {first['msg']}; {fix}")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


# ------------------------------------------------------------------ run.json


class CaptionsRef(_Open):
    """Which captions went into data/ (the preset's dataset.captions) and what the caption lint found."""

    mode: str = "raw"  # "raw" | "normalised"
    problems: dict[str, int] = Field(default_factory=dict)  # caption problems by kind
    changed: int | None = None  # captions the normalisation changed (normalised mode only)


class DatasetRef(_Open):
    path: str = ""
    content_hash: str | None = None
    images: int | None = None
    captions: CaptionsRef | None = None  # absent in runs made before `dataset.captions`
    # Prepared image files (in data/<repeats>_<concept>/) held out from training (dataset.validation_split);
    # None in runs made before held-out validation, [] when the split is off or the folder too small.
    heldout: list[str] | None = None


class Failure(_Open):
    cause: str | None = None
    tail: list[str] = Field(default_factory=list)
    recognised: bool = False  # the cause is a known one, said in one line: the tail stays in the log


class RunRecord(_Open):
    """run.json: everything needed to reproduce a run and compare its epochs."""

    version: int = RUN_VERSION
    id: str
    preset: str
    engine: str
    script: str | None = None
    resolved: dict[str, Any]
    overrides: list[str] = Field(default_factory=list)
    dataset: DatasetRef = Field(default_factory=DatasetRef)
    versions: dict[str, str | None] = Field(default_factory=dict)
    status: Status
    created: str | None = None
    epochs: dict[str, str] = Field(default_factory=dict)
    command: list[str] | None = None
    cwd: str | None = None
    started: str | None = None
    ended: str | None = None
    exit_code: int | None = None
    failure: Failure | None = None

    def checkpoints(self) -> dict[int, str]:
        """{epoch: checkpoint path relative to the run}, by epoch."""
        return {int(k): v for k, v in sorted(self.epochs.items(), key=lambda kv: int(kv[0]))}

    def preset_model(self, run_dir: Path) -> Any:
        """The resolved preset the run was rendered with, as its engine's preset class (the engine reads its settings from it)."""
        from ..presets import validate_preset

        try:
            return validate_preset(self.resolved, "run.json resolved")
        except UserError as exc:
            raise UserError(f"{Path(run_dir) / RUN_JSON}: {exc}; the run folder was not made by this bespoke-kohya") from None

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
            path = folder / Path(file).with_suffix(d.caption_extension).name
            if Path(file).name != file or not path.is_file():
                out.append((file, None))
                continue
            try:
                text = path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise UserError(f"{path}: cannot read this held-out caption ({exc}); restore data/ from a copy of the run") from None
            out.append((file, text or None))
        return out


# ------------------------------------------------------------------ samples/samples.json


class SampleImage(_Open):
    prompt_id: str
    prompt: str = ""
    seed: int
    full: str | None = None
    art: str | None = None
    preview: str | None = None
    grid: dict[str, Any] | None = None
    heldout: str | None = None  # a held-out caption's draw: the prepared image file (run.json dataset.heldout) the prompt is the caption of


class SampledEpoch(_Open):
    checkpoint: str | None = None
    sha256: str | None = None
    base_only: bool = False
    suite_id: str | None = None
    images: list[SampleImage] = Field(default_factory=list)


class Samples(_Open):
    """samples.json: the prompt × seed suite and, per epoch, the images drawn with it."""

    version: int = SAMPLES_VERSION
    epochs: dict[str, SampledEpoch] = Field(default_factory=dict)
    settings: dict[str, Any] | None = None
    prompts: list[dict[str, Any]] | None = None
    seeds: list[int] | None = None
    suite_id: str | None = None
    # `sample --prompt`: prompts tried beside the suite (samples/adhoc/), never compared by the report.
    adhoc: dict[str, SampledEpoch] = Field(default_factory=dict)
    # sha256 of the file as read: the report says which samples its numbers came from.
    digest: str | None = Field(default=None, exclude=True)

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
        raise _problem(path, exc, f"delete it (and the epoch-* folders beside it) and run `bespoke-kohya sample --run {run_dir}` again") from None
    samples.digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return samples


def write_samples(run_dir: Path, samples: Samples) -> None:
    write_json_atomic(Path(run_dir) / SAMPLES_JSON, samples.as_dict())


# ------------------------------------------------------------------ logs/loss.csv


class LossRow(BaseModel):
    """One optimiser step: its loss, the epoch's running average and the learning rate (None: not recorded)."""

    step: int
    epoch: int | None = None
    loss: float | None = None
    avg_loss: float | None = None
    lr: float | None = None


LOSS_FIELDS = list(LossRow.model_fields)


def _cell(key: str, value: Any) -> str:
    if value is None or value == "":
        return ""
    if key in ("step", "epoch"):
        return str(int(value))
    return f"{float(value):.6g}" if key == "lr" else f"{float(value):.6f}"


class LossLog:
    """Writes logs/loss.csv row by row (flushed per epoch) into a temporary file renamed into place on close."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOSS_CSV
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        self._fh = os.fdopen(fd, "w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._fh)
        self._csv.writerow(LOSS_FIELDS)

    def append(self, row: LossRow) -> None:
        self._csv.writerow([_cell(k, getattr(row, k)) for k in LOSS_FIELDS])

    def flush(self) -> None:
        """Make the rows so far visible as logs/loss.csv (an interrupted run keeps its curve)."""
        self._fh.flush()
        Path(self._tmp).chmod(0o666 & ~umask())
        shutil.copyfile(self._tmp, self.path.with_name(f".{self.path.name}.flush"))
        os.replace(self.path.with_name(f".{self.path.name}.flush"), self.path)

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


def _number(value: str | None) -> float | None:
    """A cell as a number (NaN kept: a diverged step is a fact to show); empty or malformed cells are None."""
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def read_loss(run_dir: Path) -> list[LossRow]:
    """The rows of logs/loss.csv ([] when there is none); rows without a step are skipped, bad cells become None."""
    rows = []
    for raw in _csv_rows(Path(run_dir) / LOSS_CSV, "the loss curve"):
        step = _whole(raw.get("step"))
        if step is not None:
            rows.append(LossRow(step=step, epoch=_whole(raw.get("epoch")), loss=_number(raw.get("loss")), avg_loss=_number(raw.get("avg_loss")), lr=_number(raw.get("lr"))))
    return rows


def _whole(value: str | None) -> int | None:
    """A cell as a whole number; empty, malformed or non-finite cells are None."""
    number = _number(value)
    return int(number) if number is not None and math.isfinite(number) else None


def _csv_rows(path: Path, what: str) -> list[dict[str, str]]:
    """The rows of a run's CSV log as dicts ([] when there is none); a file that is not UTF-8 is one line naming ``what`` is lost."""
    if not path.is_file():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text, so not written by bespoke-kohya; delete it ({what} is then left out)") from None


# ------------------------------------------------------------------ logs/validation.csv


class ValidationRow(BaseModel):
    """The held-out (validation) loss at the end of one epoch: the images held out by dataset.validation_split.

    kohya: sd-scripts' `loss/validation/epoch_average`; pixel24: the masked-pixel cross-entropy on the
    held-out images at fixed mask ratios and seeds (so epochs compare on the same draws).
    """

    epoch: int
    step: int | None = None
    loss: float | None = None


VALIDATION_FIELDS = list(ValidationRow.model_fields)


def write_validation(run_dir: Path, rows: list[ValidationRow]) -> None:
    """Replace logs/validation.csv with ``rows`` (atomically; one row per epoch)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            out = csv.writer(fh)
            out.writerow(VALIDATION_FIELDS)
            for row in sorted(rows, key=lambda r: r.epoch):
                out.writerow([_cell(k, getattr(row, k)) for k in VALIDATION_FIELDS])

    write_atomic(Path(run_dir) / VALIDATION_CSV, write)


def read_validation(run_dir: Path) -> list[ValidationRow]:
    """The rows of logs/validation.csv ([] when there is none), one per epoch; malformed rows are skipped."""
    rows: dict[int, ValidationRow] = {}
    for raw in _csv_rows(Path(run_dir) / VALIDATION_CSV, "the validation curve"):
        epoch = _whole(raw.get("epoch"))
        if epoch is not None:
            rows[epoch] = ValidationRow(epoch=epoch, step=_whole(raw.get("step")), loss=_number(raw.get("loss")))
    return [rows[e] for e in sorted(rows)]
