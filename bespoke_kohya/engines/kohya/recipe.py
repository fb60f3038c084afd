"""The recipe the artist's notes document (sd15_512): its training arguments, for `reproduce` step 2."""

from __future__ import annotations

from typing import Any

from .config import train_args
from .settings import KohyaPreset

# The training arguments exactly as the user's notes document them (background notes).
DOCUMENTED_ARGS: dict[str, Any] = {
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
}


def config_differences(preset: KohyaPreset, documented: dict[str, Any] = DOCUMENTED_ARGS) -> list[str]:
    """Documented keys whose rendered value differs (or is missing), as `key: documented → rendered`."""
    rendered = {k: v for section in train_args(preset).values() for k, v in section.items()}
    diffs = []
    for key, want in documented.items():
        got = rendered.get(key, "<missing>")
        if got != want:
            diffs.append(f"{key}: {want!r} → {got!r}")
    return diffs


def method_difference(preset: KohyaPreset) -> str:
    """Why a preset of another method is not the documented recipe, as one `key: documented → rendered` line."""
    return (f"kohya.method: 'lora' (train_network.py, the documented recipe) → {preset.method!r} ({preset.script}); "
            "this preset takes another route of the notes, so the recipe's LoRA keys are not compared")
