"""The kohya engine: LoRA training by sd-scripts in its own process, samples drawn with diffusers on the base model."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError
from ..paths import REPO_ROOT
from ..runfolder import CHECKPOINTS, TENSORBOARD, TRAIN_LOG, Status
from ..runfolder.records import Failure, LossRow, RunHandle, ValidationRow, now_iso, read_loss, read_validation, write_loss, write_validation
from . import Outcome, Progress, SampleJob, SampleOptions, TrainOptions


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
# The held-out images' mean loss after each epoch. train_network.py v0.10.1 logs it through
# epoch_logging, whose TensorBoard step is the 1-based epoch number (`epoch + 1`), and a resumed
# session's epoch loop starts at the resumed epoch, so the step is the run's epoch in every session.
_VALIDATION_TAG = "loss/validation/epoch_average"

Scalar = tuple[int, str, float]  # (step, tag, value) as TensorBoard recorded it


def event_dirs(logdir: Path) -> list[Path]:
    """The folders holding TensorBoard event files under ``logdir``; one per training session, oldest first
    (sd-scripts names them ``<log_prefix><YYYYmmddHHMMSS>/network_train``)."""
    if not logdir.is_dir():
        return []
    return sorted({p.parent for p in logdir.rglob("events.out.tfevents.*")})


def tensorboard_scalars(python: Path, dirs: list[Path]) -> list[Scalar]:
    """Every scalar in sd-scripts' TensorBoard event folders (empty if unavailable), read in its own venv."""
    if not dirs:
        return []
    try:
        out = subprocess.run([str(python), "-c", _TB_EXPORT, *map(str, dirs)], capture_output=True, text=True, timeout=300, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return parse_scalars(out)


def parse_scalars(text: str) -> list[Scalar]:
    """The reader's ``step,tag,value`` lines as tuples (a tag never holds a comma in sd-scripts' logs)."""
    scalars = []
    for line in text.splitlines():
        step_s, tag, value_s = line.split(",", 2)
        scalars.append((int(step_s), tag, float(value_s)))
    return scalars


def loss_rows(scalars: list[Scalar]) -> list[LossRow]:
    """Per-step loss/lr rows, one per optimiser step."""
    rows: dict[int, dict[str, Any]] = {}
    for step, tag, value in scalars:
        if tag in _STEP_TAGS:
            rows.setdefault(step, {"step": step})[_STEP_TAGS[tag]] = value
    return [LossRow(**rows[s]) for s in sorted(rows)]


def validation_rows(scalars: list[Scalar], losses: list[LossRow]) -> list[ValidationRow]:
    """One row per epoch from `loss/validation/epoch_average`; ``step`` is that epoch's last optimiser step in ``losses``."""
    last_step: dict[int, int] = {}
    for row in losses:
        if row.epoch is not None:
            last_step[row.epoch] = max(row.step, last_step.get(row.epoch, 0))
    rows = {step: ValidationRow(epoch=step, step=last_step.get(step), loss=value) for step, tag, value in scalars if tag == _VALIDATION_TAG}
    return [rows[e] for e in sorted(rows)]


def merge_validation(previous: list[ValidationRow], session: list[ValidationRow], resume_epoch: int | None) -> list[ValidationRow]:
    """The per-epoch validation losses after one more session: a session resumed after ``resume_epoch`` keeps the
    earlier rows up to that epoch (later ones were trained again); a fresh session replaces everything."""
    kept = [r for r in previous if r.epoch <= resume_epoch] if resume_epoch else []
    return kept + [r for r in session if not resume_epoch or r.epoch > resume_epoch]


def merge_losses(previous: list[LossRow], session: list[LossRow], resume_step: int | None) -> list[LossRow]:
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
    kept = [r for r in previous if r.step <= resume_step]
    first = min((r.step for r in session), default=resume_step + 1)
    shift = resume_step - (first - 1) if first <= resume_step else 0
    return kept + [r.model_copy(update={"step": r.step + shift}) for r in session]


def state_epoch(state: str) -> int | None:
    """The epoch after which sd-scripts saved a `-state` folder, from its name (``NAME-000001-state``)."""
    m = re.search(r"-(\d{6})-state$", state)
    return int(m.group(1)) if m else None


def state_step(state_dir: Path) -> int | None:
    """The optimizer steps done when sd-scripts saved a `-state` folder (its train_state.json), if recorded."""
    try:
        return int(json.loads((state_dir / "train_state.json").read_text(encoding="utf-8"))["current_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _sd_scripts() -> Any:
    from ..vendor import find_sd_scripts

    return find_sd_scripts(REPO_ROOT)


def _preflight(resolved: dict[str, Any], options: TrainOptions, run_dir: Path, images: int, from_epoch: int = 0) -> None:
    """Refuse what would make sd-scripts fail, before anything is written or launched (--skip-preflight skips)."""
    from ..preflight import for_train

    if options.skip_preflight:
        return
    for line in for_train(resolved, repo_root=REPO_ROOT, run_dir=run_dir, images=images, cpu=options.cpu,
                          num_gpus=options.num_gpus, from_epoch=from_epoch):
        options.warn(line)


_MISSING = "kohya sd-scripts is not installed: run `make vendor` (or set SD_SCRIPTS_DIR and SD_SCRIPTS_PYTHON); `bespoke-kohya doctor` shows what was found"
_NO_FP16 = "mixed_precision=no"


class KohyaEngine:
    name = "kohya"
    native_art = False  # draws at the preset's resolution; samples are post-processed down to 24x24
    samples_base = True  # the base model without the LoRA is epoch 0: what the LoRA changed

    def write_config(self, run_dir: Path, preset: Any, run_id: str) -> None:
        from ..render import write_kohya_config

        write_kohya_config(run_dir, preset, run_id)

    def blockers(self, preset: Any, cpu: bool) -> list[tuple[str, str]]:
        """(reason, what fixes it) for each thing that keeps a run from training on this machine: the pre-flight's failures."""
        from ..preflight import Level, Plan, run_checks
        from .session import RUNS_DIR

        plan = Plan.from_resolved(preset.model_dump(mode="json"))
        checks = run_checks(plan, repo_root=REPO_ROOT, run_dir=RUNS_DIR, images=0, cpu=cpu) if plan else []
        return [(c.cause, c.fix) for c in checks if c.level is Level.FAIL]

    def prepare(self, preset: Any, options: TrainOptions) -> list[str]:
        if not options.dry_run:
            from ..preflight import count_images
            from .session import RUNS_DIR

            dataset = options.dataset or REPO_ROOT / "dataset"
            _preflight(preset.model_dump(mode="json"), options, Path(options.run_dir or RUNS_DIR), count_images(Path(dataset)))
        if _sd_scripts() is None and not options.dry_run:
            raise UserError(_MISSING)
        return [_NO_FP16] if options.cpu and preset.kohya.mixed_precision != "no" else []

    def default_dataset(self, console: Any) -> Path | None:
        return None

    def plan(self, run: RunHandle, options: TrainOptions) -> list[str]:
        from ..launch import build_command
        from ..vendor import tokenizer_cache_dir

        if options.resume and not options.dry_run:  # a new run was checked by prepare()
            _preflight(run.record.resolved, options, run.dir, run.record.dataset.images or 0, from_epoch=len(run.record.epochs))
        sd = _sd_scripts()
        if sd is None and (options.resume or not options.dry_run):
            raise UserError(_MISSING)
        preset = run.record.preset_model(run.dir)
        if options.cpu and preset.kohya.mixed_precision != "no":
            preset = self._cpu_precision(run, preset)
        states = sorted((run.dir / CHECKPOINTS).glob(f"{preset.kohya.output_name}-*-state"))
        state = f"{CHECKPOINTS}/{states[-1].name}" if states and run.trained else None
        run.session["resume_step"] = state_step(run.dir / state) if state else None
        run.session["resume_epoch"] = state_epoch(state) if state else None
        if state:
            run.record.resumed = [*(getattr(run.record, "resumed", None) or []), {"from": state, "step": state_step(run.dir / state), "at": now_iso()}]
        command = build_command(preset, sd.path if sd else Path("<sd-scripts>"), sd.python if sd else Path("<sd-scripts-python>"),
                                num_gpus=options.num_gpus, cpu=options.cpu, resume_state=state, tokenizer_cache=tokenizer_cache_dir())
        run.record.command, run.record.cwd, run.record.sd_scripts = command, str(run.dir), sd.to_dict() if sd else None
        return command

    def _cpu_precision(self, run: RunHandle, preset: Any) -> Any:
        """--cpu on an existing run: fp16/bf16 need a GPU, so re-render train.toml with mixed_precision = "no"."""
        from ..render import rewrite_config

        preset = preset.model_copy(update={"kohya": preset.kohya.model_copy(update={"mixed_precision": "no"})})
        if run.record.dataset.heldout is None:
            # Made before held-out validation: it trained on every image and its saved state has no
            # validation loader, so the re-render must not split now (the preset default would).
            preset = preset.model_copy(update={"dataset": preset.dataset.model_copy(update={"validation_split": 0.0})})
        rewrite_config(run.dir, preset, write_preset_json=False)
        run.record.resolved = preset.model_dump(mode="json")
        run.record.overrides = [*run.record.overrides, _NO_FP16]
        return preset

    def train(self, run: RunHandle, options: TrainOptions, progress: Progress) -> Outcome:
        """Run sd-scripts for one session, then record its checkpoints, loss series and per-epoch validation losses."""
        from ..launch import child_env, run_streaming
        from ..vendor import tokenizer_cache_dir

        preset = run.record.preset_model(run.dir)
        sd = _sd_scripts()
        resume_step = run.session.get("resume_step")
        tokenizer_cache_dir().mkdir(parents=True, exist_ok=True)
        earlier_sessions = set(event_dirs(run.dir / TENSORBOARD))
        result = run_streaming(run.record.command, cwd=run.dir, log_path=run.dir / TRAIN_LOG, env=child_env(),
                               on_event=lambda e: progress(e.data) if e.kind in ("step", "epoch") else None)
        epochs = epoch_checkpoints(run.dir / CHECKPOINTS, preset.kohya.output_name, preset.kohya.max_train_epochs)
        scalars = tensorboard_scalars(sd.python, [d for d in event_dirs(run.dir / TENSORBOARD) if d not in earlier_sessions])
        session = loss_rows(scalars) or [
            LossRow(step=s["step"], avg_loss=s.get("avr_loss")) for s in result.steps  # tqdm's running average when TensorBoard is unreadable
        ]
        losses = [r.model_copy(update={"epoch": result.epoch_of(r.step) or r.epoch}) for r in merge_losses(read_loss(run.dir), session, resume_step)]
        write_loss(run.dir, losses)
        self._record_validation(run, validation_rows(scalars, losses))
        run.record.epochs = epochs
        if result.interrupted:
            return Outcome(Status.INTERRUPTED, result.returncode)
        if result.returncode != 0 or result.failure or not epochs:
            cause = result.failure or (f"sd-scripts exited with status {result.returncode}" if result.returncode else "sd-scripts wrote no checkpoint")
            return Outcome(Status.FAILED, result.returncode, Failure(cause=cause, tail=result.tail[-15:], recognised=result.failure is not None))
        return Outcome(Status.FINISHED, result.returncode)

    def _record_validation(self, run: RunHandle, session: list[ValidationRow]) -> None:
        """logs/validation.csv: this session's per-epoch held-out losses after the earlier sessions' kept ones."""
        previous = read_validation(run.dir)
        rows = merge_validation(previous, session, run.session.get("resume_epoch"))
        if rows or previous:
            write_validation(run.dir, rows)

    def sampler(self, run: RunHandle, options: SampleOptions) -> "DiffusersSampler":
        from ..sample import base_source, kohya_clip_skip_to_diffusers, load_base

        preset = run.record.preset_model(run.dir)
        base_source(preset, options.base_override)  # an empty base is refused before anything heavy
        return DiffusersSampler(preset.sample, preset.sample_size, preset.sample.negative_prompt, kohya_clip_skip_to_diffusers(preset),
                                load=lambda: load_base(preset, options.device, options.base_override))


class DiffusersSampler:
    """A diffusers base model loaded once; each epoch's LoRA applied, drawn, and removed again."""

    def __init__(self, settings: Any, size: tuple[int, int], negative_prompt: str, clip_skip: int | None,
                 pipe: Any = None, load: Callable[[], Any] | None = None) -> None:
        self.settings_, self.size, self.negative_prompt, self.clip_skip = settings, size, negative_prompt, clip_skip
        self.pipe, self._load, self.warnings = pipe, load, []

    def check(self, prompts: list[str], seeds: list[int], jobs: list[SampleJob]) -> None:
        from ..sample import check_suite, lora_header, scheduler_for

        if self.pipe is None:
            check_suite(prompts, seeds, self.size)  # before minutes of loading
            self.pipe = self._load()
        check_suite(prompts, seeds, self.size, int(getattr(self.pipe, "vae_scale_factor", 8)))
        for job in jobs:  # fail on a missing or damaged file before minutes of sampling other epochs
            if job.checkpoint is not None:
                lora_header(job.checkpoint)
        self.pipe.scheduler = scheduler_for(self.settings_.scheduler, self.pipe.scheduler.config)

    def settings(self, prompts: list[str], seeds: list[int], options_record: dict[str, Any]) -> dict[str, Any]:
        pipe, size = self.pipe, self.size
        recorded = self.settings_.model_dump(mode="json")
        recorded.update(
            width=size[0], height=size[1], negative_prompt=self.negative_prompt, clip_skip=self.clip_skip,
            base=str(getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path", "")),
            pipeline=pipe.__class__.__name__, device=pipe.device.type, dtype=str(pipe.dtype).removeprefix("torch."),
            postprocess_options=options_record,
        )
        return recorded

    def draw(self, job: SampleJob, prompts: list[str], seeds: list[int], write: Callable[..., Any]) -> dict[str, Any]:
        from ..sample import KEPT_METADATA, generate, lora_applied, prompt_ids

        with lora_applied(self.pipe, job.checkpoint) as metadata:
            for pid, prompt in zip(prompt_ids(prompts), prompts):
                for seed in seeds:
                    write(generate(self.pipe, prompt, seed, self.settings_, self.size, self.negative_prompt, self.clip_skip), pid, prompt, seed)
        return {"lora_metadata": {k: metadata[k] for k in KEPT_METADATA if k in metadata}}


ENGINE = KohyaEngine()
