"""Shared fixtures: the real Bespoke Punks by path (helpers live in tests/helpers/)."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASET = Path(os.environ.get("BESPOKE_DATASET", REPO.parent / "shared" / "datasets" / "bespoke-punks-24"))


@pytest.fixture(scope="session", autouse=True)
def ctrl_c_reaches_the_tests() -> None:
    """Several tests press Ctrl-C (SIGINT). A shell that starts pytest in the background (`cmd &`) sets
    SIGINT to ignored, Python then never raises KeyboardInterrupt, and children inherit the ignoring:
    those tests would hang instead of testing. Give this process (and so its children) the terminal default."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def punks_dir() -> Path:
    """The real Bespoke Punks folder (read-only); skips when it is not beside the repo."""
    if not SHARED_DATASET.is_dir():
        pytest.skip(f"real dataset not found at {SHARED_DATASET} (set BESPOKE_DATASET)")
    return SHARED_DATASET


@pytest.fixture
def small_punks(punks_dir: Path, tmp_path: Path) -> Path:
    """A writable copy of 8 real punks (with captions), in a folder whose name has a space."""
    out = tmp_path / "small punks"
    out.mkdir()
    for png in sorted(punks_dir.glob("*.png"))[:8]:
        shutil.copy(png, out / png.name)
        caption = png.with_suffix(".txt")
        if caption.exists():
            shutil.copy(caption, out / caption.name)
    return out
