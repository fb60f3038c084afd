"""The pixel24 network, its config (``pixel24.json``) and its checkpoints.

A diffusers ``UNet2DModel`` (24 → 12 → 6, attention only at 6×6) reads one embedding per
pixel and writes one feature vector per pixel; the logit of palette colour *k* at a pixel
is that vector's dot product with colour *k*'s output embedding. Both colour embeddings
are computed from the colour's CIELAB coordinates by small MLPs rather than looked up in
a table, so one network works with any palette: the base model learns on the stand-in's
palette and the fine-tune switches to the artist's without losing what it learned. A
learned vector stands for "masked"; the mask ratio takes the place of the diffusion
timestep.

Optional parts (version 3), each recorded in ``pixel24.json`` and absent from a version-2 file,
so a version-2 run rebuilds exactly as it was trained: attention at more levels than the lowest
(``unet.down_block_types`` says which), and a **background head** (``"background"``): a small
MLP reads the caption's vector and gives logits over the palette for the picture's background
colour (its outer ring's commonest colour), and that colour's embedding is added to the
U-Net's conditioning, so every pixel knows the background before any is drawn (the U-Net
alone sees the whole picture only at 6×6, and left backgrounds patchy).

A run folder holds ``checkpoints/pixel24.json`` (architecture, vocabulary, palette,
settings: everything needed to rebuild the model, nanoGPT-style) and one
``pixel24-NNNNNN.safetensors`` per epoch (EMA weights).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import UserError
from ...atomic import write_atomic, write_json_atomic
from ...paths import ART
from . import files
from .settings import VERSION_3_FIELDS, Pixel24Settings
from .palette import from_hex, palette_lab, to_hex
from .text import PhraseEncoder

FORMAT = "bespoke-kohya/pixel24"
FORMAT_VERSION = 3  # 1: continuous RGB diffusion (before palette indices); not loadable any more
# 2: palette indices; 3: the same plus optional parts (settings.VERSION_3_FIELDS). A model that uses none of them is
# written as 2, exactly as before, so versions of bespoke-kohya that read only 2 still load it.
READABLE_VERSIONS = (2, 3)
CONFIG_NAME = "pixel24.json"
STEM = "pixel24"
FOURIER_FEATURES = 32


def checkpoint_name(epoch: int) -> str:
    """``pixel24-000001.safetensors`` for epoch 1."""
    return f"{STEM}-{epoch:06d}.safetensors"


def _norm_groups(channels: list[int]) -> int:
    """The largest GroupNorm group count (≤ 32) that divides every width."""
    return next(g for g in (32, 16, 8, 4, 2, 1) if all(c % g == 0 for c in channels))


def unet_config(settings: Pixel24Settings) -> dict[str, Any]:
    """The ``UNet2DModel`` config: colour embeddings in, per-pixel features out, attention at the lowest ``attention_levels`` levels."""
    channels = list(settings.block_out_channels)
    levels = len(channels)
    attention = min(settings.attention_levels, levels)  # version 2: the lowest only
    down = ["DownBlock2D"] * (levels - attention) + ["AttnDownBlock2D"] * attention
    return {
        "sample_size": ART,
        "in_channels": settings.colour_dim,
        "out_channels": settings.feature_dim,
        "block_out_channels": channels,
        "layers_per_block": settings.layers_per_block,
        "down_block_types": down,
        "up_block_types": ["AttnUpBlock2D" if block.startswith("Attn") else "UpBlock2D" for block in reversed(down)],
        "attention_head_dim": next(h for h in (32, 16, 8) if all(c % h == 0 for c in channels[levels - attention :])),
        "norm_num_groups": _norm_groups(channels),
        "class_embed_type": "identity",
        "resnet_time_scale_shift": "scale_shift",
    }


class ColourEmbed(nn.Module):
    """A colour's CIELAB coordinates -> a vector (fixed random Fourier features, then an MLP)."""

    def __init__(self, dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.randn(3, FOURIER_FEATURES, generator=torch.Generator().manual_seed(24)) * 3.0)
        self.net = nn.Sequential(nn.Linear(2 * FOURIER_FEATURES + 3, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, lab: torch.Tensor) -> torch.Tensor:
        x = lab / torch.tensor([100.0, 128.0, 128.0], device=lab.device)
        proj = x @ self.freqs
        return self.net(torch.cat([x, proj.sin(), proj.cos()], dim=-1))


class Pixel24Net(nn.Module):
    """Palette indices (index K = masked) + mask ratio + caption -> logits over the K palette colours."""

    def __init__(self, config: dict[str, Any], vocab_size: int) -> None:
        from diffusers import UNet2DModel

        super().__init__()
        unet = config["unet"]
        self.unet = UNet2DModel(**unet)
        self.text = PhraseEncoder(vocab_size, config["text"]["dim"], unet["block_out_channels"][0] * 4)
        self.colour_in = ColourEmbed(unet["in_channels"])
        self.colour_out = ColourEmbed(unet["out_channels"])
        self.mask = nn.Parameter(torch.zeros(unet["in_channels"]))
        self.scale = unet["out_channels"] ** -0.5
        cond_dim = unet["block_out_channels"][0] * 4
        self.has_background = bool(config.get("background"))
        if self.has_background:  # made after the version-2 parts, so those draw the same initial weights from a seed
            # caption vector -> a feature vector whose dot product with each colour's output embedding is that colour's background logit
            self.background_head = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, unet["out_channels"]))
            self.background_in = nn.Linear(unet["in_channels"], cond_dim)  # the chosen background colour's input embedding -> conditioning

    def condition(self, text: torch.Tensor, background: torch.Tensor | None, lab: torch.Tensor) -> torch.Tensor:
        """The U-Net's conditioning: the caption vectors ``text`` (B, C), plus the background colours' (B,) embedding when the model has the head."""
        if not self.has_background:
            return text
        if background is None:
            raise ValueError("a model with a background head needs a background colour per image")
        return text + self.background_in(self.colour_in(lab)[background])

    def background_logits(self, text: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        """(B, K) logits of each palette colour being the background, from the caption vectors alone."""
        return torch.einsum("bf,kf->bk", self.background_head(text), self.colour_out(lab)) * self.scale

    def features(self, indices: torch.Tensor, mask_ratio: torch.Tensor, conditions: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        """``indices`` (B, 24, 24) in 0..K, ``conditions`` from ``self.text``, ``lab`` (K, 3) -> (B, F, 24, 24) per-pixel features."""
        table = torch.cat([self.colour_in(lab), self.mask[None]])
        x = nn.functional.embedding(indices, table).permute(0, 3, 1, 2)  # deterministic backward, unlike table[indices] on 2+ threads
        return self.unet(x, mask_ratio * 999, class_labels=conditions).sample

    def forward(self, indices: torch.Tensor, mask_ratio: torch.Tensor, conditions: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        """``indices`` (B, 24, 24) in 0..K, ``conditions`` from ``self.text``, ``lab`` (K, 3) -> (B, K, 24, 24) logits."""
        return torch.einsum("bfhw,kf->bkhw", self.features(indices, mask_ratio, conditions, lab), self.colour_out(lab)) * self.scale

    def logits_at(self, indices: torch.Tensor, mask_ratio: torch.Tensor, conditions: torch.Tensor, lab: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """(M, K) logits of only the M pixels ``where`` (B, 24, 24) is true, in ``logits.permute(0, 2, 3, 1)[where]``'s order:
        the training loss reads no others, and scoring all 576 × K was a tenth of a training step."""
        return self.project(self.features(indices, mask_ratio, conditions, lab).permute(0, 2, 3, 1)[where], lab)

    def project(self, features: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        """(M, F) per-pixel features -> (M, K) logits over the palette ``lab`` (K, 3), as :meth:`forward` scores every pixel."""
        return (features @ self.colour_out(lab).T) * self.scale


@dataclass
class Pixel24Model:
    """A loaded model: network, vocabulary, palette and config."""

    net: Pixel24Net
    vocab: list[str]
    palette: np.ndarray  # (K, 3) uint8
    config: dict[str, Any]
    device: torch.device
    path: Path | None = None
    _index: dict[str, int] = field(default_factory=dict, repr=False)
    _lab: torch.Tensor | None = field(default=None, repr=False)
    _names: list[frozenset[str]] | None = field(default=None, repr=False)  # the colour names of each palette colour (sampling)
    _compiled: Any = field(default=None, repr=False)  # torch.compile of net, after compile()
    _compiled_features: Any = field(default=None, repr=False)  # torch.compile of net.features (fast_draw), after compile()

    def __post_init__(self) -> None:
        self._index = {w: i for i, w in enumerate(self.vocab)}

    @property
    def vocab_index(self) -> dict[str, int]:
        return self._index

    @property
    def lab(self) -> torch.Tensor:
        if self._lab is None or self._lab.device != self.device:
            self._lab = palette_lab(self.palette).to(self.device)
        return self._lab

    def set_palette(self, palette: np.ndarray) -> None:
        self.palette, self._lab, self._names = palette, None, None
        self.config["palette"] = to_hex(palette)

    def compile(self) -> None:
        """From now on :meth:`logits` and :meth:`features` run the network through torch.compile (settings.compile, for
        drawing); once per model. Each compiles at its first call, so the one a sampler never calls costs nothing."""
        if self._compiled is None:
            require_compiler()
            # dynamic=False: drawing uses one fixed batch shape, so it compiles once
            self._compiled = torch.compile(self.net, dynamic=False)
            self._compiled_features = torch.compile(self.net.features, dynamic=False)

    def logits(self, indices: torch.Tensor, mask_ratio: torch.Tensor, conditions: torch.Tensor, *, compiled: bool = True) -> torch.Tensor:
        """The network's (B, K, 24, 24) logits (Pixel24Net.forward), compiled after :meth:`compile` unless ``compiled`` is
        False (training, whose gradients torch's compiler gets wrong for this network; or a pass of another batch shape,
        which would compile again)."""
        net = self._compiled if compiled and self._compiled is not None else self.net
        return net(indices, mask_ratio, conditions, self.lab)

    def features(self, indices: torch.Tensor, mask_ratio: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        """The network's (B, F, 24, 24) per-pixel features (Pixel24Net.features), compiled after :meth:`compile`: the
        fast_draw sampler projects only the pixels it draws onto the palette."""
        features = self._compiled_features if self._compiled_features is not None else self.net.features
        return features(indices, mask_ratio, conditions, self.lab)

    def to(self, device: torch.device | str) -> "Pixel24Model":
        self.device = torch.device(device)
        self.net.to(self.device)
        return self

    def eval(self) -> "Pixel24Model":
        self.net.eval()
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu").contiguous() for k, v in self.net.state_dict().items()}


CPP_COMPILERS = ("g++", "clang++", "c++")  # what torch.compile's CPU backend builds its kernels with


def has_compiler() -> bool:
    import shutil

    return any(shutil.which(name) for name in CPP_COMPILERS)


def require_compiler() -> None:
    """torch.compile on a CPU builds C++ kernels: without a compiler it would fail deep inside torch at the first call."""
    if not has_compiler():
        raise UserError("pixel24.compile = true needs a C++ compiler (g++ or clang++) on PATH; install one, or set pixel24.compile=false")


def model_config(settings: Pixel24Settings, vocab: list[str], palette: np.ndarray) -> dict[str, Any]:
    """Everything needed to rebuild the model, as written to ``pixel24.json``.

    Version 2, byte for byte what it was, when the settings use no version-3 part: those settings are left out
    (all at their defaults), so a version of bespoke-kohya that reads only version 2 still reads it.
    """
    recorded = settings.model_dump(mode="json")
    version = FORMAT_VERSION if settings.version_3_parts() else 2
    if version == 2:
        recorded = {k: v for k, v in recorded.items() if k not in VERSION_3_FIELDS}
    config = {
        "format": FORMAT,
        "version": version,
        "unet": unet_config(settings),
        "text": {"dim": settings.text_dim},
        "vocab": vocab,
        "palette": to_hex(palette),
        "settings": recorded,
    }
    if settings.background_head:
        config["background"] = {"head": True}
    return config


def build_model(config: dict[str, Any], device: torch.device | str = "cpu") -> Pixel24Model:
    """A randomly initialised model from a ``pixel24.json``-style config (seed torch first)."""
    vocab = list(config["vocab"])
    net = Pixel24Net(config, len(vocab))
    return Pixel24Model(net=net, vocab=vocab, palette=from_hex(config["palette"]), config=config, device=torch.device("cpu")).to(device)


def save_checkpoint(model: Pixel24Model, path: Path, epoch: int, step: int) -> None:
    """The model's weights as safetensors, atomically."""
    # One metadata key: safetensors writes several in hash order, and a checkpoint should be byte-reproducible.
    meta = {FORMAT: json.dumps({"version": model.config.get("version", FORMAT_VERSION), "epoch": epoch, "step": step}, sort_keys=True)}
    write_atomic(path, lambda p: files.save_tensors(model.state_dict(), p, metadata=meta))


def write_config(path: Path, config: dict[str, Any]) -> None:
    write_json_atomic(path, config)


def read_config(path: Path) -> dict[str, Any]:
    """``pixel24.json`` (or the one beside a checkpoint), checked."""
    path = Path(path)
    if path.suffix == ".safetensors":
        path = path.with_name(CONFIG_NAME)
    if not os.path.lexists(path):  # a link or FIFO in its place is refused by the reader, not taken for missing
        raise UserError(f"{path}: model config not found; a pixel24 checkpoint needs the {CONFIG_NAME} its training run wrote beside it")
    config = files.read_json(path, "model config", f"it should be the {CONFIG_NAME} written by `bespoke-kohya train --preset pixel24`")
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise UserError(f"{path}: not a pixel24 model config (format is {config.get('format') if isinstance(config, dict) else None!r}, expected {FORMAT!r})")
    if config.get("version") == 1:
        raise UserError(f"{path}: this run was trained by the first pixel24 (continuous RGB), which this version no longer draws; retrain it with `bespoke-kohya train --preset pixel24 --dataset DIR`")
    if config.get("version") not in READABLE_VERSIONS:
        raise UserError(f"{path}: pixel24 config version {config.get('version')!r} is newer than this bespoke-kohya understands (expected at most {FORMAT_VERSION}); upgrade bespoke-kohya")
    missing = [k for k in ("unet", "text", "vocab", "palette") if k not in config]
    if missing:
        raise UserError(f"{path}: pixel24 config lacks {', '.join(missing)}; it is incomplete or from another tool")
    return files.check_config(path, config, unet_config)  # every field typed and bounded like the preset, before anything is built


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; list the run's checkpoints with `ls {path.parent}`")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path}: not a readable safetensors checkpoint ({exc}); it may be truncated, retrain or pick another epoch") from None


def load_weights(model: Pixel24Model, weights: dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.net.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{path}: weights do not match the {CONFIG_NAME} beside it ({first}); the files come from different runs") from None


def load_checkpoint(path: Path, device: str | None = None) -> Pixel24Model:
    """A trained model from ``pixel24-NNNNNN.safetensors`` and the ``pixel24.json`` beside it."""
    from ...devices import resolve_device

    path = Path(path)
    config = read_config(path)
    weights = read_weights(path)
    model = build_model(config)
    load_weights(model, weights, path)
    model.path = path
    return model.to(resolve_device(device)[0]).eval()
