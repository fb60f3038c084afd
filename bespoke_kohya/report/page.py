"""Lay out the report page: templates/report.html.j2 with templates/report.css inlined, autoescaped.

This module only prepares what the template shows (images as data URIs, numbers as
metrics.json stores them, the few words under each column and in each empty cell);
every tag and style lives in the two template files. The page is one file with no
script and nothing fetched, so it opens from disk and can be mailed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from .. import __version__
from ..errors import UserError
from ..images import data_uri, open_image, png_bytes
from ..paths import ART
from .collect import BASE_EPOCH, EpochSamples, RunData, epoch_label, run_command
from .recommend import LOSS_MARGIN, PART_LABELS, WEIGHTS
from .score import epoch_values

SCALE = 4  # 24 px shown at 96 CSS px: big enough to read, small enough for 16 rows
STRIP_SCALE = 2
PROMPT_COL, SEED_COL, EPOCH_COL = 250, 64, 132  # grid column widths in CSS px
STRIP_SHOWN = 40  # training originals in the visible strip; the rest fold away
SMALL_FULL = 192  # px: full-size samples narrower than this are shown pixelated in the popup
FULL_EMBED_MAX = 160_000  # bytes: larger full-size PNGs are embedded as JPEG previews

STYLE_PART = "The style metrics (table below): how typical the outputs are of the training set, grid alignment included when full-size renders exist, less up to 0.5 when seeds of one prompt look alike."
BETTER = {"higher": "↑ higher is better", "lower": "↓ lower is better", "closer_to_reference": "best near the originals' value"}
BETTER_SHORT = {"higher": "↑ better", "lower": "↓ better", "closer_to_reference": "≈ originals"}


# ------------------------------------------------------------------ values as the page prints them


def fmt(value: float | None) -> str:
    """A metric as printed on the page: the value metrics.json stores, or an en dash when absent."""
    if value is None:
        return "–"
    return format(value, ".6g")


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


def _grid_cell(data: RunData, epoch: EpochSamples, prompt_id: str, seed: int, note: dict[str, str] | None, pick: bool, alt: str | None = None) -> GridCell:
    cell = epoch.cells.get((prompt_id, seed))
    if cell is None or cell.art is None:
        return GridCell(pick, why=epoch.problem or (cell.problem if cell else "not in samples.json"))
    return GridCell(
        pick,
        src=data_uri(png_bytes(cell.art)),
        alt=alt or f"epoch {epoch.epoch}, {prompt_id}, seed {seed}",
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


def _column(info: dict[str, Any]) -> dict[str, Any]:
    return {**info, "better_long": BETTER.get(info["better"], info["better"]), "better_short": BETTER_SHORT.get(info["better"], info["better"])}


def metrics_view(doc: dict[str, Any]) -> dict[str, Any]:
    """Rows = training originals (reference) + epochs; columns = score, held-out loss, then every style metric."""
    infos = doc["metrics"]
    heldout = next(m for m in doc["evidence"] if m["key"] == "heldout_loss")
    pick = doc["recommendation"].get("epoch")
    columns = [_column(m) for m in [doc["score"], heldout, *infos]]
    rows = []
    ref = doc.get("reference")
    if ref:
        values = [("score", None), ("heldout_loss", None), *((m["key"], ref["values"].get(m["key"])) for m in infos)]
        rows.append({"key": "reference", "title": f"training originals ({ref['images']})", "cls": "ref", "values": values})
    for epoch in doc["epochs"]:
        picked = str(pick) == epoch
        found = epoch_values(doc, int(epoch))
        values = [(c["key"], found.get(c["key"])) for c in columns]
        rows.append({"key": epoch, "title": epoch_label(int(epoch)) + (" ★" if picked else ""), "cls": "pick" if picked else None, "values": values})
    return {"columns": columns, "rows": rows, "no_epochs": not doc["epochs"], "copy_threshold": ref["copy_threshold"] if ref else None}


def _accuracy_note(told: dict[str, Any] | None) -> str:
    """The words under a two-sample accuracy: how many images, how sure, or why there is none."""
    if not told:
        return "not measured"
    if told.get("accuracy") is None:
        return told.get("problem") or "not measured"
    note = f"{told['per_class']} images per class"
    if not told.get("grouped"):
        note += ", pooled folds (fewer than 5 prompts)"
    return note + (", uncertain" if told.get("uncertain") else "")


def evidence_view(doc: dict[str, Any]) -> dict[str, Any] | None:
    """Rows = epochs; columns = each piece of evidence with the 0–1 part it gives, and the score they make."""
    if not doc["epochs"]:
        return None
    pick = doc["recommendation"].get("epoch")
    infos = {m["key"]: m["explanation"] for m in doc["evidence"]}
    loss_rule = f" Its part is 1 for the epoch with the lowest held-out loss and 0 at {LOSS_MARGIN:.0%} above it."
    explain = {"style": STYLE_PART, "distinguish": infos["two_sample_accuracy"], "near_copies": infos["near_copy_share"], "heldout_loss": infos["heldout_loss"] + loss_rule}
    parts = [{"key": k, "label": PART_LABELS[k], "weight": w, "explanation": explain[k]} for k, w in WEIGHTS.items()]
    rows = []
    for epoch, entry in doc["epochs"].items():
        ev, told, weighed = entry["evidence"], entry.get("distinguish"), entry["recommendation_parts"]
        shown = {
            "style": (entry["parts"].get("quality"), ""),
            "distinguish": (ev["two_sample_accuracy"], _accuracy_note(told)),
            "near_copies": (ev["copy_share"], f"{len(entry['copies'])} flagged in the grid" + (f", share {fmt(ev['near_copy_share'])} by the fixed test" if ev["near_copy_share"] is not None else "")),
            "heldout_loss": (ev["heldout_loss"], "" if ev["heldout_loss"] is not None else "not logged"),
        }
        # A weight other than the documented one (an uncertain or missing part) is shown beside the part.
        cells = [{"key": k, "value": shown[k][0], "note": shown[k][1], "part": weighed[k]["part"], "weight": weighed[k]["weight"] if weighed[k]["weight"] != WEIGHTS[k] else None} for k in WEIGHTS]
        rows.append({"key": epoch, "title": epoch_label(int(epoch)) + (" ★" if str(pick) == epoch else ""), "pick": str(pick) == epoch, "cells": cells, "score": entry["score"]})
    ref = doc.get("reference") or {}
    return {"parts": parts, "rows": rows, "real_copies": ref.get("near_copy_share"), "score_explanation": doc["score"]["explanation"]}


@dataclass
class PairRow:
    """One held-out original beside its caption's samples: in the shown epoch, and in every epoch (folded away)."""

    name: str
    caption: str
    real: str | None  # data URI of the 24×24 original
    problem: str | None
    shown: list[GridCell]
    every: list[list[GridCell]]


def _heldout_epoch(data: RunData, doc: dict[str, Any], drawn: list[EpochSamples]) -> int:
    """The epoch the pairs show: the recommended one, else the least bad, else the last trained one drawn."""
    rec = doc["recommendation"]
    numbers = [ep.epoch for ep in drawn]
    for candidate in (rec.get("epoch"), rec.get("least_bad")):
        if candidate in numbers:
            return int(candidate)
    trained = [e for e in numbers if e != BASE_EPOCH]
    return max(trained or numbers)


def pairs_view(data: RunData, doc: dict[str, Any]) -> dict[str, Any]:
    """Each held-out original, its caption, and the samples drawn from that caption (or why there are none)."""
    if data.heldout is None:
        return {"message": "This run was made before held-out validation: no images were held out."}
    if not data.heldout:
        return {"message": "No images were held out (dataset.validation_split is 0, or the dataset is too small)."}
    drawn = [ep for ep in data.epochs if ep.heldout_images]
    if not drawn:
        return {"message": f"{len(data.heldout)} images were held out, but no epoch drew their captions yet: run `{run_command(data.run_dir, 'sample')}` again."}
    epoch = _heldout_epoch(data, doc, drawn)
    rows = []
    for item in data.heldout:
        ids = sorted({(c.prompt_id, c.prompt) for ep in drawn for c in ep.cells.values() if c.heldout == item.name})
        pid, caption = ids[0] if ids else ("", "")
        seeds = sorted({c.seed for ep in drawn for c in ep.cells.values() if c.heldout == item.name})

        def cells(ep: EpochSamples) -> list[GridCell]:
            return [_grid_cell(data, ep, pid, s, None, ep.epoch == epoch, alt=f"held-out {item.stem}: epoch {ep.epoch}, seed {s}") for s in seeds]

        shown = next(cells(ep) for ep in drawn if ep.epoch == epoch)
        real = data_uri(png_bytes(item.art)) if item.art is not None else None
        rows.append(PairRow(item.name, caption, real, item.problem or (None if ids else "its caption was not drawn"), shown, [cells(ep) for ep in drawn]))
    width = max((len(r.shown) for r in rows), default=1)
    return {"epoch": epoch, "label": epoch_label(epoch), "recommended": epoch == doc["recommendation"].get("epoch"), "rows": rows,
            "columns": [epoch_label(ep.epoch) for ep in drawn], "seeds": width}


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


def render_html(data: RunData, doc: dict[str, Any], loss_png: bytes | None, heldout_png: bytes | None = None) -> str:
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
        evidence=evidence_view(doc),
        pairs=pairs_view(data, doc),
        loss_src=data_uri(loss_png) if loss_png is not None else None,
        heldout_src=data_uri(heldout_png) if heldout_png is not None else None,
        reproduce=reproduce_view(data.reproduce),
        generated=doc["generated"],
        version=__version__,
        side=ART * SCALE,
        scale=SCALE,
        strip_side=ART * STRIP_SCALE,
        strip_scale=STRIP_SCALE,
        col_widths=(PROMPT_COL, SEED_COL, EPOCH_COL),
    )
