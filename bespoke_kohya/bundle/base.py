"""A bundle's base model: where the run finds it on the GPU box, packing a local one, and `BASE_MODEL=` on the box.

The engine says what the run starts from (`Engine.base_model`) and how to change it
(`Engine.with_base`); a path of this machine never goes into the bundle: a local base is
either packed into ``base/`` (`--include-base`) or recorded as where go.sh will look for it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engines import get_engine
from ..errors import UserError
from ..runfolder import BASE_DIR, BUNDLE_JSON, NOT_TRAINED, bundle_document, now_iso, run_document, write_bundle_document, write_run_document
from .tarball import tree_members


# ---------------------------------------------------------------- the base model


@dataclass
class BaseRelocation:
    """What happens to the run's base model in the bundle."""

    key: str  # the preset field holding it, dotted
    original: str | None  # the value the preset resolved to on this machine
    value: str | None  # the value the bundle records
    source: Path | None  # a local file/folder to pack into base/, or None
    notes: list[str]


def relocate_base(preset: Any, include_base: bool) -> BaseRelocation:
    """Where the bundle's run will find its base model on the GPU box (and what to pack with --include-base)."""
    ref = get_engine(preset.engine).base_model(preset)
    if ref is None or not ref.value:
        if include_base:
            raise UserError(f"--include-base: the preset has no {ref.key if ref else 'base model'} file to pack")
        return BaseRelocation(ref.key if ref else "", ref.value if ref else None, ref.value if ref else None, None, [])
    key, value = ref.key, ref.value
    if ref.hub:
        if include_base:
            raise UserError(
                f"--include-base packs a local base model, but {key} = {value!r} is a hub id; download it once "
                f"(hf download {value} --local-dir DIR) and pass --set {key.split('.')[-1]}=DIR --include-base"
            )
        return BaseRelocation(key, value, value, None, [f"base model {value} is not packed: it is downloaded on the GPU box (or run BASE_MODEL=/path ./go.sh there)"])
    source = Path(value).expanduser().resolve()
    relative = f"{BASE_DIR}/{source.name}"
    if include_base:
        if not source.exists():
            raise UserError(f"--include-base: {key} = {value}: no such file or folder; fix the path (--set {key.split('.')[-1]}=PATH)")
        return BaseRelocation(key, value, relative, source, [f"base model {source.name} packed into {BASE_DIR}/"])
    # A path of this machine means nothing on the GPU box: record where go.sh will look for it instead.
    return BaseRelocation(key, value, relative, None, [f"local base {value} is not packed (--include-base packs it): on the GPU box copy it to {relative} in the run folder or run BASE_MODEL=/path ./go.sh"])


def apply_base(run_dir: Path, value: str, record: dict[str, Any]) -> None:
    """Make `value` the run's base in `record` (not saved) and re-render config/ from the changed preset."""
    from ..presets import validate_preset
    from ..render import rewrite_config

    preset = validate_preset(record["resolved"], f"{run_dir}/run.json resolved")
    preset = get_engine(preset.engine).with_base(preset, value)
    record["resolved"] = preset.model_dump(mode="json")
    rewrite_config(run_dir, preset)


def set_base(run_dir: Path, path: str) -> str:
    """`go.sh` with `BASE_MODEL=/path`: make the run train from that local model. Returns what it did.

    Idempotent (the same path again changes nothing). Refused once training has started
    from another base, because resuming with a different base would mix two models.
    """
    from ..presets import validate_preset

    record = run_document(run_dir)
    preset = validate_preset(record.get("resolved"), f"{run_dir}/run.json resolved")
    ref = get_engine(preset.engine).base_model(preset)
    if ref is None:
        raise UserError(f"BASE_MODEL={path}: the {preset.engine} engine starts from no base model; run ./go.sh without BASE_MODEL")
    base = Path(path).expanduser()
    if not base.exists():
        raise UserError(f"BASE_MODEL={path}: no such file or folder; give a diffusers folder or a .safetensors checkpoint on this machine")
    value = str(base.resolve())
    if ref.value == value:
        return f"{ref.key} is already {value}"
    status = record.get("status")
    if status not in NOT_TRAINED:
        raise UserError(f"BASE_MODEL={path}: this run already trained from {ref.value} (status {status}); run ./go.sh without BASE_MODEL, or unpack the bundle afresh to use another base")
    apply_base(run_dir, value, record)
    record.setdefault("base_changes", []).append({"field": ref.key, "from": ref.value, "to": value, "at": now_iso(), "by": "go.sh BASE_MODEL"})
    write_run_document(run_dir, record)
    if (run_dir / BUNDLE_JSON).is_file():  # go.sh's base stage reads the base from here
        write_bundle_document(run_dir, {**bundle_document(run_dir), "base": value})
    return f"{ref.key}: {ref.value} -> {value}"


def pack_base(source: Path, dest_dir: Path) -> str:
    """Copy a local base (file or folder) into `dest_dir`; returns its path relative to the run. Links are refused."""
    dest_dir.mkdir()
    target = dest_dir / source.name
    if source.is_dir():
        tree_members(source)  # refuses a symlink anywhere inside: one could point out of the folder, or loop
        shutil.copytree(source, target, symlinks=True)
    else:
        shutil.copyfile(source, target)
    return f"{BASE_DIR}/{source.name}"


