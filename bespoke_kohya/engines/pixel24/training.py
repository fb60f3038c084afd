"""Training pixel24: the optimisation loop, its resumable state, and the cached base model.

Masked-token training (MaskGIT): for each image draw a mask ratio r = cos(π/2·u),
u ~ U(0, 1), mask that share of its pixels at random, and minimise cross-entropy on the
masked pixels only. Horizontal flips (on by default) double the artist's data without
changing the style: Bespoke Punks face the viewer.

With a background head (version 3, ``pixel24.background_head``), each image's background colour
(its outer ring's commonest colour) is told to the U-Net and the head learns it from the caption;
``recolour_background`` repaints some training backgrounds in another image's colour, so any
background goes with any figure.

A run is sized in optimiser steps, not epochs: ``pixel24.steps`` is the same amount of
learning for 20 punks or 500; ``pixel24.epochs`` only says how many checkpoints the
report compares (one every steps/epochs steps).

The base model (``pixel24.base = "standin"``) is trained once on the 10,000-CryptoPunk
stand-in and cached under ``$BESPOKE_CACHE/pixel24-base/<key>/``, the key being a hash
of every setting that shapes it; fine-tunes start from it. Two processes that need the
same base wait for each other (a lock file) instead of training it twice.

Held-out validation: the images run.json lists in ``dataset.heldout`` (the same split
sd-scripts makes) are left out of training; after every epoch their loss, with the weights
that epoch's checkpoint saves, goes to ``logs/validation.csv``.

Resume: every checkpoint also writes ``checkpoints/pixel24-state.safetensors`` (live
weights, EMA, optimiser moments, the data-order generator) and ``pixel24-state.json``
(step, epoch, optimiser settings); ``train --resume`` continues from there exactly.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import UserError
from ...images import load_rgb
from ...atomic import staged_folder, write_atomic, write_json_atomic
from ...paths import ART, cache_dir
from .settings import Pixel24Preset, Pixel24Settings
from ...runfolder import CHECKPOINTS
from ...runfolder.records import LossLog, LossRow, ValidationRow, read_loss, read_validation, write_validation
from .model import (CONFIG_NAME, STEM, Pixel24Model, Pixel24Net, build_model, checkpoint_name, load_checkpoint, load_weights, model_config,
                    read_config, read_weights, save_checkpoint, write_config)
from . import files
from .palette import build_palette, to_indices
from .text import Phrases, build_vocab, encode_caption

STATE_NAME = f"{STEM}-state.safetensors"
STATE_JSON = f"{STEM}-state.json"
BASE_NAME = f"{STEM}-base.safetensors"
PIXELS = ART * ART
# Fewer images seen than this and a fine-tune has not learned the artist's shapes yet (measured: 600 steps × 32 gave mushy faces).
MIN_IMAGES_SEEN = 20_000
ESTIMATE_AFTER_STEPS = 20  # steps measured before the base model's time estimate is printed
# Held-out loss: the training loss's own mask ratios r = cos(π/2·u) at five evenly spaced u, and one fixed
# seed for which pixels are masked, so every epoch is scored on identical draws.
VALIDATION_RATIOS = tuple(math.cos(math.pi / 2 * (i + 0.5) / 5) for i in range(5))
VALIDATION_SEED = 0
VALIDATION_BATCH = 16  # images per forward pass, fixed so the rounding is the same every epoch

Progress = Callable[[dict[str, Any]], None]


# ------------------------------------------------------------------ data


@dataclass
class TrainingSet:
    images: np.ndarray  # (N, 24, 24, 3) uint8
    captions: list[str]
    names: list[str]
    warnings: list[str]


def load_training_set(folder: Path, default_caption: str, caption_extension: str = ".txt") -> TrainingSet:
    """Every PNG under ``folder`` (sorted), 24×24, with its caption; a missing caption uses the default (reported)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: dataset folder not found")
    paths = files.training_pngs(folder)  # regular files only: a link or FIFO in a run from elsewhere is refused, never read
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
            captions.append(files.read_caption(caption_path))
        else:
            captions.append(default_caption)
            warnings.append(f"{path.name}: no {caption_extension} caption; trained with the default caption")
    return TrainingSet(images=np.stack(arrays), captions=captions, names=[str(p.relative_to(folder)) for p in paths], warnings=warnings)


def hold_out(data: TrainingSet, files: list[str], folder: Path) -> tuple[TrainingSet, TrainingSet]:
    """(training, held-out) sets: ``files`` (run.json dataset.heldout, names inside ``folder``) go to the second."""
    missing = sorted(set(files) - set(data.names))
    if missing:
        raise UserError(f"run.json dataset.heldout names {', '.join(missing[:3])}, which {folder} does not hold; the run's data/ was changed, train a new run")
    wanted = set(files)

    def part(keep: bool) -> TrainingSet:
        rows = [i for i, name in enumerate(data.names) if (name in wanted) == keep]
        return TrainingSet(images=data.images[rows], captions=[data.captions[i] for i in rows], names=[data.names[i] for i in rows], warnings=[])

    training = part(False)
    training.warnings = data.warnings
    return training, part(True)


def _drop_phrases(phrases: Phrases, rate: float, generator: torch.Generator) -> Phrases:
    """Each phrase kept with probability 1 - rate, so short prompts look like training captions."""
    if rate <= 0 or not phrases:
        return phrases
    keep = torch.rand(len(phrases), generator=generator) >= rate
    return [p for p, k in zip(phrases, keep.tolist()) if k]


# ------------------------------------------------------------------ the loop


@dataclass(frozen=True)
class Schedule:
    steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    ema_decay: float
    horizon: int = 0  # the steps the cosine spans (0: steps); a longer one stops the run partway down it


def _lr(schedule: Schedule, step: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak at ``horizon`` (a quieter end gives cleaner samples)."""
    span = schedule.horizon or schedule.steps
    warmup = min(schedule.warmup_steps, span // 4)
    if warmup and step < warmup:
        return schedule.learning_rate * (step + 1) / warmup
    progress = (step - warmup) / max(1, span - warmup)
    return schedule.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _mask(ratio: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, 24, 24) bool: for image i, ceil(ratio[i]·576) of its pixels chosen at random."""
    rank = torch.rand(len(ratio), PIXELS, generator=generator).argsort(dim=1).argsort(dim=1)
    return (rank < (ratio * PIXELS).ceil()[:, None]).view(-1, ART, ART)


def background_indices(indices: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """((N,) each image's background colour: its outer ring's commonest palette index, (N, 24, 24) bool: the pixels of
    that colour connected to the ring), as :func:`bespoke_kohya.metrics.background_mask` finds them."""
    from ...metrics import background_mask

    if not len(indices):
        return np.zeros(0, np.int64), np.zeros((0, ART, ART), bool)
    masks = np.stack([background_mask(palette[im]) for im in indices])
    ring = np.concatenate([indices[:, 0], indices[:, -1], indices[:, 1:-1, 0], indices[:, 1:-1, -1]], axis=1)
    # the ring's commonest index, ties to the lowest (as metrics' border mode, which sorts colours)
    colours = np.array([np.bincount(r).argmax() for r in ring], np.int64)
    return colours, masks


def _masked_loss(model: Pixel24Model, x0: torch.Tensor, masked: torch.Tensor, ratio: torch.Tensor, conds: list[Phrases], label_smoothing: float,
                 background: torch.Tensor | None = None, head_weight: torch.Tensor | None = None, masked_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to minimise, its pixel part): cross-entropy of the model's guesses for the masked pixels of ``x0`` (palette
    indices) given the rest, the captions and (with a background head) each image's ``background`` colour; plus, weighted
    per image by ``head_weight``, the head's cross-entropy on that colour. ``masked_only`` (settings.fast_step): the logits
    of the masked pixels alone and :func:`smoothed_cross_entropy`, the same loss rounded another way.

    Always the eager network, even on a model compiled for drawing: torch 2.13's inductor computes wrong gradients for
    this U-Net (134 of its 207 parameters get none, 0.48-0.85 relative error; aot_eager is exact), and a model trained
    through it drew flat, unreal punks (benchmarks/README.md, "Why e3 failed"; benchmarks/pixel24_compile_grads.py)."""
    dev, k = model.device, len(model.palette)
    x0, masked, ratio = x0.to(dev), masked.to(dev), ratio.to(dev)
    text = model.net.text(conds)
    if background is not None:
        background = background.to(dev)
    inputs, conditions = torch.where(masked, torch.full_like(x0, k), x0), model.net.condition(text, background, model.lab)
    if masked_only:
        logits = model.net.logits_at(inputs, ratio, conditions, model.lab, masked)
        pixels = smoothed_cross_entropy(logits, x0[masked], label_smoothing)
    else:
        logits = model.logits(inputs, ratio, conditions, compiled=False).permute(0, 2, 3, 1)[masked]
        pixels = F.cross_entropy(logits, x0[masked], label_smoothing=label_smoothing)
    if head_weight is None or background is None or not model.net.has_background:
        return pixels, pixels
    head = F.cross_entropy(model.net.background_logits(text, model.lab), background, reduction="none")
    return pixels + (head * head_weight.to(dev)).mean(), pixels


class _SmoothedCrossEntropy(torch.autograd.Function):
    """F.cross_entropy(logits, target, label_smoothing=eps), the mean over rows, with its gradient written out:
    softmax − (1 − eps)·onehot − eps/K, from the saved logsumexp. torch's own backward of the smoothed loss took three
    times as long as this on the training step's (M, 256) logits (a twentieth of the step)."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
        lse = torch.logsumexp(logits, dim=1, keepdim=True)
        ctx.save_for_backward(logits, lse, target)
        ctx.eps = eps
        # (1 − eps)·(lse − x_target) + eps·(lse − mean_k x_k): the nll and the smoothing term of torch's definition
        return (lse[:, 0] - (1 - eps) * logits.gather(1, target[:, None])[:, 0] - eps * logits.mean(dim=1)).mean()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logits, lse, target = ctx.saved_tensors
        eps, (rows, k) = ctx.eps, logits.shape
        out = (logits - lse).exp_().sub_(eps / k)
        out.scatter_add_(1, target[:, None], torch.full((rows, 1), -(1 - eps), dtype=out.dtype, device=out.device))
        return out.mul_(grad / rows), None, None


def smoothed_cross_entropy(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """The mean label-smoothed cross-entropy of ``logits`` (M, K) against ``target`` (M,): torch's loss, a faster backward."""
    return _SmoothedCrossEntropy.apply(logits, target, label_smoothing)


@torch.no_grad()
def heldout_loss(model: Pixel24Model, indices: np.ndarray, captions: list[Phrases], label_smoothing: float) -> float:
    """The training loss on held-out images: full captions, no flips, the VALIDATION_RATIOS with masks from VALIDATION_SEED.

    The mean over the ratios of the per-pixel loss, so the curve sits on the training loss's scale.
    """
    gen = torch.Generator().manual_seed(VALIDATION_SEED)
    x0 = torch.from_numpy(indices).long()
    background = torch.from_numpy(background_indices(indices, model.palette)[0]) if model.net.has_background else None
    was_training = model.net.training
    model.net.eval()
    try:
        per_ratio = []
        for r in VALIDATION_RATIOS:
            ratio = torch.full((len(x0),), r)
            masked = _mask(ratio, gen)
            total = 0.0
            for i in range(0, len(x0), VALIDATION_BATCH):
                part = slice(i, i + VALIDATION_BATCH)
                # Every image masks the same number of pixels, so a batch's mean weighs by its image count.
                bg = None if background is None else background[part]
                total += _masked_loss(model, x0[part], masked[part], ratio[part], captions[part], label_smoothing, bg)[1].item() * len(x0[part])
            per_ratio.append(total / len(x0))
    finally:
        model.net.train(was_training)
    return float(np.mean(per_ratio))


class Loop:
    """Optimiser, EMA and data-order generator for one model; ``run`` steps it, ``state``/``restore`` make it resumable."""

    def __init__(self, model: Pixel24Model, indices: np.ndarray, captions: list[Phrases], settings: Pixel24Settings, schedule: Schedule) -> None:
        self.model, self.s, self.schedule = model, settings, schedule
        self.indices = torch.from_numpy(indices).long()
        self.captions = captions
        self.params = [p for p in model.net.parameters() if p.requires_grad]
        # fused: one kernel for all 200-odd tensors, where the default loops over them in Python (a twentieth of a step)
        self.opt = torch.optim.AdamW(self.params, lr=schedule.learning_rate, weight_decay=0.01, betas=(0.9, 0.99), fused=settings.fast_step or None)
        self.ema = [p.detach().clone() for p in self.params] if schedule.ema_decay > 0 else None
        self.gen = torch.Generator().manual_seed(settings.seed)
        self.step = 0
        self._order: list[int] = []
        self.background: torch.Tensor | None = None  # (N,) each image's background colour, with a background head
        self.background_mask: torch.Tensor | None = None  # (N, 24, 24) its background pixels
        if model.net.has_background:
            colours, masks = background_indices(indices, model.palette)
            self.background, self.background_mask = torch.from_numpy(colours), torch.from_numpy(masks)

    def _batch(self) -> list[int]:
        while len(self._order) < self.schedule.batch_size:
            self._order += torch.randperm(len(self.indices), generator=self.gen).tolist()
        batch, self._order = self._order[: self.schedule.batch_size], self._order[self.schedule.batch_size :]
        return batch

    def _loss(self, batch: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to minimise, its pixel part) of one batch; the random draws of a version-2 model are exactly version 2's."""
        s = self.s
        x0 = self.indices[batch]
        flip = torch.rand(len(batch), generator=self.gen) < 0.5 if s.flip else None
        if flip is not None:
            x0 = torch.where(flip[:, None, None], x0.flip(-1), x0)
        background = head_weight = None
        if self.background is not None:
            x0, background, head_weight = self._backgrounds(batch, x0, flip)
        dropped = (torch.rand(len(batch), generator=self.gen) < s.cond_dropout).tolist()
        conds = [[] if d else _drop_phrases(self.captions[i], s.phrase_dropout, self.gen) for i, d in zip(batch, dropped)]
        ratio = torch.cos(torch.rand(len(batch), generator=self.gen) * math.pi / 2).clamp(min=1.0 / PIXELS)
        return _masked_loss(self.model, x0, _mask(ratio, self.gen), ratio, conds, s.label_smoothing, background, head_weight, masked_only=s.fast_step)

    def _backgrounds(self, batch: list[int], x0: torch.Tensor, flip: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images, their background colours, the head's weight per image) for a batch, with ``recolour_background`` of the
        backgrounds repainted in another training image's colour; the head is not taught those pairs."""
        assert self.background is not None and self.background_mask is not None
        s = self.s
        background, region = self.background[batch], self.background_mask[batch]
        head_weight = torch.full((len(batch),), s.background_loss_weight)
        if flip is not None:
            region = torch.where(flip[:, None, None], region.flip(-1), region)
        if s.recolour_background > 0:
            repaint = torch.rand(len(batch), generator=self.gen) < s.recolour_background
            other = self.background[torch.randint(len(self.background), (len(batch),), generator=self.gen)]
            background = torch.where(repaint, other, background)
            x0 = torch.where(repaint[:, None, None] & region, background[:, None, None], x0)
            head_weight = torch.where(repaint, torch.zeros_like(head_weight), head_weight)
        return x0, background, head_weight

    def run(self, until: int, on_step: Callable[[int, float, float], None] | None = None, should_stop: Callable[[], bool] | None = None) -> bool:
        """Step up to ``until``; False when ``should_stop`` ended it early."""
        self.model.net.train()
        while self.step < until:
            if should_stop is not None and should_stop():
                return False
            lr = _lr(self.schedule, self.step)
            for group in self.opt.param_groups:
                group["lr"] = lr
            loss, pixels = self._loss(self._batch())
            if not torch.isfinite(loss):
                raise UserError(f"pixel24: loss became {loss.item()} at step {self.step + 1}; lower pixel24.learning_rate (now {self.schedule.learning_rate:g})")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.opt.step()
            if self.ema is not None:
                decay = min(self.schedule.ema_decay, (1 + self.step) / (10 + self.step))
                with torch.no_grad():
                    torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1 - decay)
            self.step += 1
            if on_step is not None:
                on_step(self.step, pixels.item(), lr)  # the pixels' loss: on the held-out loss's scale (and version 2's)
        return True

    @contextmanager
    def averaged(self) -> Iterator[None]:
        """``with loop.averaged():`` the model holds the EMA weights (for saving a checkpoint), the live ones after."""
        self._swap_ema()
        try:
            yield
        finally:
            self._swap_ema()

    @torch.no_grad()
    def _swap_ema(self) -> None:
        for p, e in zip(self.params, self.ema or []):
            tmp = p.detach().clone()
            p.copy_(e)
            e.copy_(tmp)

    # -- resumable state: tensors in safetensors, the rest in JSON
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"net.{k}": v for k, v in self.model.state_dict().items()}
        if self.ema is not None:
            tensors.update({f"ema.{i}": e.detach().cpu().contiguous() for i, e in enumerate(self.ema)})
        opt = self.opt.state_dict()
        for i, st in opt["state"].items():
            for name, value in st.items():
                tensors[f"opt.{i}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
        tensors["rng"] = self.gen.get_state()
        tensors["order"] = torch.tensor(self._order, dtype=torch.long)
        meta = {"step": self.step, "param_groups": opt["param_groups"]}
        return tensors, meta

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: Path) -> None:
        load_weights(self.model, {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}, path)
        if self.ema is not None:
            self.ema = [tensors[f"ema.{i}"].to(self.model.device) for i in range(len(self.params))]
        opt_state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("opt."):
                _, i, name = key.split(".", 2)
                opt_state.setdefault(int(i), {})[name] = value
        self.opt.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
        self.gen.set_state(tensors["rng"])
        self._order = tensors["order"].tolist()
        self.step = int(meta["step"])


# ------------------------------------------------------------------ base model


def base_key(settings: Pixel24Settings) -> str:
    """A hash of every setting that shapes the base model (architecture, palette size, base schedule, seed)."""
    from .standin import DEFAULT_SEED
    from .model import FORMAT_VERSION

    shaping = {k: getattr(settings, k) for k in ("block_out_channels", "layers_per_block", "colour_dim", "feature_dim", "text_dim", "palette_size",
                                                  "base_steps", "base_batch_size", "base_learning_rate", "seed", "cond_dropout", "phrase_dropout", "flip", "label_smoothing")}
    # Version 3's settings join the key only when they shape the model, so a version-2 base keeps its key (and its cache).
    extra: dict[str, Any] = {}
    if settings.attention_levels != 1:
        extra["attention_levels"] = settings.attention_levels
    if settings.background_head:
        extra.update(background_head=True, background_loss_weight=settings.background_loss_weight, recolour_background=settings.recolour_background)
    if settings.fast_step:  # the same loss, rounded another way: other weights, so another cache entry
        extra["fast_step"] = True
    shaping.update(extra, format=FORMAT_VERSION if extra else 2, standin_seed=DEFAULT_SEED)
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:12]


def base_dir(settings: Pixel24Settings) -> Path:
    return cache_dir() / "pixel24-base" / base_key(settings)


def _resolve_base_path(value: str) -> Path:
    """A checkpoint file, or a run folder (its last numbered checkpoint), or a cached base folder."""
    path = Path(value).expanduser()
    if path.is_dir():
        if (path / BASE_NAME).is_file():
            return path / BASE_NAME
        folder = path / CHECKPOINTS if (path / CHECKPOINTS).is_dir() else path
        found = sorted(folder.glob(f"{STEM}-[0-9][0-9][0-9][0-9][0-9][0-9].safetensors"))
        if not found:
            raise UserError(f"pixel24.base = {value!r}: no {STEM}-NNNNNN.safetensors checkpoint in {folder}; give a pixel24 checkpoint, a pixel24 run folder, \"standin\" or \"none\"")
        return found[-1]
    if not path.is_file():
        raise UserError(f"pixel24.base = {value!r}: not found; give a pixel24 checkpoint (.safetensors), a pixel24 run folder, \"standin\" or \"none\"")
    return path


def ensure_base(settings: Pixel24Settings, on_base: Progress | None = None, should_stop: Callable[[], bool] | None = None) -> Path:
    """The cached stand-in base model's checkpoint, trained first if this machine has none for these settings."""
    target = base_dir(settings)
    if (target / BASE_NAME).is_file():
        return target / BASE_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process training the same base: wait for it, then reuse its result
        if (target / BASE_NAME).is_file():
            return target / BASE_NAME
        with staged_folder(target, "keep") as staging:
            if not _train_base(settings, staging, on_base, should_stop):
                raise KeyboardInterrupt
    return target / BASE_NAME


def _train_base(settings: Pixel24Settings, out: Path, on_base: Progress | None, should_stop: Callable[[], bool] | None) -> bool:
    from .standin import ensure_standin

    data = load_training_set(ensure_standin(), "punk")
    vocab = build_vocab(data.captions, settings.vocab_min_count)
    palette = build_palette(data.images, settings.palette_size, seed=settings.seed)
    torch.manual_seed(settings.seed)
    model = build_model(model_config(settings, vocab, palette))
    schedule = Schedule(settings.base_steps, settings.base_batch_size, settings.base_learning_rate, settings.warmup_steps, settings.base_ema_decay)
    loop = Loop(model, to_indices(data.images, palette), [encode_caption(model.vocab_index, c)[0] for c in data.captions], settings, schedule)
    started, losses = time.perf_counter(), []

    def report(step: int, loss: float, lr: float) -> None:
        losses.append(loss)
        if on_base is None:
            return
        elapsed = time.perf_counter() - started
        speed = step * schedule.batch_size / max(elapsed, 1e-9)
        if step == ESTIMATE_AFTER_STEPS:  # an estimate from this machine's measured speed, not a guess
            minutes = (schedule.steps - step) * schedule.batch_size / speed / 60
            on_base({"note": f"pixel24 base model: training once on the {len(data.names):,} stand-in CryptoPunks ({schedule.steps} steps, "
                             f"about {minutes:.0f} more min at {speed:.0f} img/s); cached in {out.parent} for every later fine-tune"})
        on_base({"epoch": "base", "step": step, "total_steps": schedule.steps, "loss": loss, "avg_loss": float(np.mean(losses[-100:])), "lr": lr,
                 "images_per_s": speed})

    if not loop.run(schedule.steps, report, should_stop):
        return False
    with loop.averaged():
        save_checkpoint(model, out / BASE_NAME, 0, loop.step)
    model.config["base"] = {"trained_on": "cryptopunks-standin", "images": len(data.names), "steps": loop.step, "seconds": round(time.perf_counter() - started, 1)}
    write_config(out / CONFIG_NAME, model.config)
    return True


def _start_model(settings: Pixel24Settings, data: TrainingSet, on_base: Progress | None, should_stop: Callable[[], bool] | None) -> tuple[Pixel24Model, list[str]]:
    """The model a fine-tune starts from: the base (vocabulary extended, palette switched to the artist's) or a fresh one."""
    notes: list[str] = []
    palette = build_palette(data.images, settings.palette_size, seed=settings.seed)
    if settings.base == "none":
        torch.manual_seed(settings.seed)
        vocab = build_vocab(data.captions, settings.vocab_min_count)
        return build_model(model_config(settings, vocab, palette)), notes
    source = ensure_base(settings, on_base, should_stop) if settings.base == "standin" else _resolve_base_path(settings.base)
    base = load_checkpoint(source, device="cpu")
    ours, theirs = model_config(settings, [], palette)["unet"], base.config["unet"]
    for key in ("block_out_channels", "layers_per_block", "in_channels", "out_channels", "down_block_types"):
        if ours[key] != theirs[key]:
            raise UserError(f"pixel24.base {source}: the base has {key} = {theirs[key]!r} but the preset says {ours[key]!r}; use the base's settings or pixel24.base = \"none\"")
    vocab = build_vocab(data.captions, settings.vocab_min_count, base=base.vocab)
    if len(vocab) > len(base.vocab):
        base.net.text.resize_vocab(len(vocab))
        notes.append(f"base: {len(vocab) - len(base.vocab)} new caption words added to its {len(base.vocab)}-word vocabulary")
    config = model_config(settings, vocab, palette)
    config["base"] = str(source)
    net = base.net
    if settings.background_head != net.has_background:
        net = _with_head(base.net, config, len(vocab), settings)
        notes.append(f"base: {'a new background head added' if settings.background_head else 'its background head left out'}")
    model = Pixel24Model(net=net, vocab=vocab, palette=palette, config=config, device=torch.device("cpu"))
    return model, notes


def _with_head(base: Pixel24Net, config: dict[str, Any], vocab_size: int, settings: Pixel24Settings) -> Pixel24Net:
    """A network for ``config`` holding ``base``'s weights: a base without a background head gets a new one (from
    the seed), a base with one loses it."""
    torch.manual_seed(settings.seed)
    net = Pixel24Net(config, vocab_size)
    missing, unexpected = net.load_state_dict(base.state_dict(), strict=False)
    if any(not key.startswith("background_") for key in [*missing, *unexpected]):
        raise UserError(f"pixel24.base: its weights do not fit this preset's model beside the background head ({[*missing, *unexpected][:3]}); use pixel24.base = \"none\"")
    return net


# ------------------------------------------------------------------ a run


def _epoch_ends(steps: int, epochs: int) -> list[int]:
    """The step at which each epoch's checkpoint is written (evenly spread, the last at ``steps``; at most one per step)."""
    epochs = min(epochs, steps)
    return [round(steps * e / epochs) for e in range(1, epochs + 1)]


def short_run_warning(settings: Pixel24Settings) -> str | None:
    seen = settings.steps * settings.batch_size
    if seen >= MIN_IMAGES_SEEN:
        return None
    need = math.ceil(MIN_IMAGES_SEEN / settings.batch_size)
    return f"pixel24.steps = {settings.steps} × batch {settings.batch_size} shows the model only {seen:,} images; expect noise-like samples. Set pixel24.steps to at least {need} for a usable model"


def _write_state(loop: Loop, ckpt_dir: Path, epoch: int) -> None:
    tensors, meta = loop.state()
    meta["epoch"] = epoch
    write_atomic(ckpt_dir / STATE_NAME, lambda p: files.save_tensors(tensors, p))
    write_json_atomic(ckpt_dir / STATE_JSON, meta)


def _read_state(ckpt_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    return files.read_state(ckpt_dir, STATE_JSON, STATE_NAME, read_weights)  # typed and bounded; a link or FIFO is refused


def train(
    preset: Pixel24Preset,
    dataset_dir: Path,
    run_dir: Path,
    *,
    device: str | None = None,
    on_step: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_epoch: Callable[[int, str], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    heldout: list[str] | None = None,
) -> dict[str, Any]:
    """Train (or resume) pixel24 on ``dataset_dir``; one checkpoint per epoch under ``run_dir/checkpoints``.

    ``heldout``: image files in ``dataset_dir`` not to train on; their loss is written to logs/validation.csv each epoch.
    """
    from ...devices import resolve_device

    if preset.pixel24 is None:
        raise UserError(f"preset {preset.name}: engine is {preset.engine!r}; pixel24 training needs a pixel24 preset")
    settings = preset.pixel24
    run_dir, ckpt_dir = Path(run_dir), Path(run_dir) / CHECKPOINTS
    dev = torch.device(resolve_device(device)[0])
    note = on_note or (lambda text: None)
    data = load_training_set(Path(dataset_dir), preset.dataset.default_caption, preset.dataset.caption_extension)
    data, held = hold_out(data, heldout or [], Path(dataset_dir))
    if held.names:
        note(f"validation: {len(held.names)} of {len(data.names) + len(held.names)} images held out (dataset.validation_split), "
             f"not trained on; their loss is measured after every epoch → logs/validation.csv")
    if warning := short_run_warning(settings):
        note(warning)
    resumed = _read_state(ckpt_dir)
    if resumed is not None:
        model, notes = build_model(read_config(ckpt_dir / CONFIG_NAME)), []  # the checked reader: a damaged config is one line
    else:
        model, notes = _start_model(settings, data, on_step, should_stop)
        model.config["dataset"] = {"path": str(Path(dataset_dir).resolve()), "images": len(data.names), "heldout": len(held.names)}
        write_config(ckpt_dir / CONFIG_NAME, model.config)
    model.to(dev)
    schedule = Schedule(settings.steps, settings.batch_size, settings.learning_rate, settings.warmup_steps, settings.ema_decay, settings.schedule_steps)
    encoded = [encode_caption(model.vocab_index, c)[0] for c in data.captions]
    loop = Loop(model, to_indices(data.images, model.palette), encoded, settings, schedule)
    held_indices, held_captions = to_indices(held.images, model.palette), [encode_caption(model.vocab_index, c)[0] for c in held.captions]
    previous: list[LossRow] = []
    validation: list[ValidationRow] = []
    if resumed is not None:
        files.restore(loop, *resumed, ckpt_dir / STATE_NAME)  # a state that does not fit this run is one line
        previous = [row for row in read_loss(run_dir) if row.step <= loop.step]
        validation = [row for row in read_validation(run_dir) if row.step is not None and row.step <= loop.step]
        note(f"resuming at step {loop.step}/{settings.steps} (epoch {resumed[1].get('epoch')} of {settings.epochs})")
    ends = _epoch_ends(settings.steps, settings.epochs)
    epochs: dict[int, str] = {}
    started, start_step, stopped = time.perf_counter(), loop.step, False
    with LossLog(run_dir) as log:
        for row in previous:
            log.append(row)
        for epoch, end in enumerate(ends, start=1):
            if end <= loop.step:
                continue
            losses: list[float] = []

            def step_done(step: int, loss: float, lr: float, epoch: int = epoch) -> None:
                losses.append(loss)
                log.append(LossRow(step=step, epoch=epoch, loss=loss, avg_loss=float(np.mean(losses)), lr=lr))
                if on_step is not None:
                    elapsed = time.perf_counter() - started
                    on_step({"epoch": epoch, "epochs": len(ends), "step": step, "total_steps": settings.steps, "loss": loss,
                             "avg_loss": float(np.mean(losses)), "lr": lr, "images_per_s": (step - start_step) * settings.batch_size / max(elapsed, 1e-9)})

            if not loop.run(end, step_done, should_stop):
                stopped = True
                break
            log.flush()
            with loop.averaged():
                save_checkpoint(model, ckpt_dir / checkpoint_name(epoch), epoch, loop.step)
                if held.names:  # with the weights just saved, before the resume state: a saved state always has its row
                    validation.append(ValidationRow(epoch=epoch, step=loop.step, loss=heldout_loss(model, held_indices, held_captions, settings.label_smoothing)))
                    write_validation(run_dir, validation)
            epochs[epoch] = f"{CHECKPOINTS}/{checkpoint_name(epoch)}"
            if on_epoch is not None:  # listed before the resume state is: a state never runs ahead of run.json (a Ctrl-C between the two retrains the epoch)
                on_epoch(epoch, epochs[epoch])
            _write_state(loop, ckpt_dir, epoch)
    elapsed = time.perf_counter() - started
    return {"epochs": epochs, "steps": loop.step, "stopped": stopped, "seconds": round(elapsed, 2), "batch_size": settings.batch_size,
            "images_per_s": round((loop.step - start_step) * settings.batch_size / max(elapsed, 1e-9), 1),
            "images": len(data.names), "heldout": len(held.names), "vocab_size": len(model.vocab), "palette_size": len(model.palette), "device": str(dev), "warnings": data.warnings + notes}
