"""Offline stand-ins for hub downloads: a random-weight SD1.5 base and the CLIP tokenizer.

sd-scripts' SD1.x code hard-codes the real UNet (320-1280 channels, cross-attention 768),
so a smoke run through `train_network.py` needs the full architecture; random weights
are enough to prove that the pipeline trains, saves and loads. The CLIP BPE vocabulary
comes from a local file (the one `open-clip-torch` ships), so nothing touches a hub.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError

CLIP_BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
# How many merges of that file CLIP uses: 49152 tokens - 256 bytes - 2 specials.
CLIP_MERGES = 49152 - 256 - 2
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MODEL_MAX_LENGTH = 77
# sd-scripts looks for `<tokenizer_cache_dir>/<hub id with / -> _>` (library/strategy_base.py);
# SDXL's second tokenizer (OpenCLIP bigG) uses the same BPE vocabulary, and sd-scripts sets
# its pad id to 0 itself (library/strategy_sdxl.py), so one vocabulary serves both.
TOKENIZER_IDS = ("openai/clip-vit-large-patch14", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k")
MARKER = "bespoke-smoke.json"
FORMAT_VERSION = 1


# ---------------------------------------------------------------- CLIP tokenizer


def clip_bpe_path() -> Path:
    """The CLIP BPE merges file: `$BESPOKE_CLIP_BPE`, else the copy inside open-clip-torch.

    The package is located through its metadata, not imported: importing open_clip would
    pull in torchvision and timm, which the tokenizer does not need.
    """
    env = os.environ.get("BESPOKE_CLIP_BPE", "").strip()
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise UserError(f"BESPOKE_CLIP_BPE={env}: no such file; point it at {CLIP_BPE_NAME} (it ships inside the open-clip-torch package)")
        return path
    try:
        dist = importlib.metadata.distribution("open_clip_torch")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        path = Path(str(dist.locate_file(f"open_clip/{CLIP_BPE_NAME}")))
        if path.is_file():
            return path
    raise UserError(f"the CLIP vocabulary {CLIP_BPE_NAME} was not found: pip install --no-deps open-clip-torch (only its vocabulary file is used), or set BESPOKE_CLIP_BPE to a copy of the file")


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character table (as in OpenAI's and HF's CLIP)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


@lru_cache(maxsize=4)
def clip_vocab_and_merges(bpe_path: Path) -> tuple[dict[str, int], list[str]]:
    """(vocab, merges) in the exact order CLIP assigns ids: bytes, bytes+</w>, merges, specials."""
    with gzip.open(bpe_path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = lines[1 : CLIP_MERGES + 1]  # line 0 is a version header
    if len(merges) != CLIP_MERGES or any(len(m.split()) != 2 for m in merges):
        raise UserError(f"{bpe_path}: not a CLIP BPE file (expected {CLIP_MERGES} merges of two symbols each); use the {CLIP_BPE_NAME} of open-clip-torch")
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def write_clip_tokenizer(out_dir: Path, bpe_path: Path | None = None) -> Path:
    """Write a `CLIPTokenizer` folder (vocab.json, merges.txt, configs) into `out_dir`.

    Only the files both transformers 4.x (sd-scripts' slow tokenizer) and 5.x read, so the
    folder loads in either virtual environment.
    """
    vocab, merges = clip_vocab_and_merges(bpe_path or clip_bpe_path())
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_text(out_dir / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    _write_text(out_dir / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": MODEL_MAX_LENGTH, "do_lower_case": True,
              "errors": "replace", "add_prefix_space": False, **special}
    _write_text(out_dir / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
    _write_text(out_dir / "special_tokens_map.json", json.dumps(special, indent=2) + "\n")
    return out_dir


def write_tokenizer_cache(cache_dir: Path, bpe_path: Path | None = None) -> list[Path]:
    """Fill an sd-scripts `--tokenizer_cache_dir` so SD1.x and SDXL runs need no hub.

    Existing entries (for example real ones sd-scripts saved online) are left alone.
    """
    written = []
    for model_id in TOKENIZER_IDS:
        entry = cache_dir / model_id.replace("/", "_")
        if not (entry / "vocab.json").is_file():
            _atomic_dir(entry, lambda tmp: write_clip_tokenizer(tmp, bpe_path))
        written.append(entry)
    return written


# ---------------------------------------------------------------- random SD1.5


def sd15_configs() -> dict[str, dict[str, Any]]:
    """The SD1.5 (runwayml/stable-diffusion-v1-5) component configs, as in its model folder."""
    return {
        "unet": {
            "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
            "block_out_channels": (320, 640, 1280, 1280), "attention_head_dim": 8, "cross_attention_dim": 768,
            "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5, "flip_sin_to_cos": True, "freq_shift": 0,
            "downsample_padding": 1, "mid_block_scale_factor": 1, "center_input_sample": False,
        },
        "vae": {
            "sample_size": 512, "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
            "block_out_channels": (128, 256, 512, 512), "norm_num_groups": 32, "act_fn": "silu",
            "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
        },
        # CLIP ViT-L/14 text tower; bos/eos/pad ids are the legacy values of the real config
        # (eos_token_id 2 makes transformers pool at the argmax id, as the real model does).
        "text_encoder": {
            "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
            "num_attention_heads": 12, "max_position_embeddings": MODEL_MAX_LENGTH, "hidden_act": "quick_gelu",
            "projection_dim": 768, "layer_norm_eps": 1e-5, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
        },
        "scheduler": {
            "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "clip_sample": False,
        },
    }


def _atomic_dir(final: Path, build) -> Path:
    """Build a folder next to `final` and rename it into place, so a crash leaves nothing half-made."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
        if final.exists():  # a concurrent builder won; theirs is as good as ours
            shutil.rmtree(tmp)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _marker(seed: int) -> dict[str, Any]:
    return {"kind": "random-sd15", "seed": seed, "format": FORMAT_VERSION}


def build_random_sd15(out_dir: Path, seed: int = 0) -> Path:
    """Write a diffusers-format SD1.5 folder with the full architecture and random weights.

    The tokenizer is built from the local CLIP vocabulary. Weights are float32 safetensors
    (~4.3 GB; the real SD1.5 layout), loadable by our diffusers and by sd-scripts' 0.32.1.
    Cached: when `out_dir` already holds a model built with this seed it is returned at once.
    """
    marker = out_dir / MARKER
    if marker.is_file():
        try:
            found = json.loads(marker.read_text(encoding="utf-8"))
        except ValueError:
            found = None
        if found == _marker(seed):
            return out_dir
        raise UserError(f"{out_dir} holds another model ({found}); delete it or choose another folder")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir} exists and is not a random SD1.5 built here; choose an empty or new folder")
    if out_dir.exists():
        out_dir.rmdir()
    bpe = clip_bpe_path()  # fail on the missing vocabulary before minutes of initialisation
    return _atomic_dir(out_dir, lambda tmp: _build_sd15(tmp, seed, bpe))


def _build_sd15(out_dir: Path, seed: int, bpe: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    cfg = sd15_configs()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**cfg["unet"])
    vae = AutoencoderKL(**cfg["vae"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
    tok_dir = write_clip_tokenizer(out_dir / "tokenizer", bpe)
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=PNDMScheduler.from_config(cfg["scheduler"]), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(out_dir), safe_serialization=True)
    # save_pretrained rewrote tokenizer/ in transformers 5's format; put back the files
    # transformers 4.x (sd-scripts) reads, so both environments load the same vocabulary.
    shutil.rmtree(out_dir / "tokenizer")
    write_clip_tokenizer(out_dir / "tokenizer", bpe)
    legacy_text_encoder_keys(out_dir / "text_encoder" / "model.safetensors")
    for path in out_dir.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    _write_text(out_dir / MARKER, json.dumps(_marker(seed)) + "\n")


def legacy_text_encoder_keys(path: Path) -> int:
    """Prefix CLIPTextModel weights with `text_model.`, the layout of the real SD1.5 files.

    transformers 5 saves them without the prefix; transformers 4.x (sd-scripts' venv) then
    finds none of its keys and silently re-initialises the whole text encoder. transformers
    5 reads the prefixed layout too. Returns how many keys were renamed.
    """
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    renamed = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in tensors.items()}
    count = sum(1 for k in tensors if not k.startswith("text_model."))
    if count:
        tmp = path.with_name(path.name + ".tmp")
        save_file(renamed, str(tmp), metadata={"format": "pt"})
        tmp.replace(path)
    return count


# ---------------------------------------------------------------- `bespoke-kohya smoke`

SMOKE_PRESET = "sd15_576"
SMOKE_IMAGES = 8
SMOKE_RESOLUTION = 64  # 8x8 latents: the smallest size sd-scripts' SD1.x path handles
SMOKE_EPOCHS = 2
# Small and fast, and everything else the preset's own: the smoke run trains through the
# same render/launch/record code as `bespoke-kohya train`. Batches of 4 give 2 steps an
# epoch (at 64 px a step costs about the same for 1 image or 4: the weights dominate), and
# the higher learning rate moves the LoRA far enough in 4 steps to change a sample visibly.
SMOKE_OVERRIDES = [
    f"resolution={SMOKE_RESOLUTION}", "allow_uneven_pixels=true", f"max_train_epochs={SMOKE_EPOCHS}", "train_batch_size=4",
    "network_dim=4", "network_alpha=2.0", "num_repeats=1", "cache_latents=false", "mixed_precision=no",
    "save_state=false", "learning_rate=1e-3", "unet_lr=1e-3", "text_encoder_lr=5e-4",
    "steps=2", "seeds=[1]", 'prompts=["lad, green solid background, black hair"]',
]
REPO_DATASET = Path(__file__).resolve().parents[1] / "dataset"
SYNTH_CAPTION = "pixel art, 24x24, portrait of bespoke punk {kind}, {bg} background, {hair} hair"

StageRow = tuple[str, bool, str]
SKIPPED = "skipped: an earlier stage failed"


class StageFailed(Exception):
    """A smoke stage did not pass; the message says why."""


def smoke_cache_dir() -> Path:
    """`$BESPOKE_CACHE/smoke` (default ~/.cache/bespoke-kohya/smoke), next to the tokenizer cache."""
    from .vendor import tokenizer_cache_dir

    return tokenizer_cache_dir().parent / "smoke"


def shared_dataset_dir() -> Path:
    """The real Bespoke Punks beside the checkout (`$BESPOKE_DATASET` overrides), used when present."""
    env = os.environ.get("BESPOKE_DATASET", "").strip()
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "datasets" / "bespoke-punks-24"


def synthetic_punks(out_dir: Path, count: int = SMOKE_IMAGES, seed: int = 0) -> Path:
    """Draw ``count`` punk-like 24x24 portraits with captions: solid background, head, hair, eyes, dark outline."""
    import numpy as np

    from .images import save_png

    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    backgrounds = {"green": (96, 160, 96), "purple": (130, 90, 170), "red": (190, 70, 60), "yellow": (225, 200, 80), "blue": (80, 120, 200)}
    hairs = {"black": (25, 20, 20), "blonde": (230, 200, 110), "brown": (110, 70, 40), "red": (170, 60, 30)}
    for i in range(count):
        bg_name, bg = list(backgrounds.items())[i % len(backgrounds)]
        hair_name, hair = list(hairs.items())[int(rng.integers(len(hairs)))]
        skin = tuple(int(v) for v in rng.integers(90, 235, 3))
        img = np.empty((24, 24, 3), np.uint8)
        img[:] = bg
        img[6:24, 7:17] = (0, 0, 0)  # outline
        img[7:23, 8:16] = skin  # head and neck
        img[19:24, 5:19] = (0, 0, 0)
        img[20:24, 6:18] = tuple(int(v) for v in rng.integers(0, 256, 3))  # shoulders
        img[4:8, 7:17] = hair
        img[11, 10] = img[11, 13] = (20, 20, 60)  # eyes
        img[15, 10:14] = (120, 40, 40)  # mouth
        kind = "lad" if i % 2 == 0 else "lady"
        name = f"synthetic_{i:02d}_{kind}"
        save_png(img, out_dir / f"{name}.png")
        _write_text(out_dir / f"{name}.txt", SYNTH_CAPTION.format(kind=kind, bg=bg_name, hair=hair_name) + "\n")
    return out_dir


def choose_images(dataset: Path | None, out_dir: Path, count: int = SMOKE_IMAGES) -> str:
    """Copy ``count`` images (and their captions) spread over a dataset into ``out_dir``; returns where they came from.

    Source: ``dataset``, else `dataset/` of the checkout when it holds PNGs, else the shared
    Bespoke Punks when present, else synthetic punks drawn here.
    """
    candidates = [dataset] if dataset is not None else [REPO_DATASET, shared_dataset_dir()]
    for folder in candidates:
        if folder is None or not folder.is_dir():
            if dataset is not None:
                raise UserError(f"--dataset {dataset}: no such folder; pass a folder of 24x24 PNGs with .txt captions")
            continue
        pngs = sorted(folder.glob("*.png"))
        if not pngs:
            if dataset is not None:
                raise UserError(f"--dataset {dataset}: no .png images in it")
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        picked = pngs[:: max(1, len(pngs) // count)][:count]  # spread over the set, not 8 variants of one series
        for png in picked:
            shutil.copy2(png, out_dir / png.name)
            caption = png.with_suffix(".txt")
            if caption.is_file():
                shutil.copy2(caption, out_dir / caption.name)
        return f"{len(picked)} from {folder}"
    synthetic_punks(out_dir, count)
    return f"{count} synthetic punks drawn in code (no dataset found)"


@contextmanager
def _offline() -> Iterator[None]:
    """Forbid hub downloads (here and in sd-scripts, which inherits the environment) for the block."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _stage_sd_scripts() -> str:
    from .vendor import find_sd_scripts

    sd = find_sd_scripts(Path(__file__).resolve().parents[1])
    if sd is None:
        raise StageFailed("not installed: run `make vendor` (or set SD_SCRIPTS_DIR and SD_SCRIPTS_PYTHON)")
    return f"{sd.path} ({sd.tag or (sd.commit or '?')[:12]})"


def _stage_base(base_dir: Path) -> str:
    cached = (base_dir / MARKER).is_file()
    started = time.perf_counter()
    build_random_sd15(base_dir)
    return f"{base_dir} ({'cached' if cached else f'built in {time.perf_counter() - started:.0f} s'})"


def _stage_tokenizers() -> str:
    from .vendor import tokenizer_cache_dir

    entries = write_tokenizer_cache(tokenizer_cache_dir())
    return ", ".join(str(e) for e in entries)


def _stage_train(images: Path, run_dir: Path, base_dir: Path, console: Any, err_console: Any) -> str:
    from .train import read_run, train

    args = argparse.Namespace(
        preset=SMOKE_PRESET, set=[f"pretrained_model_name_or_path={base_dir}", *SMOKE_OVERRIDES], experimental=False,
        dataset=str(images), run_dir=str(run_dir), dry_run=False, resume=None, num_gpus=1, cpu=True,
    )
    started = time.perf_counter()
    code = train(args, console=console, err_console=err_console)
    record = read_run(run_dir)
    if code != 0 or record.get("status") != "finished":
        cause = (record.get("failure") or {}).get("cause") or f"exit status {code}"
        raise StageFailed(f"status {record.get('status')}: {cause}; log: {run_dir / 'logs' / 'train.log'}")
    return f"{SMOKE_EPOCHS} epochs at {SMOKE_RESOLUTION} px in {time.perf_counter() - started:.0f} s, sd-scripts exit 0"


def _stage_checkpoints(run_dir: Path) -> str:
    from .train import read_run

    epochs = read_run(run_dir).get("epochs") or {}
    wanted = [str(e) for e in range(1, SMOKE_EPOCHS + 1)]
    missing = [e for e in wanted if e not in epochs or not (run_dir / epochs[e]).is_file()]
    if missing:
        raise StageFailed(f"no checkpoint for epoch(s) {', '.join(missing)} (run.json epochs: {epochs})")
    return ", ".join(f"{e}: {epochs[e]} ({(run_dir / epochs[e]).stat().st_size / 1e6:.1f} MB)" for e in wanted)


def _stage_losses(run_dir: Path) -> str:
    from .train import read_loss_csv

    rows = [r for r in read_loss_csv(run_dir / "logs" / "loss.csv") if "loss" in r]
    if not rows:
        raise StageFailed(f"{run_dir / 'logs' / 'loss.csv'} has no per-step losses (TensorBoard events unreadable?)")
    bad = [r["step"] for r in rows if not r["loss"] == r["loss"]]  # NaN != NaN
    if bad:
        raise StageFailed(f"loss is NaN at step(s) {bad[:5]}")
    epochs = sorted({r.get("epoch") for r in rows if r.get("epoch")})
    return f"{len(rows)} steps over epochs {epochs}, loss {rows[0]['loss']:.3f} -> {rows[-1]['loss']:.3f}"


def _stage_sample(run_dir: Path, base_dir: Path) -> str:
    import numpy as np
    from PIL import Image

    from .sample import sample_run

    doc = sample_run(run_dir, device="cpu", include_base=True, base_override=str(base_dir), progress=False)
    first = {int(e): entry["images"][0]["full"] for e, entry in doc["epochs"].items()}
    if sorted(first) != list(range(SMOKE_EPOCHS + 1)):
        raise StageFailed(f"samples.json has epochs {sorted(first)}, expected 0 (base) to {SMOKE_EPOCHS}")
    pixels = {e: np.asarray(Image.open(run_dir / rel).convert("RGB"), dtype=np.int16) for e, rel in first.items()}
    size = pixels[0].shape[1::-1]
    changes = {e: float(np.abs(pixels[e] - pixels[0]).mean()) for e in range(1, SMOKE_EPOCHS + 1)}
    same = [e for e, d in changes.items() if d == 0]
    if same:
        raise StageFailed(f"epoch(s) {same} sampled exactly like the base model: the LoRA had no effect")
    return f"{size[0]}x{size[1]}, 2 steps; mean |pixel change| vs base: " + ", ".join(f"epoch {e} {d:.2f}" for e, d in changes.items())


def run_smoke(work_dir: Path | None = None, dataset: Path | None = None, keep: bool = False, console: Any = None) -> list[StageRow]:
    """Prove a fresh install trains and samples, offline, in minutes: one (stage, ok, detail) row per stage.

    Stages: sd-scripts found; random SD1.5 base built or cached (`$BESPOKE_CACHE/smoke/sd15-random`);
    tokenizer cache written; 8 images chosen; 2 tiny epochs at 64 px trained on the CPU through
    sd-scripts by the same code as `train`; both epoch checkpoints present; loss series parsed;
    each epoch's LoRA sampled on the random base (2 steps, 64 px) and differing from the base.
    The first failure ends the run: later stages are not attempted, and the work folder is kept.
    Hub downloads are switched off throughout (HF_HUB_OFFLINE=1).
    """
    from rich.console import Console

    console = console or Console()
    err_console = Console(stderr=True)
    own_dir = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="bespoke-smoke-")) if own_dir else Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    images, run_dir = work / "images", work / "run"
    for path in (images, run_dir):
        if path.exists():
            raise UserError(f"{path} exists: give `smoke` an empty or new --work-dir (nothing there is overwritten)")
    base_dir = smoke_cache_dir() / "sd15-random"
    stages: list[tuple[str, Any]] = [
        ("sd-scripts found", _stage_sd_scripts),
        ("random SD1.5 base", lambda: _stage_base(base_dir)),
        ("tokenizer cache", _stage_tokenizers),
        (f"{SMOKE_IMAGES} training images", lambda: choose_images(dataset, images)),
        (f"train {SMOKE_EPOCHS} epochs (sd-scripts, CPU)", lambda: _stage_train(images, run_dir, base_dir, console, err_console)),
        ("epoch checkpoints", lambda: _stage_checkpoints(run_dir)),
        ("loss series", lambda: _stage_losses(run_dir)),
        ("LoRA sampling", lambda: _stage_sample(run_dir, base_dir)),
    ]
    rows: list[StageRow] = []
    with _offline():
        for name, stage in stages:
            console.print(f"[bold]smoke:[/] {name} …")
            try:
                rows.append((name, True, str(stage())))
            except (StageFailed, UserError) as exc:
                rows.append((name, False, str(exc)))
                break
            except Exception as exc:  # an unexpected error is this stage's failure, reported, not a traceback
                rows.append((name, False, f"{exc.__class__.__name__}: {exc}"))
                break
    passed = len(rows) == len(stages) and all(ok for _, ok, _ in rows)
    rows += [(name, False, SKIPPED) for name, _ in stages[len(rows):]]
    if passed and not keep:
        shutil.rmtree(work if own_dir else images, ignore_errors=True)
        if not own_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
    elif not any(work.iterdir()):  # failed before writing anything: nothing worth keeping
        if own_dir:
            work.rmdir()
    else:
        # Informational (ok): the failing row above already decides the outcome.
        rows.append(("work folder", True, f"kept: {work}" + ("" if passed or not run_dir.exists() else f"; training log: {run_dir / 'logs' / 'train.log'}")))
    return rows


def main(argv: list[str] | None = None) -> int:
    """`python -m bespoke_kohya.smoke`: build the offline tokenizer cache and/or random SD1.5."""
    parser = argparse.ArgumentParser(prog="python -m bespoke_kohya.smoke", description=main.__doc__)
    parser.add_argument("--tokenizer-cache", type=Path, help="fill this sd-scripts --tokenizer_cache_dir with CLIP tokenizers")
    parser.add_argument("--random-sd15", type=Path, help="write a random-weight SD1.5 diffusers folder here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (args.tokenizer_cache or args.random_sd15):
        parser.error("give --tokenizer-cache DIR and/or --random-sd15 DIR")
    try:
        if args.tokenizer_cache:
            for entry in write_tokenizer_cache(args.tokenizer_cache):
                print(f"tokenizer: {entry}")
        if args.random_sd15:
            print(f"random SD1.5: {build_random_sd15(args.random_sd15, args.seed)}")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
