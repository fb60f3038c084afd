"""Self-contained run bundles: render a run here, train it on a rented GPU box with one script.

`bespoke-kohya bundle --preset P --dataset DIR --out NAME.tar.gz` writes one tarball:

    NAME/                   the run directory (its name is the file name without .tar.gz)
      run.json              status "rendered"; the dataset recorded by name and content hash only
      config/ data/         rendered exactly as `bespoke-kohya render` does
      originals/            the 24x24 originals and captions (palette snapping, report reference)
      wheels/*.whl          this package, installed on the box into NAME/.venv
      vendor/constraints.txt  pins for sd-scripts' own environment
      base/                 only with --include-base: the local base model
      bundle.json           what was packed, for `go.sh` and for the record
      go.sh                 the entry script: install, check the GPU, train, sample, report

On the box `tar xzf NAME.tar.gz && cd NAME && ./go.sh` runs every stage inside NAME/ and
skips the ones already done, so it is safe to re-run after a disconnect.

This module imports only the standard library (and this package's standard-library-only
modules) at import time: `go.sh` runs `python3 -m bespoke_kohya.bundle state ...` straight
from the bundled wheel, before anything is installed and in `--dry-run`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__
from .errors import UserError
from .jsonfile import umask, write_json_atomic
from .paths import REPO_ROOT, hub_cache_dir, hub_offline
from .runfolder import NOT_TRAINED, RUN_JSON, SAMPLES_JSON, Status, run_document, samples_document, write_run_document
from .vendor import MARKER as SD_SCRIPTS_MARKER
from .vendor import SD_SCRIPTS_TAG

BUNDLE_JSON = "bundle.json"
# pixel24.base values that name no file: nothing to pack or look for (presets.Pixel24Settings.base).
PIXEL24_BUILTIN_BASES = ("standin", "none")
GO_SH = "go.sh"
WHEELS = "wheels"
ORIGINALS = "originals"
BASE_DIR = "base"
RESULTS = "results.tar.gz"
# Marker written by go.sh once the wheel is installed into .venv (its content: the wheel's name).
INSTALL_DONE = "logs/go-install.done"
STAGES = ("install", "sd-scripts", "base", "train", "sample", "report", "results")
# `state` exits with this when a stage still has work to do (0: done; 2: a UserError).
NOT_DONE = 10
# What `results.tar.gz` carries home: everything the report and a later comparison read,
# without the environments, the base model or the resumable optimizer states.
RESULT_ITEMS = ("run.json", BUNDLE_JSON, "reproduce.json", "config", "logs", "checkpoints", "samples", "report", ORIGINALS, "data")
TEMPLATE_VALUE = re.compile(r"^[A-Za-z0-9._+-]+$")
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Files larger than this are not scanned for leaked paths (model weights); base/ is only warned about.
SCAN_LIMIT = 64 * 1024 * 1024


@dataclass
class BundleResult:
    """What `build_bundle` wrote."""

    path: Path
    run_id: str
    size: int
    wheel: str
    files: int
    base: str | None
    base_included: bool
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- small helpers


def now_iso() -> str:
    """UTC time, seconds precision (as in run.json)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def human_size(size: int) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file as a dict, or a UserError naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found; is this a bespoke-kohya run folder (unpacked from a bundle)?") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not readable JSON ({exc}); unpack the bundle again") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, found {type(data).__name__}; unpack the bundle again")
    return data


def run_id_for(out: Path) -> str:
    """The run folder name inside a bundle: the file name without `.tar.gz` / `.tgz`."""
    name = out.name
    for suffix in (".tar.gz", ".tgz"):
        if name.endswith(suffix) and len(name) > len(suffix):
            stem = name[: -len(suffix)]
            if not RUN_ID.match(stem):
                raise UserError(f"--out {out}: the run folder would be named {stem!r}; use letters, digits and . _ + - only, e.g. --out sd15_576-gpu.tar.gz")
            return stem
    raise UserError(f"--out {out}: the bundle must be a .tar.gz (or .tgz) file, e.g. --out {name or 'run'}.tar.gz")


def is_local_path(value: str, run_dir: Path | None = None) -> bool:
    """Whether a base-model value names a local file/folder rather than a hub id like `org/name`.

    `base/<name>` is where bundles put (or expect) a local base, relative to the run folder;
    it would otherwise read as a hub id of an organisation called "base".
    """
    if not value:
        return False
    if Path(value).expanduser().exists() or (run_dir is not None and (run_dir / value).exists()):
        return True
    return value.startswith((f"{BASE_DIR}/", ".", "~", "/")) or not HUB_ID.match(value)


# ---------------------------------------------------------------- the wheel


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
    if not path.name.startswith("bespoke_kohya-") or "bespoke_kohya/bundle.py" not in names:
        raise UserError(f"--wheel {path}: not a bespoke-kohya wheel with bespoke_kohya/bundle.py in it; build it from this checkout")


# ---------------------------------------------------------------- go.sh


def go_script(engine: str, wheel: str, run_id: str, preset: str) -> str:
    """The entry script: the packaged template with this bundle's values filled in."""
    template = (Path(__file__).resolve().parent / GO_SH).read_text(encoding="utf-8")
    values = {"ENGINE": engine, "WHEEL": wheel, "RUN_ID": run_id, "PRESET": preset, "SD_SCRIPTS_TAG": SD_SCRIPTS_TAG, "VERSION": __version__}
    for key, value in values.items():
        # Only plain names are substituted, so the script needs no shell quoting of them.
        if not TEMPLATE_VALUE.match(value):
            raise UserError(f"{key.lower().replace('_', ' ')} {value!r} cannot go into go.sh; use letters, digits and . _ + - only")
        template = template.replace(f"@@{key}@@", value)
    if "@@" in template:
        raise AssertionError(f"go.sh template has an unfilled placeholder near {template[template.index('@@'):][:30]!r}")
    return template


# ---------------------------------------------------------------- base model


def _base_value(record: dict[str, Any]) -> tuple[str, str | None]:
    """(preset field, current value) of what a run starts from: the kohya base or pixel24's base."""
    resolved = record.get("resolved") or {}
    if resolved.get("engine") == "kohya":
        return "kohya.pretrained_model_name_or_path", (resolved.get("kohya") or {}).get("pretrained_model_name_or_path")
    value = (resolved.get("pixel24") or {}).get("base")
    return "pixel24.base", None if value in PIXEL24_BUILTIN_BASES else value


def apply_base(run_dir: Path, value: str, record: dict[str, Any]) -> None:
    """Make `value` the run's base in `record` (not saved) and re-render config/ from the changed preset."""
    from .presets import Preset
    from .render import rewrite_config

    dotted, _ = _base_value(record)
    section, key = dotted.split(".")
    preset = Preset.model_validate(record["resolved"])
    preset = preset.model_copy(update={section: getattr(preset, section).model_copy(update={key: value})})
    record["resolved"] = preset.model_dump(mode="json")
    rewrite_config(run_dir, preset)


def set_base(run_dir: Path, path: str) -> str:
    """`go.sh` with `BASE_MODEL=/path`: make the run train from that local model. Returns what it did.

    Idempotent (the same path again changes nothing). Refused once training has started
    from another base, because resuming with a different base would mix two models.
    """
    record = run_document(run_dir)
    dotted, current = _base_value(record)
    base = Path(path).expanduser()
    if not base.exists():
        raise UserError(f"BASE_MODEL={path}: no such file or folder; give a diffusers folder or a .safetensors checkpoint on this machine")
    value = str(base.resolve())
    if current == value:
        return f"{dotted} is already {value}"
    status = record.get("status")
    if status not in NOT_TRAINED:
        raise UserError(f"BASE_MODEL={path}: this run already trained from {current} (status {status}); run ./go.sh without BASE_MODEL, or unpack the bundle afresh to use another base")
    apply_base(run_dir, value, record)
    record.setdefault("base_changes", []).append({"field": dotted, "from": current, "to": value, "at": now_iso(), "by": "go.sh BASE_MODEL"})
    write_run_document(run_dir, record)
    return f"{dotted}: {current} -> {value}"


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (or $HF_ENDPOINT) answers a TCP connection."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = re.sub(r"^[a-z]+://", "", endpoint).split("/")[0]
    name, _, port = host.partition(":")
    try:
        socket.create_connection((name, int(port or 443)), timeout=timeout).close()
    except (OSError, ValueError):
        return False
    return True


def _hub_cached(model_id: str) -> Path | None:
    folder = hub_cache_dir() / ("models--" + model_id.replace("/", "--"))
    return folder if folder.is_dir() else None


# ---------------------------------------------------------------- stage states (go.sh)


@dataclass
class StageState:
    """Whether a go.sh stage is complete, and why (one line for the terminal)."""

    done: bool
    reason: str


def _epochs(record: dict[str, Any]) -> dict[str, str]:
    return {str(k): v for k, v in (record.get("epochs") or {}).items()}


def unsampled_epochs(run_dir: Path) -> list[int]:
    """Recorded epochs whose checkpoint has no complete entry in samples/samples.json yet."""
    record = run_document(run_dir)
    sampled = (samples_document(run_dir) or {}).get("epochs", {})
    todo = []
    for epoch, checkpoint in _epochs(record).items():
        entry = sampled.get(epoch) or {}
        if entry.get("checkpoint") != checkpoint or not entry.get("images"):
            todo.append(int(epoch))
    return sorted(todo)


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else 0.0


def stage_state(run_dir: Path, stage: str) -> StageState:
    """Whether `stage` of go.sh is already done in `run_dir` (checks real state, not only markers)."""
    if stage not in STAGES:
        raise UserError(f"stage {stage!r}: expected one of {', '.join(STAGES)}")
    bundle = read_json(run_dir / BUNDLE_JSON)
    record = run_document(run_dir)
    engine = (record.get("resolved") or {}).get("engine")
    if stage == "install":
        wheel = bundle.get("wheel")
        script = run_dir / ".venv" / "bin" / "bespoke-kohya"
        marker = run_dir / INSTALL_DONE
        if not script.is_file():
            return StageState(False, ".venv has no bespoke-kohya yet")
        if not marker.is_file() or marker.read_text(encoding="utf-8").strip() != wheel:
            return StageState(False, f"{wheel} is not installed into .venv yet")
        return StageState(True, f"{wheel} is installed in .venv")
    if stage == "sd-scripts":
        if engine != "kohya":
            return StageState(True, f"the {engine} engine does not use sd-scripts")
        clone = run_dir / "vendor" / "sd-scripts"
        try:
            marker = json.loads((clone / ".git" / SD_SCRIPTS_MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            marker = None
        if marker and marker.get("status") == "complete" and marker.get("tag") == bundle.get("sd_scripts_tag"):
            return StageState(True, f"sd-scripts {marker['tag']} is installed in vendor/sd-scripts")
        what = "an interrupted install is in vendor/sd-scripts" if marker else "vendor/sd-scripts is not installed yet"
        return StageState(False, what)
    if stage == "base":
        return _base_state(run_dir, record)
    if stage == "train":
        status = record.get("status")
        if status == Status.FINISHED:
            return StageState(True, f"training finished ({len(_epochs(record))} epoch checkpoints)")
        if status == Status.RENDERED:
            return StageState(False, "not trained yet")
        return StageState(False, f"status {status}: training continues from its last saved state")
    if stage == "sample":
        if not _epochs(record):
            return StageState(False, "no epoch checkpoints yet (train first)")
        todo = unsampled_epochs(run_dir)
        if todo:
            return StageState(False, f"epochs {','.join(map(str, todo))} not sampled yet")
        return StageState(True, f"every epoch is sampled ({len(_epochs(record))})")
    if stage == "report":
        page = run_dir / "report" / "index.html"
        newest = max(_mtime(run_dir / SAMPLES_JSON), _mtime(run_dir / RUN_JSON))
        if page.is_file() and _mtime(page) >= newest and newest > 0:
            return StageState(True, "report/index.html is up to date")
        return StageState(False, "report/index.html is missing or older than the samples")
    results = run_dir / RESULTS
    page = run_dir / "report" / "index.html"
    if results.is_file() and page.is_file() and _mtime(results) >= _mtime(page):
        return StageState(True, f"{RESULTS} is up to date")
    return StageState(False, f"{RESULTS} is missing or older than the report")


def _base_state(run_dir: Path, record: dict[str, Any]) -> StageState:
    dotted, value = _base_value(record)
    if not value:
        if dotted.startswith("pixel24."):
            return StageState(True, "pixel24 starts from the stand-in base (trained here once, cached) or from scratch")
        return StageState(False, f"{dotted} is empty; run BASE_MODEL=/path/to/model.safetensors ./go.sh")
    if dotted.startswith("pixel24.") or is_local_path(value, run_dir):
        path = Path(value).expanduser()
        path = path if path.is_absolute() else run_dir / path
        if path.exists():
            return StageState(True, f"local base {value} is present")
        return StageState(False, f"{value} is not on this machine: copy it to {value} in this folder, or run BASE_MODEL=/path/to/model ./go.sh")
    if cached := _hub_cached(value):
        return StageState(True, f"{value} is in the Hugging Face cache ({cached.name})")
    if hub_offline():
        return StageState(False, f"{value} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: run BASE_MODEL=/path/to/model ./go.sh")
    if _hub_reachable():
        return StageState(True, f"hub id {value}: sd-scripts downloads it on first use (the hub is reachable)")
    return StageState(False, f"{value} is not in the Hugging Face cache and the hub cannot be reached: run BASE_MODEL=/path/to/model ./go.sh")


# ---------------------------------------------------------------- tarballs


def _files(root: Path, keep: Callable[[Path], bool] = lambda _: True) -> list[Path]:
    """Every file and folder under `root` (relative, sorted), symlinks refused."""
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not keep(rel):
            continue
        if path.is_symlink():
            raise UserError(f"{path}: symbolic links are not packed; replace it by the file itself")
        out.append(rel)
    return out


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


# ---------------------------------------------------------------- leak check


def _contains(data: bytes, needles: list[bytes]) -> list[bytes]:
    return [n for n in needles if n in data]


def find_leaks(root: Path, needles: Iterable[str], skip: Iterable[str] = ()) -> list[str]:
    """`file: needle` for every file under `root` (and every file inside a wheel) containing a needle.

    Used to prove that a bundle names no path of the machine that made it.
    """
    encoded = sorted({n.encode() for n in needles if n and n != "/" and len(n) >= 4}, key=len, reverse=True)
    skipped = tuple(skip)
    found = []
    for rel in _files(root):
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


# ---------------------------------------------------------------- building a bundle


def _copy_originals(report: Any, dest: Path) -> None:
    """The checked originals and their captions (only those: no stray files of the folder)."""
    dest.mkdir()
    for info in report.images:
        shutil.copyfile(info.path, dest / info.path.name)
        caption = info.path.with_suffix(report.caption_extension)
        if caption.is_file():
            shutil.copyfile(caption, dest / caption.name)


def _pack_base(source: Path, dest_dir: Path) -> str:
    """Copy a local base (file or folder) into `dest_dir`; returns its path relative to the run."""
    dest_dir.mkdir()
    target = dest_dir / source.name
    if source.is_dir():
        shutil.copytree(source, target, symlinks=False)
    else:
        shutil.copyfile(source, target)
    return f"{BASE_DIR}/{source.name}"


def _prepare_base(preset: Any, include_base: bool) -> tuple[str, Path | None, str | None, list[str]]:
    """(field, local source to pack or None, value the bundle records, notes) for the preset's base."""
    if preset.engine == "kohya":
        dotted, value = "kohya.pretrained_model_name_or_path", preset.kohya.pretrained_model_name_or_path
    else:
        dotted, value = "pixel24.base", preset.pixel24.base
        if value in PIXEL24_BUILTIN_BASES:  # the stand-in base is trained on the box itself; "none" needs nothing
            if include_base:
                raise UserError(f"--include-base: pixel24.base = {value!r} names no file to pack")
            return dotted, None, value, []
    if not value:
        if include_base:
            raise UserError(f"--include-base: the preset has no {dotted} to pack")
        return dotted, None, value, []
    # pixel24's base, when not built in, is always a file (a checkpoint of an earlier run), never a hub id.
    if dotted.startswith("kohya.") and not is_local_path(value):
        if include_base:
            raise UserError(
                f"--include-base packs a local base model, but {dotted} = {value!r} is a hub id; download it once "
                f"(hf download {value} --local-dir DIR) and pass --set {dotted.split('.')[1]}=DIR --include-base"
            )
        return dotted, None, value, [f"base model {value} is not packed: sd-scripts downloads it on the GPU box (or run BASE_MODEL=/path ./go.sh there)"]
    source = Path(value).expanduser().resolve()
    relative = f"{BASE_DIR}/{source.name}"
    if include_base:
        if not source.exists():
            raise UserError(f"--include-base: {dotted} = {value}: no such file or folder; fix the path (--set {dotted.split('.')[1]}=PATH)")
        return dotted, source, relative, [f"base model {source.name} packed into {BASE_DIR}/"]
    # A path of this machine means nothing on the GPU box: record where go.sh will look for it instead.
    return dotted, None, relative, [f"local base {value} is not packed (--include-base packs it): on the GPU box copy it to {relative} in the run folder or run BASE_MODEL=/path ./go.sh"]


def _record_for_bundle(record: dict[str, Any], report: Any, dataset_dir: Path, dotted: str, original: str | None, value: str | None) -> dict[str, Any]:
    """run.json without this machine's paths: the dataset by name + hash, the copied originals by relative path."""
    record = dict(record)
    for key in ("cwd", "command", "sd_scripts"):
        record.pop(key, None)
    captions = (record.get("dataset") or {}).get("captions")  # how data/'s captions were written: still true in the bundle
    record["dataset"] = {"name": dataset_dir.resolve().name, "path": ORIGINALS, "content_hash": report.content_hash(), "images": len(report.images)}
    if captions is not None:
        record["dataset"]["captions"] = captions
    if dotted and original != value:
        key = dotted.split(".")[1]
        record["overrides"] = [f"{o.split('=', 1)[0]}={value}" if o.split("=", 1)[0].strip().split(".")[-1] == key else o for o in record.get("overrides", [])]
    record["status"] = Status.RENDERED.value
    return record


@dataclass
class _BasePlan:
    """What happens to the run's base model in the bundle."""

    field: str
    original: str | None  # the value the preset resolved to on this machine
    value: str | None  # the value the bundle records
    source: Path | None  # a local file/folder to pack into base/, or None
    notes: list[str]


def _plan_base(preset: Any, include_base: bool) -> _BasePlan:
    dotted, source, value, notes = _prepare_base(preset, include_base)
    original = preset.kohya.pretrained_model_name_or_path if preset.kohya else preset.pixel24.base
    return _BasePlan(dotted, original, value, source, notes)


def _fill_run(preset: Any, overrides: list[str], dataset_dir: Path, run_dir: Path, plan: _BasePlan, wheel: Path | None, err_console: Any, log: Callable[[str], None]) -> str:
    """Render the run into the new folder `run_dir` and add everything go.sh needs; returns the wheel's name."""
    from .dataset import check_dataset
    from .engines.session import create_run

    run, _ = create_run(preset, overrides, dataset_dir, run_dir, err_console)
    run_dir, record = run.dir, run.record.as_dict()
    report = check_dataset(dataset_dir, preset.dataset.caption_extension)
    _copy_originals(report, run_dir / ORIGINALS)
    if plan.source is not None:
        _pack_base(plan.source, run_dir / BASE_DIR)
    if plan.value != plan.original:
        apply_base(run_dir, plan.value or "", record)
    write_run_document(run_dir, _record_for_bundle(record, report, dataset_dir, plan.field, plan.original, plan.value))
    if wheel is not None:
        (run_dir / WHEELS).mkdir()
        wheel_path = Path(shutil.copy2(wheel, run_dir / WHEELS / wheel.name))
    else:
        wheel_path = build_wheel(source_root(), run_dir / WHEELS, log)
    constraints = REPO_ROOT / "vendor" / "constraints.txt"
    if constraints.is_file():  # pins for sd-scripts' own venv, read by vendor.install from <run>/vendor/
        (run_dir / "vendor").mkdir()
        shutil.copyfile(constraints, run_dir / "vendor" / "constraints.txt")
    (run_dir / GO_SH).write_text(go_script(preset.engine, wheel_path.name, run_dir.name, preset.name), encoding="utf-8")
    manifest = {
        "format": 1,
        "run_id": run_dir.name,
        "preset": preset.name,
        "engine": preset.engine,
        "bespoke_kohya": __version__,
        "wheel": wheel_path.name,
        "sd_scripts_tag": SD_SCRIPTS_TAG if preset.engine == "kohya" else None,
        "base": plan.value,
        "base_included": plan.source is not None,
        "created": now_iso(),
    }
    write_json_atomic(run_dir / BUNDLE_JSON, manifest)
    return wheel_path.name


def _check_portable(run_dir: Path, needles: list[str], notes: list[str]) -> None:
    """Refuse a bundle naming a path of this machine (a bug); only note it inside a packed base model."""
    leaks = find_leaks(run_dir, needles, skip=[f"{BASE_DIR}/"])
    if leaks:
        raise AssertionError(f"the bundle would name paths of this machine: {'; '.join(leaks[:5])}")
    base_leaks = find_leaks(run_dir / BASE_DIR, needles) if (run_dir / BASE_DIR).is_dir() else []
    if base_leaks:
        notes.append(f"the packed base model names paths of this machine ({base_leaks[0]}); harmless for training, but they travel with the bundle")


def build_bundle(
    preset_name: str,
    dataset_dir: Path,
    out: Path,
    overrides: list[str] | None = None,
    *,
    experimental: bool = False,
    include_base: bool = False,
    wheel: Path | None = None,
    err_console: Any = None,
    log: Callable[[str], None] = lambda _: None,
) -> BundleResult:
    """Render a run and pack it with this package's wheel and `go.sh` into the new file `out`.

    The run folder inside is named after `out` (`NAME.tar.gz` -> `NAME/`). Nothing is left
    behind on failure; an existing `out` is refused before any work.
    """
    from rich.console import Console

    from .presets import load_preset

    out = Path(out).absolute()
    run_id = run_id_for(out)
    if out.exists():
        raise UserError(f"{out}: already exists; bundles are never overwritten, choose another --out or remove it")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist; create it first")
    if wheel is not None:
        check_wheel(wheel)
    else:
        source_root()  # fail now, not after rendering, when no wheel can be built
    overrides = list(overrides or [])
    preset = load_preset(preset_name, overrides, experimental=experimental)
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise UserError(f"--dataset {dataset_dir}: no such folder; give the folder of 24x24 PNGs and .txt captions")
    plan = _plan_base(preset, include_base)
    staging = Path(tempfile.mkdtemp(prefix=f".{run_id}.staging-", dir=out.parent))
    try:
        run_dir = staging / run_id
        wheel_name = _fill_run(preset, overrides, dataset_dir, run_dir, plan, wheel, err_console or Console(stderr=True, highlight=False), log)
        needles = [str(source_root_or_none() or ""), str(dataset_dir.resolve()), str(dataset_dir.absolute()), str(Path.home()), str(staging), str(staging.resolve())]
        if plan.original and plan.value != plan.original:
            needles.append(str(Path(plan.original).expanduser().resolve()))
        _check_portable(run_dir, needles, plan.notes)
        members = _files(run_dir)
        files = sum(1 for m in members if (run_dir / m).is_file())
        mtime = int(os.environ.get("SOURCE_DATE_EPOCH") or time.time())
        size = write_tarball(run_dir, run_id, out, members, mtime, executable=[GO_SH])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BundleResult(out, run_id, size, wheel_name, files, plan.value, plan.source is not None, plan.notes)


def source_root_or_none() -> Path | None:
    """The source checkout, or None for an installed copy."""
    try:
        return source_root()
    except UserError:
        return None


# ---------------------------------------------------------------- results (GPU box -> home)


def _result_member(rel: Path) -> bool:
    parts = rel.parts
    # Optimizer states are only for resuming on the box; they are several times a LoRA's size.
    return not (parts[0] == "checkpoints" and len(parts) > 1 and parts[1].endswith("-state"))


def result_members(run_dir: Path) -> list[Path]:
    """The files and folders of a trained run that travel home (relative to the run)."""
    members: list[Path] = []
    for item in RESULT_ITEMS:
        path = run_dir / item
        if path.is_symlink():
            raise UserError(f"{path}: symbolic links are not packed; replace it by the file itself")
        if path.is_file():
            members.append(Path(item))
        elif path.is_dir():
            members.append(Path(item))
            members += [Path(item) / rel for rel in _files(path) if _result_member(Path(item) / rel)]
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


# ---------------------------------------------------------------- command line (go.sh's helper)


def main(argv: list[str] | None = None) -> int:
    """`python -m bespoke_kohya.bundle`: the helper go.sh calls inside an unpacked bundle.

    The one entry point besides cli.py: go.sh asks it about stages before this package's
    dependencies (rich, pydantic) are installed, so it runs on the standard library alone.
    """
    parser = argparse.ArgumentParser(prog="python -m bespoke_kohya.bundle", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("state", help=f"exit 0 when a stage is done, {NOT_DONE} when not; print why")
    p.add_argument("run", type=Path)
    p.add_argument("stage", choices=STAGES)
    p = sub.add_parser("unsampled", help="comma-separated epochs that have a checkpoint but no samples")
    p.add_argument("run", type=Path)
    p = sub.add_parser("set-base", help="train from this local base model (rewrites train.toml and run.json)")
    p.add_argument("run", type=Path)
    p.add_argument("path")
    p = sub.add_parser("pack-results", help=f"write RUN/{RESULTS} to copy home")
    p.add_argument("run", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "state":
            state = stage_state(args.run, args.stage)
            print(state.reason)
            return 0 if state.done else NOT_DONE
        if args.command == "unsampled":
            print(",".join(map(str, unsampled_epochs(args.run))))
        elif args.command == "set-base":
            print(set_base(args.run, args.path))
        else:
            path, size = pack_results(args.run)
            print(f"wrote {path.name} ({human_size(size)}): copy it home and unpack it there, then `bespoke-kohya report --run {path.parent.name}`")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
