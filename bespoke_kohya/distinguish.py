"""Can a small CNN tell generated 24×24 images from real ones? (classifier two-sample test)

The style metrics in :mod:`.metrics` are hand-made pixel statistics. This is the learned
counterpart: train a small convolutional classifier to separate the two sets, with
stratified k-fold cross-validation on balanced classes, and report its accuracy on the
folds it did not train on (Lopez-Paz & Oquab, "Revisiting Classifier Two-Sample Tests",
ICLR 2017). 0.5 means the classifier cannot tell the sets apart; 1.0 means it always can.

Calibration on the 184 Bespoke Punks (``benchmarks/pixel24.py`` prints it): two halves
of the real set read about 0.5; CryptoPunks against Bespoke Punks read about 1.0.

Near-copies are the other half of the question (a generator that returns its training
images would pass this test): :func:`near_copy_share` counts outputs that differ from
some training image in fewer than ``NEAR_COPY_SHARE`` of their pixels by more than
``NEAR_COPY_DELTA_E`` ΔE76.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .metrics import _labs, difference_matrix

FOLDS = 5
EPOCHS = 40
BATCH = 32
NEAR_COPY_DELTA_E = 3.0  # pixel-facts.md: "fewer than 10% of pixels more than ΔE 3 apart"
NEAR_COPY_SHARE = 0.10


@dataclass(frozen=True)
class TwoSampleResult:
    accuracy: float  # mean held-out accuracy over the folds
    fold_accuracies: tuple[float, ...]
    per_class: int  # images of each class used (balanced)

    def as_dict(self) -> dict[str, object]:
        return {"accuracy": self.accuracy, "fold_accuracies": list(self.fold_accuracies), "per_class": self.per_class}


def _classifier() -> nn.Module:
    """~25k parameters: enough to see texture, outlines and palette; small enough for 160 images a side."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),  # 12×12
        nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),  # 6×6
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 1),
    )


def _tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _fit(xt: torch.Tensor, yt: torch.Tensor, seed: int) -> nn.Module:
    """The classifier trained on ``xt`` (labels ``yt``: 1 real, 0 generated), the same way for every use."""
    torch.manual_seed(seed)
    model = _classifier()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), BATCH):
            b = order[start : start + BATCH]
            loss = nn.functional.binary_cross_entropy_with_logits(model(xt[b])[:, 0], yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _fold_accuracy(x: torch.Tensor, y: torch.Tensor, train: np.ndarray, test: np.ndarray, seed: int) -> float:
    model = _fit(x[train], y[train], seed)
    with torch.no_grad():
        pred = model(x[test])[:, 0] > 0
    return float((pred == (y[test] > 0.5)).float().mean())


def train_critic(real: np.ndarray, generated: np.ndarray, seed: int = 0) -> nn.Module:
    """The two-sample test's classifier trained once on all of ``real`` (and its mirror images) against ``generated``:
    a critic whose logit says how real a new image looks (discriminator rejection sampling, Azadi et al. 2019).

    One thread, so the same inputs give the same weights on every machine (the collection depends on them).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        real = np.concatenate([real, real[:, :, ::-1]])  # punks face the viewer: a mirrored punk is still real
        x = _tensor(np.concatenate([real, generated]))
        y = torch.cat([torch.ones(len(real)), torch.zeros(len(generated))])
        return _fit(x, y, seed)
    finally:
        torch.set_num_threads(threads)


def critic_scores(critic: nn.Module, images: np.ndarray) -> np.ndarray:
    """The critic's logit per image (higher: more like the real set)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return critic(_tensor(images))[:, 0].numpy().astype(np.float64)
    finally:
        torch.set_num_threads(threads)


def _group_folds(groups: Sequence[str] | None, picked: np.ndarray, folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold of each picked generated image: round-robin over shuffled images, or over shuffled groups."""
    if groups is None:
        return rng.permutation(len(picked)) % folds
    labels = [groups[i] for i in picked]
    names = sorted(set(labels))
    if len(names) < folds:
        raise ValueError(f"grouped two-sample test needs at least {folds} groups (prompts), got {len(names)}")
    order = {name: k % folds for k, name in enumerate(rng.permutation(names).tolist())}
    return np.array([order[label] for label in labels])


def two_sample_accuracy(real: np.ndarray, generated: np.ndarray, *, groups: Sequence[str] | None = None, folds: int = FOLDS, seed: int = 0,
                        max_per_class: int = 500) -> TwoSampleResult:
    """Held-out accuracy of a CNN separating ``generated`` from ``real`` (both ``(N, 24, 24, 3)`` uint8).

    The larger set is subsampled so both classes have the same size (at most ``max_per_class``);
    each fold holds out the same share of each class. ``groups`` (one label per generated
    image, e.g. its prompt) keeps every image of a group in one fold: several seeds of one
    prompt share its background and traits, and a classifier that saw some of them in
    training would recognise the prompt, not the generator. Deterministic for a seed.
    """
    n = min(len(real), len(generated), max_per_class)
    if n < folds * 2:
        raise ValueError(f"the two-sample test needs at least {folds * 2} images of each kind (got {len(real)} real, {len(generated)} generated)")
    rng = np.random.default_rng(seed)
    pick_real = rng.choice(len(real), n, replace=False)
    pick_gen = rng.choice(len(generated), n, replace=False)
    x = _tensor(np.concatenate([real[pick_real], generated[pick_gen]]))
    y = torch.cat([torch.zeros(n), torch.ones(n)])
    # Stratified folds: the same positions of each (shuffled) class go to the same fold.
    fold_of = np.concatenate([rng.permutation(n) % folds, _group_folds(groups, pick_gen, folds, rng)])
    threads = torch.get_num_threads()
    accuracies = []
    try:
        for k in range(folds):
            test = np.nonzero(fold_of == k)[0]
            train = np.nonzero(fold_of != k)[0]
            accuracies.append(_fold_accuracy(x, y, train, test, seed * 1000 + k))
    finally:
        torch.set_num_threads(threads)
    return TwoSampleResult(accuracy=float(np.mean(accuracies)), fold_accuracies=tuple(accuracies), per_class=n)


def near_copy_share(images: np.ndarray, training: np.ndarray, *, exclude_self: bool = False) -> float:
    """Share of ``images`` that are near-copies of some ``training`` image.

    ``exclude_self``: ``images`` *is* ``training`` (the real set's own rate: each image
    against the others).
    """
    if len(images) == 0 or len(training) == 0:
        return 0.0
    diff = difference_matrix(_labs(images), _labs(training), threshold=NEAR_COPY_DELTA_E)
    if exclude_self:
        np.fill_diagonal(diff, np.inf)
    return float((diff.min(axis=1) < NEAR_COPY_SHARE).mean())
