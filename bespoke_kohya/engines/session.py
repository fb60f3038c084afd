"""Making a run and training it by its engine: the one sequence `train`, `reproduce`, `smoke` and `bundle` share.

`new_run` resolves the preset (the engine checks the machine and adds the overrides the
options imply), finds the dataset and renders the folder with its first run.json
(`create_run`). `train_run` asks the engine how this session trains, then moves the status
rendered/interrupted/failed → running → the engine's outcome, so a run folder always says
how far it got. `sample_unsampled` draws the epochs that have no pictures yet (after
`train`, before `report`), through `sample.sample_run` like `sample` does.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..dataset import check_dataset
from ..errors import UserError
from ..paths import REPO_ROOT
from ..presets import load_preset
from ..render import render
from ..runfolder import CHECKPOINTS, TRAIN_LOG, Status, unsampled_epochs
from ..runfolder.records import CaptionsRef, DatasetRef, RunHandle, RunRecord, package_versions, write_run
from ..runfolder import now_iso
from ..settings import Preset
from . import get_engine
from .protocol import Outcome, Progress, TrainOptions, TrainSession

RUNS_DIR = Path("runs")


def default_run_dir(preset: Preset, prefix: str = "") -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return RUNS_DIR / f"{prefix}{preset.name}-{stamp}"


def resolve_preset(options: TrainOptions) -> tuple[Preset, list[str]]:
    """The preset the options name, with the overrides its engine adds for them (e.g. --cpu precision).

    Unless it is a dry run, the engine first checks the machine can train it (a UserError before
    anything is written; warnings go to ``options.warn``).
    """
    if not options.preset:
        raise UserError("train needs --preset NAME (see `bespoke-kohya presets`), or --resume RUN to continue a run")
    overrides = list(options.overrides)
    preset = load_preset(options.preset, overrides, experimental=options.experimental)
    engine = get_engine(preset.engine)
    if not options.dry_run:
        engine.check_machine(preset, options)
    extra = engine.implied_overrides(preset, options)
    if extra:
        overrides += extra
        preset = load_preset(options.preset, overrides, experimental=options.experimental)
    return preset, overrides


def resolve_dataset(arg: Path | str | None, preset: Preset, console: Any) -> Path:
    """--dataset, else `dataset/` when it holds images, else the engine's stand-in (pixel24: CryptoPunks built on demand)."""
    if arg:
        return Path(arg)
    default = REPO_ROOT / "dataset"
    if any(default.glob("*.png")):
        return default
    standin = get_engine(preset.engine).default_dataset(console)
    if standin is not None:
        return standin
    raise UserError(f"no --dataset given and {default} has no images; put your 24x24 PNGs and .txt captions there or pass --dataset DIR")


def create_run(preset: Preset, overrides: list[str], dataset_dir: Path, run_dir: Path, err_console: Any) -> tuple[RunHandle, Path]:
    """Check the dataset, render the run directory atomically and write its first run.json.

    Returns (the run, the prepared training folder).
    """
    report = check_dataset(dataset_dir, preset.dataset.caption_extension)
    rendered = render(preset, report, run_dir, run_id=run_dir.name)
    run_dir = rendered.run_dir
    for line in rendered.warnings:
        err_console.print(f"[yellow]warning:[/] {line}", markup=True, highlight=False, soft_wrap=True)
    record = RunRecord(
        id=run_dir.name, preset=preset.name, engine=preset.engine, script=getattr(preset, "script", None),
        resolved=preset.model_dump(mode="json"), overrides=overrides,
        dataset=DatasetRef(path=str(dataset_dir.resolve()), content_hash=report.content_hash(), images=len(report.images),
                           captions=CaptionsRef.model_validate(rendered.captions) if rendered.captions else None,
                           heldout=rendered.heldout),
        versions=package_versions(), status=Status.RENDERED, created=now_iso(), epochs={},
    )
    write_run(run_dir, record)
    return RunHandle(run_dir, record), rendered.prepared.folder


def new_run(options: TrainOptions, console: Any, err_console: Any, prefix: str = "") -> tuple[RunHandle, Path]:
    """`train --preset P`: the preset resolved and checked, the dataset found, the run rendered. Returns (run, prepared folder)."""
    preset, overrides = resolve_preset(options)
    dataset_dir = resolve_dataset(options.dataset, preset, console)
    run_dir = Path(options.run_dir) if options.run_dir else default_run_dir(preset, prefix)
    return create_run(preset, overrides, dataset_dir, run_dir, err_console)


def start_session(run: RunHandle, options: TrainOptions) -> TrainSession:
    """How this session of ``run`` trains, decided by its engine (a resumed run is checked again first)."""
    return get_engine(run.record.engine).start_session(run, options)


def train_run(run: RunHandle, session: TrainSession, options: TrainOptions, progress: Progress) -> Outcome:
    """Train (or resume) ``run`` by its engine as ``session`` says; run.json says running, then the outcome."""
    engine = get_engine(run.record.engine)
    # Held while `running` is true: a second trainer is refused, and a killed one frees it (the run then reads interrupted).
    run.claim_training()
    try:
        run.save(status=Status.RUNNING, started=now_iso(), ended=None, exit_code=None, failure=None)
        try:
            outcome = engine.train(run, session, options, progress)
        except UserError:
            run.save(status=Status.FAILED, ended=now_iso())
            raise
        run.save(status=outcome.status, ended=now_iso(), exit_code=outcome.exit_code, failure=outcome.failure)
    finally:
        run.release_training()
    return outcome


def sample_unsampled(run_dir: Path, console: Any, err_console: Any, why: str, device: str | None = None) -> list[int]:
    """Draw every recorded epoch that has no samples yet with the preset's fixed prompts × seeds; returns those epochs.

    After training ends rather than from inside each engine's epoch loop: it needs no engine
    hook, and the images are the same either way (each checkpoint is read back from its file
    and every seed has its own noise generator), so `train`, `report` and `sample` agree.
    Epoch 0, the base alone, is drawn too when the engine has one and it is not drawn yet.
    """
    from ..sample import sample_run

    run = RunHandle.open(run_dir)
    todo = unsampled_epochs(run_dir, base=bool(run.record.checkpoints()) and get_engine(run.record.engine).samples_base)
    if not todo:
        return []
    shown = ["0 (base model)" if e == 0 else str(e) for e in todo]
    console.print(f"[bold]sampling[/] epoch(s) {', '.join(shown)} ({why}) with the preset's prompts × seeds → {run_dir / 'samples'}")
    doc = sample_run(run_dir, epochs=[e for e in todo if e], device=device)
    for line in doc.get("warnings", []):
        err_console.print(f"[yellow]warning:[/] {line}", markup=True, highlight=False, soft_wrap=True)
    return todo


def finish_message(run: RunHandle, outcome: Outcome, console: Any, err_console: Any) -> int:
    """Say how the session ended and what to do next; returns the exit status."""
    if outcome.status == Status.FINISHED:
        console.print(f"[green]finished[/] {len(run.record.epochs)} epoch checkpoint(s) in {run.dir / CHECKPOINTS}")
        return 0
    if outcome.status == Status.INTERRUPTED:
        err_console.print(f"interrupted: run marked interrupted; continue with `bespoke-kohya train --resume {run.dir}`")
        return 130
    failure = outcome.failure
    err_console.print(f"[red]training failed:[/] {failure.cause if failure else None}", soft_wrap=True)
    # A recognised cause is the one line to read; the traceback around it stays in the log.
    for line in failure.tail if failure and not failure.recognised else []:
        err_console.print(f"  {line}", markup=False, soft_wrap=True)
    err_console.print(f"full log: {run.dir / TRAIN_LOG}")
    return 1
