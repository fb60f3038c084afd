"""Runs are not lost to a second trainer or a killed one (issue 12, items 2 and 6).

A real child process trains a run through the real `run_session` (its engine stands in
for a long training: it records epoch 1 as a real engine does, then keeps going until it
is killed); the real CLI and the run-folder readers are then run against it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bespoke_kohya import train as train_verb
from bespoke_kohya.engines import session
from bespoke_kohya.engines.protocol import Outcome, TrainOptions, TrainSession
from bespoke_kohya.errors import UserError
from bespoke_kohya.presets import load_preset
from bespoke_kohya.report.collect import read_record, status_notices
from bespoke_kohya.runfolder import RUN_JSON, Status, run_document
from bespoke_kohya.runfolder.lock import SAMPLE, TRAIN, holder, run_lock
from bespoke_kohya.runfolder.records import GONE, RunHandle

from tests.helpers.runs import write_record

REPO = Path(__file__).resolve().parents[1]

CHILD = '''
import sys, time
from pathlib import Path
from bespoke_kohya.engines import session
from bespoke_kohya.engines.protocol import TrainOptions, TrainSession
from bespoke_kohya.runfolder.records import RunHandle

class StillTraining:
    def train(self, run, session, options, progress):
        run.record_epoch(1, "checkpoints/e-000001.safetensors")
        print("epoch 1", flush=True)
        time.sleep(600)

session.get_engine = lambda name: StillTraining()
session.train_run(RunHandle.open(Path(sys.argv[1])), TrainSession(["train"]), TrainOptions(), lambda event: None)
'''


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "300"}


def _prepared(run: Path, punks_dir: Path) -> None:
    """data/ as render leaves it: one prepared image folder."""
    (run / "data" / "1_punk").mkdir(parents=True)
    (run / "data" / "1_punk" / "a.png").write_bytes(sorted(punks_dir.glob("*.png"))[0].read_bytes())


@pytest.fixture
def training(tmp_path: Path, punks_dir: Path):
    """A rendered run and a live child process training it (killed at the end)."""
    run = tmp_path / "run"
    write_record(run, load_preset("pixel24"), punks_dir, {}, status="rendered")
    _prepared(run, punks_dir)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        line = child.stdout.readline()
        assert line.strip() == "epoch 1", child.stderr.read()
        yield run, child
    finally:
        child.kill()
        child.wait()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bespoke_kohya", *args], capture_output=True, text=True, env=_env(), timeout=300)


def test_resume_while_another_process_trains_is_refused_in_one_line(training) -> None:
    """Item 2: `train --resume` while another process trains the same run is refused, and changes nothing."""
    run, child = training
    before = (run / RUN_JSON).read_bytes()
    result = _cli("train", "--resume", str(run))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert f"is being trained by pid {child.pid}" in lines[0] and "wait for it to finish" in lines[0]
    assert (run / RUN_JSON).read_bytes() == before
    # The live run reads as running (not stale) to every reader, and its lock names the trainer.
    assert RunHandle.open(run).record.status == Status.RUNNING
    assert holder(run, TRAIN).pid == child.pid
    assert "still running" in status_notices(read_record(run), run)[0].text


def test_a_killed_trainer_leaves_an_interrupted_run_that_resume_continues(training, monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 6: after SIGKILL run.json still says running, but the free lock shows nobody trains it:
    sample, report and resume see `interrupted` with the epochs recorded, and resume continues from them."""
    run, child = training
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert run_document(run)["status"] == "running"  # what the killed process left; readers do not rewrite it
    assert holder(run, TRAIN) is None

    record = RunHandle.open(run).record  # what sample and reproduce read
    assert record.status == Status.INTERRUPTED and record.epochs == {"1": "checkpoints/e-000001.safetensors"}
    assert record.failure is not None and record.failure.cause == GONE
    notice = status_notices(read_record(run), run)[0].text
    assert notice.startswith(f"training was interrupted after 1 epoch(s) ({GONE}); continue it with `bespoke-kohya train --resume")

    seen: list[tuple[str, dict[str, str]]] = []

    class Continues:
        """Continues after the last recorded epoch, as the kohya engine does from its saved state."""

        def start_session(self, run: RunHandle, options: TrainOptions) -> TrainSession:
            seen.append((run.record.status, dict(run.record.epochs)))
            return TrainSession(["train"])

        def train(self, run: RunHandle, session: TrainSession, options: TrainOptions, progress) -> Outcome:
            assert holder(run.dir, TRAIN).pid == os.getpid()
            run.record_epoch(max(map(int, run.record.epochs)) + 1, "checkpoints/e-000002.safetensors")
            return Outcome(Status.FINISHED, 0)

    monkeypatch.setattr(session, "get_engine", lambda name: Continues())
    from rich.console import Console

    quiet = Console(file=open(os.devnull, "w"))
    assert train_verb.train(TrainOptions(resume=run, sample=False), quiet, quiet) == 0  # the stand-in engine writes no real checkpoints to draw
    assert seen == [(Status.INTERRUPTED, {"1": "checkpoints/e-000001.safetensors"})]
    done = run_document(run)
    assert done["status"] == "finished" and done["epochs"] == {"1": "checkpoints/e-000001.safetensors", "2": "checkpoints/e-000002.safetensors"}
    assert "failure" not in done
    assert holder(run, TRAIN) is None  # released when the session ended


def test_sample_lock_is_refused_by_a_live_holder_and_free_after_it_dies(tmp_path: Path) -> None:
    """Item 2: the lock itself, across two real processes (the refusal names the holder; death frees it)."""
    run = tmp_path / "run"
    run.mkdir()
    code = "import sys, time; from bespoke_kohya.runfolder.lock import acquire; acquire(sys.argv[1], 'sample'); print('held', flush=True); time.sleep(600)"
    child = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"^run {run} is being sampled by pid {child.pid} since \S+; wait for it to finish \(or stop it: kill {child.pid}\), then sample again$"):
            with run_lock(run, SAMPLE):
                pass
        assert holder(run, TRAIN) is None  # training and sampling are separate locks
    finally:
        child.kill()
        child.wait()
    with run_lock(run, SAMPLE):
        with run_lock(run, SAMPLE):  # re-entrant within one process (sample_run, then draw_epochs)
            assert holder(run, SAMPLE).pid == os.getpid()
    assert holder(run, SAMPLE) is None


@pytest.mark.parametrize("damage", ["no data/", "empty data/", "no resolved", "bad resolved"])
def test_resume_of_a_damaged_run_is_one_line(damage: str, tmp_path: Path, punks_dir: Path) -> None:
    """Issue 12: `train --resume` on a damaged run raised FileNotFoundError, StopIteration, KeyError or a pydantic dump."""
    import json

    run = tmp_path / "run"
    write_record(run, load_preset("pixel24"), punks_dir, {"1": "checkpoints/e-000001.safetensors"}, status="interrupted")
    _prepared(run, punks_dir)
    doc = json.loads((run / RUN_JSON).read_text(encoding="utf-8"))
    if damage == "no data/":
        (run / "data" / "1_punk" / "a.png").unlink()
        (run / "data" / "1_punk").rmdir()
        (run / "data").rmdir()
    elif damage == "empty data/":
        (run / "data" / "1_punk" / "a.png").unlink()
    elif damage == "no resolved":
        del doc["resolved"]
    else:
        doc["resolved"]["pixel24"]["epochs"] = "many"
    (run / RUN_JSON).write_text(json.dumps(doc), encoding="utf-8")
    before = (run / RUN_JSON).read_bytes()
    result = _cli("train", "--resume", str(run))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    line, = result.stderr.strip().splitlines()
    expected = {"no data/": "the prepared training images are missing", "empty data/": "the prepared training images are missing",
                "no resolved": "resolved: Field required", "bad resolved": "pixel24.epochs: Input should be a valid integer"}[damage]
    assert line.startswith("error: ") and expected in line
    assert (run / RUN_JSON).read_bytes() == before
    assert holder(run, TRAIN) is None
