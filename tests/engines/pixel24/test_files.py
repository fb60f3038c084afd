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
