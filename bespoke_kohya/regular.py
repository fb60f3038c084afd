"""Opening files that may come from elsewhere: regular files only, size-bounded, links only where allowed.

Standard library only (go.sh's helper reads run files before anything is installed). A
dataset or a run folder is something users pass around (a tarball from a rented box, a
friend's run), so its files are untrusted input: a FIFO named ``*.png`` would make a
plain ``open`` wait forever, a device would stream without end, and a symbolic link could
lead anywhere. Every read of such a file goes through :func:`read_regular` (or
:func:`open_regular` for a reader that wants the descriptor); every run file the tool
creates in place (a lock) through :func:`create_regular`.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .errors import UserError

_KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFDIR: "a folder", stat.S_IFLNK: "a symbolic link"}


def kind(mode: int) -> str:
    """What a file of this st_mode is, in words ("a FIFO (named pipe)")."""
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def not_regular(path: Path, mode: int, fix: str = "") -> UserError:
    """The one-line refusal of a special file (FIFO, socket, device, folder) where a file was expected."""
    return UserError(f"{path}: is {kind(mode)}, not a regular file; {fix or 'remove it or replace it by the file itself'}")


def link_refused(path: Path, fix: str = "") -> UserError:
    return UserError(f"{path}: is a symbolic link, which is never followed here (a folder from elsewhere could point it anywhere); "
                     f"{fix or 'replace it by the file itself'}")


def _no_nul(path: Path) -> None:
    # A name from a file (run.json, samples.json) may hold a NUL byte, which the OS refuses with a ValueError of its own.
    if "\x00" in str(path):
        raise UserError(f"{str(path)!r}: a file name with a NUL byte cannot exist; fix the file that names it")


def open_regular(path: Path, *, follow: bool = False, fix: str = "") -> int | None:
    """A read-only descriptor of the regular file ``path``, or None when there is none.

    Opened non-blocking, so a FIFO is refused instead of waited on; ``follow=False`` also refuses
    a symbolic link as the last component (``O_NOFOLLOW``). Anything but a regular file is a
    one-line UserError ending in ``fix``.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    _no_nul(path)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        if not follow and os.path.islink(path):  # a dangling link: say it is a link, not that the file is missing
            raise link_refused(path, fix) from None
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow:  # O_NOFOLLOW met a link
            raise link_refused(path, fix) from None
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc}); {fix or 'check its permissions'}") from None
    return _regular_or_close(fd, path, fix)


def _regular_or_close(fd: int, path: Path, fix: str) -> int:
    """``fd`` back in blocking mode when it is a regular file; otherwise closed and refused in one line."""
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise not_regular(path, mode, fix)
    os.set_blocking(fd, True)
    return fd


def read_regular(path: Path, *, limit: int, what: str = "file", follow: bool = False, fix: str = "") -> bytes | None:
    """The bytes of the regular file ``path`` (None when there is none), refusing one over ``limit`` bytes.

    The limit is checked on the open file, before and while reading, so a file that grows
    (or lies about its size) never fills memory.
    """
    fd = open_regular(path, follow=follow, fix=fix)
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UserError(f"{path}: this {what} is larger than {limit:,} bytes, far more than bespoke-kohya writes; {fix or 'remove it'}")
    return data


def no_links_below(root: Path, path: Path, fix: str = "") -> None:
    """Refuse ``path`` when any existing component from below ``root`` down to it is a link or not a folder/file.

    ``root`` itself may be a link (the user named it); what lies inside it came with the folder.
    """
    root, path = Path(root), Path(path)
    _no_nul(path)
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        raise UserError(f"{path}: is outside {root}; only files inside it are used") from None
    current = root
    for i, part in enumerate(parts):
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return  # not there (yet): nothing below it exists either
        except OSError as exc:
            raise UserError(f"{current}: cannot look at it ({exc.strerror or exc}); {fix or 'check its permissions'}") from None
        if stat.S_ISLNK(mode):
            raise link_refused(current, fix)
        last = i == len(parts) - 1
        if not last and not stat.S_ISDIR(mode):
            raise not_regular(current, mode, fix)
        if last and not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
            raise not_regular(current, mode, fix)


def create_regular(path: Path, fix: str = "", *, append: bool = False) -> int:
    """A read-write (``append``: append-only) descriptor of ``path``, created if missing, never through a link and never
    of a special file: a lock or log in a run from elsewhere may be a link to any file the user can write."""
    _no_nul(path)
    mode = os.O_WRONLY | os.O_APPEND if append else os.O_RDWR
    try:
        fd = os.open(path, mode | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the name is a link
            raise link_refused(path, fix) from None
        if exc.errno == errno.EISDIR:
            raise UserError(f"{path}: is a folder, not a regular file; {fix or 'remove it'}") from None
        if exc.errno == errno.ENXIO:  # a FIFO opened write-only with no reader (or a socket)
            raise not_regular(path, os.lstat(path).st_mode, fix) from None
        raise
    return _regular_or_close(fd, path, fix)


# Captions, prompt lists, word lists: a few KiB; this is far above any of them.
MAX_TEXT_BYTES = 4 * 1024 * 1024


def read_text(path: Path, *, what: str, fix: str, follow: bool = True, limit: int = MAX_TEXT_BYTES) -> str | None:
    """A small UTF-8 text file (a caption, a prompt list), or None when there is none; not UTF-8 is one line too.

    ``follow``: a dataset the user names may be a folder of links; a run's own files are read with False.
    """
    raw = read_regular(path, limit=limit, what=what, follow=follow, fix=fix)
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: this {what} is not UTF-8 text; {fix}") from None
