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
from bespoke_kohya.presets import available_presets, load_preset
from bespoke_kohya.render import create_run_dir, dataset_config, render, train_args

DATA = Path(__file__).parent / "data"


def _flat(sections: dict) -> dict:
    return {k: v for section in sections.values() for k, v in section.items()}


def test_sd15_512_renders_the_documented_values():
    args = _flat(train_args(load_preset("sd15_512")))
    documented = {
        "pretrained_model_name_or_path": "runwayml/stable-diffusion-v1-5",
        "resolution": "512,512",
        "network_dim": 32,
        "network_alpha": 16.0,
        "max_train_epochs": 3,
        "learning_rate": 1e-4,
        "unet_lr": 1e-4,
        "text_encoder_lr": 5e-5,
        "lr_scheduler": "cosine_with_restarts",
        "lr_scheduler_num_cycles": 3,
        "optimizer_type": "AdamW",
        "mixed_precision": "fp16",
        "noise_offset": 0.1,
        "min_snr_gamma": 5.0,
        "save_every_n_epochs": 1,
    }
    assert {k: args[k] for k in documented} == documented
    assert isinstance(args["network_alpha"], float) and isinstance(args["resolution"], str)


def _names(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")}


@pytest.mark.parametrize("name", [n for n in available_presets() if n != "pixel24"])
def test_every_rendered_key_is_one_sd_scripts_accepts(name: str, tmp_path: Path):
    ckpt = tmp_path / "base.safetensors"
    ckpt.write_bytes(b"x")
    preset = load_preset(name, [f"pretrained_model_name_or_path={ckpt}"] if name == "pixnite_sd15" else [], experimental=True)
    accepted = _names(DATA / ("sd_scripts_v0.10.1_sdxl_args.txt" if preset.family == "sdxl" else "sd_scripts_v0.10.1_args.txt"))
    unknown = set(_flat(train_args(preset))) - accepted
    assert not unknown, f"keys sd-scripts v0.10.1 would silently ignore: {unknown}"
    keys = _names(DATA / "sd_scripts_v0.10.1_dataset_keys.txt")
    cfg = dataset_config(preset)
    used = {f"general.{k}" for k in cfg["general"]}
    used |= {f"datasets.{k}" for k in cfg["datasets"][0] if k != "subsets"}
    used |= {f"datasets.subsets.{k}" for k in cfg["datasets"][0]["subsets"][0]}
    assert not used - keys, f"dataset keys sd-scripts v0.10.1 rejects: {used - keys}"


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


def test_failure_leaves_nothing(tmp_path: Path):
    def boom(tmp: Path):
        (tmp / "half").write_text("written")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        create_run_dir(tmp_path / "run", boom)
    assert list(tmp_path.iterdir()) == []


def test_buckets_below_256_lower_min_bucket_reso():
    preset = load_preset("sdxl_24_native", ["enable_bucket=true"], experimental=True)
    general = dataset_config(preset)["general"]
    assert general["min_bucket_reso"] <= 24 and general["max_bucket_reso"] == 24


def test_losing_a_race_for_the_same_out_is_one_line(tmp_path: Path):
    """Issue 12 (tracebacks): two `render --out SAME` at once left the loser with a raw OSError."""
    target = tmp_path / "run"

    def other_render_wins(tmp: Path):
        (tmp / "mine").write_text("loser's files")
        target.mkdir()  # the other process finishes first, while this one is still building
        (target / "theirs").write_text("winner's files")

    with pytest.raises(UserError) as e:
        create_run_dir(target, other_render_wins)
    assert str(e.value).startswith(f"{target}: already exists (another render created it)")
    assert [p.name for p in tmp_path.iterdir()] == ["run"] and [p.name for p in target.iterdir()] == ["theirs"]


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


def test_cpu_rerender_of_a_run_made_before_validation_keeps_training_on_every_image(small_punks: Path, tmp_path: Path):
    """`train --resume --cpu` re-renders the config; a run from before held-out validation (run.json heldout None)
    must not be split now: its saved state and its epochs so far trained on every image."""
    import io

    from rich.console import Console

    from bespoke_kohya.engines.kohya import ENGINE
    from bespoke_kohya.engines.session import create_run

    preset = load_preset("sd15_576", ["dataset.validation_split=0.25"])
    for name, heldout in (("old", None), ("new", ["kept"])):
        run, _ = create_run(preset, [], small_punks, tmp_path / name, Console(file=io.StringIO()))
        run.record.dataset.heldout = heldout
        rewritten = ENGINE._cpu_precision(run, preset)
        data = tomllib.loads((run.dir / "config" / "dataset.toml").read_text())
        train = tomllib.loads((run.dir / "config" / "train.toml").read_text())
        assert train["training"]["mixed_precision"] == "no"
        validating = heldout is not None
        assert ("validation_split" in data["datasets"][0], "validate_every_n_epochs" in train["training"]) == (validating, validating)
        assert rewritten.dataset.validation_split == (0.25 if validating else 0)
