"""The README's quick start, run as written: `make train`, then `make report RUN=<the folder train printed>`,
ends in a report with a picture for every epoch and seed (issue 16).

Real subprocesses and the real Makefile, on 8 real punks (conftest's small_punks) with a tiny pixel24 (seconds of CPU).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
EPOCHS, SEEDS = 2, [1, 2]
# Tiny settings: the fields of the current pixel24 preset (`bespoke-kohya presets --explain`).
TINY = [
    "pixel24.block_out_channels=[16,32]",
    f"pixel24.epochs={EPOCHS}",
    f"pixel24.steps={EPOCHS}",
    "pixel24.base=none",
    "pixel24.batch_size=4",
    "pixel24.sample_steps=2",
    f"sample.seeds=[{','.join(map(str, SEEDS))}]",
]
PROMPTS = 4  # the preset's fixed suite (sample.prompts)
HELDOUT_SEEDS = 2  # sample.heldout_seeds: each held-out caption (dataset.validation_split) is drawn with the first 2 seeds too
ALT = re.compile(r"^epoch (\d+), (p\d+), seed (\d+)$")


def env() -> dict[str, str]:
    # This checkout's package, whichever venv runs it; no GPU, so the test is the same everywhere.
    return {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "COLUMNS": "200"}


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "bespoke_kohya", *args])


def make(*args: str) -> subprocess.CompletedProcess[str]:
    """`make TARGET ...` with this interpreter's venv, never rebuilding it (-o: its entry point counts as made)."""
    venv = Path(sys.prefix)
    return run(["make", "--no-print-directory", f"VENV={venv}", "-o", f"{venv}/bin/bespoke-kohya", *args])


class _Samples(HTMLParser):
    """(epoch, prompt id, seed) → the 24×24 picture of every sample cell on the report page."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[tuple[int, str, int], Image.Image] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        match = ALT.match(a.get("alt") or "")
        if tag == "img" and match and (a.get("src") or "").startswith("data:image/png;base64,"):
            png = base64.b64decode(a["src"].split(",", 1)[1])  # type: ignore[union-attr]
            self.cells[(int(match[1]), match[2], int(match[3]))] = Image.open(io.BytesIO(png))


def page_samples(run_dir: Path) -> dict[tuple[int, str, int], Image.Image]:
    parser = _Samples()
    parser.feed((run_dir / "report" / "index.html").read_text(encoding="utf-8"))
    return parser.cells


def images_per_epoch(run_dir: Path) -> int:
    """The suite plus the held-out captions render set aside (1 of the 8 punks at the default split)."""
    heldout = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["dataset"]["heldout"]
    assert len(heldout) == 1
    return PROMPTS * len(SEEDS) + len(heldout) * min(HELDOUT_SEEDS, len(SEEDS))


def assert_every_epoch_and_seed_pictured(run_dir: Path) -> None:
    cells = page_samples(run_dir)
    wanted = {(e, f"p{p:02d}", s) for e in range(1, EPOCHS + 1) for p in range(1, PROMPTS + 1) for s in SEEDS}
    assert set(cells) == wanted, f"missing {sorted(wanted - set(cells))}, unexpected {sorted(set(cells) - wanted)}"
    assert all(im.size == (24, 24) for im in cells.values())
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text(encoding="utf-8"))
    assert {e: entry["images"] for e, entry in metrics["epochs"].items()} == {str(e): PROMPTS * len(SEEDS) for e in range(1, EPOCHS + 1)}
    # Two tiny epochs may be recommended, or plainly not good: then the least bad one is named.
    rec = metrics["recommendation"]
    assert rec["epoch"] in range(1, EPOCHS + 1) or (rec["epoch"] is None and rec["least_bad"] in range(1, EPOCHS + 1) and rec["reasons"][0].startswith("No epoch is good: "))


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_the_quick_start_as_written_ends_in_a_report_with_pictures(small_punks: Path, tmp_path: Path) -> None:
    if not (Path(sys.prefix) / "bin" / "bespoke-kohya").is_file():
        pytest.skip(f"no bespoke-kohya entry point in {sys.prefix} (run the tests from the venv `make setup` makes)")
    settings = " ".join(f"--set {shlex.quote(s)}" for s in TINY)
    trained = make("train", f"DATASET={small_punks}", f"ARGS=--run-dir {shlex.quote(str(tmp_path / 'run'))} {settings}")
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    # The README says: `make report RUN=<the run folder train printed>`.
    printed = re.search(r"^next: bespoke-kohya report --run (\S+)$", trained.stdout, re.M)
    assert printed, trained.stdout
    run_dir = Path(printed[1])
    assert re.search(r"^sampling epoch\(s\) 1, 2 \(training finished\)", trained.stdout, re.M), trained.stdout
    samples = json.loads((run_dir / "samples" / "samples.json").read_text(encoding="utf-8"))
    assert sorted(samples["epochs"]) == ["1", "2"]  # train drew every epoch itself

    reported = make("report", f"RUN={run_dir}")
    assert reported.returncode == 0, reported.stdout[-3000:] + reported.stderr[-3000:]
    assert "sampling" not in reported.stdout  # nothing left to draw
    assert f"report {run_dir / 'report' / 'index.html'}" in reported.stdout
    assert f"compared epochs 1, 2 × {PROMPTS * len(SEEDS)} image(s) each" in reported.stdout
    assert_every_epoch_and_seed_pictured(run_dir)


def test_report_samples_what_train_left_unsampled_and_refuses_an_empty_comparison(small_punks: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    trained = cli("train", "--preset", "pixel24", "--dataset", str(small_punks), "--run-dir", str(run_dir), "--no-sample", *(f"--set={s}" for s in TINY))
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert "sampling" not in trained.stdout and not (run_dir / "samples").exists()

    bare = cli("report", "--run", str(run_dir), "--no-sample")
    assert bare.returncode == 1, bare.stdout + bare.stderr
    assert "warning: no samples yet" in bare.stderr  # the page's warnings, on the console too
    assert "nothing to compare: no trained epoch has samples to compare yet" in bare.stderr
    assert not page_samples(run_dir)

    drawn = cli("report", "--run", str(run_dir))
    assert drawn.returncode == 0, drawn.stdout[-3000:] + drawn.stderr[-3000:]
    assert "sampling epoch(s) 1, 2 (no samples yet)" in drawn.stdout
    total = images_per_epoch(run_dir) * EPOCHS
    assert f"sampling {total}/{total}" in drawn.stdout + drawn.stderr  # its progress, held-out captions included
    assert_every_epoch_and_seed_pictured(run_dir)


def test_make_trains_defaults_draw_a_bounded_suite_for_the_10000_punk_standin(tmp_path: Path) -> None:
    """Issue 27: the stand-in holds out 1,000 images for the held-out loss; sampling draws only sample.heldout_captions
    of their captions (spread over them), so `make train`'s sampling stays a few hundred images. Counted, not drawn."""
    from bespoke_kohya.dataset import split_heldout
    from bespoke_kohya.presets import load_preset
    from bespoke_kohya.runfolder.records import RunHandle
    from bespoke_kohya.sample import sampling_plan

    from tests.helpers.runs import write_record

    preset = load_preset("pixel24")  # what `make train` trains (its stand-in demo keeps the suite and the split)
    names = [f"punk-{i:05d}.png" for i in range(10_000)]
    _, heldout = split_heldout(names, preset.dataset.validation_split, preset.dataset.validation_seed)
    assert len(heldout) == 1000
    run = tmp_path / "standin run"
    epochs = {str(e): f"checkpoints/pixel24-{e:06d}.safetensors" for e in range(1, preset.pixel24.epochs + 1)}
    write_record(run, preset, tmp_path / "standin", epochs, heldout=heldout)
    folder = run / "data" / f"{preset.dataset.num_repeats}_{preset.dataset.concept}"
    folder.mkdir(parents=True)
    for name in heldout:
        (folder / Path(name).with_suffix(".txt").name).write_text(f"pixel art, 24x24, portrait of bespoke punk, {name}", encoding="utf-8")
    plan = sampling_plan(RunHandle.open(run))
    per_epoch = len(preset.sample.prompts) * len(preset.sample.seeds) + preset.sample.heldout_captions * preset.sample.heldout_seeds
    assert len(plan.heldout) == preset.sample.heldout_captions == 20
    assert plan.images == preset.pixel24.epochs * per_epoch == 5 * (16 + 40)  # was 5 × (16 + 2,000) = 10,080
    chosen = [h.file for h in plan.heldout]
    assert chosen[0] == heldout[0] and chosen[-1] == heldout[-1] and len(set(chosen)) == 20  # spread over the set
    assert [h.file for h in sampling_plan(RunHandle.open(run)).heldout] == chosen  # the same ones every time
