"""The pixel24 engine's preset: its `[pixel24]` table (the model, its training and its sampler)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from ...settings import MAX_SEED, Preset, _Strict

# Largest pixel24 U-Net accepted: 200 million parameters is about 4 GB of float32
# weights, gradients, AdamW moments and EMA (20 bytes each), before activations. The
# default is 1.3 million; a mistyped width (e.g. [4096, 4096, 4096]) would otherwise
# try to allocate hundreds of GB.
MAX_PIXEL24_PARAMETERS = 200_000_000
TRAINING_BYTES_PER_PARAMETER = 20


def unet_parameters(channels: list[int], layers: int, in_channels: int = 3, out_channels: int = 3, attention_levels: int = 1) -> int:
    """Parameters of pixel24's UNet2DModel (diffusers' layout), counted from the settings alone (the lowest
    ``attention_levels`` levels attend)."""
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
    attended = min(attention_levels, len(channels))
    cin = channels[0]
    for i, c in enumerate(channels):  # down blocks
        for j in range(layers):
            n += resnet(cin if j == 0 else c, c) + (attention(c) if i > last - attended else 0)
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
            n += resnet((prev if j == 0 else c) + skip, c) + (attention(c) if i < attended else 0)
        n += 0 if i == last else resample(c)
    n += 2 * channels[0] + 9 * channels[0] * out_channels + out_channels  # norm_out, conv_out
    return n


def background_head_parameters(channels: list[int], in_channels: int, out_channels: int) -> int:
    """Parameters of the optional background head (model.Pixel24Net): two layers on the caption vector, and the
    chosen colour's embedding into the conditioning; as wide as the time embedding, so it counts toward the cap."""
    t = channels[0] * 4
    return (t * t + t) + (t * out_channels + out_channels) + (in_channels * t + t)


# Settings version 2 of pixel24.json lacked. At their defaults they build and draw exactly as version 2 did; a run
# that sets any of them writes pixel24.json version 3 (model.model_config), which versions reading only 2 refuse.
VERSION_3_FIELDS = ("attention_levels", "background_head", "background_loss_weight", "recolour_background",
                    "refine_components", "refine_rare_colours", "background_temperature", "background_from_caption", "background_repaint", "background_flatten", "sample_batch", "compile",
                    "guided_steps", "refine_guidance", "schedule_steps", "fast_step", "fast_draw")
# Settings that act only through the background head: set without it they would change nothing, so they are refused.
HEAD_ONLY_FIELDS = ("background_loss_weight", "recolour_background", "background_temperature", "background_from_caption", "background_repaint",
                    "background_flatten")
# The version-3 settings that are sampler options, by their keyword in sampling.sample.
SAMPLER_OPTIONS = {"refine_components": "refine_components", "refine_rare_colours": "refine_rare_colours",
                   "background_temperature": "background_temperature", "background_from_caption": "background_from_caption",
                   "background_repaint": "background_repaint", "background_flatten": "background_flatten", "sample_batch": "batch", "compile": "compile",
                   "guided_steps": "guided_steps", "refine_guidance": "refine_guidance", "fast_draw": "fast_draw"}


class Pixel24Settings(_Strict):
    """The native 24×24 model: masked discrete diffusion over a palette of the artist's own colours (trains on a CPU)."""

    block_out_channels: list[int] = Field(default_factory=lambda: [32, 64, 64], min_length=2, max_length=4, description="U-Net channel widths per resolution level (24 → 12 → 6); attention at the lowest level (more with attention_levels). Each must be a multiple of 8. Measured on 2 CPU cores: more steps beat more width for a fixed time.")
    layers_per_block: int = Field(1, ge=1, le=4, description="ResNet layers per U-Net block.")
    attention_levels: int = Field(1, ge=1, le=4, description="Version 3. How many of the lowest U-Net levels have self-attention: 1 = only 6×6 (version 2's model), 2 = 12×12 too, so pixels far apart at full resolution can agree (costs time per step); more than the levels block_out_channels has is all of them. Anything but 1 makes pixel24.json version 3, and a base with another value is refused.")
    background_head: bool = Field(False, description="Version 3. Give the model a background head: a small network predicts the picture's background colour (its outer ring's commonest colour) from the caption, that colour is drawn first when sampling and the U-Net is told it, so the whole background is one colour that follows the caption. Off = version 2's model, which sees the whole picture only at 6×6 and left backgrounds patchy. A base without a head gets a new one (the rest of the base is kept).")
    background_loss_weight: float = Field(0.2, ge=0, le=10, description="Version 3, with background_head only. Weight of the background head's cross-entropy beside the pixels' (one background colour per image against hundreds of masked pixels); the loss log shows the pixels' part alone, on the held-out loss's scale.")
    recolour_background: float = Field(0.0, ge=0, le=1, description="Version 3, with background_head only. Share of training images whose background (the outer ring's commonest colour and the pixels of that colour touching it) is repainted in the background colour of another training image, the U-Net told the new colour: it learns any background with any figure, where the artist's few images pair each figure with one. The head still learns only from the true caption–colour pairs. 0 = off.")
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
    schedule_steps: int = Field(0, ge=0, le=1_000_000, description="Version 3. The steps the fine-tune's learning-rate cosine spans: 0 = steps (it reaches 10% of the peak at the last step). More than steps stops the run partway down a longer cosine, at a higher rate; with the EMA of the weights that drew better punks for the same steps: 4,000 of 19,000 read 0.67 where 4,000 of 4,000 read 0.73 (benchmarks/README.md, \"The 80-minute row\").")
    fast_step: bool = Field(False, description="Version 3. A faster training step with the same loss: logits only for the masked pixels the loss reads (not every pixel × every palette colour), and AdamW's fused kernel. The sums are rounded in another order, so a run trained with it is not version 2's byte for byte (off keeps those exact); measured 1.09x the steps per second on 2 CPU cores (benchmarks/README.md, `fast_step`).")
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
    refine_components: int = Field(0, ge=0, le=576, description="Version 3. Refine by connected component: an area of one colour of at most this many pixels is scored and re-drawn whole (a blotch of wrong pixels props itself up when each of its pixels is scored with the others shown); larger areas are scored per pixel. 0 = per pixel only (version 2).")
    refine_rare_colours: int = Field(0, ge=0, le=64, description="Version 3. Refinement also re-draws the pixels of every colour that covers at most this many pixels of an image, and every re-drawn pixel takes one of the image's other colours (the real punks have a median of one colour on a single pixel; stray one-off colours raise that count). 0 = off (version 2).")
    background_temperature: float = Field(1.0, gt=0, le=5, description="Version 3, with background_head only. Sampling temperature of the background colour the head draws before any pixel (guided like the pixels): lower keeps to the colour the caption names most often.")
    background_from_caption: bool = Field(False, description="Version 3, with background_head only. When a prompt names its background's colour (\"deep purple background\"; read as the report's caption adherence reads it, by bespoke_kohya.metrics' colour-name table), the head draws the background only among the palette colours of that name; a prompt naming none, or a colour the palette lacks, leaves the head free. The head alone learns colour words from a few hundred captions and often drew another colour.")
    background_repaint: bool = Field(False, description="Version 3, with background_head only. After MaskGIT, repaint each image's background (its outer ring's commonest colour and the pixels of it touching the ring: what recolour_background repaints in training) in the colour the head drew, before refinement; the U-Net, told a colour, still sometimes draws another.")
    background_flatten: float = Field(0.0, ge=0, le=50, description="Version 3, with background_head only. After refinement, paint every pixel within this ΔE76 of the background colour the head drew, and reached from the outer ring through such pixels, that exact colour: the U-Net draws a background as a grain of near shades of it, where the artist's is one flat colour. 0 = off; a figure's colour this close to the background and touching it is painted too, so keep it small.")
    sample_batch: int = Field(16, ge=1, le=1024, description="Version 3. Images per forward pass when drawing. Fixed per run, so a seed's image never depends on its batch-mates; another value changes the pixels slightly (CPU kernels round differently), so version 2 runs keep 16. Larger batches draw faster on a GPU.")
    compile: bool = Field(False, description="Version 3. Draw through torch.compile of the U-Net (the fixed batch shape compiles once per process): faster drawing once compiled (many candidates in `generate`; benchmarks/README.md), at the cost of compiling first (about 20-90 s per process) and of needing a C++ compiler (g++ or clang++). Training always runs the eager network: torch 2.13's compiler computes wrong gradients for this U-Net (a run trained through it drew flat punks, two-sample 0.93 against 0.78), and the real run was only 1.03x faster. The compiled kernels round differently, so a seed may draw slightly different pixels than without it.")
    guided_steps: int = Field(0, ge=0, le=576, description="Version 3. Only the first this many of the sample_steps MaskGIT steps use classifier-free guidance; the later ones, which fill the last pixels with most of the picture drawn, run the captioned pass alone (half the images per pass: faster drawing). 0 = every step guided (version 2).")
    refine_guidance: bool = Field(True, description="Version 3. Refinement scores and re-draws pixels with classifier-free guidance, as MaskGIT draws them; false: with the captioned pass alone (half the images per refinement pass: faster drawing).")
    fast_draw: bool = Field(False, description="Version 3. Faster drawing from the same model and distribution: each pass projects only the pixels it draws (or refinement scores) onto the palette, guidance mixes the U-Net's features before that one projection, and each pixel's colour is drawn by inverse CDF from one random number instead of Gumbel noise over the whole palette. A seed draws other pixels than without it (off keeps version 2's pictures exact); measured on 2 CPU cores in benchmarks/README.md, `fast_draw`.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Training seed (weights, data order, masks; 0 to 2**32-1).")

    def sampler_options(self) -> dict[str, Any]:
        """The keyword arguments ``pixel24.sample`` draws with under these settings (also recorded with the samples).

        Version 3's sampler parts only when set: their defaults draw as version 2 did, and a version-2 run's record stays as it was.
        """
        options = {"steps": self.sample_steps, "guidance_scale": self.guidance_scale, "temperature": self.temperature, "refine_rounds": self.refine_rounds,
                   "refine_share": self.refine_share, "refine_steps": self.refine_steps, "refine_temperature": self.refine_temperature}
        parts = self.version_3_parts()
        options.update({SAMPLER_OPTIONS[name]: parts[name] for name in SAMPLER_OPTIONS if name in parts})
        return options

    def version_3_parts(self) -> dict[str, Any]:
        """The version-3 settings these settings use (those not at their defaults), by name; empty for a version-2 model."""
        return self._not_default(VERSION_3_FIELDS)

    def _not_default(self, names: tuple[str, ...]) -> dict[str, Any]:
        """Those of the settings ``names`` that are not at their defaults, by name."""
        fields = type(self).model_fields
        return {name: getattr(self, name) for name in names if getattr(self, name) != fields[name].default}

    @field_validator("block_out_channels")
    @classmethod
    def _channels_multiple_of_8(cls, value: list[int]) -> list[int]:
        bad = [c for c in value if c < 8 or c % 8]
        if bad:
            raise ValueError(f"every width must be a multiple of 8 (at least 8), got {value}")
        return value

    @model_validator(mode="after")
    def _head_settings_need_the_head(self) -> "Pixel24Settings":
        if not self.background_head:
            set_alone = list(self._not_default(HEAD_ONLY_FIELDS))
            if set_alone:
                raise ValueError(f"{', '.join('pixel24.' + n for n in set_alone)} act only through the background head, which is off: "
                                 f"also set pixel24.background_head = true, or leave {'them' if len(set_alone) > 1 else 'it'} at the default")
        return self

    @model_validator(mode="after")
    def _fits_in_memory(self) -> "Pixel24Settings":
        n = unet_parameters(self.block_out_channels, self.layers_per_block, self.colour_dim, self.feature_dim, self.attention_levels)
        if self.background_head:
            n += background_head_parameters(self.block_out_channels, self.colour_dim, self.feature_dim)
        if n > MAX_PIXEL24_PARAMETERS:
            raise ValueError(
                f"block_out_channels {self.block_out_channels} with layers_per_block {self.layers_per_block} make a U-Net of about "
                f"{n / 1e6:,.0f} million parameters (~{n * TRAINING_BYTES_PER_PARAMETER / 1e9:,.0f} GB to train); the limit is "
                f"{MAX_PIXEL24_PARAMETERS / 1e6:,.0f} million: set smaller pixel24.block_out_channels (default [32, 64, 64]) or pixel24.layers_per_block"
            )
        return self


class Pixel24Preset(Preset):
    """A preset trained by the native pixel24 model, in this process, on a CPU."""

    section: ClassVar[str] = "pixel24"

    engine: Literal["pixel24"] = Field(description="`pixel24`: the native 24×24 model (CPU).")
    pixel24: Pixel24Settings | None = Field(None, description="Native model settings (pixel24 presets only).")

    @property
    def settings(self) -> Pixel24Settings:
        """The [pixel24] table (always present once validated)."""
        return self.pixel24  # type: ignore[return-value]
