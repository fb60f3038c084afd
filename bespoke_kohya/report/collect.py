"""Collect what the report shows from a run folder, saying what is missing instead of failing.

The run files (run.json, samples/samples.json, logs/loss.csv, logs/validation.csv,
reproduce.json) are read only by the few `read_*` functions in the first section, through
the run-folder contract (bespoke_kohya.runfolder); everything after them works on what
those return. Images (the sampler's 24x24 results, the training originals, the held-out
originals) are read here too; full-size renders are read later, one epoch at a time,
while scoring. The previous report's metrics.json is read back only to reuse the
two-sample results of epochs whose samples have not changed.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..images import load_rgb
from ..metrics import even_sample
from ..paths import ART
from ..runfolder import DATA, SAMPLES_JSON, file_sha256, inside_run, metrics_document
from ..runfolder.data import art_of, training_folder, training_images
from ..runfolder.records import read_loss as read_loss_rows, read_reproduce as read_reproduce_table, read_run, read_samples as read_samples_record, read_validation as read_validation_rows

BASE_EPOCH = 0  # `sample --include-base` records the base model alone as epoch 0

# ------------------------------------------------------------------ collected inputs


@dataclass
class Notice:
    """A line at the top of the page saying what is missing or wrong, and what to do."""

    level: str  # "error" | "warn" | "info"
    text: str
    detail: list[str] = field(default_factory=list)


@dataclass
class Cell:
    """One prompt × seed of one epoch: the files the sampler wrote and the 24×24 pixels."""

    prompt_id: str
    seed: int
    art_rel: str | None = None
    full_rel: str | None = None
    art: np.ndarray | None = None
    grid: dict[str, float] | None = None  # the art-pixel grid the sampler found in the full-size render
    problem: str | None = None
    heldout: str | None = None  # a held-out caption's draw: the held-out prepared file whose caption was the prompt
    prompt: str = ""


@dataclass
class EpochSamples:
    """One epoch column: its checkpoint and its cells, or why it has none."""

    epoch: int
    checkpoint: str | None = None
    cells: dict[tuple[str, int], Cell] = field(default_factory=dict)
    problem: str | None = None

    @property
    def images(self) -> list[Cell]:
        """Suite cells with readable 24×24 pixels, in suite order (what the grid and the style metrics show)."""
        return [c for c in self.cells.values() if c.art is not None and c.heldout is None]

    @property
    def heldout_images(self) -> list[Cell]:
        """Held-out caption draws with readable 24×24 pixels (shown beside their real image, not in the grid)."""
        return [c for c in self.cells.values() if c.art is not None and c.heldout is not None]


@dataclass
class HeldOut:
    """A held-out training image (run.json dataset.heldout): its 24×24 original, or why it is not shown."""

    name: str  # the prepared file name, e.g. "punk-012.png"
    art: np.ndarray | None = None
    source: str = ""
    problem: str | None = None

    @property
    def stem(self) -> str:
        return Path(self.name).stem


@dataclass
class RunData:
    """Everything the page shows, read from the run directory."""

    run_dir: Path
    record: dict[str, Any]
    prompts: list[tuple[str, str]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    epochs: list[EpochSamples] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    reference_names: list[str] = field(default_factory=list)
    reference_images: list[np.ndarray] = field(default_factory=list)
    reference_source: str = ""
    loss: list[dict[str, float | None]] = field(default_factory=list)
    reproduce: dict[str, Any] | None = None
    samples_sha256: str | None = None
    validation: list[dict[str, float | None]] = field(default_factory=list)  # logs/validation.csv: epoch, step, loss
    heldout: list[HeldOut] | None = None  # None: a run made before held-out validation
    previous: dict[str, Any] | None = None  # the last report's metrics.json (its cached two-sample results)

    @property
    def sampled(self) -> list[EpochSamples]:
        """Epochs that have at least one readable 24×24 image."""
        return [e for e in self.epochs if e.images]


# ------------------------------------------------------------------ run files (read through bespoke_kohya.runfolder)


def read_record(run_dir: Path) -> dict[str, Any]:
    """run.json, or a UserError when the folder is not a run."""
    return read_run(run_dir).as_dict()


def read_samples(run_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(samples.json document, its sha256), or (None, None) when the sampler has not run."""
    samples = read_samples_record(run_dir)
    return (samples.as_dict(), samples.digest) if samples else (None, None)


def read_loss(run_dir: Path) -> list[dict[str, float | None]]:
    """Rows of logs/loss.csv as numbers (empty, malformed or non-finite cells become None)."""
    return [{k: v if v is None or np.isfinite(v) else None for k, v in row.model_dump().items()} for row in read_loss_rows(run_dir)]


def read_validation(run_dir: Path) -> list[dict[str, float | None]]:
    """Rows of logs/validation.csv (epoch, step, held-out loss); a non-finite loss becomes None."""
    rows = []
    for row in read_validation_rows(run_dir):
        loss = row.loss if row.loss is not None and np.isfinite(row.loss) else None
        rows.append({"epoch": row.epoch, "step": row.step, "loss": loss})
    return rows


def read_reproduce(run_dir: Path) -> dict[str, Any] | None:
    """reproduce.json (the checklist table) if the run has one, checked by its schema."""
    table = read_reproduce_table(run_dir)
    return table.model_dump(mode="json") if table is not None else None


def read_previous_metrics(run_dir: Path) -> dict[str, Any] | None:
    """The last report's metrics.json (this package wrote it), or None when absent or unreadable: it is only a cache."""
    return metrics_document(run_dir)


# ------------------------------------------------------------------ notices


def run_command(run_dir: Path, command: str) -> str:
    """The command line that redoes ``command`` for this run (shown in notices)."""
    return f"bespoke-kohya {command} --run {shlex.quote(str(run_dir))}"


def epoch_label(epoch: int) -> str:
    """Column title: epoch 0 is the base model without a LoRA."""
    return "base model (no LoRA)" if epoch == BASE_EPOCH else f"epoch {epoch}"


def status_notices(record: dict[str, Any], run_dir: Path) -> list[Notice]:
    """What the training status means for the reader (a failure with its log tail)."""
    status = record.get("status")
    epochs = record.get("epochs") or {}
    if status == "failed":
        failure = record.get("failure") or {}
        cause = failure.get("cause") or "no cause recorded"
        tail = [str(line) for line in failure.get("tail") or []]
        kept = f" ({len(epochs)} epoch checkpoint(s) were written before it failed)" if epochs else ""
        return [Notice("error", f"training failed: {cause}{kept}; full log: logs/train.log", tail)]
    if status == "running":
        return [Notice("info", f"training is still running ({len(epochs)} epoch(s) recorded so far); run the report again when it finishes")]
    if status == "interrupted":
        # A cause is recorded when the trainer was killed (run.json still said running, its lock was free).
        cause = f" ({(record.get('failure') or {}).get('cause')})" if (record.get("failure") or {}).get("cause") else ""
        return [Notice("warn", f"training was interrupted after {len(epochs)} epoch(s){cause}; continue it with `bespoke-kohya train --resume {shlex.quote(str(run_dir))}`")]
    if status in ("rendered", "dry-run"):
        return [Notice("warn", f"training has not run yet (status {status}): no checkpoints to compare")]
    return []


# ------------------------------------------------------------------ samples


def _suite(doc: dict[str, Any]) -> tuple[list[tuple[str, str]], list[int]]:
    """The prompt × seed suite: from the document's own lists, else from the images it records.

    Held-out caption draws are not part of it: they are shown beside their real image instead.
    """
    heldout_ids = {str(img["prompt_id"]) for entry in doc["epochs"].values() for img in entry.get("images") or [] if img.get("heldout")}
    prompts: dict[str, str] = {}
    seeds: list[int] = []
    for p in doc.get("prompts") or []:
        if str(p["id"]) not in heldout_ids:
            prompts[str(p["id"])] = str(p.get("prompt", ""))
    seeds = [int(s) for s in doc.get("seeds") or []]
    for entry in doc["epochs"].values():
        for img in entry.get("images") or []:
            if img.get("heldout"):
                continue
            prompts.setdefault(str(img["prompt_id"]), str(img.get("prompt", "")))
            if int(img["seed"]) not in seeds:
                seeds.append(int(img["seed"]))
    return list(prompts.items()), seeds


def _load_cell(run_dir: Path, img: dict[str, Any]) -> Cell:
    """Read one recorded image; a missing or unreadable file becomes the cell's problem."""
    grid = img.get("grid")
    cell = Cell(str(img["prompt_id"]), int(img["seed"]), img.get("art"), img.get("full"), grid=grid if isinstance(grid, dict) else None,
                heldout=str(img["heldout"]) if img.get("heldout") else None, prompt=str(img.get("prompt") or ""))
    outside = [rel for rel in (cell.art_rel, cell.full_rel) if rel and inside_run(run_dir, rel) is None]
    if outside:
        # samples.json names only files inside the run; anything else is not read, embedded or linked.
        cell.art_rel = cell.full_rel = None
        cell.problem = f"{outside[0]} is outside the run folder, so it is not shown"
        return cell
    if not cell.art_rel:
        cell.problem = "no 24×24 result recorded"
        return cell
    art_path = run_dir / cell.art_rel
    if not art_path.is_file():
        cell.problem = f"{cell.art_rel} is missing"
        return cell
    try:
        cell.art = load_rgb(art_path)
    except UserError as exc:
        cell.problem = str(exc)
        return cell
    if cell.art.shape[:2] != (ART, ART):
        cell.problem = f"{cell.art_rel} is {cell.art.shape[1]}x{cell.art.shape[0]}, not 24x24"
        cell.art = None
    return cell


def load_full(run_dir: Path, cell: Cell) -> np.ndarray | None:
    """The full-size render of a cell, read only while its epoch is scored (they are large).

    None when it is missing or unreadable: the grid metrics then say "not applicable"
    and the 24×24 result is still scored.
    """
    if not cell.full_rel or not (run_dir / cell.full_rel).is_file():
        return None
    try:
        return load_rgb(run_dir / cell.full_rel)
    except UserError:
        return None


def _stale(run_dir: Path, entry: dict[str, Any], checkpoint: str | None) -> str | None:
    """Why an epoch's samples no longer match its checkpoint (it was retrained), if they don't."""
    recorded, sampled_from = entry.get("sha256"), entry.get("checkpoint")
    if not checkpoint or not recorded or (sampled_from and sampled_from != checkpoint):
        return None
    path = run_dir / checkpoint
    if path.is_file() and file_sha256(path) != recorded:
        return f"{checkpoint} changed after these samples were made (sha256 differs)"
    return None


def collect_epochs(run_dir: Path, record: dict[str, Any], doc: dict[str, Any] | None) -> tuple[list[EpochSamples], list[Notice]]:
    """One column per epoch from 1 to the last one known (and the base model if sampled); gaps say why."""
    checkpoints = {int(k): v for k, v in (record.get("epochs") or {}).items()}
    sampled = {int(k): v for k, v in (doc or {}).get("epochs", {}).items()}
    known = set(checkpoints) | set(sampled)
    wanted = ([BASE_EPOCH] if BASE_EPOCH in sampled else []) + list(range(1, max(known, default=0) + 1))
    sample_cmd = run_command(run_dir, "sample")
    notices: list[Notice] = []
    out: list[EpochSamples] = []
    for epoch in wanted:
        col = EpochSamples(epoch, checkpoints.get(epoch) or (sampled.get(epoch) or {}).get("checkpoint"))
        if epoch in sampled:
            entry = sampled[epoch]
            for img in entry.get("images") or []:
                cell = _load_cell(run_dir, img)
                col.cells[(cell.prompt_id, cell.seed)] = cell
                if cell.problem:
                    notices.append(Notice("warn", f"{epoch_label(epoch)}, {cell.prompt_id} seed {cell.seed}: {cell.problem}; run `{sample_cmd}` again"))
            if stale := _stale(run_dir, entry, checkpoints.get(epoch)):
                notices.append(Notice("warn", f"{epoch_label(epoch)}: {stale}; run `{sample_cmd}` again"))
            if doc and doc.get("suite_id") and entry.get("suite_id") and entry["suite_id"] != doc["suite_id"]:
                # Different prompts, seeds or settings: its column is not a fair comparison.
                notices.append(Notice("warn", f"{epoch_label(epoch)} was sampled with other prompts/seeds/settings than the latest suite, so it does not compare fairly; run `{sample_cmd}` again to redraw every epoch"))
        elif epoch in checkpoints and doc is not None:
            col.problem = "not sampled yet"
            notices.append(Notice("warn", f"epoch {epoch} has a checkpoint ({checkpoints[epoch]}) but no samples: run `{sample_cmd}`"))
        elif epoch not in checkpoints:
            col.problem = "no checkpoint"
            notices.append(Notice("warn", f"epoch {epoch} is missing: run.json records no checkpoint for it"))
        out.append(col)
    return out, notices


# ------------------------------------------------------------------ training originals


# Leave-one-out nearest-neighbour distances grow with the square of the set: a 10,000-image
# stand-in would take minutes, so large sets are measured on an evenly spaced sample.
MAX_REFERENCE = 500


def _sample_paths(paths: list[Path]) -> tuple[list[Path], list[Notice]]:
    if len(paths) <= MAX_REFERENCE:
        return paths, []
    picked = [paths[i] for i in even_sample(len(paths), MAX_REFERENCE)]
    note = Notice("info", f"the training set has {len(paths)} images; the metrics compare against an evenly spaced {MAX_REFERENCE} of them (near-copies of the others are not detected)")
    return picked, [note]


def load_reference(run_dir: Path, record: dict[str, Any]) -> tuple[list[str], list[np.ndarray], str, list[Notice]]:
    """The training originals: the run's own prepared images in data/, back at 24×24 (never a path run.json names:
    a run from elsewhere could point it at any folder, whose images would end up in the page)."""
    paths, notes = _sample_paths(training_images(run_dir, record.get("resolved") or {}))
    arts = []
    for path in paths:
        try:
            arts.append((path.stem, art_of(path)))
        except UserError as exc:
            notes.append(Notice("warn", f"training image skipped: {exc}"))
    if arts:
        return [n for n, _ in arts], [a for _, a in arts], f"{DATA}/ (NEAREST 24x24)", notes
    note = Notice("warn", f"the run's training images are missing ({training_folder(run_dir, record.get('resolved') or {})}): no reference row and no comparison against the training set")
    return [], [], "", [note, *notes]


def _heldout_image(run_dir: Path, record: dict[str, Any], name: str) -> HeldOut:
    """One held-out original: the run's prepared copy in data/, back at 24×24."""
    item = HeldOut(name)
    if Path(name).name != name or name in ("", ".", ".."):
        item.problem = f"{name!r} is not a file name, so it is not read"  # run.json is user-editable
        return item
    path = training_folder(run_dir, record.get("resolved") or {}) / name
    if not path.is_file() or path.is_symlink():
        item.problem = f"{name} is not in the run's data/"
        return item
    try:
        item.art, item.source = art_of(path), path.relative_to(run_dir).as_posix()
    except UserError as exc:
        item.problem = str(exc)
    return item


def load_heldout(run_dir: Path, record: dict[str, Any]) -> tuple[list[HeldOut] | None, list[Notice]]:
    """The held-out originals run.json lists (None for a run made before held-out validation)."""
    names = (record.get("dataset") or {}).get("heldout")
    if names is None:
        return None, []
    items = [_heldout_image(run_dir, record, str(n)) for n in names]
    notes = [Notice("warn", f"held-out image {i.name}: {i.problem}") for i in items if i.problem]
    return items, notes


def validation_notices(record: dict[str, Any], validation: list[dict[str, float | None]]) -> list[Notice]:
    """Why a trained run has no held-out loss (not an error: older runs and a split of 0 have none)."""
    if validation or not record.get("epochs"):
        return []
    heldout = (record.get("dataset") or {}).get("heldout")
    if heldout is None:
        why = "this run was made before held-out validation"
    elif not heldout:
        why = "no images were held out (dataset.validation_split is 0, or the dataset is too small)"
    else:
        why = "logs/validation.csv is missing"
    return [Notice("info", f"no held-out loss: {why}; the recommendation weighs the other evidence")]


# ------------------------------------------------------------------ everything together


def collect(run_dir: Path) -> RunData:
    """Read everything the page needs; what is missing becomes a notice."""
    run_dir = Path(run_dir)
    record = read_record(run_dir)
    data = RunData(run_dir=run_dir, record=record, notices=status_notices(record, run_dir))
    doc, data.samples_sha256 = read_samples(run_dir)
    if doc is None:
        data.notices.append(Notice("warn", f"no samples yet: run `{run_command(run_dir, 'sample')}`"))
    try:
        if doc is not None:
            data.prompts, data.seeds = _suite(doc)
        data.epochs, notes = collect_epochs(run_dir, record, doc)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # A hand-edited or truncated record: name the file rather than show a traceback.
        raise UserError(f"{run_dir / SAMPLES_JSON}: an entry is malformed ({exc.__class__.__name__}: {exc}); delete it and run `{run_command(run_dir, 'sample')}` again") from None
    data.notices += notes
    data.reference_names, data.reference_images, data.reference_source, notes = load_reference(run_dir, record)
    data.notices += notes
    data.loss = read_loss(run_dir)
    if not data.loss:
        data.notices.append(Notice("info", "no loss log yet (logs/loss.csv is written when training ends)"))
    data.validation = read_validation(run_dir)
    data.notices += validation_notices(record, data.validation)
    data.heldout, notes = load_heldout(run_dir, record)
    data.notices += notes
    data.reproduce = read_reproduce(run_dir)
    data.previous = read_previous_metrics(run_dir)
    return data
