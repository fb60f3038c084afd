"""The toy engine's preset: its [toy] table."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from bespoke_kohya.settings import Preset, _Strict


class ToySettings(_Strict):
    epochs: int = Field(2, ge=1, le=10, description="Checkpoints to write (each paints with more of the training colours).")
    colours: int = Field(6, ge=2, le=32, description="How many of the training images' most common colours to learn.")


class ToyPreset(Preset):
    section: ClassVar[str] = "toy"

    engine: Literal["toy"] = Field(description="`toy`: flat-colour punks (tests only).")
    toy: ToySettings = Field(default_factory=ToySettings, description="The toy engine's settings.")
