"""Building a bundle: the run rendered into a private folder, its base relocated (base.py), go.sh and bundle.json added, packed."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..engines import get_engine
from ..errors import UserError
from ..paths import REPO_ROOT
from ..runfolder import BASE_DIR, DATA, GO_SH, VENDOR, WHEELS, Status, now_iso, write_bundle_document, write_run_document
from .base import BaseRelocation, pack_base, apply_base, relocate_base
from .tarball import find_leaks, tree_members, write_tarball
from .wheel import build_wheel, check_wheel, source_root, source_root_or_none

TEMPLATE_VALUE = re.compile(r"^[A-Za-z0-9._+-]+$")
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


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


def go_script(engine: str, wheel: str, run_id: str, preset: str) -> str:
    """The entry script: the packaged template with this bundle's values filled in."""
    template = (Path(__file__).resolve().parent / GO_SH).read_text(encoding="utf-8")
    values = {"ENGINE": engine, "WHEEL": wheel, "RUN_ID": run_id, "PRESET": preset, "VERSION": __version__}
    for key, value in values.items():
        # Only plain names are substituted, so the script needs no shell quoting of them.
        if not TEMPLATE_VALUE.match(value):
            raise UserError(f"{key.lower().replace('_', ' ')} {value!r} cannot go into go.sh; use letters, digits and . _ + - only")
        template = template.replace(f"@@{key}@@", value)
    if "@@" in template:
        raise AssertionError(f"go.sh template has an unfilled placeholder near {template[template.index('@@'):][:30]!r}")
    return template


# ---------------------------------------------------------------- building a bundle


def _record_for_bundle(record: dict[str, Any], report: Any, dataset_dir: Path, base: BaseRelocation) -> dict[str, Any]:
    """run.json without this machine's paths: the dataset by name + hash (its images are the run's data/)."""
    record = dict(record)
    for key in ("cwd", "command", "sd_scripts"):
        record.pop(key, None)
    kept = {k: v for k, v in (record.get("dataset") or {}).items() if k in ("captions", "heldout")}  # still true of data/ in the bundle
    record["dataset"] = {"name": dataset_dir.resolve().name, "path": DATA, "content_hash": report.content_hash(), "images": len(report.images), **kept}
    if base.key and base.original != base.value:
        key = base.key.split(".")[-1]
        record["overrides"] = [f"{o.split('=', 1)[0]}={base.value}" if o.split("=", 1)[0].strip().split(".")[-1] == key else o for o in record.get("overrides", [])]
    record["status"] = Status.RENDERED.value
    return record


def _fill_run(preset: Any, overrides: list[str], dataset_dir: Path, run_dir: Path, base: BaseRelocation, wheel: Path | None, err_console: Any, log: Callable[[str], None]) -> str:
    """Render the run into the new folder `run_dir` and add everything go.sh needs; returns the wheel's name."""
    from ..dataset import check_dataset
    from ..engines.session import create_run

    run, _ = create_run(preset, overrides, dataset_dir, run_dir, err_console)
    run_dir, record = run.dir, run.record.as_dict()
    report = check_dataset(dataset_dir, preset.dataset.caption_extension)
    if base.source is not None:
        pack_base(base.source, run_dir / BASE_DIR)
    if base.value != base.original:
        apply_base(run_dir, base.value or "", record)
    write_run_document(run_dir, _record_for_bundle(record, report, dataset_dir, base))
    if wheel is not None:
        (run_dir / WHEELS).mkdir()
        wheel_path = Path(shutil.copy2(wheel, run_dir / WHEELS / wheel.name))
    else:
        wheel_path = build_wheel(source_root(), run_dir / WHEELS, log)
    constraints = REPO_ROOT / VENDOR / "constraints.txt"
    if constraints.is_file():  # pins for the engine's own tools' venv (kohya: sd-scripts), read from <run>/vendor/
        (run_dir / VENDOR).mkdir()
        shutil.copyfile(constraints, run_dir / VENDOR / "constraints.txt")
    (run_dir / GO_SH).write_text(go_script(preset.engine, wheel_path.name, run_dir.name, preset.name), encoding="utf-8")
    engine = get_engine(preset.engine)
    manifest = {
        "format": 2,
        "run_id": run_dir.name,
        "preset": preset.name,
        "engine": preset.engine,
        "bespoke_kohya": __version__,
        "wheel": wheel_path.name,
        "base_key": base.key or None,
        "base": base.value,
        "base_included": base.source is not None,
        "resume_only": list(engine.resume_only),
        "created": now_iso(),
        **engine.bundle_fields(preset),
    }
    write_bundle_document(run_dir, manifest)
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

    from ..presets import load_preset

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
    base = relocate_base(preset, include_base)
    staging = Path(tempfile.mkdtemp(prefix=f".{run_id}.staging-", dir=out.parent))
    try:
        run_dir = staging / run_id
        wheel_name = _fill_run(preset, overrides, dataset_dir, run_dir, base, wheel, err_console or Console(stderr=True, highlight=False), log)
        needles = [str(source_root_or_none() or ""), str(dataset_dir.resolve()), str(dataset_dir.absolute()), str(Path.home()), str(staging), str(staging.resolve())]
        if base.original and base.value != base.original:
            needles.append(str(Path(base.original).expanduser().resolve()))
        _check_portable(run_dir, needles, base.notes)
        members = tree_members(run_dir)
        files = sum(1 for m in members if (run_dir / m).is_file())
        mtime = int(os.environ.get("SOURCE_DATE_EPOCH") or time.time())
        size = write_tarball(run_dir, run_id, out, members, mtime, executable=[GO_SH])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BundleResult(out, run_id, size, wheel_name, files, base.value, base.source is not None, base.notes)
