"""The kohya engine's rendered files: what train.toml and dataset.toml say, checked against sd-scripts v0.10.1's own key lists."""

from __future__ import annotations

import tomllib
from pathlib import Path


from bespoke_kohya.engines.kohya.config import dataset_config, train_args
from bespoke_kohya.presets import load_preset


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


# Every rendered key against its own script's parser and dataset schema: test_methods.py
# (test_every_rendered_key_is_one_its_own_script_accepts), for every shipped preset and method.


def test_buckets_below_256_lower_min_bucket_reso():
    preset = load_preset("sdxl_24_native", ["enable_bucket=true"], experimental=True)
    general = dataset_config(preset)["general"]
    assert general["min_bucket_reso"] <= 24 and general["max_bucket_reso"] == 24


def test_cpu_rerender_of_a_run_made_before_validation_keeps_training_on_every_image(small_punks: Path, tmp_path: Path):
    """`train --resume --cpu` re-renders the config; a run from before held-out validation (run.json heldout None)
    must not be split now: its saved state and its epochs so far trained on every image."""
    import io

    from rich.console import Console

    from bespoke_kohya.engines.kohya.engine import ENGINE
    from bespoke_kohya.engines.protocol import TrainOptions
    from bespoke_kohya.engines.session import create_run

    preset = load_preset("sd15_576", ["dataset.validation_split=0.25"])
    for name, heldout in (("old", None), ("new", ["kept"])):
        run, _ = create_run(preset, [], small_punks, tmp_path / name, Console(file=io.StringIO()))
        run.record.dataset.heldout = heldout
        rewritten = ENGINE._cpu_precision(run, preset, TrainOptions())
        data = tomllib.loads((run.dir / "config" / "dataset.toml").read_text())
        train = tomllib.loads((run.dir / "config" / "train.toml").read_text())
        assert train["training"]["mixed_precision"] == "no"
        validating = heldout is not None
        assert ("validation_split" in data["datasets"][0], "validate_every_n_epochs" in train["training"]) == (validating, validating)
        assert rewritten.dataset.validation_split == (0.25 if validating else 0)
