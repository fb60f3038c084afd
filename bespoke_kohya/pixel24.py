"""``pixel24``: a small diffusion model that works directly on 24×24 RGB pixels (no VAE).

Stable Diffusion's VAE turns a 24×24 image into 3×3 latents, which is why native 24 px
training fails for the kohya presets. Here a diffusers ``UNet2DModel`` (24 → 12 → 6,
attention only at 6×6) denoises the pixels themselves, so it trains on a CPU in minutes.

Caption conditioning: a caption is split on commas into phrases, each phrase into
normalised words. Words seen at least ``vocab_min_count`` times in the training captions
form the vocabulary (stored in ``pixel24.json``). A phrase becomes the mean of its word
embeddings passed through a small MLP (so "green background" and "green eyes" differ),
the phrase vectors of a caption are summed, and the result is added to the U-Net's timestep
embedding (``class_embed_type="identity"``). An empty caption is the learned "null"
condition used for classifier-free guidance. Phrase order does not matter.

Files: ``RUN/checkpoints/pixel24-000001.safetensors`` … (weights, one per epoch, EMA when
enabled) and ``RUN/checkpoints/pixel24.json`` (model config, vocabulary, settings).
torch and diffusers are imported only in this module.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from .errors import UserError
from .images import load_rgb
from .jsonfile import write_atomic, write_json_atomic
from .paths import ART
from .presets import Pixel24Settings, Preset
from .runfolder import CHECKPOINTS
from .runfolder.records import LossLog, LossRow

FORMAT = "bespoke-kohya/pixel24"
FORMAT_VERSION = 1
CONFIG_NAME = "pixel24.json"
STEM = "pixel24"
SAMPLE_BATCH = 16  # images per denoising batch when sampling (fixed: see sample())
_WORD = re.compile(r"[a-z0-9]+")
# Index 0 is reserved so that a vocabulary never shifts when it is extended (fine-tuning).
_RESERVED = ["<reserved>"]

Phrases = list[list[int]]  # one caption: phrases, each a list of word ids


# ------------------------------------------------------------------ text


def split_phrases(caption: str) -> list[list[str]]:
    """A caption as comma-separated phrases of lower-case words (punctuation dropped)."""
    phrases = [_WORD.findall(part.lower()) for part in caption.split(",")]
    return [p for p in phrases if p]


def build_vocab(captions: list[str], min_count: int, base: list[str] | None = None) -> list[str]:
    """Words seen at least ``min_count`` times, in a stable order, appended to ``base`` (kept as is)."""
    counts = Counter(word for caption in captions for phrase in split_phrases(caption) for word in phrase)
    vocab = list(base) if base else list(_RESERVED)
    known = set(vocab)
    vocab += sorted(w for w, n in counts.items() if n >= min_count and w not in known)
    return vocab


def encode_caption(vocab_index: dict[str, int], caption: str) -> tuple[Phrases, list[str]]:
    """(phrases as word ids, unknown words in order of appearance); phrases with no known word are dropped."""
    phrases: Phrases = []
    unknown: list[str] = []
    for words in split_phrases(caption):
        ids = [vocab_index[w] for w in words if w in vocab_index]
        unknown += [w for w in words if w not in vocab_index and w not in unknown]
        if ids:
            phrases.append(ids)
    return phrases, unknown


class PhraseEncoder(nn.Module):
    """Caption phrases -> one vector added to the U-Net's timestep embedding."""

    def __init__(self, vocab_size: int, dim: int, out_dim: int) -> None:
        super().__init__()
        self.words = nn.EmbeddingBag(vocab_size, dim, mode="mean")
        # Non-linear so that a phrase is more than the sum of its words ("green eyes" vs "green background").
        self.phrase = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(dim, out_dim))
        self.null = nn.Parameter(torch.zeros(out_dim))

    def forward(self, captions: list[Phrases]) -> torch.Tensor:
        """``captions[i]`` is a list of phrases (word-id lists); an empty list is the null condition."""
        device = self.null.device
        flat: list[int] = []
        offsets: list[int] = []
        owner: list[int] = []
        for i, phrases in enumerate(captions):
            for ids in phrases:
                offsets.append(len(flat))
                flat += ids
                owner.append(i)
        out = self.null.expand(len(captions), -1).clone()
        if not owner:
            return out
        vectors = self.phrase(self.words(torch.tensor(flat, device=device), torch.tensor(offsets, device=device)))
        owners = torch.tensor(owner, device=device)
        # A sum, not a mean: phrases every caption shares ("pixel art", "24x24") would otherwise
        # dilute the ones that say something, and the U-Net absorbs their constant part as a bias.
        sums = torch.zeros(len(captions), vectors.shape[1], device=device).index_add_(0, owners, vectors)
        has = torch.bincount(owners, minlength=len(captions)) > 0
        out[has] = self.out(sums)[has]
        return out

    def resize_vocab(self, size: int) -> None:
        """Grow the word table (fine-tuning on captions with new words); old rows are kept."""
        old = self.words.weight.data
        if size < old.shape[0]:
            raise ValueError("a vocabulary can only grow")
        table = nn.EmbeddingBag(size, old.shape[1], mode="mean").to(old.device)
        with torch.no_grad():
            table.weight[: old.shape[0]] = old
            table.weight[old.shape[0] :].normal_(0, old.std().item() or 1.0)
        self.words = table


# ------------------------------------------------------------------ model


def _norm_groups(channels: list[int]) -> int:
    """The largest GroupNorm group count (≤ 32) that divides every width."""
    return next(g for g in (32, 16, 8, 4, 2, 1) if all(c % g == 0 for c in channels))


def unet_config(settings: Pixel24Settings) -> dict[str, Any]:
    """The ``UNet2DModel`` config for these settings: plain ResNet levels, attention at the lowest."""
    channels = list(settings.block_out_channels)
    levels = len(channels)
    return {
        "sample_size": ART,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": channels,
        "layers_per_block": settings.layers_per_block,
        "down_block_types": ["DownBlock2D"] * (levels - 1) + ["AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D"] + ["UpBlock2D"] * (levels - 1),
        # Heads of 32 channels where the width allows (96 -> 3 heads); tiny test models use 8.
        "attention_head_dim": next(h for h in (32, 16, 8) if channels[-1] % h == 0),
        "norm_num_groups": _norm_groups(channels),
        "class_embed_type": "identity",
        "resnet_time_scale_shift": "scale_shift",
    }


def scheduler_config(settings: Pixel24Settings) -> dict[str, Any]:
    """DDPM training schedule (cosine betas), shared with the DDIM sampler."""
    return {
        "num_train_timesteps": settings.num_train_timesteps,
        "beta_schedule": "squaredcos_cap_v2",
        "prediction_type": settings.prediction_type,
        "clip_sample": True,
        "timestep_spacing": "trailing",
    }


@dataclass
class Pixel24Model:
    """A loaded pixel24 model: U-Net, phrase encoder, vocabulary and schedule."""

    unet: Any  # diffusers.UNet2DModel
    text: PhraseEncoder
    vocab: list[str]
    config: dict[str, Any]
    device: torch.device
    path: Path | None = None
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index = {w: i for i, w in enumerate(self.vocab)}

    @property
    def vocab_index(self) -> dict[str, int]:
        return self._index

    def to(self, device: torch.device | str) -> "Pixel24Model":
        self.device = torch.device(device)
        self.unet.to(self.device)
        self.text.to(self.device)
        return self

    def eval(self) -> "Pixel24Model":
        self.unet.eval()
        self.text.eval()
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensors for safetensors: ``unet.*`` and ``text.*``."""
        out = {f"unet.{k}": v for k, v in self.unet.state_dict().items()}
        out.update({f"text.{k}": v for k, v in self.text.state_dict().items()})
        return {k: v.detach().to("cpu").contiguous() for k, v in out.items()}

    def parameters(self) -> list[nn.Parameter]:
        return list(self.unet.parameters()) + list(self.text.parameters())


def build_model(config: dict[str, Any], vocab: list[str], device: torch.device) -> Pixel24Model:
    """A randomly initialised model from a ``pixel24.json``-style config (seed torch first)."""
    from diffusers import UNet2DModel

    unet = UNet2DModel(**config["unet"])
    text_cfg = config["text"]
    text = PhraseEncoder(len(vocab), text_cfg["dim"], text_cfg["out_dim"])
    return Pixel24Model(unet=unet, text=text, vocab=vocab, config=config, device=device).to(device)


def model_config(settings: Pixel24Settings, vocab: list[str]) -> dict[str, Any]:
    """Everything needed to rebuild the model, as written to ``pixel24.json``."""
    unet = unet_config(settings)
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "unet": unet,
        "text": {"dim": settings.text_dim, "out_dim": unet["block_out_channels"][0] * 4},
        "scheduler": scheduler_config(settings),
        "vocab": vocab,
        "settings": settings.model_dump(mode="json"),
    }


# ------------------------------------------------------------------ devices and files


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given (refused when unavailable), else cuda, else mps, else cpu (devices.resolve_device)."""
    from .devices import resolve_device

    return torch.device(resolve_device(device)[0])


def cpu_threads() -> int:
    """Threads for CPU work: ``OMP_NUM_THREADS`` if set, else the cores no other process is running on (≥ 1).

    OpenMP threads spin while they wait for each other, so a thread that shares its core
    with another busy process stalls all of them: on a 2-core machine busy with other work,
    2 threads trained at 13 images/s and 1 thread at 75; on the idle machine 2 threads
    gave ~146. The count of runnable tasks in ``/proc/loadavg`` is instantaneous (unlike
    the load average, which would still count this process's own work of the last minute).
    """
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    others = _other_runnable()
    return max(1, min(cores, cores - others))


def _other_runnable(samples: int = 5, interval: float = 0.02) -> int:
    """Median number of runnable tasks besides this one (0 where /proc/loadavg is missing)."""
    counts = []
    for i in range(samples):
        try:
            running = Path("/proc/loadavg").read_text().split()[3].split("/")[0]
        except (OSError, IndexError):
            return 0
        counts.append(max(0, int(running) - 1))  # the reading process itself is running
        if i + 1 < samples:
            time.sleep(interval)
    return int(np.median(counts))


@contextmanager
def _threads_for(device: torch.device) -> Iterator[None]:
    """Run CPU work with ``cpu_threads()`` threads, restoring the caller's setting afterwards."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(cpu_threads())
    try:
        yield
    finally:
        torch.set_num_threads(before)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """JSON, atomically."""
    write_json_atomic(path, data)


def save_checkpoint(model: Pixel24Model, path: Path, epoch: int, step: int) -> None:
    """The model's weights as safetensors, atomically."""
    from safetensors.torch import save_file

    meta = {"format": FORMAT, "epoch": str(epoch), "step": str(step)}
    write_atomic(path, lambda p: save_file(model.state_dict(), str(p), metadata=meta))


def checkpoint_name(epoch: int) -> str:
    """``pixel24-000001.safetensors`` for epoch 1."""
    return f"{STEM}-{epoch:06d}.safetensors"


def read_config(path: Path) -> dict[str, Any]:
    """``pixel24.json`` (or the one beside a checkpoint), checked."""
    path = Path(path)
    if path.suffix == ".safetensors":
        path = path.with_name(CONFIG_NAME)
    if not path.is_file():
        raise UserError(f"{path}: model config not found; a pixel24 checkpoint needs the {CONFIG_NAME} its training run wrote beside it")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); it should be the {CONFIG_NAME} written by `bespoke-kohya train --preset pixel24`") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise UserError(f"{path}: not a pixel24 model config (format is {config.get('format') if isinstance(config, dict) else None!r}, expected {FORMAT!r})")
    if config.get("version") != FORMAT_VERSION:
        raise UserError(f"{path}: pixel24 config version {config.get('version')!r} is not supported (expected {FORMAT_VERSION}); retrain with this version")
    missing = [k for k in ("unet", "text", "scheduler", "vocab") if k not in config]
    if missing:
        raise UserError(f"{path}: pixel24 config lacks {', '.join(missing)}; it is incomplete or from another tool")
    return config


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; list the run's checkpoints with `ls {path.parent}`")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path}: not a readable safetensors checkpoint ({exc}); it may be truncated, retrain or pick another epoch") from None


def load_checkpoint(path: Path, device: str | None = None) -> Pixel24Model:
    """A trained model from ``pixel24-NNNNNN.safetensors`` and the ``pixel24.json`` beside it."""
    path = Path(path)
    weights = _read_weights(path)
    config = read_config(path)
    model = build_model(config, list(config["vocab"]), torch.device("cpu"))
    _load_weights(model, weights, path)
    model.path = path
    return model.to(pick_device(device)).eval()


def _load_weights(model: Pixel24Model, weights: dict[str, torch.Tensor], path: Path) -> None:
    unet = {k[5:]: v for k, v in weights.items() if k.startswith("unet.")}
    text = {k[5:]: v for k, v in weights.items() if k.startswith("text.")}
    try:
        model.unet.load_state_dict(unet, strict=True)
        model.text.load_state_dict(text, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{path}: weights do not match {CONFIG_NAME} beside it ({first}); the files come from different runs") from None


# ------------------------------------------------------------------ data


@dataclass
class TrainingSet:
    """Images as a [-1, 1] tensor, their captions, and problems worth reporting."""

    images: torch.Tensor  # (N, 3, 24, 24)
    captions: list[str]
    names: list[str]
    warnings: list[str]


def load_training_set(folder: Path, default_caption: str, caption_extension: str = ".txt") -> TrainingSet:
    """Every PNG under ``folder`` (sorted), 24×24, with its caption; a missing caption uses the default (reported)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: dataset folder not found")
    paths = sorted(folder.rglob("*.png"))
    if not paths:
        raise UserError(f"{folder}: no .png images found; pixel24 trains on a folder of 24x24 PNGs with {caption_extension} captions")
    arrays, captions, warnings = [], [], []
    for path in paths:
        rgb = load_rgb(path)
        if rgb.shape[:2] != (ART, ART):
            raise UserError(f"{path}: is {rgb.shape[1]}x{rgb.shape[0]}, pixel24 trains on 24x24 originals only; remove it or downscale it with NEAREST")
        arrays.append(rgb)
        caption_path = path.with_suffix(caption_extension)
        if caption_path.is_file():
            captions.append(caption_path.read_text(encoding="utf-8").strip())
        else:
            captions.append(default_caption)
            warnings.append(f"{path.name}: no {caption_extension} caption; trained with the default caption")
    stack = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return TrainingSet(images=stack.contiguous(), captions=captions, names=[str(p.relative_to(folder)) for p in paths], warnings=warnings)


def _drop_phrases(phrases: Phrases, rate: float, generator: torch.Generator) -> Phrases:
    """Each phrase kept with probability 1 - rate, so short prompts look like training captions."""
    if rate <= 0 or not phrases:
        return phrases
    keep = torch.rand(len(phrases), generator=generator) >= rate
    return [p for p, k in zip(phrases, keep.tolist()) if k]


# ------------------------------------------------------------------ training


def _lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up, then constant or cosine decay to 10% (a quieter end gives cleaner samples)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _resolve_init(init_from: str) -> Path:
    """A checkpoint file, or a run folder (its last numbered checkpoint)."""
    path = Path(init_from).expanduser()
    if path.is_dir():
        folder = path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path
        found = sorted(folder.glob(f"{STEM}-[0-9][0-9][0-9][0-9][0-9][0-9].safetensors"))
        if not found:
            raise UserError(f"pixel24.init_from = {init_from!r}: no {STEM}-NNNNNN.safetensors checkpoint in {folder}")
        return found[-1]
    if not path.is_file():
        raise UserError(f"pixel24.init_from = {init_from!r}: file not found; give a pixel24 checkpoint (.safetensors) or a pixel24 run folder")
    return path


def _initial_model(settings: Pixel24Settings, captions: list[str], device: torch.device) -> tuple[Pixel24Model, list[str]]:
    """A fresh model, or one loaded from ``init_from`` with its vocabulary extended by the new captions."""
    notes: list[str] = []
    if not settings.init_from:
        vocab = build_vocab(captions, settings.vocab_min_count)
        return build_model(model_config(settings, vocab), vocab, device), notes
    source = _resolve_init(settings.init_from)
    base = load_checkpoint(source, device="cpu")
    ours = {**unet_config(settings), **scheduler_config(settings)}
    theirs = {**base.config["unet"], **base.config["scheduler"]}
    for key in ("block_out_channels", "layers_per_block", "prediction_type", "num_train_timesteps"):
        if ours[key] != theirs[key]:
            raise UserError(f"pixel24.init_from {source}: the checkpoint has {key} = {theirs[key]!r} but the preset says {ours[key]!r}; set pixel24.{key} = {theirs[key]!r}")
    vocab = build_vocab(captions, settings.vocab_min_count, base=base.vocab)
    if len(vocab) > len(base.vocab):
        base.text.resize_vocab(len(vocab))
        notes.append(f"init_from: {len(vocab) - len(base.vocab)} new caption words added to the {len(base.vocab)}-word vocabulary")
    config = model_config(settings, vocab)
    # The network's shape comes from the checkpoint, whatever this version's defaults are.
    config["unet"], config["text"] = base.config["unet"], base.config["text"]
    config["init_from"] = str(source)
    model = Pixel24Model(unet=base.unet, text=base.text, vocab=vocab, config=config, device=device)
    return model.to(device), notes


class _Ema:
    """Exponential moving average of the weights, with a warm-up so short runs are not dominated by the random start."""

    def __init__(self, params: list[nn.Parameter], decay: float) -> None:
        self.decay = decay
        self.params = params
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - d)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange live and averaged weights (call twice to restore)."""
        for p, s in zip(self.params, self.shadow):
            tmp = p.detach().clone()
            p.copy_(s)
            s.copy_(tmp)


def train(
    preset: Preset,
    dataset_dir: Path,
    run_dir: Path,
    *,
    device: str | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_epoch: Callable[[int, str], None] | None = None,
) -> dict[str, Any]:
    """Train pixel24 on ``dataset_dir``; one checkpoint per epoch under ``run_dir/checkpoints``.

    Writes ``pixel24.json`` first (so an interrupted run is still loadable), then
    ``pixel24-NNNNNN.safetensors`` after each epoch and ``logs/loss.csv`` as it goes.
    ``should_stop()`` is polled every step: training ends cleanly, keeping finished epochs;
    ``on_epoch(epoch, checkpoint)`` is called as each epoch's checkpoint is complete.
    """
    if preset.pixel24 is None:
        raise UserError(f"preset {preset.name}: engine is {preset.engine!r}; pixel24.train needs a pixel24 preset")
    settings = preset.pixel24
    run_dir = Path(run_dir)
    torch.manual_seed(settings.seed)
    dev = pick_device(device)
    data = load_training_set(Path(dataset_dir), preset.dataset.default_caption, preset.dataset.caption_extension)
    model, notes = _initial_model(settings, data.captions, dev)
    config = model.config
    config["dataset"] = {"path": str(Path(dataset_dir).resolve()), "images": len(data.names)}
    ckpt_dir = run_dir / CHECKPOINTS
    write_json(ckpt_dir / CONFIG_NAME, config)
    encoded = [encode_caption(model.vocab_index, c)[0] for c in data.captions]
    plan = _plan(len(data.names), preset.dataset.num_repeats, settings)
    loop = _Loop(model, data.images.to(dev), encoded, settings, plan, dev)
    with _threads_for(dev):
        result = loop.run(ckpt_dir, LossLog(run_dir), on_step, should_stop, on_epoch)
    result.update(images=len(data.names), vocab_size=len(model.vocab), device=str(dev), warnings=data.warnings + notes)
    return result


@dataclass(frozen=True)
class _Plan:
    epochs: int
    steps_per_epoch: int
    batch_size: int

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


def _plan(n_images: int, repeats: int, settings: Pixel24Settings) -> _Plan:
    """Steps per epoch: every image ``repeats`` times, or fewer when ``max_steps`` caps the run (spread over all epochs)."""
    batch = min(settings.batch_size, n_images * repeats)
    per_epoch = math.ceil(n_images * repeats / batch)
    if settings.max_steps is not None and settings.max_steps < per_epoch * settings.epochs:
        per_epoch = max(1, math.ceil(settings.max_steps / settings.epochs))
    return _Plan(epochs=settings.epochs, steps_per_epoch=per_epoch, batch_size=batch)


class _Loop:
    """The optimisation loop (kept apart from file handling in ``train``)."""

    def __init__(self, model: Pixel24Model, images: torch.Tensor, captions: list[Phrases], settings: Pixel24Settings, plan: _Plan, device: torch.device) -> None:
        from diffusers import DDPMScheduler

        self.model, self.images, self.captions, self.s, self.plan, self.device = model, images, captions, settings, plan, device
        self.noise = DDPMScheduler(**model.config["scheduler"])
        self.params = model.parameters()
        self.opt = torch.optim.AdamW(self.params, lr=settings.learning_rate, weight_decay=0.0)
        self.ema = _Ema(self.params, settings.ema_decay) if settings.ema_decay > 0 else None
        self.gen = torch.Generator().manual_seed(settings.seed)
        self.alphas = self.noise.alphas_cumprod.to(device)

    def _order(self) -> torch.Tensor:
        """A shuffled index stream long enough for one epoch (repeats included)."""
        n = len(self.captions)
        need = self.plan.steps_per_epoch * self.plan.batch_size
        chunks = [torch.randperm(n, generator=self.gen) for _ in range(math.ceil(need / n))]
        return torch.cat(chunks)[:need]

    def _batch_conditions(self, idx: list[int]) -> list[Phrases]:
        out = []
        drop = (torch.rand(len(idx), generator=self.gen) < self.s.cond_dropout).tolist()
        for i, dropped in zip(idx, drop):
            out.append([] if dropped else _drop_phrases(self.captions[i], self.s.phrase_dropout, self.gen))
        return out

    def _loss(self, x0: torch.Tensor, conds: list[Phrases]) -> torch.Tensor:
        b = x0.shape[0]
        noise = torch.randn(x0.shape, generator=self.gen).to(self.device)
        t = torch.randint(0, self.noise.config.num_train_timesteps, (b,), generator=self.gen).to(self.device)
        noisy = self.noise.add_noise(x0, noise, t)
        pred = self.model.unet(noisy, t, class_labels=self.model.text(conds)).sample
        kind = self.noise.config.prediction_type
        target = noise if kind == "epsilon" else self.noise.get_velocity(x0, noise, t) if kind == "v_prediction" else x0
        return torch.nn.functional.mse_loss(pred, target)

    def run(self, ckpt_dir: Path, loss_log: LossLog, on_step: Callable[[dict[str, Any]], None] | None, should_stop: Callable[[], bool] | None,
            on_epoch: Callable[[int, str], None] | None = None) -> dict[str, Any]:
        plan, s = self.plan, self.s
        warmup = min(s.warmup_steps, plan.total_steps // 4)
        epochs: dict[int, str] = {}
        step, stopped, started = 0, False, time.perf_counter()
        self.model.unet.train()
        self.model.text.train()
        with loss_log as log:
            for epoch in range(1, plan.epochs + 1):
                if self.device.type == "cpu":
                    torch.set_num_threads(cpu_threads())  # other work may have started or ended
                order, losses = self._order(), []
                for k in range(plan.steps_per_epoch):
                    if should_stop is not None and should_stop():
                        stopped = True
                        break
                    lr = s.learning_rate * _lr_factor(step, plan.total_steps, warmup, s.lr_schedule)
                    for group in self.opt.param_groups:
                        group["lr"] = lr
                    idx = order[k * plan.batch_size : (k + 1) * plan.batch_size].tolist()
                    loss = self._loss(self.images[idx], self._batch_conditions(idx))
                    if not torch.isfinite(loss):
                        raise UserError(f"pixel24: loss became {loss.item()} at step {step + 1}; lower pixel24.learning_rate (now {s.learning_rate:g})")
                    self.opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(self.params, 1.0)
                    self.opt.step()
                    if self.ema is not None:
                        self.ema.update(step)
                    step += 1
                    losses.append(loss.item())
                    avg = float(np.mean(losses))
                    log.append(LossRow(step=step, epoch=epoch, loss=losses[-1], avg_loss=avg, lr=lr))
                    if on_step is not None:
                        elapsed = time.perf_counter() - started
                        on_step({"epoch": epoch, "epochs": plan.epochs, "step": step, "total_steps": plan.total_steps, "loss": losses[-1],
                                 "avg_loss": avg, "lr": lr, "images_per_s": step * plan.batch_size / max(elapsed, 1e-9)})
                if stopped:
                    break
                log.flush()
                self._save(ckpt_dir / checkpoint_name(epoch), epoch, step)
                epochs[epoch] = f"{CHECKPOINTS}/{checkpoint_name(epoch)}"
                if on_epoch is not None:
                    on_epoch(epoch, epochs[epoch])
        elapsed = time.perf_counter() - started
        return {"epochs": epochs, "steps": step, "stopped": stopped, "seconds": round(elapsed, 2),
                "images_per_s": round(step * plan.batch_size / max(elapsed, 1e-9), 1), "steps_per_epoch": plan.steps_per_epoch, "batch_size": plan.batch_size}

    def _save(self, path: Path, epoch: int, step: int) -> None:
        if self.ema is not None:
            self.ema.swap()
        try:
            save_checkpoint(self.model, path, epoch, step)
        finally:
            if self.ema is not None:
                self.ema.swap()


# ------------------------------------------------------------------ sampling


def encode_prompt(model: Pixel24Model, prompt: str) -> tuple[Phrases, list[str]]:
    """A prompt as phrases of word ids, plus the words the model never saw in training (reported, not hidden).

    Glued words are split first ("greybackground" -> "grey background"); words in the vocabulary are never split.
    """
    from .captions import normalise_caption

    return encode_caption(model.vocab_index, normalise_caption(prompt, model.vocab))


@torch.no_grad()
def sample(model: Pixel24Model, prompts: list[str], seeds: list[int], *, steps: int, guidance_scale: float, device: str | None = None) -> list[list[np.ndarray]]:
    """``images[prompt][seed]`` as (24, 24, 3) uint8: DDIM (eta 0) with classifier-free guidance.

    The starting noise comes from ``torch.Generator().manual_seed(seed)`` on the CPU and DDIM
    with eta 0 adds none, so a (prompt, seed) pair always gives the same image. Work is done
    in batches of exactly ``SAMPLE_BATCH`` (the last one padded), because CPU kernels round
    differently for different batch sizes: an image must not depend on what else was asked for.
    """
    from diffusers import DDIMScheduler

    if steps < 1:
        raise UserError(f"sample: steps must be at least 1, got {steps}")
    if len(prompts) == 0 or len(seeds) == 0:
        return [[] for _ in prompts]
    if device is not None:
        model.to(pick_device(device))
    model.eval()
    jobs = [(p, s) for p in range(len(prompts)) for s in range(len(seeds))]
    conds = [encode_prompt(model, prompt)[0] for prompt in prompts]
    out: list[list[np.ndarray]] = [[np.zeros(0, np.uint8)] * len(seeds) for _ in prompts]
    with _threads_for(model.device):
        for start in range(0, len(jobs), SAMPLE_BATCH):
            chunk = jobs[start : start + SAMPLE_BATCH]
            padded = chunk + [chunk[0]] * (SAMPLE_BATCH - len(chunk))
            noise = torch.stack([torch.randn(3, ART, ART, generator=torch.Generator().manual_seed(int(seeds[s]))) for _, s in padded])
            scheduler = DDIMScheduler(**model.config["scheduler"])
            images = _denoise(model, scheduler, noise.to(model.device), [conds[p] for p, _ in padded], steps, guidance_scale)
            for (p, s), img in zip(chunk, images):
                out[p][s] = img
    return out


def _denoise(model: Pixel24Model, scheduler: Any, x: torch.Tensor, conds: list[Phrases], steps: int, guidance: float) -> list[np.ndarray]:
    scheduler.set_timesteps(steps, device=model.device)
    guided = guidance != 1.0
    emb = model.text(conds + [[] for _ in conds]) if guided else model.text(conds)
    for t in scheduler.timesteps:
        inp = torch.cat([x, x]) if guided else x
        pred = model.unet(inp, t.expand(inp.shape[0]), class_labels=emb).sample
        if guided:
            cond, uncond = pred.chunk(2)
            pred = uncond + guidance * (cond - uncond)
        x = scheduler.step(pred, t, x, eta=0.0).prev_sample
    pixels = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return list(pixels)
