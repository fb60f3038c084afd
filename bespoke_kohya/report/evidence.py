"""Evidence per epoch beyond the style metrics: the held-out loss and the classifier two-sample test.

The two-sample test (:func:`bespoke_kohya.distinguish.two_sample_accuracy`) trains a small
CNN five times per epoch, seconds of CPU, so its result is stored in metrics.json under a
key made of everything it depends on (the epoch's 24×24 outputs, the real images, the
method's settings); the next report reuses it for every epoch whose key is unchanged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import distinguish
from .collect import Cell, EpochSamples, RunData
from .recommend import MIN_CONFIDENT

SEED = 0  # the two-sample test's seed: the same outputs always give the same accuracy
MAX_PER_CLASS = 200  # more images add seconds, not much certainty: 200 per class is ±0.035 at 0.5 (binomial)
# Bump when the test changes in a way its constants do not show: cached results are then recomputed.
METHOD = f"cnn-two-sample v1 folds={distinguish.FOLDS} epochs={distinguish.EPOCHS} batch={distinguish.BATCH} seed={SEED} max={MAX_PER_CLASS} " \
         f"copy={distinguish.NEAR_COPY_DELTA_E}/{distinguish.NEAR_COPY_SHARE}"


def validation_by_epoch(data: RunData) -> dict[int, float]:
    """{epoch: held-out loss} for the epochs logs/validation.csv gives a finite value."""
    return {int(row["epoch"]): float(row["loss"]) for row in data.validation if row["loss"] is not None}  # type: ignore[arg-type]


def training_set(data: RunData) -> np.ndarray:
    """The real images the model trained on: the reference minus the held-out ones (a near-copy of those is no memorisation)."""
    held = {h.stem for h in data.heldout or []}
    keep = [a for n, a in zip(data.reference_names, data.reference_images) if n not in held]
    return np.stack(keep) if keep else np.zeros((0, 24, 24, 3), np.uint8)


def outputs(ep: EpochSamples) -> tuple[list[Cell], list[str]]:
    """Every 24×24 output of an epoch (suite and held-out draws) and its group: one group per prompt."""
    cells = ep.images + ep.heldout_images
    return cells, [c.prompt_id for c in cells]


def cache_key(cells: list[Cell], groups: list[str], real: np.ndarray, training: np.ndarray) -> str:
    """sha256 of what a two-sample result depends on: the method, the outputs in order with their groups, the real sets."""
    digest = hashlib.sha256(METHOD.encode("utf-8"))
    for cell, group in zip(cells, groups):
        digest.update(group.encode("utf-8") + b"\0" + np.ascontiguousarray(cell.art).tobytes())
    for images in (real, training):
        digest.update(b"\1" + str(images.shape).encode("ascii") + np.ascontiguousarray(images).tobytes())
    return digest.hexdigest()


@contextmanager
def one_thread() -> Iterator[None]:
    """Train the CNN on one thread: the same numbers on every machine, and a network this small gains nothing from more."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def two_sample(real: np.ndarray, generated: np.ndarray, groups: list[str]) -> dict[str, Any]:
    """The two-sample accuracy of ``generated`` against ``real``, grouped by prompt when there are enough prompts.

    Grouped folds keep every seed of a prompt in one fold (with pooled folds the classifier
    learns the prompts' backgrounds and reads high even for a perfect generator); with fewer
    prompts than folds it falls back to pooled folds and says so.
    """
    grouped = len(set(groups)) >= distinguish.FOLDS
    try:
        with one_thread():
            result = distinguish.two_sample_accuracy(real, generated, groups=groups if grouped else None, seed=SEED, max_per_class=MAX_PER_CLASS)
    except ValueError as exc:  # too few images of one kind: said on the page, not an error
        return {"accuracy": None, "per_class": min(len(real), len(generated)), "grouped": grouped, "problem": str(exc)}
    return {"accuracy": result.accuracy, "fold_accuracies": list(result.fold_accuracies), "per_class": result.per_class, "grouped": grouped, "problem": None}


class _CachedResult(BaseModel):
    """A two-sample result as metrics.json stores it: the cache is read back from a run folder that may come from elsewhere."""

    model_config = ConfigDict(extra="allow", strict=True)

    key: str
    images: Annotated[int, Field(ge=0)]
    accuracy: Annotated[float, Field(ge=0, le=1)] | None
    fold_accuracies: list[Annotated[float, Field(ge=0, le=1)]] = []
    per_class: Annotated[int, Field(ge=0)]
    grouped: bool
    problem: str | None
    near_copy_share: Annotated[float, Field(ge=0, le=1)] | None
    uncertain: bool


def _cached(previous: dict[str, Any] | None, epoch: int, key: str) -> dict[str, Any] | None:
    """The last report's result for this epoch when it was computed from exactly the same inputs (and has the shape this writes)."""
    epochs = (previous or {}).get("epochs")
    entry = epochs.get(str(epoch)) if isinstance(epochs, dict) else None
    found = entry.get("distinguish") if isinstance(entry, dict) else None
    if not isinstance(found, dict) or found.get("key") != key:
        return None
    try:
        _CachedResult.model_validate(found)
    except ValidationError:
        return None  # edited or from another version: computed again rather than trusted
    return dict(found)


def distinguishability(data: RunData) -> dict[int, dict[str, Any]]:
    """{epoch: two-sample accuracy, images per class, near-copy share, ...} for every sampled epoch.

    Reuses the previous report's result when the epoch's key is unchanged.
    """
    if not data.reference_images:
        return {}
    real = np.stack(data.reference_images)
    training = training_set(data)
    out: dict[int, dict[str, Any]] = {}
    for ep in data.sampled:
        cells, groups = outputs(ep)
        key = cache_key(cells, groups, real, training)
        if (found := _cached(data.previous, ep.epoch, key)) is not None:
            out[ep.epoch] = found
            continue
        generated = np.stack([c.art for c in cells])  # type: ignore[misc]
        result = two_sample(real, generated, groups)
        result["near_copy_share"] = distinguish.near_copy_share(generated, training)
        out[ep.epoch] = {"key": key, "images": len(cells), **result, "uncertain": result["per_class"] < MIN_CONFIDENT}
    return out


def real_near_copy_share(data: RunData) -> float | None:
    """The training set's own near-copy rate (each image against the others): what "normal" looks like for this data."""
    training = training_set(data)
    return distinguish.near_copy_share(training, training, exclude_self=True) if len(training) > 1 else None
