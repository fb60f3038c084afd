"""Reproducible tarballs of a run folder, and the check that a bundle names no path of the machine that made it.

Standard library only (go.sh packs results before anything else is needed).
"""

from __future__ import annotations

import gzip
import os
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from ..atomic import umask
from ..errors import UserError

# Files larger than this are not scanned for leaked paths (model weights); base/ is only warned about.
SCAN_LIMIT = 64 * 1024 * 1024


def tree_members(root: Path, keep: Callable[[Path], bool] = lambda _: True) -> list[Path]:
    """Every file and folder under `root` (relative, sorted); a symbolic link anywhere is refused in one line.

    Walked without following links, so a link out of the folder or a link loop is found, never followed.
    """
    out = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in sorted(dirs) + sorted(files):
            path = Path(folder) / name
            rel = path.relative_to(root)
            if not keep(rel):
                continue
            if path.is_symlink():
                raise UserError(f"{path}: symbolic links are not packed; replace it by the file itself")
            if not (path.is_dir() or path.is_file()):
                raise UserError(f"{path}: not a regular file or folder (a FIFO, socket or device); remove it")
            out.append(rel)
    return sorted(out)


def write_tarball(root: Path, top: str, out: Path, members: Iterable[Path], mtime: int, executable: Iterable[str] = ()) -> int:
    """Pack `members` (relative to `root`) as `top/...` into the new file `out`; returns its size.

    Members are sorted with fixed owner, modes and times, and gzip stores no file name
    or time, so the same inputs give the same bytes. The file appears only when complete
    (written beside it, then linked into place, which also refuses an existing `out`).
    """
    out = out.absolute()
    if out.exists():
        raise UserError(f"{out}: already exists; bundles are never overwritten, choose another --out or remove it")
    executable = set(executable)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.partial-", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=mtime, compresslevel=6) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            tar.addfile(_tar_info(f"{top}/", tarfile.DIRTYPE, 0o755, mtime))
            for rel in sorted(members):
                path = root / rel
                name = f"{top}/{rel.as_posix()}"
                if path.is_dir():
                    tar.addfile(_tar_info(name + "/", tarfile.DIRTYPE, 0o755, mtime))
                else:
                    info = _tar_info(name, tarfile.REGTYPE, 0o755 if rel.as_posix() in executable else 0o644, mtime)
                    info.size = path.stat().st_size
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes it private; the bundle is an ordinary file
        os.link(tmp, out)  # fails if `out` appeared meanwhile: never overwrite
    except FileExistsError:
        raise UserError(f"{out}: already exists; bundles are never overwritten, choose another --out or remove it") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out.stat().st_size


def _tar_info(name: str, kind: bytes, mode: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name.rstrip("/") if kind == tarfile.DIRTYPE else name)
    info.type, info.mode, info.mtime = kind, mode, mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _contains(data: bytes, needles: list[bytes]) -> list[bytes]:
    return [n for n in needles if n in data]


def find_leaks(root: Path, needles: Iterable[str], skip: Iterable[str] = ()) -> list[str]:
    """`file: needle` for every file under `root` (and every file inside a wheel) containing a needle.

    Used to prove that a bundle names no path of the machine that made it.
    """
    encoded = sorted({n.encode() for n in needles if n and n != "/" and len(n) >= 4}, key=len, reverse=True)
    skipped = tuple(skip)
    found = []
    for rel in tree_members(root):
        path = root / rel
        if path.is_dir() or rel.as_posix().startswith(skipped) or path.stat().st_size > SCAN_LIMIT:
            continue
        data = path.read_bytes()
        found += [f"{rel.as_posix()}: {n.decode()}" for n in _contains(data, encoded)]
        if path.suffix == ".whl":
            with zipfile.ZipFile(path) as zf:
                for member in zf.namelist():
                    found += [f"{rel.as_posix()}!{member}: {n.decode()}" for n in _contains(zf.read(member), encoded)]
    return found


