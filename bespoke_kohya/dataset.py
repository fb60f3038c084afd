"""Dataset intake: check a folder of 24×24 originals, then prepare kohya's training folder.

Checks refuse bad input with one line that names the file (wrong size, unreadable
PNG, a stray non-image file, an empty folder); softer problems (missing captions,
duplicates, phrases repeated inside a caption) are reported and handled.
"""

from __future__ import annotations

import glob
import hashlib
import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import UserError
from .regular import read_text
from .images import IMAGE_SUFFIXES, PICTURE_SUFFIXES, flatten_alpha, open_image, parse_hex_colour, save_png
from .paths import ART as ART_SIZE
from .runfolder import training_folder_name

# Files a dataset folder may hold besides images and captions.
_IGNORED_SUFFIXES = {".md", ".json", ".toml", ".diff"}  # .diff: the `dataset captions --fix` record


@dataclass
class ImageInfo:
    """What intake learned about one image."""

    name: str
    path: Path
    size: tuple[int, int]
    mode: str
    colours: int
    transparent: bool
    caption: str | None
    repeated_phrases: list[str] = field(default_factory=list)
    pixel_hash: str = ""


@dataclass
class DatasetReport:
    """The result of checking a dataset folder."""

    folder: Path
    images: list[ImageInfo]
    caption_extension: str

    @property
    def missing_captions(self) -> list[str]:
        return [i.name for i in self.images if i.caption is None]

    @property
    def duplicate_images(self) -> list[list[str]]:
        """Groups of images with identical pixels."""
        groups: dict[str, list[str]] = {}
        for info in self.images:
            groups.setdefault(info.pixel_hash, []).append(info.name)
        return [names for names in groups.values() if len(names) > 1]

    @property
    def duplicate_captions(self) -> list[list[str]]:
        """Groups of images whose caption text is identical."""
        groups: dict[str, list[str]] = {}
        for info in self.images:
            if info.caption is not None:
                groups.setdefault(info.caption.strip().lower(), []).append(info.name)
        return [names for names in groups.values() if len(names) > 1]

    @property
    def with_repeated_phrases(self) -> list[ImageInfo]:
        return [i for i in self.images if i.repeated_phrases]

    def summary(self) -> dict:
        """Plain numbers for tables and JSON."""
        colours = np.array([i.colours for i in self.images])
        return {
            "folder": str(self.folder),
            "images": len(self.images),
            "sizes": dict(Counter(f"{w}x{h}" for w, h in (i.size for i in self.images))),
            "modes": dict(Counter(i.mode for i in self.images)),
            "colours_min": int(colours.min()),
            "colours_median": float(np.median(colours)),
            "colours_max": int(colours.max()),
            "with_transparency": sum(i.transparent for i in self.images),
            "missing_captions": self.missing_captions,
            "duplicate_images": self.duplicate_images,
            "duplicate_captions": self.duplicate_captions,
            "captions_with_repeated_phrases": len(self.with_repeated_phrases),
        }

    def content_hash(self) -> str:
        """sha256 over every image's pixels and caption, in name order (identifies the training data in run.json)."""
        h = hashlib.sha256()
        for info in self.images:
            h.update(info.name.encode())
            h.update(info.pixel_hash.encode())
            h.update((info.caption or "").encode())
        return h.hexdigest()


def split_phrases(caption: str) -> list[str]:
    """Comma-separated phrases of a caption, stripped, empty ones dropped."""
    return [p.strip() for p in caption.split(",") if p.strip()]


def repeated_phrases(caption: str) -> list[str]:
    """Phrases that occur more than once in one caption (case-insensitive)."""
    counts = Counter(p.lower() for p in split_phrases(caption))
    return [p for p, n in counts.items() if n > 1]


def dedupe_phrases(caption: str) -> str:
    """The caption with repeated phrases kept once, in first-seen order."""
    seen: set[str] = set()
    kept = []
    for phrase in split_phrases(caption):
        if phrase.lower() not in seen:
            seen.add(phrase.lower())
            kept.append(phrase)
    return ", ".join(kept)


def caption_path(image: Path, caption_extension: str) -> Path | None:
    """The caption file of ``image``: same stem, extension matched case-insensitively (`a.TXT` counts).

    An exact match wins; two files differing only in case (`a.txt`, `a.TXT`) are refused.
    """
    exact = image.with_suffix(caption_extension)
    if exact.is_file():
        return exact
    wanted = caption_extension.lower()
    found = sorted(p for p in image.parent.glob(f"{glob.escape(image.stem)}.*") if p.suffix.lower() == wanted and p.stem == image.stem and p.is_file())
    if len(found) > 1:
        raise UserError(f"{image}: several captions differ only in case ({', '.join(p.name for p in found)}); keep one")
    return found[0] if found else None


def _read_caption(path: Path | None) -> str | None:
    """A caption's text, whitespace collapsed; None when there is none or it holds no phrase (only commas and spaces).

    A caption of only commas says nothing, exactly like an empty file: both are a missing caption
    (the lint says so, training uses the preset's default_caption), never an empty one.
    """
    if path is None:
        return None
    text = read_text(path, what="caption", fix="re-save it as UTF-8 text")
    text = re.sub(r"\s+", " ", text or "").strip()
    return text if split_phrases(text) else None


def check_caption_extension(caption_extension: str) -> None:
    """Refuse a caption extension that names a picture format (captions are text files)."""
    if caption_extension.lower() in PICTURE_SUFFIXES:
        raise UserError(f"caption extension {caption_extension!r} is an image extension; captions are text files, use e.g. .txt")


def list_images(folder: Path, caption_extension: str = ".txt") -> list[Path]:
    """The PNG images of a dataset folder, sorted; refuses stray files and empty folders."""
    if not folder.exists():
        raise UserError(f"{folder}: dataset folder not found; pass --dataset with a folder of 24x24 PNG images and .txt captions")
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder; --dataset needs a folder of 24x24 PNG images")
    check_caption_extension(caption_extension)
    images = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            images.append(path)
        elif suffix != caption_extension.lower() and suffix not in _IGNORED_SUFFIXES:
            raise UserError(f"{path}: not a PNG image or a {caption_extension} caption; convert it to PNG or move it out of the dataset folder")
    if not images:
        raise UserError(f"{folder}: no .png images found; put the 24x24 originals (and their {caption_extension} captions) in it")
    return images


def inspect_image(path: Path, caption_extension: str = ".txt") -> ImageInfo:
    """Open and check one original; a non-PNG, wrong size or unreadable file is a UserError (size checked before decoding)."""
    im = open_image(path, formats=("PNG",), check=lambda header: _check_art_size(path, header.size))
    rgba = np.asarray(im.convert("RGBA"))
    transparent = bool((rgba[..., 3] < 255).any())
    rgb = np.asarray(flatten_alpha(im))
    caption = _read_caption(caption_path(path, caption_extension))
    return ImageInfo(
        name=path.stem,
        path=path,
        size=im.size,
        mode=im.mode,
        colours=len(np.unique(rgb.reshape(-1, 3), axis=0)),
        transparent=transparent,
        caption=caption,
        repeated_phrases=repeated_phrases(caption) if caption else [],
        pixel_hash=hashlib.sha256(rgba.tobytes()).hexdigest(),
    )


def _check_art_size(path: Path, size: tuple[int, int]) -> None:
    if size != (ART_SIZE, ART_SIZE):
        raise UserError(f"{path}: image is {size[0]}x{size[1]}, expected {ART_SIZE}x{ART_SIZE}; give the original 24x24 art, not an upscale or crop")


def check_dataset(folder: Path, caption_extension: str = ".txt") -> DatasetReport:
    """Check every image of a dataset folder; the first bad file ends it with a UserError."""
    paths = list_images(folder, caption_extension)
    return DatasetReport(folder=folder, images=[inspect_image(p, caption_extension) for p in paths], caption_extension=caption_extension)


# ------------------------------------------------------------------ preparation


@dataclass
class Prepared:
    """What preparation wrote and what it had to decide."""

    folder: Path
    count: int
    scale: float
    warnings: list[str]


def upscale(im: Image.Image, resolution: int) -> Image.Image:
    """NEAREST upscale of an RGB original to ``resolution`` (integer factor when resolution is a multiple of 24)."""
    if im.size == (resolution, resolution):
        return im
    return im.resize((resolution, resolution), Image.NEAREST)


def prepare(report: DatasetReport, out_data_dir: Path, *, resolution: int, num_repeats: int, concept: str, default_caption: str, background: str, caption_extension: str = ".txt") -> Prepared:
    """Write each original NEAREST-upscaled with its caption into ``out_data_dir/<repeats>_<concept>/``.

    Alpha is flattened onto ``background`` (sd-scripts would drop it), missing
    captions get ``default_caption`` and repeated phrases are kept once; each of
    those is listed in the returned warnings. Output bytes depend only on input.
    """
    bg = parse_hex_colour(background)
    folder = out_data_dir / training_folder_name(num_repeats, concept)
    folder.mkdir(parents=True, exist_ok=False)
    warnings = []
    scale = resolution / ART_SIZE
    if resolution % ART_SIZE:
        warnings.append(
            f"resolution {resolution} is not a multiple of {ART_SIZE}: art pixels become {int(scale)} or {int(scale) + 1} px wide (scale {scale:.2f}); 576 gives exactly 24 px"
        )
    missing, deduped = [], []
    for info in report.images:
        rgb = flatten_alpha(open_image(info.path, formats=("PNG",)), bg)
        save_png(upscale(rgb, resolution), folder / f"{info.name}.png")
        caption = info.caption
        if caption is None:
            missing.append(info.name)
            caption = default_caption
        elif info.repeated_phrases:
            deduped.append(info.name)
            caption = dedupe_phrases(caption)
        (folder / f"{info.name}{caption_extension}").write_text(caption + "\n", encoding="utf-8")
    if missing:
        warnings.append(f"{len(missing)} image(s) had no caption and got the default caption: {', '.join(missing)}")
    if deduped:
        warnings.append(f"{len(deduped)} caption(s) repeated a phrase; repeats were removed: {', '.join(deduped[:5])}{' …' if len(deduped) > 5 else ''}")
    return Prepared(folder=folder, count=len(report.images), scale=scale, warnings=warnings)


def split_heldout(files: list[str], split: float, seed: int) -> tuple[list[str], list[str]]:
    """(training, held-out) file names, exactly as sd-scripts v0.10.1 splits one subset's images.

    `library/train_util.py: split_train_val`: the sorted image paths are shuffled by
    ``random.seed(validation_seed)``; training takes the first ``ceil(n * (1 - split))``,
    validation the last ``round(n * split)``. The pixel24 engine uses the same function, so
    both routes hold out the same images and the report can pair each held-out caption's
    samples with the real image. Both lists keep the shuffled order's members, sorted.
    """
    if split <= 0 or not files:
        return sorted(files), []
    order = sorted(files)
    random.Random(seed).shuffle(order)
    training = order[: math.ceil(len(order) * (1 - split))]
    heldout = order[len(order) - round(len(order) * split):]
    return sorted(training), sorted(heldout)
