"""A tiny real pixel24 run built through the CLI, and what the untrusted-run-folder tests (issue 26) check with it.

`build_tiny_run` trains a ~0.1 M-parameter pixel24 model for 4 steps (2 epochs) on 8 real
punks, samples both epochs and writes the report: every run file exists, for real
(run.json, samples.json, loss.csv, validation.csv, pixel24.json, the resume state, the
locks, report/metrics.json). `snapshot` is what "nothing written" is checked against.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

import pytest

from bespoke_kohya.cli import main

TINY_SETS = [
    "pixel24.base=none", "pixel24.steps=4", "pixel24.epochs=2", "pixel24.block_out_channels=[16,32]", "pixel24.batch_size=4",
    "pixel24.text_dim=16", "pixel24.colour_dim=8", "pixel24.feature_dim=16", "pixel24.palette_size=32", "pixel24.sample_steps=2",
    "pixel24.refine_rounds=0", "pixel24.warmup_steps=1", 'sample.prompts=["lad, green background"]', "sample.seeds=[1]",
    "sample.heldout_seeds=1", "dataset.validation_split=0.25", "dataset.num_repeats=1",
]
LOCKS = (".train.lock", ".sample.lock")


def build_tiny_run(run_dir: Path, dataset: Path) -> Path:
    """Train, sample and report a tiny pixel24 run through the CLI (about ten seconds on two cores)."""
    args = ["train", "--preset", "pixel24", "--dataset", str(dataset), "--run-dir", str(run_dir), "--cpu", *(f"--set={s}" for s in TINY_SETS)]
    assert main(args) == 0
    assert main(["report", "--run", str(run_dir), "--no-sample"]) == 0
    for name in LOCKS:  # both roles have run once: the lock files exist, as in any used run folder
        assert (run_dir / name).is_file()
    return run_dir


def copy_run(source: Path, dest: Path) -> Path:
    """A fresh copy of the built run (links and all, as a tarball would bring it)."""
    shutil.copytree(source, dest, symlinks=True)
    return dest


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` by relative path: its kind and content (a link's target), never following links.

    Lock files count by kind only: taking a lock rewrites who holds it, which is no output of a command.
    """
    out: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(mode):
                out[rel] = ("dir",)
            elif stat.S_ISREG(mode):
                out[rel] = ("file",) if name in LOCKS else ("file", hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                out[rel] = ("special", stat.S_IFMT(mode))
    return out


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``bespoke-kohya ARGS`` in this process: (exit status, stdout, stderr). Anything but a UserError escapes as a test failure."""
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's refusals
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_line(code: int, err: str) -> str:
    """The one `error:` line of a refusal (exit 2), or an assertion saying what came instead."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and len([l for l in lines if not l.startswith("warning")]) == 1, (code, err)
    return errors[0]
