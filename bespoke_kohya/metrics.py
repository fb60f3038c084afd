"""Style metrics on 24×24 results, judged against the training set's own distribution.

No neural network: every number is plain pixel statistics, so it runs offline on a CPU
and can be explained in one line (see :data:`METRICS`). Definitions follow the
measurements in ``docs/pixel-facts.md``; ``benchmarks/metrics_reference.py`` prints
them on the real dataset.

Per image (:func:`image_metrics`)
    colour counts, palette adherence, background solidity and area, dark outline,
    orphan pixels, ring colours (distinct colours of the outer ring), nearest-training-image distance (and whether that makes it a
    near-copy) and, when the full-size render and its grid are given, grid alignment
    and cell flatness (``None`` for a 24×24-only output, e.g. the native model).

Caption adherence (:func:`caption_adherence`)
    For prompts that name one background colour ("deep dark purple background"), the share
    of outputs whose most common border colour has that name, by a colour-name table from
    the xkcd colour survey (:func:`colour_table`, ΔE2000). On the real punks against their
    own captions it reads 0.92: the ceiling a generator can reach.

Reference (:class:`Reference`)
    The same per-image metrics over the training images, leave-one-out where a metric
    compares against "other" images (palette adherence, nearest neighbour). The
    near-copy threshold is the 5th percentile of the training set's leave-one-out
    nearest-neighbour distances: the set contains near-duplicate series (``-2``,
    ``-3`` variants), so a fixed 0 would miss memorisation and a guessed constant
    would not fit another dataset. It is capped at 0.25 (a quarter of the pixels
    changed) for sets without near-duplicates, whose 5th percentile can be 0.5 or more.

Epoch (:func:`epoch_metrics`): what the report's recommendation weighs as style evidence
    *Typicality* of one value against a training distribution is 1 at the training
    median, falls linearly with the value's percentile and is 0 at or beyond the 5th
    or 95th percentile. For a metric where one direction is never a flaw
    (``better="higher"``: palette adherence, border solidity, dark outline;
    ``"lower"``: orphan pixels) the harmless side scores 1.

    ``style``     = mean over the style metrics (both colour counts, palette adherence,
                    border solidity, background area, dark outline, orphan pixels) of
                    the mean typicality of the epoch's outputs.
    ``grid``      = mean grid alignment of the outputs whose full-size render is known.
    ``quality``   = style, or (3 × style + grid) / 4 when the grid is known.
    ``diversity`` = seed diversity ÷ half the training set's median nearest-neighbour
                    distance, capped at 1: seeds of one prompt share its background and
                    features, so differing in half as many pixels as a punk differs
                    from its most similar other punk already counts as fully diverse.
    ``copy_share`` = share of outputs flagged as near-copies.

    The recommendation itself (how these weigh against held-out loss and the two-sample
    test) is the report's: :mod:`bespoke_kohya.report.recommend`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .colour import pack_colours, rgb_to_lab, unpack_colours
from .errors import UserError
from .images import load_rgb
from .paths import ART

Better = Literal["higher", "lower", "closer_to_reference"]

MERGE_DELTA_E = 3.0  # below this two colours read as one; also the palette-adherence tolerance
DIFFERENT_DELTA_E = 5.0  # a pixel counts as changed above this (nearest neighbour, diversity)
DARK_L = 30.0  # L* below this is an outline colour
FLAT_CELL_DELTA_E = 5.0  # mean interior deviation of a "flat" cell: passes σ≈4 render noise, fails σ≈8
COPY_PERCENTILE = 5.0
# Below this many training images a 5th percentile is one or two pairs: not a threshold.
MIN_IMAGES_FOR_COPY_PERCENTILE = 20
# Used only then: about the value measured on the Bespoke set (0.047 on 184 images).
FALLBACK_COPY_THRESHOLD = 0.05
# A set with no near-duplicates has a high 5th percentile (0.58 on 30 synthetic punks);
# an output with a quarter of its pixels changed is no longer a "copy" whatever the set.
MAX_COPY_THRESHOLD = 0.25
RANGE = (5.0, 95.0)  # the "inside the training distribution" band, in percentiles
WEIGHTS = {"style": 3.0, "grid": 1.0}
DIVERSITY_SCALE = 0.5  # × the training median nearest-neighbour distance = "fully diverse"
NN_CHUNK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class MetricInfo:
    """What the report shows about a metric: its column label and a one-line explanation."""

    key: str
    label: str
    explanation: str
    better: Better
    style: bool = False  # part of the style score (compared with the training distribution)


METRICS: dict[str, MetricInfo] = {
    m.key: m
    for m in [
        MetricInfo("distinct_colours", "distinct colours", "Number of different RGB colours in the 24×24 image.", "closer_to_reference", True),
        MetricInfo("perceptual_colours", "perceptual colours", "Number of colours after merging shades closer than ΔE 3 (colours the eye can tell apart).", "closer_to_reference", True),
        MetricInfo("palette_adherence", "palette adherence", "Share of pixels within ΔE 3 of a colour the training images use (originals: of the other images).", "higher", True),
        MetricInfo("border_solidity", "border solidity", "Share of the outer ring of pixels in its most common colour (1 = one solid background colour).", "higher", True),
        MetricInfo("background_area", "background area", "Share of the image filled by the background colour reachable from the border.", "closer_to_reference", True),
        MetricInfo("dark_outline", "dark outline", "Share of the figure's edge pixels (next to the background) that are dark (L* < 30).", "higher", True),
        MetricInfo("orphan_pixels", "orphan pixels", "Share of pixels whose colour differs from all 4 neighbours (speckle and noise raise it).", "lower", True),
        # Not (yet) part of the style score, so adding it changed no recommendation; style=True would make it one.
        MetricInfo("ring_colours", "ring colours", "Distinct colours in the outer ring of pixels (a flat background has few; a patchy one many).", "closer_to_reference"),
        MetricInfo("nearest_distance", "nearest training punk", "Share of pixels more than ΔE 5 off the most similar training image (originals: itself excluded).", "closer_to_reference"),
        MetricInfo("near_copies", "near-copies", "Number of outputs closer to a training image than 95% of training punks are to their nearest other punk.", "lower"),
        MetricInfo("seed_diversity", "seed diversity", "Mean share of pixels (ΔE > 5) that differ between seeds of the same prompt; 0 = identical.", "higher"),
        MetricInfo("caption_adherence", "caption adherence", "Of the outputs whose prompt names one background colour, the share whose border colour has that name (the real punks: 0.92).", "higher"),
        MetricInfo("grid_alignment", "grid alignment", "Full-size render: share of colour-edge strength lying on the art-pixel grid (1 = clean pixel art, low = blurred or off-grid).", "higher"),
        MetricInfo("cell_flatness", "cell flatness", "Full-size render: share of art cells whose interior is one flat colour (mean ΔE to the cell's median < 5).", "higher"),
    ]
}
STYLE_KEYS = [k for k, m in METRICS.items() if m.style]
IMAGE_KEYS = [k for k in METRICS if k not in ("near_copies", "seed_diversity", "caption_adherence")]


# --------------------------------------------------------------------------- per-image metrics


def _check_art(img: np.ndarray, what: str) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 array, or a UserError naming ``what`` and its shape."""
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise UserError(f"{what}: expected an RGB image array of shape (H, W, 3), got shape {arr.shape}; flatten alpha with images.load_rgb first")
    if arr.dtype != np.uint8:
        raise UserError(f"{what}: expected uint8 pixels, got {arr.dtype}; convert with np.clip(x, 0, 255).astype(np.uint8)")
    return arr


def colour_count(img: np.ndarray) -> int:
    """Distinct RGB colours."""
    return len(np.unique(pack_colours(img.reshape(-1, 3))))


def perceptual_colour_count(img: np.ndarray, threshold: float = MERGE_DELTA_E) -> int:
    """Colours left after greedy merging: most-used first, each joins the first kept colour within ``threshold``.

    Greedy by frequency (rather than chaining) so a gradient of small steps is not
    collapsed into one colour; this reproduces pixel-facts' 20 (11–38).
    """
    keys, counts = np.unique(pack_colours(img.reshape(-1, 3)), return_counts=True)
    labs = rgb_to_lab(unpack_colours(keys[np.argsort(-counts, kind="stable")]))
    close = _pairwise_sq(labs, labs) < threshold * threshold
    # A colour is merged iff it is close to some colour kept before it, so one running
    # "covered" mask replaces a distance check per colour (576 colours: 1 ms, not 30).
    covered = np.zeros(len(labs), bool)
    kept = 0
    for i in range(len(labs)):
        if not covered[i]:
            kept += 1
            covered |= close[i]
    return kept


def palette_adherence(img: np.ndarray, palette_lab: np.ndarray, threshold: float = MERGE_DELTA_E) -> float:
    """Share of pixels within ``threshold`` ΔE of some colour of ``palette_lab`` ``(K, 3)``."""
    if len(palette_lab) == 0:
        return 0.0
    keys, inverse = np.unique(pack_colours(img.reshape(-1, 3)), return_inverse=True)
    near = _near_palette(rgb_to_lab(unpack_colours(keys)), palette_lab, threshold)
    return float(near[inverse.ravel()].mean())


def _pairwise_sq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(len(a), len(b))`` squared ΔE76 between two sets of CIELAB colours.

    One 2-D operation per channel: summing a ``(U, K, 3)`` temporary over its last
    axis is several times slower in numpy.
    """
    out = np.subtract.outer(a[:, 0], b[:, 0]) ** 2
    out += np.subtract.outer(a[:, 1], b[:, 1]) ** 2
    out += np.subtract.outer(a[:, 2], b[:, 2]) ** 2
    return out


def _near_palette(labs: np.ndarray, palette_lab: np.ndarray, threshold: float, chunk: int = 64) -> np.ndarray:
    """For each colour of ``labs`` ``(U, 3)``: is some palette colour within ``threshold`` ΔE?

    Exact, but pruned by lightness: queries sorted by L* in chunks are compared only
    with palette colours whose L* is within ``threshold`` of the chunk's L* span. A
    noisy output (~500 colours) against a 3,754-colour palette needs ~1/15 of the
    all-pairs work.
    """
    pal = palette_lab[np.argsort(palette_lab[:, 0], kind="stable")]
    order = np.argsort(labs[:, 0], kind="stable")
    near = np.zeros(len(labs), bool)
    limit = threshold * threshold
    for start in range(0, len(labs), chunk):
        idx = order[start : start + chunk]
        q = labs[idx]
        lo = np.searchsorted(pal[:, 0], q[:, 0].min() - threshold, side="left")
        hi = np.searchsorted(pal[:, 0], q[:, 0].max() + threshold, side="right")
        if hi > lo:
            near[idx] = _pairwise_sq(q, pal[lo:hi]).min(axis=1) <= limit
    return near


def _border(img: np.ndarray) -> np.ndarray:
    """The outer ring of pixels, each once, as ``(n, 3)``."""
    if img.shape[0] < 3 or img.shape[1] < 3:
        return img.reshape(-1, 3)
    return np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]])


def _border_mode(img: np.ndarray) -> tuple[np.ndarray, float]:
    """The border's most common colour and its share of the border."""
    keys, counts = np.unique(pack_colours(_border(img)), return_counts=True)
    best = int(np.argmax(counts))
    return unpack_colours(keys[best : best + 1])[0], float(counts[best] / counts.sum())


def border_solidity(img: np.ndarray) -> float:
    """Share of the outer ring of pixels in its most common colour."""
    return _border_mode(img)[1]


def _dilate4(mask: np.ndarray) -> np.ndarray:
    """``mask`` grown by one pixel in the 4 directions."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def background_mask(img: np.ndarray) -> np.ndarray:
    """Pixels of the border's dominant colour connected (4-neighbour) to the border.

    Exact colour match: pixel art has a solid background, and a background that only
    matches within a tolerance is the grain this metric exists to catch.
    """
    colour, _ = _border_mode(img)
    return ring_connected((img == colour).all(axis=-1))


def ring_connected(allowed: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: the pixels of ``allowed`` reached from the outer ring through ``allowed`` pixels (4-neighbour)."""
    ring = np.zeros(allowed.shape, bool)
    ring[0] = ring[-1] = True
    ring[:, 0] = ring[:, -1] = True
    mask = allowed & ring
    while True:
        grown = _dilate4(mask) & allowed
        if np.array_equal(grown, mask):
            return mask
        mask = grown


def background_area(img: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Share of the image that is background (see :func:`background_mask`)."""
    return float((background_mask(img) if mask is None else mask).mean())


def dark_outline(img: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Share of figure-edge pixels (not background, 4-adjacent to it) with L* < 30; 0 when there is no edge."""
    bg = background_mask(img) if mask is None else mask
    edge = ~bg & _dilate4(bg)
    if not edge.any():
        return 0.0
    lightness = rgb_to_lab(img[edge])[:, 0]
    return float((lightness < DARK_L).mean())


def orphan_share(img: np.ndarray) -> float:
    """Share of pixels whose colour differs from every existing 4-neighbour (image edges have fewer)."""
    h, w, _ = img.shape
    orphan = np.ones((h, w), bool)
    vertical = (img[1:] != img[:-1]).any(axis=-1)
    horizontal = (img[:, 1:] != img[:, :-1]).any(axis=-1)
    orphan[1:] &= vertical
    orphan[:-1] &= vertical
    orphan[:, 1:] &= horizontal
    orphan[:, :-1] &= horizontal
    return float(orphan.mean())


# --------------------------------------------------------------------------- background: ring colours and caption adherence


def ring_colours(img: np.ndarray) -> int:
    """Distinct colours in the outer ring of pixels (row 0, the last row, column 0, the last column).

    A clean pixel-art background is one flat colour, plus the few colours of the figure where its
    shoulders or hair reach the edge; a patchy background adds many. Real Bespoke Punks: median 5.
    """
    return len(np.unique(pack_colours(_border(_check_art(img, "ring colours image")))))


# Colour names and the words people use for them; a word may stand for two ("tan": brown or beige).
COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "black": ("black", "jet", "ebony"),
    "grey": ("grey", "gray", "greyish", "grayish", "silver", "ash", "ashy", "charcoal", "slate", "gunmetal"),
    "white": ("white", "snow"),
    "red": ("red", "reddish", "crimson", "scarlet", "cherry", "ruby", "blood", "maroon", "burgundy", "wine"),
    "orange": ("orange", "orangey", "tangerine", "peach", "coral", "apricot", "amber", "pumpkin", "rust", "burnt", "salmon"),
    "yellow": ("yellow", "yellowish", "gold", "golden", "lemon", "mustard", "banana", "butter", "ochre", "khaki"),
    "green": ("green", "greenish", "lime", "mint", "olive", "sage", "hunter", "forest", "emerald", "jade", "seafoam", "kelly", "grass"),
    "teal": ("teal", "aqua", "cyan", "turquoise", "tiffany", "seafoam", "aquamarine"),
    "blue": ("blue", "bleu", "bluish", "blueish", "sky", "navy", "cobalt", "azure", "cerulean", "periwinkle", "coinbase", "tiffany", "denim"),
    "purple": ("purple", "purpl", "violet", "lavender", "lilac", "plum", "grape", "mauve", "magenta", "periwinkle", "boisenberry", "indigo",
               "eggplant", "aubergine"),
    "pink": ("pink", "pinkish", "rose", "dustrose", "raspberry", "fuchsia", "magenta", "bubblegum", "blush", "salmon", "mauve", "coral"),
    "brown": ("brown", "brownish", "tan", "chocolate", "coffee", "mocha", "chestnut", "rust", "burnt", "maroon", "taupe"),
    "beige": ("beige", "creme", "cream", "tan", "sand", "sandy", "eggshell", "ivory", "khaki", "nude", "offwhite", "ecru", "bone", "peach"),
}
# Words that may stand between a colour word and "background" without changing the colour.
COLOUR_MODIFIERS = frozenset(
    "light lighter lightest lg dark darker darkest deep bright brighter pale paler medium mid hot pastel pigmented royal electric soft muted vivid "
    "neon icy icey more very colored coloured color colour type dusty dusky dull faded warm cool rich baby almost solid plain flat pure opal bubble "
    "gum off".split()
)
# A background phrase with one of these words before "background" has more than one colour (or a
# pattern): it names no single colour to check.
NOT_ONE_COLOUR = frozenset(
    "split gradient multicolored multicoloured multicolor multi checkered checker checked brick pinstripe pinstriped stripe stripes striped radial "
    "tone two pattern patterned nature mountainous flag chart ekg many colors colours and to or".split()
)
# A border colour has the name of its nearest colour in the table, and also every name whose nearest
# entry is within this many ΔE2000 of that one (a colour between teal and blue is both). Measured on
# the real punks against their own captions (85 of the 184 name one background colour): 0.88 match
# with 0, 0.93 with 3, 0.96 with 6 (benchmarks/README.md).
NAME_MARGIN = 3.0


def _names_of_word() -> dict[str, frozenset[str]]:
    out: dict[str, set[str]] = {}
    for name, words in COLOUR_WORDS.items():
        for w in words:
            out.setdefault(w, set()).add(name)
    return {w: frozenset(n) for w, n in out.items()}


_WORD_NAMES = _names_of_word()
_WORDS = re.compile(r"[a-z]+")
_LEXICON = sorted(set(_WORD_NAMES) | COLOUR_MODIFIERS | {"background", "bg"}, key=len, reverse=True)
_TABLE: tuple[list[frozenset[str]], np.ndarray] | None = None


def colour_table() -> tuple[list[frozenset[str]], np.ndarray]:
    """(names per entry, (N, 3) CIELAB): the xkcd colour survey's colours (``matplotlib.colors.XKCD_COLORS``,
    public domain) whose name is a colour word with modifiers ("light blue", "dusty rose", "sky blue"), each
    named by its last word through :data:`COLOUR_WORDS`. About 300 colours, named by the people who saw them.
    """
    global _TABLE
    if _TABLE is None:
        from matplotlib.colors import XKCD_COLORS

        names, rgbs = [], []
        for key, hx in sorted(XKCD_COLORS.items()):
            words = key.removeprefix("xkcd:").replace("-", " ").replace("/", " ").split()
            head = _WORD_NAMES.get(words[-1]) if words else None
            if head and all(w in COLOUR_MODIFIERS or _WORD_NAMES.get(w, frozenset()) & head for w in words[:-1]):
                names.append(head)
                rgbs.append([int(hx[i : i + 2], 16) for i in (1, 3, 5)])
        _TABLE = (names, rgb_to_lab(np.array(rgbs, np.uint8)))
    return _TABLE


def delta_e_2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference (Sharma, Wu and Dalal's formulation); broadcasts over ``(..., 3)``.

    Used for naming rather than ΔE76, which counts chroma too heavily and calls saturated blues purple.
    """
    lab1, lab2 = np.broadcast_arrays(np.asarray(lab1, np.float64), np.asarray(lab2, np.float64))
    l1, a1, b1 = np.moveaxis(lab1, -1, 0)
    l2, a2, b2 = np.moveaxis(lab2, -1, 0)
    c_mean = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(c_mean**7 / (c_mean**7 + 25.0**7)))
    a1, a2 = (1 + g) * a1, (1 + g) * a2
    c1, c2 = np.hypot(a1, b1), np.hypot(a2, b2)
    h1, h2 = np.degrees(np.arctan2(b1, a1)) % 360, np.degrees(np.arctan2(b2, a2)) % 360
    chromatic = c1 * c2 != 0
    dh = h2 - h1
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh)) * chromatic
    d_l, d_c = l2 - l1, c2 - c1
    d_h = 2 * np.sqrt(c1 * c2) * np.sin(np.radians(dh / 2))
    l_mean, c_mean = (l1 + l2) / 2, (c1 + c2) / 2
    h_sum = h1 + h2
    h_mean = np.where(~chromatic, h_sum, np.where(np.abs(h1 - h2) <= 180, h_sum / 2, np.where(h_sum < 360, (h_sum + 360) / 2, (h_sum - 360) / 2)))
    t = 1 - 0.17 * np.cos(np.radians(h_mean - 30)) + 0.24 * np.cos(np.radians(2 * h_mean)) + 0.32 * np.cos(np.radians(3 * h_mean + 6)) - 0.20 * np.cos(np.radians(4 * h_mean - 63))
    r_c = 2 * np.sqrt(c_mean**7 / (c_mean**7 + 25.0**7))
    s_l = 1 + 0.015 * (l_mean - 50) ** 2 / np.sqrt(20 + (l_mean - 50) ** 2)
    s_c, s_h = 1 + 0.045 * c_mean, 1 + 0.015 * c_mean * t
    r_t = -np.sin(np.radians(60 * np.exp(-(((h_mean - 275) / 25) ** 2)))) * r_c
    return np.sqrt((d_l / s_l) ** 2 + (d_c / s_c) ** 2 + (d_h / s_h) ** 2 + r_t * (d_c / s_c) * (d_h / s_h))


def _name_distances(rgb: np.ndarray | Sequence[int]) -> dict[str, float]:
    """Each name's smallest ΔE2000 from the colour ``rgb`` (three uint8 values) to a table entry of that name."""
    names, labs = colour_table()
    dist = delta_e_2000(rgb_to_lab(np.asarray(rgb, np.uint8).reshape(1, 3)), labs).tolist()
    best: dict[str, float] = {}
    for entry, d in zip(names, dist):
        for name in entry:
            best[name] = min(best.get(name, np.inf), d)
    return best


def colour_name(rgb: np.ndarray | Sequence[int]) -> str:
    """The table's name for one sRGB colour (its nearest xkcd-survey colour's name; ties by name order)."""
    best = _name_distances(rgb)
    return min(sorted(best), key=best.__getitem__)


def colour_names(rgb: np.ndarray | Sequence[int], margin: float = NAME_MARGIN) -> frozenset[str]:
    """The names a colour answers to: the nearest one and every name within ``margin`` ΔE2000 of it."""
    best = _name_distances(rgb)
    nearest = min(best.values())
    return frozenset(n for n, d in best.items() if d <= nearest + margin)


def border_colour(img: np.ndarray) -> np.ndarray:
    """The most common colour of the outer ring of pixels, ``(3,)`` uint8: the background colour of a punk."""
    return _border_mode(_check_art(img, "border colour image"))[0]


def border_colour_name(img: np.ndarray) -> str:
    """The name (see :func:`colour_name`) of the image's most common border colour."""
    return colour_name(border_colour(img))


def _caption_words(phrase: str) -> list[str]:
    """A phrase's lower-case words, glued colour words split ("greybackground", "purplblue", "pinklavender")."""
    words: list[str] = []
    for w in _WORDS.findall(phrase.lower()):
        words += [w] if w in _WORD_NAMES or w in COLOUR_MODIFIERS else (_split_glued(w) or [w])
    return words


def _split_glued(word: str) -> list[str] | None:
    """``word`` as colour words, modifiers and "background" run together, or None when it is not."""
    if not word:
        return []
    for part in _LEXICON:
        if word.startswith(part) and (rest := _split_glued(word[len(part) :])) is not None:
            return [part, *rest]
    return None


def colour_names_in(phrase: str) -> list[frozenset[str]]:
    """The colour names of each colour word of ``phrase``, in order ("light blue hair and pink bow" -> [{blue}, {pink}])."""
    return [_WORD_NAMES[w] for w in _caption_words(phrase) if w in _WORD_NAMES]


def background_colour_names(caption: str) -> frozenset[str] | None:
    """The colour names a caption gives its background, or None when it names no single colour.

    Every comma-separated phrase with the word "background" (or "bg") is read up to that word: the
    colour words right before it, skipping modifiers, are the colour ("deep royal purple pigmented
    background" -> purple; "raspberry shirt dark dark green background" -> green; "tiffany blue
    background" -> teal or blue). None when no phrase names a colour ("solid background") or one
    names a pattern or several colours in that run ("split", "gradient", "pinstripe", "X to Y",
    "X and Y").
    """
    names: set[str] = set()
    for phrase in caption.split(","):
        words = _caption_words(phrase)
        at = next((i for i, w in enumerate(words) if w in ("background", "bg")), None)
        if at is None:
            continue
        for w in reversed(words[:at]):  # the run of colour words, modifiers and pattern words right before "background"
            if w in NOT_ONE_COLOUR:
                return None
            if w in _WORD_NAMES:
                names |= _WORD_NAMES[w]
            elif w not in COLOUR_MODIFIERS:
                break
    return frozenset(names) or None


def caption_adherence(prompts: Sequence[str], images: Sequence[np.ndarray], margin: float = NAME_MARGIN) -> tuple[float | None, int]:
    """(share, pairs checked): of the (prompt, image) pairs whose prompt names one background colour
    (:func:`background_colour_names`), the share whose most common border colour answers to one of
    those names (:func:`colour_names`). (None, 0) when no prompt names a background colour.
    """
    if len(prompts) != len(images):
        raise UserError(f"caption adherence: {len(prompts)} prompts for {len(images)} images; give one prompt per image")
    hits = checked = 0
    for i, (prompt, img) in enumerate(zip(prompts, images)):
        wanted = background_colour_names(prompt)
        if wanted is None:
            continue
        checked += 1
        hits += bool(wanted & colour_names(_border_mode(_check_art(img, f"caption adherence image {i}"))[0], margin))
    return (hits / checked if checked else None), checked


def _labs(images: np.ndarray) -> np.ndarray:
    """``(M, H, W, 3)`` uint8 -> ``(M, H*W, 3)`` float32 CIELAB."""
    return rgb_to_lab(images).reshape(len(images), -1, 3).astype(np.float32)


def even_sample(total: int, limit: int) -> list[int]:
    """At most ``limit`` indices of ``range(total)``, evenly spread and in order, the first and last included: the same
    ones every time (large sets are measured on such a sample, since nearest-neighbour distances grow with its square)."""
    if limit <= 0 or total <= 0:
        return []
    if total <= limit:
        return list(range(total))
    return list(dict.fromkeys(np.linspace(0, total - 1, limit).round().astype(int).tolist()))


def difference_matrix(query_labs: np.ndarray, ref_labs: np.ndarray, threshold: float = DIFFERENT_DELTA_E) -> np.ndarray:
    """``(M, N)`` share of pixels more than ``threshold`` ΔE apart, for every query × reference pair.

    Vectorised in chunks of queries so the ``(chunk, N, P, 3)`` temporary stays ~64 MiB.
    """
    m, n, p = len(query_labs), len(ref_labs), query_labs.shape[1] if len(query_labs) else 0
    out = np.empty((m, n), np.float64)
    if m == 0 or n == 0:
        return out
    chunk = max(1, NN_CHUNK_BYTES // max(1, n * p * 3 * 4))
    limit = np.float32(threshold * threshold)  # compare squared distances: no sqrt needed
    for start in range(0, m, chunk):
        q = query_labs[start : start + chunk, None]
        sq = (q[..., 0] - ref_labs[None, ..., 0]) ** 2  # per channel: see _pairwise_sq
        sq += (q[..., 1] - ref_labs[None, ..., 1]) ** 2
        sq += (q[..., 2] - ref_labs[None, ..., 2]) ** 2
        out[start : start + chunk] = (sq > limit).mean(axis=-1)
    return out


# --------------------------------------------------------------------------- full-size renders


def _grid_params(grid: Mapping[str, float] | Any | None, full: np.ndarray) -> tuple[float, float, float, float]:
    """(pitch_x, pitch_y, offset_x, offset_y) from a grid dict/object; the nominal grid when None."""
    h, w = full.shape[:2]
    if grid is None:
        return w / ART, h / ART, 0.0, 0.0
    values = []
    for key in ("pitch_x", "pitch_y", "offset_x", "offset_y"):
        raw = grid.get(key) if isinstance(grid, Mapping) else getattr(grid, key, None)
        try:
            number = float(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise UserError(f"grid.{key}: expected a number, got {raw!r}; pass the grid postprocess.detect_grid() found") from None
        if not np.isfinite(number) or (key.startswith("pitch") and number <= 0):
            raise UserError(f"grid.{key}: must be a finite{' positive' if key.startswith('pitch') else ''} number, got {raw!r}")
        values.append(number)
    return values[0], values[1], values[2], values[3]


def _applicable(full: np.ndarray | None) -> bool:
    """Grid metrics need a render bigger than the art: ≥ 3 image pixels per art pixel."""
    return full is not None and min(full.shape[:2]) >= 3 * ART


def _comb_axis(lab: np.ndarray, pitch: float, offset: float, axis: int, span: tuple[int, int]) -> tuple[float, float]:
    """(edge strength near grid lines, all edge strength) along one axis, above the noise floor.

    The edge profile sums ΔE between neighbours across the other axis (restricted to the
    art area ``span``); its median is the floor that noise adds everywhere, so noise on a
    clean grid keeps a high score while blur, which moves edge strength off the lines,
    does not.
    """
    part = lab[span[0] : span[1]] if axis == 1 else lab[:, span[0] : span[1]]
    step = np.diff(part, axis=axis)
    profile = np.sqrt(step[..., 0] ** 2 + step[..., 1] ** 2 + step[..., 2] ** 2).sum(axis=1 - axis)
    coord = np.arange(1, len(profile) + 1, dtype=np.float64)  # profile[i] is the edge at x = i + 1
    inside = (coord > offset + 0.5) & (coord < offset + ART * pitch - 0.5)
    if not inside.any():
        return 0.0, 0.0
    phase = (coord - offset) / pitch
    off_line = np.abs(phase - np.round(phase)) * pitch
    # ±1.33 px at 21.3 px cells: covers NEAREST's rounding and a ~0.05 px pitch error over 24 cells.
    near = off_line <= max(0.5, min(1.5, pitch / 16))
    excess = np.maximum(profile - np.median(profile[inside]), 0.0)
    return float(excess[inside & near].sum()), float(excess[inside].sum())


def grid_alignment(full: np.ndarray, grid: Mapping[str, float] | Any | None = None, lab: np.ndarray | None = None) -> float | None:
    """Share of the render's colour-edge strength that lies on the art-pixel grid (the "comb" score).

    1.0 for a clean NEAREST upscale, ~0.7 with σ 8 noise on a clean grid, ~0.2 for a
    bicubic upscale or a blurred render, 0 when the grid is off by half a cell. None
    when ``full`` is a 24×24-only output or has no edges at all.
    """
    if not _applicable(full):
        return None
    assert full is not None
    px, py, ox, oy = _grid_params(grid, full)
    lab = rgb_to_lab(full).astype(np.float32) if lab is None else lab
    h, w = lab.shape[:2]
    rows = (max(0, int(np.ceil(oy))), min(h, int(np.floor(oy + ART * py))))
    cols = (max(0, int(np.ceil(ox))), min(w, int(np.floor(ox + ART * px))))
    near_x, all_x = _comb_axis(lab, px, ox, 1, rows)
    near_y, all_y = _comb_axis(lab, py, oy, 0, cols)
    total = all_x + all_y
    return None if total <= 0 else (near_x + near_y) / total


def cell_flatness(full: np.ndarray, grid: Mapping[str, float] | Any | None = None, lab: np.ndarray | None = None) -> float | None:
    """Share of art cells whose interior (20% margin ignored) has mean ΔE < 5 to its median colour.

    Samples 6×6 points per cell rather than every pixel: the same answer at 1/10 the cost.
    Noise and misalignment both lower it (pixel-facts), so it complements the comb score.
    """
    if not _applicable(full):
        return None
    assert full is not None
    px, py, ox, oy = _grid_params(grid, full)
    lab = rgb_to_lab(full).astype(np.float32) if lab is None else lab
    h, w = lab.shape[:2]
    frac = np.linspace(0.2, 0.8, 6)
    cells = np.arange(ART)[:, None] + frac[None, :]
    xs = np.clip(np.floor(ox + cells * px).astype(int), 0, w - 1)
    ys = np.clip(np.floor(oy + cells * py).astype(int), 0, h - 1)
    samples = lab[ys[:, None, :, None], xs[None, :, None, :]].reshape(ART, ART, -1, 3)
    median = np.median(samples, axis=2, keepdims=True)
    deviation = np.sqrt(((samples - median) ** 2).sum(axis=-1)).mean(axis=-1)
    return float((deviation < FLAT_CELL_DELTA_E).mean())


# --------------------------------------------------------------------------- reference


@dataclass
class Reference:
    """The training set, precomputed once: palette, per-metric distributions, near-copy threshold."""

    names: list[str]
    images: np.ndarray  # (N, 24, 24, 3) uint8
    labs: np.ndarray  # (N, 576, 3) float32
    palette: np.ndarray  # (K, 3) uint8, every colour any training image uses
    palette_lab: np.ndarray  # (K, 3)
    palette_users: np.ndarray  # (K,) how many training images use each colour
    distributions: dict[str, np.ndarray] = field(default_factory=dict)  # per-metric values over the training set
    nearest: list[str] = field(default_factory=list)  # leave-one-out nearest training image of each
    copy_threshold: float = FALLBACK_COPY_THRESHOLD

    @classmethod
    def from_dataset(cls, dataset_dir: Path, background: tuple[int, int, int] = (255, 255, 255)) -> Reference:
        """Every ``*.png`` of ``dataset_dir`` (sorted), alpha flattened onto ``background``."""
        dataset_dir = Path(dataset_dir)
        if not dataset_dir.is_dir():
            raise UserError(f"{dataset_dir}: training folder not found; pass the folder of 24×24 originals")
        paths = sorted(p for p in dataset_dir.glob("*.png") if p.is_file())
        if not paths:
            raise UserError(f"{dataset_dir}: no .png images; pass the folder of 24×24 originals")
        return cls.from_images([p.stem for p in paths], [load_rgb(p, background) for p in paths])

    @classmethod
    def from_images(cls, names: Sequence[str], images: Sequence[np.ndarray] | np.ndarray) -> Reference:
        """Reference from in-memory ``(H, W, 3)`` uint8 images of one size, named ``names``."""
        if len(names) != len(images):
            raise UserError(f"reference: {len(names)} names for {len(images)} images; give one name per image")
        if len(images) == 0:
            raise UserError("reference: no training images; the metrics compare outputs against the training set")
        arrays = [_check_art(im, f"training image {n!r}") for n, im in zip(names, images)]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise UserError(f"reference: training images differ in size ({sorted(shapes)}); use one size (24×24 originals)")
        stack = np.stack(arrays)
        keys, owners = np.unique(np.concatenate([np.unique(pack_colours(a.reshape(-1, 3))) for a in arrays]), return_counts=True)
        palette = unpack_colours(keys)
        ref = cls(list(names), stack, _labs(stack), palette, rgb_to_lab(palette), owners)
        ref._measure()
        return ref

    def _measure(self) -> None:
        """Fill ``distributions``, ``nearest`` and ``copy_threshold`` (leave-one-out where needed)."""
        n = len(self.names)
        per_image = [_style_values(im) for im in self.images]
        for key in [*STYLE_KEYS, "ring_colours"]:
            if key != "palette_adherence":
                self.distributions[key] = np.array([v[key] for v in per_image], np.float64)
        self.distributions["palette_adherence"] = np.array([self._adherence_without(i) for i in range(n)])
        if n < 2:
            return
        dist = difference_matrix(self.labs, self.labs)
        np.fill_diagonal(dist, np.inf)
        best = dist.argmin(axis=1)
        self.distributions["nearest_distance"] = dist[np.arange(n), best]
        self.nearest = [self.names[j] for j in best]
        if n >= MIN_IMAGES_FOR_COPY_PERCENTILE:
            p5 = float(np.percentile(self.distributions["nearest_distance"], COPY_PERCENTILE))
            self.copy_threshold = min(p5, MAX_COPY_THRESHOLD)

    def _adherence_without(self, i: int) -> float:
        """Palette adherence of training image ``i`` against the colours of the *other* images."""
        img = self.images[i]
        mine = np.isin(pack_colours(self.palette), pack_colours(img.reshape(-1, 3)))
        others = self.palette_users - mine.astype(int) >= 1
        return palette_adherence(img, self.palette_lab[others])

    @property
    def art_shape(self) -> tuple[int, ...]:
        """Shape every output must have to be compared pixel by pixel."""
        return tuple(self.images.shape[1:])

    @property
    def nearest_median(self) -> float | None:
        """Median leave-one-out nearest-neighbour distance: how far a punk is from its closest other punk."""
        d = self.distributions.get("nearest_distance")
        return None if d is None or len(d) == 0 else float(np.median(d))

    def values(self) -> dict[str, float | None]:
        """Median of each metric over the training images (the report's reference row); None where not applicable."""
        return {k: (float(np.median(self.distributions[k])) if k in self.distributions else None) for k in METRICS}

    def range_of(self, key: str) -> tuple[float, float] | None:
        """The training set's 5th–95th percentile of ``key``, or None when it has no distribution."""
        d = self.distributions.get(key)
        if d is None or len(d) == 0:
            return None
        lo, hi = np.percentile(d, RANGE)
        return float(lo), float(hi)


def style_values(img: np.ndarray) -> dict[str, float]:
    """The style metrics that need nothing but the image itself (palette adherence aside)."""
    return _style_values(_check_art(img, "image"))


def _style_values(img: np.ndarray) -> dict[str, float]:
    """:func:`style_values` of an image already checked."""
    mask = background_mask(img)
    return {
        "distinct_colours": float(colour_count(img)),
        "perceptual_colours": float(perceptual_colour_count(img)),
        "border_solidity": border_solidity(img),
        "background_area": background_area(img, mask),
        "dark_outline": dark_outline(img, mask),
        "orphan_pixels": orphan_share(img),
        "ring_colours": float(ring_colours(img)),
    }


# --------------------------------------------------------------------------- judging one value


def percentile(value: float, distribution: np.ndarray) -> float:
    """Mid-rank percentile (0..1) of ``value`` in ``distribution``: 0.5 at the median, ties split."""
    d = np.asarray(distribution, np.float64)
    return float(((d < value).sum() + 0.5 * (d == value).sum()) / len(d))


def typicality(value: float | None, distribution: np.ndarray | None, better: Better = "closer_to_reference") -> float | None:
    """1 at the training median, linearly down to 0 at the 5th/95th percentile and beyond.

    For ``better="higher"`` (``"lower"``) values above (below) the median score 1: that
    side is never a flaw. None when there is no value or no distribution.
    """
    if value is None or distribution is None or len(distribution) == 0:
        return None
    p = percentile(value, distribution)
    if (better == "higher" and p >= 0.5) or (better == "lower" and p <= 0.5):
        return 1.0
    span = (RANGE[1] - RANGE[0]) / 100.0
    return float(np.clip(1.0 - abs(2.0 * p - 1.0) / span, 0.0, 1.0))


# --------------------------------------------------------------------------- public: images and epochs


def image_metrics(img24: np.ndarray, ref: Reference, full: np.ndarray | None = None, grid: Mapping[str, float] | Any | None = None) -> dict[str, Any]:
    """All per-image metrics of one output, plus ``nearest_name`` and ``near_copy``.

    ``full``/``grid``: the full-size render and the grid found in it (``pitch_x``,
    ``pitch_y``, ``offset_x``, ``offset_y``; nominal size/24 when omitted). Without a
    full-size render the grid metrics are None (not applicable).
    """
    img = _check_shape(img24, ref, "output image")
    return _image_metrics(img, ref, full, grid, _labs(img[None])[0], "output image")


def _check_shape(img: np.ndarray, ref: Reference, what: str) -> np.ndarray:
    """An RGB uint8 array the size of the training images, or a UserError saying which and why."""
    arr = _check_art(img, what)
    if arr.shape != ref.art_shape:
        raise UserError(f"{what}: is {arr.shape[1]}×{arr.shape[0]}, the training images are {ref.art_shape[1]}×{ref.art_shape[0]}; compare the 24×24 result (.24.png), not the full-size sample")
    return arr


def _image_metrics(img: np.ndarray, ref: Reference, full: np.ndarray | None, grid: Any, lab: np.ndarray, what: str) -> dict[str, Any]:
    """:func:`image_metrics` with the output's CIELAB already computed (epochs convert all at once)."""
    out: dict[str, Any] = dict(_style_values(img))
    out["palette_adherence"] = palette_adherence(img, ref.palette_lab)
    dist = difference_matrix(lab[None], ref.labs)[0]
    j = int(dist.argmin())
    out["nearest_distance"] = float(dist[j])
    out["nearest_name"] = ref.names[j]
    out["near_copy"] = bool(dist[j] <= ref.copy_threshold)
    out["grid_alignment"] = out["cell_flatness"] = None
    if full is not None and _applicable(full_arr := _check_art(full, f"{what} (full size)")):
        full_lab = rgb_to_lab(full_arr).astype(np.float32)  # once for both grid metrics
        out["grid_alignment"] = grid_alignment(full_arr, grid, full_lab)
        out["cell_flatness"] = cell_flatness(full_arr, grid, full_lab)
    return {k: out[k] for k in [*IMAGE_KEYS, "nearest_name", "near_copy"]}


def _mean_pairwise(labs: np.ndarray) -> float | None:
    """Mean share of pixels differing (ΔE > 5) over all pairs; None for fewer than two images."""
    if len(labs) < 2:
        return None
    d = difference_matrix(labs, labs)
    iu = np.triu_indices(len(labs), 1)
    return float(d[iu].mean())


def diversity(images: Sequence[np.ndarray], groups: Sequence[str] | None = None) -> float | None:
    """Mean pairwise share of differing pixels within each group (e.g. one prompt's seeds), averaged over groups.

    Without ``groups`` all images form one group. None when no group has two images.
    """
    if not len(images):
        return None
    labs = _labs(np.stack([_check_art(im, f"output image {i}") for i, im in enumerate(images)]))
    return _grouped_diversity(labs, groups)


def _grouped_diversity(labs: np.ndarray, groups: Sequence[str] | None) -> float | None:
    keys = list(groups) if groups is not None else [""] * len(labs)
    per_group = [_mean_pairwise(labs[[i for i, g in enumerate(keys) if g == key]]) for key in dict.fromkeys(keys)]
    scored = [v for v in per_group if v is not None]
    return float(np.mean(scored)) if scored else None


def _median(values: list[Any]) -> float | None:
    nums = [float(v) for v in values if v is not None]
    return float(np.median(nums)) if nums else None


def epoch_metrics(
    images: Sequence[np.ndarray],
    ref: Reference,
    groups: Sequence[str] | None = None,
    fulls: Sequence[np.ndarray | None] | None = None,
    grids: Sequence[Mapping[str, float] | Any | None] | None = None,
    prompts: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Score one epoch's outputs against the reference (JSON-ready).

    ``prompts``: the prompt of each image (for caption adherence); ``groups``: the prompt id of each image (for seed diversity); ``fulls``/``grids``:
    the full-size render and its grid per image (None entries allowed). Returns ``n``,
    ``values`` (one number per :data:`METRICS` key: medians of the per-image values,
    near-copy count, seed diversity), ``images`` (per-image dicts), ``copies``,
    ``typicality``/``in_range``/``percentile``/``ranges`` per style metric, the style
    parts (``style``, ``grid``, ``diversity_score``, ``copy_share``, ``quality``).
    No images gives ``n = 0`` and None everywhere.
    """
    n = len(images)
    for name, seq in (("groups", groups), ("fulls", fulls), ("grids", grids), ("prompts", prompts)):
        if seq is not None and len(seq) != n:
            raise UserError(f"epoch metrics: {len(seq)} {name} for {n} images; give one per image (None where unknown)")
    result: dict[str, Any] = {"n": n, "values": {k: None for k in METRICS}, "images": [], "copies": [], "typicality": {}, "in_range": {}, "percentile": {}, "ranges": {}}
    result.update(style=None, grid=None, diversity_score=None, diversity_overall=None, copy_share=None, quality=None)
    if n == 0:
        return result
    arts = np.stack([_check_shape(im, ref, f"output image {i}") for i, im in enumerate(images)])
    labs = _labs(arts)
    per = [_image_metrics(arts[i], ref, None if fulls is None else fulls[i], None if grids is None else grids[i], labs[i], f"output image {i}") for i in range(n)]
    result["images"] = per
    values = result["values"]
    for key in IMAGE_KEYS:
        values[key] = _median([p[key] for p in per])
    result["copies"] = [{"index": i, "nearest": p["nearest_name"], "distance": p["nearest_distance"]} for i, p in enumerate(per) if p["near_copy"]]
    values["near_copies"] = float(len(result["copies"]))
    values["seed_diversity"] = _grouped_diversity(labs, groups)
    values["caption_adherence"] = caption_adherence(list(prompts), list(arts))[0] if prompts is not None else None
    result["diversity_overall"] = _mean_pairwise(labs)
    _judge(result, per, ref)
    return result


def _judge(result: dict[str, Any], per: list[dict[str, Any]], ref: Reference) -> None:
    """Fill the typicality, range and quality fields of an epoch result (see the module docstring)."""
    n = len(per)
    for key in STYLE_KEYS:
        dist = ref.distributions.get(key)
        if dist is None or len(dist) == 0:
            continue
        better = METRICS[key].better
        lo, hi = (float(x) for x in np.percentile(dist, RANGE))
        result["typicality"][key] = float(np.mean([typicality(p[key], dist, better) for p in per]))
        result["in_range"][key] = float(np.mean([lo <= p[key] <= hi for p in per]))
        result["percentile"][key] = percentile(result["values"][key], dist)
        result["ranges"][key] = [lo, hi]
    if result["typicality"]:
        result["style"] = float(np.mean(list(result["typicality"].values())))
    grids = [p["grid_alignment"] for p in per if p["grid_alignment"] is not None]
    result["grid"] = float(np.mean(grids)) if grids else None
    div = result["values"]["seed_diversity"]
    if div is None:
        div = result["diversity_overall"]
    scale = DIVERSITY_SCALE * (ref.nearest_median or 0.0)
    if div is not None and scale > 0:
        result["diversity_score"] = float(min(1.0, div / scale))
    result["copy_share"] = len(result["copies"]) / n
    parts = [(result[name], WEIGHTS[name]) for name in ("style", "grid") if result[name] is not None]
    if parts:
        result["quality"] = float(sum(v * w for v, w in parts) / sum(w for _, w in parts))


# --------------------------------------------------------------------------- words


def _num(value: float | None) -> str:
    """A number as a person reads it: counts whole, shares to 2 decimals."""
    if value is None:
        return "–"
    if abs(value) >= 10 or (abs(value) >= 1 and float(value).is_integer()):
        return f"{value:.0f}"  # colour counts (a median may end in .5; nobody needs that half)
    return f"{value:.2f}"


def _off_style(result: Mapping[str, Any], limit: int = 3) -> list[str]:
    """Phrases for the style metrics furthest from the training set, worst first."""
    order = list(METRICS)
    worst = sorted((t, order.index(k), k) for k, t in result.get("typicality", {}).items() if t < 0.25)
    out = []
    for _, _, key in worst[:limit]:
        median = result["values"].get(key)
        lo, hi = result["ranges"].get(key, [None, None])
        side = "high" if result["percentile"].get(key, 0.5) > 0.5 else "low"
        out.append(f"{METRICS[key].label} {side} ({_num(median)} vs {_num(lo)}–{_num(hi)} in training)")
    return out


def _copies_phrase(result: Mapping[str, Any]) -> str | None:
    copies = result.get("copies") or []
    if not copies:
        return None
    names = sorted({c["nearest"] for c in copies})
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"copies {len(names)} training punk{'s' if len(names) != 1 else ''} ({shown}) in {len(copies)} of {result['n']} outputs"


def _diversity_value(result: Mapping[str, Any]) -> float | None:
    """Seed diversity, or the overall diversity when the outputs were not grouped by prompt."""
    value = (result.get("values") or {}).get("seed_diversity")
    return result.get("diversity_overall") if value is None else value


def verdict_parts(result: Mapping[str, Any]) -> list[str]:
    """Phrases saying how an epoch's outputs compare with the training set (the report puts its score and evidence in front)."""
    parts = []
    if phrase := _copies_phrase(result):
        parts.append(phrase)  # first: memorisation outweighs any style number
    close = [METRICS[k].label for k, t in result.get("typicality", {}).items() if t >= 0.5]
    if close:
        parts.append("close to the training set in " + ", ".join(close))
    off = _off_style(result)
    if off:
        parts.append("off-style: " + ", ".join(off))
    if result.get("grid") is not None and result["grid"] < 0.6:
        parts.append(f"pixel grid blurred or misaligned (alignment {_num(result['grid'])})")
    if result.get("diversity_score") is not None and result["diversity_score"] < 0.3:
        parts.append(f"seeds look alike (diversity {_num(_diversity_value(result))})")
    return parts
