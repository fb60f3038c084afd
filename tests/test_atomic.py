"""atomic.staged_folder: a folder appears whole or not at all, and an existing one is never overwritten."""

from __future__ import annotations

from pathlib import Path

import pytest

from bespoke_kohya.atomic import staged_folder
from bespoke_kohya.errors import UserError


def create_run_dir(target: Path, build) -> None:
    with staged_folder(target, refusal="runs are never overwritten") as tmp:
        build(tmp)


def test_failure_leaves_nothing(tmp_path: Path):
    def boom(tmp: Path):
        (tmp / "half").write_text("written")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        create_run_dir(tmp_path / "run", boom)
    assert list(tmp_path.iterdir()) == []


def test_losing_a_race_for_the_same_out_is_one_line(tmp_path: Path):
    """Issue 12 (tracebacks): two `render --out SAME` at once left the loser with a raw OSError."""
    target = tmp_path / "run"

    def other_render_wins(tmp: Path):
        (tmp / "mine").write_text("loser's files")
        target.mkdir()  # the other process finishes first, while this one is still building
        (target / "theirs").write_text("winner's files")

    with pytest.raises(UserError) as e:
        create_run_dir(target, other_render_wins)
    assert str(e.value).startswith(f"{target}: already exists (made by another process meanwhile)")
    assert [p.name for p in tmp_path.iterdir()] == ["run"] and [p.name for p in target.iterdir()] == ["theirs"]


