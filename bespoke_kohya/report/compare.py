"""`report --compare RUN RUN...`: one page setting the best (or chosen) epoch of several runs side by side.

Each run is read and scored exactly as its own report does (``report.build``: collect +
the metrics document with its recommended epoch), so a better recommendation in
score.py changes which epoch is compared here too. The page shows:

- one grid of the prompt × seed pairs every run has drawn (matched by the prompt's text,
  not its id, since ids are only positions in each run's suite), a column per run, each
  24×24 result pixel-exact;
- one metrics table with a column per run (the values its metrics.json has for that epoch);
- the settings that differ (run.json's resolved preset, flattened, plus preset name and
  overrides), each run's value beside the others';
- a warning when the runs were not trained on the same dataset (content hash).

A run is named ``RUN`` (its recommended epoch) or ``RUN:EPOCH``. Only a trailing ``:<digits>``
is read as an epoch, and only when the whole text is not itself a folder, so a run folder
whose name holds a colon still works.

The page and compare.json go into a new folder that is built beside it and renamed into
place: never over an existing folder, never half-written.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..atomic import read_only, staged_folder
from ..errors import UserError
from ..paths import ART
from . import build
from .collect import BASE_EPOCH, Cell, EpochSamples, RunData, epoch_label, run_command
from ..images import data_uri, png_bytes
from .page import BETTER_SHORT, SCALE, SMALL_FULL, _environment, full_preview

INDEX = "index.html"
COMPARE_JSON = "compare.json"
EPOCH_SUFFIX = re.compile(r"^(.+):(\d{1,9})$")  # RUN:EPOCH; the greedy run part keeps earlier colons
RUN_COL = 150  # CSS px per run column in the grid: the ×SCALE image and a little air
PROMPT_COL, SEED_COL = 250, 64


@dataclass
class Column:
    """One run at one epoch: what the page compares."""

    spec: str  # as given on the command line
    run_dir: Path
    data: RunData
    doc: dict[str, Any]  # the run's metrics document (what its metrics.json holds)
    epoch: int
    chosen: bool  # True: picked with RUN:EPOCH; False: the run's recommended epoch
    cells: dict[tuple[str, int], Cell] = field(default_factory=dict)  # (prompt text, seed) → cell of that epoch

    @property
    def name(self) -> str:
        return str(self.data.record.get("id") or self.run_dir.name)

    @property
    def label(self) -> str:
        return f"{self.name} · {epoch_label(self.epoch)}"


# ------------------------------------------------------------------ which runs and epochs


def parse_spec(text: str) -> tuple[Path, int | None]:
    """``RUN`` or ``RUN:EPOCH`` → (run folder, epoch or None); a folder named ``x:3`` stays a folder."""
    match = EPOCH_SUFFIX.match(text)
    if match is None or Path(text).is_dir():
        return Path(text), None
    return Path(match[1]), int(match[2])


def _pick_epoch(spec: str, run_dir: Path, data: RunData, doc: dict[str, Any], wanted: int | None) -> EpochSamples:
    """The epoch to compare: ``wanted`` if the run has pictures of it, else its recommended one; one-line errors otherwise."""
    sample_cmd = run_command(run_dir, "sample")
    if data.samples_sha256 is None:
        raise UserError(f"{spec}: the run has no samples yet; run `{sample_cmd}` first")
    sampled = [e.epoch for e in data.sampled]
    if wanted is None:
        wanted = doc["recommendation"].get("epoch")
        if wanted is None:
            why = "; ".join(doc["recommendation"].get("reasons") or []) or "no epoch scored"
            raise UserError(f"{spec}: the report recommends no epoch ({why}); pick one as {run_dir}:EPOCH (sampled: {_listed(sampled)})")
    by_epoch = {e.epoch: e for e in data.epochs}
    if wanted in sampled:
        return by_epoch[wanted]
    checkpoints = {int(k) for k in (data.record.get("epochs") or {})}
    if wanted in checkpoints:
        raise UserError(f"{spec}: epoch {wanted} has no readable samples; run `{sample_cmd} --epochs {wanted}` first")
    if wanted == BASE_EPOCH:
        raise UserError(f"{spec}: the base model (epoch 0) was not sampled; run `{sample_cmd} --include-base` first")
    raise UserError(f"{spec}: the run has no epoch {wanted}; pick one of the sampled epochs: {_listed(sampled)}")


def _listed(epochs: list[int]) -> str:
    return ", ".join(map(str, epochs)) or "none"


def _cells_by_prompt(data: RunData, epoch: EpochSamples) -> dict[tuple[str, int], Cell]:
    """The epoch's cells keyed by (prompt text, seed): ids like p01 are positions in a run's own suite."""
    texts = dict(data.prompts)
    # Held-out caption draws stay out: the runs' splits may differ, and each run's report pairs them with their originals.
    return {(texts.get(pid, pid), seed): cell for (pid, seed), cell in epoch.cells.items() if cell.heldout is None}


def load_columns(specs: list[str]) -> list[Column]:
    """Read and score each run once, pick its epoch, and refuse what cannot be compared (one line each)."""
    if len(specs) < 2:
        only = specs[0] if specs else "RUN"
        raise UserError(f"report --compare needs at least two runs (RUN or RUN:EPOCH), got {len(specs)}; for the epochs of one run use `bespoke-kohya report --run {only}`")
    parsed = [(spec, *parse_spec(spec)) for spec in specs]
    built: dict[Path, tuple[RunData, dict[str, Any]]] = {}
    columns: list[Column] = []
    seen: dict[tuple[Path, int], str] = {}
    for spec, run_dir, wanted in parsed:
        key = run_dir.resolve()
        if key not in built:
            built[key] = build(run_dir)
        data, doc = built[key]
        epoch = _pick_epoch(spec, run_dir, data, doc, wanted)
        if (key, epoch.epoch) in seen:
            raise UserError(f"{spec}: {epoch_label(epoch.epoch)} of this run is already compared (as {seen[key, epoch.epoch]}); give another epoch as RUN:EPOCH or another run")
        seen[key, epoch.epoch] = spec
        columns.append(Column(spec, run_dir, data, doc, epoch.epoch, wanted is not None, _cells_by_prompt(data, epoch)))
    return columns


# ------------------------------------------------------------------ what the runs share and where they differ


def common_pairs(columns: list[Column]) -> list[tuple[str, int]]:
    """(prompt text, seed) pairs every column has drawn, in the first run's suite order."""
    shared = set(columns[0].cells).intersection(*(c.cells for c in columns[1:]))
    return [pair for pair in columns[0].cells if pair in shared]


def no_common_pairs_error(columns: list[Column]) -> UserError:
    names = " and ".join(c.spec for c in columns)
    return UserError(f"{names} share no prompt × seed at the compared epochs; draw one suite in every run, "
                     "e.g. `bespoke-kohya sample --run RUN --prompts prompts.txt --seeds 1,2` (one prompt a line, the same file and seeds for each run)")


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (``pixel24.steps``); lists and everything else are leaves."""
    if isinstance(value, dict) and (value or not prefix):  # an empty section is a leaf; an empty document has none
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def run_settings(record: dict[str, Any]) -> dict[str, Any]:
    """What a run was made with: preset name, `--set` overrides and the resolved preset, flat."""
    return {"preset": record.get("preset"), "overrides": list(record.get("overrides") or []), **flatten(record.get("resolved") or {})}


ABSENT = object()


def settings_diff(records: list[dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    """(key, each run's value) for every setting whose value is not the same in all runs; ABSENT where a run lacks it."""
    flat = [run_settings(r) for r in records]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    rows = []
    for key in keys:
        values = [f.get(key, ABSENT) for f in flat]
        if len({_canonical(v) for v in values}) > 1:
            rows.append((key, values))
    return rows


def _canonical(value: Any) -> str:
    return "\0absent" if value is ABSENT else json.dumps(value, sort_keys=True)


def show_setting(value: Any) -> str:
    """A setting as the page prints it: text as is, everything else (lists too) as JSON; a missing key as an en dash."""
    if value is ABSENT:
        return "–"
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def dataset_warning(columns: list[Column]) -> str | None:
    """Why the runs may not share a training set (hash differs or unrecorded), or None when they do."""
    runs = {c.run_dir.resolve(): c for c in columns}.values()
    hashes = {c.spec: (c.data.record.get("dataset") or {}).get("content_hash") for c in runs}
    if len(hashes) < 2:
        return None
    missing = [spec for spec, h in hashes.items() if not h]
    if missing:
        return (f"{', '.join(missing)} record{'s' if len(missing) == 1 else ''} no dataset hash in run.json, so whether the runs "
                "were trained on the same images is unknown; each run's metrics compare against its own training set")
    if len(set(hashes.values())) == 1:
        return None
    described = "; ".join(f"{spec}: {_dataset(c)}" for spec, c in zip(hashes, runs))
    return f"the runs were trained on different datasets ({described}); each run's metrics compare against its own training set, so they are not directly comparable"


def _dataset(column: Column) -> str:
    ref = column.data.record.get("dataset") or {}
    return f"{ref.get('path', '?')}, {ref.get('images', '?')} images, hash {str(ref.get('content_hash'))[:12]}"


# ------------------------------------------------------------------ the page's parts


def grid_rows(columns: list[Column], pairs: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """Rows = prompt × seed, one cell per run: the 24×24 result as a data URI, or why there is none."""
    rows = []
    for i, (prompt, seed) in enumerate(pairs):
        cells = []
        for col in columns:
            cell = col.cells[prompt, seed]
            if cell.art is None:
                cells.append({"why": cell.problem or "unreadable"})
                continue
            alt = f"{col.name}, {epoch_label(col.epoch)}, seed {seed}"
            full = full_preview(col.run_dir, cell.full_rel)
            # A small "full-size" image (pixel24 draws 24×24) is enlarged pixel-exact too, not blurred.
            cells.append({"why": None, "src": data_uri(png_bytes(cell.art)), "alt": alt, "full": full, "full_px": full is not None and full[2] < SMALL_FULL})
        rows.append({"prompt": prompt, "seed": seed, "first": i == 0 or pairs[i - 1][0] != prompt, "cells": cells})
    return rows


def _better(values: list[float | None], refs: list[float | None], better: str) -> set[int]:
    """Indexes of the best value in a metrics row (by the metric's own direction); empty when fewer than two are known."""
    known = [(i, v) for i, v in enumerate(values) if v is not None]
    if len(known) < 2:
        return set()
    if better == "higher":
        key = [-v for _, v in known]
    elif better == "lower":
        key = [v for _, v in known]
    elif better == "closer_to_reference" and all(refs[i] is not None for i, _ in known):
        key = [abs(v - refs[i]) for i, v in known]  # type: ignore[operator]
    else:
        return set()
    best = min(key)
    return {i for (i, _), k in zip(known, key) if np.isclose(k, best)} if len(set(key)) > 1 else set()


def metrics_rows(columns: list[Column]) -> list[dict[str, Any]]:
    """One row per metric (score first), one value per run at its compared epoch, the best marked."""
    infos: dict[str, dict[str, Any]] = {}
    for col in columns:
        for info in [col.doc["score"], *col.doc["metrics"]]:
            infos.setdefault(info["key"], info)
    entries = [col.doc["epochs"].get(str(col.epoch)) or {} for col in columns]
    refs_by_run = [((col.doc.get("reference") or {}).get("values") or {}) for col in columns]
    rows = []
    for key, info in infos.items():
        values = [e.get("score") if key == "score" else (e.get("values") or {}).get(key) for e in entries]
        refs = [None if key == "score" else r.get(key) for r in refs_by_run]
        best = _better(values, refs, info.get("better", ""))
        rows.append({"key": key, "label": info["label"], "explanation": info.get("explanation", ""),
                     "better": BETTER_SHORT.get(info.get("better", ""), info.get("better", "")),
                     "cells": [{"value": v, "ref": r, "best": i in best} for i, (v, r) in enumerate(zip(values, refs))]})
    rows.append({"key": "near_copies", "label": "near-copies", "explanation": "results closer to a training image than the originals are to each other",
                 "better": BETTER_SHORT["lower"], "cells": [{"value": len(e["copies"]) if "copies" in e else None, "ref": None, "best": False} for e in entries]})
    return rows


def column_view(col: Column) -> dict[str, Any]:
    """A run's header: which epoch and why, what it was trained with, what its own report warns about."""
    record = col.data.record
    rec = col.doc["recommendation"]
    why = "recommended by the run's report"
    if col.chosen:
        why = "chosen as RUN:EPOCH" + (f" (the report recommends epoch {rec['epoch']})" if rec.get("epoch") not in (None, col.epoch) else "")
    return {
        "name": col.name, "spec": col.spec, "path": str(col.run_dir), "epoch": col.epoch, "epoch_label": epoch_label(col.epoch),
        "why": why, "reasons": list(rec.get("reasons") or []) if rec.get("epoch") == col.epoch else [],
        "verdict": col.doc["verdicts"].get(str(col.epoch), ""),
        "preset": record.get("preset", "?"), "engine": record.get("engine", "?"), "status": record.get("status", "?"),
        "dataset": _dataset(col), "warnings": [n.text for n in col.data.notices if n.level in ("warn", "error")],
    }


# ------------------------------------------------------------------ writing


def compare_document(columns: list[Column], pairs: list[tuple[str, int]], diff: list[tuple[str, list[Any]]], warning: str | None) -> dict[str, Any]:
    """compare.json: what the page shows, for scripts (values as the runs' metrics.json store them)."""
    return {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tool_version": __version__,
        "runs": [{"spec": c.spec, "path": str(c.run_dir), "id": c.name, "epoch": c.epoch, "chosen": c.chosen,
                  "recommended_epoch": c.doc["recommendation"].get("epoch"), "metrics": c.doc["epochs"].get(str(c.epoch))} for c in columns],
        "pairs": [{"prompt": p, "seed": s} for p, s in pairs],
        "settings_differ": [{"key": k, "values": [None if v is ABSENT else v for v in values]} for k, values in diff],
        "dataset_warning": warning,
    }


def render_compare(columns: list[Column], pairs: list[tuple[str, int]], diff: list[tuple[str, list[Any]]], warning: str | None, generated: str) -> str:
    """The page: templates/compare.html.j2, autoescaped, images as data URIs, no script."""
    return _environment().get_template("compare.html.j2").render(
        title=" vs ".join(c.label for c in columns),
        columns=[column_view(c) for c in columns],
        dataset_warning=warning,
        rows=grid_rows(columns, pairs),
        prompts=len(dict.fromkeys(p for p, _ in pairs)),
        metrics=metrics_rows(columns),
        settings=[(key, [show_setting(v) for v in values]) for key, values in diff],
        side=ART * SCALE, scale=SCALE,
        width=PROMPT_COL + SEED_COL + RUN_COL * len(columns), col_widths=(PROMPT_COL, SEED_COL, RUN_COL),
        generated=generated, version=__version__,
    )


def default_out(first_run: Path) -> Path:
    """A new folder beside the first run: compare-<UTC time>, numbered if that exists."""
    stem = first_run.resolve().parent / f"compare-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"
    candidate, n = stem, 1
    while candidate.exists():
        n += 1
        candidate = stem.with_name(f"{stem.name}-{n}")
    return candidate


def create_dir(target: Path, files: dict[str, bytes]) -> None:
    """Make ``target`` holding ``files``: written in a hidden folder beside it, then renamed; never over an existing one."""
    if target.exists():
        raise UserError(f"{target} already exists; give a new folder with --out (a comparison never overwrites one)")
    try:
        with staged_folder(target, refusal="give a new folder with --out (a comparison never overwrites one)") as tmp:
            for name, payload in files.items():
                (tmp / name).write_bytes(payload)
    except OSError as exc:
        if not read_only(exc):
            raise
        raise UserError(f"{target.parent}: cannot write the comparison there ({exc.strerror}); give a writable new folder with --out DIR") from None


@dataclass
class Comparison:
    """What `report --compare` wrote, for the CLI to print."""

    page: Path
    columns: list[Column]
    pairs: int
    settings_differ: int
    warnings: list[str]


def write_compare(specs: list[str], out: Path | None = None) -> Comparison:
    """Compare the runs in ``specs`` (``RUN`` or ``RUN:EPOCH``) and write ``out``/index.html + compare.json."""
    columns = load_columns(specs)
    pairs = common_pairs(columns)
    if not pairs:
        raise no_common_pairs_error(columns)
    target = Path(out) if out is not None else default_out(columns[0].run_dir)
    diff = settings_diff([c.data.record for c in columns])
    warning = dataset_warning(columns)
    doc = compare_document(columns, pairs, diff, warning)
    page = render_compare(columns, pairs, diff, warning, doc["generated"])
    create_dir(target, {INDEX: page.encode("utf-8"), COMPARE_JSON: (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")})
    return Comparison(target / INDEX, columns, len(pairs), len(diff), [warning] if warning else [])
