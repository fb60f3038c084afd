"""`doctor`: what this machine has for each stage, and how to get what is missing."""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .preflight import Check
    from .presets import Preset

Row = tuple[str, bool, str, str]  # component, ok, status, how to fix


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def python_rows() -> list[Row]:
    """Our own environment: torch and its device, the diffusers stack."""
    rows: list[Row] = []
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


def base_model_rows(repo_root: Path) -> list[Row]:
    """Whether the presets' base models are available offline (hub cache or local file)."""
    from .preflight import Level, Plan, Probes, check_base
    from .presets import PRESETS_DIR, Preset, available_presets, read_preset_data

    rows: list[Row] = []
    seen: set[str] = set()
    # Offline here: the cache and local files only; `doctor --preset P` also asks the hub.
    probes = Probes(offline=lambda: True)
    for name in available_presets(PRESETS_DIR):
        plan = Plan.from_resolved(Preset.model_validate(read_preset_data(PRESETS_DIR / f"{name}.toml")).model_dump(mode="json"))
        if plan is None or plan.base in seen:
            continue
        if not plan.base:
            rows.append((f"base model ({name})", False, "needs your local checkpoint", f"--set pretrained_model_name_or_path=/path/model.safetensors with --preset {name}"))
            continue
        seen.add(plan.base)
        check = check_base(plan, probes)
        ok = check.level is Level.OK
        rows.append((f"base model {plan.base}", ok, check.cause.removeprefix(f"base model {plan.base}: "), check.fix))
    return rows


def preflight_checks(preset: "Preset", repo_root: Path, dataset: Path, cpu: bool = False) -> list["Check"]:
    """`doctor --preset P`: the checks `train --preset P` makes before launching, for a run under runs/."""
    from .preflight import Plan, count_images, run_checks
    from .engines.session import RUNS_DIR

    plan = Plan.from_resolved(preset.model_dump(mode="json"))
    if plan is None:
        return []
    return run_checks(plan, repo_root=repo_root, run_dir=RUNS_DIR, images=count_images(dataset), cpu=cpu)


def tool_rows() -> list[Row]:
    """Command-line tools the report test and bundles use."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    return [
        ("chromium (report screenshot test)", chromium is not None, chromium or "not found", "" if chromium else "apt-get install chromium (optional)"),
        ("git (make vendor)", shutil.which("git") is not None, shutil.which("git") or "not found", "apt-get install git"),
    ]


def doctor_rows(repo_root: Path) -> list[Row]:
    """Every row doctor prints."""
    rows = python_rows()
    try:
        from .vendor import doctor_rows as sd_scripts_rows
    except ImportError:  # the sd-scripts stage is optional
        sd_scripts_rows = None
    if sd_scripts_rows is not None:
        for component, status, fix in sd_scripts_rows(repo_root):
            rows.append((component, not fix, status, fix))
    return rows + base_model_rows(repo_root) + tool_rows()
