"""`train`: make a run directory, then train it with sd-scripts or the native pixel24 model.

The run directory is created atomically (render), `run.json` records everything
needed to reproduce and compare it, and its status moves
rendered → running → finished | failed | interrupted.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import subprocess
import tempfile
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import __version__
from .dataset import check_dataset
from .errors import UserError
from .jsonfile import write_json_atomic
from .presets import Preset, load_preset
from .render import CHECKPOINTS, TENSORBOARD, render
from .vendor import find_sd_scripts, tokenizer_cache_dir

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNS_DIR = Path("runs")
LOSS_FIELDS = ["step", "epoch", "loss", "avg_loss", "lr"]


# ------------------------------------------------------------------ run.json


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_run(run_dir: Path) -> dict[str, Any]:
    """The run.json of a run directory, or a UserError saying what is wrong."""
    path = run_dir / "run.json"
    if not path.is_file():
        raise UserError(f"{run_dir}: not a run directory (no run.json); pass a folder made by `bespoke-kohya train`")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(), "bespoke_kohya": __version__}
    for dist in ("torch", "diffusers", "transformers", "accelerate"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def epoch_checkpoints(checkpoint_dir: Path, output_name: str, last_epoch: int) -> dict[str, str]:
    """{epoch: path relative to the run} from sd-scripts' naming: NAME-000001.safetensors …, NAME.safetensors for the last."""
    found: dict[str, str] = {}
    if not checkpoint_dir.is_dir():
        return found
    pattern = re.compile(rf"^{re.escape(output_name)}-(\d{{6}})\.safetensors$")
    for path in sorted(checkpoint_dir.iterdir()):
        if m := pattern.match(path.name):
            found[str(int(m.group(1)))] = f"{CHECKPOINTS}/{path.name}"
    final = checkpoint_dir / f"{output_name}.safetensors"
    if final.is_file():
        found[str(last_epoch)] = f"{CHECKPOINTS}/{final.name}"
    return dict(sorted(found.items(), key=lambda kv: int(kv[0])))


def write_loss_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write loss.csv (columns LOSS_FIELDS) via a temporary file and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=LOSS_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in LOSS_FIELDS})
    os.replace(tmp, path)


def read_loss_csv(path: Path) -> list[dict[str, Any]]:
    """The rows of a loss.csv written earlier (numbers parsed; empty cells left out); [] if there is none."""
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for raw in csv.DictReader(f):
            try:
                row: dict[str, Any] = {"step": int(raw["step"])}
            except (KeyError, TypeError, ValueError):
                continue
            for key in LOSS_FIELDS[1:]:
                if raw.get(key):
                    row[key] = int(raw[key]) if key == "epoch" else float(raw[key])
            rows.append(row)
    return rows


# TensorBoard's reader runs in sd-scripts' own environment (it ships tensorboard),
# so our package does not need it; this prints step,tag,value lines for the event
# folders given as arguments.
_TB_EXPORT = """
import sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
for d in sys.argv[1:]:
    acc = EventAccumulator(d, size_guidance={'scalars': 0}); acc.Reload()
    for tag in acc.Tags().get('scalars', []):
        for e in acc.Scalars(tag):
            print(f"{e.step},{tag},{e.value}")
"""
# Per-step scalars sd-scripts' train_network.py logs (epoch averages are logged at step=epoch: skipped).
_STEP_TAGS = {"loss/current": "loss", "loss/average": "avg_loss", "lr/unet": "lr"}


def event_dirs(logdir: Path) -> list[Path]:
    """The folders holding TensorBoard event files under ``logdir``; one per training session, oldest first
    (sd-scripts names them ``<log_prefix><YYYYmmddHHMMSS>/network_train``)."""
    if not logdir.is_dir():
        return []
    return sorted({p.parent for p in logdir.rglob("events.out.tfevents.*")})


def tensorboard_losses(python: Path, dirs: list[Path]) -> list[dict[str, Any]]:
    """Per-step loss/lr rows read from sd-scripts' TensorBoard event folders (empty if unavailable)."""
    if not dirs:
        return []
    try:
        out = subprocess.run([str(python), "-c", _TB_EXPORT, *map(str, dirs)], capture_output=True, text=True, timeout=300, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    rows: dict[int, dict[str, Any]] = {}
    for line in out.splitlines():
        step_s, tag, value_s = line.split(",", 2)
        if tag in _STEP_TAGS:
            rows.setdefault(int(step_s), {"step": int(step_s)})[_STEP_TAGS[tag]] = float(value_s)
    return [rows[s] for s in sorted(rows)]


def merge_losses(previous: list[dict[str, Any]], session: list[dict[str, Any]], resume_step: int | None) -> list[dict[str, Any]]:
    """The loss series of a run after one more training session.

    A session resumed from a state saved after ``resume_step`` steps keeps the earlier
    rows up to that step (later ones were trained again) and continues after it.
    sd-scripts v0.10.1 restarts its TensorBoard step count when it resumes at an epoch
    boundary (`global_step = initial_step` after the skipped epochs, train_network.py),
    so such a session's steps are shifted to follow ``resume_step``; a version that
    keeps counting is left as it is. A fresh session replaces everything.
    """
    if not resume_step:
        return session
    kept = [r for r in previous if r["step"] <= resume_step]
    first = min((r["step"] for r in session), default=resume_step + 1)
    shift = resume_step - (first - 1) if first <= resume_step else 0
    return kept + [{**r, "step": r["step"] + shift} for r in session]


def state_step(state_dir: Path) -> int | None:
    """The optimizer steps done when sd-scripts saved a `-state` folder (its train_state.json), if recorded."""
    try:
        return int(json.loads((state_dir / "train_state.json").read_text(encoding="utf-8"))["current_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ------------------------------------------------------------------ progress


class TrainProgress:
    """A rich progress bar fed by step events (from sd-scripts' output or pixel24)."""

    def __init__(self, console: Console, total: int | None = None) -> None:
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            TextColumn("step {task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]} avg {task.fields[avg]}"),
            TextColumn("{task.fields[speed]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task("train", total=total, epoch="-", loss="-", avg="-", speed="")

    def __enter__(self) -> "TrainProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, data: dict[str, Any]) -> None:
        fields: dict[str, Any] = {}
        if "epoch" in data:
            fields["epoch"] = f"{data['epoch']}/{data['epochs']}" if data.get("epochs") else str(data["epoch"])
        if data.get("loss") is not None:
            fields["loss"] = f"{data['loss']:.4f}"
        avg = data.get("avg_loss", data.get("avr_loss"))
        if avg is not None:
            fields["avg"] = f"{avg:.4f}"
        if data.get("images_per_s"):
            fields["speed"] = f"{data['images_per_s']:.0f} img/s"
        elif data.get("it_per_s"):
            fields["speed"] = f"{data['it_per_s']:.2f} it/s"
        total = data.get("total") or data.get("total_steps")
        if "step" in data:  # an epoch event carries no step: keep the bar where it is
            fields["completed"] = data["step"]
        self.progress.update(self.task, total=total, **fields)


# ------------------------------------------------------------------ entry


def default_run_dir(preset: Preset) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return RUNS_DIR / f"{preset.name}-{stamp}"


def resolve_dataset(arg: str | None, preset: Preset, console: Console) -> Path:
    """--dataset, else `dataset/` when it holds images, else (pixel24) the CryptoPunks stand-in built on demand."""
    if arg:
        return Path(arg)
    default = REPO_ROOT / "dataset"
    if any(default.glob("*.png")):
        return default
    if preset.engine == "pixel24":
        from .standin import ensure_standin

        return ensure_standin(console=console)
    raise UserError(f"no --dataset given and {default} has no images; put your 24x24 PNGs and .txt captions there or pass --dataset DIR")


def create_run(preset: Preset, overrides: list[str], dataset_dir: Path, run_dir: Path, err_console: Console) -> tuple[Path, dict[str, Any], Path]:
    """Check the dataset, render the run directory atomically and write its first run.json.

    Returns (run directory, the run.json record, the prepared training folder).
    """
    report = check_dataset(dataset_dir, preset.dataset.caption_extension)
    rendered = render(preset, report, run_dir, run_id=run_dir.name)
    run_dir = rendered.run_dir
    for line in rendered.warnings:
        err_console.print(f"[yellow]warning:[/] {line}", markup=True, highlight=False, soft_wrap=True)
    record: dict[str, Any] = {
        "id": run_dir.name,
        "preset": preset.name,
        "engine": preset.engine,
        "script": preset.script,
        "resolved": preset.model_dump(mode="json"),
        "overrides": overrides,
        "dataset": {"path": str(dataset_dir.resolve()), "content_hash": report.content_hash(), "images": len(report.images), "captions": rendered.captions},
        "versions": package_versions(),
        "status": "rendered",
        "created": now_iso(),
        "epochs": {},
    }
    write_json_atomic(run_dir / "run.json", record)
    return run_dir, record, rendered.prepared.folder


def train(args: argparse.Namespace, console: Console, err_console: Console) -> int:
    """The `train` command."""
    if args.resume:
        return resume(Path(args.resume), args, console, err_console)
    if not args.preset:
        raise UserError("train needs --preset NAME (see `bespoke-kohya presets`), or --resume RUN to continue a run")
    overrides = list(args.set or [])
    preset = load_preset(args.preset, overrides, experimental=args.experimental)
    if preset.engine == "kohya" and args.cpu and preset.kohya and preset.kohya.mixed_precision != "no":
        err_console.print("warning: --cpu: mixed_precision set to 'no' (fp16/bf16 training needs a GPU)")
        overrides.append("mixed_precision=no")
        preset = load_preset(args.preset, overrides, experimental=args.experimental)
    sd = None
    if preset.engine == "kohya":
        sd = find_sd_scripts(REPO_ROOT)
        if sd is None and not args.dry_run:
            raise UserError("kohya sd-scripts is not installed: run `make vendor` (or set SD_SCRIPTS_DIR and SD_SCRIPTS_PYTHON); `bespoke-kohya doctor` shows what was found")
    dataset_dir = resolve_dataset(args.dataset, preset, console)
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(preset)
    run_dir, record, prepared = create_run(preset, overrides, dataset_dir, run_dir, err_console)
    if preset.engine == "kohya":
        return _train_kohya(preset, run_dir, record, sd, args, console, err_console)
    # pixel24 trains on the prepared copy: alpha flattened, captions completed and de-duplicated.
    return _train_pixel24(preset, prepared, run_dir, record, args, console, err_console)


def _kohya_command(preset: Preset, sd: Any, args: argparse.Namespace, resume_state: str | None = None) -> list[str]:
    from .launch import build_command

    sd_dir = sd.path if sd else Path("<sd-scripts>")
    python = sd.python if sd else Path("<sd-scripts-python>")
    return build_command(preset, sd_dir, python, num_gpus=args.num_gpus, cpu=args.cpu, resume_state=resume_state, tokenizer_cache=tokenizer_cache_dir())


def _train_kohya(preset: Preset, run_dir: Path, record: dict[str, Any], sd: Any, args: argparse.Namespace, console: Console, err_console: Console) -> int:
    command = _kohya_command(preset, sd, args)
    record["command"] = command
    record["cwd"] = str(run_dir)
    record["sd_scripts"] = sd.to_dict() if sd else None
    if args.dry_run:
        record["status"] = "dry-run"
        write_json_atomic(run_dir / "run.json", record)
        console.print(f"[green]rendered[/] {run_dir}")
        console.print("would run, from the run directory:")
        console.print(" ".join(_quote(c) for c in command), soft_wrap=True, markup=False)
        if sd is None:
            err_console.print("note: sd-scripts is not installed; run `make vendor` before training")
        return 0
    return _launch(preset, run_dir, record, command, sd, console, err_console)


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def _launch(preset: Preset, run_dir: Path, record: dict[str, Any], command: list[str], sd: Any, console: Console, err_console: Console,
            resume_step: int | None = None) -> int:
    """Run sd-scripts for one session, then record its checkpoints, loss series and outcome in run.json.

    ``resume_step``: the steps already done by the state this session resumes from.
    """
    from .launch import child_env, run_streaming

    assert preset.kohya is not None
    tokenizer_cache_dir().mkdir(parents=True, exist_ok=True)
    record.update(status="running", started=now_iso(), ended=None, exit_code=None, failure=None)
    write_json_atomic(run_dir / "run.json", record)
    console.print(f"[bold]training[/] {preset.name} in {run_dir} (log: {run_dir / 'logs' / 'train.log'})")
    earlier_sessions = set(event_dirs(run_dir / TENSORBOARD))
    with TrainProgress(console, total=None) as view:
        result = run_streaming(command, cwd=run_dir, log_path=run_dir / "logs" / "train.log", env=child_env(), on_event=lambda e: view.update(e.data) if e.kind in ("step", "epoch") else None)
    epochs = epoch_checkpoints(run_dir / CHECKPOINTS, preset.kohya.output_name, preset.kohya.max_train_epochs)
    session = tensorboard_losses(sd.python, [d for d in event_dirs(run_dir / TENSORBOARD) if d not in earlier_sessions]) or [
        {"step": s["step"], "avg_loss": s.get("avr_loss")} for s in result.steps  # tqdm's running average when TensorBoard is unreadable
    ]
    loss_csv = run_dir / "logs" / "loss.csv"
    losses = merge_losses(read_loss_csv(loss_csv), session, resume_step)
    for row in losses:
        row["epoch"] = result.epoch_of(row["step"]) or row.get("epoch", "")
    write_loss_csv(loss_csv, losses)
    record.update(ended=now_iso(), exit_code=result.returncode, epochs=epochs)
    if result.interrupted:
        record["status"] = "interrupted"
    elif result.returncode != 0 or result.failure or not epochs:
        cause = result.failure or (f"sd-scripts exited with status {result.returncode}" if result.returncode else "sd-scripts wrote no checkpoint")
        record.update(status="failed", failure={"cause": cause, "tail": result.tail[-15:]})
    else:
        record["status"] = "finished"
    write_json_atomic(run_dir / "run.json", record)
    return _finish_message(record, run_dir, console, err_console)


def _finish_message(record: dict[str, Any], run_dir: Path, console: Console, err_console: Console) -> int:
    status = record["status"]
    if status == "finished":
        console.print(f"[green]finished[/] {len(record['epochs'])} epoch checkpoint(s) in {run_dir / CHECKPOINTS}")
        console.print(f"next: bespoke-kohya sample --run {run_dir}   then   bespoke-kohya report --run {run_dir}")
        return 0
    if status == "interrupted":
        err_console.print(f"interrupted: run marked interrupted; continue with `bespoke-kohya train --resume {run_dir}`")
        return 130
    failure = record.get("failure") or {}
    err_console.print(f"[red]training failed:[/] {failure.get('cause')}", soft_wrap=True)
    for line in failure.get("tail", []):
        err_console.print(f"  {line}", markup=False, soft_wrap=True)
    err_console.print(f"full log: {run_dir / 'logs' / 'train.log'}")
    return 1


def _cpu_precision(preset: Preset, run_dir: Path, record: dict[str, Any], err_console: Console) -> Preset:
    """--cpu on an existing run: fp16/bf16 need a GPU, so re-render train.toml with mixed_precision = "no"."""
    from .render import train_args, write_train_toml

    assert preset.kohya is not None
    err_console.print("warning: --cpu: mixed_precision set to 'no' (fp16/bf16 training needs a GPU)")
    preset = preset.model_copy(update={"kohya": preset.kohya.model_copy(update={"mixed_precision": "no"})})
    write_train_toml(run_dir, train_args(preset, run_dir.name), preset.name)
    record["resolved"] = preset.model_dump(mode="json")
    record.setdefault("overrides", []).append("mixed_precision=no")
    return preset


def resume(run_dir: Path, args: argparse.Namespace, console: Console, err_console: Console) -> int:
    """Train an existing run: start a rendered one, continue an interrupted or failed one, leave a finished one.

    Safe to repeat (a rented GPU box that lost its SSH session): finished work is kept.
    """
    run_dir = run_dir.resolve()
    record = read_run(run_dir)
    status = record.get("status")
    if status == "finished":
        console.print(f"{run_dir}: training already finished ({len(record.get('epochs', {}))} epochs); nothing to do")
        return 0
    preset = Preset.model_validate(record["resolved"])
    if preset.engine == "pixel24":
        prepared = next((run_dir / "data").iterdir())
        return _train_pixel24(preset, prepared, run_dir, record, args, console, err_console)
    assert preset.kohya is not None
    sd = find_sd_scripts(REPO_ROOT)
    if sd is None:
        raise UserError("kohya sd-scripts is not installed: run `make vendor` (or set SD_SCRIPTS_DIR and SD_SCRIPTS_PYTHON)")
    if getattr(args, "cpu", False) and preset.kohya.mixed_precision != "no":
        preset = _cpu_precision(preset, run_dir, record, err_console)
    states = sorted((run_dir / CHECKPOINTS).glob(f"{preset.kohya.output_name}-*-state"))
    state = f"{CHECKPOINTS}/{states[-1].name}" if states and status not in ("rendered", "dry-run") else None
    command = _kohya_command(preset, sd, args, resume_state=state)
    resume_step = state_step(run_dir / state) if state else None
    if state:
        record.setdefault("resumed", []).append({"from": state, "step": resume_step, "at": now_iso()})
    record.update(command=command, cwd=str(run_dir), sd_scripts=sd.to_dict())
    if args.dry_run:
        console.print(" ".join(_quote(c) for c in command), soft_wrap=True, markup=False)
        return 0
    return _launch(preset, run_dir, record, command, sd, console, err_console, resume_step=resume_step)


def _train_pixel24(preset: Preset, dataset_dir: Path, run_dir: Path, record: dict[str, Any], args: argparse.Namespace, console: Console, err_console: Console) -> int:
    record["command"] = ["bespoke-kohya", "train", "--preset", preset.name, "--dataset", record["dataset"]["path"]] + [f"--set={o}" for o in record["overrides"]]
    record["cwd"] = str(Path.cwd())
    if args.dry_run:
        record["status"] = "dry-run"
        write_json_atomic(run_dir / "run.json", record)
        console.print(f"[green]rendered[/] {run_dir}; pixel24 trains in this process (no external command)")
        return 0
    from . import pixel24

    record.update(status="running", started=now_iso(), ended=None)
    write_json_atomic(run_dir / "run.json", record)
    device = "cpu" if args.cpu else None
    console.print(f"[bold]training[/] pixel24 in {run_dir}")
    interrupted = False
    try:
        with TrainProgress(console) as view:
            result = pixel24.train(preset, dataset_dir, run_dir, device=device, on_step=view.update)
    except KeyboardInterrupt:
        interrupted = True
        result = {}
    except UserError:
        record.update(status="failed", ended=now_iso())
        write_json_atomic(run_dir / "run.json", record)
        raise
    epochs = {str(k): v for k, v in (result.get("epochs") or {}).items()}
    if interrupted:  # keep the epochs that finished before Ctrl-C
        epochs = epoch_checkpoints(run_dir / CHECKPOINTS, "pixel24", last_epoch=0)
    record.update(ended=now_iso(), epochs=epochs, status="interrupted" if interrupted else "finished", exit_code=0 if not interrupted else 130)
    write_json_atomic(run_dir / "run.json", record)
    return _finish_message(record, run_dir, console, err_console)
