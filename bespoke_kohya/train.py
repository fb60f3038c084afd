"""`train`: make a run directory, then train it with the engine its preset names.

The run directory is created atomically (render), `run.json` records everything
needed to reproduce and compare it, and its status moves
rendered → running → finished | failed | interrupted. What trains is the engine's
business (bespoke_kohya.engines); this verb never asks which one it is. When training
finishes, every epoch is drawn with the preset's fixed suite (unless --no-sample), so
`report` has pictures to compare straight away.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from rich.console import Console

from .engines.protocol import TrainOptions
from .engines.session import finish_message, new_run, sample_unsampled, start_session, train_run
from .errors import UserError
from .progress import TrainProgress
from .runfolder import CONFIG, DATA, TRAIN_LOG, Status
from .runfolder.records import RunHandle


def train(options: TrainOptions, console: Console, err_console: Console) -> int:
    """The `train` command: a new run from a preset, or --resume an existing one."""
    if options.resume:
        return resume(Path(options.resume), options, console, err_console)
    run, _ = new_run(options, console, err_console)
    return _session(run, options, console, err_console, fresh=True)


def resume(run_dir: Path, options: TrainOptions, console: Console, err_console: Console) -> int:
    """Train an existing run: start a rendered one, continue an interrupted or failed one, leave a finished one.

    Safe to repeat (a rented GPU box that lost its SSH session): finished work is kept.
    A run's settings are fixed when it is made: --set with --resume is refused, never ignored.
    """
    if options.overrides:
        raise UserError(f"--set {' '.join(options.overrides)}: a run keeps the settings it was made with (run.json); "
                        f"resume {run_dir} without --set, or start a new run with them")
    run = RunHandle.open_to_train(run_dir.resolve())  # refused while another process trains it
    if run.record.status == Status.FINISHED:
        console.print(f"{run.dir}: training already finished ({len(run.record.epochs)} epochs); nothing to train")
        return _sample(run, options, console, err_console)
    return _session(run, options, console, err_console, fresh=False)


def _session(run: RunHandle, options: TrainOptions, console: Console, err_console: Console, fresh: bool) -> int:
    session = start_session(run, options)
    if options.dry_run:
        if fresh:
            run.save(status=Status.DRY_RUN)
            console.print(f"[green]rendered[/] {run.dir}")
            for line in rendered_files(run.dir):
                console.print(f"  {line}", markup=False, highlight=False)
            console.print("would run, from the run directory:")
        console.print(" ".join(shlex.quote(c) for c in session.command), soft_wrap=True, markup=False)
        return 0
    console.print(f"[bold]training[/] {run.record.preset} in {run.dir} (log: {run.dir / TRAIN_LOG})")
    with TrainProgress(console) as view:
        outcome = train_run(run, session, options, view.update)
    code = finish_message(run, outcome, console, err_console)
    return _sample(run, options, console, err_console) if code == 0 else code


def rendered_files(run_dir: Path) -> list[str]:
    """What render wrote, relative to the run: each file in config/ and each folder in data/ with its image count."""
    lines = [f"{CONFIG}/{p.name}" for p in sorted((run_dir / CONFIG).iterdir()) if p.is_file()] if (run_dir / CONFIG).is_dir() else []
    for folder in sorted((run_dir / DATA).iterdir()) if (run_dir / DATA).is_dir() else []:
        if folder.is_dir() and not folder.name.startswith("."):
            lines.append(f"{DATA}/{folder.name}/ ({sum(1 for p in folder.glob('*.png'))} images)")
    return lines


def _sample(run: RunHandle, options: TrainOptions, console: Console, err_console: Console) -> int:
    """Draw the finished epochs that have no samples yet (all of them after a fresh run); then say what comes next."""
    if options.sample:
        try:
            sample_unsampled(run.dir, console, err_console, "training finished", device="cpu" if options.cpu else None)
        except UserError as exc:
            # The checkpoints are safe; only the pictures are missing, and report draws what is missing.
            raise UserError(f"training finished, but sampling failed: {exc}\nfix that, then run `bespoke-kohya report --run {shlex.quote(str(run.dir))}` (it samples what is missing)") from None
    console.print(f"next: bespoke-kohya report --run {shlex.quote(str(run.dir))}")
    return 0
