"""The one device picker: which torch device (and dtype) to run a model on."""

from __future__ import annotations

import re

import torch

from .errors import UserError


def resolve_device(device: str | None) -> tuple[str, torch.dtype]:
    """(device, dtype) to sample on: ``None``/``"auto"`` picks cuda, then mps, then cpu.

    fp16 on CUDA halves memory and is what the documented recipe ran; CPUs have no
    fast fp16 path, and on Apple's mps fp32 avoids the black/NaN images fp16 VAEs
    can give, at the cost of memory.
    """
    wanted = (device or "auto").strip().lower()
    if wanted == "auto":
        if torch.cuda.is_available():
            wanted = "cuda"
        elif torch.backends.mps.is_available():
            wanted = "mps"
        else:
            wanted = "cpu"
    if wanted == "cpu":
        return "cpu", torch.float32
    if wanted == "mps":
        if not torch.backends.mps.is_available():
            raise UserError("--device mps: this machine has no usable Apple GPU (torch.backends.mps is unavailable); use --device cpu")
        return "mps", torch.float32
    match = re.fullmatch(r"cuda(?::(\d+))?", wanted)
    if match:
        if not torch.cuda.is_available():
            raise UserError(f"--device {device!r}: no CUDA GPU is visible to torch {torch.__version__}; use --device cpu (slow) or install a CUDA build of torch")
        index = int(match.group(1) or 0)
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible (cuda:0 … cuda:{torch.cuda.device_count() - 1})")
        return wanted, torch.float16
    raise UserError(f"--device {device!r}: expected auto, cpu, cuda, cuda:N or mps")
