"""Who may write a run right now: one trainer and one sampler at a time (standard library only).

Each role holds an ``fcntl.flock`` on its own file in the run folder (``.train.lock``,
``.sample.lock``) for as long as it works. The kernel drops a flock when its process dies,
however it dies (Ctrl-C, SIGKILL, out of memory), so a free lock on a run whose run.json
still says ``running`` means the trainer is gone: the run was interrupted.

A second process is refused at once rather than made to wait: a training or a sampling
takes minutes to hours, and a command that hangs silently behind another looks broken.
Training and sampling use separate locks because sampling only reads checkpoints that
run.json already records, so drawing finished epochs while later ones train is safe.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from ..errors import UserError
from ..regular import create_regular, open_regular

TRAIN = "train"
SAMPLE = "sample"
GENERATE = "generate"  # held in a collection folder (not a run) while `generate` writes it
LOCK_FILES = {TRAIN: ".train.lock", SAMPLE: ".sample.lock", GENERATE: ".generate.lock"}
_DOING = {TRAIN: "trained", SAMPLE: "sampled", GENERATE: "written by generate"}
# A probe (holder()) takes the lock for microseconds; an acquirer retries this long before refusing.
_RETRY_S = 0.5

# (run folder, role) -> [fd, depth]: a process may take a lock it already holds (re-entrant).
_held: dict[tuple[str, str], list[int]] = {}


@dataclass(frozen=True)
class Holder:
    """The process holding a run's lock, as it described itself in the lock file."""

    pid: int | None
    since: str | None = None
    host: str | None = None


def _key(run_dir: Path, role: str) -> tuple[str, str]:
    return (os.path.realpath(run_dir), role)


def _read_holder(fd: int) -> Holder:
    try:
        doc = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
        return Holder(int(doc["pid"]), doc.get("since"), doc.get("host"))
    except (OSError, ValueError, KeyError, TypeError):
        return Holder(None)  # taken a moment ago and not yet described


def holder(run_dir: Path, role: str) -> Holder | None:
    """Who holds ``role``'s lock on the run now, or None when nobody does."""
    if _key(run_dir, role) in _held:
        return Holder(os.getpid())
    try:
        fd = open_regular(Path(run_dir) / LOCK_FILES[role])  # never through a link, never waiting on a FIFO
    except UserError:
        return None  # a link or special file is no lock anyone holds (acquire refuses it)
    if fd is None:
        return None  # never taken here: no live process holds it
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def busy_message(run_dir: Path, role: str, who: Holder) -> str:
    pid = f"pid {who.pid}" if who.pid else "another process"
    since = f" since {who.since}" if who.since else ""
    host = f" on {who.host}" if who.host and who.host != socket.gethostname() else ""
    if role == TRAIN:
        then = f"wait for it to finish, or stop it{f' (kill {who.pid})' if who.pid else ''} and run `bespoke-kohya train --resume {run_dir}`"
    elif role == GENERATE:
        return (f"collection {run_dir} is being written by generate ({pid}{host}{since}); wait for it to finish"
                f"{f' (or stop it: kill {who.pid})' if who.pid else ''}, then run generate again with --resume")
    else:
        then = f"wait for it to finish{f' (or stop it: kill {who.pid})' if who.pid else ''}, then sample again"
    return f"run {run_dir} is being {_DOING[role]} by {pid}{host}{since}; {then}"


def acquire(run_dir: Path, role: str) -> None:
    """Take ``role``'s lock on the run, or a one-line UserError naming the process that holds it."""
    key = _key(run_dir, role)
    if key in _held:
        _held[key][1] += 1
        return
    path = Path(run_dir) / LOCK_FILES[role]
    try:
        # O_NOFOLLOW: a run from elsewhere may hold `.sample.lock -> ~/notes.txt`; the lock JSON must never land there.
        fd = create_regular(path, "remove it (the lock file is recreated; a run folder from elsewhere holds no links)")
    except OSError as exc:
        raise UserError(f"{path}: cannot create the run's lock file ({exc.strerror or exc}); is the run folder writable?") from None
    deadline = time.monotonic() + _RETRY_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            who = _read_holder(fd)
            os.close(fd)
            raise UserError(busy_message(Path(run_dir), role, who)) from None
    me = {"pid": os.getpid(), "role": role, "host": socket.gethostname(), "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode("utf-8"), 0)
    _held[key] = [fd, 1]


def release(run_dir: Path, role: str) -> None:
    """Give back a lock taken with acquire() (the outermost release unlocks it)."""
    key = _key(run_dir, role)
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _held[key]
        os.close(entry[0])  # closing the only descriptor drops the flock


@contextmanager
def run_lock(run_dir: Path, role: str) -> Iterator[None]:
    """Hold ``role``'s lock on the run for the block."""
    acquire(run_dir, role)
    try:
        yield
    finally:
        release(run_dir, role)
