"""Launch sd-scripts: build the exact command (pure), run it, stream and parse its output.

sd-scripts prints `epoch N/M` and `saving checkpoint: PATH` on stdout and redraws a
tqdm bar (`steps: … 8/32 [00:10<00:30, 1.2s/it, avr_loss=0.123]`) on stderr with
carriage returns. Both streams are merged into one pipe, kept whole in
`logs/train.log`, and parsed into events for the progress display and the loss
series. The child runs in its own process group so Ctrl-C can stop all of it
(accelerate starts workers of its own).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable

from ...interrupts import termination_as_interrupt
from ...regular import create_regular
from ...presets import Preset

EPOCH_RE = re.compile(r"^\s*epoch (\d+)/(\d+)\s*$")
# Printed once before training: max_train_steps = epochs × optimizer steps per epoch, exactly.
PLAN_RE = re.compile(r"override steps\. steps for (\d+) epochs is .*?:\s*(\d+)\s*$")
CHECKPOINT_RE = re.compile(r"saving checkpoint: (.+?\.safetensors)\s*$")
# The training bar only: with a validation split sd-scripts also draws "epoch validation steps: …"
# (and "validation steps: …" with validate_every_n_steps), whose counts are not optimiser steps.
STEPS_RE = re.compile(r"(?<!validation )steps:\s+\d+%\|.*?\|\s*(\d+)/(\d+)\s*\[([^\]]*)\]")
POSTFIX_RE = re.compile(r"(\w+)=([-+0-9.eEnaif]+)")
RATE_RE = re.compile(r"([0-9.]+)(s/it|it/s)")
FAILURE_PATTERNS = [
    (re.compile(r"No data found"), "sd-scripts found no training images (it exits 0 on this): check the dataset folder"),
    # With a validation split, v0.10.1 never gets to "No data found": split_train_val unpacks zip() of no images.
    (re.compile(r"line \d+, in split_train_val\s*$"), "sd-scripts found no training images (its validation split fails on an empty folder): check the dataset folder"),
    (re.compile(r"out of memory|OutOfMemoryError", re.I), "out of GPU memory: lower train_batch_size or resolution, or set gradient_checkpointing = true"),
    (re.compile(r"avr_loss=nan|loss is nan", re.I), "the loss became NaN: try mixed_precision = \"bf16\" or \"no\", or a lower learning_rate"),
    (re.compile(r"OSError: .*(?:does not appear to have|Can't load|is not a local folder)"), "the base model could not be loaded: check pretrained_model_name_or_path (offline: a local folder or .safetensors file)"),
    # Causes `bespoke-kohya doctor --preset P` also checks before launch; {0} is the pattern's group.
    (re.compile(r"model is not found as a file or in Hugging Face.*?: (\S+)\s*$"),
     "base model {0} is neither a local file nor in the Hugging Face cache: --set pretrained_model_name_or_path=/path/model.safetensors, or download it (offline: HF_HUB_OFFLINE=1 needs it cached)"),
    (re.compile(r"Cannot load model (\S+?):"),
     "base model {0} is not cached locally and could not be downloaded: --set pretrained_model_name_or_path=/local/path, or download it on a machine with network"),
    (re.compile(r"(?:CUDA driver version is insufficient|NVIDIA driver on your system is too old|no kernel image is available|"
                r"libcu\w*\.so[.\d]*: cannot open shared object|Found no NVIDIA driver|CUDA driver initialization failed)"),
     "sd-scripts' torch does not match this machine's CUDA driver: check nvidia-smi, then install a matching CUDA torch (SD_SCRIPTS_TORCH=..., make vendor)"),
    (re.compile(r"^\s*(?:ModuleNotFoundError|ImportError): No module named '([^']+)'"),
     "sd-scripts' python lacks the module {0}: run make vendor again (or pip install it into SD_SCRIPTS_PYTHON's venv)"),
    (re.compile(r"SafetensorError|Error while deserializing header|HeaderTooLarge|MetadataIncompleteBuffer|InvalidHeader"),
     "a .safetensors file is corrupt or cut short (an interrupted download or copy?): download or copy it again"),
    # The other methods' own refusals (train_util.ControlNetDataset, train_textual_inversion.py), as v0.10.1 words them.
    (re.compile(r"(?:missing|extra) conditioning data for \d+ images"),
     "the ControlNet's edge maps do not pair one to one with its training images (train_control_net.py asserts they do): render the run again"),
    (re.compile(r"tokenizer has same word to token string"),
     "kohya.textual_inversion.token_string is already a word of the tokenizer: choose words CLIP splits, e.g. \"bespoke punk\""),
]


@dataclass
class Event:
    """One thing parsed from sd-scripts' output."""

    kind: str  # "epoch" | "plan" | "step" | "checkpoint" | "failure"
    data: dict = field(default_factory=dict)


def parse_line(line: str) -> Event | None:
    """Parse one line (or one carriage-return segment) of sd-scripts' output."""
    if m := EPOCH_RE.match(line):
        return Event("epoch", {"epoch": int(m.group(1)), "epochs": int(m.group(2))})
    if m := PLAN_RE.search(line):
        return Event("plan", {"epochs": int(m.group(1)), "total_steps": int(m.group(2))})
    if m := CHECKPOINT_RE.search(line):
        return Event("checkpoint", {"path": m.group(1).strip()})
    if m := STEPS_RE.search(line):
        data: dict = {"step": int(m.group(1)), "total": int(m.group(2))}
        bracket = m.group(3)
        for key, value in POSTFIX_RE.findall(bracket):
            try:
                data[key] = float(value)
            except ValueError:
                pass
        if r := RATE_RE.search(bracket):
            rate = float(r.group(1))
            data["it_per_s"] = rate if r.group(2) == "it/s" else (1 / rate if rate else 0.0)
        times = bracket.split(",")[0].split("<")
        if len(times) == 2:
            data["elapsed"], data["eta"] = times[0].strip(), times[1].strip()
        return Event("step", data)
    for pattern, cause in FAILURE_PATTERNS:
        if m := pattern.search(line):
            named = next((g for g in m.groups() if g), "")
            return Event("failure", {"cause": cause.format(named), "line": line.strip()})
    return None


def build_command(
    preset: Preset,
    sd_scripts_dir: Path,
    python: Path,
    *,
    num_gpus: int = 1,
    cpu: bool = False,
    resume_state: str | None = None,
    cpu_threads: int | None = None,
    tokenizer_cache: Path | None = None,
) -> list[str]:
    """The exact `accelerate launch` command for a rendered run (run from the run directory).

    accelerate's own launcher handles one GPU, several GPUs (`--multi_gpu`) and the CPU.
    """
    if preset.script is None or preset.kohya is None:
        raise ValueError(f"preset {preset.name} does not train through sd-scripts")
    cmd = [str(python), "-m", "accelerate.commands.launch", "--num_machines", "1", "--dynamo_backend", "no"]
    cmd += ["--num_cpu_threads_per_process", str(cpu_threads or max(1, os.cpu_count() or 1))]
    if cpu:
        cmd += ["--cpu", "--num_processes", "1", "--mixed_precision", "no"]
    elif num_gpus > 1:
        cmd += ["--multi_gpu", "--num_processes", str(num_gpus), "--mixed_precision", preset.kohya.mixed_precision]
    else:
        cmd += ["--num_processes", "1", "--mixed_precision", preset.kohya.mixed_precision]
    cmd += [str(sd_scripts_dir / preset.script), "--config_file", "config/train.toml", "--dataset_config", "config/dataset.toml"]
    if tokenizer_cache is not None:
        # sd-scripts loads the CLIP tokenizer from here before trying the hub (offline use).
        cmd += ["--tokenizer_cache_dir", str(tokenizer_cache)]
    if resume_state:
        if getattr(preset, "method", "lora") != "lora":
            raise ValueError(f"preset {preset.name}: {preset.script} cannot resume from a state (only train_network.py skips the epochs it had done)")
        # Without skip_until_initial_step sd-scripts restarts its step counter (and data order) at 0.
        cmd += ["--resume", resume_state, "--skip_until_initial_step"]
    return cmd


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for sd-scripts: unbuffered output, and no inheritance of our venv."""
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONIOENCODING", "utf-8")
    if extra:
        env.update(extra)
    return env


@dataclass
class RunResult:
    """How a child process ended and what its output said."""

    returncode: int
    interrupted: bool
    failure: str | None
    tail: list[str]
    checkpoints: list[str]
    steps: list[dict]
    steps_per_epoch: int | None = None

    def epoch_of(self, step: int) -> int | None:
        """The 1-based epoch a global optimizer step belongs to (None when sd-scripts did not print its plan)."""
        return -(-step // self.steps_per_epoch) if self.steps_per_epoch else None


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still exists (signal 0 only checks)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we may not signal still exists
        return True
    return True


def _wait_group(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait up to ``timeout`` s for the leader and then every other member of its group to exit."""
    deadline = time.monotonic() + timeout
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    # The leader (accelerate's launcher) can exit before the training process it started
    # and that process's data-loader workers: wait for the group, not just the leader.
    while _group_alive(proc.pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Terminate the child's whole process group, then kill what is left after ``grace`` seconds.

    A second Ctrl-C while waiting skips the rest of the grace period and kills at once.
    """
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            proc.poll()
            return
        try:
            if _wait_group(proc, wait):
                return
        except KeyboardInterrupt:
            continue


@dataclass
class _Parsed:
    """What the output said so far (filled line by line while the child runs)."""

    tail: deque
    checkpoints: list[str] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    failure: str | None = None
    epoch: int = 0
    epochs: int | None = None
    steps_per_epoch: int | None = None

    def feed(self, line: str) -> Event | None:
        """Record one output line; returns its event, if it is one."""
        if not line.lstrip().startswith("steps:"):
            self.tail.append(line)
        event = parse_line(line)
        if event is None:
            return None
        if event.kind == "epoch":
            self.epoch, self.epochs = event.data["epoch"], event.data["epochs"]
        elif event.kind == "plan" and event.data["epochs"]:
            self.steps_per_epoch = event.data["total_steps"] // event.data["epochs"]
        elif event.kind == "checkpoint":
            self.checkpoints.append(event.data["path"])
        elif event.kind == "step":
            event.data.setdefault("epoch", self.epoch)
            if self.epochs:
                event.data.setdefault("epochs", self.epochs)
            if not self.steps or self.steps[-1]["step"] != event.data["step"]:
                self.steps.append(event.data)
        elif event.kind == "failure" and self.failure is None:
            self.failure = event.data["cause"]
        return event


def _pump(proc: subprocess.Popen, log: BinaryIO, parsed: _Parsed, on_event: Callable[[Event], None] | None) -> None:
    """Copy the child's output to the log as it comes and parse it, until the child closes it."""
    assert proc.stdout is not None
    buffer = b""
    while chunk := proc.stdout.read1(65536):
        log.write(chunk)
        log.flush()
        buffer += chunk
        # tqdm redraws with carriage returns: each redraw is a line of its own.
        *segments, buffer = re.split(rb"[\r\n]", buffer)
        for raw in segments:
            line = raw.decode("utf-8", "replace")
            if line.strip() and (event := parsed.feed(line)) is not None and on_event:
                on_event(event)


def run_streaming(
    command: list[str],
    *,
    cwd: Path,
    log_path: Path,
    env: dict[str, str] | None = None,
    on_event: Callable[[Event], None] | None = None,
    tail_lines: int = 40,
) -> RunResult:
    """Run ``command``, tee its merged output to ``log_path``, parse events; Ctrl-C stops the whole group."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    parsed = _Parsed(tail=deque(maxlen=tail_lines))
    interrupted = False
    fd = create_regular(log_path, "remove it (the log is recreated; a run folder from elsewhere holds no links)", append=True)
    with os.fdopen(fd, "ab") as log:
        log.write(f"$ {' '.join(command)}\n# cwd: {cwd}\n# started {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            with termination_as_interrupt():
                _pump(proc, log, parsed, on_event)
                proc.wait()
        except KeyboardInterrupt:
            interrupted = True
            stop_group(proc)
        finally:
            if proc.poll() is None:
                stop_group(proc)
            log.write(f"\n# ended {time.strftime('%Y-%m-%d %H:%M:%S')} with exit status {proc.returncode}\n".encode())
    return RunResult(
        proc.returncode if proc.returncode is not None else -1, interrupted, parsed.failure, list(parsed.tail),
        parsed.checkpoints, parsed.steps, parsed.steps_per_epoch,
    )
