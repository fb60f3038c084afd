"""What sd-scripts leaves behind, read back: its epoch checkpoints, and the loss series from its TensorBoard events.

TensorBoard's reader runs in sd-scripts' own environment (it ships tensorboard), so this
package does not need it; sessions are merged so a resumed run keeps one continuous series.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from ...errors import UserError
from ...regular import read_regular
from ...runfolder import CHECKPOINTS
from ...runfolder.records import LossRow, ValidationRow


def epoch_checkpoints(checkpoint_dir: Path, output_name: str, last_epoch: int) -> dict[str, str]:
    """{epoch: path relative to the run} from sd-scripts' naming: NAME-000001.safetensors …, NAME.safetensors for the last.

    The same for every method: train_network.py, train_db.py, train_textual_inversion.py and train_control_net.py
    all name epoch files with train_util.get_epoch_ckpt_name (`{output_name}-{epoch:06d}` + ext) and the last one
    with get_last_ckpt_name (`{output_name}` + ext); ext is `.safetensors` by the rendered save_model_as.
    """
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
# Per-step scalars each training script logs (epoch averages are logged at step=epoch: skipped), read in v0.10.1:
# train_network.py: loss/current, loss/average, lr/unet; train_db.py: loss, lr/unet (append_lr_to_logs);
# train_textual_inversion.py: loss, lr; train_control_net.py: loss/current, loss/average, lr (generate_step_logs).
STEP_TAGS = {
    "lora": {"loss/current": "loss", "loss/average": "avg_loss", "lr/unet": "lr"},
    "full": {"loss": "loss", "lr/unet": "lr"},
    "textual_inversion": {"loss": "loss", "lr": "lr"},
    "controlnet": {"loss/current": "loss", "loss/average": "avg_loss", "lr": "lr"},
}
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


def loss_rows(scalars: list[Scalar], method: str = "lora") -> list[LossRow]:
    """Per-step loss/lr rows, one per optimiser step, from the tags ``method``'s script logs."""
    tags = STEP_TAGS[method]
    rows: dict[int, dict[str, Any]] = {}
    for step, tag, value in scalars:
        if tag in tags:
            rows.setdefault(step, {"step": step})[tags[tag]] = value
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
    try:  # a regular file only: a FIFO in a run from elsewhere is no state, and is never waited on
        raw = read_regular(state_dir / "train_state.json", limit=1 << 20, what="sd-scripts train state")
        step = json.loads(raw.decode("utf-8"))["current_step"] if raw is not None else None
        return int(step) if isinstance(step, int) and not isinstance(step, bool) and 0 <= step <= 10**9 else None
    except (UserError, ValueError, KeyError, TypeError):
        return None


