"""`doctor`: what this machine has for each stage, and how to get what is missing."""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path

from .paths import hub_cache_dir

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
    from .presets import PRESETS_DIR, Preset, available_presets, read_preset_data

    rows: list[Row] = []
    seen: set[str] = set()
    for name in available_presets(PRESETS_DIR):
        preset = Preset.model_validate(read_preset_data(PRESETS_DIR / f"{name}.toml"))
        if not preset.kohya:
            continue
        base = preset.kohya.pretrained_model_name_or_path
        if not base:
            rows.append((f"base model ({name})", False, "needs your local checkpoint", f"--set pretrained_model_name_or_path=/path/model.safetensors with --preset {name}"))
            continue
        if base in seen:
            continue
        seen.add(base)
        ok, status = _hub_or_local(base)
        fix = "" if ok else f"on a machine with internet it is downloaded on first use; offline: huggingface-cli download {base}, or --set pretrained_model_name_or_path=/local/path"
        rows.append((f"base model {base}", ok, status, fix))
    return rows


def _hub_or_local(base: str) -> tuple[bool, str]:
    path = Path(base).expanduser()
    if path.exists():
        return True, f"local {'folder' if path.is_dir() else 'file'} {path}"
    hub = hub_cache_dir()
    cached = hub / ("models--" + base.replace("/", "--"))
    if cached.is_dir():
        return True, f"in the hub cache ({cached})"
    return False, "not downloaded (hub id)"


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
