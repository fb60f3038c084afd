"""The collection's page: each punk beside its nearest training punk, the rarity table, the candidates left out and why.

Jinja2 (templates/collection.html.j2 + collection.css, autoescaped); every image embedded, so the page opens
from disk with no network, like the report.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from .. import __version__
from ..images import data_uri, load_rgb, png_bytes
from . import layout

SCALE = 4  # 24 px art shown at 96 px, pixel-exact (NEAREST in the browser: image-rendering pixelated)
REJECTED_SHOWN = 60


def _art_uri(art: np.ndarray) -> str:
    return data_uri(png_bytes(art))


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("bespoke_kohya.generate", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def render_page(out: Path, doc: dict[str, Any], names: list[str], arts: np.ndarray) -> str:
    """index.html of the collection in ``out`` (collection.json's ``doc``, the training punks by name)."""
    by_name = dict(zip(names, arts))
    tokens = []
    for t in doc["tokens"]:
        near = by_name.get(t.get("nearest_training_punk") or "")
        tokens.append({**t, "src": _art_uri(load_rgb(out / layout.IMAGES / layout.image_name(t["token"]))),
                       "near_src": _art_uri(near) if near is not None else None,
                       "differs": f"{(t.get('nearest_distance') or 0):.0%}"})
    rejected = []
    for n in range(1, doc["count"] + 1):
        for c in layout.read_candidates(out, n):
            path = layout.candidate_path(out, n, c.get("k"))
            if c.get("reason") and path is not None and path.is_file() and len(rejected) < REJECTED_SHOWN:
                rejected.append({"token": n, "reason": c["reason"], "detail": c.get("detail", ""), "src": _art_uri(load_rgb(path))})
    settings = doc["settings"]
    return _environment().get_template("collection.html.j2").render(
        name=settings["name"], description=settings["description"], settings=settings, tokens=tokens, rarity=doc["rarity"],
        rejections=doc["rejections"], rejected=rejected, drawn=doc["candidates_drawn"], provenance=doc["provenance_sha256"],
        side=24 * SCALE, version=__version__, css=(Path(__file__).parent / "templates" / "collection.css").read_text(encoding="utf-8"),
    )
