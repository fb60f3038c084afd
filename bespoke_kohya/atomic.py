"""Atomic writes, one of each: a file replaced whole, and a folder built privately then swapped in.

Standard library only: bundles use it before anything is installed. Every output of the
tool goes through these, so a crash, Ctrl-C or a full disk never leaves half a file or
half a folder where a reader could find it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Literal

from .errors import UserError


def umask() -> int:
    """The process umask (read without changing it for longer than the call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` a temporary file beside ``path``, then rename it over ``path``: readers never see half a file.

    The file gets the permissions of an ordinary new file (mkstemp makes it private); a
    failure leaves neither a partial file nor a stray temporary one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # say which file the disk filled on, not its temporary name
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON (indented, trailing newline) atomically."""
    write_atomic(path, lambda p: p.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8"))


# Why a folder cannot be written: a read-only mount, or no permission (a run folder from elsewhere, unpacked read-only).
READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


def read_only(exc: BaseException) -> bool:
    """Whether ``exc`` says the place cannot be written (not that the disk is full, or a bug)."""
    return isinstance(exc, OSError) and exc.errno in READ_ONLY_ERRNOS


# What to do when the target folder exists when the staged one is ready:
#   refuse   a new output (a run, a comparison): an existing non-empty target is a UserError
#   replace  a rebuilt output (an epoch's samples, a report): the old one goes once the new one is in place
#   keep     a cache another process may build too (a base model): whoever finishes first wins
Existing = Literal["refuse", "replace", "keep"]


@contextmanager
def staged_folder(target: Path, existing: Existing = "refuse", *, refusal: str = "", start_from_target: bool = False) -> Iterator[Path]:
    """Yield a hidden folder beside ``target`` to fill; when the block ends it becomes ``target`` whole.

    A failure or Ctrl-C inside the block removes the staged folder and leaves ``target`` as it
    was. ``refusal`` is the end of the one-line error when ``existing="refuse"`` finds a
    non-empty ``target`` (say what to choose instead). ``start_from_target``: the staged folder
    starts as a copy of ``target``, so the block adds to what is there.
    """
    target = Path(target)
    if existing == "refuse":
        _refuse_existing(target, refusal)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        if start_from_target and target.is_dir():
            shutil.copytree(target, staging, dirs_exist_ok=True)
        yield staging
        staging.chmod(0o777 & ~umask())  # mkdtemp makes it private; the result is an ordinary folder
        _move_into_place(staging, target, existing, refusal)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _refuse_existing(target: Path, refusal: str) -> None:
    if target.is_symlink() or (target.exists() and (not target.is_dir() or any(target.iterdir()))):
        raise UserError(f"{target}: already exists; {refusal or 'it is never overwritten, choose another folder'}")


def _move_into_place(staging: Path, target: Path, existing: Existing, refusal: str) -> None:
    if existing == "replace" and (target.exists() or target.is_symlink()):
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rmdir(old)
        os.rename(target, old)
        try:
            os.rename(staging, target)
        except BaseException:
            os.rename(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
            target.rmdir()  # an empty folder made on purpose (e.g. `mkdir out` before `--out out`)
        os.rename(staging, target)  # refuses a target that appeared and is not empty
    except OSError:
        if not target.exists():
            raise
        if existing == "keep":  # another process built it meanwhile; theirs is as good as ours
            shutil.rmtree(staging, ignore_errors=True)
            return
        raise UserError(f"{target}: already exists (made by another process meanwhile); {refusal or 'choose another folder'}") from None
