"""Engines: what trains a run and draws its samples, behind one small protocol.

`train` and `sample` never ask which engine a run uses; they look it up here by the
preset's ``engine`` name and call the protocol. A new engine is one module in this
package that defines ``ENGINE`` plus a preset with ``engine = "<its name>"`` (and its
settings table in presets.py).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from ..errors import UserError
from ..runfolder import Status
from ..runfolder.records import Failure, RunHandle

# engine name (a preset's `engine`) -> module defining ENGINE; modules are imported on use (torch, diffusers are heavy).
REGISTRY = {"kohya": "kohya", "pixel24": "pixel24"}


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
    dataset_dir: Path | None = None
    progress: bool = True


@dataclass(frozen=True)
class SampleJob:
    """One epoch column: the checkpoint to draw with, or ``None`` for the base model alone (epoch 0).

    ``if_missing``: skip it when samples.json already holds this epoch drawn with the same suite
    (the base drawn by default is drawn once, not again by every later `sample`, `train` or `report`).
    """

    epoch: int
    checkpoint: Path | None
    if_missing: bool = False


@dataclass
class Outcome:
    """How a training session ended; the verb writes it to run.json."""

    status: Status
    exit_code: int | None = None
    failure: Failure | None = None


Progress = Callable[[dict[str, Any]], None]


class EpochSampler(Protocol):
    """A loaded model, ready to draw the suite once per epoch."""

    warnings: list[str]

    def check(self, prompts: list[str], seeds: list[int], jobs: list[SampleJob]) -> None:
        """Refuse a suite or checkpoint this engine cannot draw, then load the model (before any epoch is drawn)."""

    def settings(self, prompts: list[str], seeds: list[int], options_record: dict[str, Any]) -> dict[str, Any]:
        """What decides how the images look, apart from the checkpoint (samples.json `settings`)."""

    def draw(self, job: SampleJob, prompts: list[str], seeds: list[int], write: Callable[[Any, str, str, int], None]) -> dict[str, Any]:
        """Draw every prompt × seed with ``job``'s checkpoint, handing each full image to ``write(image, prompt_id, prompt, seed)``.

        Returns extra fields for the epoch's samples.json entry (e.g. the checkpoint's metadata).
        """


class Engine(Protocol):
    name: str
    native_art: bool  # True: draws 24x24 art directly (no upscale before training, no downscale after)
    # True: a base model exists to draw without the trained part, so sampling draws it as epoch 0 by default
    # (the report then shows what training changed); --no-include-base turns it off.
    samples_base: bool

    def write_config(self, run_dir: Path, preset: Any, run_id: str) -> None:
        """Write the engine's own files into ``run_dir/config`` when a run is rendered (or re-rendered)."""

    def blockers(self, preset: Any, cpu: bool) -> list[tuple[str, str]]:
        """(reason, fix) for each thing that keeps a run from training on this machine (reproduce lists them)."""

    def prepare(self, preset: Any, options: TrainOptions) -> list[str]:
        """Before a run is rendered: check the tools it needs (a UserError before anything is written, warnings
        to ``options.warn``); returns overrides the options imply (e.g. --cpu precision)."""

    def default_dataset(self, console: Any) -> Path | None:
        """A dataset to train on when none is given and dataset/ is empty (None: the user must give one)."""

    def plan(self, run: RunHandle, options: TrainOptions) -> list[str]:
        """Record in ``run.record`` how this session trains (command, resume point); returns the command to show.

        A resumed run is checked again first, as ``prepare`` checks a new one."""

    def train(self, run: RunHandle, options: TrainOptions, progress: Progress) -> Outcome:
        """Train, or resume from the run's own saved state; each epoch's checkpoint goes into run.json as it is written."""

    def sampler(self, run: RunHandle, options: SampleOptions) -> EpochSampler:
        """Load what draws this run's samples, once for every epoch."""


def get_engine(name: str) -> Engine:
    """The engine a preset names, or a UserError listing the known ones."""
    if name not in REGISTRY:
        raise UserError(f"engine {name!r} is unknown; presets may use {', '.join(sorted(REGISTRY))}")
    return importlib.import_module(f"{__name__}.{REGISTRY[name]}").ENGINE
