"""Where things are: the checkout, the caches, the Hugging Face hub settings (one place for each rule)."""

from __future__ import annotations

import os
from pathlib import Path

# The source checkout (presets/, dataset/, vendor/ beside the package); an installed copy has none of them.
REPO_ROOT = Path(__file__).resolve().parent.parent
# Bespoke Punks are 24x24 art pixels.
ART = 24


def cache_dir() -> Path:
    """bespoke-kohya's own cache: `$BESPOKE_CACHE`, default `~/.cache/bespoke-kohya`."""
    return Path(os.environ.get("BESPOKE_CACHE", Path.home() / ".cache" / "bespoke-kohya"))


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`."""
    return Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub")


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE is set (read now, so a test or the CLI can set it at run time)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
