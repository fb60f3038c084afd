"""Score a collected run: the metrics document (what metrics.json holds) and the recommended epoch.

The numbers come from :mod:`bespoke_kohya.metrics`; this module feeds it each epoch's
24x24 results and rounds what it returns, so the page prints exactly the values
metrics.json stores.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..metrics import SCORE_EXPLANATION
from .collect import BASE_EPOCH, Cell, EpochSamples, RunData, load_full


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



def metrics_document(data: RunData) -> dict[str, Any]:
    """metrics.json: per-epoch and reference values (rounded as printed), recommendation, verdicts.

    Epoch 0 (the base model without a LoRA, when sampled) is scored for comparison
    but never recommended: it is not a training result.
    """
    from .. import metrics as M

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
    from ..metrics import Reference

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
