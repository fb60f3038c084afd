"""What travels home from the GPU box: `RUN/results.tar.gz` with everything the report and a comparison read.

Standard library only (go.sh runs it). Left out: the environments, the base model, and the
files the run's engine needs only to resume training (bundle.json `resume_only`: kohya's
`-state` folders, pixel24's optimiser state), several times a checkpoint's size.
"""

from __future__ import annotations

import fnmatch
import os
import time
from pathlib import Path

from ..errors import UserError
from ..runfolder import BUNDLE_JSON, RESULTS, RUN_JSON, bundle_document, run_document
from .tarball import tree_members, write_tarball

# What `results.tar.gz` carries home: everything the report and a later comparison read.
RESULT_ITEMS = (RUN_JSON, BUNDLE_JSON, "reproduce.json", "config", "logs", "checkpoints", "samples", "report", "data")


def _resume_only(run_dir: Path) -> list[str]:
    """The engine's resume-only patterns, as the bundle recorded them."""
    patterns = bundle_document(run_dir).get("resume_only") if (run_dir / BUNDLE_JSON).is_file() else None
    return [p for p in patterns if isinstance(p, str)] if isinstance(patterns, list) else []


def result_members(run_dir: Path) -> list[Path]:
    """The files and folders of a trained run that travel home (relative to the run)."""
    skip = _resume_only(run_dir)
    members: list[Path] = []
    for item in RESULT_ITEMS:
        path = run_dir / item
        if path.is_symlink():
            raise UserError(f"{path}: symbolic links are not packed; replace it by the file itself")
        if path.is_file():
            members.append(Path(item))
        elif path.is_dir():
            members.append(Path(item))
            members += [rel for rel in (Path(item) / r for r in tree_members(path)) if not any(fnmatch.fnmatch(rel.as_posix(), p) for p in skip)]
    return members


def pack_results(run_dir: Path) -> tuple[Path, int]:
    """Write `RUN/results.tar.gz`: what the report needs back home, as `<run folder>/...` members."""
    run_dir = run_dir.resolve()
    run_document(run_dir)
    out = run_dir / RESULTS
    tmp_out = run_dir / f".{RESULTS}.new"
    tmp_out.unlink(missing_ok=True)
    size = write_tarball(run_dir, run_dir.name, tmp_out, result_members(run_dir), int(time.time()))
    os.replace(tmp_out, out)  # results are rebuilt whenever the report changes
    return out, size
