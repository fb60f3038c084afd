"""Reading and writing the small images every stage shares (pure helpers, no printing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import UserError

IMAGE_SUFFIXES = (".png",)


def parse_hex_colour(value: str) -> tuple[int, int, int]:
    """``"#rrggbb"`` -> (r, g, b); raises ValueError with the bad value."""
    v = value.strip().lstrip("#")
    if len(v) != 6:
        raise ValueError(f"colour must look like '#rrggbb', got {value!r}")
    try:
        return int(v[0:2], 16), int(v[2:4], 16), int(v[4:6], 16)
    except ValueError:
        raise ValueError(f"colour must look like '#rrggbb', got {value!r}") from None


def flatten_alpha(im: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """RGB image with any transparency composited onto ``background``.

    sd-scripts loads images as RGB and drops alpha without compositing, so a
    transparent pixel would come out as whatever colour it happened to store.
    """
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return im.convert("RGB")


def open_image(path: Path) -> Image.Image:
    """Open and fully decode an image, turning decoder failures into a one-line UserError."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{path}: cannot read this image ({exc.__class__.__name__}: {exc}); re-export it as PNG or remove it") from None


def load_rgb(path: Path, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """An image file as an ``(H, W, 3)`` uint8 array, alpha flattened onto ``background``."""
    return np.asarray(flatten_alpha(open_image(path), background), dtype=np.uint8)


def save_png(array_or_image: np.ndarray | Image.Image, path: Path) -> None:
    """Write a PNG deterministically (no timestamps or text chunks), creating parent folders."""
    im = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(np.asarray(array_or_image, dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format="PNG", optimize=False, compress_level=6)


def enlarge(im: Image.Image, factor: int = 8) -> Image.Image:
    """A pixel-exact NEAREST enlargement for previews."""
    return im.resize((im.width * factor, im.height * factor), Image.NEAREST)
