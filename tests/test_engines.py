"""The engine protocol from the outside: a toy engine defined only in the tests is registered and driven
through the CLI (train, sample, report), with no edit anywhere in the package (issue 22)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bespoke_kohya.cli import main
from bespoke_kohya.engines import REGISTRY, get_engine
from bespoke_kohya.runfolder import run_document, samples_document

TOY_PRESET = """\
name = "toy"
description = "flat-colour punks painted from the training images' colours (tests only)"
engine = "toy"

[dataset]
num_repeats = 1
validation_split = 0.25

[sample]
prompts = ["lad, green background", "lady, purple background"]
seeds = [1, 2, 3]
postprocess = "nearest"
merge = "off"

[toy]
epochs = 2
"""


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The toy engine registered by name (one registry line, as a new engine adds), and its preset file."""
    monkeypatch.setitem(REGISTRY, "toy", "tests.helpers.toy_engine")
    preset = tmp_path / "toy.toml"
    preset.write_text(TOY_PRESET, encoding="utf-8")
    return preset


def test_the_toy_engine_is_found_by_its_name(toy: Path) -> None:
    engine = get_engine("toy")
    assert engine.name == "toy" and not engine.samples_base and engine.base_model(None) is None


def test_a_toy_engine_trains_samples_and_reports_through_the_cli(toy: Path, small_punks: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "toy run"
    assert main(["train", "--preset", str(toy), "--dataset", str(small_punks), "--run-dir", str(run)]) == 0
    record = run_document(run)
    assert record["engine"] == "toy" and record["status"] == "finished" and sorted(record["epochs"]) == ["1", "2"]
    assert record["resolved"]["toy"] == {"epochs": 2, "colours": 6} and len(record["dataset"]["heldout"]) == 2
    assert sorted(p.name for p in (run / "config").iterdir()) == ["preset.json"]  # the toy engine writes no files of its own

    drawn = samples_document(run)
    assert sorted(drawn["epochs"]) == ["1", "2"]
    suite = [img for img in drawn["epochs"]["2"]["images"] if not img.get("heldout")]
    heldout = [img for img in drawn["epochs"]["2"]["images"] if img.get("heldout")]
    assert len(suite) == 2 * 3 and len(heldout) == 2 * 2  # every prompt × seed, and each held-out caption with the first 2 seeds
    art = np.asarray(Image.open(run / suite[0]["art"]))
    assert art.shape == (24, 24, 3) and len(np.unique(art.reshape(-1, 3), axis=0)) <= 3  # the toy's flat colours, post-processed

    assert main(["sample", "--run", str(run), "--prompt", "lad, red background", "--seeds", "7"]) == 0
    assert list(samples_document(run)["adhoc"]) == ["1", "2"]

    capsys.readouterr()
    assert main(["report", "--run", str(run)]) == 0
    out = capsys.readouterr().out
    assert "compared epochs 1, 2" in out
    metrics = json.loads((run / "report" / "metrics.json").read_text(encoding="utf-8"))
    assert set(metrics["epochs"]) == {"1", "2"}
    assert (run / "report" / "index.html").is_file()


def test_the_toy_engine_renders_and_explains_its_table(toy: Path, small_punks: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "--preset", str(toy), "--dataset", str(small_punks), "--out", str(tmp_path / "r")]) == 0
    assert main(["presets", "--explain"]) == 0
    assert "toy.epochs" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text(TOY_PRESET.replace("epochs = 2", "epoch = 2"), encoding="utf-8")
    assert main(["render", "--preset", str(bad), "--dataset", str(small_punks), "--out", str(tmp_path / "r2")]) == 2
    assert "toy.epoch: unknown key (did you mean 'epochs'?)" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()
