"""The classifier two-sample test and the near-copy count, on real punks and on sets whose answer is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bespoke_kohya import distinguish
from bespoke_kohya.images import load_rgb


def noise_punks(seed: int, n: int, colour: tuple[int, int, int] | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = rng.integers(0, 256, (n, 24, 24, 3)).astype(np.uint8)
    if colour is not None:
        out[:, :, :12] = colour  # half of every image one flat colour: trivially told apart
    return out


def test_sets_from_one_source_are_indistinguishable_and_different_sources_are_not() -> None:
    same = distinguish.two_sample_accuracy(noise_punks(1, 60), noise_punks(2, 60))
    different = distinguish.two_sample_accuracy(noise_punks(1, 60), noise_punks(2, 60, colour=(255, 0, 0)))
    assert 0.3 <= same.accuracy <= 0.7
    assert different.accuracy >= 0.95
    assert same.per_class == 60 and len(same.fold_accuracies) == distinguish.FOLDS


def test_classes_are_balanced_and_the_result_is_deterministic() -> None:
    a = distinguish.two_sample_accuracy(noise_punks(1, 80), noise_punks(2, 30, colour=(0, 0, 255)))
    b = distinguish.two_sample_accuracy(noise_punks(1, 80), noise_punks(2, 30, colour=(0, 0, 255)))
    assert a.per_class == 30 and a == b


def test_grouped_folds_keep_a_prompt_in_one_fold() -> None:
    """Eight near-identical images per 'prompt': pooled folds let the classifier memorise prompts, grouped folds do not."""
    rng = np.random.default_rng(0)
    real = noise_punks(3, 80)
    prompts = noise_punks(4, 10)
    generated = np.repeat(prompts, 8, axis=0)
    flips = rng.random(generated.shape[:3]) < 0.02
    generated[flips] = 0
    groups = [str(i // 8) for i in range(len(generated))]
    pooled = distinguish.two_sample_accuracy(real, generated).accuracy
    grouped = distinguish.two_sample_accuracy(real, generated, groups=groups).accuracy
    assert grouped < pooled
    with pytest.raises(ValueError, match="at least 5 groups"):
        distinguish.two_sample_accuracy(real, generated[:16], groups=groups[:16])


def test_too_few_images_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 10 images of each kind"):
        distinguish.two_sample_accuracy(noise_punks(1, 5), noise_punks(2, 50))


def test_near_copies_are_counted_against_training_images(punks_dir: Path) -> None:
    real = np.stack([load_rgb(p) for p in sorted(punks_dir.glob("*.png"))])
    copies = real[:10].copy()
    copies[:, 0, :5] = 0  # 5 of 576 pixels changed: still a near-copy
    far = 255 - real[:10]
    assert distinguish.near_copy_share(copies, real) == 1.0
    assert distinguish.near_copy_share(far, real) == 0.0
    # The real set's own rate (variants of one character): about 7% of the 184 (pixel24-probe.md).
    own = distinguish.near_copy_share(real, real, exclude_self=True)
    assert 0.02 <= own <= 0.15


@pytest.mark.slow
def test_calibration_on_the_real_punks(punks_dir: Path, tmp_path: Path) -> None:
    """Two halves of the real set read about 0.5; CryptoPunks against Bespoke Punks about 1.0."""
    from bespoke_kohya.engines.pixel24.standin import build_standin

    real = np.stack([load_rgb(p) for p in sorted(punks_dir.glob("*.png"))])
    order = np.random.default_rng(1).permutation(len(real))
    halves = distinguish.two_sample_accuracy(real[order[: len(real) // 2]], real[order[len(real) // 2 :]])
    crypto = np.stack([load_rgb(p) for p in sorted(build_standin(tmp_path / "standin", limit=len(real)).glob("*.png"))])
    assert halves.accuracy <= 0.65
    assert distinguish.two_sample_accuracy(real, crypto).accuracy >= 0.9
