"""The kohya engine's preset: its `[kohya]` table (sd-scripts' own argument names), the base-model family and the method.

A method is one sd-scripts training script (`KohyaPreset.script`): `lora` (train_network.py, the
documented recipe), `full` (train_db.py, every weight of the U-Net), `textual_inversion`
(train_textual_inversion.py, a new token's embedding) or `controlnet` (train_control_net.py, a
ControlNet on the prepared images' exact pixel edges). The fields every script shares live in
`[kohya]`; what only one method has lives in its own sub-table (`[kohya.full]`,
`[kohya.textual_inversion]`, `[kohya.controlnet]`), filled with its defaults when the method is chosen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from ...paths import ART
from ...settings import MAX_SEED, Preset, _Strict


Method = Literal["lora", "full", "textual_inversion", "controlnet"]
METHODS: tuple[str, ...] = ("lora", "full", "textual_inversion", "controlnet")
# (method, family) -> the sd-scripts v0.10.1 entry point. The SDXL counterparts of the three
# non-LoRA methods are named here so the table is complete, but KohyaPreset refuses them: their
# arguments differ (sdxl_train.py has learning_rate_te1/te2, no stop_text_encoder_training) and
# they sample through other pipelines (two text encoders, two embeddings), which this version
# neither renders nor tests.
SCRIPTS: dict[tuple[str, str], str] = {
    ("lora", "sd15"): "train_network.py",
    ("lora", "sdxl"): "sdxl_train_network.py",
    ("full", "sd15"): "train_db.py",
    ("full", "sdxl"): "sdxl_train.py",
    ("textual_inversion", "sd15"): "train_textual_inversion.py",
    ("textual_inversion", "sdxl"): "sdxl_train_textual_inversion.py",
    ("controlnet", "sd15"): "train_control_net.py",
    ("controlnet", "sdxl"): "sdxl_train_control_net.py",
}
# [kohya] fields only train_network.py reads: another method refuses a value other than the default
# (a preset's resolved form, run.json, always carries the defaults, so those must pass).
LORA_ONLY = ("network_module", "network_dim", "network_alpha", "unet_lr", "text_encoder_lr")
LORA_ONLY_FIX = {
    "unet_lr": "set kohya.learning_rate, the rate of what this method trains",
    "text_encoder_lr": "remove it; the full fine-tune trains the text encoder with kohya.full.train_text_encoder = true (its rate: kohya.full.learning_rate_te)",
}


class FullSettings(_Strict):
    """`[kohya.full]`: train_db.py, a DreamBooth-style fine-tune of every U-Net weight (the notes' "nuclear option")."""

    train_text_encoder: bool = Field(
        False,
        description="Also fine-tune the CLIP text encoder (123M more weights: ~2 GB more GPU memory with AdamW). Off renders "
        "`stop_text_encoder_training = -1`, train_db.py's way of never training it; the captions then steer a frozen encoder, as in the LoRA recipe's U-Net part.",
    )
    learning_rate_te: float | None = Field(
        None, gt=0, le=1,
        description="Text-encoder learning rate when train_text_encoder is on (train_db.py's `learning_rate_te`); unset uses kohya.learning_rate.",
    )



class TextualInversionSettings(_Strict):
    """`[kohya.textual_inversion]`: train_textual_inversion.py learns new token embeddings; every model weight stays as it was."""

    token_string: str = Field(
        "bespoke punk",
        min_length=1,
        max_length=64,
        pattern=r"^[a-z0-9][a-z0-9 _-]*[a-z0-9]$|^[a-z0-9]$",
        description="The words the embedding replaces. sd-scripts adds them to the tokenizer as one new token (and `<token>1`, `<token>2`, … "
        "for more vectors) and learns only their embedding from the captions that contain them, so they must appear in the captions "
        "(`bespoke punk`: every caption says `portrait of bespoke punk`) and in sample.trigger. Lower case (CLIP lower-cases text before "
        "matching added tokens); it must not already be a single CLIP token (pre-flight checks the vocabulary).",
    )
    init_word: str | None = Field(
        "punk",
        min_length=1,
        description="Word(s) whose embedding the new vectors start from (sd-scripts `init_word`; with more vectors than its tokens they repeat). "
        "`punk`: what the notes call every portrait, one CLIP token. Unset starts from sd-scripts' resized-embedding initialisation.",
    )
    num_vectors_per_token: int = Field(
        2, ge=1, le=32,
        description="Embedding vectors behind the token (capacity of the learned concept; each takes one of the prompt's 75 token slots).",
    )


class ControlNetSettings(_Strict):
    """`[kohya.controlnet]`: train_control_net.py trains a ControlNet (a copy of the U-Net's encoder) on the exact pixel edges of the images."""

    edge_width: int = Field(
        2, ge=1, le=32,
        description="Width in px, at the training resolution (and at the sample size when sampling), of the white edge lines drawn on black "
        "where two neighbouring art pixels differ in colour. Lines are centred on the art-pixel boundary: 2 px covers the last pixel of one "
        "cell and the first of the next (ControlNet's canny maps use thin lines too); render writes them to data/<repeats>_<concept>_conditioning/.",
    )
    conditioning_scale: float = Field(
        1.0, ge=0, le=2,
        description="How strongly the edges steer sampling (diffusers' controlnet_conditioning_scale; 0 draws as the base, or the LoRA below, alone).",
    )
    lora: str | None = Field(
        None,
        description="A kohya LoRA (.safetensors) of another run, e.g. `runs/<run>/checkpoints/bespoke-000002.safetensors`, applied under the "
        "ControlNet when sampling (the route 'ControlNet + the LoRA'). render copies it into the run (config/sample_lora.safetensors) so the "
        "run travels whole; give it relative to where you run bespoke-kohya (as above): `bundle` refuses a run whose files name a path of this "
        "machine (your home, the checkout). train_control_net.py itself trains on the base U-Net: it has no LoRA option. Unset: the ControlNet on the base model.",
    )

    @field_validator("lora")
    @classmethod
    def _lora_is_safetensors(cls, value: str | None) -> str | None:
        if value is not None and not value.strip().lower().endswith(".safetensors"):
            raise ValueError("kohya.controlnet.lora must be a .safetensors LoRA file (pickles are never loaded); e.g. runs/<run>/checkpoints/bespoke-000002.safetensors")
        return value


class KohyaSettings(_Strict):
    """Arguments passed to sd-scripts' training script (names are sd-scripts' own); which script is `method` with the preset's family."""

    method: Method = Field(
        "lora",
        description="What trains: `lora` (train_network.py, the documented recipe), `full` (train_db.py: every U-Net weight, the notes' "
        "'nuclear option'), `textual_inversion` (train_textual_inversion.py: only a new token's embedding) or `controlnet` "
        "(train_control_net.py: a ControlNet on the images' exact pixel edges, sampled on the base or with another run's LoRA). "
        "Each has its own sub-table for what only it reads ([kohya.full], [kohya.textual_inversion], [kohya.controlnet]).",
    )
    pretrained_model_name_or_path: str = Field(
        "runwayml/stable-diffusion-v1-5",
        description="Base model: a hub id, a local diffusers folder, or a single-file `.safetensors`/`.ckpt` checkpoint.",
    )
    resolution: int = Field(512, ge=16, le=2048, description="Training resolution in px (square); rendered as the string `\"R,R\"` sd-scripts expects. The 24×24 originals are upscaled with NEAREST to this size.")
    network_module: Literal["networks.lora"] = Field("networks.lora", description="sd-scripts network module; LoRA (method lora only).")
    network_dim: int = Field(32, ge=1, le=1024, description="LoRA rank (method lora only).")
    network_alpha: float = Field(16.0, gt=0, le=1024, description="LoRA alpha (scale = alpha/dim; method lora only). Rendered as a float: an integer would be stored as an int64 tensor in the LoRA file.")
    max_train_epochs: int = Field(3, ge=1, le=1000, description="Epochs to train.")
    learning_rate: float = Field(1e-4, gt=0, le=1, description="Base learning rate: the LoRA's default rate, the full fine-tune's U-Net rate, the embedding's rate (textual inversion), the ControlNet's rate.")
    unet_lr: float | None = Field(1e-4, gt=0, le=1, description="LoRA U-Net learning rate (defaults to learning_rate when unset; method lora only).")
    text_encoder_lr: float | None = Field(5e-5, ge=0, le=1, description="LoRA text-encoder learning rate; 0 trains the U-Net only (method lora only; the full fine-tune has kohya.full).")
    lr_scheduler: Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "adafactor"] = Field(
        "cosine_with_restarts", description="Learning-rate schedule."
    )
    lr_scheduler_num_cycles: int = Field(3, ge=1, le=100, description="Restarts for cosine_with_restarts.")
    lr_warmup_steps: int = Field(0, ge=0, description="Warm-up steps.")
    optimizer_type: Literal["AdamW", "AdamW8bit", "Lion", "SGDNesterov", "Prodigy", "Adafactor"] = Field("AdamW", description="Optimizer (AdamW8bit needs bitsandbytes and a CUDA GPU).")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field("fp16", description="Mixed precision; use `no` on a CPU.")
    save_precision: Literal["float", "fp16", "bf16"] = Field("fp16", description="Precision of the saved files (LoRA, whole model, embedding or ControlNet).")
    noise_offset: float = Field(0.1, ge=0, le=1, description="Noise offset (helps solid, dark or bright backgrounds).")
    min_snr_gamma: float | None = Field(
        5.0, gt=0, le=20,
        description="Min-SNR loss weighting gamma; unset disables it. Method controlnet: unset, and refused (train_control_net.py v0.10.1 crashes with it).",
    )
    train_batch_size: int = Field(1, ge=1, le=256, description="Images per step.")
    clip_skip: int | None = Field(None, ge=1, le=12, description="Use the output of the N-th last CLIP layer (2 is usual for SDXL/anime bases).")
    save_every_n_epochs: int = Field(1, ge=1, description="Write a checkpoint every N epochs (1 = every epoch, so epochs can be compared); the last epoch is always written. A full fine-tune writes ~2 GB (fp16) to ~4 GB (float) each: pre-flight warns when the epochs add up.")
    seed: int = Field(42, ge=0, le=MAX_SEED, description="Training seed (0 to 2**32-1).")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    cache_latents: bool = Field(True, description="Encode images with the VAE once (no random augmentation is used, so this is safe).")
    sdpa: bool = Field(True, description="Use PyTorch scaled-dot-product attention.")
    max_data_loader_n_workers: int = Field(1, ge=0, le=64, description="Data-loader worker processes.")
    enable_bucket: bool = Field(False, description="Aspect-ratio buckets. Off: every prepared image has the same square size. If on below 256 px, min_bucket_reso is lowered to the resolution (sd-scripts asserts otherwise).")
    flip_aug: bool = Field(False, description="Random horizontal flips (off: portraits are not symmetric, e.g. earrings and hair partings).")
    output_name: str = Field("bespoke", pattern=r"^[A-Za-z0-9_-]+$", description="Checkpoint file stem: `<output_name>-000001.safetensors` … and `<output_name>.safetensors` for the last epoch.")
    save_state: bool = Field(
        True,
        description="Save optimizer state with each checkpoint so `--resume` can continue (method lora). The other methods' scripts "
        "(sd-scripts v0.10.1) reload a state but train every epoch again, so for them it defaults to false and true is refused; "
        "an interrupted full, textual_inversion or controlnet run is trained again from the start.",
    )
    full: FullSettings | None = Field(None, description="Settings of method `full` only (train_db.py); filled with its defaults when method = \"full\".")
    textual_inversion: TextualInversionSettings | None = Field(
        None, description="Settings of method `textual_inversion` only (train_textual_inversion.py); filled with its defaults when method = \"textual_inversion\"."
    )
    controlnet: ControlNetSettings | None = Field(
        None, description="Settings of method `controlnet` only (train_control_net.py and its sampling); filled with its defaults when method = \"controlnet\"."
    )

    @model_validator(mode="before")
    @classmethod
    def _method_table_defaults(cls, data: Any) -> Any:
        """The chosen method's sub-table with its defaults when the preset leaves it out (a preset need not repeat them)."""
        if isinstance(data, dict) and data.get("method") in METHODS[1:]:
            if data.get(data["method"]) is None:
                data = {**data, data["method"]: {}}
            # No resume state unless asked: these scripts cannot continue from one (see _one_method).
            data = {"save_state": False, **data}
        if isinstance(data, dict) and data.get("method") == "controlnet":
            data = {"min_snr_gamma": None, **data}  # train_control_net.py cannot use it (see _one_method)
        return data

    @model_validator(mode="after")
    def _one_method(self) -> "KohyaSettings":
        for other in METHODS[1:]:
            if other != self.method and getattr(self, other) is not None:
                raise ValueError(f"kohya.{other} is set but kohya.method = {self.method!r}; remove the [kohya.{other}] table, or set kohya.method = {other!r}")
        if self.method != "lora" and self.save_state:
            raise ValueError(f"kohya.save_state = true: {SCRIPTS[(self.method, 'sd15')]} (sd-scripts v0.10.1) loads a saved state with --resume but then "
                             "trains every epoch again from epoch 1, so `train --resume` cannot continue this method from it and the states would only "
                             "fill the disk; set save_state = false (an interrupted run is trained again from the start)")
        if self.method == "controlnet" and self.min_snr_gamma is not None:
            # Found by the CPU smoke: train_control_net.py never calls prepare_scheduler_for_custom_training.
            raise ValueError(f"kohya.min_snr_gamma = {self.min_snr_gamma!r}: train_control_net.py (sd-scripts v0.10.1) crashes on its first step with it "
                             "('DDPMScheduler' object has no attribute 'all_snr': it never prepares its scheduler for Min-SNR weighting); "
                             "remove min_snr_gamma from the preset (for method controlnet it defaults to unset)")
        if self.full is not None and self.full.learning_rate_te is not None and not self.full.train_text_encoder:
            raise ValueError("kohya.full.learning_rate_te is set but kohya.full.train_text_encoder is false, so no text encoder trains; "
                             "set kohya.full.train_text_encoder = true or remove learning_rate_te")
        if self.method != "lora":
            for key in LORA_ONLY:
                value, default = getattr(self, key), type(self).model_fields[key].default
                if value != default:
                    own = LORA_ONLY_FIX.get(key) if key != "text_encoder_lr" or self.method == "full" else None
                    fix = own or f"remove it (method {self.method!r} trains no LoRA)"
                    raise ValueError(f"kohya.{key} = {value!r} is a LoRA setting, which method {self.method!r} does not read; {fix}")
        return self



class KohyaPreset(Preset):
    """A preset trained by kohya sd-scripts: a LoRA on an SD1.5 or SDXL base, or (SD1.5) a full fine-tune, an embedding or a ControlNet."""

    section: ClassVar[str] = "kohya"

    engine: Literal["kohya"] = Field(description="`kohya`: kohya sd-scripts trains it (LoRA, full fine-tune, textual inversion or ControlNet; needs a GPU for real use).")
    family: Literal["sd15", "sdxl"] | None = Field(
        None,
        description="Base-model family for kohya presets: with kohya.method it picks the script (sd15: train_network.py, train_db.py, "
        "train_textual_inversion.py, train_control_net.py; sdxl: sdxl_train_network.py, LoRA only in this version).",
    )
    requires_local_base: bool = Field(False, description="The base model must be a local single-file checkpoint the user supplies (`--set pretrained_model_name_or_path=/path/model.safetensors`).")
    kohya: KohyaSettings | None = Field(None, description="sd-scripts arguments (kohya presets only).")

    @model_validator(mode="after")
    def _needs_a_family(self) -> "KohyaPreset":
        if self.family is None:
            raise ValueError("engine 'kohya' needs `family = \"sd15\"` or `\"sdxl\"`")
        method = self.kohya.method
        if self.family == "sdxl" and method != "lora":
            raise ValueError(f"kohya.method = {method!r} is rendered for family \"sd15\" only in this version: its SDXL script "
                             f"({SCRIPTS[(method, 'sdxl')]}) takes other arguments and samples through other pipelines; "
                             "use family = \"sd15\" with an SD1.5 base, or method = \"lora\" for SDXL")
        if method == "textual_inversion":
            token = self.kohya.textual_inversion.token_string  # type: ignore[union-attr]
            if token not in self.sample.trigger:
                raise ValueError(f"sample.trigger {self.sample.trigger!r} does not contain kohya.textual_inversion.token_string {token!r}, so no sample "
                                 "would use the learned embedding; put the token in the trigger (e.g. \"pixel art, 24x24, portrait of "
                                 f"{token}\") or choose a token_string the trigger has")
        return self

    @property
    def settings(self) -> KohyaSettings:
        """The [kohya] table (always present once validated)."""
        return self.kohya  # type: ignore[return-value]

    @property
    def method(self) -> str:
        """What trains: lora, full, textual_inversion or controlnet (kohya.method)."""
        return self.settings.method

    @property
    def script(self) -> str:
        """The sd-scripts entry point this preset trains with: its method in its family."""
        return SCRIPTS[(self.settings.method, self.family or "sd15")]

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
