"""Launching: the exact command, parsing sd-scripts' real output format, and process-group handling."""

from __future__ import annotations

import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from bespoke_kohya.engines.kohya.launch import build_command, parse_line, run_streaming
from bespoke_kohya.presets import load_preset

SD = Path("/opt/sd scripts")
PY = Path("/opt/sd scripts/.venv/bin/python")


def test_single_gpu_command_is_exact():
    cmd = build_command(load_preset("sd15_576"), SD, PY, cpu_threads=2)
    assert cmd == [
        str(PY), "-m", "accelerate.commands.launch", "--num_machines", "1", "--dynamo_backend", "no",
        "--num_cpu_threads_per_process", "2", "--num_processes", "1", "--mixed_precision", "fp16",
        str(SD / "train_network.py"), "--config_file", "config/train.toml", "--dataset_config", "config/dataset.toml",
    ]


def test_multi_gpu_cpu_sdxl_and_resume():
    multi = build_command(load_preset("sdxl_512"), SD, PY, num_gpus=4, cpu_threads=2)
    assert multi[multi.index("--multi_gpu") + 1 : multi.index("--multi_gpu") + 3] == ["--num_processes", "4"]
    assert str(SD / "sdxl_train_network.py") in multi
    cpu = build_command(load_preset("sd15_576"), SD, PY, cpu=True, cpu_threads=2)
    assert "--cpu" in cpu and cpu[cpu.index("--mixed_precision") + 1] == "no"
    resumed = build_command(load_preset("sd15_576"), SD, PY, resume_state="checkpoints/bespoke-000001-state")
    assert resumed[-3:] == ["--resume", "checkpoints/bespoke-000001-state", "--skip_until_initial_step"]


def test_parse_sd_scripts_lines():
    assert parse_line("epoch 2/3").data == {"epoch": 2, "epochs": 3}
    ck = parse_line("saving checkpoint: checkpoints/bespoke-000001.safetensors")
    assert ck.kind == "checkpoint" and ck.data["path"] == "checkpoints/bespoke-000001.safetensors"
    step = parse_line("steps:  25%|██▌       | 8/32 [00:10<00:30,  1.25s/it, avr_loss=0.123]")
    assert step.kind == "step" and step.data["step"] == 8 and step.data["total"] == 32
    assert step.data["avr_loss"] == pytest.approx(0.123) and step.data["it_per_s"] == pytest.approx(0.8)
    assert step.data["eta"] == "00:30"
    assert parse_line("steps:  50%|█████     | 16/32 [00:20<00:20,  1.2it/s, avr_loss=nan]").kind == "step"
    assert parse_line("No data found. Please verify arguments").kind == "failure"
    assert parse_line("torch.OutOfMemoryError: CUDA out of memory.").data["cause"].startswith("out of GPU memory")
    assert parse_line("loading u-net: <All keys matched successfully>") is None


FAKE = textwrap.dedent(
    """
    import sys, time
    print("epoch 1/2", flush=True)
    for i in range(1, 5):
        sys.stderr.write(f"\\rsteps:  {i*25}%|##  | {i}/4 [00:0{i}<00:01,  2.00it/s, avr_loss=0.{i}]")
        sys.stderr.flush()
        time.sleep(0.05)
    print("\\nsaving checkpoint: checkpoints/x-000001.safetensors", flush=True)
    mode = sys.argv[1]
    if mode == "hang":
        import subprocess
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(f"child {child.pid}", flush=True)
        time.sleep(600)
    sys.exit(3 if mode == "fail" else 0)
    """
)


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    script = tmp_path / "fake trainer.py"
    script.write_text(FAKE)
    return script


def test_run_streaming_parses_and_logs(fake: Path, tmp_path: Path):
    events = []
    result = run_streaming([sys.executable, str(fake), "ok"], cwd=tmp_path, log_path=tmp_path / "logs" / "train.log", on_event=events.append)
    assert result.returncode == 0 and not result.interrupted
    assert [s["step"] for s in result.steps] == [1, 2, 3, 4]
    assert result.steps[-1]["avr_loss"] == pytest.approx(0.4) and result.steps[-1]["epoch"] == 1
    assert result.checkpoints == ["checkpoints/x-000001.safetensors"]
    assert "avr_loss=0.4" in (tmp_path / "logs" / "train.log").read_text()


def test_failing_run_keeps_the_tail(fake: Path, tmp_path: Path):
    result = run_streaming([sys.executable, str(fake), "fail"], cwd=tmp_path, log_path=tmp_path / "train.log")
    assert result.returncode == 3
    assert any("saving checkpoint" in line for line in result.tail)


def test_ctrl_c_stops_the_whole_group(fake: Path, tmp_path: Path):
    """A KeyboardInterrupt in the parent kills the child and its own children."""
    log = tmp_path / "train.log"

    def interrupt_when_started():
        for _ in range(200):
            if log.exists() and "child " in log.read_text():
                break
            time.sleep(0.05)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    threading.Thread(target=interrupt_when_started, daemon=True).start()
    result = run_streaming([sys.executable, str(fake), "hang"], cwd=tmp_path, log_path=log)
    assert result.interrupted
    grandchild = int(log.read_text().split("child ")[1].split()[0])
    assert not _alive(grandchild)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for a reaper counts as gone)."""
    for _ in range(40):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except FileNotFoundError:
            return False
        if state == "Z":
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize(
    ("line", "cause"),
    [
        # sd-scripts v0.10.1 library/train_util.py logs this before re-raising diffusers' OSError.
        ("2026-11-30 19:40:01 ERROR    model is not found as a file or in Hugging Face, perhaps file name is wrong? / "
         "指定したモデル名のファイル、またはHugging Faceのモデルが見つかりません。ファイル名が誤っているかもしれません: org/no-such-model",
         "base model org/no-such-model is neither a local file nor in the Hugging Face cache"),
        ("OSError: Cannot load model org/no-such-model: model is not cached locally and an error occurred while trying to fetch metadata from the Hub.",
         "base model org/no-such-model is not cached locally"),
        ("RuntimeError: The NVIDIA driver on your system is too old (found version 11040).", "sd-scripts' torch does not match this machine's CUDA driver"),
        ("RuntimeError: CUDA error: no kernel image is available for execution on the device", "sd-scripts' torch does not match this machine's CUDA driver"),
        ("OSError: libcudnn.so.9: cannot open shared object file: No such file or directory", "sd-scripts' torch does not match this machine's CUDA driver"),
        ("ModuleNotFoundError: No module named 'library'", "sd-scripts' python lacks the module library"),
        ("safetensors_rust.SafetensorError: Error while deserializing header: HeaderTooLarge", "a .safetensors file is corrupt or cut short"),
    ],
)
def test_known_causes_become_one_line(line: str, cause: str):
    event = parse_line(line)
    assert event is not None and event.kind == "failure" and event.data["cause"].startswith(cause)
    assert "\n" not in event.data["cause"]


def test_an_optional_import_warning_is_not_a_failure():
    # xformers-style notices name missing optional modules mid-line; only a raised ModuleNotFoundError counts.
    assert parse_line("A matching Triton is not available, some optimizations will not be enabled. Error caught was: No module named 'triton'") is None


def test_a_recognised_cause_ends_the_output_without_the_traceback(tmp_path: Path):
    from io import StringIO

    from rich.console import Console

    from bespoke_kohya.engines.protocol import Outcome
    from bespoke_kohya.engines.session import finish_message
    from bespoke_kohya.runfolder import Status
    from bespoke_kohya.runfolder.records import Failure, RunHandle, RunRecord

    run = RunHandle(tmp_path, RunRecord(id="r", preset="sd15_512", engine="kohya", resolved={}, status=Status.FAILED))

    def shown(failure: Failure) -> list[str]:
        out = StringIO()
        assert finish_message(run, Outcome(Status.FAILED, 1, failure), Console(file=StringIO()), Console(file=out, width=300)) == 1
        return out.getvalue().splitlines()

    tail = ["Traceback (most recent call last):", "OSError: Cannot load model org/x: model is not cached locally"]
    known = shown(Failure(cause="base model org/x is not cached locally", tail=tail, recognised=True))
    assert known == ["training failed: base model org/x is not cached locally", f"full log: {tmp_path / 'logs' / 'train.log'}"]
    unknown = shown(Failure(cause="sd-scripts exited with status 1", tail=tail))
    assert "  Traceback (most recent call last):" in unknown
