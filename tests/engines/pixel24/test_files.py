"""pixel24's own files read back (engines/pixel24/files.py, issue 26) and drawing a few seeds at a time."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bespoke_kohya.engines.pixel24 import api as pixel24
from bespoke_kohya.engines.pixel24 import files
from bespoke_kohya.engines.pixel24.model import read_config, unet_config
from bespoke_kohya.engines.pixel24.settings import Pixel24Settings
from bespoke_kohya.errors import UserError
from bespoke_kohya.presets import validate_preset
from tests.helpers.punks import copy_punks

TINY = {"block_out_channels": [16, 32], "layers_per_block": 1, "text_dim": 16, "colour_dim": 8, "feature_dim": 16, "palette_size": 32,
        "batch_size": 8, "warmup_steps": 2, "base": "none", "steps": 4, "epochs": 2, "sample_steps": 2, "refine_rounds": 1}


@pytest.fixture(scope="module")
def trained(punks_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = copy_punks(punks_dir, tmp_path_factory.mktemp("data") / "punks", every=13, count=12)
    preset = validate_preset({"name": "tiny", "description": "test", "engine": "pixel24", "pixel24": TINY}, "test preset")
    run = tmp_path_factory.mktemp("run")
    pixel24.train(preset, data, run, device="cpu")
    return run


def test_the_config_written_by_training_is_exactly_what_its_settings_build(trained: Path) -> None:
    config = read_config(trained / "checkpoints" / "pixel24.json")
    assert config["unet"] == unet_config(Pixel24Settings.model_validate(config["settings"]))


def test_a_config_without_settings_is_checked_from_its_architecture(trained: Path, tmp_path: Path) -> None:
    config = json.loads((trained / "checkpoints" / "pixel24.json").read_text(encoding="utf-8"))
    del config["settings"]
    files.check_config(tmp_path / "pixel24.json", config, unet_config)  # the architecture alone is checked against the same limits
    config["unet"]["layers_per_block"] = 9
    with pytest.raises(UserError, match=r"pixel24\.json: unet\.layers_per_block: Input should be less than or equal to 4"):
        files.check_config(tmp_path / "pixel24.json", config, unet_config)


def test_a_repeated_vocabulary_word_is_refused(trained: Path, tmp_path: Path) -> None:
    config = json.loads((trained / "checkpoints" / "pixel24.json").read_text(encoding="utf-8"))
    config["vocab"].append(config["vocab"][-1])
    with pytest.raises(UserError, match=r"vocab: .* is listed twice"):
        files.check_config(tmp_path / "pixel24.json", config, unet_config)


def test_a_full_disk_from_safetensors_is_an_oserror_enospc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 26 item 13: safetensors reports a full disk as its own SafetensorError, which the CLI did not recognise."""
    import errno

    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OSError) as err:
        files.save_tensors({}, tmp_path / "x.safetensors")
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "x.safetensors")


def test_drawing_a_few_seeds_at_a_time_gives_the_same_pixels(trained: Path) -> None:
    """Issue 26 item 6: the sampler draws in chunks so progress moves per image; the images must not change for it
    (each image has its own generator, and every model batch is padded to the same size)."""
    from bespoke_kohya.engines.pixel24.engine import seed_chunks

    model = pixel24.load_checkpoint(trained / "checkpoints" / "pixel24-000002.safetensors", device="cpu")
    prompts, seeds = ["lad, green background", "lady, blonde hair"], [3, 1, 4, 1_000_000, 5]
    options = {"steps": 2, "guidance_scale": 2.0, "temperature": 0.5, "refine_rounds": 1}
    whole = pixel24.sample(model, prompts, seeds, **options)
    chunks = seed_chunks(len(prompts), seeds, chunk=4)
    assert chunks == [[3, 1], [4, 1_000_000], [5]]
    parts = [pixel24.sample(model, prompts, chunk, **options) for chunk in chunks]
    for p in range(len(prompts)):
        assert all(np.array_equal(a, b) for a, b in zip(whole[p], [img for part in parts for img in part[p]], strict=True))


# ------------------------------------------------------------------ version 3's parts in pixel24.json

V3 = {"block_out_channels": [16, 32], "text_dim": 16, "colour_dim": 8, "feature_dim": 16, "palette_size": 8,
      "attention_levels": 2, "background_head": True, "recolour_background": 0.5, "refine_components": 8, "sample_batch": 4}


def v3_config() -> dict:
    palette = np.random.default_rng(0).integers(0, 256, (8, 3)).astype(np.uint8)
    return json.loads(json.dumps(pixel24.model_config(Pixel24Settings(**V3), ["<reserved>", "lady", "lad"], palette)))  # as read from disk


def test_a_version_3_config_passes_the_checks() -> None:
    config = v3_config()
    assert config["version"] == 3 and config["background"] == {"head": True}
    assert files.check_config(Path("pixel24.json"), config, unet_config) is config


@pytest.mark.parametrize("change, message", [
    (lambda c: c["settings"].update(attention_levels=9), r"settings\.attention_levels: Input should be less than or equal to 4"),
    (lambda c: c["settings"].update(attention_levels=1), r"unet\.down_block_types: .* is not what these widths build"),
    (lambda c: c["settings"].update(sample_batch=0), r"settings\.sample_batch: Input should be greater than or equal to 1"),
    (lambda c: c["settings"].update(refine_rare_colours=65), r"settings\.refine_rare_colours: Input should be less than or equal to 64"),
    (lambda c: c["settings"].update(recolour_background="lots"), r"settings\.recolour_background: Input should be a valid number"),
    (lambda c: c["settings"].update(background_loss_weight=11), r"settings\.background_loss_weight: Input should be less than or equal to 10"),
    (lambda c: c["settings"].update(background_temperature=0), r"settings\.background_temperature: Input should be greater than 0"),
    (lambda c: c.update(background={"head": False}), r"background\.head: Input should be True"),
    (lambda c: c.update(background={"head": True, "layers": 9}), r"background\.layers: Extra inputs are not permitted"),
    (lambda c: c.pop("background"), r"background: the file has no background head but settings\.background_head is True"),
    (lambda c: c.update(version=2), r"settings\.attention_levels: 2 is a version-3 setting in a version-2 pixel24\.json"),
    (lambda c: c.update(version="3"), r"version: Input should be 2 or 3"),
    (lambda c: c["unet"].update(block_out_channels=[1024, 512]), r"unet\.block_out_channels: .* million parameters"),  # with 2 attention levels and a head
])
def test_tampered_version_3_parts_are_one_line(change, message: str) -> None:
    config = v3_config()
    change(config)
    with pytest.raises(UserError, match=message) as err:
        files.check_config(Path("pixel24.json"), config, unet_config)
    assert "\n" not in str(err.value) and str(err.value).startswith("pixel24.json: ")


def test_the_parameter_cap_counts_attention_levels_and_the_background_head() -> None:
    from bespoke_kohya.engines.pixel24.settings import background_head_parameters

    wide = {"block_out_channels": [1024, 512], "layers_per_block": 1}
    Pixel24Settings(**wide)  # about 193 million parameters: under the cap
    for more in ({"attention_levels": 2}, {"background_head": True}):  # about 206 and 210 million
        with pytest.raises(ValueError, match="million parameters"):
            Pixel24Settings(**wide, **more)
    assert background_head_parameters([16, 32], 8, 16) == 64 * 64 + 64 + 64 * 16 + 16 + 8 * 64 + 64
