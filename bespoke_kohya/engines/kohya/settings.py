"""The kohya engine's preset: its `[kohya]` table (sd-scripts' own argument names) and the base-model family."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from ...paths import ART
from ...settings import MAX_SEED, Preset, _Strict


class KohyaSettings(_Strict):
    """Arguments passed to sd-scripts' `train_network.py` / `sdxl_train_network.py` (names are sd-scripts' own)."""

    pretrained_model_name_or_path: str = Field(
        "runwayml/stable-diffusion-v1-5",
        description="Base model: a hub id, a local diffusers folder, or a single-file `.safetensors`/`.ckpt` checkpoint.",
    )
    resolution: int = Field(512, ge=16, le=2048, description="Training resolution in px (square); rendered as the string `\"R,R\"` sd-scripts expects. The 24×24 originals are upscaled with NEAREST to this size.")
    network_module: Literal["networks.lora"] = Field("networks.lora", description="sd-scripts network module; LoRA.")
    network_dim: int = Field(32, ge=1, le=1024, description="LoRA rank.")
    network_alpha: float = Field(16.0, gt=0, le=1024, description="LoRA alpha (scale = alpha/dim). Rendered as a float: an integer would be stored as an int64 tensor in the LoRA file.")
    max_train_epochs: int = Field(3, ge=1, le=1000, description="Epochs to train.")
    learning_rate: float = Field(1e-4, gt=0, le=1, description="Base learning rate.")
    unet_lr: float | None = Field(1e-4, gt=0, le=1, description="U-Net learning rate (defaults to learning_rate when unset).")
    text_encoder_lr: float | None = Field(5e-5, ge=0, le=1, description="Text-encoder learning rate; 0 trains the U-Net only.")
    lr_scheduler: Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "adafactor"] = Field(
        "cosine_with_restarts", description="Learning-rate schedule."
    )
    lr_scheduler_num_cycles: int = Field(3, ge=1, le=100, description="Restarts for cosine_with_restarts.")
    lr_warmup_steps: int = Field(0, ge=0, description="Warm-up steps.")
    optimizer_type: Literal["AdamW", "AdamW8bit", "Lion", "SGDNesterov", "Prodigy", "Adafactor"] = Field("AdamW", description="Optimizer (AdamW8bit needs bitsandbytes and a CUDA GPU).")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field("fp16", description="Mixed precision; use `no` on a CPU.")
    save_precision: Literal["float", "fp16", "bf16"] = Field("fp16", description="Precision of the saved LoRA files.")
    noise_offset: float = Field(0.1, ge=0, le=1, description="Noise offset (helps solid, dark or bright backgrounds).")
    min_snr_gamma: float | None = Field(5.0, gt=0, le=20, description="Min-SNR loss weighting gamma; unset disables it.")
    train_batch_size: int = Field(1, ge=1, le=256, description="Images per step.")
    clip_skip: int | None = Field(None, ge=1, le=12, description="Use the output of the N-th last CLIP layer (2 is usual for SDXL/anime bases).")
    save_every_n_epochs: int = Field(1, ge=1, description="Write a LoRA checkpoint every N epochs (1 = every epoch, so epochs can be compared).")
    seed: int = Field(42, ge=0, le=MAX_SEED, description="Training seed (0 to 2**32-1).")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    cache_latents: bool = Field(True, description="Encode images with the VAE once (no random augmentation is used, so this is safe).")
    sdpa: bool = Field(True, description="Use PyTorch scaled-dot-product attention.")
    max_data_loader_n_workers: int = Field(1, ge=0, le=64, description="Data-loader worker processes.")
    enable_bucket: bool = Field(False, description="Aspect-ratio buckets. Off: every prepared image has the same square size. If on below 256 px, min_bucket_reso is lowered to the resolution (sd-scripts asserts otherwise).")
    flip_aug: bool = Field(False, description="Random horizontal flips (off: portraits are not symmetric, e.g. earrings and hair partings).")
    output_name: str = Field("bespoke", pattern=r"^[A-Za-z0-9_-]+$", description="Checkpoint file stem: `<output_name>-000001.safetensors` … and `<output_name>.safetensors` for the last epoch.")
    save_state: bool = Field(True, description="Save optimizer state with each checkpoint so `--resume` can continue.")



class KohyaPreset(Preset):
    """A preset trained by kohya sd-scripts: a LoRA on an SD1.5 or SDXL base."""

    section: ClassVar[str] = "kohya"

    engine: Literal["kohya"] = Field(description="`kohya`: LoRA through sd-scripts (needs a GPU for real use).")
    family: Literal["sd15", "sdxl"] | None = Field(None, description="Base-model family for kohya presets: picks `train_network.py` (sd15) or `sdxl_train_network.py` (sdxl).")
    requires_local_base: bool = Field(False, description="The base model must be a local single-file checkpoint the user supplies (`--set pretrained_model_name_or_path=/path/model.safetensors`).")
    kohya: KohyaSettings | None = Field(None, description="sd-scripts arguments (kohya presets only).")

    @model_validator(mode="after")
    def _needs_a_family(self) -> "KohyaPreset":
        if self.family is None:
            raise ValueError("engine 'kohya' needs `family = \"sd15\"` or `\"sdxl\"`")
        return self

    @property
    def settings(self) -> KohyaSettings:
        """The [kohya] table (always present once validated)."""
        return self.kohya  # type: ignore[return-value]

    @property
    def script(self) -> str:
        """The sd-scripts entry point this preset trains with."""
        return "sdxl_train_network.py" if self.family == "sdxl" else "train_network.py"

    @property
    def resolution(self) -> int:
        return self.settings.resolution

    def usable_problems(self) -> list[str]:
        k = self.settings
        res = k.resolution
        problems = []
        if res % 8:
            problems.append(f"{self.name}: kohya.resolution must be a multiple of 8 (the VAE downsamples 8×), got {res}; try {res - res % 8 or 8}")
        elif res % ART and not self.dataset.allow_uneven_pixels:
            problems.append(
                f"{self.name}: kohya.resolution {res} is not a multiple of {ART}, so art pixels would be uneven; "
                f"use {round(res / ART) * ART} or --set allow_uneven_pixels=true"
            )
        if self.requires_local_base:
            base = k.pretrained_model_name_or_path
            if not base or not Path(base).expanduser().is_file():
                problems.append(
                    f"preset {self.name} needs a local checkpoint file: pass --set pretrained_model_name_or_path=/path/to/model.safetensors"
                    + (f" (not found: {base})" if base else "")
                )
        return problems
