"""This package as a wheel for the GPU box: built from the checkout's sources, offline, or a given one checked."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from ..paths import REPO_ROOT


def source_root() -> Path:
    """The checkout this package runs from (it holds pyproject.toml), or a UserError."""
    root = REPO_ROOT
    if not (root / "pyproject.toml").is_file():
        raise UserError(
            f"bundle builds a wheel of bespoke-kohya from its source checkout, but this copy is installed without one ({root} has no pyproject.toml); "
            "run it from a git checkout, or pass --wheel FILE.whl"
        )
    return root


def build_wheel(repo_root: Path, out_dir: Path, log: Callable[[str], None] = lambda _: None) -> Path:
    """Build this package's wheel into `out_dir` from a clean copy of the sources, offline.

    The copy keeps setuptools' `build/` and `*.egg-info` out of the checkout, so files
    deleted from the package cannot linger in the wheel through a stale `build/lib`.
    """
    with tempfile.TemporaryDirectory(prefix="bespoke-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE", "setup.cfg", "MANIFEST.in"):
            if (repo_root / name).is_file():
                shutil.copy2(repo_root / name, src / name)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
        shutil.copytree(repo_root / "bespoke_kohya", src / "bespoke_kohya", ignore=ignore)
        if (repo_root / "presets").is_dir():
            shutil.copytree(repo_root / "presets", src / "presets", ignore=ignore)
        built = Path(tmp) / "dist"
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--disable-pip-version-check", "-q", "-w", str(built), str(src)]
        log("building the wheel: " + " ".join(cmd[2:5]) + " …")
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"building the bespoke-kohya wheel failed (pip wheel exit {done.returncode}): {last}; check that setuptools and wheel are installed in this environment")
        wheels = sorted(built.glob("*.whl"))
        if len(wheels) != 1:
            raise UserError(f"pip wheel made {len(wheels)} wheel files ({', '.join(w.name for w in wheels) or 'none'}), expected one")
        out_dir.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy2(wheels[0], out_dir / wheels[0].name))


def check_wheel(path: Path) -> None:
    """Refuse a --wheel that is not a bespoke-kohya wheel able to run go.sh's helper."""
    if not path.is_file():
        raise UserError(f"--wheel {path}: no such file; build one with `pip wheel --no-deps -w dist .` or leave --wheel out")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
    except zipfile.BadZipFile:
        raise UserError(f"--wheel {path}: not a wheel (not a zip file); build one with `pip wheel --no-deps -w dist .`") from None
    if not path.name.startswith("bespoke_kohya-") or "bespoke_kohya/bundle/gohelper.py" not in names:
        raise UserError(f"--wheel {path}: not a bespoke-kohya wheel with bespoke_kohya/bundle/gohelper.py in it; build it from this checkout")


def source_root_or_none() -> Path | None:
    """The source checkout, or None for an installed copy."""
    try:
        return source_root()
    except UserError:
        return None
