"""Exact pixel edges: the ControlNet method's conditioning images, made from the art itself.

For pixel art the edges are not a guess (no Canny thresholds, no blur): they are the boundaries
between neighbouring art pixels of different colour. An edge map is drawn at the size the model
sees (the training resolution, or the sample size), white lines on black like ControlNet's canny
maps, each line centred on the boundary between two NEAREST-upscaled art cells.

Both the conditioning images render writes (from the prepared, already upscaled images) and the
ones the sampler draws with (from 24×24 art: held-out originals, `sample --control DIR`) go through
:func:`edges_of`, so a training image and a sampling control image of the same art are the same
picture. Pure functions of arrays, apart from :func:`write_conditioning`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

WHITE, BLACK = 255, 0


def edges_of(rgb: np.ndarray, width: int) -> np.ndarray:
    """(H, W) bool: lines ``width`` px wide on every boundary between two differently coloured neighbours of ``rgb`` (H, W, 3).

    A boundary lies between pixel x-1 and pixel x; its line covers pixels
    x - width // 2 … x + (width + 1) // 2 - 1, so a 2-px line takes the last pixel of one cell and
    the first of the next (centred exactly), a 1-px line the first pixel of the right-hand (lower)
    cell. The outer border of the image is no boundary: nothing is beyond it.
    """
    if width < 1:
        raise ValueError(f"edge width must be at least 1 px, got {width}")
    rgb = np.asarray(rgb)
    height, wide = rgb.shape[:2]
    # between[y, x] is True when pixel x differs from pixel x - 1 (column 0 has no left neighbour).
    vertical = np.zeros((height, wide), bool)
    vertical[:, 1:] = np.any(rgb[:, 1:] != rgb[:, :-1], axis=-1)
    horizontal = np.zeros((height, wide), bool)
    horizontal[1:, :] = np.any(rgb[1:, :] != rgb[:-1, :], axis=-1)
    out = np.zeros((height, wide), bool)
    for shift in range(-(width // 2), (width + 1) // 2):
        out |= _shifted(vertical, shift, axis=1) | _shifted(horizontal, shift, axis=0)
    return out


def _shifted(mask: np.ndarray, shift: int, axis: int) -> np.ndarray:
    """``mask`` moved by ``shift`` pixels along ``axis`` (positive: right/down), with nothing wrapping round."""
    out = np.zeros_like(mask)
    size = mask.shape[axis]
    if abs(shift) >= size:
        return out
    src = [slice(None)] * 2
    dst = [slice(None)] * 2
    src[axis] = slice(max(0, -shift), size - max(0, shift))
    dst[axis] = slice(max(0, shift), size - max(0, -shift))
    out[tuple(dst)] = mask[tuple(src)]
    return out


def edge_image(lines: np.ndarray) -> Image.Image:
    """White lines on black, RGB (what ControlNet loads its conditioning as)."""
    grey = np.where(lines, WHITE, BLACK).astype(np.uint8)
    return Image.fromarray(np.stack([grey] * 3, axis=-1), "RGB")


def edge_map(art: np.ndarray, size: int | tuple[int, int], width: int) -> Image.Image:
    """The edge map of 24×24 ``art`` (H, W, 3 uint8) at ``size`` (px, or (width, height)): the art NEAREST-upscaled
    as render prepares training images, then :func:`edges_of`."""
    w, h = (size, size) if isinstance(size, int) else size
    upscaled = np.asarray(Image.fromarray(np.asarray(art, np.uint8)).resize((w, h), Image.NEAREST))
    return edge_image(edges_of(upscaled, width))


def write_conditioning(images: list[Path], out_dir: Path, width: int) -> int:
    """One edge map per prepared image, named like it, into ``out_dir`` (which exists); returns how many."""
    from ...images import load_rgb, save_png

    for path in images:
        save_png(edge_image(edges_of(load_rgb(path), width)), out_dir / path.name)
    return len(images)
