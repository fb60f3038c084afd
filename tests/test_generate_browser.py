"""The collection page opened from disk in headless Chromium with the network off: every punk is on the
screenshot pixel-exact, beside its nearest training punk, and the rejected candidates' strip is there."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bespoke_kohya.generate.collection import generate
from bespoke_kohya.generate.page import SCALE

from tests.test_generate import options, toy_run  # noqa: F401 - the fixture
from tests.test_report_browser import CHROMIUM, find, screenshot

pytestmark = pytest.mark.browser


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not found (apt-get install chromium)")
def test_the_collection_page_shows_every_punk_pixel_exact_offline(toy_run: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "collection"
    generate(options(toy_run, out, count=6))
    shot = screenshot(out / "index.html", tmp_path / "shot.png", tmp_path / "profile")
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 50  # a page, not a blank or error screen
    doc = json.loads((out / "collection.json").read_text(encoding="utf-8"))
    spots = []
    for n in range(1, 7):
        art = np.asarray(Image.open(out / "images" / f"{n}.png").convert("RGB"))
        found = find(shot, art, SCALE)
        assert found, f"token {n} is not on the page pixel-exact at ×{SCALE}"
        spots.append(found[0])
    assert len(set(spots)) == 6  # six different places: a contact sheet, not one image repeated
    rejected = sum(doc["rejections"].values())
    if rejected:
        left_out = [(n, c["k"]) for n in range(1, 7) for c in json.loads((out / "candidates" / f"{n}.json").read_text())["candidates"] if c["reason"]]
        first = out / "candidates" / f"{left_out[0][0]}-{left_out[0][1]}.png"
        assert find(shot, np.asarray(Image.open(first).convert("RGB")), SCALE), "a rejected candidate is not shown in the strip"
