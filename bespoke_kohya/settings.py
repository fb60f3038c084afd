"""The preset sections every engine shares (dataset preparation, the sampling suite) and the base of every preset.

An engine adds its own section by subclassing :class:`Preset` in its package
(``engines/<name>/settings.py``); ``presets.py`` picks the subclass by the preset's
``engine`` and validates the file against it. The field descriptions are the reference
manual (``bespoke-kohya presets --explain``).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .paths import ART


# Seeds go to numpy's legacy RandomState (sd-scripts via accelerate's set_seed), which
# takes at most 32 bits; torch and numpy's Generator take more, so 32 bits suits all.
MAX_SEED = 2**32 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
# A sampling suite is drawn for every epoch and shown as one grid, so it is bounded: these are far above
# any useful suite (the presets draw 4 × 4) and keep one epoch's drawing and its page to a sane size.
MAX_SEEDS = 1000
MAX_PROMPTS = 1000
MAX_SUITE_IMAGES = 10_000  # prompts × seeds per epoch


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
        max_length=MAX_PROMPTS,
        description=f"Attribute variations appended to the trigger (drawn from the dataset's captions); at most {MAX_PROMPTS}.",
    )
    suffix: str = Field("hard color borders, sharp pixel edges", description="Phrase every prompt ends with.")
    negative_prompt: str = Field("blurry, anti-aliasing, gradient, body, torso, text, watermark", description="Negative prompt (diffusion presets).")
    seeds: list[Seed] = Field(default_factory=lambda: [1, 2, 3, 4], min_length=1, max_length=MAX_SEEDS,
                              description=f"Seeds (0 to 2**32-1, each once, at most {MAX_SEEDS}); every epoch uses the same ones so epochs are comparable.")
    heldout_seeds: int = Field(2, ge=0, le=16, description="Also draw each held-out image's own caption (dataset.validation_split) with the first this-many `seeds`, so the report can set each sample beside the real image its caption describes. 0: don't.")
    heldout_captions: int = Field(20, ge=0, le=500, description="At most this many held-out images' captions are drawn each epoch (evenly spread over the held-out files, the same ones every time); the held-out loss still uses every held-out image. A large dataset holds out many (the 10,000-image stand-in: 1,000, which would be 2,000 extra images an epoch); 20 × 2 seeds keep the report's pairs and two-sample test meaningful at a minute of drawing.")
    steps: int = Field(30, ge=1, le=500, description="Denoising steps (documented: 30). pixel24 uses pixel24.sample_steps instead.")
    guidance_scale: float = Field(7.5, ge=0, le=30, description="Classifier-free guidance scale (documented: 7.5). pixel24 uses pixel24.guidance_scale instead.")
    scheduler: Literal["euler_a", "euler", "ddim", "dpmsolver++", "pndm"] = Field("euler_a", description="Sampler/scheduler.")
    width: int | None = Field(None, ge=64, le=2048, multiple_of=8, description="Sample width; defaults to the training resolution.")
    height: int | None = Field(None, ge=64, le=2048, multiple_of=8, description="Sample height; defaults to the training resolution.")
    postprocess: Literal["grid", "nearest"] = Field("grid", description="How full-size samples become 24×24: `grid` (detect the art-pixel grid, median of each cell) or `nearest` (the documented baseline).")
    palette_max_delta_e: float | None = Field(4.0, ge=0, le=50, description="Snap colours to the training palette only when closer than this ΔE76; unset disables snapping.")
    merge: Literal["auto", "on", "off"] = Field("auto", description="Merge the image's own near-identical colours (ΔE < 3) before snapping: auto = only when the render is noisy.")
    max_colors: int | None = Field(None, ge=2, le=256, description="Cap the colours of each 24×24 result (median cut, no dithering); unset keeps them. Bespoke Punks use 13–50 (5th–95th percentile).")

    @field_validator("seeds")
    @classmethod
    def _seeds_once(cls, value: list[int]) -> list[int]:
        # Each seed names one image file per prompt: a repeat would be drawn twice into the same file and fail every sampling.
        seen: set[int] = set()
        repeated = sorted({s for s in value if s in seen or seen.add(s)})  # linear: a suite may hold many seeds
        if repeated:
            raise ValueError(f"{', '.join(map(str, repeated[:5]))} listed more than once; give each seed once")
        return value

    @model_validator(mode="after")
    def _suite_size(self) -> "SampleSettings":
        if len(self.prompts) * len(self.seeds) > MAX_SUITE_IMAGES:
            raise ValueError(f"{len(self.prompts)} prompts × {len(self.seeds)} seeds make {len(self.prompts) * len(self.seeds):,} images per epoch; "
                             f"the limit is {MAX_SUITE_IMAGES:,}: give fewer prompts or seeds")
        return self

    def full_prompts(self) -> list[str]:
        """The prompt suite as sent to the model."""
        return [self.full_prompt(body) for body in self.prompts]

    def full_prompt(self, body: str) -> str:
        """One prompt as sent to the model: the trigger, ``body`` (e.g. "lady, blonde hair, purple background"), the suffix."""
        from .captions import normalise_caption  # glued words in a prompt reach the model as words

        return f"{self.trigger} {normalise_caption(body)}" + (f", {self.suffix}" if self.suffix else "")




class Preset(_Strict):
    """A training preset: one file in `presets/`. Each engine's subclass adds its own section (a table named like the engine)."""

    name: str = Field(pattern=r"^[a-z0-9_]+$", description="Preset name (the file stem).")
    description: str = Field(description="One line shown by `bespoke-kohya presets`.")
    engine: str = Field(description="What trains the run: `kohya` (LoRA through sd-scripts; needs a GPU for real use) or `pixel24` (the native 24×24 model, CPU). Each engine reads its own table.")
    experimental: str | None = Field(None, description="Set on presets that are known not to work reliably; the text says why. Using one needs `--experimental`.")
    dataset: DatasetSettings = Field(default_factory=DatasetSettings, description="Training-folder preparation.")
    sample: SampleSettings = Field(default_factory=SampleSettings, description="Per-epoch sampling for the report.")

    # The name of the engine's own section (its table in the preset file); set by each engine's subclass.
    section: ClassVar[str] = ""

    @model_validator(mode="after")
    def _needs_its_table(self) -> "Preset":
        if self.section and getattr(self, self.section, None) is None:
            raise ValueError(f"engine {self.engine!r} needs a [{self.section}] table")
        return self

    @property
    def settings(self) -> Any:
        """The engine's own table (always present once validated)."""
        return getattr(self, self.section)

    @property
    def resolution(self) -> int:
        """Training resolution in px: the size data/ is prepared at (24, the art itself, unless the engine upscales)."""
        return ART

    @property
    def sample_size(self) -> tuple[int, int]:
        """(width, height) of full-size samples."""
        return (self.sample.width or self.resolution, self.sample.height or self.resolution)

    def usable_problems(self) -> list[str]:
        """Why this valid preset cannot be used as it is (e.g. a local base that does not exist), each with the fix."""
        return []
