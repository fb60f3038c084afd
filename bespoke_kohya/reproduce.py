"""`reproduce`: the documented six-step checklist as one command with a pass/fail table.

1 upscale · 2 config (+ training) · 3 epoch · 4 generate · 5 downscale · 6 verify.
Each step is checked and recorded with evidence; a step that cannot run here is
`skipped` with the reason and the command that would make it run; a step that
does not apply to the engine is `n/a`. Exit status: 0 all applicable steps
passed, 3 some were skipped, 1 a step failed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from .dataset import DatasetReport
from .images import flatten_alpha, open_image, parse_hex_colour
from .presets import Preset
from .render import train_args

# The training arguments exactly as the user's notes document them (background notes).
DOCUMENTED_ARGS: dict[str, Any] = {
    "pretrained_model_name_or_path": "runwayml/stable-diffusion-v1-5",
    "resolution": "512,512",
    "network_dim": 32,
    "network_alpha": 16.0,
    "max_train_epochs": 3,
    "learning_rate": 1e-4,
    "unet_lr": 1e-4,
    "text_encoder_lr": 5e-5,
    "lr_scheduler": "cosine_with_restarts",
    "lr_scheduler_num_cycles": 3,
    "optimizer_type": "AdamW",
    "mixed_precision": "fp16",
    "noise_offset": 0.1,
    "min_snr_gamma": 5.0,
}
DOCUMENTED_EPOCH = 2

PASS, FAIL, SKIPPED, NA = "pass", "fail", "skipped", "n/a"
STEP_NAMES = {1: "upscale", 2: "config", 3: "epoch", 4: "generate", 5: "downscale", 6: "verify"}


@dataclass
class Step:
    """One row of the checklist table."""

    step: int
    name: str
    check: str
    status: str
    evidence: str = ""
    reason: str = ""
    command: str = ""


@dataclass
class Checklist:
    """The table, and where it was written."""

    steps: list[Step] = field(default_factory=list)

    def add(self, step: int, check: str, status: str, evidence: str = "", reason: str = "", command: str = "") -> Step:
        row = Step(step, STEP_NAMES[step], check, status, evidence, reason, command)
        self.steps.append(row)
        return row

    @property
    def exit_code(self) -> int:
        statuses = {s.status for s in self.steps}
        if FAIL in statuses:
            return 1
        if SKIPPED in statuses:
            return 3
        return 0

    def to_dict(self) -> dict[str, Any]:
        return {"steps": [asdict(s) for s in self.steps], "exit_code": self.exit_code}

    def write(self, path: Path) -> None:
        from .train import write_json_atomic

        write_json_atomic(path, self.to_dict())


# ------------------------------------------------------------------ step checks (pure)


def check_upscale(report: DatasetReport, prepared_folder: Path, background: str) -> tuple[bool, str]:
    """Every prepared image, downscaled with NEAREST, equals its original pixel for pixel."""
    bg = parse_hex_colour(background)
    exact, bad = 0, []
    for info in report.images:
        original = np.asarray(flatten_alpha(open_image(info.path), bg))
        prepared = open_image(prepared_folder / f"{info.name}.png").convert("RGB")
        back = np.asarray(prepared.resize(original.shape[1::-1], Image.NEAREST))
        if back.shape == original.shape and (back == original).all():
            exact += 1
        else:
            bad.append(info.name)
    size = open_image(prepared_folder / f"{report.images[0].name}.png").size
    evidence = f"{exact}/{len(report.images)} prepared {size[0]}x{size[1]} images downscale (NEAREST) to their originals exactly"
    if bad:
        evidence += f"; differ: {', '.join(bad[:5])}"
    return not bad, evidence


def config_differences(preset: Preset, documented: dict[str, Any] = DOCUMENTED_ARGS) -> list[str]:
    """Documented keys whose rendered value differs (or is missing), as `key: documented → rendered`."""
    rendered = {k: v for section in train_args(preset).values() for k, v in section.items()}
    diffs = []
    for key, want in documented.items():
        got = rendered.get(key, "<missing>")
        if got != want:
            diffs.append(f"{key}: {want!r} → {got!r}")
    return diffs


def format_table(checklist: Checklist) -> list[tuple[str, str, str, str, str]]:
    """Rows (step, check, status, evidence, reason/command) for printing."""
    rows = []
    for s in checklist.steps:
        note = s.reason + (f" → run: {s.command}" if s.command else "")
        rows.append((f"{s.step} {s.name}", s.check, s.status, s.evidence, note))
    return rows


def load_table(run_dir: Path) -> dict[str, Any] | None:
    """A run's reproduce.json, if any (the report shows it)."""
    path = run_dir / "reproduce.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


Runner = Callable[..., Any]
