"""`report`: one self-contained HTML page comparing a run's epochs, plus metrics.json.

Reads what the earlier stages left in the run directory (run.json, logs/loss.csv,
samples/samples.json and the images it lists, reproduce.json) and writes
``RUN/report/index.html`` and ``RUN/report/metrics.json``. Every image is embedded
as a data URI and there is no script or stylesheet from elsewhere, so the page opens
from disk with no network and can be mailed.

What is missing (no samples yet, an epoch never sampled, a failed training, the
training originals moved) is said on the page instead of failing; only a folder that
is not a run at all (no run.json) is an error.

The numbers come from :mod:`bespoke_kohya.metrics`; this module only collects the
inputs, lays out the page and keeps the page and metrics.json in step (the table is
printed from the same rounded values that metrics.json stores).
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import __version__
from .metrics import SCORE_EXPLANATION
from .errors import UserError
from .images import load_rgb, open_image, parse_hex_colour
from .paths import ART
from .runfolder import SAMPLES_JSON, recorded_dataset, reproduce_document
from .runfolder.records import read_loss as read_loss_rows, read_run, read_samples

REPORT_DIR = "report"
BASE_EPOCH = 0  # `sample --include-base` records the base model alone as epoch 0
SCALE = 4  # 24 px shown at 96 CSS px: big enough to read, small enough for 16 rows
STRIP_SCALE = 2
PROMPT_COL, SEED_COL, EPOCH_COL = 250, 64, 132  # grid column widths in CSS px
STRIP_SHOWN = 40  # training originals in the visible strip; the rest fold away
SMALL_FULL = 192  # px: full-size samples narrower than this are shown pixelated in the popup
FULL_EMBED_MAX = 160_000  # bytes: larger full-size PNGs are embedded as JPEG previews


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


@dataclass
class EpochSamples:
    """One epoch column: its checkpoint and its cells, or why it has none."""

    epoch: int
    checkpoint: str | None = None
    cells: dict[tuple[str, int], Cell] = field(default_factory=dict)
    problem: str | None = None

    @property
    def images(self) -> list[Cell]:
        """Cells with readable 24×24 pixels, in suite order."""
        return [c for c in self.cells.values() if c.art is not None]


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

    @property
    def sampled(self) -> list[EpochSamples]:
        """Epochs that have at least one readable 24×24 image."""
        return [e for e in self.epochs if e.images]


def _run_cmd(run_dir: Path, command: str) -> str:
    return f"bespoke-kohya {command} --run {shlex.quote(str(run_dir))}"


def read_record(run_dir: Path) -> dict[str, Any]:
    """run.json, or a UserError when the folder is not a run."""
    return read_run(run_dir).as_dict()


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
        return [Notice("warn", f"training was interrupted after {len(epochs)} epoch(s); continue it with `bespoke-kohya train --resume {shlex.quote(str(run_dir))}`")]
    if status in ("rendered", "dry-run"):
        return [Notice("warn", f"training has not run yet (status {status}): no checkpoints to compare")]
    return []


# ------------------------------------------------------------------ samples


def _read_samples_json(run_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(samples.json document, its sha256), or (None, None) when the sampler has not run."""
    samples = read_samples(run_dir)
    return (samples.as_dict(), samples.digest) if samples else (None, None)


def _suite(doc: dict[str, Any]) -> tuple[list[tuple[str, str]], list[int]]:
    """The prompt × seed suite: from the document's own lists, else from the images it records."""
    prompts: dict[str, str] = {}
    seeds: list[int] = []
    for p in doc.get("prompts") or []:
        prompts[str(p["id"])] = str(p.get("prompt", ""))
    seeds = [int(s) for s in doc.get("seeds") or []]
    for entry in doc["epochs"].values():
        for img in entry.get("images") or []:
            prompts.setdefault(str(img["prompt_id"]), str(img.get("prompt", "")))
            if int(img["seed"]) not in seeds:
                seeds.append(int(img["seed"]))
    return list(prompts.items()), seeds


def _load_cell(run_dir: Path, img: dict[str, Any]) -> Cell:
    """Read one recorded image; a missing or unreadable file becomes the cell's problem."""
    grid = img.get("grid")
    cell = Cell(str(img["prompt_id"]), int(img["seed"]), img.get("art"), img.get("full"), grid=grid if isinstance(grid, dict) else None)
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


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stale(run_dir: Path, entry: dict[str, Any], checkpoint: str | None) -> str | None:
    """Why an epoch's samples no longer match its checkpoint (it was retrained), if they don't."""
    recorded, sampled_from = entry.get("sha256"), entry.get("checkpoint")
    if not checkpoint or not recorded or (sampled_from and sampled_from != checkpoint):
        return None
    path = run_dir / checkpoint
    if path.is_file() and _file_sha256(path) != recorded:
        return f"{checkpoint} changed after these samples were made (sha256 differs)"
    return None


def epoch_label(epoch: int) -> str:
    """Column title: epoch 0 is the base model without a LoRA."""
    return "base model (no LoRA)" if epoch == BASE_EPOCH else f"epoch {epoch}"


def collect_epochs(run_dir: Path, record: dict[str, Any], doc: dict[str, Any] | None) -> tuple[list[EpochSamples], list[Notice]]:
    """One column per epoch from 1 to the last one known (and the base model if sampled); gaps say why."""
    checkpoints = {int(k): v for k, v in (record.get("epochs") or {}).items()}
    sampled = {int(k): v for k, v in (doc or {}).get("epochs", {}).items()}
    known = set(checkpoints) | set(sampled)
    wanted = ([BASE_EPOCH] if BASE_EPOCH in sampled else []) + list(range(1, max(known, default=0) + 1))
    sample_cmd = _run_cmd(run_dir, "sample")
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


def _art_from_prepared(path: Path) -> np.ndarray:
    """A prepared (upscaled) training image back at 24×24; NEAREST undoes a NEAREST upscale exactly."""
    im = Image.fromarray(load_rgb(path))
    return np.asarray(im.resize((ART, ART), Image.NEAREST))


def _background(record: dict[str, Any]) -> tuple[int, int, int]:
    """The colour the run flattened transparency onto (so originals look as they were trained)."""
    value = ((record.get("resolved") or {}).get("dataset") or {}).get("alpha_background", "#ffffff")
    try:
        return parse_hex_colour(value)
    except ValueError:
        return (255, 255, 255)


# Leave-one-out nearest-neighbour distances grow with the square of the set: a 10,000-image
# stand-in would take minutes, so large sets are measured on an evenly spaced sample.
MAX_REFERENCE = 500


def _sample_paths(paths: list[Path]) -> tuple[list[Path], list[Notice]]:
    if len(paths) <= MAX_REFERENCE:
        return paths, []
    picked = [paths[i] for i in np.linspace(0, len(paths) - 1, MAX_REFERENCE).round().astype(int)]
    note = Notice("info", f"the training set has {len(paths)} images; the metrics compare against an evenly spaced {MAX_REFERENCE} of them (near-copies of the others are not detected)")
    return picked, [note]


def load_reference(run_dir: Path, record: dict[str, Any]) -> tuple[list[str], list[np.ndarray], str, list[Notice]]:
    """The training originals: the dataset folder run.json names, else the run's data/ copy downsampled."""
    dataset = recorded_dataset(run_dir, record) or Path("")
    bg = _background(record)
    if str(dataset) not in ("", ".") and dataset.is_dir():
        paths, notes = _sample_paths(sorted(p for p in dataset.glob("*.png") if p.is_file()))
        arrays = [load_rgb(p, bg) for p in paths]
        keep = [(p.stem, a) for p, a in zip(paths, arrays) if a.shape[:2] == (ART, ART)]
        if keep:
            return [n for n, _ in keep], [a for _, a in keep], str(dataset), notes
    prepared, notes = _sample_paths(sorted((run_dir / "data").glob("*/*.png")))
    if prepared:
        note = Notice("info", f"training originals not found at {dataset}; using the run's prepared copies in data/ downsampled to 24x24 with NEAREST")
        return [p.stem for p in prepared], [_art_from_prepared(p) for p in prepared], "data/ (NEAREST 24x24)", [note, *notes]
    note = Notice("warn", f"training originals not found (neither {dataset} nor the run's data/ folder): no reference row and no comparison against the training set")
    return [], [], "", [note]


# ------------------------------------------------------------------ loss log


def _number(value: str | None) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if np.isfinite(number) else None


def read_loss(run_dir: Path) -> list[dict[str, float | None]]:
    """Rows of logs/loss.csv as numbers (empty or malformed cells become None)."""
    return [{k: v if v is None or np.isfinite(v) else None for k, v in row.model_dump().items()} for row in read_loss_rows(run_dir)]


def read_reproduce(run_dir: Path) -> dict[str, Any] | None:
    """reproduce.json (the checklist table) if the run has one."""
    return reproduce_document(run_dir)


def collect(run_dir: Path) -> RunData:
    """Read everything the page needs; what is missing becomes a notice."""
    run_dir = Path(run_dir)
    record = read_record(run_dir)
    data = RunData(run_dir=run_dir, record=record, notices=status_notices(record, run_dir))
    doc, data.samples_sha256 = _read_samples_json(run_dir)
    if doc is None:
        data.notices.append(Notice("warn", f"no samples yet: run `{_run_cmd(run_dir, 'sample')}`"))
    try:
        if doc is not None:
            data.prompts, data.seeds = _suite(doc)
        data.epochs, notes = collect_epochs(run_dir, record, doc)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # A hand-edited or truncated record: name the file rather than show a traceback.
        raise UserError(f"{run_dir / SAMPLES_JSON}: an entry is malformed ({exc.__class__.__name__}: {exc}); delete it and run `{_run_cmd(run_dir, 'sample')}` again") from None
    data.notices += notes
    data.reference_names, data.reference_images, data.reference_source, notes = load_reference(run_dir, record)
    data.notices += notes
    data.loss = read_loss(run_dir)
    if not data.loss:
        data.notices.append(Notice("info", "no loss log yet (logs/loss.csv is written when training ends)"))
    data.reproduce = read_reproduce(run_dir)
    return data


# ------------------------------------------------------------------ loss curve


def _epoch_starts(rows: list[dict[str, float | None]]) -> list[tuple[float, int]]:
    """(step, epoch) where each epoch after the first begins, from the epoch column."""
    starts, previous = [], None
    for row in rows:
        epoch = row["epoch"]
        if epoch is None:
            continue
        if previous is not None and int(epoch) != previous:
            starts.append((float(row["step"]), int(epoch)))  # type: ignore[arg-type]
        previous = int(epoch)
    return starts


def loss_plot_png(rows: list[dict[str, float | None]]) -> bytes | None:
    """The loss curve (per-step and running average), epoch boundaries and learning rate, as PNG bytes.

    None when no row has a loss value. Agg backend: no display is needed.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    def series(key: str) -> tuple[list[float], list[float]]:
        pts = [(r["step"], r[key]) for r in rows if r[key] is not None]
        return [p[0] for p in pts], [p[1] for p in pts]  # type: ignore[misc]

    loss, avg, lr = series("loss"), series("avg_loss"), series("lr")
    if not loss[0] and not avg[0]:
        return None
    fig = Figure(figsize=(11, 3.4), dpi=100)
    ax = fig.add_subplot()
    if loss[0]:
        ax.plot(*loss, color="#9db4d3", linewidth=0.8, label="loss (per step)")
    if avg[0]:
        ax.plot(*avg, color="#1f4e8c", linewidth=1.8, label="average loss")
    for step, epoch in _epoch_starts(rows):
        ax.axvline(step, color="#888888", linestyle="--", linewidth=0.8)
        ax.annotate(f"epoch {epoch}", (step, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12), textcoords="offset points", fontsize=8, color="#555555")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.25)
    handles, labels = ax.get_legend_handles_labels()
    if lr[0]:
        ax2 = ax.twinx()
        ax2.plot(*lr, color="#c77d1a", linewidth=1.0, alpha=0.8, label="learning rate")
        ax2.set_ylabel("learning rate", color="#c77d1a")
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="upper right", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


# ------------------------------------------------------------------ page pieces

CSS = """
:root { --ink:#1d232b; --muted:#5b6573; --line:#d6dce4; --paper:#ffffff; --bg:#f3f5f8;
        --accent:#1f4e8c; --pick:#fff3cf; --pickline:#d99a00; --bad:#a8231b; --warn:#8a5a00; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
       font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif; }
main { max-width:1700px; margin:0 auto; padding:12px 22px 40px; }
h1 { font-size:22px; margin:10px 0 2px; }
h2 { font-size:17px; margin:0 0 8px; }
p { margin:4px 0; }
code, pre { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:12.5px; }
section { background:var(--paper); border:1px solid var(--line); border-radius:8px; padding:12px 16px; margin:12px 0; }
.facts { color:var(--muted); margin:0 0 6px; }
.facts b { color:var(--ink); font-weight:600; }
.notice { border-left:4px solid var(--muted); background:#f7f8fa; padding:6px 10px; margin:6px 0; }
.notice.error { border-color:var(--bad); background:#fdeeee; }
.notice.warn { border-color:var(--pickline); background:#fff8e6; }
.notice pre { margin:6px 0 0; white-space:pre-wrap; max-height:16em; overflow:auto; background:#fff; padding:6px; border:1px solid var(--line); }
.pickbox { border:2px solid var(--pickline); background:var(--pick); }
.pickbox h2 { margin-bottom:4px; }
.pickbox ul, .verdicts { margin:4px 0 0 18px; padding:0; }
.muted { color:var(--muted); }
img.px { image-rendering:crisp-edges; image-rendering:pixelated; display:block; }
.grid-wrap { overflow:auto; max-height:88vh; border:1px solid var(--line); border-radius:6px; }
table { border-collapse:separate; border-spacing:0; }
.grid { table-layout:fixed; }
.grid th, .grid td { padding:4px 8px; border-bottom:1px solid var(--line); vertical-align:top; text-align:left; }
.grid thead th { position:sticky; top:0; z-index:3; background:#e9edf3; border-bottom:2px solid #b9c3d0; }
.grid thead th.pick { background:var(--pick); box-shadow:inset 0 3px 0 var(--pickline); }
.grid .verdict { font-weight:400; font-size:12px; color:var(--muted); }
.grid td.pick { background:var(--pick); }
.grid th.prompt { font-weight:400; font-size:13px; background:#f7f8fa; position:sticky; left:0; z-index:2; border-right:1px solid var(--line); }
.grid th.prompt .pid { font-weight:700; }
.grid tr.first > * { border-top:2px solid #b9c3d0; }
.grid th.seed { font-weight:500; color:var(--muted); white-space:nowrap; background:var(--paper); }
.grid thead th.corner { font-weight:600; }
.sample { display:inline-block; position:relative; line-height:0; border:1px solid #c4ccd6; }
.sample .full { display:none; }
.sample:hover .full, .sample:focus .full { display:block; position:fixed; top:16px; right:16px; z-index:10; background:#fff;
       border:1px solid #9aa6b4; box-shadow:0 6px 24px rgba(0,0,0,.25); padding:6px; line-height:1.3; font-size:12px; }
.sample .full { color:var(--ink); }
.sample .full img { width:384px; height:384px; display:block; }
.tag { font-size:11.5px; margin-top:3px; max-width:104px; line-height:1.25; }
.tag.copy { color:var(--bad); font-weight:600; }
.sample.copy { outline:3px solid var(--bad); outline-offset:1px; }
.hole { width:96px; height:96px; display:flex; align-items:center; justify-content:center; text-align:center;
        font-size:12px; color:var(--muted); background:repeating-linear-gradient(45deg,#f1f3f6,#f1f3f6 6px,#e7ebf0 6px,#e7ebf0 12px); }
.strip { display:flex; flex-wrap:wrap; gap:4px; margin:6px 0; }
.strip img { border:1px solid #c4ccd6; }
.metrics th, .metrics td { padding:5px 10px; border-bottom:1px solid var(--line); text-align:right; }
.metrics thead th { background:#e9edf3; vertical-align:bottom; font-weight:600; }
.metrics thead small { font-weight:400; color:var(--muted); }
.metrics th:first-child, .metrics td.note { text-align:left; white-space:nowrap; }
.metrics thead th { min-width:78px; }
.metrics tr.ref { background:#f1f4f8; font-style:italic; }
.metrics tr.pick { background:var(--pick); }
.legend { display:grid; grid-template-columns:max-content 1fr; gap:2px 14px; margin:10px 0 0; }
.legend dt { font-weight:600; }
.legend dd { margin:0; color:var(--muted); }
.status { font-weight:600; padding:1px 7px; border-radius:9px; font-size:12px; }
.status.pass { background:#dff3e3; color:#1c6b2c; }
.status.fail { background:#fbe0de; color:var(--bad); }
.status.skipped, .status.n\\/a { background:#eceff3; color:var(--muted); }
.repro th, .repro td { padding:5px 10px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
.repro thead th { background:#e9edf3; }
img.loss { max-width:100%; height:auto; }
footer { color:var(--muted); font-size:12px; margin-top:18px; }
"""


def esc(value: Any) -> str:
    """Text for HTML (quotes too, so it is safe inside attributes)."""
    return html.escape(str(value), quote=True)


def data_uri(payload: bytes, mime: str = "image/png") -> str:
    """Embed bytes in the page: no file or network is needed to show them."""
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def png_bytes(array: np.ndarray) -> bytes:
    """An RGB array as PNG file bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def full_preview(run_dir: Path, rel: str | None) -> tuple[str, str, int] | None:
    """(data URI, note, width) for a full-size sample; big PNGs become JPEG previews to keep the page mailable."""
    if not rel or not (run_dir / rel).is_file():
        return None
    try:
        im = open_image(run_dir / rel)
    except UserError:
        return None  # the popup is optional; the unreadable file is still linked
    raw = (run_dir / rel).read_bytes()
    if len(raw) <= FULL_EMBED_MAX:
        return data_uri(raw), "full size", im.width
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=88)
    return data_uri(buf.getvalue(), "image/jpeg"), "full size (JPEG preview; the PNG is in the run folder)", im.width


def fmt(value: float | None) -> str:
    """A metric as printed on the page: the value metrics.json stores, or an en dash when absent."""
    if value is None:
        return "–"
    return format(value, ".6g")


def round_metric(value: Any) -> float | None:
    """4 significant digits: enough to compare epochs, short enough to read. NaN/None → None."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not np.isfinite(number):
        return None
    return float(f"{number:.4g}")


def render_notices(notices: list[Notice]) -> str:
    """Each notice as a coloured line; a failure's log tail underneath, preformatted."""
    parts = []
    for n in notices:
        detail = f"<pre>{esc(chr(10).join(n.detail))}</pre>" if n.detail else ""
        parts.append(f'<div class="notice {esc(n.level)}">{esc(n.text)}{detail}</div>')
    return "\n".join(parts)


def render_header(data: RunData) -> str:
    """Title and one line of run facts."""
    r = data.record
    dataset = r.get("dataset") or {}
    facts = [
        ("preset", r.get("preset", "?")),
        ("engine", r.get("engine", "?")),
        ("status", r.get("status", "?")),
        ("epochs", len(r.get("epochs") or {})),
        ("sampled", len(data.sampled)),
        ("dataset", f"{dataset.get('path', '?')} ({dataset.get('images', '?')} images)"),
        ("created", r.get("created", "?")),
    ]
    line = " · ".join(f"{esc(k)} <b>{esc(v)}</b>" for k, v in facts)
    return f"<h1>Epoch comparison: {esc(r.get('id') or data.run_dir.name)}</h1>\n<p class=\"facts\">{line}</p>"


def render_recommendation(doc: dict[str, Any]) -> str:
    """The recommended epoch (or why none), its reasons, and the one-line verdict per epoch."""
    rec = doc["recommendation"]
    reasons = "".join(f"<li>{esc(x)}</li>" for x in rec.get("reasons") or [])
    verdicts = "".join(f"<li><b>{esc(epoch_label(int(e)))}</b>: {esc(v)}</li>" for e, v in doc["verdicts"].items())
    title = f"Recommended: epoch {esc(rec['epoch'])}" if rec.get("epoch") is not None else "No epoch recommended"
    body = f"<ul>{reasons}</ul>" if reasons else ""
    per_epoch = f'<p class="muted" style="margin-top:8px">Verdict per epoch:</p><ul class="verdicts">{verdicts}</ul>' if verdicts else ""
    return f'<section class="pickbox" id="recommendation"><h2>{title}</h2>{body}{per_epoch}</section>'


def _cell_html(data: RunData, epoch: EpochSamples, prompt_id: str, seed: int, note: dict[str, str] | None) -> str:
    """One grid cell: the 24×24 result pixel-exact; hover (or focus) shows the full-size sample."""
    cell = epoch.cells.get((prompt_id, seed))
    if cell is None or cell.art is None:
        why = epoch.problem or (cell.problem if cell else "not in samples.json")
        return f'<div class="hole" title="{esc(why)}">{esc(_short(why))}</div>'
    alt = f"epoch {epoch.epoch}, {prompt_id}, seed {seed}"
    side = ART * SCALE
    img = f'<img class="px" src="{data_uri(png_bytes(cell.art))}" width="{side}" height="{side}" alt="{esc(alt)}">'
    full = full_preview(data.run_dir, cell.full_rel)
    popup = ""
    if full:
        # A small "full-size" image (the native 24×24 model) is enlarged pixel-exact too, not blurred.
        px = ' class="px"' if full[2] < SMALL_FULL else ""
        popup = f'<span class="full"><img{px} src="{full[0]}" alt="{esc(alt)} full size">{esc(alt)}: {esc(full[1])}</span>'
    # A relative link to the exact file: works next to the run folder, harmless when mailed.
    href = f' href="{esc(_link(cell.full_rel))}"' if cell.full_rel else ""
    tag = f'<div class="tag {esc(note.get("class", ""))}">{esc(note["text"])}</div>' if note else ""
    flag = f' {esc(note.get("class", ""))}' if note else ""
    return f'<a class="sample{flag}"{href} tabindex="0">{img}{popup}</a>{tag}'


def _link(rel: str) -> str:
    """A link from report/index.html to a file the run records (relative to the run, or absolute)."""
    path = Path(rel)
    return path.as_uri() if path.is_absolute() else "../" + path.as_posix()


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _column_note(doc: dict[str, Any], ep: EpochSamples) -> str:
    """The few words under an epoch's column title: its score and near-copies, or why it is empty."""
    entry = doc["epochs"].get(str(ep.epoch))
    if entry is None:
        return ep.problem or "not scored"
    note = f"score {fmt(entry['score'])}"
    copies = len(entry["copies"])
    if copies:
        note += f" · {copies} near-cop{'y' if copies == 1 else 'ies'}"
    return note


def render_grid(data: RunData, doc: dict[str, Any]) -> str:
    """Rows = prompt × seed, columns = epochs: the same prompt and seed line up across epochs."""
    if not data.prompts or not data.epochs:
        return f'<section id="samples"><h2>Samples</h2><p class="muted">No samples to show yet: run <code>{esc(_run_cmd(data.run_dir, "sample"))}</code> after training.</p></section>'
    pick = doc["recommendation"].get("epoch")
    heads = []
    for ep in data.epochs:
        cls = ' class="pick"' if ep.epoch == pick else ""
        star = " ★ recommended" if ep.epoch == pick else ""
        sub = _column_note(doc, ep)
        heads.append(f'<th{cls} data-epoch="{ep.epoch}">{esc(epoch_label(ep.epoch))}{star}<div class="verdict">{esc(sub)}</div></th>')
    rows = [f'<tr><th class="corner">prompt</th><th class="corner">seed</th>{"".join(heads)}</tr>']
    notes = doc.get("cells") or {}
    for pid, prompt in data.prompts:
        for i, seed in enumerate(data.seeds):
            label = f'<th class="prompt" rowspan="{len(data.seeds)}"><span class="pid">{esc(pid)}</span> {esc(prompt)}</th>' if i == 0 else ""
            tds = []
            for ep in data.epochs:
                cls = ' class="pick"' if ep.epoch == pick else ""
                note = (notes.get(str(ep.epoch)) or {}).get(f"{pid}-s{seed}")
                tds.append(f"<td{cls}>{_cell_html(data, ep, pid, seed, note)}</td>")
            first = ' class="first"' if i == 0 else ""
            rows.append(f'<tr{first}>{label}<th class="seed">seed {esc(seed)}</th>{"".join(tds)}</tr>')
    head, body = rows[0], "\n".join(rows[1:])
    # Fixed column widths: every epoch column is alike however long a prompt or verdict is.
    epoch_cols = f'<col style="width:{EPOCH_COL}px">' * len(data.epochs)
    cols = f'<colgroup><col style="width:{PROMPT_COL}px"><col style="width:{SEED_COL}px">{epoch_cols}</colgroup>'
    width = PROMPT_COL + SEED_COL + EPOCH_COL * len(data.epochs)
    hint = "24×24 results shown pixel-exact at ×4; hover or focus an image for the full-size sample, click to open its PNG."
    return (
        f'<section id="samples"><h2>Samples: {len(data.prompts)} prompts × {len(data.seeds)} seeds per epoch</h2>'
        f'<p class="muted">{hint}</p><div class="grid-wrap"><table class="grid" style="width:{width}px">{cols}<thead>{head}</thead><tbody>\n{body}\n</tbody></table></div></section>'
    )


def render_originals(data: RunData) -> str:
    """A strip of training originals (what the epochs should look like), the rest folded away."""
    if not data.reference_images:
        return '<section id="originals"><h2>Training originals</h2><p class="muted">Not found (see the notes above).</p></section>'
    side = ART * STRIP_SCALE

    def imgs(pairs: list[tuple[str, np.ndarray]]) -> str:
        return "".join(f'<img class="px" src="{data_uri(png_bytes(a))}" width="{side}" height="{side}" title="{esc(n)}" alt="{esc(n)}">' for n, a in pairs)

    pairs = list(zip(data.reference_names, data.reference_images))
    shown, rest = pairs[:STRIP_SHOWN], pairs[STRIP_SHOWN:]
    more = f'<details><summary>all {len(pairs)} training images</summary><div class="strip">{imgs(rest)}</div></details>' if rest else ""
    return (
        f'<section id="originals"><h2>Training originals ({len(pairs)})</h2>'
        f'<p class="muted">from {esc(data.reference_source)}, shown at ×{STRIP_SCALE}</p><div class="strip">{imgs(shown)}</div>{more}</section>'
    )


BETTER = {"higher": "↑ higher is better", "lower": "↓ lower is better", "closer_to_reference": "best near the originals' value"}
BETTER_SHORT = {"higher": "↑ better", "lower": "↓ better", "closer_to_reference": "≈ originals"}


def _better(better: str, short: bool = False) -> str:
    return (BETTER_SHORT if short else BETTER).get(better, better)


def _metric_td(row: str, key: str, value: float | None) -> str:
    # data-* attributes let a test (or a script) read the table back and compare it with metrics.json.
    return f'<td data-epoch="{esc(row)}" data-metric="{esc(key)}">{esc(fmt(value))}</td>'


def render_metrics(doc: dict[str, Any]) -> str:
    """Rows = training originals (reference) + epochs; columns = score, then every metric, each explained below."""
    infos = doc["metrics"]
    pick = doc["recommendation"].get("epoch")
    columns = [doc["score"], *infos]
    head = "".join(f'<th title="{esc(m["explanation"])}">{esc(m["label"])}<br><small>{esc(_better(m["better"], short=True))}</small></th>' for m in columns)
    rows = []
    ref = doc.get("reference")
    if ref:
        tds = _metric_td("reference", "score", None) + "".join(_metric_td("reference", m["key"], ref["values"].get(m["key"])) for m in infos)
        rows.append(f'<tr class="ref"><th>training originals ({esc(ref["images"])})</th>{tds}</tr>')
    for epoch, entry in doc["epochs"].items():
        picked = str(pick) == epoch
        tds = _metric_td(epoch, "score", entry["score"]) + "".join(_metric_td(epoch, m["key"], entry["values"].get(m["key"])) for m in infos)
        cls, star = (' class="pick"', " ★") if picked else ("", "")
        rows.append(f"<tr{cls}><th>{esc(epoch_label(int(epoch)))}{star}</th>{tds}</tr>")
    if not doc["epochs"]:
        rows.append(f'<tr><td colspan="{len(columns) + 1}" class="note">no sampled epoch to score yet</td></tr>')
    legend = "".join(f'<dt>{esc(m["label"])}</dt><dd>{esc(m["explanation"])} ({esc(_better(m["better"]))})</dd>' for m in columns)
    threshold = f" A near-copy is closer than {fmt(ref['copy_threshold'])} (share of pixels off) to a training image: the 5th percentile of the originals' own nearest-neighbour distances." if ref else ""
    return (
        '<section id="metrics"><h2>Style metrics per epoch</h2>'
        f'<p class="muted">Medians over each epoch\'s 24×24 results, compared with the training originals; the first row is the originals themselves.{esc(threshold)}</p>'
        f'<div style="overflow-x:auto"><table class="metrics"><thead><tr><th>epoch</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
        f'<dl class="legend">{legend}</dl></section>'
    )


def render_loss(png: bytes | None) -> str:
    """The loss plot, or why there is none."""
    if png is None:
        return '<section id="loss"><h2>Loss</h2><p class="muted">No loss values recorded (logs/loss.csv is missing or empty).</p></section>'
    return f'<section id="loss"><h2>Loss</h2><img class="loss" src="{data_uri(png)}" alt="training loss by step with epoch boundaries"></section>'


def render_reproduce(table: dict[str, Any] | None) -> str:
    """The `reproduce` checklist table (step, check, status, evidence), if the run has one."""
    if not table:
        return ""
    rows = []
    for s in table.get("steps") or []:
        status = str(s.get("status", "?"))
        note = " ".join(x for x in (s.get("reason") or "", f"run: {s['command']}" if s.get("command") else "") if x)
        rows.append(
            f'<tr><td>{esc(s.get("step", ""))} {esc(s.get("name", ""))}</td><td>{esc(s.get("check", ""))}</td>'
            f'<td><span class="status {esc(status)}">{esc(status)}</span></td><td>{esc(s.get("evidence", ""))}</td><td>{esc(note)}</td></tr>'
        )
    code = table.get("exit_code")
    return (
        f'<section id="reproduce"><h2>Reproduce checklist</h2><p class="muted">from reproduce.json (exit status {esc(code)})</p>'
        f'<table class="repro"><thead><tr><th>step</th><th>check</th><th>status</th><th>evidence</th><th>reason</th></tr></thead><tbody>{"".join(rows)}</tbody></table></section>'
    )


def render_html(data: RunData, doc: dict[str, Any], loss_png: bytes | None) -> str:
    """The whole page: one file, inline CSS, images as data URIs, no script."""
    title = f"bespoke-kohya report: {data.record.get('id') or data.run_dir.name}"
    body = "\n".join(
        [
            render_header(data),
            render_notices(data.notices),
            render_recommendation(doc),
            render_grid(data, doc),
            render_originals(data),
            render_metrics(doc),
            render_loss(loss_png),
            render_reproduce(data.reproduce),
            f'<footer>Generated {esc(doc["generated"])} by bespoke-kohya {esc(__version__)}. Numbers: report/metrics.json.</footer>',
        ]
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body><main>\n{body}\n</main></body></html>\n"
    )


# ------------------------------------------------------------------ writing


def replace_dir(target: Path, files: dict[str, bytes]) -> None:
    """Swap in a new ``target`` folder holding ``files``: built beside it, then renamed.

    A failure leaves the previous report untouched and no partial folder behind.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    old: Path | None = None
    try:
        for name, payload in files.items():
            (tmp / name).write_bytes(payload)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.rmdir(old)
            os.rename(target, old)
        try:
            os.rename(tmp, target)
        except BaseException:
            if old is not None:
                os.rename(old, target)
                old = None
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build(run_dir: Path) -> tuple[RunData, dict[str, Any]]:
    """Collect a run and compute its metrics document (what metrics.json holds)."""
    data = collect(Path(run_dir))
    return data, metrics_document(data)


def write_report(run_dir: Path) -> Path:
    """Write ``RUN/report/index.html`` and ``RUN/report/metrics.json``; returns the page's path.

    Raises UserError when ``run_dir`` is not a run (no run.json); anything merely
    missing (samples, epochs, loss log) is explained on the page instead.
    """
    run_dir = Path(run_dir)
    data, doc = build(run_dir)
    page = render_html(data, doc, loss_plot_png(data.loss))
    metrics = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    replace_dir(run_dir / REPORT_DIR, {"index.html": page.encode("utf-8"), "metrics.json": metrics.encode("utf-8")})
    return run_dir / REPORT_DIR / "index.html"


def report_summary(run_dir: Path) -> dict[str, Any]:
    """The recommended epoch, its reasons and the verdict per epoch (for `reproduce`).

    Reuses report/metrics.json when it was made from the current samples.json;
    otherwise computes the metrics (without writing anything).
    """
    run_dir = Path(run_dir)
    read_record(run_dir)
    _, current = _read_samples_json(run_dir)
    saved = run_dir / REPORT_DIR / "metrics.json"
    doc: dict[str, Any] | None = None
    if saved.is_file() and current is not None:
        try:
            doc = json.loads(saved.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            doc = None
        if doc is not None and doc.get("samples_sha256") != current:
            doc = None
    if doc is None:
        doc = build(run_dir)[1]
    return {
        "recommended_epoch": doc["recommendation"].get("epoch"),
        "reasons": list(doc["recommendation"].get("reasons") or []),
        "verdicts": dict(doc["verdicts"]),
        "notices": [n["text"] for n in doc.get("notices") or []],
    }


# ------------------------------------------------------------------ metrics (numbers from bespoke_kohya.metrics)


def metrics_document(data: RunData) -> dict[str, Any]:
    """metrics.json: per-epoch and reference values (rounded as printed), recommendation, verdicts.

    Epoch 0 (the base model without a LoRA, when sampled) is scored for comparison
    but never recommended: it is not a training result.
    """
    from . import metrics as M

    infos = [{"key": m.key, "label": m.label, "explanation": m.explanation, "better": m.better} for m in M.METRICS.values()]
    doc: dict[str, Any] = {
        "run": {k: data.record.get(k) for k in ("id", "preset", "engine", "status")},
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tool_version": __version__,
        "samples_sha256": data.samples_sha256,
        "metrics": infos,
        "score": SCORE_INFO,
        "reference": None,
        "epochs": {},
        "recommendation": {"epoch": None, "reasons": []},
        "verdicts": {},
        "cells": {},
        "notices": [{"level": n.level, "text": n.text} for n in data.notices],
    }
    if not data.reference_images:
        doc["recommendation"]["reasons"] = ["the training originals were not found, and every metric compares outputs against them"]
        return doc
    ref = reference_for(data.reference_names, data.reference_images)
    doc["reference"] = {"source": data.reference_source, "images": len(data.reference_images), "copy_threshold": round_metric(ref.copy_threshold), "values": _rounded(ref.values())}
    results = {ep.epoch: _score_epoch(M, data.run_dir, ep, ref) for ep in data.sampled}
    trained = {e: r for e, r in results.items() if e != BASE_EPOCH}
    epoch, verdicts, reasons = M.recommend(trained) if trained else (None, {}, ["no trained epoch has samples to compare yet"])
    if BASE_EPOCH in results:
        verdicts = {BASE_EPOCH: "base model without a LoRA (for comparison, never recommended): " + M.verdict(results[BASE_EPOCH]), **verdicts}
    doc["recommendation"] = {"epoch": epoch, "reasons": list(reasons)}
    doc["verdicts"] = {str(k): str(v) for k, v in sorted(verdicts.items())}
    for ep in data.sampled:
        doc["epochs"][str(ep.epoch)] = _epoch_entry(ep, results[ep.epoch])
        flagged = {_cell_key(ep.images[c["index"]]): {"class": "copy", "text": f"copy of {c['nearest']}"} for c in results[ep.epoch]["copies"]}
        if flagged:
            doc["cells"][str(ep.epoch)] = flagged
    return doc


_REFERENCE_CACHE: dict[str, Any] = {}


def reference_for(names: list[str], images: list[np.ndarray]) -> Any:
    """metrics.Reference of the training originals, reused while their names and pixels are unchanged.

    Measuring the training set (leave-one-out nearest neighbours and palettes) is most
    of a report's cost; `reproduce` writes a report and then asks for its summary, and
    comparing several runs of one dataset measures the same set each time.
    """
    from .metrics import Reference

    digest = hashlib.sha256()
    for name, image in zip(names, images):
        digest.update(name.encode("utf-8") + b"\0" + np.ascontiguousarray(image).tobytes())
    key = digest.hexdigest()
    if key not in _REFERENCE_CACHE:
        _REFERENCE_CACHE.clear()  # one training set at a time: a Reference holds every image in CIELAB
        _REFERENCE_CACHE[key] = Reference.from_images(names, images)
    return _REFERENCE_CACHE[key]


SCORE_INFO = {
    "key": "score",
    "label": "score",
    "explanation": SCORE_EXPLANATION,
    "better": "higher",
}
SCORE_PARTS = ("style", "grid", "diversity_score", "copy_share", "quality")


def _score_epoch(M: Any, run_dir: Path, ep: EpochSamples, ref: Any) -> dict[str, Any]:
    """metrics.epoch_metrics on an epoch's 24×24 results, with full-size renders and grids where recorded."""
    cells = ep.images
    fulls = [load_full(run_dir, c) for c in cells]
    return M.epoch_metrics([c.art for c in cells], ref, groups=[c.prompt_id for c in cells], fulls=fulls, grids=[c.grid for c in cells])


def _cell_key(cell: Cell) -> str:
    return f"{cell.prompt_id}-s{cell.seed}"


def _rounded(values: dict[str, Any]) -> dict[str, float | None]:
    return {k: round_metric(v) for k, v in values.items()}


def _epoch_entry(ep: EpochSamples, result: dict[str, Any]) -> dict[str, Any]:
    """One epoch in metrics.json: the table's values, the score and its parts, and per-image values."""
    images = []
    for cell, per in zip(ep.images, result["images"]):
        values = {k: (v if isinstance(v, (bool, str)) else round_metric(v)) for k, v in per.items()}
        images.append({"prompt_id": cell.prompt_id, "seed": cell.seed, "art": cell.art_rel, **values})
    return {
        "checkpoint": ep.checkpoint,
        "images": len(ep.images),
        "values": _rounded(result["values"]),
        "score": round_metric(result.get("score")),
        "parts": {k: round_metric(result.get(k)) for k in SCORE_PARTS},
        "copies": [{"prompt_id": ep.images[c["index"]].prompt_id, "seed": ep.images[c["index"]].seed, "nearest": c["nearest"], "distance": round_metric(c["distance"])} for c in result["copies"]],
        "per_image": images,
    }
