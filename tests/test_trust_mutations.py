"""Issue 26: every field of every run file mutated (wrong types, out-of-range numbers, missing keys, renamed keys), and
links and FIFOs in place of each run file, on a tiny real pixel24 run.

Two layers:
- every field, exhaustively, through the file's own reader (fast: no model is loaded): it either accepts the value
  or refuses it with one line naming the file;
- a bounded, deterministic set of mutations (hypothesis) through the CLI commands that read the file: either the
  command works (the value was valid), or it prints exactly one `error:` line naming the file, exits 2 and writes
  nothing (the folder tree is compared before and after). Any other exception fails the test.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bespoke_kohya.errors import UserError
from tests.helpers.punks import copy_punks
from tests.helpers.trust import build_tiny_run, copy_run, error_line, run_cli, snapshot

JSON_FILES = {"run.json": "run.json", "samples.json": "samples/samples.json", "pixel24.json": "checkpoints/pixel24.json",
              "pixel24-state.json": "checkpoints/pixel24-state.json"}
CSV_FILES = {"loss.csv": "logs/loss.csv", "validation.csv": "logs/validation.csv"}
# Values of the wrong type or out of range, and a few that look right but are not.
BAD_VALUES: list[Any] = ["abc", "", "99999999999", "-1", "#zzzzzz", "x" * 5000, "a\x00b", -1, 0, 10**12, 2**64, 1.5, -0.0, float("inf"),
                         None, True, [], {}, [1, 1], ["abc"], {"x": 1}, [4096, 4096, 4096]]
# Which commands read each file (the run is interrupted first for train --resume, so the resume state is read).
COMMANDS = {
    "run.json": [["sample", "--run", "{run}", "--epochs", "1"], ["report", "--run", "{run}", "--no-sample"], ["train", "--resume", "{run}", "--no-sample"]],
    "samples.json": [["sample", "--run", "{run}", "--prompt", "lady", "--seeds", "3", "--epochs", "1"], ["report", "--run", "{run}", "--no-sample"]],
    "pixel24.json": [["sample", "--run", "{run}", "--epochs", "1"], ["train", "--resume", "{run}", "--no-sample"]],
    "pixel24-state.json": [["train", "--resume", "{run}", "--no-sample"]],
    "loss.csv": [["report", "--run", "{run}", "--no-sample"], ["train", "--resume", "{run}", "--no-sample"]],
    "validation.csv": [["report", "--run", "{run}", "--no-sample"], ["train", "--resume", "{run}", "--no-sample"]],
}


@pytest.fixture(scope="module")
def tiny(punks_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = copy_punks(punks_dir, tmp_path_factory.mktemp("data") / "eight punks", every=23, count=8)
    run = build_tiny_run(tmp_path_factory.mktemp("built") / "tiny", data)
    doc = json.loads((run / "run.json").read_text(encoding="utf-8"))
    doc["status"] = "interrupted"  # so train --resume reads the resume state (it is at the last epoch: nothing more trains)
    (run / "run.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return run


# ------------------------------------------------------------------ mutations


def paths_of(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON document (containers too); long lists by their first two items and their last."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += paths_of(item, (*prefix, key))
    elif isinstance(value, list):
        keep = sorted({0, 1, len(value) - 1} & set(range(len(value))))
        for i in keep:
            out += paths_of(value[i], (*prefix, i))
    return out


def mutate(doc: Any, where: tuple, how: str, value: Any) -> Any:
    """A copy of ``doc`` with the value at ``where`` replaced by ``value``, deleted, or (a dict key) renamed to str(value)."""
    doc = copy.deepcopy(doc)
    parent = doc
    for step in where[:-1]:
        parent = parent[step]
    last = where[-1]
    if how == "set":
        parent[last] = value
    elif how == "delete":
        del parent[last]
    elif isinstance(parent, dict):  # rename: the value moves to a bad key (epoch keys, table names)
        parent[str(value)[:100]] = parent.pop(last)
    else:
        parent[last] = [parent[last], value]
    return doc


def write_json(path: Path, doc: Any) -> None:
    # allow_nan: a hand-edited file may hold NaN or Infinity, which Python's JSON reader accepts.
    path.write_text(json.dumps(doc, allow_nan=True), encoding="utf-8")


def csv_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def write_csv(path: Path, rows: list[list[str]]) -> None:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")


# ------------------------------------------------------------------ layer 1: every field through the reader


def readers(run: Path) -> dict[str, Callable[[], Any]]:
    from bespoke_kohya.engines.pixel24.files import read_state
    from bespoke_kohya.engines.pixel24.model import read_config
    from bespoke_kohya.runfolder.records import read_loss, read_run, read_samples, read_validation

    def run_json() -> None:
        record = read_run(run)
        record.preset_model(run)
        record.checkpoints()

    return {"run.json": run_json, "samples.json": lambda: read_samples(run), "pixel24.json": lambda: read_config(run / "checkpoints" / "pixel24.json"),
            "pixel24-state.json": lambda: read_state(run / "checkpoints", "pixel24-state.json", "pixel24-state.safetensors", lambda p: None),
            "loss.csv": lambda: read_loss(run), "validation.csv": lambda: read_validation(run)}


def accepted_or_one_line(read: Callable[[], Any], name: str) -> None:
    try:
        read()
    except UserError as exc:
        assert name in str(exc) and "\n" not in str(exc), str(exc)


@pytest.mark.parametrize("name", sorted(JSON_FILES))
def test_every_field_of_each_json_run_file_is_accepted_or_refused_in_one_line(tiny: Path, tmp_path: Path, name: str) -> None:
    run = copy_run(tiny, tmp_path / "run")
    path = run / JSON_FILES[name]
    original = json.loads(path.read_text(encoding="utf-8"))
    read = readers(run)[name]
    tried = 0
    for where in paths_of(original):
        for how, value in [("delete", None), ("rename", "x"), ("rename", "99999999999")] + [("set", v) for v in BAD_VALUES]:
            write_json(path, mutate(original, where, how, value))
            accepted_or_one_line(read, name)
            tried += 1
    assert tried > 100


@pytest.mark.parametrize("name", sorted(CSV_FILES))
def test_every_cell_of_each_csv_log_is_accepted_or_refused_in_one_line(tiny: Path, tmp_path: Path, name: str) -> None:
    run = copy_run(tiny, tmp_path / "run")
    path = run / CSV_FILES[name]
    rows = csv_rows(path)
    read = readers(run)[name]
    for r, row in enumerate(rows[:3]):
        for c in range(len(row)):
            for value in ["abc", "", "-1", "1e400", "nan", "99999999999", "x" * 200_000, "1,2", '"', "\x00"]:
                changed = [list(x) for x in rows]
                changed[r][c] = value
                write_csv(path, changed)
                accepted_or_one_line(read, name)
    for extra in (rows + [["1"] * (len(rows[0]) + 2)], rows + [[]], [rows[0]], []):
        write_csv(path, extra)
        accepted_or_one_line(read, name)


# ------------------------------------------------------------------ layer 2: mutations through the CLI


def check_command(run: Path, name: str, args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """The command either works, or refuses in one line naming ``name`` with exit 2 and nothing written."""
    before = snapshot(run.parent)
    code, out, err = run_cli([a.format(run=run) for a in args], capsys)
    if code == 0:
        return
    if code == 1 and args[0] == "report" and "nothing to compare" in err:
        return  # the page was written and says why (e.g. the mutation removed every sampled epoch)
    line = error_line(code, err)
    assert name.split(".")[0] in line or "run.json" in line, line  # a run.json fault can surface while reading another file
    after = snapshot(run.parent)
    if args[0] == "train":  # the run says it failed (only a resume that had to build the model to tell): nothing else changed
        before.pop("run/run.json"), after.pop("run/run.json")
    assert after == before, line


JSON_MUTATION = st.tuples(st.sampled_from(["set", "set", "set", "delete", "rename"]), st.sampled_from(BAD_VALUES) | st.text(max_size=6) | st.integers() | st.floats())


def json_case(name: str, examples: int):
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def case(tiny: Path, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str], data: st.DataObject) -> None:
        run = copy_run(tiny, tmp_path_factory.mktemp("m") / "run")
        path = run / JSON_FILES[name]
        original = json.loads(path.read_text(encoding="utf-8"))
        where = data.draw(st.sampled_from(paths_of(original)), label="where")
        how, value = data.draw(JSON_MUTATION, label="how, value")
        write_json(path, mutate(original, where, how, value))
        check_command(run, name, data.draw(st.sampled_from(COMMANDS[name]), label="command"), capsys)

    return case


def csv_case(name: str, examples: int):
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def case(tiny: Path, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str], data: st.DataObject) -> None:
        run = copy_run(tiny, tmp_path_factory.mktemp("m") / "run")
        path = run / CSV_FILES[name]
        rows = csv_rows(path)
        r = data.draw(st.integers(0, len(rows) - 1), label="row")
        c = data.draw(st.integers(0, len(rows[r]) - 1), label="column")
        rows[r][c] = data.draw(st.sampled_from(["abc", "-5", "1e999", "99999999999", "1" * 140_000]) | st.text(max_size=6), label="cell")
        write_csv(path, rows)
        check_command(run, name, data.draw(st.sampled_from(COMMANDS[name]), label="command"), capsys)

    return case


# Bounded, deterministic examples (derandomize, so CI sees the same ones every time): most are refused at once,
# the valid ones run the command for real; about a minute and a half together on two busy cores.
test_cli_run_json_mutations = json_case("run.json", 40)
test_cli_samples_json_mutations = json_case("samples.json", 30)
test_cli_pixel24_json_mutations = json_case("pixel24.json", 40)
test_cli_resume_state_mutations = json_case("pixel24-state.json", 30)
test_cli_loss_csv_mutations = csv_case("loss.csv", 15)
test_cli_validation_csv_mutations = csv_case("validation.csv", 15)


# ------------------------------------------------------------------ links and FIFOs in place of each run file


REPLACEABLE = {**JSON_FILES, **CSV_FILES, "pixel24-000001.safetensors": "checkpoints/pixel24-000001.safetensors",
               "pixel24-state.safetensors": "checkpoints/pixel24-state.safetensors", ".train.lock": ".train.lock", ".sample.lock": ".sample.lock"}
READERS = {**{k: v[0] for k, v in COMMANDS.items()}, "run.json": COMMANDS["run.json"][1],
           "pixel24-000001.safetensors": ["sample", "--run", "{run}", "--epochs", "1"], "pixel24-state.safetensors": ["train", "--resume", "{run}", "--no-sample"],
           ".train.lock": ["train", "--resume", "{run}", "--no-sample"], ".sample.lock": ["sample", "--run", "{run}", "--epochs", "1"]}


@pytest.mark.parametrize("kind", ["link out", "dangling link", "fifo"])
@pytest.mark.parametrize("name", sorted(REPLACEABLE))
def test_a_link_or_fifo_in_place_of_a_run_file_is_refused_and_never_followed(tiny: Path, tmp_path: Path, name: str, kind: str, capsys) -> None:
    run = copy_run(tiny, tmp_path / "run")
    outside = tmp_path / "outside.txt"
    outside.write_bytes((run / REPLACEABLE[name]).read_bytes())  # the same content: only being a link is wrong
    target = run / REPLACEABLE[name]
    target.unlink()
    if kind == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to(outside if kind == "link out" else tmp_path / "nowhere")
    before = snapshot(tmp_path)
    code, _, err = run_cli([a.format(run=run) for a in READERS[name]], capsys)
    line = error_line(code, err)
    assert name in line and ("symbolic link" in line or "FIFO" in line), line
    assert snapshot(tmp_path) == before
