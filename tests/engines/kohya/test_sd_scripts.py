"""The real kohya sd-scripts, driven through our CLI: train, Ctrl-C, resume, empty dataset.

Runs `python -m bespoke_kohya train` as a user would, on 8 real punks at 64×64 on the
CPU, against a random-weight SD1.5 with the full architecture (sd-scripts' SD1.x code
needs the real 320–1280-channel U-Net; random weights prove the plumbing). Nothing is
downloaded: HF_HUB_OFFLINE=1 and the CLIP tokenizer comes from a local cache.

Needs `make vendor` (sd-scripts in vendor/, or SD_SCRIPTS_DIR + SD_SCRIPTS_PYTHON); skipped
otherwise. The random base (~4 GB) is built once into `$BESPOKE_CACHE/smoke/sd15-random`
and reused. Each sd-scripts run needs ~7.6 GB of memory; the tests run one at a time.

    make vendor && .venv/bin/python -m pytest -m sd_scripts

The fast tests at the end check our parsing and resume bookkeeping against lines and
behaviour recorded from real sd-scripts v0.10.1 runs; they need no install.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bespoke_kohya.engines.kohya.launch import parse_line
from bespoke_kohya.engines.kohya.tensorboard import merge_losses
from bespoke_kohya.runfolder import run_document as read_run
from bespoke_kohya.runfolder.records import LossRow, ValidationRow, read_loss, read_validation, write_loss
from bespoke_kohya.engines.kohya.vendor import find_sd_scripts, tokenizer_cache_dir

REPO = Path(__file__).resolve().parents[3]
SD = find_sd_scripts(REPO)
needs_sd_scripts = pytest.mark.skipif(SD is None, reason="kohya sd-scripts is not installed: run `make vendor` (or set SD_SCRIPTS_DIR and SD_SCRIPTS_PYTHON)")
# A real run takes ~45 s on an idle 2-core CPU (plus the held-out images' 4 passes an epoch); the
# limit only guards against a hang, and allows for a shared CPU where one step took 150 s.
RUN_TIMEOUT = 2400
OUTPUT_NAME = "bespoke"
STEPS = 4  # 2 epochs × 8 images (6 trained, 2 held out) / batches of 4
# 8 × the default split 0.1 would hold out 1 image that sd-scripts v0.10.1 trains on as well
# (it trains on ceil(8 × 0.9) = 8, validates on round(0.8) = 1; render warns); 0.25 holds out 2 it does not.
SPLIT = 0.25


@pytest.fixture(scope="module")
def random_base() -> Path:
    """The cached random-weight SD1.5 and the offline tokenizer cache (built on first use)."""
    from bespoke_kohya.engines.kohya.offline_sd import build_random_sd15, write_tokenizer_cache
    from bespoke_kohya.engines.kohya.smoke import smoke_cache_dir

    write_tokenizer_cache(tokenizer_cache_dir())
    return build_random_sd15(smoke_cache_dir() / "sd15-random")


def train_command(dataset: Path, run_dir: Path, base: Path, *extra: str) -> list[str]:
    """`bespoke-kohya train` for 2 tiny epochs at 64 px on the CPU (64 is not a multiple of 24, hence allow_uneven_pixels).

    8 images in batches of 4: 2 steps an epoch. At 64 px a step of 4 costs about what a
    step of 1 does (the 860M weights dominate), so this is the quickest real run.
    """
    sets = [f"pretrained_model_name_or_path={base}", "resolution=64", "allow_uneven_pixels=true", "max_train_epochs=2",
            "train_batch_size=4", "network_dim=4", "network_alpha=2.0", "num_repeats=1", "cache_latents=false", f"dataset.validation_split={SPLIT}"]
    cmd = [sys.executable, "-m", "bespoke_kohya", "train", "--preset", "sd15_576", "--cpu", "--no-sample", "--run-dir", str(run_dir), "--dataset", str(dataset)]
    return cmd + [arg for s in sets for arg in ("--set", s)] + list(extra)


def cli_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _default_sigint() -> None:
    # A shell's background jobs start with SIGINT ignored, and an ignored SIGINT is
    # inherited: Python would then never raise KeyboardInterrupt. Give the CLI the
    # disposition a terminal's foreground process has.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_cli(cmd: list[str], out: Path) -> subprocess.Popen:
    with open(out, "wb") as fh:
        return subprocess.Popen(cmd, cwd=REPO, env=cli_env(), stdout=fh, stderr=subprocess.STDOUT, preexec_fn=_default_sigint)


def run_cli(cmd: list[str], out: Path) -> int:
    proc = start_cli(cmd, out)
    try:
        return proc.wait(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            try:  # sd-scripts runs in a process group of its own: killing only the CLI would leave it (~7.6 GB) running
                os.killpg(children_pgid(proc.pid), signal.SIGKILL)
            except (AssertionError, OSError):
                pass
            proc.kill()


def assert_complete_finished_run(run_dir: Path) -> dict:
    """run.json says finished and records everything a reader needs; both epoch LoRAs exist."""
    record = read_run(run_dir)
    assert record["status"] == "finished", record.get("failure")
    assert record["engine"] == "kohya" and record["preset"] == "sd15_576"
    assert record["epochs"] == {"1": f"checkpoints/{OUTPUT_NAME}-000001.safetensors", "2": f"checkpoints/{OUTPUT_NAME}.safetensors"}
    assert record["exit_code"] == 0 and record.get("failure") is None
    assert record["sd_scripts"]["tag"] == "v0.10.1" and len(record["sd_scripts"]["commit"]) == 40
    assert record["versions"]["torch"] and record["versions"]["diffusers"]
    command = record["command"]
    assert command[command.index("--tokenizer_cache_dir") + 1] == str(tokenizer_cache_dir())
    assert any(c.endswith("/train_network.py") for c in command) and "--cpu" in command
    assert record["started"] <= record["ended"]
    assert record["resolved"]["kohya"]["resolution"] == 64 and record["resolved"]["kohya"]["mixed_precision"] == "no"
    for rel in record["epochs"].values():
        assert_is_lora(run_dir / rel)
    return record


def assert_is_lora(path: Path) -> None:
    """A real sd-scripts LoRA: safetensors with U-Net and text-encoder LoRA weights and its metadata."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
        metadata = f.metadata()
    assert any(k.startswith("lora_unet_") and k.endswith(".lora_down.weight") for k in keys)
    assert any(k.startswith("lora_te_") for k in keys)
    assert metadata["ss_network_dim"] == "4" and metadata["ss_network_alpha"] == "2.0"


def assert_loss_series(run_dir: Path, steps: int = STEPS, epochs: int = 2) -> list[dict]:
    """loss.csv holds one row per optimizer step, numbered 1..steps, with finite losses, lr and epoch."""
    rows = [r.model_dump() for r in read_loss(run_dir)]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    per_epoch = steps // epochs
    assert [r["epoch"] for r in rows] == [1 + (s - 1) // per_epoch for s in range(1, steps + 1)]
    for r in rows:
        assert math.isfinite(r["loss"]) and math.isfinite(r["avg_loss"]) and r["loss"] > 0
        assert 0 <= r["lr"] <= 1e-4 + 1e-12
    assert len({round(r["loss"], 6) for r in rows}) == steps  # real per-step values, not one number repeated
    return rows


def assert_validation_per_epoch(run_dir: Path, log: str, epochs: int = 2) -> list[ValidationRow]:
    """logs/validation.csv has sd-scripts' held-out loss for every epoch, at that epoch's last step, from 2 held-out images."""
    rows = read_validation(run_dir)
    assert [r.epoch for r in rows] == list(range(1, epochs + 1))
    assert [r.step for r in rows] == [e * STEPS // 2 for e in range(1, epochs + 1)]
    assert all(r.loss is not None and math.isfinite(r.loss) and r.loss > 0 for r in rows)
    assert len(read_run(run_dir)["dataset"]["heldout"]) == 2
    assert "2 validation images with repeats." in log and "6 train images with repeats." in log
    return rows


def children_pgid(pid: int) -> int:
    """The process group of ``pid``'s first child (our CLI starts sd-scripts in a group of its own)."""
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert kids, "the CLI has no child process"
    return os.getpgid(int(kids[0]))


def group_gone(pgid: int, wait: float = 10.0) -> bool:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def wait_for_log(log: Path, text: str, proc: subprocess.Popen, timeout: float = RUN_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.is_file() and text in log.read_text(encoding="utf-8", errors="replace"):
            return
        assert proc.poll() is None, f"the CLI ended (status {proc.returncode}) before {text!r} appeared in {log}"
        time.sleep(0.5)
    raise AssertionError(f"{text!r} did not appear in {log} within {timeout} s")


# ------------------------------------------------------------------ real sd-scripts runs


@needs_sd_scripts
@pytest.mark.sd_scripts
@pytest.mark.slow
def test_train_two_epochs_through_the_cli(random_base: Path, small_punks: Path, tmp_path: Path):
    run_dir = tmp_path / "run one"
    code = run_cli(train_command(small_punks, run_dir, random_base), tmp_path / "cli.out")
    out = (tmp_path / "cli.out").read_text(errors="replace")
    assert code == 0, out[-3000:]
    assert "finished 2 epoch checkpoint(s)" in out
    assert_complete_finished_run(run_dir)
    assert_loss_series(run_dir)
    log = (run_dir / "logs" / "train.log").read_text(errors="replace")
    assert "epoch 1/2" in log and "epoch 2/2" in log and "saving checkpoint: checkpoints/bespoke.safetensors" in log
    assert "load tokenizer from cache" in log  # offline: the CLIP tokenizer came from our cache
    assert log.rstrip().endswith("with exit status 0")
    rows = assert_validation_per_epoch(run_dir, log)
    assert rows[0].loss != rows[1].loss  # measured after each epoch, not one number repeated


@needs_sd_scripts
@pytest.mark.sd_scripts
@pytest.mark.slow
def test_ctrl_c_stops_the_group_then_resume_finishes(random_base: Path, small_punks: Path, tmp_path: Path):
    """SIGINT to the CLI (a terminal's Ctrl-C) during epoch 2: exit 130, run interrupted, no process left;
    `train --resume` continues from epoch 1's saved state and the loss series runs on unbroken."""
    run_dir = tmp_path / "run two"
    proc = start_cli(train_command(small_punks, run_dir, random_base), tmp_path / "cli.out")
    try:
        # By the time sd-scripts announces epoch 2, epoch 1's LoRA and -state folder are saved.
        wait_for_log(run_dir / "logs" / "train.log", "epoch 2/2", proc)
        pgid = children_pgid(proc.pid)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 130, (tmp_path / "cli.out").read_text(errors="replace")[-2000:]
    assert group_gone(pgid), f"processes of group {pgid} are still running after Ctrl-C"
    record = read_run(run_dir)
    assert record["status"] == "interrupted" and record["ended"]
    assert record["epochs"] == {"1": "checkpoints/bespoke-000001.safetensors"}
    assert (run_dir / "checkpoints" / "bespoke-000001-state" / "train_state.json").is_file()
    assert "continue with `bespoke-kohya train --resume" in (tmp_path / "cli.out").read_text(errors="replace")

    resume = [sys.executable, "-m", "bespoke_kohya", "train", "--cpu", "--no-sample", "--resume", str(run_dir)]
    code = run_cli(resume, tmp_path / "resume.out")
    assert code == 0, (tmp_path / "resume.out").read_text(errors="replace")[-3000:]
    record = assert_complete_finished_run(run_dir)
    assert record["resumed"] == [{"from": "checkpoints/bespoke-000001-state", "step": STEPS // 2, "at": record["resumed"][0]["at"]}]
    assert "--resume" in record["command"] and "checkpoints/bespoke-000001-state" in record["command"]
    log = (run_dir / "logs" / "train.log").read_text(errors="replace")
    assert "skipping epoch 1" in log  # sd-scripts really resumed instead of starting over
    assert_loss_series(run_dir)  # steps 1..4: session two's restarted step count was shifted on
    assert_validation_per_epoch(run_dir, log)  # epoch 1 from the first session, epoch 2 from the resumed one


@needs_sd_scripts
@pytest.mark.sd_scripts
@pytest.mark.slow
@pytest.mark.parametrize(("split", "exit_code", "printed"), [(0.0, 0, "No data found"), (SPLIT, 1, "in split_train_val")])
def test_empty_image_folder_is_a_failure(random_base: Path, small_punks: Path, tmp_path: Path, split: float, exit_code: int, printed: str):
    """sd-scripts prints "No data found" and exits 0 on an empty image folder; with a validation split it
    crashes in split_train_val instead (exit 1). Either way we record a failure that says why in one line."""
    run_dir = tmp_path / "empty"
    dry = train_command(small_punks, run_dir, random_base, "--dry-run", "--set", f"dataset.validation_split={split}")
    assert run_cli(dry, tmp_path / "dry.out") == 0
    for item in (run_dir / "data").glob("*/*.png"):
        item.unlink()  # our intake refuses image-less folders, and `train` a run whose data/ is empty: keep the captions
    code = run_cli([sys.executable, "-m", "bespoke_kohya", "train", "--cpu", "--resume", str(run_dir)], tmp_path / "cli.out")
    out = (tmp_path / "cli.out").read_text(errors="replace")
    assert code == 1, out[-2000:]
    assert "training failed: sd-scripts found no training images" in out and "Traceback" not in out
    record = read_run(run_dir)
    assert record["resolved"]["dataset"]["validation_split"] == split
    assert record["status"] == "failed" and record["exit_code"] == exit_code and record["epochs"] == {} and record["failure"]["recognised"]
    assert any(printed in line for line in record["failure"]["tail"] + [(run_dir / "logs" / "train.log").read_text(errors="replace")])


@needs_sd_scripts
@pytest.mark.sd_scripts
@pytest.mark.slow
def test_missing_base_model_ends_in_one_line_naming_it(small_punks: Path, tmp_path: Path):
    """The real sd-scripts on a base that is nowhere: pre-flight refuses before launch; past it
    (--skip-preflight) sd-scripts' own failure is reduced to one line naming the model, no traceback."""
    from bespoke_kohya.engines.kohya.smoke import write_tokenizer_cache

    write_tokenizer_cache(tokenizer_cache_dir())  # so the tokenizer is not what fails first offline
    missing = "bespoke-kohya-tests/no-such-base"
    refused = run_cli(train_command(small_punks, tmp_path / "refused", missing), tmp_path / "refused.out")
    out = (tmp_path / "refused.out").read_text(errors="replace")
    assert refused == 2 and f"base model {missing}: not in the Hugging Face cache and HF_HUB_OFFLINE is set" in out
    assert not (tmp_path / "refused").exists()

    run_dir = tmp_path / "launched"
    code = run_cli(train_command(small_punks, run_dir, missing, "--skip-preflight"), tmp_path / "cli.out")
    out = (tmp_path / "cli.out").read_text(errors="replace")
    assert code == 1, out[-2000:]
    failed = [line for line in out.splitlines() if line.startswith("training failed:")]
    assert failed and missing in failed[0] and "Hugging Face cache" in failed[0], out[-2000:]
    assert "Traceback" not in out
    record = read_run(run_dir)
    assert record["status"] == "failed" and record["failure"]["recognised"] and missing in record["failure"]["cause"]
    assert "Traceback" in (run_dir / "logs" / "train.log").read_text(errors="replace")  # kept whole in the log


@needs_sd_scripts
@pytest.mark.sd_scripts
@pytest.mark.parametrize(("count", "split"), [(8, 0.1), (8, SPLIT), (184, 0.1)])
def test_sd_scripts_holds_out_the_images_run_json_names(punks_dir: Path, tmp_path: Path, count: int, split: float):
    """sd-scripts' own split_train_val, run in its venv on a rendered image folder, picks the images render recorded."""
    import json

    from bespoke_kohya.dataset import check_dataset, split_heldout
    from bespoke_kohya.presets import load_preset
    from bespoke_kohya.render import render

    dataset = tmp_path / "punks"
    dataset.mkdir()
    for png in sorted(punks_dir.glob("*.png"))[:count]:
        for f in (png, png.with_suffix(".txt")):
            if f.is_file():  # a few real punks have no caption (render writes the default one)
                (dataset / f.name).write_bytes(f.read_bytes())
    preset = load_preset("sd15_576", ["resolution=64", "allow_uneven_pixels=true", f"dataset.validation_split={split}"])
    rendered = render(preset, check_dataset(dataset), tmp_path / "run", run_id="split")
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from library.train_util import glob_images, split_train_val\n"
            "paths = glob_images('data/10_bespoke_punk')\n"
            "parts = [split_train_val(paths, [None] * len(paths), training, float(sys.argv[2]), 42)[0] for training in (True, False)]\n"
            "print(json.dumps([sorted(p.rsplit('/', 1)[1] for p in part) for part in parts]))")
    out = subprocess.run([str(SD.python), "-c", code, str(SD.path), str(split)], cwd=tmp_path / "run", capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    trained, heldout = json.loads(out.stdout.strip().splitlines()[-1])
    assert heldout == rendered.heldout and [trained, heldout] == list(split_heldout([p.name for p in rendered.prepared.folder.glob("*.png")], split, 42))
    assert len(heldout) == round(count * split)


# ------------------------------------------------------------------ real output, no install needed

# Lines as sd-scripts v0.10.1 printed them in the runs above (train_network.py).
REAL_PLAN = "override steps. steps for 2 epochs is / 指定エポックまでのステップ数: 16"
REAL_STEP = "steps:  56%|█████▋    | 9/16 [04:28<03:28, 29.83s/it, avr_loss=1.05]"


def test_real_plan_and_step_lines_parse():
    assert parse_line(REAL_PLAN).data == {"epochs": 2, "total_steps": 16}
    step = parse_line(REAL_STEP)
    assert step.kind == "step" and step.data["step"] == 9 and step.data["total"] == 16
    assert step.data["avr_loss"] == pytest.approx(1.05)


# sd-scripts' second bar while it validates (a validation split on), as printed in the two-epoch run above.
REAL_VALIDATION = "epoch validation steps:  25%|██▌       | 1/4 [01:56<05:48, 116.19s/it, val_epoch_avg_loss=1.15, timestep=200]\x1b[A"


def test_sd_scripts_validation_split_crash_on_an_empty_folder_is_recognised():
    line = '  File "/work/vendor/sd-scripts/library/train_util.py", line 167, in split_train_val'  # from the run above
    event = parse_line(line)
    assert event.kind == "failure" and event.data["cause"].startswith("sd-scripts found no training images (its validation split fails on an empty folder)")


def test_the_validation_bar_is_not_taken_for_a_training_step():
    assert parse_line(REAL_VALIDATION) is None  # its 1/4 counts timesteps of the held-out batches, not optimiser steps
    assert parse_line("\x1b[A" + REAL_STEP).data["step"] == 9  # the training bar after the cursor-up tqdm writes


def _rows(steps: range, base: float) -> list[LossRow]:
    return [LossRow(step=s, loss=base + s / 100, avg_loss=base, lr=1e-4) for s in steps]


def test_resumed_session_that_restarts_its_step_count_is_shifted_on():
    # sd-scripts v0.10.1 resumed at an epoch boundary logs steps 1..8 again for epoch 2;
    # the first session had got one step into epoch 2 before Ctrl-C.
    first, second = _rows(range(1, 10), 1.0), _rows(range(1, 9), 2.0)
    merged = merge_losses(first, second, resume_step=8)
    assert [r.step for r in merged] == list(range(1, 17))
    assert [r.loss for r in merged[:8]] == [r.loss for r in first[:8]]  # step 9 of session one was redone
    assert [r.loss for r in merged[8:]] == [r.loss for r in second]


def test_resumed_session_that_keeps_counting_is_left_alone():
    merged = merge_losses(_rows(range(1, 10), 1.0), _rows(range(9, 17), 2.0), resume_step=8)
    assert [r.step for r in merged] == list(range(1, 17)) and merged[8].avg_loss == 2.0


def test_fresh_session_replaces_the_series(tmp_path: Path):
    write_loss(tmp_path, [r.model_copy(update={"epoch": 1}) for r in _rows(range(1, 4), 1.0)])
    previous = read_loss(tmp_path)
    assert previous[0] == LossRow(step=1, epoch=1, loss=1.01, avg_loss=1.0, lr=1e-4)
    assert merge_losses(previous, _rows(range(1, 3), 2.0), resume_step=None) == _rows(range(1, 3), 2.0)


def _val(epochs: range, base: float) -> list[ValidationRow]:
    return [ValidationRow(epoch=e, step=2 * e, loss=base + e / 100) for e in epochs]


def test_resumed_validation_keeps_the_earlier_epochs_and_replaces_the_redone_ones():
    from bespoke_kohya.engines.kohya.tensorboard import merge_validation

    # Session one validated epochs 1-2 and was stopped in epoch 3 before its state was saved: resumed after epoch 1's state.
    merged = merge_validation(_val(range(1, 3), 1.0), _val(range(2, 4), 2.0), resume_epoch=1)
    assert [(r.epoch, r.loss) for r in merged] == [(1, 1.01), (2, 2.02), (3, 2.03)]
    assert merge_validation(_val(range(1, 3), 1.0), [], resume_epoch=1) == _val(range(1, 2), 1.0)  # events unreadable: earlier rows stay
    assert merge_validation(_val(range(1, 3), 1.0), _val(range(1, 2), 2.0), resume_epoch=None) == _val(range(1, 2), 2.0)  # a fresh session


def test_state_folder_names_give_the_resumed_epoch():
    from bespoke_kohya.engines.kohya.tensorboard import state_epoch

    assert state_epoch("checkpoints/bespoke-000001-state") == 1 and state_epoch("checkpoints/my-run-000012-state") == 12
    assert state_epoch("checkpoints/bespoke-state") is None


# TensorBoard scalars of the two-epoch run above (8 punks, validation_split 0.25: 2 held out), as the
# reader prints them; the other tags sd-scripts logs (lr/textencoder, lr/group1, …) are left out.
REAL_SCALARS = """\
1,loss/current,0.8570886850357056
2,loss/current,1.1661221981048584
3,loss/current,0.8718774914741516
4,loss/current,1.1194159984588623
1,loss/average,0.8570886850357056
2,loss/average,1.0116055011749268
3,loss/average,1.0189998149871826
4,loss/average,0.9956467151641846
1,lr/unet,1.4644660950580146e-05
2,lr/unet,4.999999873689376e-05
3,lr/unet,8.535533561371267e-05
4,lr/unet,0.0
1,loss/validation/epoch_average,1.143686056137085
2,loss/validation/epoch_average,1.1406770944595337
1,loss/validation/epoch_divergence,0.13208061456680298
2,loss/validation/epoch_divergence,0.14503031969070435
1,loss/epoch_average,1.0116055011749268
2,loss/epoch_average,0.9956467151641846
"""


def test_real_tensorboard_scalars_give_the_step_losses_and_a_validation_loss_per_epoch():
    from bespoke_kohya.engines.kohya.tensorboard import loss_rows, parse_scalars, validation_rows

    scalars = parse_scalars(REAL_SCALARS)
    losses = [r.model_copy(update={"epoch": 1 + (r.step - 1) // 2}) for r in loss_rows(scalars)]  # 2 steps an epoch
    assert [(r.step, r.loss, r.lr) for r in losses] == [(1, 0.8570886850357056, 1.4644660950580146e-05), (2, 1.1661221981048584, 4.999999873689376e-05),
                                                         (3, 0.8718774914741516, 8.535533561371267e-05), (4, 1.1194159984588623, 0.0)]
    # Logged at TensorBoard step = epoch (1, 2), not at an optimiser step; each row carries its epoch's last step.
    assert validation_rows(scalars, losses) == [ValidationRow(epoch=1, step=2, loss=1.143686056137085), ValidationRow(epoch=2, step=4, loss=1.1406770944595337)]
    assert validation_rows(parse_scalars("\n".join(REAL_SCALARS.splitlines()[:12])), losses) == []  # split off: no validation tag, no rows


# The resumed session of the Ctrl-C run above (resumed after epoch 1): its optimiser steps restart
# at 1, but the validation loss is logged at step 2, the epoch, as sd-scripts' epoch_logging does.
REAL_RESUMED_SCALARS = """\
1,loss/current,0.8718774914741516
2,loss/current,1.1194159984588623
1,loss/average,0.8718774914741516
2,loss/average,0.9956467151641846
1,lr/unet,8.535533561371267e-05
2,lr/unet,0.0
2,loss/validation/epoch_average,1.1406770944595337
2,loss/validation/epoch_divergence,0.14503031969070435
2,loss/epoch_average,0.9956467151641846
"""


def test_real_resumed_session_adds_its_epoch_after_the_kept_one(tmp_path: Path):
    from bespoke_kohya.engines.kohya.tensorboard import loss_rows, merge_validation, parse_scalars, validation_rows
    from bespoke_kohya.runfolder.records import write_validation

    first = [ValidationRow(epoch=1, step=2, loss=1.143686056137085)]  # what the first session wrote before Ctrl-C
    write_validation(tmp_path, first)
    scalars = parse_scalars(REAL_RESUMED_SCALARS)
    losses = [r.model_copy(update={"epoch": 1 + (r.step - 1) // 2}) for r in merge_losses(_rows(range(1, 3), 1.0), loss_rows(scalars), resume_step=2)]
    session = validation_rows(scalars, losses)
    assert session == [ValidationRow(epoch=2, step=4, loss=1.1406770944595337)]  # epoch 2, after the shifted steps 3-4
    kept = read_validation(tmp_path)  # as written (the CSV keeps 6 significant digits)
    assert [r.epoch for r in kept] == [1] and merge_validation(kept, session, resume_epoch=1) == kept + session
