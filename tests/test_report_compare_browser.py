"""`report --compare` on two real pixel24 runs, opened from disk in headless Chromium with the network off.

Two tiny pixel24 runs are trained (and sampled) through the real CLI on 8 real punks with
different settings; `report --compare A:2 B:2` must give a page whose screenshot shows every
sample of both runs pixel-exact (each art pixel a ×SCALE block) where the grid puts it:
one column per run, one row per prompt × seed, in suite order. The settings that differ are
listed with each run's value. Needs Debian's `chromium` (skipped otherwise).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bespoke_kohya.images import load_rgb
from bespoke_kohya.report.page import SCALE
from bespoke_kohya.runfolder.records import read_samples

from tests.test_report_browser import CHROMIUM, WINDOW, find, screenshot
from tests.test_report_compare import settings_rows

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SEEDS = [1, 2]
TINY = ["pixel24.block_out_channels=[16,32]", "pixel24.epochs=2", "pixel24.base=none", "pixel24.batch_size=4",
        "pixel24.sample_steps=2", f"sample.seeds=[{','.join(map(str, SEEDS))}]"]
# What B changes: one training and one sampling setting.
B_ONLY = ["pixel24.steps=4", "pixel24.temperature=0.9"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """This checkout's CLI in a subprocess (at pytest's own priority), no GPU."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "bespoke_kohya", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def art_of(run: Path, epoch: int) -> dict[tuple[str, int], np.ndarray]:
    """(prompt text, seed) → the 24×24 PNG the sampler wrote for ``epoch``: the suite's, not the held-out captions' (the compare grid leaves those out)."""
    samples = read_samples(run)
    assert samples is not None
    return {(img.prompt, img.seed): load_rgb(run / img.art) for img in samples.epochs[str(epoch)].images if img.art and img.heldout is None}


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not found (apt-get install chromium)")
def test_compare_page_of_two_pixel24_runs_is_pixel_exact_and_lists_what_differs(small_punks: Path, tmp_path: Path) -> None:
    runs = {"A": tmp_path / "pixel24-A", "B": tmp_path / "pixel24-B"}
    cli("train", "--preset", "pixel24", "--dataset", str(small_punks), "--run-dir", str(runs["A"]), *(f"--set={s}" for s in TINY + ["pixel24.steps=2"]))
    cli("train", "--preset", "pixel24", "--dataset", str(small_punks), "--run-dir", str(runs["B"]), *(f"--set={s}" for s in TINY + B_ONLY))
    out = tmp_path / "compare"
    printed = cli("report", "--compare", f"{runs['A']}:2", f"{runs['B']}:2", "--out", str(out)).stdout
    assert f"comparison {out / 'index.html'}" in printed

    page = (out / "index.html").read_text(encoding="utf-8")
    rows = settings_rows(page)
    assert rows["pixel24.steps"] == ["2", "4"] and rows["pixel24.temperature"] == ["0.5", "0.9"]
    assert set(rows) == {"overrides", "pixel24.steps", "pixel24.temperature"}  # nothing else differs
    assert 'id="dataset-warning"' not in page  # the same 8 punks

    shot = screenshot(out / "index.html", tmp_path / "shot.png", tmp_path / "profile")
    arts = [art_of(runs["A"], 2), art_of(runs["B"], 2)]
    pairs = list(arts[0])
    assert len(pairs) == 4 * len(SEEDS) and set(pairs) == set(arts[1])
    found = {(col, pair): set(find(shot, arts[col][pair], SCALE)) for col in (0, 1) for pair in pairs}
    missing = [key for key, places in found.items() if not places]
    assert not missing, f"not shown pixel-exact at x{SCALE}: {missing}"
    # One x per run column; the rows are the distinct heights where a column shows a sample. A tiny model may
    # draw the same picture for several prompts, which then is found on several rows: each must still be on its own.
    xs = [set.intersection(*({x for x, _ in found[col, pair]} for pair in pairs)) for col in (0, 1)]
    assert all(len(x) == 1 for x in xs), xs
    x_of = [x.pop() for x in xs]
    assert x_of[0] < x_of[1], "columns in the order given"
    row_y = sorted({y for (col, _), places in found.items() for x, y in places if x == x_of[col]})
    assert len(row_y) == len(pairs), row_y
    for i, pair in enumerate(pairs):  # rows in suite order, each cell in its run's column
        assert all((x_of[col], row_y[i]) in found[col, pair] for col in (0, 1)), (pair, row_y[i])
    assert row_y[-1] + 24 * SCALE <= WINDOW[1]
