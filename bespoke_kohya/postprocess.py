"""Full-size generated image -> clean 24×24 pixel art.

Two ways down to 24×24:

* ``nearest``: ``resize((24, 24), NEAREST)``, the user's documented method, kept as the
  baseline. It samples one pixel per cell, so a pixel of noise, a blurred edge or a
  grid that drifted a few pixels lands straight in the result.
* ``grid``: find the art-pixel grid of the image (pitch and phase on each axis, see
  :func:`detect_grid`), then give each cell the per-channel *median* of its interior
  (~20% of the cell ignored at each border, where blur and misalignment live).

Optional colour clean-up afterwards, in this order: merge the image's own near-identical
colours (noise splits one drawn colour into several), snap colours that are *close* to
the training palette, cap the colour count (median cut, no dithering). Alpha, when the
input has it, goes through the grid and the median like any channel and is never
touched by the colour steps.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from .atomic import staged_folder
from .colour import delta_e, rgb_to_lab
from .errors import UserError
from .images import enlarge, load_rgb, open_image, save_png

CELLS = 24
# Pitch search window around size/cells: generated images drift by a few percent, and
# ±12% stays clear of the 2× / 0.5× harmonics that would also line up with the edges.
PITCH_RANGE = 0.12
# Share of a cell ignored at each border before taking the median.
BORDER = 0.2
# At most this many samples per cell per axis (13 covers the whole interior of a 21–24 px
# cell). Measured under σ 8 noise at 512 px: 9×9 samples left 0.45% of pixels beyond
# ΔE 3, 13×13 0.03%; larger cells only cost time.
MAX_SAMPLES = 13
# Images whose width and height differ by more than this are not "roughly square".
MAX_ASPECT_ERROR = 0.15
PREVIEW_FACTOR = 8
# merge="auto" merges when the in-cell noise reaches this σ (0–255 levels). Measured on
# the 184 punks: clean, blurred, shifted, rescaled and JPEG renders all read 0.0;
# σ 8 noise reads 4.4–8.2, and noise softened by blur + JPEG 2.2–3.7.
MERGE_NOISE = 1.0
MERGE_DELTA_E = 3.0
# Below this grid score an input does not look like upscaled pixel art, and its 24×24
# result means little. Measured on renders of real punks at 512/576/1024 px: clean 1.0,
# blur σ2 ≥ 0.83, JPEG q50 ≥ 0.81, σ8 noise + shift ≥ 0.68, blur σ4 ≥ 0.54, σ16 noise
# ≥ 0.46; 512×512 random noise reads 0.13 and a flat image 0. A warning, not a refusal:
# a smooth (bilinear) upscale of real art also reads ~0.03 yet its cell medians are right.
MIN_GRID_SCORE = 0.3


@dataclass(frozen=True)
class Grid:
    """The art-pixel grid found in a full-size image, in that image's pixel coordinates.

    Cell ``k`` along x spans ``[offset_x + k * pitch_x, offset_x + (k + 1) * pitch_x)``
    (pixel ``i`` spans ``[i, i + 1)``); the offset may be negative when the art spills
    past the image edge. ``score`` in [0, 1] says how strongly edges repeat at the
    pitch (the weaker axis): ~1 for a clean render, lower for blur, noise or an image
    with no hard grid at all.
    """

    pitch_x: float
    pitch_y: float
    offset_x: float
    offset_y: float
    score: float

    def to_dict(self) -> dict[str, float]:
        """JSON-ready fields, rounded to 4 decimals (sub-pixel detail beyond that is noise)."""
        return {
            "pitch_x": round(self.pitch_x, 4),
            "pitch_y": round(self.pitch_y, 4),
            "offset_x": round(self.offset_x, 4),
            "offset_y": round(self.offset_y, 4),
            "score": round(self.score, 4),
        }


@dataclass
class PostprocessOptions:
    """How :func:`postprocess` turns one image into 24×24.

    ``palette``: training colours (:func:`dataset_palette`) to snap *close* colours to
    (within ``max_delta_e``), or None. ``merge``: merge the image's own colours closer
    than ΔE 3 (:func:`merge_close_colours`); ``"auto"`` does so only when the render is
    noisy (:func:`estimate_noise` ≥ 1 level), because on a clean render merging only
    destroys real near-identical shades (66% of punks have a pair closer than ΔE 2).
    ``max_colors``: cap with median cut, or None.
    """

    method: Literal["nearest", "grid"] = "grid"
    palette: np.ndarray | None = None
    max_delta_e: float = 4.0
    merge: bool | Literal["auto"] = "auto"
    max_colors: int | None = None


# --------------------------------------------------------------------------- inputs


def _normalise_mode(im: Image.Image) -> Image.Image:
    """RGB or RGBA (RGBA only when the input carries transparency)."""
    if im.mode in ("RGB", "RGBA"):
        return im
    if im.mode in ("LA", "PA") or "transparency" in im.info:
        return im.convert("RGBA")
    return im.convert("RGB")


def _check_size(im: Image.Image, cells: int, source: str) -> None:
    """Refuse images smaller than the cell count or far from square, naming the source."""
    w, h = im.size
    if w < cells or h < cells:
        raise UserError(f"{source}: image is {w}×{h} px, smaller than {cells}×{cells}; give the full-size generated image")
    if abs(w - h) > MAX_ASPECT_ERROR * max(w, h):
        raise UserError(f"{source}: image is {w}×{h} px, not roughly square; crop it to the square portrait first")


def _as_array(im: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W, C) uint8 view of an image or array (a 2-D array gains a channel axis)."""
    arr = np.asarray(_normalise_mode(im) if isinstance(im, Image.Image) else im)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an (H, W[, C]) uint8 image, got shape {arr.shape} dtype {arr.dtype}")
    return arr


# --------------------------------------------------------------------------- downscaling


def downscale_nearest(im: Image.Image, size: int = CELLS) -> Image.Image:
    """The documented baseline: ``resize((size, size), NEAREST)`` (a size×size input is returned as is)."""
    im = _normalise_mode(im)
    if im.size == (size, size):
        return im.copy()
    return im.resize((size, size), Image.NEAREST)


@functools.lru_cache(maxsize=32)
def _phasors(length: int, pitches: tuple[float, ...]) -> np.ndarray:
    """exp(2πi·x/pitch) for every candidate pitch (rows) and edge coordinate x = 1..length-1."""
    x = np.arange(1, length, dtype=np.float64)
    return np.exp(2j * np.pi * x[None, :] / np.asarray(pitches)[:, None])


def _edge_profile(arr: np.ndarray, axis: int) -> np.ndarray:
    """Edge strength between neighbouring columns (axis=1) or rows (axis=0), noise floor removed.

    ``profile[x]`` is the summed |difference| between pixel x and x+1 over all channels,
    i.e. an edge at boundary coordinate x+1. Every second line across is enough (art
    edges are many pixels long) and halves the cost.
    """
    if axis == 1:
        a = arr[::2].astype(np.int16)
        d = np.abs(a[:, 1:] - a[:, :-1])
        # Summing along the first axis of a 2-D view is several times faster than
        # sum(axis=(0, 2)) on the 3-D array.
        per_column = np.add.reduce(d.reshape(d.shape[0], -1), axis=0, dtype=np.int32)
        profile = per_column.reshape(-1, arr.shape[2]).sum(axis=1)
    else:
        a = arr[:, ::2].astype(np.int16)
        d = np.abs(a[1:] - a[:-1])
        profile = np.add.reduce(d.reshape(d.shape[0], -1), axis=1, dtype=np.int32)
    profile = profile.astype(np.float64)
    # Noise adds the same amount to every column; only what stands above the typical
    # column is an edge. Most columns are not cell borders, so the median is that floor.
    return np.maximum(profile - np.median(profile), 0.0)


def _comb(profile: np.ndarray, pitches: np.ndarray, phasors: np.ndarray) -> tuple[float, float, float]:
    """Best (pitch, phase, resultant) of the edge profile over candidate pitches.

    Each edge is a unit phasor at angle 2π·x/pitch weighted by its strength; the length
    of their mean (the Rayleigh resultant) is 1 when every edge lies on one comb of that
    pitch, and its angle gives the comb's phase. Linear in the profile, so one matrix
    product scores all pitches.
    """
    total = profile.sum()
    if total <= 0:
        return float("nan"), 0.0, 0.0
    sums = phasors @ profile
    best = int(np.argmax(np.abs(sums)))
    phase = (np.angle(sums[best]) / (2 * np.pi) * pitches[best]) % pitches[best]
    return float(pitches[best]), float(phase), float(np.abs(sums[best]) / total)


def _detect_axis(profile: np.ndarray, length: int, cells: int) -> tuple[float, float, float]:
    """Pitch, offset (left edge of cell 0) and score along one axis of ``length`` pixels."""
    nominal = length / cells
    if length == cells:
        return 1.0, 0.0, 1.0
    # Coarse pass over the whole ±12% window at 1/200 of the nominal pitch, cached per
    # image size, then a fine pass around the winner at 1/4000.
    coarse = tuple(np.round(np.linspace(nominal * (1 - PITCH_RANGE), nominal * (1 + PITCH_RANGE), 49), 9))
    pitch, _, _ = _comb(profile, np.asarray(coarse), _phasors(length, coarse))
    if not np.isfinite(pitch):
        # No edges at all (a flat image): the nominal grid is as good as any.
        return nominal, 0.0, 0.0
    step = coarse[1] - coarse[0]
    fine = np.linspace(pitch - step, pitch + step, 41)
    x = np.arange(1, length, dtype=np.float64)
    pitch, phase, score = _comb(profile, fine, np.exp(2j * np.pi * x[None, :] / fine[:, None]))
    # The comb fixes the phase modulo one pitch; of the grids it allows, keep the one
    # whose `cells` cells sit most centred in the image (generated portraits are centred).
    centred = (length - cells * pitch) / 2
    offset = phase + np.round((centred - phase) / pitch) * pitch
    return pitch, float(offset), score


def detect_grid(im: Image.Image | np.ndarray, cells: int = CELLS) -> Grid:
    """Find the art-pixel grid (pitch, offset per axis, confidence) of a full-size image.

    The pitch is searched within ±12% of size/cells on each axis independently; a
    cells×cells input is its own grid (pitch 1, offset 0, score 1).
    """
    arr = _as_array(im)
    h, w = arr.shape[:2]
    if h < cells or w < cells:
        raise ValueError(f"image is {w}×{h} px, smaller than {cells}×{cells}")
    px, ox, sx = _detect_axis(_edge_profile(arr, 1), w, cells) if w > cells else (1.0, 0.0, 1.0)
    py, oy, sy = _detect_axis(_edge_profile(arr, 0), h, cells) if h > cells else (1.0, 0.0, 1.0)
    return Grid(pitch_x=px, pitch_y=py, offset_x=ox, offset_y=oy, score=min(sx, sy))


def _sample_positions(pitch: float, offset: float, cells: int, length: int) -> tuple[np.ndarray, int]:
    """Pixel indices, (cells, n), spread evenly over the interior of each cell along one axis."""
    inner = (1 - 2 * BORDER) * pitch
    # An odd count keeps the median an actual sample value (no averaging of two middles),
    # which is what makes clean inputs come back bit-exact.
    n = int(min(MAX_SAMPLES, max(1, round(inner))))
    n -= 1 - n % 2
    frac = BORDER + (1 - 2 * BORDER) * (np.arange(n) + 0.5) / n
    pos = offset + (np.arange(cells)[:, None] + frac[None, :]) * pitch
    return np.clip(np.floor(pos).astype(np.intp), 0, length - 1), n


def _sorted_cell_samples(arr: np.ndarray, grid: Grid, cells: int) -> np.ndarray:
    """(cells, cells, channels, n) interior samples of every cell, sorted along the last axis (n is odd)."""
    h, w, c = arr.shape
    xs, nx = _sample_positions(grid.pitch_x, grid.offset_x, cells, w)
    ys, ny = _sample_positions(grid.pitch_y, grid.offset_y, cells, h)
    # Two 1-D takes (rows, then columns) are ~4× faster than one 2-D fancy index.
    gathered = arr.take(ys.reshape(-1), axis=0).take(xs.reshape(-1), axis=1)  # (cells*ny, cells*nx, c)
    blocks = gathered.reshape(cells, ny, cells, nx, c).transpose(0, 2, 4, 1, 3).reshape(cells, cells, c, ny * nx)
    # A stable sort of uint8 is a radix sort: about 3× faster here than np.median's partition.
    return np.sort(blocks, axis=-1, kind="stable")


def _noise_of(samples: np.ndarray) -> float:
    """Robust σ (0–255 levels) of colour variation inside cells: median over cells and RGB of IQR/1.349.

    Edges and blur stay out of cell interiors, so a clean or blurred render reads ~0
    while sensor-like noise reads close to its σ.
    """
    n = samples.shape[-1]
    rgb = samples[:, :, :3]
    iqr = rgb[..., (3 * n) // 4].astype(np.int16) - rgb[..., n // 4]
    return float(np.median(iqr) / 1.349)


def _downscale_grid(arr: np.ndarray, cells: int, grid: Grid | None) -> tuple[np.ndarray, Grid, float]:
    """Cell medians, the grid used and the in-cell noise level of an (H, W, C) uint8 array."""
    if grid is None:
        grid = detect_grid(arr, cells)
    samples = _sorted_cell_samples(arr, grid, cells)
    # The sample count is odd, so the median is the middle sorted sample (never an
    # average of two), which is what makes clean inputs come back bit-exact.
    out = np.ascontiguousarray(samples[..., samples.shape[-1] // 2])
    return out, grid, _noise_of(samples)


def downscale_grid(im: Image.Image, cells: int = CELLS, grid: Grid | None = None) -> tuple[Image.Image, Grid]:
    """Cells×cells image: each cell the per-channel median of its interior on the detected (or given) grid."""
    im = _normalise_mode(im)
    _check_size(im, cells, "image")
    if im.size == (cells, cells) and grid is None:
        return im.copy(), Grid(1.0, 1.0, 0.0, 0.0, 1.0)
    out, grid, _ = _downscale_grid(np.asarray(im), cells, grid)
    return Image.fromarray(out, im.mode), grid


def estimate_noise(im: Image.Image, grid: Grid | None = None, cells: int = CELLS) -> float:
    """Robust σ, in 0–255 levels, of the colour noise inside the art pixels of a full-size image.

    ~0 for clean, blurred or JPEG-compressed renders; close to σ for added noise.
    A cells×cells image has no interior to measure and reads 0.
    """
    im = _normalise_mode(im)
    _check_size(im, cells, "image")
    if im.size == (cells, cells):
        return 0.0
    return _downscale_grid(np.asarray(im), cells, grid)[2]


# --------------------------------------------------------------------------- colours


def _split_alpha(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, 3) RGB array and the alpha plane (or None)."""
    im = _normalise_mode(im)
    arr = np.asarray(im)
    if im.mode == "RGBA":
        return arr[:, :, :3], arr[:, :, 3]
    return arr, None


def _join_alpha(rgb: np.ndarray, alpha: np.ndarray | None) -> Image.Image:
    """Image from an RGB array and an optional alpha plane."""
    if alpha is None:
        return Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")
    return Image.fromarray(np.dstack([rgb, alpha]).astype(np.uint8), "RGBA")


def dataset_palette(dataset_dir: Path) -> np.ndarray:
    """(N, 3) uint8: every distinct colour used by the training PNGs in ``dataset_dir`` (alpha flattened)."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise UserError(f"{dataset_dir}: palette dataset folder not found; pass the folder of training PNGs")
    pngs = sorted(p for p in dataset_dir.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    if not pngs:
        raise UserError(f"{dataset_dir}: no .png images to take a palette from; pass the folder of training PNGs")
    colours = [np.unique(load_rgb(p).reshape(-1, 3), axis=0) for p in pngs]
    return np.unique(np.concatenate(colours), axis=0)


def merge_close_colours(im: Image.Image, max_delta_e: float = 3.0) -> Image.Image:
    """Merge the image's own colours that lie within ``max_delta_e`` (CIE76) of a more common one.

    Colours are taken most-used first; each either joins the nearest earlier group
    leader within the threshold or leads a new group, so a group never spans more than
    the threshold from its leader (no chaining along a gradient). Every pixel of a group
    becomes the group's per-channel median colour (over its pixels), as noise spreads
    around the drawn colour.
    """
    rgb, alpha = _split_alpha(im)
    colours, inverse, counts = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    if len(colours) < 2 or max_delta_e <= 0:
        return _join_alpha(rgb.copy(), alpha)
    order = np.argsort(-counts, kind="stable")
    lab = rgb_to_lab(colours)
    sq = (lab**2).sum(axis=1)
    limit = max_delta_e**2
    # Distance from every colour to its nearest leader so far, updated once per new
    # leader (a vector op) so the per-colour loop is a scalar test.
    nearest_d2 = np.full(len(colours), np.inf)
    nearest = np.zeros(len(colours), np.intp)
    group = np.empty(len(colours), np.intp)
    n_groups = 0
    for idx in order.tolist():
        if nearest_d2[idx] <= limit:
            group[idx] = group[nearest[idx]]
            continue
        group[idx] = n_groups
        n_groups += 1
        d2 = sq + sq[idx] - 2 * (lab @ lab[idx])
        better = d2 < nearest_d2
        nearest_d2[better] = d2[better]
        nearest[better] = idx
    pixel_group = group[inverse]
    return _join_alpha(_group_medians(rgb.reshape(-1, 3), pixel_group, n_groups)[pixel_group].reshape(rgb.shape), alpha)


def _group_medians(pixels: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """(n_groups, 3) uint8 per-channel median of the pixels in each group (every group non-empty).

    One sort per channel on (group, value) keys puts each group's values in a sorted run;
    the median is read at the run's middle.
    """
    sizes = np.bincount(groups, minlength=n_groups)
    starts = np.cumsum(sizes) - sizes
    lo, hi = starts + (sizes - 1) // 2, starts + sizes // 2
    out = np.empty((n_groups, pixels.shape[1]), np.uint8)
    for c in range(pixels.shape[1]):
        values = np.sort(groups * 256 + pixels[:, c]) % 256
        out[:, c] = np.rint((values[lo] + values[hi]) / 2)
    return out


def snap_to_palette(im: Image.Image, palette: np.ndarray, max_delta_e: float = 4.0) -> Image.Image:
    """Replace each colour by its nearest palette colour, but only when that is within ``max_delta_e``.

    Bespoke Punks use many one-off colours, so a colour far from every training colour
    is kept as drawn rather than forced onto the palette.
    """
    rgb, alpha = _split_alpha(im)
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if len(palette) == 0:
        return _join_alpha(rgb.copy(), alpha)
    colours, inverse = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
    d = delta_e(rgb_to_lab(colours)[:, None, :], rgb_to_lab(palette)[None, :, :])
    nearest = np.argmin(d, axis=1)
    close = d[np.arange(len(colours)), nearest] <= max_delta_e
    mapped = np.where(close[:, None], palette[nearest], colours)
    return _join_alpha(mapped[inverse.reshape(-1)].reshape(rgb.shape), alpha)


def cap_colours(im: Image.Image, max_colors: int) -> Image.Image:
    """At most ``max_colors`` colours via median cut, no dithering; an image already within the cap is returned unchanged.

    Median cut (not Pillow's fast octree, which alters ~16% of pixels of a punk that is
    already within 40 colours); alpha is kept as is.
    """
    if max_colors < 1:
        raise UserError(f"max_colors: must be at least 1, got {max_colors}; use a count such as 40, or leave it unset")
    rgb, alpha = _split_alpha(im)
    if len(np.unique(rgb.reshape(-1, 3), axis=0)) <= max_colors:
        return _join_alpha(rgb.copy(), alpha)
    quantized = Image.fromarray(np.ascontiguousarray(rgb), "RGB").quantize(
        max_colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
    )
    return _join_alpha(np.asarray(quantized.convert("RGB")), alpha)


# --------------------------------------------------------------------------- pipeline


def _postprocess(im: Image.Image, options: PostprocessOptions, source: str) -> tuple[Image.Image, Grid | None, float, bool, float]:
    """:func:`postprocess` with the source named in size errors; also returns the noise level, whether colours were merged and the grid score."""
    im = _normalise_mode(im)
    _check_size(im, CELLS, source)
    if options.method not in ("nearest", "grid"):
        raise UserError(f"method: unknown post-processing method {options.method!r}; use 'grid' or 'nearest'")
    if options.merge not in (True, False, "auto"):
        raise UserError(f"merge: must be true, false or 'auto', got {options.merge!r}")
    grid: Grid | None = None
    noise, score = 0.0, 1.0
    if im.size == (CELLS, CELLS):
        # Already true resolution: both methods pass it through, and there is no
        # cell interior to measure noise in.
        out = im.copy()
        grid = Grid(1.0, 1.0, 0.0, 0.0, 1.0) if options.method == "grid" else None
    elif options.method == "nearest":
        out = downscale_nearest(im, CELLS)
        # The grid is found anyway: its score says whether the input looks like pixel art.
        _, seen, noise = _downscale_grid(np.asarray(im), CELLS, None)
        score = seen.score
    else:
        arr, grid, noise = _downscale_grid(np.asarray(im), CELLS, None)
        out = Image.fromarray(arr, im.mode)
        score = grid.score
    merged = options.merge is True or (options.merge == "auto" and noise >= MERGE_NOISE)
    if merged:
        out = merge_close_colours(out, MERGE_DELTA_E)
    if options.palette is not None:
        out = snap_to_palette(out, options.palette, options.max_delta_e)
    if options.max_colors is not None:
        out = cap_colours(out, options.max_colors)
    return out, grid, noise, merged, score


def grid_warning(source: str, score: float) -> str | None:
    """A warning line when an input does not look like upscaled pixel art (grid score below MIN_GRID_SCORE)."""
    if score >= MIN_GRID_SCORE:
        return None
    return f"{source}: does not look like upscaled pixel art (grid confidence {score:.2f}, below {MIN_GRID_SCORE}); its 24x24 result is unlikely to mean anything"


def postprocess(im: Image.Image, options: PostprocessOptions) -> tuple[Image.Image, Grid | None]:
    """One full-size image -> 24×24 (RGB, or RGBA when the input has alpha), and the grid used (None for nearest)."""
    out, grid, _, _, _ = _postprocess(im, options, "image")
    return out, grid


def _place(staged: Path, path: Path) -> None:
    """Link a finished file into place; never replaces a file (another process may write the same name meanwhile)."""
    try:
        os.link(staged, path)  # atomic, and fails if `path` exists (a link of that name too: it is never written through)
    except FileExistsError:
        raise UserError(f"{path}: already exists (another process wrote it meanwhile); choose an empty --out folder") from None
    except OSError:
        # A filesystem without hard links: the earlier check is all there is.
        if os.path.lexists(path):
            raise UserError(f"{path}: already exists (another process wrote it meanwhile); choose an empty --out folder") from None
        os.replace(staged, path)


def _write_outputs(out_dir: Path, images: list[tuple[Path, Image.Image]]) -> None:
    """Write every result at once: a new (or empty) --out folder is built privately and swapped in whole; into a folder
    that already holds files, the results are written in a hidden folder inside it, then linked into place, all or none."""
    if not out_dir.exists() or (out_dir.is_dir() and not out_dir.is_symlink() and not any(out_dir.iterdir())):
        with staged_folder(out_dir, "refuse", refusal="postprocess never overwrites files, choose an empty --out folder") as tmp:
            for target, im in images:
                save_png(im, tmp / target.name)
        return
    staging = Path(tempfile.mkdtemp(prefix=".postprocess-", dir=out_dir))
    placed: list[Path] = []
    try:
        for target, im in images:
            save_png(im, staging / target.name)
        for target, _ in images:
            _place(staging / target.name, target)
            placed.append(target)
    except BaseException:
        for target in placed:  # all or none: what this call linked in goes again
            target.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _output_paths(paths: list[Path], out_dir: Path) -> list[tuple[Path, Path]]:
    """(24×24 path, ×8 preview path) per input; refuses name clashes, an --out that is a file, and existing files."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: --out is an existing file, not a folder; give a folder to write the 24x24 images into")
    seen: dict[str, Path] = {}  # output file name -> the input it comes from
    inputs = {p.resolve() for p in paths}
    result = []
    for p in paths:
        small, preview = out_dir / f"{p.stem}.png", out_dir / f"{p.stem}.x{PREVIEW_FACTOR}.png"
        for target in (small, preview):
            if target.name in seen:
                raise UserError(f"{p}: same file name as {seen[target.name]}, both would be written to {target}; post-process them into separate folders")
            seen[target.name] = p
            if target.resolve() in inputs:
                raise UserError(f"{target}: writing the result would overwrite an input image; choose another output folder")
            if os.path.lexists(target):  # a dangling link too: it is refused, never written through
                raise UserError(f"{target}: already exists; postprocess never overwrites files, choose an empty --out folder or remove it")
        result.append((small, preview))
    return result


def postprocess_files(paths: list[Path], out_dir: Path, options: PostprocessOptions, progress: bool = True) -> list[dict]:
    """Post-process image files into ``out_dir`` as ``NAME.png`` (24×24) and ``NAME.x8.png`` (NEAREST ×8 preview).

    Returns one record per input (paths, input size, method, grid or None, colour
    count, and ``warning``: a line when the input does not look like upscaled pixel
    art, else None). Every input is read and processed before anything is written: a
    missing, corrupt, tiny or non-square input, or an output name that already exists,
    raises :class:`UserError` naming the file and nothing is written (a new --out folder is
    not even made), so the same command can be run again once the bad file is fixed.
    """
    paths = [Path(p) for p in paths]
    out_dir = Path(out_dir)
    targets = _output_paths(paths, out_dir)
    records: list[dict] = []
    outputs: list[tuple[Path, Image.Image]] = []
    with _progress_bar(progress, len(paths)) as advance:
        for path, (small, preview) in zip(paths, targets):
            im = open_image(path)
            out, grid, noise, merged, score = _postprocess(im, options, str(path))
            outputs += [(small, out), (preview, enlarge(out, PREVIEW_FACTOR))]
            records.append(
                {
                    "source": str(path),
                    "output": str(small),
                    "preview": str(preview),
                    "input_size": list(im.size),
                    "method": options.method,
                    "grid": grid.to_dict() if grid is not None else None,
                    "noise": round(noise, 3),
                    "merged": merged,
                    "colours": int(len(np.unique(np.asarray(out.convert("RGB")).reshape(-1, 3), axis=0))),
                    "warning": grid_warning(str(path), score),
                }
            )
            advance()
    _write_outputs(out_dir, outputs)
    return records


class _progress_bar:
    """Context manager yielding an ``advance()`` callable: a rich bar on stderr, or a no-op."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled
        self.total = total
        self._progress = None

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("post-processing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), transient=True,
        )
        self._progress.__enter__()
        task = self._progress.add_task("post-processing", total=self.total)
        return lambda: self._progress.advance(task)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
