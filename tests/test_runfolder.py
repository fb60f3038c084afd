"""The run-folder contract: typed run files round-trip, and damaged or newer files are one clear error."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bespoke_kohya.errors import UserError
from bespoke_kohya.presets import load_preset
from bespoke_kohya.runfolder import LOSS_CSV, RUN_JSON, SAMPLES_JSON, Status, run_document
from bespoke_kohya.runfolder.records import (
    LossRow, RunHandle, SampledEpoch, SampleImage, Samples, read_loss, read_run, read_samples, write_loss, write_samples,
)
from tests.helpers.runs import write_record


@pytest.fixture
def run(tmp_path: Path) -> Path:
    write_record(tmp_path / "run", load_preset("pixel24"), tmp_path / "data", {"1": "checkpoints/pixel24-000001.safetensors"})
    return tmp_path / "run"


def test_run_json_round_trips_with_its_status_and_version(run: Path) -> None:
    record = read_run(run)
    assert record.status == Status.FINISHED and record.checkpoints() == {1: "checkpoints/pixel24-000001.safetensors"}
    assert run_document(run)["version"] == 1
    assert record.preset_model(run).engine == "pixel24"


def test_unknown_fields_survive_a_read_modify_write(run: Path) -> None:
    doc = run_document(run)
    handle = RunHandle.open(run)
    handle.record.base_changes = [{"to": "/models/x"}]  # e.g. what go.sh's BASE_MODEL adds
    handle.save()
    assert read_run(run).base_changes == [{"to": "/models/x"}]
    assert set(run_document(run)) >= set(doc)


def test_an_epoch_is_in_run_json_as_soon_as_it_is_recorded(run: Path) -> None:
    RunHandle.open(run).record_epoch(2, "checkpoints/pixel24-000002.safetensors")
    assert list(read_run(run).checkpoints()) == [1, 2]


@pytest.mark.parametrize(("content", "message"), [
    (b'["a list"]', r"run\.json: expected a JSON object, found list"),
    (b"\xff\xfe not text", r"run\.json: not UTF-8 text"),
    (b"{not json", r"run\.json: not valid JSON"),
    (b'{"version": 99, "id": "x"}', r"run\.json: format version 99 was written by a newer bespoke-kohya .*upgrade"),
    (b'{"version": "one"}', r"run\.json: format version 'one' is not a positive whole number"),
    (b'{"id": "x", "preset": "p", "engine": "kohya", "resolved": {}, "status": "exploded"}', r"run\.json: status: Input should be"),
])
def test_a_damaged_or_newer_run_json_is_one_clear_line(run: Path, content: bytes, message: str) -> None:
    (run / RUN_JSON).write_bytes(content)
    with pytest.raises(UserError, match=message) as err:
        read_run(run)
    assert "\n" not in str(err.value)


def test_a_folder_without_run_json_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a run directory"):
        read_run(tmp_path)
    with pytest.raises(UserError, match="no such run directory"):
        read_run(tmp_path / "missing")


def test_samples_round_trip_and_keep_their_digest(run: Path) -> None:
    assert read_samples(run) is None
    image = SampleImage(prompt_id="p01", prompt="lad", seed=1, art="samples/epoch-001/p01-s1.24.png")
    write_samples(run, Samples(epochs={"1": SampledEpoch(checkpoint="checkpoints/pixel24-000001.safetensors", images=[image], seconds=1.5)}, seeds=[1]))
    samples = read_samples(run)
    assert samples is not None and samples.epochs["1"].images[0] == image and samples.epochs["1"].seconds == 1.5
    assert samples.digest and len(samples.digest) == 64 and "digest" not in samples.as_dict()


def test_a_newer_samples_json_names_the_fix(run: Path) -> None:
    (run / SAMPLES_JSON).parent.mkdir()
    (run / SAMPLES_JSON).write_text('{"version": 2, "epochs": {}}', encoding="utf-8")
    with pytest.raises(UserError, match="newer bespoke-kohya"):
        read_samples(run)
    (run / SAMPLES_JSON).write_text('{"version": 1}', encoding="utf-8")
    with pytest.raises(UserError, match=r"no 'epochs' table.*bespoke-kohya sample --run"):
        read_samples(run)


def test_loss_log_round_trips_and_keeps_a_diverged_step(run: Path) -> None:
    write_loss(run, [LossRow(step=1, epoch=1, loss=0.5, avg_loss=0.5, lr=1e-3), LossRow(step=2, epoch=1, loss=float("nan"))])
    rows = read_loss(run)
    assert rows[0] == LossRow(step=1, epoch=1, loss=0.5, avg_loss=0.5, lr=1e-3)
    assert rows[1].step == 2 and math.isnan(rows[1].loss) and rows[1].avg_loss is None
    (run / LOSS_CSV).write_text("step,epoch,loss,avg_loss,lr\n3,,0.2,,\n", encoding="utf-8")
    assert read_loss(run) == [LossRow(step=3, loss=0.2)]  # an empty cell was not recorded


@pytest.mark.parametrize(("content", "message"), [
    ("step,epoch,loss,avg_loss,lr\n,1,0.1,,\n", r"loss\.csv: row 2: step: Field required; delete it \(the loss curve is then left out\)"),
    ("step,epoch,loss,avg_loss,lr\n3,x,0.2,,\n", r"loss\.csv: row 2: epoch: Input should be a valid integer.*\(got 'x'\)"),
    ("step,epoch,loss,avg_loss,lr\n3,99999,0.2,,\n", r"loss\.csv: row 2: epoch: Input should be less than or equal to 1000"),
    ("step,epoch,loss,avg_loss,lr\n-1,1,0.2,,\n", r"loss\.csv: row 2: step: Input should be greater than or equal to 0"),
    ("step,epoch,loss,avg_loss,lr,extra\n1,1,0.2,,,5\n", r"loss\.csv: row 2: column 'extra' is not one bespoke-kohya writes"),
    ("step,epoch,loss,avg_loss,lr\n1,1,0.2,,,5\n", r"loss\.csv: row 2: column '\(extra cells\)'"),
    ("step,epoch,loss\n1,1,\"" + "9" * (200 * 1024) + "\"\n", r"loss\.csv: row \d+: not a CSV row bespoke-kohya writes \(field larger than field limit"),
])
def test_a_bad_loss_row_is_one_line_naming_the_row_and_column(run: Path, content: str, message: str) -> None:
    """Issue 26 item 9: a cell over 128 KiB was a `_csv.Error` traceback; bad cells were silently dropped. Now each row is typed."""
    (run / LOSS_CSV).parent.mkdir(exist_ok=True)
    (run / LOSS_CSV).write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message) as err:
        read_loss(run)
    assert "\n" not in str(err.value)


def test_validation_rows_round_trip(tmp_path):
    from bespoke_kohya.runfolder.records import ValidationRow, read_validation, write_validation

    assert read_validation(tmp_path) == []
    write_validation(tmp_path, [ValidationRow(epoch=2, step=20, loss=0.5), ValidationRow(epoch=1, step=10, loss=float("nan"))])
    rows = read_validation(tmp_path)
    assert [r.epoch for r in rows] == [1, 2] and rows[1].loss == 0.5 and rows[0].loss != rows[0].loss
    assert not list((tmp_path / "logs").glob(".*"))  # no temporary file left
