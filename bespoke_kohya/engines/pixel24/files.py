"""pixel24's own run files read back from disk: ``pixel24.json``, the resume state, the training images and captions.

A run folder may come from another machine or be edited by hand, so each file is checked
by its schema with the limits the preset has before anything is built from it:

- ``pixel24.json``: its ``settings`` are a :class:`Pixel24Settings` (whatever fields that
  class has), and the architecture it records (``unet``, ``text``) must be exactly what those
  settings build, validated with the same widths and the same parameter cap as the preset,
  so a tampered width cannot make the model allocate tens of GB; the vocabulary and the
  palette are typed and bounded. A version-3 file's optional parts must agree with its settings:
  ``background`` is ``{"head": true}`` exactly when ``settings.background_head`` is, and a
  version-2 file sets no version-3 setting (settings.VERSION_3_FIELDS).
- ``pixel24-state.json``: the step and epoch within the preset's bounds, the optimiser's
  parameter groups typed; tensors that do not fit the model are one line too (:func:`restore`).
- the training folder: regular PNG files only (no links, FIFOs or devices), captions UTF-8.

Every problem is one UserError naming the file, the field and what to do. Files are opened
through `bespoke_kohya.regular` (regular files only, size-bounded); tensors are written
through :func:`save_tensors`, which reports a full disk as the OSError the CLI explains.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo

from ...errors import UserError
from ...regular import MAX_TEXT_BYTES, link_refused, not_regular, read_regular, read_text
from ...runfolder import MAX_EPOCH, MAX_JSON_BYTES
from .settings import Pixel24Settings

CONFIG_FIX = "restore it from a copy of the run, or train the run again (`bespoke-kohya train --preset pixel24 --dataset DIR`)"
STATE_FIX = "delete checkpoints/pixel24-state.* to train this run again from the start, or restore them from a copy of the run"
MAX_VOCAB = 1_000_000  # words; a caption set has thousands at most
HEX = r"^#[0-9a-fA-F]{6}$"


def _bound(name: str, kind: str) -> int:
    """A limit of a Pixel24Settings field (``le``), so the files share the preset's bounds (and follow them if they change)."""
    info: FieldInfo = Pixel24Settings.model_fields[name]
    return next(getattr(m, kind) for m in info.metadata if getattr(m, kind, None) is not None)


def _first(exc: ValidationError, prefix: str = "") -> str:
    """``field.path: message`` of a validation error's first problem."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in (prefix, *first["loc"]) if p != "") or "(top level)"
    return f"{where}: {first['msg'].removeprefix('Value error, ')}"


def read_json(path: Path, what: str, fix: str) -> Any:
    """A JSON document from a regular file (no link, FIFO or device), bounded like every run file; one line if it is not."""
    raw = read_regular(path, limit=MAX_JSON_BYTES, what=what, fix=fix)
    if raw is None:
        raise UserError(f"{path}: {what} not found; {fix}")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text, so not written by bespoke-kohya; {fix}") from None
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); {fix}") from None


# ------------------------------------------------------------------ pixel24.json


class _TextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    dim: int


class _BackgroundConfig(BaseModel):
    """Version 3's background head: present (and ``head`` true) exactly when the settings ask for it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    head: Literal[True]


class _ModelFile(BaseModel):
    """The parts of pixel24.json the model is built from (other keys, such as ``base`` or ``dataset``, are notes)."""

    model_config = ConfigDict(extra="allow", strict=True)

    version: Literal[2, 3] = 2  # read_config has refused any other (with what to do) before this is checked
    unet: dict[str, Any]
    text: _TextConfig
    background: _BackgroundConfig | None = None
    vocab: Annotated[list[Annotated[str, Field(max_length=200)]], Field(min_length=1, max_length=MAX_VOCAB)]
    palette: Annotated[list[Annotated[str, Field(pattern=HEX)]], Field(min_length=1, max_length=_bound("palette_size", "le"))]
    settings: dict[str, Any] | None = None

    @field_validator("vocab")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        repeated = next((w for w in value if w in seen or seen.add(w)), None)  # linear: a vocabulary may be large
        if repeated is not None:
            raise ValueError(f"the word {repeated!r} is listed twice; each word is one embedding")
        return value


# unet keys that come from a setting (the rest follow from these, see model.unet_config).
_FROM_SETTINGS = {"block_out_channels": "block_out_channels", "layers_per_block": "layers_per_block", "in_channels": "colour_dim", "out_channels": "feature_dim"}


def check_config(path: Path, config: dict[str, Any], unet_of: Callable[[Pixel24Settings], dict[str, Any]]) -> dict[str, Any]:
    """``config`` (a read pixel24.json) if a model may be built from it; one line naming the field otherwise.

    ``unet_of`` is the model's own builder of the unet section (model.unet_config): the recorded
    architecture must be exactly what its settings build, checked as a Pixel24Settings is
    (widths, layers, the parameter cap), so nothing unchecked reaches the network's constructor.
    """
    try:
        parsed = _ModelFile.model_validate(config)
    except ValidationError as exc:
        raise UserError(f"{path}: {_first(exc)}; {CONFIG_FIX}") from None
    try:
        settings = Pixel24Settings.model_validate(parsed.settings or {})
    except ValidationError as exc:
        raise UserError(f"{path}: {_first(exc, 'settings')}; {CONFIG_FIX}") from None
    missing = [key for key in _FROM_SETTINGS if key not in parsed.unet]
    if missing:
        raise UserError(f"{path}: unet.{missing[0]}: missing; {CONFIG_FIX}")
    arch = {field: parsed.unet[key] for key, field in _FROM_SETTINGS.items()} | {"text_dim": parsed.text.dim}
    try:
        built = Pixel24Settings.model_validate({**settings.model_dump(mode="json"), **arch})
    except ValidationError as exc:
        where = {v: k for k, v in _FROM_SETTINGS.items()} | {"text_dim": "text.dim"}
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "block_out_channels"  # the model-wide check: the parameter cap
        field = where.get(name, name)
        field = field if field.startswith("text.") else f"unet.{field}"
        raise UserError(f"{path}: {field}: {first['msg'].removeprefix('Value error, ')}; {CONFIG_FIX}") from None
    expected = unet_of(built)
    for key in list(parsed.unet) + [k for k in expected if k not in parsed.unet]:
        if key not in expected:
            raise UserError(f"{path}: unet.{key}: not a key pixel24 writes; {CONFIG_FIX}")
        if parsed.unet.get(key) != expected[key]:
            raise UserError(f"{path}: unet.{key}: {parsed.unet.get(key)!r} is not what these widths build ({expected[key]!r}); {CONFIG_FIX}")
    if len(parsed.palette) > settings.palette_size:
        raise UserError(f"{path}: palette: {len(parsed.palette)} colours, more than its settings.palette_size {settings.palette_size}; {CONFIG_FIX}")
    _check_version_3_parts(path, parsed, settings)
    return config


def _check_version_3_parts(path: Path, parsed: _ModelFile, settings: Pixel24Settings) -> None:
    """A version-2 file uses no version-3 setting, and the background head is recorded exactly when the settings have one."""
    used = settings.version_3_parts()  # by VERSION_3_FIELDS' order
    if parsed.version == 2 and used:
        name, value = next(iter(used.items()))
        raise UserError(f"{path}: settings.{name}: {value!r} is a version-3 setting in a version-2 pixel24.json; {CONFIG_FIX}")
    if (parsed.background is not None) != settings.background_head:
        said = "has a background head" if parsed.background is not None else "has no background head"
        raise UserError(f"{path}: background: the file {said} but settings.background_head is {settings.background_head}; {CONFIG_FIX}")


# ------------------------------------------------------------------ the resume state


class _ParamGroup(BaseModel):
    """One AdamW parameter group as torch's state_dict writes it; :func:`restore` compares the rest with this run's optimiser."""

    model_config = ConfigDict(extra="allow")

    params: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=100_000)]
    lr: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class ResumeMeta(BaseModel):
    """pixel24-state.json: where the saved state stands (its tensors are in pixel24-state.safetensors)."""

    model_config = ConfigDict(extra="allow")

    step: Annotated[int, Field(ge=0, le=_bound("steps", "le"))]
    epoch: Annotated[int, Field(ge=1, le=min(MAX_EPOCH, _bound("epochs", "le")))]
    param_groups: Annotated[list[_ParamGroup], Field(min_length=1, max_length=16)]


def _regular_or_absent(path: Path, fix: str) -> bool:
    """Whether ``path`` is there as a regular file; a link or special file in its place is refused, not ignored."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(mode):
        raise link_refused(path, fix)
    if not stat.S_ISREG(mode):
        raise not_regular(path, mode, fix)
    return True


def read_state(ckpt_dir: Path, meta_name: str, tensors_name: str, read_tensors: Callable[[Path], Any]) -> tuple[Any, dict[str, Any]] | None:
    """(tensors, meta) of the resume state in ``ckpt_dir``, or None when there is none (a run that never saved one)."""
    meta_path, tensors_path = ckpt_dir / meta_name, ckpt_dir / tensors_name
    have_meta, have_tensors = _regular_or_absent(meta_path, STATE_FIX), _regular_or_absent(tensors_path, STATE_FIX)
    if not (have_meta and have_tensors):
        return None
    doc = read_json(meta_path, "resume state", STATE_FIX)
    try:
        ResumeMeta.model_validate(doc)
    except ValidationError as exc:
        raise UserError(f"{meta_path}: {_first(exc)}; {STATE_FIX}") from None
    return read_tensors(tensors_path), doc


def restore(loop: Any, tensors: dict[str, Any], meta: dict[str, Any], path: Path) -> None:
    """``loop.restore(tensors, meta, path)`` (training.Loop), refusing in one line a state that does not fit this run.

    The optimiser's settings must be the ones this run's preset gives (only the scheduled ``lr``
    and the parameter numbering come from the file), the data order must index this run's
    images, and every saved tensor must have its parameter's shape: otherwise training would
    fail steps later with a traceback, or silently train with other settings.
    """
    _check_groups(meta["param_groups"], loop.opt.param_groups, path)
    _check_order(tensors.get("order"), len(loop.indices), path)
    try:
        loop.restore(tensors, meta, path)
    except UserError:
        raise
    except (KeyError, ValueError, IndexError, TypeError, RuntimeError) as exc:
        what = f"missing tensor {exc}" if isinstance(exc, KeyError) else (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise UserError(f"{path}: the saved state does not fit this run's model ({what[:200]}); {STATE_FIX}") from None
    _check_shapes(loop, path)


def _check_groups(saved: list[dict[str, Any]], fresh: list[dict[str, Any]], path: Path) -> None:
    if len(saved) != len(fresh):
        raise UserError(f"{path.with_suffix('.json')}: param_groups: {len(saved)} group(s), this run's optimiser has {len(fresh)}; {STATE_FIX}")
    for i, (old, new) in enumerate(zip(saved, fresh)):
        expected = {k: v for k, v in new.items() if k not in ("params", "lr")}
        expected["params"] = list(range(sum(len(g["params"]) for g in fresh[:i]), sum(len(g["params"]) for g in fresh[: i + 1])))
        for key, value in expected.items():
            if key not in old or _plain(old[key]) != _plain(value):
                raise UserError(f"{path.with_suffix('.json')}: param_groups.{i}.{key}: {old.get(key)!r} is not this run's optimiser setting ({_plain(value)!r}); {STATE_FIX}")


def _plain(value: Any) -> Any:
    """A setting as JSON holds it (tuples are lists), for comparing a saved group with a fresh one."""
    return json.loads(json.dumps(value)) if isinstance(value, (tuple, list)) else value


def _check_order(order: Any, images: int, path: Path) -> None:
    if order is None:
        return  # loop.restore says it is missing, in one line
    values = order.tolist() if hasattr(order, "tolist") else None
    if not isinstance(values, list) or any(not isinstance(v, int) or not 0 <= v < images for v in values) or len(values) > images:
        raise UserError(f"{path}: order: the saved data order does not index this run's {images} training images; {STATE_FIX}")


def _check_shapes(loop: Any, path: Path) -> None:
    for i, param in enumerate(loop.params):
        ema = loop.ema[i] if loop.ema is not None else None
        if ema is not None and tuple(ema.shape) != tuple(param.shape):
            raise UserError(f"{path}: ema.{i}: shape {tuple(ema.shape)} is not its parameter's {tuple(param.shape)}; {STATE_FIX}")
        for name, value in loop.opt.state.get(param, {}).items():
            if getattr(value, "ndim", 0) and tuple(value.shape) != tuple(param.shape):
                raise UserError(f"{path}: opt.{i}.{name}: shape {tuple(value.shape)} is not its parameter's {tuple(param.shape)}; {STATE_FIX}")


# ------------------------------------------------------------------ writing tensors


def save_tensors(tensors: dict[str, Any], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file, with a full disk raised as the OSError(ENOSPC) the CLI turns into its one disk-full line.

    safetensors reports write errors as its own SafetensorError (not an OSError) holding the OS error's text.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as exc:
        text = str(exc)
        for code, marks in ((errno.ENOSPC, ("No space left", "StorageFull", "code: 28")), (errno.EDQUOT, ("quota", "code: 122"))):
            if any(mark in text for mark in marks):
                raise OSError(code, "No space left on device" if code == errno.ENOSPC else "Disk quota exceeded", str(path)) from None
        raise


# ------------------------------------------------------------------ the training folder


def training_pngs(folder: Path) -> list[Path]:
    """Every ``*.png`` under ``folder`` (sorted), each a regular file: a link (to a file or a folder) or a FIFO there
    is refused, never followed or read."""
    fix = "the training folder holds only the prepared PNGs and captions: remove it, or render the run again"
    if folder.is_symlink():
        raise link_refused(folder, fix)
    paths = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        for name in dirs:
            if (Path(root) / name).is_symlink():
                raise link_refused(Path(root) / name, fix)
        for name in names:
            if name.endswith(".png") and _regular_or_absent(Path(root) / name, fix):
                paths.append(Path(root) / name)
    return sorted(paths)


def read_caption(path: Path) -> str:
    """A training caption beside its image, stripped; not UTF-8 (or not a regular file) is one line naming it."""
    text = read_text(path, what="caption", fix="re-save it as UTF-8 text, or render the run again", follow=False, limit=MAX_TEXT_BYTES)
    return (text or "").strip()
