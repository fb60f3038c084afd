"""The engine protocol: what every verb may ask an engine, with typed arguments, and the defaults.

An engine subclasses :class:`BaseEngine` (which answers every optional question for an
engine with no tools, no base model and no documented recipe) and implements the rest:
``name``, ``preset_class``, ``train`` and ``sampler``. The verbs (`train`, `sample`,
`report`, `reproduce`, `bundle`, `generate`, `doctor`) call only what is declared here.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Generic, NamedTuple, Protocol, TypeVar

from ..runfolder import Status
from ..runfolder.records import Failure, RunHandle
from ..settings import Preset


@dataclass(frozen=True)
class TrainOptions:
    """`bespoke-kohya train` as typed values (the CLI builds it; reproduce and smoke too)."""

    preset: str | None = None
    overrides: list[str] = field(default_factory=list)
    experimental: bool = False
    dataset: Path | None = None
    run_dir: Path | None = None
    resume: Path | None = None
    dry_run: bool = False
    num_gpus: int = 1
    cpu: bool = False
    skip_preflight: bool = False  # launch without the engine's pre-flight checks (kohya: GPU, base model, memory, disk, sd-scripts)
    # Where an engine's warnings go before training (pre-flight findings that do not stop it); the verb prints them.
    warn: Callable[[str], None] = field(default=lambda _line: None, compare=False, repr=False)
    sample: bool = True  # draw each finished epoch with the preset's suite once training ends (--no-sample: don't)


@dataclass(frozen=True)
class SampleOptions:
    """How to draw a run's epochs: the suite, the device, and the base to draw on (engines that have one)."""

    epochs: list[int] | None = None
    prompts: list[str] | None = None
    seeds: list[int] | None = None
    device: str | None = None
    include_base: bool = False  # resolved: --include-base/--no-include-base, else the engine's `samples_base`
    base_override: str | None = None
    progress: bool = True
    # `sample --control DIR`: 24×24 images a sampler that draws from a picture follows (EpochSampler.takes_images);
    # a sampler that draws from prompts alone is refused it.
    control: Path | None = None


@dataclass(frozen=True)
class SampleJob:
    """One epoch column: the checkpoint to draw with, or ``None`` for the base model alone (epoch 0).

    ``if_missing``: skip it when samples.json already holds this epoch drawn with the same suite
    (the base drawn by default is drawn once, not again by every later `sample`, `train` or `report`).
    """

    epoch: int
    checkpoint: Path | None
    if_missing: bool = False


@dataclass(frozen=True)
class TrainSession:
    """How one training session of a run goes, decided before it starts (`Engine.start_session`).

    ``command``: what is run (or would be, with --dry-run), shown to the user and kept in run.json;
    ``resume_from``: the saved state it continues from (a path inside the run), with the optimiser
    step and epoch that state was saved after, when known.
    """

    command: list[str]
    resume_from: str | None = None
    resume_step: int | None = None
    resume_epoch: int | None = None


@dataclass
class Outcome:
    """How a training session ended; the verb writes it to run.json."""

    status: Status
    exit_code: int | None = None
    failure: Failure | None = None


class Blocker(NamedTuple):
    """Something that keeps a run from training on this machine, and what fixes it."""

    reason: str
    fix: str


@dataclass(frozen=True)
class BaseRef:
    """What a run starts from, as a bundle needs to know it (`Engine.base_model`).

    ``key``: the preset field holding it (dotted); ``value``: its value (None: nothing to start from
    or the engine's own built-in start); ``hub``: the value is a hub id the engine downloads itself
    (a bundle cannot pack it), not a local file or folder.
    """

    key: str
    value: str | None
    hub: bool = False


@dataclass(frozen=True)
class RecipeCheck:
    """A preset compared with the documented recipe it claims to follow (`reproduce` step 2)."""

    what: str  # e.g. "train.toml equals the documented config key by key (14 keys)"
    differences: list[str]  # "key: documented → rendered", empty when it matches
    evidence: str  # what matched, for the table when nothing differs


@dataclass(frozen=True)
class Check:
    """One pre-flight finding for `doctor --preset`: level is ok, warning, error or skipped."""

    name: str
    level: str
    message: str


DoctorRow = tuple[str, bool, str, str]  # component, ok, status, how to fix
Progress = Callable[[dict[str, Any]], None]
ImageWriter = Callable[[Any, str, str, int], None]  # (full-size PIL image, prompt id, prompt, seed)


class EpochSampler(Protocol):
    """A loaded model, ready to draw the suite once per epoch.

    Optional: ``takes_images = True`` says the sampler draws each prompt from a picture (a
    ControlNet follows an image's structure). `draw` then also takes ``images``: the prepared
    training image (a file name in the run's data/) each prompt describes, given for held-out
    captions, so each is drawn from its own image; and `sample --control DIR` applies to it.
    """

    warnings: list[str]

    def check(self, prompts: list[str], seeds: list[int], jobs: list[SampleJob]) -> None:
        """Refuse a suite or checkpoint this engine cannot draw, then load the model (before any epoch is drawn)."""

    def settings(self, prompts: list[str], seeds: list[int], options_record: dict[str, Any]) -> dict[str, Any]:
        """What decides how the images look, apart from the checkpoint (samples.json `settings`)."""

    def draw(self, job: SampleJob, prompts: list[str], seeds: list[int], write: ImageWriter) -> dict[str, Any]:
        """Draw every prompt × seed with ``job``'s checkpoint, handing each full image to ``write(image, prompt_id, prompt, seed)``.

        Prompt ids are :func:`bespoke_kohya.sample.prompt_ids` of ``prompts`` in order. Returns extra
        fields for the epoch's samples.json entry (e.g. the checkpoint's metadata).
        """


P = TypeVar("P", bound=Preset)


class Engine(Protocol[P]):
    """What trains a run and draws its samples. See :class:`BaseEngine` for each member's default."""

    name: str
    preset_class: type[P]
    samples_base: bool
    resume_only: tuple[str, ...]

    def describe(self, preset: P) -> dict[str, str]: ...
    def write_config(self, run_dir: Path, preset: P, run_id: str) -> list[str]: ...
    def check_machine(self, preset: P, options: TrainOptions) -> None: ...
    def implied_overrides(self, preset: P, options: TrainOptions) -> list[str]: ...
    def blockers(self, preset: P, cpu: bool) -> list[Blocker]: ...
    def default_dataset(self, console: Any) -> Path | None: ...
    def start_session(self, run: RunHandle, options: TrainOptions) -> TrainSession: ...
    def train(self, run: RunHandle, session: TrainSession, options: TrainOptions, progress: Progress) -> Outcome: ...
    def sampler(self, run: RunHandle, options: SampleOptions) -> EpochSampler: ...
    def base_model(self, preset: P) -> BaseRef | None: ...
    def with_base(self, preset: P, value: str) -> P: ...
    def bundle_fields(self, preset: P) -> dict[str, Any]: ...
    def recipe_check(self, preset: P) -> RecipeCheck | None: ...
    def register_commands(self, commands: "CommandGroups") -> None: ...
    def doctor_rows(self, repo_root: Path) -> list[DoctorRow]: ...
    def preflight_checks(self, preset: P, repo_root: Path, dataset: Path, cpu: bool) -> list[Check]: ...


@dataclass(frozen=True)
class CommandGroups:
    """Where an engine adds its own subcommands: ``top`` (``bespoke-kohya NAME``) and ``dataset`` (``bespoke-kohya dataset NAME``)."""

    top: argparse._SubParsersAction
    dataset: argparse._SubParsersAction


class BaseEngine(Generic[P]):
    """Defaults for every optional member, right for an engine that trains in this process from nothing."""

    name: ClassVar[str] = ""
    preset_class: ClassVar[type[Preset]] = Preset
    # True: a base model exists to draw without the trained part, so sampling draws it as epoch 0 by default
    # (the report then shows what training changed); --no-include-base turns it off.
    samples_base: ClassVar[bool] = False
    # Files (globs relative to the run) needed only to resume training: bundles leave them on the GPU box.
    resume_only: ClassVar[tuple[str, ...]] = ()

    def describe(self, preset: P) -> dict[str, str]:
        """Columns of `bespoke-kohya presets` (script, dim/alpha, epochs, lr); missing ones print as '-'."""
        return {}

    def write_config(self, run_dir: Path, preset: P, run_id: str) -> list[str]:
        """Write the engine's own files into ``run_dir/config`` when a run is rendered; returns warnings about the preset."""
        return []

    def check_machine(self, preset: P, options: TrainOptions) -> None:
        """Before a new run is written: refuse (UserError) what would make training fail here; warnings go to ``options.warn``."""

    def implied_overrides(self, preset: P, options: TrainOptions) -> list[str]:
        """`--set` values the options imply (e.g. --cpu: no fp16), added to the run's overrides."""
        return []

    def blockers(self, preset: P, cpu: bool) -> list[Blocker]:
        """Each thing that keeps a run from training on this machine, with the fix (reproduce lists them)."""
        return []

    def default_dataset(self, console: Any) -> Path | None:
        """A dataset to train on when none is given and dataset/ is empty (None: the user must give one)."""
        return None

    def start_session(self, run: RunHandle, options: TrainOptions) -> TrainSession:
        """Decide how this session trains and record its command in ``run.record``; a resumed run is checked again first.

        Default: this package's own `train` command line (the engine trains in this process)."""
        r = run.record
        command = ["bespoke-kohya", "train", "--preset", r.preset, "--dataset", r.dataset.path] + [f"--set={o}" for o in r.overrides]
        r.command, r.cwd = command, str(Path.cwd())
        return TrainSession(command)

    def train(self, run: RunHandle, session: TrainSession, options: TrainOptions, progress: Progress) -> Outcome:
        """Train, or resume from the run's own saved state; each epoch's checkpoint goes into run.json as it is written."""
        raise NotImplementedError

    def sampler(self, run: RunHandle, options: SampleOptions) -> EpochSampler:
        """Load what draws this run's samples, once for every epoch."""
        raise NotImplementedError

    def base_model(self, preset: P) -> BaseRef | None:
        """What the run starts from, for bundles (None: nothing outside the run)."""
        return None

    def with_base(self, preset: P, value: str) -> P:
        """The same preset starting from ``value`` (a bundle's relocated or `BASE_MODEL=` base)."""
        raise NotImplementedError(f"the {self.name} engine has no base model to change")

    def bundle_fields(self, preset: P) -> dict[str, Any]:
        """What bundle.json should record for go.sh's hooks (e.g. the tools' version to install on the box)."""
        return {}

    def recipe_check(self, preset: P) -> RecipeCheck | None:
        """The preset against the documented recipe (`reproduce` step 2); None: the engine has no documented recipe."""
        return None

    def register_commands(self, commands: CommandGroups) -> None:
        """Add the engine's own subcommands (e.g. installing its tools)."""

    def doctor_rows(self, repo_root: Path) -> list[DoctorRow]:
        """`doctor`: the engine's tools and models, each with how to get it."""
        return []

    def preflight_checks(self, preset: P, repo_root: Path, dataset: Path, cpu: bool) -> list[Check]:
        """`doctor --preset P`: the checks `train` makes before launching (none for an engine without tools)."""
        return []


# ------------------------------------------------------------------ helpers every sampler uses


def prompt_ids(prompts: list[str]) -> list[str]:
    """``p01``, ``p02``, … in suite order (zero-padded so files sort like the suite): the ids a sampler hands to ``write``."""
    width = max(2, len(str(len(prompts))))
    return [f"p{i + 1:0{width}d}" for i in range(len(prompts))]


def pair_prompt_ids(pairs: list[tuple[str, int]]) -> dict[str, str]:
    """Each distinct prompt of (prompt, seed) pairs -> its id, in order of first appearance (as `prompt_ids` numbers a suite)."""
    prompts = list(dict.fromkeys(p for p, _ in pairs))
    return dict(zip(prompts, prompt_ids(prompts)))


def draw_pairs(sampler: EpochSampler, job: SampleJob, pairs: list[tuple[str, int]], write: ImageWriter) -> None:
    """Draw each (prompt, seed) of ``pairs`` with ``job``'s checkpoint (a collection's candidates: every token its own prompt).

    A sampler that can batch arbitrary pairs has ``draw_pairs(job, pairs, write)``; otherwise each pair is one ``draw``.
    """
    own = getattr(sampler, "draw_pairs", None)
    if own is not None:
        own(job, pairs, write)
        return
    for prompt, seed in pairs:
        sampler.draw(job, [prompt], [seed], write)


def check_suite(prompts: list[str], seeds: list[int], size: tuple[int, int], factor: int = 8) -> None:
    """Refuse an empty or ambiguous suite before any model time is spent (``factor``: what width and height must divide by)."""
    from ..errors import UserError

    from ..settings import MAX_PROMPTS, MAX_SEEDS, MAX_SUITE_IMAGES

    if not prompts or any(not p.strip() for p in prompts):
        raise UserError("sample: the prompt suite is empty or has an empty prompt; give at least one prompt")
    if not seeds:
        raise UserError("sample: no seeds given; give at least one, e.g. --seeds 1,2,3,4")
    if len(prompts) > MAX_PROMPTS or len(seeds) > MAX_SEEDS or len(prompts) * len(seeds) > MAX_SUITE_IMAGES:
        raise UserError(f"sample: {len(prompts)} prompt(s) × {len(seeds)} seed(s) is more than a suite may hold (at most {MAX_PROMPTS} prompts, "
                        f"{MAX_SEEDS} seeds and {MAX_SUITE_IMAGES:,} images per epoch); give fewer")
    seen: set[int] = set()
    dupes = sorted({s for s in seeds if s in seen or seen.add(s)})  # linear: a suite may hold thousands of seeds
    if dupes:
        raise UserError(f"sample: seeds repeat ({', '.join(map(str, dupes))}); each seed names one image file, give each once")
    if any(s < 0 for s in seeds):
        raise UserError(f"sample: seeds must be ≥ 0, got {seeds}")
    if size[0] % factor or size[1] % factor or min(size) < factor:
        raise UserError(f"sample: width and height must be multiples of {factor} (the VAE downsamples {factor}×), got {size[0]}x{size[1]}")
