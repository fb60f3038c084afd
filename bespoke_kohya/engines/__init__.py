"""Engines: what trains a run and draws its samples. This module is the registry.

Each engine is one package, ``engines/<name>/``, holding all of its code; its
``engine.py`` defines ``ENGINE`` (the protocol in :mod:`.protocol`), its
``settings.py`` the preset subclass with the engine's own table, and, optionally,
``gosh.py`` the standard-library hooks a bundle's ``go.sh`` asks before anything is
installed. Nothing outside the package imports it: every verb looks the engine up here
by a preset's ``engine`` name. Adding an engine is its package plus one line below.

Standard library only: ``python -m bespoke_kohya.bundle`` (go.sh's helper) reads the
registry before the package's dependencies are installed; engines are imported on use.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from ..errors import UserError

# engine name (a preset's `engine`) -> its package, which holds engine.py (ENGINE) and settings.py.
REGISTRY: dict[str, str] = {
    "kohya": "bespoke_kohya.engines.kohya",
    "pixel24": "bespoke_kohya.engines.pixel24",
}


def engine_names() -> list[str]:
    """The registered engines, in registry order."""
    return list(REGISTRY)


def _unknown(name: object) -> UserError:
    return UserError(f"engine {name!r} is unknown; presets may use {', '.join(sorted(REGISTRY))}")


def get_engine(name: str) -> Any:
    """The engine a preset names (an :class:`.protocol.Engine`), or a UserError listing the known ones.

    Typed loosely on purpose: the protocol imports pydantic models, the registry only the standard library."""
    if not isinstance(name, str) or name not in REGISTRY:
        raise _unknown(name)
    return importlib.import_module(f"{REGISTRY[name]}.engine").ENGINE


def engine_hooks(name: str, module: str) -> ModuleType | None:
    """An engine's optional standard-library module ``module`` (e.g. ``gosh``), or None when it has none."""
    if not isinstance(name, str) or name not in REGISTRY:
        raise _unknown(name)
    try:
        return importlib.import_module(f"{REGISTRY[name]}.{module}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{REGISTRY[name]}.{module}":
            raise
        return None
