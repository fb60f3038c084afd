"""The kohya engine: sd-scripts trains in its own process (LoRA, full fine-tune, textual inversion or ControlNet, by the
preset's kohya.method), samples drawn with diffusers on the base model.

Everything sd-scripts is in this package: its preset table (``settings.py``), the TOML files it
reads (``config.py``), the launch and its output (``launch.py``), what it leaves behind
(``tensorboard.py``), the checks before launch (``preflight.py``), installing it (``vendor.py``),
the diffusers sampler (``sampler.py``), the offline smoke test (``smoke.py``, ``offline_sd.py``),
the documented recipe (``recipe.py``) and go.sh's hooks (``gosh.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import UserError
from ...paths import REPO_ROOT
from ...runfolder import CHECKPOINTS, TENSORBOARD, TRAIN_LOG, VENDOR, Status
from ...runfolder.records import Failure, LossRow, RunHandle, ValidationRow, read_loss, read_validation, write_loss, write_validation
from ...runfolder import now_iso
from ..protocol import (BaseEngine, BaseRef, Blocker, Check, CommandGroups, DoctorRow, Outcome, Progress, RecipeCheck, SampleOptions, TrainOptions,
                        TrainSession)
from .settings import KohyaPreset

_MISSING = "kohya sd-scripts is not installed: run `make vendor` (or set SD_SCRIPTS_DIR and SD_SCRIPTS_PYTHON); `bespoke-kohya doctor` shows what was found"
_NO_FP16 = "mixed_precision=no"
_CPU_PRECISION = "--cpu: mixed_precision set to 'no' (fp16/bf16 training needs a GPU)"


def _sd_scripts(run_dir: Path | None = None) -> Any:
    """sd-scripts as the environment names it, else installed in the run (a bundle's go.sh), else in the checkout's vendor/."""
    from .vendor import find_sd_scripts

    found = find_sd_scripts(REPO_ROOT)
    if found is None and run_dir is not None and (run_dir / VENDOR).is_dir():
        found = find_sd_scripts(run_dir)
    return found


def _preflight(resolved: dict[str, Any], options: TrainOptions, run_dir: Path, images: int, from_epoch: int = 0) -> None:
    """Refuse what would make sd-scripts fail, before anything is written or launched (--skip-preflight skips)."""
    from .preflight import for_train

    if options.skip_preflight:
        return
    for line in for_train(resolved, repo_root=REPO_ROOT, run_dir=run_dir, images=images, cpu=options.cpu,
                          num_gpus=options.num_gpus, from_epoch=from_epoch):
        options.warn(line)


class KohyaEngine(BaseEngine[KohyaPreset]):
    name = "kohya"
    preset_class = KohyaPreset
    samples_base = True  # the base model without the trained part (LoRA, fine-tune, embedding, ControlNet) is epoch 0: what training changed
    # sd-scripts' resumable states (optimizer, scheduler, RNG), several times a LoRA's size: only for `train --resume`.
    # Every method's script names them the same (train_util: `<output_name>-<epoch:06d>-state`, `<output_name>-state`);
    # only LoRA presets save them (the other scripts cannot resume from one).
    resume_only = ("checkpoints/*-state", "checkpoints/*-state/**")

    def describe(self, preset: KohyaPreset) -> dict[str, str]:
        k = preset.settings
        shown = {"script": preset.script, "epochs": str(k.max_train_epochs), "lr": f"{k.learning_rate:g}"}
        return {**shown, "dim/alpha": f"{k.network_dim}/{k.network_alpha:g}"} if k.method == "lora" else shown

    def write_config(self, run_dir: Path, preset: KohyaPreset, run_id: str) -> list[str]:
        from .config import write_config

        return write_config(run_dir, preset, run_id)

    def check_machine(self, preset: KohyaPreset, options: TrainOptions) -> None:
        from ..session import RUNS_DIR
        from .preflight import count_images

        dataset = options.dataset or REPO_ROOT / "dataset"
        _preflight(preset.model_dump(mode="json"), options, Path(options.run_dir or RUNS_DIR), count_images(Path(dataset)))
        if _sd_scripts() is None:
            raise UserError(_MISSING)

    def implied_overrides(self, preset: KohyaPreset, options: TrainOptions) -> list[str]:
        if options.cpu and preset.settings.mixed_precision != "no":
            options.warn(_CPU_PRECISION)
            return [_NO_FP16]
        return []

    def blockers(self, preset: KohyaPreset, cpu: bool) -> list[Blocker]:
        """Each thing that keeps a run from training on this machine: the pre-flight's failures."""
        from ..session import RUNS_DIR
        from .preflight import Level, RunNeeds, run_checks

        needs = RunNeeds.from_resolved(preset.model_dump(mode="json"))
        checks = run_checks(needs, repo_root=REPO_ROOT, run_dir=RUNS_DIR, images=0, cpu=cpu) if needs else []
        return [Blocker(c.cause, c.fix) for c in checks if c.level is Level.FAIL]

    def start_session(self, run: RunHandle, options: TrainOptions) -> TrainSession:
        from .launch import build_command
        from .tensorboard import state_epoch, state_step
        from .vendor import tokenizer_cache_dir

        if options.resume and not options.dry_run:  # a new run was checked by check_machine()
            _preflight(run.record.resolved, options, run.dir, run.record.dataset.images or 0, from_epoch=len(run.record.epochs))
        sd = _sd_scripts(run.dir)
        if sd is None and (options.resume or not options.dry_run):
            raise UserError(_MISSING)
        preset = run.record.preset_model(run.dir)
        if options.cpu and preset.settings.mixed_precision != "no":
            preset = self._cpu_precision(run, preset, options)
        states = sorted((run.dir / CHECKPOINTS).glob(f"{preset.settings.output_name}-*-state"))
        if preset.method != "lora":
            # train_db.py, train_textual_inversion.py and train_control_net.py (v0.10.1) reload a state but then train
            # every epoch again from epoch 1, so these methods never resume from one (their presets save none).
            states = []
            if options.resume and run.trained and not options.dry_run:
                options.warn(f"{preset.script} cannot continue from a saved epoch (sd-scripts v0.10.1 trains every epoch again after --resume): "
                             f"this run trains again from epoch 1 and its checkpoints replace the earlier ones")
        state = f"{CHECKPOINTS}/{states[-1].name}" if states and run.trained else None
        step = state_step(run.dir / state) if state else None
        if state:
            run.record.resumed = [*(getattr(run.record, "resumed", None) or []), {"from": state, "step": step, "at": now_iso()}]
        command = build_command(preset, sd.path if sd else Path("<sd-scripts>"), sd.python if sd else Path("<sd-scripts-python>"),
                                num_gpus=options.num_gpus, cpu=options.cpu, resume_state=state, tokenizer_cache=tokenizer_cache_dir())
        run.record.command, run.record.cwd, run.record.sd_scripts = command, str(run.dir), sd.to_dict() if sd else None
        return TrainSession(command, resume_from=state, resume_step=step, resume_epoch=state_epoch(state) if state else None)

    def _cpu_precision(self, run: RunHandle, preset: KohyaPreset, options: TrainOptions) -> KohyaPreset:
        """--cpu on an existing run: fp16/bf16 need a GPU, so re-render train.toml with mixed_precision = "no"."""
        from ...render import rewrite_config

        options.warn(_CPU_PRECISION)
        preset = preset.model_copy(update={"kohya": preset.settings.model_copy(update={"mixed_precision": "no"})})
        if run.record.dataset.heldout is None:
            # Made before held-out validation: it trained on every image and its saved state has no
            # validation loader, so the re-render must not split now (the preset default would).
            preset = preset.model_copy(update={"dataset": preset.dataset.model_copy(update={"validation_split": 0.0})})
        rewrite_config(run.dir, preset, write_preset_json=False)
        run.record.resolved = preset.model_dump(mode="json")
        run.record.overrides = [*run.record.overrides, _NO_FP16]
        return preset

    def train(self, run: RunHandle, session: TrainSession, options: TrainOptions, progress: Progress) -> Outcome:
        """Run sd-scripts for one session, then record its checkpoints, loss series and per-epoch validation losses."""
        from .launch import child_env, run_streaming
        from .tensorboard import epoch_checkpoints, event_dirs, loss_rows, merge_losses, tensorboard_scalars, validation_rows
        from .vendor import tokenizer_cache_dir

        preset = run.record.preset_model(run.dir)
        sd = _sd_scripts(run.dir)
        tokenizer_cache_dir().mkdir(parents=True, exist_ok=True)
        earlier_sessions = set(event_dirs(run.dir / TENSORBOARD))
        result = run_streaming(session.command, cwd=run.dir, log_path=run.dir / TRAIN_LOG, env=child_env(),
                               on_event=lambda e: progress(e.data) if e.kind in ("step", "epoch") else None)
        epochs = epoch_checkpoints(run.dir / CHECKPOINTS, preset.settings.output_name, preset.settings.max_train_epochs)
        scalars = tensorboard_scalars(sd.python, [d for d in event_dirs(run.dir / TENSORBOARD) if d not in earlier_sessions])
        this_session = loss_rows(scalars, preset.method) or [
            LossRow(step=s["step"], avg_loss=s.get("avr_loss")) for s in result.steps  # tqdm's running average when TensorBoard is unreadable
        ]
        losses = [r.model_copy(update={"epoch": result.epoch_of(r.step) or r.epoch}) for r in merge_losses(read_loss(run.dir), this_session, session.resume_step)]
        write_loss(run.dir, losses)
        self._record_validation(run, validation_rows(scalars, losses), session.resume_epoch)
        run.record.epochs = epochs
        if result.interrupted:
            return Outcome(Status.INTERRUPTED, result.returncode)
        if result.returncode != 0 or result.failure or not epochs:
            cause = result.failure or (f"sd-scripts exited with status {result.returncode}" if result.returncode else "sd-scripts wrote no checkpoint")
            return Outcome(Status.FAILED, result.returncode, Failure(cause=cause, tail=result.tail[-15:], recognised=result.failure is not None))
        return Outcome(Status.FINISHED, result.returncode)

    def _record_validation(self, run: RunHandle, this_session: list[ValidationRow], resume_epoch: int | None) -> None:
        """logs/validation.csv: this session's per-epoch held-out losses after the earlier sessions' kept ones."""
        from .tensorboard import merge_validation

        previous = read_validation(run.dir)
        rows = merge_validation(previous, this_session, resume_epoch)
        if rows or previous:
            write_validation(run.dir, rows)

    def sampler(self, run: RunHandle, options: SampleOptions) -> Any:
        from .method_samplers import sampler_for_run

        return sampler_for_run(run, run.record.preset_model(run.dir), options)

    def base_model(self, preset: KohyaPreset) -> BaseRef | None:
        from .preflight import is_local_path

        value = preset.settings.pretrained_model_name_or_path or None
        return BaseRef("kohya.pretrained_model_name_or_path", value, hub=bool(value) and not is_local_path(value))

    def bundle_fields(self, preset: KohyaPreset) -> dict[str, Any]:
        from .vendor import SD_SCRIPTS_TAG

        return {"sd_scripts_tag": SD_SCRIPTS_TAG}

    def with_base(self, preset: KohyaPreset, value: str) -> KohyaPreset:
        return preset.model_copy(update={"kohya": preset.settings.model_copy(update={"pretrained_model_name_or_path": value})})

    def recipe_check(self, preset: KohyaPreset) -> RecipeCheck | None:
        from .recipe import DOCUMENTED_ARGS, config_differences, method_difference

        n = len(DOCUMENTED_ARGS)
        what = f"train.toml equals the documented config key by key ({n} keys)"
        if preset.method != "lora":  # another route of the notes: the LoRA recipe's keys do not apply, say so instead
            return RecipeCheck(what, [method_difference(preset)], "")
        return RecipeCheck(what, config_differences(preset), f"{n}/{n} keys equal (config/train.toml)")

    def register_commands(self, commands: CommandGroups) -> None:
        from .commands import register

        register(commands.top)

    def doctor_rows(self, repo_root: Path) -> list[DoctorRow]:
        from .doctor import rows

        return rows(repo_root)

    def preflight_checks(self, preset: KohyaPreset, repo_root: Path, dataset: Path, cpu: bool) -> list[Check]:
        from ..session import RUNS_DIR
        from .preflight import RunNeeds, count_images, run_checks

        needs = RunNeeds.from_resolved(preset.model_dump(mode="json"))
        if needs is None:
            return []
        return [Check(c.name, c.level.value, c.message) for c in run_checks(needs, repo_root=repo_root, run_dir=RUNS_DIR, images=count_images(dataset), cpu=cpu)]


ENGINE = KohyaEngine()
