"""Score a collected run: the metrics document (what metrics.json holds) and the recommended epoch.

The style numbers come from :mod:`bespoke_kohya.metrics`, the held-out loss and the
two-sample test from :mod:`.evidence`; :mod:`.recommend` weighs them into the score and the
recommendation. This module rounds everything as metrics.json stores it, so the page prints
exactly those values and the recommendation is the same from fresh or cached numbers.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..distinguish import NEAR_COPY_DELTA_E, NEAR_COPY_SHARE
from . import evidence
from .collect import BASE_EPOCH, Cell, EpochSamples, RunData, load_full
from .recommend import (CALIBRATION_CRYPTO, CALIBRATION_REAL, CALIBRATION_REAL_COPIES, MIN_CONFIDENT, TOLD_APART, WEIGHT_DISTINGUISH, WEIGHT_HELDOUT_LOSS, WEIGHT_NEAR_COPIES,
                        WEIGHT_STYLE, WEIGHTS, Evidence, parts, recommend, score)


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
    """metrics.json: per-epoch and reference values (rounded as printed), the evidence, recommendation, verdicts.

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
        "evidence": EVIDENCE_INFO,
        "weights": dict(WEIGHTS),
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
    doc["reference"] = {"source": data.reference_source, "images": len(data.reference_images), "copy_threshold": round_metric(ref.copy_threshold), "values": _rounded(ref.values()),
                        "near_copy_share": round_metric(evidence.real_near_copy_share(data))}
    results = {ep.epoch: _score_epoch(M, data.run_dir, ep, ref) for ep in data.sampled}
    told = {e: _rounded_distinguish(d) for e, d in evidence.distinguishability(data).items()}
    losses = evidence.validation_by_epoch(data)
    # The base model's held-out loss (if logged) is not scored: the loss part is relative to the trained epochs.
    proof = {e: epoch_evidence(r, told.get(e), losses.get(e) if e != BASE_EPOCH else None) for e, r in results.items()}
    pick = recommend({e: p for e, p in proof.items() if e != BASE_EPOCH})
    table = parts(proof)
    scored = {e: score(table[e]) for e in proof}
    verdicts = {e: epoch_verdict(M, results[e], proof[e], scored.get(e)) for e in sorted(results)}
    if BASE_EPOCH in verdicts:
        verdicts[BASE_EPOCH] = "base model without a LoRA (for comparison, never recommended): " + verdicts[BASE_EPOCH]
    doc["recommendation"] = {"epoch": pick.epoch, "reasons": pick.reasons, "least_bad": pick.least_bad}
    doc["verdicts"] = {str(k): str(v) for k, v in sorted(verdicts.items())}
    for ep in data.sampled:
        e = ep.epoch
        doc["epochs"][str(e)] = _epoch_entry(ep, results[e], told.get(e), proof[e], scored.get(e), table[e])
        flagged = {_cell_key(ep.images[c["index"]]): {"class": "copy", "text": f"copy of {c['nearest']}"} for c in results[e]["copies"]}
        if flagged:
            doc["cells"][str(e)] = flagged
    return doc


def table_columns(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every number shown for an epoch, in table order: the score, the evidence, the style metrics (key, label, explanation, better)."""
    return [doc["score"], *doc["evidence"], *doc["metrics"]]


def epoch_values(doc: dict[str, Any], epoch: int) -> dict[str, float | None]:
    """{column key: value} of one epoch of a metrics document, as its tables print them (keys of table_columns)."""
    entry = doc["epochs"][str(epoch)]
    evidence_values = {m["key"]: entry["evidence"].get(m["key"]) for m in doc["evidence"]}
    return {"score": entry["score"], **evidence_values, **entry["values"]}


def _rounded_distinguish(entry: dict[str, Any]) -> dict[str, Any]:
    """A two-sample result with its numbers as metrics.json stores them (a cached one reads back the same)."""
    out = dict(entry)
    for key in ("accuracy", "near_copy_share"):
        out[key] = round_metric(out.get(key))
    if out.get("fold_accuracies") is not None:
        out["fold_accuracies"] = [round_metric(v) for v in out["fold_accuracies"]]
    return out


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
    "explanation": (
        f"What the recommendation ranks by: the weighted mean of the evidence, each part 0–1 with 1 good: style ×{WEIGHT_STYLE:g}, "
        f"hard to tell from the real punks ×{WEIGHT_DISTINGUISH:g}, no near-copies ×{WEIGHT_NEAR_COPIES:g}, low held-out loss ×{WEIGHT_HELDOUT_LOSS:g}; "
        "evidence an epoch lacks is left out and the rest re-weighted."
    ),
    "better": "higher",
}
SCORE_PARTS = ("style", "grid", "diversity_score", "copy_share", "quality")
# The columns the evidence adds to the metrics table (values live in each epoch's entry, not in "values").
EVIDENCE_INFO = [
    {"key": "heldout_loss", "label": "held-out loss", "better": "lower",
     "explanation": "The training loss measured at the end of the epoch on the images held out from training (logs/validation.csv); rising while the training loss falls means overfitting."},
    {"key": "two_sample_accuracy", "label": "two-sample accuracy", "better": "lower",
     "explanation": f"How often a small CNN, cross-validated, tells the epoch's 24×24 outputs from real punks: 0.5 = cannot tell them apart, 1 = always can. "
                    f"Calibration on the 184 Bespoke Punks: real vs real {CALIBRATION_REAL:g}, CryptoPunks vs Bespoke {CALIBRATION_CRYPTO:g}; "
                    f"{TOLD_APART:g} or more counts as always told apart."},
    {"key": "near_copy_share", "label": "near-copy share", "better": "lower",
     "explanation": f"Share of the epoch's outputs (suite and held-out captions) within ΔE {NEAR_COPY_DELTA_E:g} of a training image in all but {NEAR_COPY_SHARE:.0%} of their pixels; "
                    f"the real set's own rate is {CALIBRATION_REAL_COPIES:g} on the 184 punks (variants of one character)."},
]


def _score_epoch(M: Any, run_dir: Path, ep: EpochSamples, ref: Any) -> dict[str, Any]:
    """metrics.epoch_metrics on an epoch's 24×24 results, with full-size renders and grids where recorded."""
    cells = ep.images
    fulls = [load_full(run_dir, c) for c in cells]
    return M.epoch_metrics([c.art for c in cells], ref, groups=[c.prompt_id for c in cells], fulls=fulls, grids=[c.grid for c in cells],
                           prompts=[c.prompt for c in cells])


def _cell_key(cell: Cell) -> str:
    return f"{cell.prompt_id}-s{cell.seed}"


def _rounded(values: dict[str, Any]) -> dict[str, float | None]:
    return {k: round_metric(v) for k, v in values.items()}


def epoch_evidence(result: dict[str, Any], told: dict[str, Any] | None, loss: float | None) -> Evidence:
    """What the recommendation weighs for one epoch, from its style metrics, two-sample result and held-out loss.

    The near-copy share is the larger of the two near-copy tests: the style metrics' (the
    training set's own 5th percentile, flagged in the grid) and the two-sample test's fixed one.
    """
    told = told or {}
    copy_share = max(float(result.get("copy_share") or 0.0), float(told.get("near_copy_share") or 0.0))
    return Evidence(quality=round_metric(result.get("quality")), typicality=round_metric(result.get("style")), diversity=round_metric(result.get("diversity_score")),
                    copy_share=round_metric(copy_share) or 0.0, accuracy=told.get("accuracy"), per_class=int(told.get("per_class") or 0),
                    heldout_loss=round_metric(loss))


def epoch_verdict(M: Any, result: dict[str, Any], ev: Evidence, combined: float | None) -> str:
    """One line per epoch: its score, the evidence that stands out, then the style metrics' phrases."""
    if not result.get("n"):
        return "no samples"
    said = []
    if ev.heldout_loss is not None:
        said.append(f"held-out loss {ev.heldout_loss:.4g}")
    if ev.accuracy is not None:
        uncertain = f", uncertain: {ev.per_class} images per class" if ev.per_class < MIN_CONFIDENT else ""
        said.append(f"two-sample accuracy {ev.accuracy:.2f}{uncertain}")
    head = f"score {combined:.2f}" if combined is not None else "not scored"
    return head + ": " + "; ".join(said + M.verdict_parts(result) or ["no metric stands out"])


def _epoch_entry(ep: EpochSamples, result: dict[str, Any], told: dict[str, Any] | None, ev: Evidence, combined: float | None, weighed: dict[str, Any]) -> dict[str, Any]:
    """One epoch in metrics.json: the table's values, the score and its parts, the evidence, and per-image values."""
    images = []
    for cell, per in zip(ep.images, result["images"]):
        values = {k: (v if isinstance(v, (bool, str)) else round_metric(v)) for k, v in per.items()}
        images.append({"prompt_id": cell.prompt_id, "seed": cell.seed, "art": cell.art_rel, **values})
    told = told or {}
    return {
        "checkpoint": ep.checkpoint,
        "images": len(ep.images),
        "heldout_images": len(ep.heldout_images),
        "values": _rounded(result["values"]),
        "score": combined,
        "parts": {k: round_metric(result.get(k)) for k in SCORE_PARTS},
        # What the recommendation weighed; copy_share is the larger of the two near-copy tests (epoch_evidence).
        "evidence": {"heldout_loss": ev.heldout_loss, "two_sample_accuracy": ev.accuracy, "near_copy_share": told.get("near_copy_share"), "copy_share": ev.copy_share},
        "recommendation_parts": {k: {"part": round_metric(v["part"]), "weight": round_metric(v["weight"])} for k, v in weighed.items()},
        "distinguish": told or None,
        "copies": [{"prompt_id": ep.images[c["index"]].prompt_id, "seed": ep.images[c["index"]].seed, "nearest": c["nearest"], "distance": round_metric(c["distance"])} for c in result["copies"]],
        "per_image": images,
    }
