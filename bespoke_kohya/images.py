"""Reading and writing the small images every stage shares (pure helpers, no printing)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import UserError
from .regular import open_regular

IMAGE_SUFFIXES = (".png",)
# Suffixes of picture files: never valid as a caption extension.
PICTURE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
# Largest image decoded (4096x4096): far above any sample (at most 2048 px a side), far
# below what a header can claim; a bigger file is refused from its header alone.
MAX_PIXELS = 4096 * 4096
_TOO_LARGE = "images here are at most 4096x4096 px (24x24 originals, full-size samples up to 2048); remove it or scale it down"


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


def open_image(path: Path, *, formats: tuple[str, ...] | None = None, check: Callable[[Image.Image], None] | None = None) -> Image.Image:
    """Open and fully decode an image as an 8-bit mode, turning every failure into a one-line UserError.

    Only the header is read before the checks: the file's real format must be one of
    ``formats`` (when given), its size at most MAX_PIXELS, and ``check`` (e.g. an exact
    size) must pass, so an oversized file is refused before it is decoded. Only a regular
    file is opened: a FIFO or device named ``*.png`` is refused at once, never waited on.
    """
    fd = open_regular(Path(path), follow=True, fix="remove it from the folder")
    if fd is None:
        raise UserError(f"{path}: image not found; check the path")
    try:
        with os.fdopen(fd, "rb") as fh, warnings.catch_warnings():
            # Pillow only warns between its limit and twice it; make that a refusal too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fh) as im:
                _check_header(path, im, formats)
                if check is not None:
                    check(im)
                im.load()
                return to_8bit(path, im.copy())
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(f"{path}: image has more than {Image.MAX_IMAGE_PIXELS:,} pixels; {_TOO_LARGE}") from None
    except UnidentifiedImageError:
        raise UserError(f"{path}: cannot read this image (not a format Pillow knows, or damaged); re-export it as PNG or remove it") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{path}: cannot read this image ({exc.__class__.__name__}: {exc}); re-export it as PNG or remove it") from None


def _check_header(path: Path, im: Image.Image, formats: tuple[str, ...] | None) -> None:
    """Refuse a file whose real format is not allowed, or that is too large to decode."""
    if formats is not None and im.format not in formats:
        raise UserError(f"{path}: is a {im.format or 'non-image'} file, not {' or '.join(formats)} (only its name says otherwise); export the original art as {formats[0]}")
    if im.width * im.height > MAX_PIXELS:
        raise UserError(f"{path}: image is {im.width}x{im.height} px; {_TOO_LARGE}")


def to_8bit(path: Path, im: Image.Image) -> Image.Image:
    """The image in an 8-bit mode: 16-bit greyscale is scaled to 0-255, not clipped.

    Pillow's own conversion of ``I;16``/``I`` to RGB clips at 255, turning every grey
    above level 255 of 65535 white. Float images have no agreed range and are refused.
    """
    if im.mode == "F":
        raise UserError(f"{path}: floating-point image (mode F) has no agreed 0-255 range; export it as an 8-bit PNG")
    if not im.mode.startswith("I"):
        return im
    values = np.asarray(im, dtype=np.int64)
    if values.min() < 0 or values.max() > 65535:
        raise UserError(f"{path}: {im.mode} image with values outside 0-65535; export it as an 8-bit PNG")
    grey = Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), "L")
    transparent = im.info.get("transparency")
    if isinstance(transparent, int):
        # A 16-bit tRNS names one exact grey value; keep it as an alpha plane.
        alpha = np.where(values == transparent, 0, 255).astype(np.uint8)
        return Image.merge("LA", (grey, Image.fromarray(alpha, "L")))
    return grey


def load_rgb(path: Path, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """An image file as an ``(H, W, 3)`` uint8 array, alpha flattened onto ``background``."""
    return np.asarray(flatten_alpha(open_image(path), background), dtype=np.uint8)


def save_png(array_or_image: np.ndarray | Image.Image, path: Path) -> None:
    """Write a PNG deterministically (no timestamps or text chunks), creating parent folders."""
    im = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(np.asarray(array_or_image, dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format="PNG", optimize=False, compress_level=6)


def save_png_atomic(array_or_image: np.ndarray | Image.Image, path: Path) -> None:
    """:func:`save_png` under a temporary name, renamed into place: a crash never leaves half an image."""
    from .atomic import write_atomic

    write_atomic(path, lambda tmp: save_png(array_or_image, tmp))


def enlarge(im: Image.Image, factor: int = 8) -> Image.Image:
    """A pixel-exact NEAREST enlargement for previews."""
    return im.resize((im.width * factor, im.height * factor), Image.NEAREST)


def png_bytes(array: np.ndarray) -> bytes:
    """An RGB array as PNG file bytes."""
    import io

    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(payload: bytes, mime: str = "image/png") -> str:
    """Embed bytes in a page: no file or network is needed to show them."""
    import base64

    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"
