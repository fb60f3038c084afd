"""Render a kohya preset into what sd-scripts reads: config/train.toml, config/dataset.toml, config/sample_prompts.txt.

The builders are pure (preset in, dict out) so tests can assert exact values.
Paths inside the TOML files are relative to the run directory, and sd-scripts is
launched with the run directory as its working directory: a run can be moved or
copied to another machine and still train.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomli_w

from ...atomic import write_atomic
from ...render import validating
from ...runfolder import CHECKPOINTS, CONFIG, DATA, TENSORBOARD, training_folder_name
from .settings import KohyaPreset


def train_args(preset: KohyaPreset, run_id: str = "", validate: bool | None = None) -> dict[str, dict[str, Any]]:
    """sd-scripts `--config_file` contents, grouped in sections (sd-scripts flattens them).

    Types matter: sd-scripts never converts config-file values, so resolution is
    the string "R,R" and network_alpha a float. ``validate``: whether the run holds
    images out (see :func:`validating`); None: whenever dataset.validation_split > 0.
    """
    k = preset.settings
    model: dict[str, Any] = {"pretrained_model_name_or_path": k.pretrained_model_name_or_path}
    network: dict[str, Any] = {"network_module": k.network_module, "network_dim": k.network_dim, "network_alpha": float(k.network_alpha)}
    optimizer: dict[str, Any] = {"optimizer_type": k.optimizer_type, "learning_rate": k.learning_rate}
    if k.unet_lr is not None:
        optimizer["unet_lr"] = k.unet_lr
    if k.text_encoder_lr == 0:
        network["network_train_unet_only"] = True
    elif k.text_encoder_lr is not None:
        optimizer["text_encoder_lr"] = k.text_encoder_lr
    optimizer["lr_scheduler"] = k.lr_scheduler
    if k.lr_scheduler == "cosine_with_restarts":
        optimizer["lr_scheduler_num_cycles"] = k.lr_scheduler_num_cycles
    if k.lr_warmup_steps:
        optimizer["lr_warmup_steps"] = k.lr_warmup_steps
    training: dict[str, Any] = {
        "resolution": f"{k.resolution},{k.resolution}",
        "max_train_epochs": k.max_train_epochs,
        "train_batch_size": k.train_batch_size,
        "mixed_precision": k.mixed_precision,
        "noise_offset": k.noise_offset,
        "seed": k.seed,
        "max_data_loader_n_workers": k.max_data_loader_n_workers,
    }
    if k.min_snr_gamma is not None:
        training["min_snr_gamma"] = k.min_snr_gamma
    if k.clip_skip is not None:
        training["clip_skip"] = k.clip_skip
    for flag in ("gradient_checkpointing", "cache_latents", "sdpa"):
        if getattr(k, flag):
            training[flag] = True
    if _validate(preset, validate):
        # sd-scripts v0.10.1 already validates every epoch when a validation set exists; said
        # explicitly so the config shows it. No max_validation_steps: the held-out images are
        # seen once each (validation ignores num_repeats), a few batches × 4 timesteps an epoch.
        training["validate_every_n_epochs"] = 1
    saving: dict[str, Any] = {
        "output_dir": CHECKPOINTS,
        "output_name": k.output_name,
        "save_model_as": "safetensors",
        "save_every_n_epochs": k.save_every_n_epochs,
        "save_precision": k.save_precision,
    }
    if k.save_state:
        saving["save_state"] = True
    # console_log_simple: one plain line per log message instead of rich's wrapped boxes, so it parses.
    logging: dict[str, Any] = {"logging_dir": TENSORBOARD, "log_prefix": preset.name + "-", "console_log_simple": True}
    if run_id:
        logging["training_comment"] = f"bespoke-kohya run {run_id} preset {preset.name}"
    return {"model": model, "network": network, "optimizer": optimizer, "training": training, "saving": saving, "logging": logging}


def dataset_config(preset: KohyaPreset, validate: bool | None = None) -> dict[str, Any]:
    """sd-scripts `--dataset_config` contents: one DreamBooth subset with repeats and .txt captions.

    With ``validate`` (None: whenever dataset.validation_split > 0) the dataset carries
    validation_split and validation_seed, which sd-scripts v0.10.1 reads per dataset
    (config_util's DATASET_ASCENDABLE_SCHEMA) and splits off with `split_train_val`.
    """
    k = preset.settings
    d = preset.dataset
    general: dict[str, Any] = {
        "resolution": k.resolution,
        "caption_extension": d.caption_extension,  # sd-scripts defaults to .caption
        "shuffle_caption": False,
        "keep_tokens": 0,
        "flip_aug": k.flip_aug,
        "color_aug": False,
        "random_crop": False,
        "enable_bucket": k.enable_bucket,
        "resize_interpolation": "nearest",  # sd-scripts resizes with lanczos otherwise
    }
    if k.enable_bucket and k.resolution < 256:
        # Default min_bucket_reso is 256; sd-scripts asserts it is <= resolution.
        general["min_bucket_reso"] = k.resolution - k.resolution % 8 or 8
        general["max_bucket_reso"] = k.resolution
    subset = {
        "image_dir": f"{DATA}/{training_folder_name(d.num_repeats, d.concept)}",
        "num_repeats": d.num_repeats,
        "class_tokens": d.concept.replace("_", " "),
        "caption_extension": d.caption_extension,
    }
    dataset: dict[str, Any] = {"batch_size": k.train_batch_size}
    if _validate(preset, validate):
        dataset.update(validation_split=float(d.validation_split), validation_seed=d.validation_seed)  # the schema wants a float
    return {"general": general, "datasets": [{**dataset, "subsets": [subset]}]}


def _validate(preset: KohyaPreset, validate: bool | None) -> bool:
    return preset.dataset.validation_split > 0 if validate is None else validate


def sample_prompts(preset: KohyaPreset) -> str:
    """sd-scripts' prompt-file format (one prompt a line with --n/--w/--h/--l/--s/--d options), for reference and for sd-scripts' own sampler."""
    s = preset.sample
    width, height = preset.sample_size
    lines = [f"# {preset.name}: the fixed prompt suite; bespoke-kohya samples these for every epoch with seeds {s.seeds}"]
    for prompt in s.full_prompts():
        for seed in s.seeds:
            lines.append(f"{prompt} --n {s.negative_prompt} --w {width} --h {height} --l {s.guidance_scale} --s {s.steps} --d {seed}")
    return "\n".join(lines) + "\n"


def advice(preset: KohyaPreset) -> list[str]:
    """Warnings about a valid preset that sd-scripts would not give until it is too late."""
    notes = []
    k = preset.settings
    if preset.family == "sdxl" and k.clip_skip is not None:
        notes.append("clip_skip is set for an SDXL preset: sd-scripts v0.10.1 only warns 'clip_skip will be unexpected' for SDXL (library/sdxl_train_util.py); kept as configured")
    if k.resolution < 64:
        notes.append(f"resolution {k.resolution} px gives {k.resolution // 8}x{k.resolution // 8} latents; expect failure or garbage (this is the native-24 experiment)")
    if k.pretrained_model_name_or_path == "runwayml/stable-diffusion-v1-5":
        notes.append("runwayml/stable-diffusion-v1-5 (as documented) was removed from the Hugging Face hub in 2024; unless it is in your cache, use the same weights with --set pretrained_model_name_or_path=stable-diffusion-v1-5/stable-diffusion-v1-5")
    if k.optimizer_type == "AdamW8bit":
        notes.append("AdamW8bit needs bitsandbytes and a CUDA GPU")
    return notes


def _header(preset_name: str) -> str:
    return f"# Rendered by bespoke-kohya from preset {preset_name}; paths are relative to the run directory.\n"


def _write(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_config(run_dir: Path, preset: KohyaPreset, run_id: str) -> list[str]:
    """sd-scripts' own files in config/: train.toml, dataset.toml and sample_prompts.txt; returns the preset's warnings.

    Validation is rendered only when the split holds out an image of the prepared folder:
    a validation set of none is no measurement (render warns once, see render.split_notes).
    Rewritten whole (atomically) when an existing run changes device or base.
    """
    validate = validating(run_dir, preset)
    config = Path(run_dir) / CONFIG
    _write(config / "train.toml", _header(preset.name) + tomli_w.dumps(train_args(preset, run_id, validate)))
    _write(config / "dataset.toml", _header(preset.name) + tomli_w.dumps(dataset_config(preset, validate)))
    _write(config / "sample_prompts.txt", sample_prompts(preset))
    return advice(preset)
