"""Lay out the report page: templates/report.html.j2 with templates/report.css inlined, autoescaped.

This module only prepares what the template shows (images as data URIs, numbers as
metrics.json stores them, the few words under each column and in each empty cell);
every tag and style lives in the two template files. The page is one file with no
script and nothing fetched, so it opens from disk and can be mailed.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from PIL import Image

from .. import __version__
from ..errors import UserError
from ..images import open_image
from ..paths import ART
from .collect import EpochSamples, RunData, epoch_label, run_command

SCALE = 4  # 24 px shown at 96 CSS px: big enough to read, small enough for 16 rows
STRIP_SCALE = 2
PROMPT_COL, SEED_COL, EPOCH_COL = 250, 64, 132  # grid column widths in CSS px
STRIP_SHOWN = 40  # training originals in the visible strip; the rest fold away
SMALL_FULL = 192  # px: full-size samples narrower than this are shown pixelated in the popup
FULL_EMBED_MAX = 160_000  # bytes: larger full-size PNGs are embedded as JPEG previews

BETTER = {"higher": "↑ higher is better", "lower": "↓ lower is better", "closer_to_reference": "best near the originals' value"}
BETTER_SHORT = {"higher": "↑ better", "lower": "↓ better", "closer_to_reference": "≈ originals"}


# ------------------------------------------------------------------ values as the page prints them


def fmt(value: float | None) -> str:
    """A metric as printed on the page: the value metrics.json stores, or an en dash when absent."""
    if value is None:
        return "–"
    return format(value, ".6g")


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


def _link(rel: str) -> str:
    """A link from report/index.html to a file the run records (relative to the run, or absolute)."""
    path = Path(rel)
    return path.as_uri() if path.is_absolute() else "../" + path.as_posix()


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ------------------------------------------------------------------ the sample grid


@dataclass
class GridCell:
    """One prompt × seed of one epoch column: a sample to show, or a hole saying why there is none."""

    pick: bool
    why: str | None = None  # set for a hole
    src: str = ""
    alt: str = ""
    href: str | None = None
    full: tuple[str, str, int] | None = None  # (data URI, note, width) of the full-size render
    note: dict[str, str] | None = None  # e.g. {"class": "copy", "text": "copy of …"} from metrics.json

    @property
    def short(self) -> str:
        return _short(self.why or "")

    @property
    def full_px(self) -> bool:
        # A small "full-size" image (the native 24×24 model) is enlarged pixel-exact too, not blurred.
        return self.full is not None and self.full[2] < SMALL_FULL


@dataclass
class GridRow:
    prompt_id: str
    prompt: str
    seed: int
    first: bool  # the first seed of a prompt carries the prompt's label
    cells: list[GridCell]


def _grid_cell(data: RunData, epoch: EpochSamples, prompt_id: str, seed: int, note: dict[str, str] | None, pick: bool) -> GridCell:
    cell = epoch.cells.get((prompt_id, seed))
    if cell is None or cell.art is None:
        return GridCell(pick, why=epoch.problem or (cell.problem if cell else "not in samples.json"))
    return GridCell(
        pick,
        src=data_uri(png_bytes(cell.art)),
        alt=f"epoch {epoch.epoch}, {prompt_id}, seed {seed}",
        # A relative link to the exact file: works next to the run folder, harmless when mailed.
        href=_link(cell.full_rel) if cell.full_rel else None,
        full=full_preview(data.run_dir, cell.full_rel),
        note=note,
    )


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


def grid_view(data: RunData, doc: dict[str, Any]) -> dict[str, Any] | None:
    """Rows = prompt × seed, columns = epochs (the same prompt and seed line up across epochs); None when empty."""
    if not data.prompts or not data.epochs:
        return None
    pick = doc["recommendation"].get("epoch")
    columns = [{"epoch": ep.epoch, "label": epoch_label(ep.epoch), "pick": ep.epoch == pick, "note": _column_note(doc, ep)} for ep in data.epochs]
    notes = doc.get("cells") or {}
    rows = [
        GridRow(pid, prompt, seed, i == 0, [_grid_cell(data, ep, pid, seed, (notes.get(str(ep.epoch)) or {}).get(f"{pid}-s{seed}"), ep.epoch == pick) for ep in data.epochs])
        for pid, prompt in data.prompts
        for i, seed in enumerate(data.seeds)
    ]
    return {"prompts": len(data.prompts), "seeds": len(data.seeds), "columns": columns, "rows": rows, "width": PROMPT_COL + SEED_COL + EPOCH_COL * len(data.epochs)}


# ------------------------------------------------------------------ the other sections


def originals_view(data: RunData) -> dict[str, Any] | None:
    """The training originals strip (what the epochs should look like); the rest fold away."""
    if not data.reference_images:
        return None
    pairs = [(name, data_uri(png_bytes(a))) for name, a in zip(data.reference_names, data.reference_images)]
    return {"count": len(pairs), "source": data.reference_source, "shown": pairs[:STRIP_SHOWN], "rest": pairs[STRIP_SHOWN:]}


def metrics_view(doc: dict[str, Any]) -> dict[str, Any]:
    """Rows = training originals (reference) + epochs; columns = score, then every metric."""
    infos = doc["metrics"]
    pick = doc["recommendation"].get("epoch")
    columns = [{**m, "better_long": BETTER.get(m["better"], m["better"]), "better_short": BETTER_SHORT.get(m["better"], m["better"])} for m in [doc["score"], *infos]]
    rows = []
    ref = doc.get("reference")
    if ref:
        values = [("score", None), *((m["key"], ref["values"].get(m["key"])) for m in infos)]
        rows.append({"key": "reference", "title": f"training originals ({ref['images']})", "cls": "ref", "values": values})
    for epoch, entry in doc["epochs"].items():
        picked = str(pick) == epoch
        values = [("score", entry["score"]), *((m["key"], entry["values"].get(m["key"])) for m in infos)]
        rows.append({"key": epoch, "title": epoch_label(int(epoch)) + (" ★" if picked else ""), "cls": "pick" if picked else None, "values": values})
    return {"columns": columns, "rows": rows, "no_epochs": not doc["epochs"], "copy_threshold": ref["copy_threshold"] if ref else None}


def reproduce_view(table: dict[str, Any] | None) -> dict[str, Any] | None:
    """The `reproduce` checklist (step, check, status, evidence, reason), if the run has one."""
    if not table:
        return None
    steps = []
    for s in table.get("steps") or []:
        note = " ".join(x for x in (s.get("reason") or "", f"run: {s['command']}" if s.get("command") else "") if x)
        steps.append({"step": f"{s.get('step', '')} {s.get('name', '')}", "check": s.get("check", ""), "status": str(s.get("status", "?")), "evidence": s.get("evidence", ""), "note": note})
    return {"exit_code": table.get("exit_code"), "steps": steps}


def _facts(data: RunData) -> list[tuple[str, Any]]:
    """One line of run facts under the title."""
    r = data.record
    dataset = r.get("dataset") or {}
    return [
        ("preset", r.get("preset", "?")),
        ("engine", r.get("engine", "?")),
        ("status", r.get("status", "?")),
        ("epochs", len(r.get("epochs") or {})),
        ("sampled", len(data.sampled)),
        ("dataset", f"{dataset.get('path', '?')} ({dataset.get('images', '?')} images)"),
        ("created", r.get("created", "?")),
    ]


# ------------------------------------------------------------------ the page


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("bespoke_kohya.report", "templates"),
        autoescape=True,  # every value is text: prompts and paths come from files a user may edit
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["fmt"] = fmt
    return env


def render_html(data: RunData, doc: dict[str, Any], loss_png: bytes | None) -> str:
    """The whole page: one file, inline CSS, images as data URIs, no script."""
    rec = doc["recommendation"]
    return _environment().get_template("report.html.j2").render(
        run_name=data.record.get("id") or data.run_dir.name,
        facts=_facts(data),
        notices=data.notices,
        pick=rec.get("epoch"),
        reasons=rec.get("reasons") or [],
        verdicts=[(epoch_label(int(e)), v) for e, v in doc["verdicts"].items()],
        grid=grid_view(data, doc),
        sample_command=run_command(data.run_dir, "sample"),
        originals=originals_view(data),
        metrics=metrics_view(doc),
        loss_src=data_uri(loss_png) if loss_png is not None else None,
        reproduce=reproduce_view(data.reproduce),
        generated=doc["generated"],
        version=__version__,
        side=ART * SCALE,
        scale=SCALE,
        strip_side=ART * STRIP_SCALE,
        strip_scale=STRIP_SCALE,
        col_widths=(PROMPT_COL, SEED_COL, EPOCH_COL),
    )
