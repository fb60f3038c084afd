"""A run's training images, as every later stage sees them: the one answer to "where are the originals".

`render` prepares ``data/<repeats>_<concept>/`` (each original NEAREST-upscaled to the training
resolution, transparency flattened, its caption beside it). That folder travels with the run, so
sampling (the palette to snap to) and the report (the reference row, held-out originals) read the
art back from it, never from a path run.json recorded on another machine. NEAREST down-sampling
undoes a NEAREST upscale exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..paths import ART
from . import DATA, training_folder_name


def training_folder(run_dir: Path, resolved: dict[str, Any]) -> Path:
    """``RUN/data/<repeats>_<concept>`` as run.json's resolved preset names it."""
    d = (resolved or {}).get("dataset") or {}
    return Path(run_dir) / DATA / training_folder_name(d.get("num_repeats", 10), d.get("concept", "bespoke_punk"))


def training_images(run_dir: Path, resolved: dict[str, Any]) -> list[Path]:
    """The prepared PNGs of the run (regular files only), sorted by name; [] when data/ is missing."""
    folder = training_folder(run_dir, resolved)
    if not folder.is_dir() or folder.is_symlink():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix == ".png" and p.is_file() and not p.is_symlink())


def art_of(path: Path) -> np.ndarray:
    """A prepared image back at 24×24 RGB (uint8); a UserError names a damaged file."""
    from PIL import Image

    from ..images import load_rgb

    rgb = load_rgb(path)
    if rgb.shape[:2] == (ART, ART):
        return rgb
    h, w = rgb.shape[:2]
    if h != w or h < ART:
        raise UserError(f"{path}: a prepared image of {w}x{h} px is not a square upscale of 24x24 art; render the run again")
    return np.asarray(Image.fromarray(rgb).resize((ART, ART), Image.NEAREST))


def training_colours(run_dir: Path, resolved: dict[str, Any]) -> np.ndarray:
    """(N, 3) uint8: every distinct colour of the run's training images (the palette samples may snap to)."""
    paths = training_images(run_dir, resolved)
    if not paths:
        raise UserError(f"{training_folder(run_dir, resolved)}: the run's prepared training images are missing, so there is no palette to snap to; "
                        "restore data/ from a copy of the run, or pass --dataset FOLDER with the 24x24 originals")
    return np.unique(np.concatenate([art_of(p).reshape(-1, 3) for p in paths]), axis=0)
