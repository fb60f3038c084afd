"""`doctor`: what this machine has for each stage, and how to get what is missing.

Our own environment and tools here; each engine adds its rows (kohya: sd-scripts, its
interpreter, the offline tokenizer, the presets' base models).
"""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path

from .engines import engine_names, get_engine
from .engines.protocol import Check, DoctorRow
from .settings import Preset


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def python_rows() -> list[DoctorRow]:
    """Our own environment: torch and its device, the diffusers stack."""
    rows: list[DoctorRow] = []
    torch_version = _version("torch")
    if torch_version is None:
        rows.append(("torch", False, "not installed", "make setup"))
    else:
        import torch

        if torch.cuda.is_available():
            device = f"cuda ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} GPU)"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu only"
        rows.append(("torch", True, f"{torch_version}, {device}", "" if "cuda" in device else "kohya presets need a CUDA GPU to train in reasonable time; pixel24 runs on CPU"))
    for dist in ("diffusers", "transformers", "accelerate", "peft", "safetensors"):
        v = _version(dist)
        rows.append((dist, v is not None, v or "not installed", "" if v else "make setup"))
    return rows


def tool_rows() -> list[DoctorRow]:
    """Command-line tools the report test and bundles use."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    return [
        ("chromium (report screenshot test)", chromium is not None, chromium or "not found", "" if chromium else "apt-get install chromium (optional)"),
        ("git (make vendor)", shutil.which("git") is not None, shutil.which("git") or "not found", "apt-get install git"),
    ]


def doctor_rows(repo_root: Path) -> list[DoctorRow]:
    """Every row doctor prints: ours, each engine's, then the tools."""
    rows = python_rows()
    for name in engine_names():
        rows += get_engine(name).doctor_rows(repo_root)
    return rows + tool_rows()


def preflight_checks(preset: Preset, repo_root: Path, dataset: Path, cpu: bool = False) -> list[Check]:
    """`doctor --preset P`: the checks `train --preset P` makes before launching, for a run under runs/."""
    return get_engine(preset.engine).preflight_checks(preset, repo_root, dataset, cpu)
