"""Open the report from disk in headless Chromium with the network off, and look at it.

The screenshot must show the page (many colours, not one flat colour) and the sample
grid: every 24×24 result is found pixel-exact (each art pixel a 4×4 block) where the
grid puts it, the same prompt × seed on one row and each epoch in one column.
Needs Debian's `chromium` on PATH (`apt-get install chromium`); skipped otherwise.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bespoke_kohya import report
from bespoke_kohya.report.page import SCALE

from tests.helpers.fake_run import build_fake_run

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WINDOW = (1400, 2000)


def screenshot(page: Path, out: Path, profile: Path, height: int = WINDOW[1]) -> np.ndarray:
    """Render ``page`` (a file) headless; the proxy to a closed port proves nothing is fetched."""
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        "--proxy-server=127.0.0.1:9",
        f"--user-data-dir={profile}",
        f"--screenshot={out}",
        f"--window-size={WINDOW[0]},{height}",
        page.resolve().as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    with Image.open(out) as im:
        return np.asarray(im.convert("RGB"))


def pack(rgb: np.ndarray) -> np.ndarray:
    """RGB as one int per pixel, so a colour comparison is one array operation."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def find(shot: np.ndarray, art: np.ndarray, scale: int) -> list[tuple[int, int]]:
    """Top-left (x, y) of every place where ``art`` enlarged ×scale appears exactly."""
    big = pack(np.repeat(np.repeat(art, scale, axis=0), scale, axis=1))
    screen = pack(shot)
    side = big.shape[0]
    ys, xs = np.nonzero(screen[: screen.shape[0] - side + 1, : screen.shape[1] - side + 1] == big[0, 0])
    # Narrow the candidates one art pixel at a time, then compare the survivors whole.
    for dy, dx in np.random.default_rng(0).integers(0, side, size=(48, 2)):
        keep = screen[ys + dy, xs + dx] == big[dy, dx]
        ys, xs = ys[keep], xs[keep]
    return [(int(x), int(y)) for y, x in zip(ys, xs) if np.array_equal(screen[y : y + side, x : x + side], big)]


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not found (apt-get install chromium)")
def test_page_renders_offline_with_the_grid(tmp_path: Path, punks_dir: Path) -> None:
    fake = build_fake_run(tmp_path / "run", punks_dir, size=192)  # the grid shows 24×24 results; 192 px renders keep it quick
    page = report.write_report(fake.run_dir)
    shot = screenshot(page, tmp_path / "shot.png", tmp_path / "profile")
    assert shot.shape[:2] == (WINDOW[1], WINDOW[0])

    colours, counts = np.unique(shot.reshape(-1, 3), axis=0, return_counts=True)
    assert len(colours) > 500, "screenshot is nearly blank"
    assert counts.max() / counts.sum() < 0.8, "one colour fills the screenshot"

    places: dict[tuple[int, str, int], tuple[int, int]] = {}
    for key, art in fake.arts.items():
        found = find(shot, art, SCALE)
        assert len(found) == 1, f"sample {key} shown {len(found)} times at x{SCALE}"
        places[key] = found[0]
    # Aligned: one x per epoch (a column), one y per prompt × seed (a row), in suite order.
    xs = {e: {places[k][0] for k in places if k[0] == e} for e in fake.epochs}
    assert all(len(v) == 1 for v in xs.values()), xs
    assert [xs[e].pop() for e in fake.epochs] == sorted(places[k][0] for k in places if k[1:] == ("p01", 1))
    rows = [(pid, seed) for pid in fake.prompt_ids for seed in fake.seeds]
    ys = [{places[(e, pid, seed)][1] for e in fake.epochs} for pid, seed in rows]
    assert all(len(y) == 1 for y in ys), ys
    assert [y.pop() for y in ys] == sorted(p[1] for p in places.values() if p[0] == places[(1, "p01", 1)][0])


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not found (apt-get install chromium)")
def test_heldout_originals_sit_beside_their_captions_samples(tmp_path: Path, punks_dir: Path) -> None:
    """Each held-out original and the recommended epoch's sample of its caption, pixel-exact on one row, original first."""
    import shutil as sh

    subset = tmp_path / "punks"
    subset.mkdir()
    for png in sorted(punks_dir.glob("*.png"))[::6][:30]:  # 3 held out; 9 outputs an epoch: no classifier to train
        sh.copy(png, subset / png.name)
    fake = build_fake_run(tmp_path / "run", subset, size=192, heldout_seeds=1, validation={1: 0.31, 2: 0.25, 3: 0.29})
    page = report.write_report(fake.run_dir)
    shot = screenshot(page, tmp_path / "shot.png", tmp_path / "profile", height=3400)
    assert len(fake.heldout) == 3
    for name in fake.heldout:
        (sample,) = find(shot, fake.heldout_arts[(2, name, 1)], SCALE)  # epoch 2 is the recommended one
        original = np.asarray(Image.open(subset / name).convert("RGB"))
        beside = [p for p in find(shot, original, SCALE) if abs(p[1] - sample[1]) <= 2 and p[0] < sample[0]]  # (the sample has a 1 px frame)
        assert len(beside) == 1, f"{name}: original not on its sample's row ({find(shot, original, SCALE)} vs {sample})"
