"""Rendering: exact documented values, keys sd-scripts accepts, deterministic bytes, atomic output."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bespoke_kohya.dataset import check_dataset
from bespoke_kohya.errors import UserError
from bespoke_kohya.presets import load_preset
from bespoke_kohya.render import render

DATA = Path(__file__).parent / "data"


def test_render_real_dataset(punks_dir: Path, tmp_path: Path):
    out = tmp_path / "run with spaces"
    rendered = render(load_preset("sd15_512"), check_dataset(punks_dir), out, run_id="r1")
    train = tomllib.loads((out / "config" / "train.toml").read_text())
    data = tomllib.loads((out / "config" / "dataset.toml").read_text())
    assert train["training"]["resolution"] == "512,512"
    sub = data["datasets"][0]["subsets"][0]
    assert (sub["num_repeats"], sub["caption_extension"], sub["image_dir"]) == (10, ".txt", "data/10_bespoke_punk")
    assert data["general"]["resize_interpolation"] == "nearest" and data["general"]["enable_bucket"] is False
    images = sorted((out / "data" / "10_bespoke_punk").glob("*.png"))
    assert len(images) == 184 == len(list((out / "data" / "10_bespoke_punk").glob("*.txt")))
    assert {Image.open(p).size for p in images} == {(512, 512)}
    assert (out / "config" / "sample_prompts.txt").read_text().count("--d ") == 16
    assert rendered.run_dir == out.resolve()


def test_render_is_deterministic(small_punks: Path, tmp_path: Path):
    preset = load_preset("sd15_576")
    report = check_dataset(small_punks)

    def digest(folder: Path) -> dict[str, str]:
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}

    render(preset, report, tmp_path / "a", run_id="same")
    render(preset, report, tmp_path / "b", run_id="same")
    assert digest(tmp_path / "a") == digest(tmp_path / "b")


def test_prepared_images_downscale_back_to_the_originals(small_punks: Path, tmp_path: Path):
    render(load_preset("sd15_576"), check_dataset(small_punks), tmp_path / "r", run_id="r")
    for original in small_punks.glob("*.png"):
        big = Image.open(tmp_path / "r" / "data" / "10_bespoke_punk" / original.name)
        back = np.asarray(big.resize((24, 24), Image.NEAREST))
        assert (back == np.asarray(Image.open(original).convert("RGB"))).all()


def test_existing_output_is_never_overwritten(small_punks: Path, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists"):
        render(load_preset("sd15_576"), check_dataset(small_punks), out, run_id="x")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


# ------------------------------------------------------------------ held-out validation (issue 14)


def test_validation_is_rendered_where_sd_scripts_reads_it(punks_dir: Path, tmp_path: Path):
    """184 punks, the default split 0.1: 18 held out (round(18.4)), 166 trained (ceil(165.6)), none in both."""
    out = tmp_path / "run"
    rendered = render(load_preset("sd15_576"), check_dataset(punks_dir), out, run_id="v")
    data = tomllib.loads((out / "config" / "dataset.toml").read_text())
    train = tomllib.loads((out / "config" / "train.toml").read_text())
    dataset = data["datasets"][0]
    assert (dataset["validation_split"], dataset["validation_seed"]) == (0.1, 42) and isinstance(dataset["validation_split"], float)
    assert "validation_split" not in data["general"] and "validation_split" not in dataset["subsets"][0]
    assert train["training"]["validate_every_n_epochs"] == 1 and "max_validation_steps" not in train["training"]
    assert len(rendered.heldout) == 18 and not any("validation_split" in w for w in rendered.warnings)


def test_split_zero_renders_no_validation(small_punks: Path, tmp_path: Path):
    rendered = render(load_preset("sd15_576", ["dataset.validation_split=0"]), check_dataset(small_punks), tmp_path / "r", run_id="v")
    assert rendered.heldout == [] and not any("validation" in w for w in rendered.warnings)
    assert "validation" not in (tmp_path / "r" / "config" / "dataset.toml").read_text()
    assert "validat" not in (tmp_path / "r" / "config" / "train.toml").read_text()


def test_a_split_that_holds_out_no_image_renders_no_validation_and_says_so(small_punks: Path, tmp_path: Path):
    for png in sorted(small_punks.glob("*.png"))[4:]:
        png.unlink()
        png.with_suffix(".txt").unlink(missing_ok=True)
    rendered = render(load_preset("sd15_576"), check_dataset(small_punks), tmp_path / "r", run_id="v")
    assert rendered.heldout == []
    assert "validat" not in (tmp_path / "r" / "config" / "dataset.toml").read_text() + (tmp_path / "r" / "config" / "train.toml").read_text()
    notes = [w for w in rendered.warnings if "validation_split" in w]
    assert notes == ["dataset.validation_split=0.1 holds out no image of 4 (round(4 × 0.1) = 0): no validation loss and no held-out captions "
                     "this run; set dataset.validation_split=0.3125 to hold out 1, or 0 to turn it off"]
    # The suggestion does what it says: rendered with it, one image is held out and trained on by no one.
    again = render(load_preset("sd15_576", ["dataset.validation_split=0.3125"]), check_dataset(small_punks), tmp_path / "r2", run_id="v")
    assert len(again.heldout) == 1 and not any("validation_split" in w for w in again.warnings)


def test_a_held_out_image_that_sd_scripts_also_trains_on_is_warned(small_punks: Path, tmp_path: Path):
    """8 × 0.1: sd-scripts trains on ceil(7.2) = 8 and validates on round(0.8) = 1, so that one is in both."""
    from bespoke_kohya.dataset import split_heldout

    rendered = render(load_preset("sd15_576"), check_dataset(small_punks), tmp_path / "r", run_id="v")
    trained, heldout = split_heldout([p.name for p in (tmp_path / "r" / "data" / "10_bespoke_punk").glob("*.png")], 0.1, 42)
    assert len(trained) == 8 and heldout == rendered.heldout and len(heldout) == 1
    notes = [w for w in rendered.warnings if "validation_split" in w]
    assert notes == [f"dataset.validation_split=0.1 of 8 images trains on 8 and holds out 1, so 1 held-out image(s) ({heldout[0]}) are trained on too "
                     "(sd-scripts v0.10.1 rounds the two parts separately); dataset.validation_split=0.1562 keeps them apart"]
    fixed = render(load_preset("sd15_576", ["dataset.validation_split=0.1562"]), check_dataset(small_punks), tmp_path / "r2", run_id="v")
    assert len(fixed.heldout) == 1 and not any("validation_split" in w for w in fixed.warnings)


