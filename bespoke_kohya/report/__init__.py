"""`report`: one self-contained HTML page comparing a run's epochs, plus metrics.json.

Reads what the earlier stages left in the run directory (run.json, logs/loss.csv,
logs/validation.csv, samples/samples.json and the images it lists, reproduce.json) and writes
``RUN/report/index.html`` and ``RUN/report/metrics.json``. Every image is embedded
as a data URI and there is no script or stylesheet from elsewhere, so the page opens
from disk with no network and can be mailed.

What is missing (no samples yet, an epoch never sampled, a failed training, the
training originals moved) is said on the page instead of failing; only a folder that
is not a run at all (no run.json) is an error.

The parts, in pipeline order:
  collect    read the run folder into a RunData (the only module that reads run files)
  evidence   held-out loss per epoch; the two-sample test and near-copies per epoch (cached in metrics.json)
  recommend  the weights, the score, the recommended epoch and the sentence why (or that none is good)
  score      the metrics document (numbers from bespoke_kohya.metrics and evidence, weighed by recommend)
  plot       the loss curve and the held-out loss per epoch as PNGs
  page     the HTML page: templates/report.html.j2 + templates/report.css, autoescaped
The page prints the same rounded values that metrics.json stores.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from ..atomic import read_only, staged_folder
from ..errors import UserError
from .collect import BASE_EPOCH, RunData, collect, read_previous_metrics, read_record, read_samples
from .page import render_html
from .plot import heldout_plot_png, loss_plot_png
from .score import metrics_document

__all__ = ["REPORT_DIR", "best_epoch", "build", "read_recommended_epoch", "report_summary", "write_report"]

REPORT_DIR = "report"


def replace_dir(target: Path, files: dict[str, bytes]) -> None:
    """Swap in a new ``target`` folder holding ``files``; a failure leaves the previous report untouched."""
    with staged_folder(target, "replace") as tmp:
        for name, payload in files.items():
            (tmp / name).write_bytes(payload)


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
    page = render_html(data, doc, loss_plot_png(data.loss), heldout_plot_png(data.validation, data.loss))
    metrics = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    try:
        replace_dir(run_dir / REPORT_DIR, {"index.html": page.encode("utf-8"), "metrics.json": metrics.encode("utf-8")})
    except OSError as exc:
        if not read_only(exc):
            raise
        copy = shlex.quote(f"{run_dir.resolve().name}-copy")
        raise UserError(f"{run_dir}: cannot write report/ into this run folder ({exc.strerror}); it is read-only here: copy it somewhere writable "
                        f"(cp -r {shlex.quote(str(run_dir))} {copy}) and run `bespoke-kohya report --run {copy}` there") from None
    return run_dir / REPORT_DIR / "index.html"


def best_epoch(doc: dict[str, Any]) -> int | None:
    """The epoch to show for a run (`report --compare`): the recommended one, else the least bad when none is good."""
    rec = doc.get("recommendation") or {}
    return rec.get("epoch") if rec.get("epoch") is not None else rec.get("least_bad")


def read_recommended_epoch(run_dir: Path) -> int | None:
    """The epoch the run's last written report recommends (report/metrics.json), or None (no report, or no epoch is good)."""
    from .collect import read_previous_metrics

    doc = read_previous_metrics(Path(run_dir)) or {}
    epoch = (doc.get("recommendation") or {}).get("epoch")
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch > 0 else None


def _summary_shaped(doc: dict[str, Any]) -> bool:
    """Whether a saved metrics.json has what report_summary reads (it is a cache: a hand-edited one is recomputed, not trusted)."""
    try:
        epochs, rec = doc["epochs"], doc["recommendation"]
        ok = isinstance(epochs, dict) and isinstance(rec, dict) and isinstance(doc.get("verdicts"), dict)
        return ok and all(k.isdigit() and isinstance(v, dict) and isinstance(v.get("images"), int) for k, v in epochs.items()) and \
            isinstance(rec.get("reasons") or [], list) and isinstance(doc.get("notices") or [], list) and \
            all(isinstance(n, dict) and isinstance(n.get("text"), str) for n in doc.get("notices") or [])
    except (KeyError, TypeError, AttributeError):
        return False


def report_summary(run_dir: Path) -> dict[str, Any]:
    """The recommended epoch, its reasons, the verdict per epoch and the page's warnings (for `report` and `reproduce`).

    Reuses report/metrics.json when it was made from the current samples.json;
    otherwise computes the metrics (without writing anything).
    """
    run_dir = Path(run_dir)
    read_record(run_dir)
    _, current = read_samples(run_dir)
    doc = read_previous_metrics(run_dir) if current is not None else None
    if doc is not None and (doc.get("samples_sha256") != current or not _summary_shaped(doc)):
        doc = None  # made from other samples, or not the shape this version writes: computed afresh
    if doc is None:
        doc = build(run_dir)[1]
    notices = doc.get("notices") or []
    trained = sorted(int(e) for e in doc["epochs"] if int(e) != BASE_EPOCH)
    return {
        "recommended_epoch": doc["recommendation"].get("epoch"),
        "reasons": list(doc["recommendation"].get("reasons") or []),
        "verdicts": dict(doc["verdicts"]),
        "notices": [n["text"] for n in notices],
        "warnings": [n["text"] for n in notices if n.get("level") in ("warn", "error")],
        "compared_epochs": trained,  # trained epochs with pictures on the page (empty: nothing to compare)
        "images_per_epoch": max((doc["epochs"][str(e)]["images"] for e in trained), default=0),
    }
