"""Presets: the files in ``presets/``, loaded, overridden and validated.

Each preset names its ``engine``; the engine's own preset class (``engines/<name>/settings.py``,
a subclass of :class:`bespoke_kohya.settings.Preset` with the engine's table) validates it. The
field descriptions are the reference manual (``bespoke-kohya presets --explain`` prints them).
What the user typed is validated here; what the machine can do (sd-scripts found, GPU present)
is checked by the engine before it trains.

kohya sd-scripts accepts any key in its ``--config_file`` and never converts the types of
those values, so this validation is the only guard: unknown keys are refused with a
did-you-mean, ranges are checked, and cross-field rules name the fix.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from .engines import engine_names, get_engine
from .errors import UserError
from .paths import REPO_ROOT
from .settings import Preset

# A checkout has presets/ beside the package; an installed wheel carries them inside it.
_CHECKOUT_PRESETS = REPO_ROOT / "presets"
PRESETS_DIR = _CHECKOUT_PRESETS if _CHECKOUT_PRESETS.is_dir() else Path(__file__).resolve().parent / "presets_data"


def preset_class(name: Any) -> type[Preset]:
    """The preset class of the engine called ``name`` (a UserError for an unknown one)."""
    return get_engine(name).preset_class


def _engine_classes() -> dict[str, type[Preset]]:
    return {name: preset_class(name) for name in engine_names()}


def _without_other_engines(data: dict[str, Any], own: type[Preset]) -> dict[str, Any]:
    """``data`` less the empty fields other engines' presets define (a run.json written before each engine had
    its own preset class holds every engine's table, as null, and kohya's top-level fields)."""
    theirs = {f for cls in _engine_classes().values() if cls is not own for f in cls.model_fields} - set(own.model_fields)
    return {k: v for k, v in data.items() if not (k in theirs and v in (None, False))}


def validate_preset(data: Any, source: str) -> Preset:
    """A preset document (a parsed file, or run.json's ``resolved``) validated by its engine's class; UserError naming ``source``."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: (top level): expected a table of preset settings, got {type(data).__name__}")
    engine = data.get("engine")
    if engine is None:
        raise UserError(f"{source}: engine: Field required; set engine = one of {', '.join(engine_names())}")
    if not isinstance(engine, str) or engine not in engine_names():
        raise UserError(f"{source}: engine: {engine!r} is not an engine; use one of {', '.join(engine_names())}")
    cls = preset_class(engine)
    data = _without_other_engines(data, cls)
    foreign = [k for k in data if k not in cls.model_fields and k in engine_names()]
    if foreign:
        raise UserError(f"{source}: {foreign[0]}: a {engine} preset cannot have a [{foreign[0]}] table; remove it")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise UserError(format_validation_error(source, exc, cls)) from None


def available_presets(presets_dir: Path = PRESETS_DIR) -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in presets_dir.glob("*.toml"))


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _model_for(loc: tuple[Any, ...], model: type[BaseModel]) -> type[BaseModel] | None:
    """The pydantic model under ``model`` that owns the field at ``loc`` (for did-you-mean suggestions)."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        candidates = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not candidates:
            return None
        model = candidates[0]
    return model


def format_validation_error(source: str, exc: ValidationError, model: type[BaseModel] = Preset) -> str:
    """Every problem on its own line: `source: dotted.field: what is wrong (value)`; unknown keys get a did-you-mean."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            owner = _model_for(loc, model)
            hint = _did_you_mean(str(loc[-1]), list(owner.model_fields)) if owner else ""
            lines.append(f"{source}: {where}: unknown key{hint}; see `bespoke-kohya presets --explain` for valid keys")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        shown = "" if isinstance(value, dict) or value is None else f" (got {value!r})"
        lines.append(f"{source}: {where}: {msg}{shown}")
    return "\n".join(lines)


def preset_path(name_or_path: str, presets_dir: Path = PRESETS_DIR) -> Path:
    """A preset name from `presets/` or a path to a preset file."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.exists():
        if candidate.is_dir():
            raise UserError(f"{candidate}: is a folder, not a preset file; pass a preset name (see `bespoke-kohya presets`) or a .toml file")
        if not candidate.is_file():
            raise UserError(f"{candidate}: preset file not found")
        return candidate
    path = presets_dir / f"{name_or_path}.toml"
    if not path.is_file():
        names = available_presets(presets_dir)
        raise UserError(f"unknown preset '{name_or_path}'{_did_you_mean(name_or_path, names)}; available: {', '.join(names)}")
    return path


def read_preset_data(path: Path) -> dict[str, Any]:
    """The raw TOML of a preset file."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; re-save the preset as UTF-8") from None


def _parse_override(raw: str) -> tuple[str, str]:
    if "=" not in raw:
        raise UserError(f"--set {raw!r}: expected key=value, e.g. --set network_dim=16")
    key, value = raw.split("=", 1)
    key = key.strip()
    if not key:
        raise UserError(f"--set {raw!r}: the key is empty; expected key=value")
    return key, value.strip()


def _coerce(value: str) -> Any:
    """A TOML literal if the value parses as one (numbers, booleans, lists, quoted strings), else the raw string."""
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


def _resolve_key(data: dict[str, Any], key: str) -> list[str]:
    """Dotted path for an override key; unqualified keys are looked up in the preset's sections.

    `network_dim` finds `kohya.network_dim`, `steps` finds `sample.steps`, so the
    user can type sd-scripts' own names.
    """
    parts = key.split(".")
    top, sections = _sections(data)
    if len(parts) > 1 or key in top:
        return parts
    owners = [s for s, sub in sections.items() if key in sub.model_fields]
    if len(owners) == 1:
        return [owners[0], key]
    if len(owners) > 1:
        raise UserError(f"--set {key}: ambiguous, it exists in {', '.join(owners)}; write e.g. --set {owners[0]}.{key}=…")
    every = sorted(top) + [f"{s}.{f}" for s, sub in sections.items() for f in sub.model_fields]
    raise UserError(f"--set {key}: unknown key{_did_you_mean(key, every + [e.split('.')[-1] for e in every])}; see `bespoke-kohya presets --explain`")


def _sections(data: dict[str, Any]) -> tuple[set[str], dict[str, type[BaseModel]]]:
    """(top-level keys, {table name: its model}) of the preset class ``data``'s engine validates with; while the
    engine is not known yet, every engine's, but only the engine tables ``data`` already has."""
    engine = data.get("engine")
    known = isinstance(engine, str) and engine in engine_names()
    classes = [preset_class(engine)] if known else [Preset, *_engine_classes().values()]
    top: set[str] = set()
    sections: dict[str, type[BaseModel]] = {}
    for cls in classes:
        for name in cls.model_fields:
            sub = _model_for((name, "x"), cls)
            if sub is None:
                top.add(name)
            elif known or name in data or name in Preset.model_fields:
                sections[name] = sub
    return top, sections


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of the raw preset data with `key=value` overrides applied (validated later, together)."""
    import copy

    out = copy.deepcopy(data)
    for raw in overrides:
        key, value = _parse_override(raw)
        path = _resolve_key(out, key)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {key}: '{part}' is not a table")
        node[path[-1]] = _coerce(value)
    return out


def load_preset(name_or_path: str, overrides: list[str] | None = None, experimental: bool = False, presets_dir: Path = PRESETS_DIR) -> Preset:
    """Load, override and validate a preset; every problem is reported at once as a UserError."""
    path = preset_path(name_or_path, presets_dir)
    data = apply_overrides(read_preset_data(path), overrides or [])
    source = f"{path.name}" + (" with --set overrides" if overrides else "")
    preset = validate_preset(data, source)
    if path.parent.resolve() == presets_dir.resolve() and preset.name != path.stem:
        raise UserError(f"{path}: name = {preset.name!r} but the file is {path.stem}.toml; make them match")
    check_usable(preset, experimental)
    return preset


def check_usable(preset: Preset, experimental: bool) -> None:
    """Rules about using a preset (as opposed to its shape): experiments need consent; the engine's own (e.g. a local base must exist)."""
    if preset.experimental and not experimental:
        raise UserError(f"preset {preset.name} is experimental: {preset.experimental} Pass --experimental to run it anyway.")
    problems = preset.usable_problems()
    if problems:
        raise UserError(problems[0])


def explain() -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) rows for every field of every engine's preset: the reference manual.

    The shared fields first, then each engine's own (its top-level fields and its table).
    """
    rows = _explain_model(Preset)
    for name, cls in _engine_classes().items():
        own = {k: f for k, f in cls.model_fields.items() if k not in Preset.model_fields}
        rows += [(key, kind, default, f"({name} presets) {text}") for key, kind, default, text in _explain_fields(own)]
    return rows


def _explain_model(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    return _explain_fields(dict(model.model_fields), prefix)


def _explain_fields(fields: dict[str, Any], prefix: str = "") -> list[tuple[str, str, str, str]]:
    rows = []
    for name, field in fields.items():
        ann = field.annotation
        sub = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if sub:
            rows.append((prefix + name, "table", "", field.description or ""))
            rows.extend(_explain_model(sub[0], prefix + name + "."))
            continue
        default = "" if field.is_required() else repr(field.get_default(call_default_factory=True))
        rows.append((prefix + name, _type_name(ann), default, field.description or ""))
    return rows


def _type_name(ann: Any) -> str:
    text = str(ann).replace("typing.", "")
    return text.replace("<class '", "").replace("'>", "")
