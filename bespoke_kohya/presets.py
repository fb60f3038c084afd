"""Presets: one pydantic model validates every preset file in ``presets/``.

The field descriptions below are the reference manual (``bespoke-kohya presets
--explain`` prints them). What the user typed is validated here; what the
machine can do (sd-scripts found, GPU present) is checked elsewhere (``doctor``).

kohya sd-scripts accepts any key in its ``--config_file`` and never converts the
types of those values, so this model is the only guard: unknown keys are refused
with a did-you-mean, ranges are checked, and cross-field rules name the fix.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import UserError
from .paths import ART as ART_SIZE, REPO_ROOT  # Bespoke Punks are 24x24 art pixels

# A checkout has presets/ beside the package; an installed wheel carries them inside it.
_CHECKOUT_PRESETS = REPO_ROOT / "presets"
PRESETS_DIR = _CHECKOUT_PRESETS if _CHECKOUT_PRESETS.is_dir() else Path(__file__).resolve().parent / "presets_data"


# Seeds go to numpy's legacy RandomState (sd-scripts via accelerate's set_seed), which
# takes at most 32 bits; torch and numpy's Generator take more, so 32 bits suits all.
MAX_SEED = 2**32 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class _Strict(BaseModel):
    # validate_assignment so that overrides applied after loading are checked too; strict
    # so that `resolution=true` is refused instead of read as 1 (ints stay valid for floats).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


class DatasetSettings(_Strict):
    """How the 24×24 originals become a kohya DreamBooth-style training folder."""

    num_repeats: int = Field(10, ge=1, le=1000, description="Times each image is seen per epoch (the `10` in the folder `10_<concept>`). The documented recipe uses 10.")
    concept: str = Field("bespoke_punk", pattern=r"^[A-Za-z0-9][A-Za-z0-9 _-]*$", description="Concept name: the folder becomes `<num_repeats>_<concept>`.")
    caption_extension: str = Field(".txt", pattern=r"^\.[A-Za-z0-9]+$", description="Caption file suffix. Written into the dataset TOML because sd-scripts defaults to `.caption` and would silently ignore `.txt` captions.")
    default_caption: str = Field(
        "pixel art, 24x24, portrait of bespoke punk, hard color borders, sharp pixel edges",
        min_length=1,
        description="Caption written (with a warning) for images that have no caption file.",
    )
    captions: Literal["raw", "normalised"] = Field(
        "raw",
        description="Captions written into the prepared data/: `raw` as the artist wrote them (repeated phrases dropped), or `normalised`: glued words split, empty and dangling phrases and repeats removed, the trigger first (what `bespoke-kohya dataset captions DIR --fix` writes; the originals are never touched). Recorded in run.json.",
    )
    validation_split: float = Field(
        0.1,
        ge=0,
        le=0.5,
        description=(
            "Share of the images held out to measure a validation loss after every epoch and to sample their own captions beside the real image; "
            "0 turns it off. sd-scripts v0.10.1's split (`validation_split` in the dataset TOML): round(n × split) images are held out "
            "(184 × 0.1: 18) and ceil(n × (1 − split)) trained on, so when n × split ends in .5 or more one held-out image is trained on too "
            "(8 × 0.1), and a split that holds out none (4 × 0.1) measures nothing; render warns about both with a split that works. "
            "kohya: sd-scripts' `loss/validation/epoch_average` (the held-out images at 4 fixed timesteps) → logs/validation.csv; "
            "pixel24: its own held-out loss on the same images. The held-out file names are recorded in run.json. "
            "The sd15_512 recipe keeps every documented value but this one (the notes held nothing out)."
        ),
    )
    validation_seed: Seed = Field(
        42,
        description="Seed that shuffles the images before the held-out split (sd-scripts' `validation_seed` in the dataset TOML): the same seed and images hold out the same files in every run and in both engines.",
    )
    alpha_background: str = Field("#ffffff", pattern=r"^#[0-9a-fA-F]{6}$", description="Colour that transparent pixels are flattened onto (sd-scripts loads images as RGB and would drop alpha without compositing).")
    allow_uneven_pixels: bool = Field(
        False,
        description="Allow a resolution that is not a whole multiple of 24 (e.g. 512 = 21.33 px per art pixel, as in the documented recipe). NEAREST then makes art pixels 21 or 22 px wide; a warning is printed. Prefer 576 (24 px per art pixel).",
    )

    @field_validator("caption_extension")
    @classmethod
    def _caption_not_an_image(cls, value: str) -> str:
        from .images import PICTURE_SUFFIXES

        if value.lower() in PICTURE_SUFFIXES:
            raise ValueError("the caption extension cannot be an image extension; captions are text files, use e.g. .txt")
        return value


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


class SampleSettings(_Strict):
    """How each epoch is sampled for the report: the same prompts × seeds for every epoch."""

    trigger: str = Field("pixel art, 24x24, portrait of bespoke punk", min_length=1, description="Phrase every prompt starts with, joined to each prompt by a space (the captions read `... portrait of bespoke punk lad, ...`).")
    prompts: list[str] = Field(
        default_factory=lambda: [
            "lad, green solid background, black hair, blue eyes, light skin",
            "lady, blonde hair, purple background, green eyes, slight smile",
            "lad, wearing gray baseball cap, brown eyes, medium male skin tone, red background",
            "lady, black curly hair, dark skin tone, yellow background",
        ],
        min_length=1,
        description="Attribute variations appended to the trigger (drawn from the dataset's captions).",
    )
    suffix: str = Field("hard color borders, sharp pixel edges", description="Phrase every prompt ends with.")
    negative_prompt: str = Field("blurry, anti-aliasing, gradient, body, torso, text, watermark", description="Negative prompt (diffusion presets).")
    seeds: list[Seed] = Field(default_factory=lambda: [1, 2, 3, 4], min_length=1, description="Seeds (0 to 2**32-1); every epoch uses the same ones so epochs are comparable.")
    heldout_seeds: int = Field(2, ge=0, le=16, description="Also draw each held-out image's own caption (dataset.validation_split) with the first this-many `seeds`, so the report can set each sample beside the real image its caption describes. 0: don't.")
    steps: int = Field(30, ge=1, le=500, description="Denoising steps (documented: 30). pixel24 uses pixel24.sample_steps instead.")
    guidance_scale: float = Field(7.5, ge=0, le=30, description="Classifier-free guidance scale (documented: 7.5). pixel24 uses pixel24.guidance_scale instead.")
    scheduler: Literal["euler_a", "euler", "ddim", "dpmsolver++", "pndm"] = Field("euler_a", description="Sampler/scheduler.")
    width: int | None = Field(None, ge=64, le=2048, multiple_of=8, description="Sample width; defaults to the training resolution.")
    height: int | None = Field(None, ge=64, le=2048, multiple_of=8, description="Sample height; defaults to the training resolution.")
    postprocess: Literal["grid", "nearest"] = Field("grid", description="How full-size samples become 24×24: `grid` (detect the art-pixel grid, median of each cell) or `nearest` (the documented baseline).")
    palette_max_delta_e: float | None = Field(4.0, ge=0, le=50, description="Snap colours to the training palette only when closer than this ΔE76; unset disables snapping.")
    merge: Literal["auto", "on", "off"] = Field("auto", description="Merge the image's own near-identical colours (ΔE < 3) before snapping: auto = only when the render is noisy.")
    max_colors: int | None = Field(None, ge=2, le=256, description="Cap the colours of each 24×24 result (median cut, no dithering); unset keeps them. Bespoke Punks use 13–50 (5th–95th percentile).")

    def full_prompts(self) -> list[str]:
        """The prompt suite as sent to the model."""
        from .captions import normalise_caption  # glued words in a prompt reach the model as words

        return [f"{self.trigger} {normalise_caption(body)}" + (f", {self.suffix}" if self.suffix else "") for body in self.prompts]


# --- pixel24 settings (owned by the pixel24 engine) ---
# Largest pixel24 U-Net accepted: 200 million parameters is about 4 GB of float32
# weights, gradients, AdamW moments and EMA (20 bytes each), before activations. The
# default is 1.3 million; a mistyped width (e.g. [4096, 4096, 4096]) would otherwise
# try to allocate hundreds of GB.
MAX_PIXEL24_PARAMETERS = 200_000_000
TRAINING_BYTES_PER_PARAMETER = 20


def unet_parameters(channels: list[int], layers: int, in_channels: int = 3, out_channels: int = 3) -> int:
    """Parameters of pixel24's UNet2DModel (diffusers' layout), counted from the settings alone."""
    t = channels[0] * 4  # time-embedding width

    def resnet(cin, cout):
        shortcut = cin * cout + cout if cin != cout else 0
        return 2 * cin + 9 * cin * cout + cout + t * 2 * cout + 2 * cout + 2 * cout + 9 * cout * cout + cout + shortcut

    def attention(c):
        return 2 * c + 4 * (c * c + c)

    def resample(c):
        return 9 * c * c + c

    n = 9 * in_channels * channels[0] + channels[0]  # conv_in
    n += channels[0] * t + t + t * t + t  # time embedding
    last = len(channels) - 1
    cin = channels[0]
    for i, c in enumerate(channels):  # down blocks
        for j in range(layers):
            n += resnet(cin if j == 0 else c, c) + (attention(c) if i == last else 0)
        n += 0 if i == last else resample(c)
        cin = c
    c = channels[-1]
    n += 2 * resnet(c, c) + attention(c)  # mid block
    rev = channels[::-1]
    out = rev[0]
    for i, c in enumerate(rev):  # up blocks
        prev, out = out, c
        skip_in = rev[min(i + 1, last)]
        for j in range(layers + 1):
            skip = skip_in if j == layers else c
            n += resnet((prev if j == 0 else c) + skip, c) + (attention(c) if i == 0 else 0)
        n += 0 if i == last else resample(c)
    n += 2 * channels[0] + 9 * channels[0] * out_channels + out_channels  # norm_out, conv_out
    return n


class Pixel24Settings(_Strict):
    """The native 24×24 model: masked discrete diffusion over a palette of the artist's own colours (trains on a CPU)."""

    block_out_channels: list[int] = Field(default_factory=lambda: [32, 64, 64], min_length=2, max_length=4, description="U-Net channel widths per resolution level (24 → 12 → 6); attention only at the lowest level. Each must be a multiple of 8. Measured on 2 CPU cores: more steps beat more width for a fixed time.")
    layers_per_block: int = Field(1, ge=1, le=4, description="ResNet layers per U-Net block.")
    colour_dim: int = Field(32, ge=8, le=512, description="Width of the embedding each pixel's colour (or the mask) enters the U-Net as; computed from the colour's CIELAB values, so any palette works.")
    feature_dim: int = Field(64, ge=8, le=512, description="Width of the per-pixel vector the U-Net returns; a palette colour's logit is its dot product with that colour's output embedding.")
    palette_size: int = Field(256, ge=2, le=1024, description="Colours the model may draw, learned from the training images (their exact colours when there are this few). Measured on the 184 Bespoke Punks: 256 colours keep every pixel a mean ΔE76 of 3.1 from its own colour, 512 → 1.6, 128 → 4.9.")
    base: str = Field("standin", min_length=1, description="What the fine-tune starts from: \"standin\" (a base model trained once on the 10,000 CryptoPunks of the stand-in and cached in $BESPOKE_CACHE/pixel24-base/), \"none\" (from scratch: only sensible on thousands of images, as `make train` does on the stand-in), or a pixel24 checkpoint / run folder.")
    base_steps: int = Field(600, ge=1, le=1_000_000, description="Optimiser steps of the stand-in base model (measured: 600 steps × 32 take ~3 min on 2 CPU cores; a 1,000- or 2,200-step base gave no better fine-tune than a longer fine-tune did).")
    base_batch_size: int = Field(32, ge=1, le=4096, description="Images per step of the base model.")
    base_learning_rate: float = Field(2e-3, gt=0, le=1, description="AdamW peak learning rate of the base model.")
    base_ema_decay: float = Field(0.998, ge=0, lt=1, description="EMA decay of the base model's weights.")
    steps: int = Field(2600, ge=1, le=1_000_000, description="Optimiser steps of this run (the fine-tune), whatever the dataset's size: 20 punks and 500 get the same amount of learning. Measured: 2,600 × 32 take ~15 min on 2 CPU cores; fewer than ~600 leave faces mushy, and samples kept getting harder to tell from the real punks up to 2,600.")
    epochs: int = Field(5, ge=1, le=1000, description="Checkpoints the report compares, written every steps/epochs steps (an epoch here is a share of the run, not a pass over the data).")
    batch_size: int = Field(32, ge=1, le=4096, description="Images per step.")
    learning_rate: float = Field(1e-3, gt=0, le=1, description="AdamW peak learning rate (linear warm-up, then cosine decay to 10%).")
    warmup_steps: int = Field(100, ge=0, description="Linear learning-rate warm-up steps (capped at a quarter of the run).")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA of the weights, saved in the checkpoints and used for sampling (0 disables); warmed up as min(decay, (1+step)/(10+step)). Measured on the benchmark's 2,600-step fine-tune: 0.999 read 0.70, 0.995 0.71 (two-sample, with refinement).")
    flip: bool = Field(True, description="Mirror training images left-right at random (Bespoke Punks face the viewer, so a mirrored punk is still in style).")
    label_smoothing: float = Field(0.05, ge=0, lt=1, description="Cross-entropy label smoothing on the masked pixels.")
    text_dim: int = Field(64, ge=8, le=1024, description="Width of the caption word/phrase embeddings.")
    vocab_min_count: int = Field(2, ge=1, description="A caption word enters the vocabulary when it occurs at least this often in the training captions; prompt words outside it are reported as unknown.")
    cond_dropout: float = Field(0.1, ge=0, le=1, description="Share of captions replaced by the empty (null) caption during training, for classifier-free guidance.")
    phrase_dropout: float = Field(0.1, ge=0, lt=1, description="Chance of dropping each comma-separated phrase of a training caption, so short prompts resemble training captions.")
    sample_steps: int = Field(16, ge=1, le=576, description="Unmasking steps when drawing (MaskGIT: the masked share follows a cosine from all pixels to none).")
    temperature: float = Field(0.5, gt=0, le=5, description="Sampling temperature of each pixel's colour (measured: 0.7 leaves stray pixels, 0.3 fills areas with the commonest colour).")
    guidance_scale: float = Field(2.0, ge=0, le=30, description="Classifier-free guidance on the logits when drawing (1 = none).")
    refine_rounds: int = Field(2, ge=0, le=16, description="After drawing, rounds of re-drawing the least likely pixels: the model scores every pixel's colour given the others and re-draws the worst refine_share (0 = plain MaskGIT). Measured: 2 rounds of 10% removed most stray pixels (two-sample accuracy 0.76 → 0.71, colours per image 58 → 45); costs refine_rounds × (4 + refine_steps) model passes on top of sample_steps (measured: 1.5x the sampling time with the defaults).")
    refine_share: float = Field(0.1, gt=0, le=0.5, description="Share of each image's pixels re-drawn per refinement round (measured: 0.1 and 0.15 read alike, 0.25 no better).")
    refine_steps: int = Field(4, ge=1, le=64, description="Unmasking steps that re-draw the refined pixels.")
    refine_temperature: float = Field(0.3, gt=0, le=5, description="Sampling temperature of the re-drawn pixels (lower than `temperature`: they should agree with their surroundings).")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Training seed (weights, data order, masks; 0 to 2**32-1).")

    def sampler_options(self) -> dict[str, Any]:
        """The keyword arguments ``pixel24.sample`` draws with under these settings (also recorded with the samples)."""
        return {"steps": self.sample_steps, "guidance_scale": self.guidance_scale, "temperature": self.temperature, "refine_rounds": self.refine_rounds,
                "refine_share": self.refine_share, "refine_steps": self.refine_steps, "refine_temperature": self.refine_temperature}

    @field_validator("block_out_channels")
    @classmethod
    def _channels_multiple_of_8(cls, value: list[int]) -> list[int]:
        bad = [c for c in value if c < 8 or c % 8]
        if bad:
            raise ValueError(f"every width must be a multiple of 8 (at least 8), got {value}")
        return value

    @model_validator(mode="after")
    def _fits_in_memory(self) -> "Pixel24Settings":
        n = unet_parameters(self.block_out_channels, self.layers_per_block, self.colour_dim, self.feature_dim)
        if n > MAX_PIXEL24_PARAMETERS:
            raise ValueError(
                f"block_out_channels {self.block_out_channels} with layers_per_block {self.layers_per_block} make a U-Net of about "
                f"{n / 1e6:,.0f} million parameters (~{n * TRAINING_BYTES_PER_PARAMETER / 1e9:,.0f} GB to train); the limit is "
                f"{MAX_PIXEL24_PARAMETERS / 1e6:,.0f} million: set smaller pixel24.block_out_channels (default [32, 64, 64]) or pixel24.layers_per_block"
            )
        return self
# --- end pixel24 settings ---


class Preset(_Strict):
    """A training preset: one file in `presets/`."""

    name: str = Field(pattern=r"^[a-z0-9_]+$", description="Preset name (the file stem).")
    description: str = Field(description="One line shown by `bespoke-kohya presets`.")
    engine: Literal["kohya", "pixel24"] = Field(description="`kohya`: LoRA through sd-scripts (needs a GPU for real use). `pixel24`: the native 24×24 model (CPU).")
    family: Literal["sd15", "sdxl"] | None = Field(None, description="Base-model family for kohya presets: picks `train_network.py` (sd15) or `sdxl_train_network.py` (sdxl).")
    experimental: str | None = Field(None, description="Set on presets that are known not to work reliably; the text says why. Using one needs `--experimental`.")
    requires_local_base: bool = Field(False, description="The base model must be a local single-file checkpoint the user supplies (`--set pretrained_model_name_or_path=/path/model.safetensors`).")
    dataset: DatasetSettings = Field(default_factory=DatasetSettings, description="Training-folder preparation.")
    kohya: KohyaSettings | None = Field(None, description="sd-scripts arguments (kohya presets only).")
    sample: SampleSettings = Field(default_factory=SampleSettings, description="Per-epoch sampling for the report.")
    pixel24: Pixel24Settings | None = Field(None, description="Native model settings (pixel24 presets only).")

    @model_validator(mode="after")
    def _engine_sections(self) -> "Preset":
        if self.engine == "kohya":
            if self.kohya is None:
                raise ValueError("engine 'kohya' needs a [kohya] table")
            if self.family is None:
                raise ValueError("engine 'kohya' needs `family = \"sd15\"` or `\"sdxl\"`")
            if self.pixel24 is not None:
                raise ValueError("a kohya preset cannot have a [pixel24] table; remove it")
        else:
            if self.pixel24 is None:
                raise ValueError("engine 'pixel24' needs a [pixel24] table")
            if self.kohya is not None:
                raise ValueError("a pixel24 preset cannot have a [kohya] table; remove it")
        return self

    @property
    def script(self) -> str | None:
        """The sd-scripts entry point this preset trains with."""
        if self.engine != "kohya":
            return None
        return "sdxl_train_network.py" if self.family == "sdxl" else "train_network.py"

    @property
    def resolution(self) -> int:
        """Training resolution in px (24 for the native model)."""
        return self.kohya.resolution if self.kohya else ART_SIZE

    @property
    def sample_size(self) -> tuple[int, int]:
        """(width, height) of full-size samples."""
        return (self.sample.width or self.resolution, self.sample.height or self.resolution)


# ---------------------------------------------------------------- loading


def available_presets(presets_dir: Path = PRESETS_DIR) -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in presets_dir.glob("*.toml"))


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _model_for(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the field at ``loc`` (for did-you-mean suggestions)."""
    model: type[BaseModel] = Preset
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        candidates = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not candidates:
            return None
        model = candidates[0]
    return model


def format_validation_error(source: str, exc: ValidationError) -> str:
    """Every problem on its own line: `source: dotted.field: what is wrong (value)`; unknown keys get a did-you-mean."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            model = _model_for(loc)
            hint = _did_you_mean(str(loc[-1]), list(model.model_fields)) if model else ""
            lines.append(f"{source}: {where}: unknown key{hint}; see `bespoke-kohya presets --explain` for valid keys")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        shown = "" if isinstance(value, dict) or value is None else f" (got {value!r})"
        lines.append(f"{source}: {where}: {msg}{shown}")
    return "\n".join(lines)


def preset_path(name_or_path: str, presets_dir: Path = PRESETS_DIR) -> Path:
    """A preset name from `presets/` or a path to a preset file."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.exists():
        if candidate.is_dir():
            raise UserError(f"{candidate}: is a folder, not a preset file; pass a preset name (see `bespoke-kohya presets`) or a .toml file")
        if not candidate.is_file():
            raise UserError(f"{candidate}: preset file not found")
        return candidate
    path = presets_dir / f"{name_or_path}.toml"
    if not path.is_file():
        names = available_presets(presets_dir)
        raise UserError(f"unknown preset '{name_or_path}'{_did_you_mean(name_or_path, names)}; available: {', '.join(names)}")
    return path


def read_preset_data(path: Path) -> dict[str, Any]:
    """The raw TOML of a preset file."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; re-save the preset as UTF-8") from None


def _parse_override(raw: str) -> tuple[str, str]:
    if "=" not in raw:
        raise UserError(f"--set {raw!r}: expected key=value, e.g. --set network_dim=16")
    key, value = raw.split("=", 1)
    key = key.strip()
    if not key:
        raise UserError(f"--set {raw!r}: the key is empty; expected key=value")
    return key, value.strip()


def _coerce(value: str) -> Any:
    """A TOML literal if the value parses as one (numbers, booleans, lists, quoted strings), else the raw string."""
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


def _resolve_key(data: dict[str, Any], key: str) -> list[str]:
    """Dotted path for an override key; unqualified keys are looked up in the preset's sections.

    `network_dim` finds `kohya.network_dim`, `steps` finds `sample.steps`, so the
    user can type sd-scripts' own names.
    """
    parts = key.split(".")
    if len(parts) > 1 or key in Preset.model_fields:
        return parts
    sections = [name for name in ("kohya", "pixel24", "dataset", "sample") if name in data or name in ("dataset", "sample")]
    owners = [s for s in sections if key in _model_for((s, key)).model_fields]  # type: ignore[union-attr]
    if len(owners) == 1:
        return [owners[0], key]
    if len(owners) > 1:
        raise UserError(f"--set {key}: ambiguous, it exists in {', '.join(owners)}; write e.g. --set {owners[0]}.{key}=…")
    every = list(Preset.model_fields) + [f"{s}.{f}" for s in sections for f in _model_for((s, "x")).model_fields]  # type: ignore[union-attr]
    raise UserError(f"--set {key}: unknown key{_did_you_mean(key, every + [e.split('.')[-1] for e in every])}; see `bespoke-kohya presets --explain`")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of the raw preset data with `key=value` overrides applied (validated later, together)."""
    import copy

    out = copy.deepcopy(data)
    for raw in overrides:
        key, value = _parse_override(raw)
        path = _resolve_key(out, key)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {key}: '{part}' is not a table")
        node[path[-1]] = _coerce(value)
    return out


def load_preset(name_or_path: str, overrides: list[str] | None = None, experimental: bool = False, presets_dir: Path = PRESETS_DIR) -> Preset:
    """Load, override and validate a preset; every problem is reported at once as a UserError."""
    path = preset_path(name_or_path, presets_dir)
    data = apply_overrides(read_preset_data(path), overrides or [])
    source = f"{path.name}" + (" with --set overrides" if overrides else "")
    try:
        preset = Preset.model_validate(data)
    except ValidationError as exc:
        raise UserError(format_validation_error(source, exc)) from None
    if path.parent.resolve() == presets_dir.resolve() and preset.name != path.stem:
        raise UserError(f"{path}: name = {preset.name!r} but the file is {path.stem}.toml; make them match")
    check_usable(preset, experimental)
    return preset


def check_usable(preset: Preset, experimental: bool) -> None:
    """Rules about using a preset (as opposed to its shape): experiments need consent, local bases must exist."""
    if preset.experimental and not experimental:
        raise UserError(f"preset {preset.name} is experimental: {preset.experimental} Pass --experimental to run it anyway.")
    if preset.kohya:
        res = preset.kohya.resolution
        if res % 8:
            raise UserError(f"{preset.name}: kohya.resolution must be a multiple of 8 (the VAE downsamples 8×), got {res}; try {res - res % 8 or 8}")
        if res % ART_SIZE and not preset.dataset.allow_uneven_pixels:
            raise UserError(
                f"{preset.name}: kohya.resolution {res} is not a multiple of {ART_SIZE}, so art pixels would be uneven; "
                f"use {round(res / ART_SIZE) * ART_SIZE} or --set allow_uneven_pixels=true"
            )
        if preset.requires_local_base:
            base = preset.kohya.pretrained_model_name_or_path
            if not base or not Path(base).expanduser().is_file():
                raise UserError(
                    f"preset {preset.name} needs a local checkpoint file: pass --set pretrained_model_name_or_path=/path/to/model.safetensors"
                    + (f" (not found: {base})" if base else "")
                )


def explain(model: type[BaseModel] = Preset, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) rows for every field: the reference manual."""
    rows = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        sub = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if sub:
            rows.append((prefix + name, "table", "", field.description or ""))
            rows.extend(explain(sub[0], prefix + name + "."))
            continue
        default = "" if field.is_required() else repr(field.get_default(call_default_factory=True))
        rows.append((prefix + name, _type_name(ann), default, field.description or ""))
    return rows


def _type_name(ann: Any) -> str:
    text = str(ann).replace("typing.", "")
    return text.replace("<class '", "").replace("'>", "")
