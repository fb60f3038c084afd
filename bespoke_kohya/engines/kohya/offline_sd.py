"""Offline stand-ins for hub downloads: a random-weight SD1.5 base and the CLIP tokenizer.

sd-scripts' SD1.x code hard-codes the real UNet (320-1280 channels, cross-attention 768),
so a smoke run through `train_network.py` needs the full architecture; random weights
are enough to prove that the pipeline trains, saves and loads. The CLIP BPE vocabulary
comes from a local file (the one `open-clip-torch` ships), so nothing touches a hub.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import json
import os
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any

from ...atomic import staged_folder
from ...errors import UserError

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
            with staged_folder(entry, "keep") as tmp:
                write_clip_tokenizer(tmp, bpe_path)
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
    with staged_folder(out_dir, "keep") as tmp:  # a concurrent builder may win: theirs is as good as ours
        _build_sd15(tmp, seed, bpe)
    return out_dir


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
