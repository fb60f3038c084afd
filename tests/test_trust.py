"""Issue 26: a run folder is untrusted input. One test (or more) per numbered case of the issue, on a tiny real
pixel24 run built once through the CLI: each refusal is one line naming the file, exit 2, nothing written outside
the run and nothing half-written. The field-by-field mutation test is tests/test_trust_mutations.py."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bespoke_kohya.errors import UserError
from bespoke_kohya.runfolder import run_document
from tests.helpers.punks import copy_punks, make_punk
from tests.helpers.trust import build_tiny_run, copy_run, error_line, run_cli, snapshot


@pytest.fixture(scope="module")
def tiny(punks_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = copy_punks(punks_dir, tmp_path_factory.mktemp("data") / "eight punks", every=23, count=8)
    return build_tiny_run(tmp_path_factory.mktemp("built") / "tiny run", data)


@pytest.fixture
def run(tiny: Path, tmp_path: Path) -> Path:
    """A fresh copy of the tiny run to damage; its parent also holds `outside.txt`, which must never change."""
    (tmp_path / "outside.txt").write_text("the user's notes\n", encoding="utf-8")
    return copy_run(tiny, tmp_path / "run")


def edit_json(path: Path, change) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    change(doc)
    path.write_text(json.dumps(doc), encoding="utf-8")


def refused(run: Path, args: list[str], capsys: pytest.CaptureFixture[str], *names: str) -> str:
    """Run ``args``; assert one `error:` line naming each of ``names``, exit 2, and nothing written anywhere."""
    before = snapshot(run.parent)
    line = error_line(*run_cli(args, capsys)[::2])
    for name in names:
        assert name in line, line
    assert snapshot(run.parent) == before
    return line


# ------------------------------------------------------------------ 1: locks through links


@pytest.mark.parametrize("lock, args", [(".sample.lock", ["sample", "--run", "{run}", "--epochs", "1"]),
                                        (".train.lock", ["train", "--resume", "{run}", "--no-sample"])])
def test_1_a_lock_file_that_is_a_link_is_refused_and_its_target_never_written(run: Path, lock: str, args: list[str], capsys) -> None:
    """Item 1: `ln -s ~/notes.txt RUN/.sample.lock`, then `sample` wrote the lock JSON into ~/notes.txt (same with .train.lock)."""
    (run / lock).unlink()
    (run / lock).symlink_to(run.parent / "outside.txt")
    line = refused(run, [a.format(run=run) for a in args], capsys, lock, "symbolic link")
    assert "remove it" in line
    assert (run.parent / "outside.txt").read_text(encoding="utf-8") == "the user's notes\n"


def test_1_a_lock_file_that_is_a_fifo_is_refused_without_waiting(run: Path, capsys) -> None:
    (run / ".sample.lock").unlink()
    os.mkfifo(run / ".sample.lock")
    refused(run, ["sample", "--run", str(run), "--epochs", "1"], capsys, ".sample.lock", "FIFO")


# ------------------------------------------------------------------ 2: the report embeds only the run's own images


def test_2_no_module_opens_the_recorded_dataset_path() -> None:
    """Item 2 (fixed before, checked here): run.json's dataset.path is shown and compared, never a folder anything reads from.
    The report's originals: tests/test_report.py::test_originals_come_from_the_runs_own_data_never_from_the_recorded_path."""
    package = Path(__file__).resolve().parents[1] / "bespoke_kohya"
    users = {p.relative_to(package).as_posix(): [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if "dataset.path" in line or 'get("path")' in line]
             for p in package.rglob("*.py")}
    users = {k: v for k, v in users.items() if v}
    # session writes it; pixel24 compares it with the stand-in's folder (never opened); base.py/build.py rewrite it for a bundle.
    assert set(users) <= {"engines/session.py", "engines/pixel24/engine.py", "engines/protocol.py", "bundle/build.py", "runfolder/records.py"}, users
    assert not any(call in line for lines in users.values() for line in lines for call in ("check_dataset(", "open(", "glob(", "iterdir(", "load_rgb(")), users


def test_2_the_report_of_a_run_pointing_elsewhere_embeds_nothing_from_there(run: Path, tmp_path: Path, capsys) -> None:
    elsewhere = tmp_path / "private"
    elsewhere.mkdir()
    secret = make_punk(elsewhere / "secret.png", seed=99)
    edit_json(run / "run.json", lambda d: d["dataset"].update(path=str(elsewhere)))
    code, _, err = run_cli(["report", "--run", str(run), "--no-sample"], capsys)
    assert code == 0, err
    page = (run / "report" / "index.html").read_text(encoding="utf-8")
    import base64

    assert base64.b64encode(secret.read_bytes()).decode()[:60] not in page and str(elsewhere) not in page.split("dataset")[0]


# ------------------------------------------------------------------ 3: bundle --include-base


def test_3_a_base_folder_with_a_link_out_or_a_loop_is_refused_in_one_line(tmp_path: Path) -> None:
    """Item 3: `bundle --include-base` packed `leak.txt -> /etc/hostname`; a link loop inside the base was a shutil.Error traceback."""
    from bespoke_kohya.bundle.base import pack_base

    base = tmp_path / "base model"
    (base / "unet").mkdir(parents=True)
    (base / "unet" / "weights.bin").write_bytes(b"w")
    (base / "leak.txt").symlink_to("/etc/hostname")
    with pytest.raises(UserError, match=r"leak\.txt: symbolic links are not packed") as err:
        pack_base(base, tmp_path / "out1")
    assert "\n" not in str(err.value) and not any((tmp_path / "out1").rglob("leak.txt"))
    (base / "leak.txt").unlink()
    (base / "unet" / "loop").symlink_to(base / "unet")
    with pytest.raises(UserError, match=r"loop: symbolic links are not packed"):
        pack_base(base, tmp_path / "out2")
    (base / "unet" / "loop").unlink()
    os.mkfifo(base / "unet" / "pipe")
    with pytest.raises(UserError, match=r"pipe: not a regular file or folder"):
        pack_base(base, tmp_path / "out3")


# ------------------------------------------------------------------ 5 and 6: hangs


def test_5_a_fifo_named_png_in_a_dataset_is_refused_at_once(small_punks: Path) -> None:
    """Item 5: a FIFO named `*.png` made `dataset check` wait forever, silently."""
    os.mkfifo(small_punks / "zz-pipe.png")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "bespoke_kohya", "dataset", "check", str(small_punks)], capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "zz-pipe.png: is a FIFO (named pipe), not a regular file" in lines[0], result.stderr
    assert time.monotonic() - started < 60


def test_5_a_device_or_fifo_is_never_opened_as_an_image(tmp_path: Path) -> None:
    from bespoke_kohya.images import open_image

    os.mkfifo(tmp_path / "a.png")
    with pytest.raises(UserError, match="a.png: is a FIFO"):
        open_image(tmp_path / "a.png")
    with pytest.raises(UserError, match="zero: is a character device"):
        open_image(Path("/dev/zero"))


def test_6_twenty_thousand_seeds_are_refused_at_once_with_the_limit(run: Path, capsys) -> None:
    """Item 6: `--seeds` with 20,000 values took 10 s to parse (a quadratic duplicate check), then printed nothing for minutes."""
    seeds = ",".join(map(str, range(20_000)))
    started = time.monotonic()
    line = refused(run, ["sample", "--run", str(run), "--seeds", seeds], capsys, "--seeds", "20,000 values given, at most 1,000")
    assert time.monotonic() - started < 5 and len(line) < 200


def test_6_a_long_seed_list_is_parsed_in_linear_time() -> None:
    from bespoke_kohya.cli import _int_list

    values = ",".join(map(str, range(1000)))
    started = time.monotonic()
    for _ in range(50):
        assert _int_list(values, "--seeds", high=2**32 - 1, most=1000) == list(range(1000))
    assert time.monotonic() - started < 2
    with pytest.raises(UserError, match="999 given more than once"):
        _int_list(values + ",999", "--seeds", most=2000)
    with pytest.raises(UserError, match="is not a whole number"):
        _int_list("1," + "9" * 5000, "--seeds")


def test_6_the_suite_size_is_bounded_in_the_preset_and_at_sampling() -> None:
    from bespoke_kohya.engines.protocol import check_suite
    from bespoke_kohya.presets import load_preset

    with pytest.raises(UserError, match="at most 1000"):
        load_preset("pixel24", [f"sample.seeds=[{','.join(map(str, range(1001)))}]"])
    with pytest.raises(UserError, match="10,000"):
        check_suite(["a"] * 200, list(range(100)), (24, 24), factor=1)


def test_6_pixel24_writes_each_image_as_it_is_drawn() -> None:
    """Item 6: progress appeared only after a whole epoch; pixel24 now draws a few seeds at a time and writes each image."""
    from bespoke_kohya.engines.pixel24.engine import seed_chunks

    assert seed_chunks(4, [1, 2, 3, 4]) == [[1, 2, 3, 4]]  # the default suite: one call, as before
    chunks = seed_chunks(4, list(range(20_000)))
    assert [s for c in chunks for s in c] == list(range(20_000)) and max(map(len, chunks)) == 16
    assert seed_chunks(200, [1, 2]) == [[1], [2]]


# ------------------------------------------------------------------ 7, 8, 9: epoch keys and CSV cells


@pytest.mark.parametrize("key, args", [
    ("abc", ["sample", "--run", "{run}", "--epochs", "1"]),
    ("abc", ["train", "--resume", "{run}", "--no-sample"]),
    ("99999999999", ["report", "--run", "{run}", "--no-sample"]),
    ("99999999999", ["report", "--compare", "{run}", "{run}:1", "--out", "{run}/../cmp"]),
    ("-3", ["report", "--run", "{run}", "--no-sample"]),
])
def test_7_a_bad_epoch_key_in_run_json_is_one_line_naming_run_json(run: Path, key: str, args: list[str], capsys) -> None:
    """Item 7: run.json epochs with a key "abc" (sample, train --resume) or "99999999999" (report, --compare: MemoryError)
    were tracebacks, and report blamed samples/samples.json and advised deleting it."""
    edit_json(run / "run.json", lambda d: d["epochs"].update({key: "checkpoints/pixel24-000001.safetensors"}))
    line = refused(run, [a.format(run=run) for a in args], capsys, "run.json", "epochs")
    assert "samples.json" not in line and f"epoch '{key}' is not a whole number from 1 to 1000" in line


def test_8_a_bad_epoch_key_in_samples_json_is_refused_before_drawing(run: Path, capsys) -> None:
    """Item 8: samples.json epoch key "x": `sample --prompt` drew, then crashed while printing."""
    edit_json(run / "samples" / "samples.json", lambda d: d["epochs"].update(x=d["epochs"]["1"]))
    refused(run, ["sample", "--run", str(run), "--prompt", "lady", "--seeds", "3"], capsys, "samples.json", "epochs", "'x'")


def test_9_a_loss_cell_over_128_kib_is_one_line(run: Path, capsys) -> None:
    """Item 9: `logs/loss.csv` with a field over 128 KiB was a `_csv.Error` traceback."""
    with (run / "logs" / "loss.csv").open("a", encoding="utf-8") as fh:
        fh.write('5,1,"' + "1" * (130 * 1024) + '",,\n')
    refused(run, ["report", "--run", str(run), "--no-sample"], capsys, "loss.csv", "field larger than field limit", "delete it")


# ------------------------------------------------------------------ 10, 11: pixel24's own files


@pytest.mark.parametrize("change, field", [
    (lambda c: c["unet"].update(block_out_channels="abc"), "unet.block_out_channels"),
    (lambda c: c.update(vocab=5), "vocab"),
    (lambda c: c.update(palette=["#zzzzzz"]), "palette.0"),
    (lambda c: c["unet"].update(dropout=0.5), "unet.dropout: not a key pixel24 writes"),
    (lambda c: c.update(text={}), "text.dim"),
    (lambda c: c.update(unet="x"), "unet"),
    (lambda c: c["unet"].update(block_out_channels=[4096, 4096, 4096]), "unet.block_out_channels"),
    (lambda c: c["unet"].update(attention_head_dim=7), "unet.attention_head_dim"),
    (lambda c: c["settings"].update(attention_levels=9), "settings.attention_levels"),  # version 3's fields, bounded as the preset's
    (lambda c: c.update(background={"head": True}), "background: the file has a background head but settings.background_head is False"),
])
def test_10_a_tampered_pixel24_json_is_one_line_naming_the_field(run: Path, change, field: str, capsys) -> None:
    """Item 10: tampered pixel24.json fields were tracebacks; [4096, 4096, 4096] skipped the preset's parameter cap (~28 GB)."""
    edit_json(run / "checkpoints" / "pixel24.json", change)
    line = refused(run, ["sample", "--run", str(run), "--epochs", "1"], capsys, "pixel24.json", field)
    if "4096" in repr(change.__code__.co_consts):
        assert "million parameters" in line


def test_10_train_from_a_tampered_base_is_one_line_and_the_run_says_failed(run: Path, tmp_path: Path, small_punks: Path, capsys) -> None:
    """Item 10: `train --set pixel24.base=<such a run>` crashed and left run.json "running"."""
    from tests.helpers.trust import TINY_SETS

    edit_json(run / "checkpoints" / "pixel24.json", lambda c: c["unet"].update(block_out_channels="abc"))
    new = tmp_path / "new run"
    sets = [s for s in TINY_SETS if not s.startswith("pixel24.base=")] + [f"pixel24.base={run}"]
    code, _, err = run_cli(["train", "--preset", "pixel24", "--dataset", str(small_punks), "--run-dir", str(new), "--cpu", *(f"--set={s}" for s in sets)], capsys)
    assert "pixel24.json: unet.block_out_channels" in error_line(code, err)
    assert run_document(new)["status"] == "failed"


def _interrupted(run: Path) -> None:
    edit_json(run / "run.json", lambda d: d.update(status="interrupted"))


@pytest.mark.parametrize("content, message", [
    ("{}", "pixel24-state.json: step: Field required"),
    ('{"step": 4, "epoch": 2, "param_groups": "x"}', "pixel24-state.json: param_groups: Input should be a valid list"),
    ('{"step": -1, "epoch": 2, "param_groups": []}', "pixel24-state.json: step: Input should be greater than or equal to 0"),
])
def test_11_a_damaged_resume_state_is_one_line_and_the_run_is_left_as_it_was(run: Path, content: str, message: str, capsys) -> None:
    """Item 11: `pixel24-state.json` = `{}` was a KeyError traceback on `train --resume`."""
    _interrupted(run)
    (run / "checkpoints" / "pixel24-state.json").write_text(content, encoding="utf-8")
    line = refused(run, ["train", "--resume", str(run), "--no-sample"], capsys, message)
    assert "delete checkpoints/pixel24-state.*" in line


def test_11_a_resume_state_that_does_not_fit_is_one_line(run: Path, capsys) -> None:
    _interrupted(run)
    edit_json(run / "checkpoints" / "pixel24-state.json", lambda d: d["param_groups"][0].update(betas=[0.5, 0.5]))
    code, _, err = run_cli(["train", "--resume", str(run), "--no-sample"], capsys)
    assert "pixel24-state.json: param_groups.0.betas" in error_line(code, err)
    assert run_document(run)["status"] == "failed"  # recorded as failed (the model had to be built to tell), epochs kept
    assert sorted(run_document(run)["epochs"]) == ["1", "2"]


def test_11_a_non_utf8_caption_in_the_runs_data_is_one_line(run: Path, capsys) -> None:
    _interrupted(run)
    caption = sorted((run / "data").rglob("*.txt"))[0]
    caption.write_bytes(b"lad, \xff\xfe green")
    refused(run, ["train", "--resume", str(run), "--no-sample"], capsys, caption.name, "not UTF-8")


# ------------------------------------------------------------------ 12, 13: read-only folder, full disk


def test_12_a_read_only_run_folder_is_one_line_for_report(run: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Item 12: `report` on a read-only run folder gave `OSError: [Errno 30]` (tests run as root, so the mount is simulated)."""
    import bespoke_kohya.atomic as atomic

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(run / ".report.partial-x"))

    monkeypatch.setattr(atomic.tempfile, "mkdtemp", read_only)
    line = refused(run, ["report", "--run", str(run), "--no-sample"], capsys, "cannot write report/", "read-only", "cp -r")
    assert "Errno" not in line


def test_13_a_full_disk_while_training_pixel24_is_the_documented_line_and_resume_works(run: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Item 13: disk full while training pixel24 was `SafetensorError … No space left on device` instead of the documented line."""
    import safetensors.torch
    from safetensors import SafetensorError

    for name in (".train.lock",):
        assert (run / name).exists()
    for epoch_file in (run / "checkpoints").glob("pixel24-*.safetensors"):
        epoch_file.unlink()
    (run / "checkpoints" / "pixel24-state.json").unlink()
    edit_json(run / "run.json", lambda d: d.update(status="interrupted", epochs={}))

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    code, _, err = run_cli(["train", "--resume", str(run), "--no-sample"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: disk full while writing ") and "pixel24-000001.safetensors" in lines[0], err
    assert not list((run / "checkpoints").glob(".*"))  # no temporary left behind
    monkeypatch.undo()
    code, _, err = run_cli(["train", "--resume", str(run), "--no-sample"], capsys)
    assert code == 0, err
    assert sorted(run_document(run)["epochs"]) == ["1", "2"]


# ------------------------------------------------------------------ 14, 15, 16


def test_14_repeated_seeds_are_refused_by_the_preset(small_punks: Path, tmp_path: Path, capsys) -> None:
    """Item 14: `--set "sample.seeds=[1,1]"` trained, then sampling failed and the run was stuck (resume refuses --set)."""
    code, _, err = run_cli(["train", "--preset", "pixel24", "--dataset", str(small_punks), "--run-dir", str(tmp_path / "r"), "--set", "sample.seeds=[1,1]"], capsys)
    line = error_line(code, err)
    assert "sample.seeds" in line and "1 listed more than once; give each seed once" in line
    assert not (tmp_path / "r").exists()


def test_15_a_caption_of_only_commas_is_a_missing_caption_not_an_empty_fix(small_punks: Path, tmp_path: Path, capsys) -> None:
    """Item 15: `captions --fix` on a caption of only commas said "1 of 3 changed" with an empty diff and wrote an empty caption."""
    caption = sorted(small_punks.glob("*.txt"))[0]
    caption.write_text(" , ,, ,", encoding="utf-8")
    code, out, err = run_cli(["dataset", "captions", str(small_punks), "--fix", "--out", str(tmp_path / "fixed")], capsys)
    assert code == 0, err
    assert f"{caption.stem}.png: missing" in out.replace("\n", " ") or "missing" in out
    assert not (tmp_path / "fixed" / caption.name).exists()  # no empty caption written: training uses the default caption
    assert all(p.read_text(encoding="utf-8").strip() for p in (tmp_path / "fixed").glob("*.txt"))


def test_16_a_checkpoint_replaced_by_a_folder_says_so(run: Path, capsys) -> None:
    """Item 16: a checkpoint replaced by a directory read "cannot read this LoRA file" on a pixel24 run."""
    ckpt = run / "checkpoints" / "pixel24-000001.safetensors"
    ckpt.unlink()
    ckpt.mkdir()
    line = refused(run, ["sample", "--run", str(run), "--epochs", "1"], capsys, "pixel24-000001.safetensors", "is a folder, not a regular file")
    assert "LoRA" not in line


def test_16_sample_prompt_says_which_epochs_it_drew_and_quotes_the_next_command(run: Path, capsys) -> None:
    """Item 16: `sample --prompt` printed "sampled epochs  →" with an empty list; `next:` was not quoted for paths with spaces."""
    spaced = run.rename(run.parent / "my run")
    code, out, err = run_cli(["sample", "--run", str(spaced), "--prompt", "lady", "--seeds", "3"], capsys)
    assert code == 0, err
    assert f"sampled epoch(s) 1, 2 → {spaced / 'samples' / 'adhoc'}" in out
    assert f"next: bespoke-kohya report --run '{spaced}'" in out


# ------------------------------------------------------------------ 17


def test_17_a_stale_loss_temporary_is_removed_by_the_next_training(run: Path, capsys) -> None:
    """Item 17: after SIGKILL or SIGTERM a `logs/.loss.csv.XXXX` temp file stayed, even after a good resume."""
    (run / "logs" / ".loss.csv.k1ll3d").write_text("step\n1\n", encoding="utf-8")
    (run / "logs" / ".loss.csv.flush").write_text("step\n1\n", encoding="utf-8")
    _interrupted(run)
    code, _, err = run_cli(["train", "--resume", str(run), "--no-sample"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (run / "logs").iterdir() if p.name.startswith(".")) == []


def test_17_pixel24_stops_on_sigterm_like_ctrl_c(small_punks: Path, tmp_path: Path) -> None:
    """Item 17: pixel24 did not treat SIGTERM as an interrupt (kohya does): the run stayed `running` with a stray temporary."""
    run = tmp_path / "R"
    sets = ["pixel24.base=none", "pixel24.steps=4000", "pixel24.epochs=400", "pixel24.block_out_channels=[16,32]", "pixel24.batch_size=4",
            "pixel24.text_dim=16", "pixel24.colour_dim=8", "pixel24.feature_dim=16"]
    child = subprocess.Popen([sys.executable, "-m", "bespoke_kohya", "train", "--preset", "pixel24", "--dataset", str(small_punks), "--run-dir", str(run),
                              "--no-sample", "--cpu", *(f"--set={s}" for s in sets)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "checkpoints" / "pixel24-state.json").exists():
        time.sleep(0.05)
    child.terminate()
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert run_document(run)["status"] == "interrupted"
    assert not [p.name for p in (run / "logs").iterdir() if p.name.startswith(".")]


def test_17_report_and_compare_folders_get_the_ordinary_mode(run: Path, tiny: Path, tmp_path: Path, capsys) -> None:
    """Item 17: `report/` and `compare-*/` were created mode 0700."""
    old = os.umask(0o022)
    try:
        assert run_cli(["report", "--run", str(run), "--no-sample"], capsys)[0] == 0
        other = copy_run(tiny, tmp_path / "other")
        code, _, err = run_cli(["report", "--compare", f"{run}:1", f"{other}:2"], capsys)
        assert code == 0, err
    finally:
        os.umask(old)
    assert stat.S_IMODE((run / "report").stat().st_mode) == 0o755
    compare = next(tmp_path.glob("compare-*"))
    assert stat.S_IMODE(compare.stat().st_mode) == 0o755


# ------------------------------------------------------------------ the layout: links and special files in place of run folders


@pytest.mark.parametrize("rel", ["samples", "logs", "checkpoints", "report", "samples/adhoc", "config"])
def test_a_run_folder_that_is_a_link_is_refused_before_anything_is_read_or_written(run: Path, rel: str, capsys) -> None:
    """A folder of the run that is a link would lead reads and writes out of the run: refused by every command."""
    import shutil

    target = run.parent / f"elsewhere-{rel.replace('/', '-')}"
    if (run / rel).exists():
        shutil.move(str(run / rel), str(target))
    else:
        target.mkdir()
    (run / rel).symlink_to(target)
    for args in (["sample", "--run", str(run), "--epochs", "1"], ["report", "--run", str(run), "--no-sample"]):
        refused(run, args, capsys, rel, "symbolic link")


# ------------------------------------------------------------------ the one helper every reader and writer of run files uses


def test_regular_files_only_links_never_followed_sizes_bounded(tmp_path: Path) -> None:
    from bespoke_kohya.regular import create_regular, no_links_below, read_regular

    (tmp_path / "f").write_bytes(b"12345")
    (tmp_path / "link").symlink_to(tmp_path / "f")
    os.mkfifo(tmp_path / "pipe")
    assert read_regular(tmp_path / "f", limit=5) == b"12345" and read_regular(tmp_path / "missing", limit=5) is None
    assert read_regular(tmp_path / "link", limit=5, follow=True) == b"12345"
    for path, message in [(tmp_path / "link", "is a symbolic link"), (tmp_path / "pipe", "is a FIFO"), (tmp_path, "is a folder")]:
        with pytest.raises(UserError, match=message):
            read_regular(path, limit=5)
    with pytest.raises(UserError, match="larger than 4 bytes"):
        read_regular(tmp_path / "f", limit=4)
    for append in (False, True):  # a lock (read-write) and a log (append): never through a link, never a FIFO
        with pytest.raises(UserError, match="is a symbolic link"):
            create_regular(tmp_path / "link", append=append)
        with pytest.raises(UserError, match="is a FIFO"):
            create_regular(tmp_path / "pipe", append=append)
    assert (tmp_path / "f").read_bytes() == b"12345"
    (tmp_path / "run" / "real").mkdir(parents=True)
    (tmp_path / "run" / "logs").symlink_to(tmp_path / "run" / "real")
    with pytest.raises(UserError, match=r"run/logs: is a symbolic link"):
        no_links_below(tmp_path / "run", tmp_path / "run" / "logs" / "loss.csv")
    no_links_below(tmp_path / "run", tmp_path / "run" / "real" / "not-yet")  # what does not exist yet is fine
