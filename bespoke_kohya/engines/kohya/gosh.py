"""What a bundle's go.sh asks the kohya engine, in the standard library only (it runs before anything is installed).

`python -m bespoke_kohya.bundle` finds this module through the engine registry; every hook is
optional for an engine. Here: the pre-flight before installing, sd-scripts as the engine's
tools (is it installed in the run, the command that installs it, the environment that points
the later stages at it), the base model's availability and the interpreter that can see the GPU.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from typing import Any

from ...paths import hub_cache_dir, hub_offline
from ...runfolder import VENDOR
from .preflight import is_local_path
from .vendor import MARKER, SD_SCRIPTS_TAG

USAGE_ENV = """  SD_SCRIPTS_SRC=URL|DIR    where to clone sd-scripts from; SD_SCRIPTS_TORCH="..." its torch
  SD_SCRIPTS_DIR=DIR        use an existing sd-scripts install (SD_SCRIPTS_PYTHON: its python)"""


def _clone(run_dir: Path) -> Path:
    return run_dir / VENDOR / "sd-scripts"


def preflight(run_dir: Path, record: dict[str, Any], *, cpu: bool, base: str | None, before_install: bool) -> int:
    """go.sh's pre-flight of the run before installing anything: one line per problem; exit status 1 when one stops it."""
    from .preflight import main

    args = ["--run", str(run_dir)] + ["--cpu"] * cpu + (["--base", base] if base else []) + ["--before-install"] * before_install
    return main(args)


def tools_state(run_dir: Path, bundle: dict[str, Any]) -> tuple[bool, str]:
    """Whether sd-scripts (the tag the bundle was made for) is installed in the run's vendor/ folder."""
    if os.environ.get("SD_SCRIPTS_DIR"):
        return True, f"SD_SCRIPTS_DIR={os.environ['SD_SCRIPTS_DIR']} is used as it is"
    try:
        marker = json.loads((_clone(run_dir) / ".git" / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        marker = None
    if isinstance(marker, dict) and marker.get("status") == "complete" and marker.get("tag") == bundle.get("sd_scripts_tag", SD_SCRIPTS_TAG):
        return True, f"sd-scripts {marker['tag']} is installed in vendor/sd-scripts"
    return False, "an interrupted install is in vendor/sd-scripts" if marker else "vendor/sd-scripts is not installed yet"


def tools_command(run_dir: Path, bundle: dict[str, Any]) -> list[str]:
    """The arguments after `bespoke-kohya` that install sd-scripts into the run (go.sh adds nothing to them)."""
    cmd = ["vendor", "--repo-root", str(run_dir), "--tag", str(bundle.get("sd_scripts_tag") or SD_SCRIPTS_TAG)]
    if os.environ.get("SD_SCRIPTS_SRC"):
        cmd += ["--source", os.environ["SD_SCRIPTS_SRC"]]
    if os.environ.get("SD_SCRIPTS_TORCH"):
        cmd += ["--torch", os.environ["SD_SCRIPTS_TORCH"]]
    return cmd


def tools_env(run_dir: Path) -> dict[str, str]:
    """What the later stages need in their environment to find sd-scripts (none when SD_SCRIPTS_DIR is set)."""
    if os.environ.get("SD_SCRIPTS_DIR"):
        return {}
    return {"SD_SCRIPTS_DIR": str(_clone(run_dir)), "SD_SCRIPTS_PYTHON": str(_clone(run_dir) / "venv" / "bin" / "python")}


def gpu_python(run_dir: Path) -> str:
    """The interpreter whose torch must see the GPU: sd-scripts' own (it trains)."""
    return os.environ.get("SD_SCRIPTS_PYTHON") or str(_clone(run_dir) / "venv" / "bin" / "python")


def base_state(run_dir: Path, value: str | None) -> tuple[bool, str]:
    """Whether the base model ``value`` can be had on this box: a local file in the run or on the machine, or a hub id
    that is cached or downloadable."""
    if not value:
        return False, "kohya.pretrained_model_name_or_path is empty; run BASE_MODEL=/path/to/model.safetensors ./go.sh"
    if is_local_path(value, run_dir):
        path = Path(value).expanduser()
        path = path if path.is_absolute() else run_dir / path
        if path.exists():
            return True, f"local base {value} is present"
        return False, f"{value} is not on this machine: copy it to {value} in this folder, or run BASE_MODEL=/path/to/model ./go.sh"
    folder = hub_cache_dir() / ("models--" + value.replace("/", "--"))
    if folder.is_dir():
        return True, f"{value} is in the Hugging Face cache ({folder.name})"
    if hub_offline():
        return False, f"{value} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: run BASE_MODEL=/path/to/model ./go.sh"
    if _hub_reachable():
        return True, f"hub id {value}: sd-scripts downloads it on first use (the hub is reachable)"
    return False, f"{value} is not in the Hugging Face cache and the hub cannot be reached: run BASE_MODEL=/path/to/model ./go.sh"


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (or $HF_ENDPOINT) answers a TCP connection."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = re.sub(r"^[a-z]+://", "", endpoint).split("/")[0]
    name, _, port = host.partition(":")
    try:
        socket.create_connection((name, int(port or 443)), timeout=timeout).close()
    except (OSError, ValueError):
        return False
    return True
