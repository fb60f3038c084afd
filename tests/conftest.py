"""Shared fixtures: the real Bespoke Punks by path, and small helpers."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASET = Path(os.environ.get("BESPOKE_DATASET", REPO.parent / "shared" / "datasets" / "bespoke-punks-24"))


@pytest.fixture(scope="session")
def punks_dir() -> Path:
    """The real Bespoke Punks folder (read-only); skips when it is not beside the repo."""
    if not SHARED_DATASET.is_dir():
        pytest.skip(f"real dataset not found at {SHARED_DATASET} (set BESPOKE_DATASET)")
    return SHARED_DATASET


@pytest.fixture
def small_punks(punks_dir: Path, tmp_path: Path) -> Path:
    """A writable copy of 8 real punks (with captions), in a folder whose name has a space."""
    out = tmp_path / "small punks"
    out.mkdir()
    for png in sorted(punks_dir.glob("*.png"))[:8]:
        shutil.copy(png, out / png.name)
        caption = png.with_suffix(".txt")
        if caption.exists():
            shutil.copy(caption, out / caption.name)
    return out


def make_punk(path: Path, seed: int = 0, size: tuple[int, int] = (24, 24), mode: str = "RGB") -> Path:
    """A synthetic punk-like image: solid background and a blocky head."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size[1], size[0], 3), np.uint8)
    img[:] = rng.integers(0, 256, 3)
    img[6:20, 7:17] = rng.integers(0, 256, 3)
    img[10, 9] = img[10, 14] = 0
    im = Image.fromarray(img)
    if mode == "RGBA":
        im = im.convert("RGBA")
    im.save(path)
    return path
