"""Synthetic punk-like images for tests that need a picture, and small copies of the real dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image


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


def copy_punks(source: Path, out: Path, every: int, count: int) -> Path:
    """``count`` real punks (every ``every``-th, spread over the series) with their captions, copied into a new ``out``."""
    out.mkdir(parents=True)
    for png in sorted(source.glob("*.png"))[::every][:count]:
        shutil.copy(png, out / png.name)
        if png.with_suffix(".txt").exists():
            shutil.copy(png.with_suffix(".txt"), out / png.with_suffix(".txt").name)
    return out
