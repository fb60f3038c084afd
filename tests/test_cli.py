"""The command line as a user meets it: real subprocesses, exit codes, one-line errors, no partial output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.punks import make_punk


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bespoke_kohya", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_presets_lists_every_preset():
    r = cli("presets")
    assert r.returncode == 0
    for name in ("sd15_512", "sd15_576", "sdxl_512", "sdxl_24_native", "pixnite_sd15", "pixel24"):
        assert name in r.stdout
    assert "network_dim" in cli("presets", "--explain").stdout


def test_render_sd15_512_end_to_end(punks_dir: Path, tmp_path: Path):
    out = tmp_path / "X"
    r = cli("render", "--preset", "sd15_512", "--dataset", str(punks_dir), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "config" / "train.toml").is_file() and (out / "config" / "dataset.toml").is_file()
    assert len(list((out / "data" / "10_bespoke_punk").glob("*.png"))) == 184
    assert "no caption" in r.stderr


@pytest.mark.parametrize(
    "case, expect",
    [
        ("bad_override", "kohya.network_dim: Input should be greater than or equal to 1 (got -3)"),
        ("missing_dataset", "dataset folder not found"),
        ("wrong_size", "bad.png: image is 23x24, expected 24x24"),
    ],
)
def test_bad_input_one_line_nonzero_nothing_written(case: str, expect: str, small_punks: Path, tmp_path: Path):
    out = tmp_path / "out"
    dataset = small_punks
    extra: list[str] = []
    if case == "bad_override":
        extra = ["--set", "network_dim=-3"]
    elif case == "missing_dataset":
        dataset = tmp_path / "no such folder"
    else:
        make_punk(small_punks / "bad.png", size=(23, 24))
    r = cli("render", "--preset", "sd15_512", "--dataset", str(dataset), "--out", str(out), *extra)
    assert r.returncode != 0
    lines = error_lines(r)
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists() and list(tmp_path.glob(".out*")) == []


def test_existing_run_is_refused(small_punks: Path, tmp_path: Path):
    out = tmp_path / "out"
    assert cli("render", "--preset", "sd15_576", "--dataset", str(small_punks), "--out", str(out)).returncode == 0
    before = sorted(p.name for p in out.rglob("*"))
    r = cli("render", "--preset", "sd15_576", "--dataset", str(small_punks), "--out", str(out))
    assert r.returncode != 0 and "already exists" in r.stderr
    assert sorted(p.name for p in out.rglob("*")) == before


def test_dataset_check_prints_the_table(punks_dir: Path):
    r = cli("dataset", "check", str(punks_dir))
    assert r.returncode == 0
    assert "184" in r.stdout and "lad_057_Hughx" in r.stdout and "lady_063_PVR" in r.stdout


def test_doctor_runs_and_names_fixes():
    r = cli("doctor")
    assert r.returncode == 0
    assert "torch" in r.stdout and "sd-scripts" in r.stdout


def test_train_dry_run_prints_the_command_and_writes_only_the_run(small_punks: Path, tmp_path: Path):
    run = tmp_path / "my run"
    r = cli("train", "--preset", "sd15_576", "--dataset", str(small_punks), "--run-dir", str(run), "--dry-run", "--cpu")
    assert r.returncode == 0, r.stderr
    assert "accelerate.commands.launch" in r.stdout and "train_network.py" in r.stdout and "--cpu" in r.stdout
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "dry-run" and record["resolved"]["kohya"]["mixed_precision"] == "no"
    assert sorted(p.name for p in run.iterdir()) == ["config", "data", "run.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my run", "small punks"]


def test_vendor_is_a_subcommand_and_the_makefile_calls_it():
    r = cli("vendor", "--help")
    assert r.returncode == 0 and "--source" in r.stdout and "--torch" in r.stdout
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text(encoding="utf-8")
    assert "bespoke-kohya vendor" in makefile and "python -m bespoke_kohya.vendor" not in makefile


def test_a_damaged_run_json_is_one_error_line_and_exit_2(tmp_path: Path):
    (tmp_path / "run.json").write_text('["not", "an", "object"]', encoding="utf-8")
    r = cli("report", "--run", str(tmp_path))
    assert r.returncode == 2
    assert error_lines(r) == [f"error: {tmp_path / 'run.json'}: expected a JSON object, found list; restore it from a copy or render the run again"]


# ------------------------------------------------------------------ issue 12: one line for each bad value


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = error_lines(result)
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize(
    "flag, value, expect",
    [
        ("--epochs", "1,1", "1 given more than once"),
        ("--seeds", ",,", "empty item"),
        ("--seeds", "3,,4", "empty item"),
        ("--seeds", "99999999999999999999", "out of range; use whole numbers from 0 to 4294967295"),
        ("--epochs", "-2", "out of range"),
    ],
)
def test_sample_lists_are_refused_in_one_line(tmp_path: Path, flag: str, value: str, expect: str):
    """Issue 12: `--epochs 1,1`, `--seeds ,,` were accepted silently; `--seeds 99999999999999999999` raised Overflow."""
    line = one_error_line(cli("sample", "--run", str(tmp_path / "run"), flag, value))
    assert flag in line and expect in line


@pytest.mark.parametrize("args, expect", [
    (["train", "--num-gpus", "0"], "--num-gpus: must be a whole number of at least 1, got '0'"),
    (["train", "--num-gpus", "-3"], "--num-gpus: must be a whole number of at least 1, got '-3'"),
    (["postprocess", "x.png", "--out", "o", "--max-delta-e", "nan"], "--max-delta-e: must be a finite number of at least 0, got 'nan'"),
    (["postprocess", "x.png", "--out", "o", "--max-delta-e", "-1"], "--max-delta-e: must be a finite number of at least 0, got '-1'"),
])
def test_out_of_range_flags_are_refused_in_one_line(small_punks: Path, tmp_path: Path, args: list[str], expect: str):
    """Issue 12: `--num-gpus 0` or `-3` and `--max-delta-e nan` or `-1` were accepted silently."""
    extra = ["--preset", "sd15_576", "--dataset", str(small_punks), "--run-dir", str(tmp_path / "r"), "--dry-run", "--cpu"] if args[0] == "train" else []
    line = one_error_line(cli(*args, *extra, cwd=tmp_path))
    assert expect in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small punks"]


def test_dataset_check_refuses_a_decompression_bomb_in_one_line(tmp_path: Path):
    """Issue 12 (tracebacks): a PNG claiming 30000x30000 raised DecompressionBombError in `dataset check`."""
    from tests.test_dataset import png_claiming

    make_punk(tmp_path / "ok.png")
    png_claiming(tmp_path / "bomb.png", 30000, 30000)
    line = one_error_line(cli("dataset", "check", str(tmp_path)))
    assert "bomb.png" in line and "at most 4096x4096" in line


def test_postprocess_out_file_and_noise(tmp_path: Path):
    """Issue 12: `postprocess IMG --out FILE` raised FileExistsError; a 512x512 noise image was taken for pixel art silently."""
    import numpy as np
    from PIL import Image

    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(noise)
    target = tmp_path / "taken.png"
    target.write_bytes(b"mine")
    line = one_error_line(cli("postprocess", str(noise), "--out", str(target)))
    assert "taken.png: --out is an existing file, not a folder" in line and target.read_bytes() == b"mine"
    r = cli("postprocess", str(noise), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "warning: " in r.stderr and "noise.png: does not look like upscaled pixel art" in r.stderr


def test_a_full_disk_is_one_line_and_exit_1(monkeypatch, capsys):
    """Issue 12 ('disk full' in README's What happens when…): ENOSPC anywhere ends in one line, not a traceback."""
    import errno

    from bespoke_kohya import cli

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/checkpoints/pixel24-000003.safetensors")

    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser(), full))
    assert cli.main(["presets"]) == 1
    err = capsys.readouterr().err
    assert "disk full while writing /runs/x/checkpoints/pixel24-000003.safetensors" in err and "Traceback" not in err


def _with_func(parser, func):
    original = parser.parse_args

    def parse_args(argv=None):
        args = original(argv)
        args.func = func
        return args

    parser.parse_args = parse_args
    return parser
