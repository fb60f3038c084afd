"""`bespoke-kohya smoke` (smoke.run_smoke): image choice, failure reporting, and the whole run on sd-scripts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bespoke_kohya.engines.kohya import smoke
from bespoke_kohya.dataset import check_dataset
from bespoke_kohya.errors import UserError
from bespoke_kohya.engines.kohya.smoke import choose_images, run_smoke, synthetic_punks
from bespoke_kohya.engines.kohya.vendor import find_sd_scripts

REPO = Path(__file__).resolve().parents[3]


def test_real_punks_are_spread_over_the_set_with_captions(punks_dir: Path, tmp_path: Path):
    source = choose_images(punks_dir, tmp_path / "images")
    pngs = sorted((tmp_path / "images").glob("*.png"))
    assert len(pngs) == 8 and source == f"8 from {punks_dir}"
    everything = sorted(p.name for p in punks_dir.glob("*.png"))
    picked = [everything.index(p.name) for p in pngs]
    assert picked[-1] - picked[0] >= len(everything) // 2  # not 8 neighbours of one series
    for png in pngs:
        assert png.read_bytes() == (punks_dir / png.name).read_bytes()
        if (punks_dir / png.with_suffix(".txt").name).exists():
            assert png.with_suffix(".txt").read_text() == (punks_dir / png.with_suffix(".txt").name).read_text()


def test_synthetic_punks_pass_the_dataset_intake(tmp_path: Path):
    folder = synthetic_punks(tmp_path / "synthetic")
    report = check_dataset(folder, ".txt")
    assert len(report.images) == 8
    arrays = [np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))]
    assert all(a.shape == (24, 24, 3) for a in arrays)
    assert len({a.tobytes() for a in arrays}) == 8  # eight different portraits
    for a in arrays:
        colours = len(np.unique(a.reshape(-1, 3), axis=0))
        assert 6 <= colours <= 12  # flat pixel art, not noise
        assert (a[0] == a[0, 0]).all()  # solid background along the top edge
    captions = [p.read_text() for p in sorted(folder.glob("*.txt"))]
    assert all(c.startswith("pixel art, 24x24, portrait of bespoke punk ") for c in captions)


def test_without_any_dataset_the_punks_are_drawn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(smoke, "REPO_DATASET", tmp_path / "no dataset here")
    monkeypatch.setenv("BESPOKE_DATASET", str(tmp_path / "nor here"))
    assert "synthetic" in choose_images(None, tmp_path / "images")
    assert len(list((tmp_path / "images").glob("synthetic_*.png"))) == 8


def test_a_missing_dataset_folder_is_refused(tmp_path: Path):
    with pytest.raises(UserError, match=r"--dataset .*nope: no such folder"):
        choose_images(tmp_path / "nope", tmp_path / "images")


def test_a_failing_stage_stops_the_rest_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A wrong SD_SCRIPTS_DIR fails the first stage; nothing is built or trained, the folder is kept."""
    monkeypatch.setenv("SD_SCRIPTS_DIR", str(tmp_path / "not sd-scripts"))
    monkeypatch.setenv("BESPOKE_CACHE", str(tmp_path / "cache"))
    rows = run_smoke(work_dir=tmp_path / "work")
    assert rows[0][0] == "sd-scripts found" and rows[0][1] is False
    assert "SD_SCRIPTS_DIR=" in rows[0][2] and "no such folder" in rows[0][2]
    names = [name for name, _, _ in rows]
    assert names[1:8] == ["random SD1.5 base", "tokenizer cache", "8 training images", "train 2 epochs (sd-scripts, CPU)",
                          "epoch checkpoints", "loss series", "LoRA sampling"]
    assert all(not ok and detail == smoke.SKIPPED for _, ok, detail in rows[1:8])
    assert len(rows) == 8  # nothing was written, so no "work folder kept" row
    assert not (tmp_path / "cache").exists()  # no 4 GB base built after the failure


def test_an_existing_run_folder_is_not_overwritten(tmp_path: Path):
    (tmp_path / "run").mkdir()
    with pytest.raises(UserError, match="exists"):
        run_smoke(work_dir=tmp_path)


@pytest.mark.sd_scripts
@pytest.mark.slow
@pytest.mark.skipif(find_sd_scripts(REPO) is None, reason="kohya sd-scripts is not installed: run `make vendor`")
def test_the_whole_smoke_run_passes_and_cleans_up(punks_dir: Path, tmp_path: Path):
    work = tmp_path / "smoke work"
    rows = run_smoke(work_dir=work, dataset=punks_dir)
    failed = [row for row in rows if not row[1]]
    assert not failed, failed
    details = dict((name, detail) for name, _, detail in rows)
    assert len(rows) == 8  # no "work folder" row: nothing kept
    assert details["8 training images"] == f"8 from {punks_dir}"
    assert details["loss series"].startswith("4 steps over epochs [1, 2]") and "; held-out loss " in details["loss series"]
    change = [float(x.split()[-1]) for x in details["LoRA sampling"].split(": ")[1].split(", ")]
    assert len(change) == 2 and min(change) > 0
    assert not (work / "run").exists() and not (work / "images").exists()
