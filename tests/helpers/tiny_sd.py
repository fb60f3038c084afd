"""Builders for a tiny random-weight Stable Diffusion 1.5 pipeline and a kohya-format LoRA for it.

Nothing comes from a hub: the CLIP tokenizer is made from a small vocab.json and
merges.txt written here, every network is built from a config under a fixed seed,
and the pipeline is saved with ``save_pretrained`` so tests load it the way users
load a local diffusers folder.

The LoRA file follows what sd-scripts' ``networks/lora.py`` (v0.10.1) writes for
SD1.5: one module per ``Linear`` / 1×1 ``Conv2d`` inside every U-Net
``Transformer2DModel`` and every CLIP ``CLIPAttention`` / ``CLIPMLP``, named
``lora_unet_<dotted path with _>`` / ``lora_te_<dotted path with _>``, each with
``.lora_down.weight``, ``.lora_up.weight`` and a 0-d ``.alpha``, all in the save
precision, plus ``ss_*`` string metadata. Unlike a freshly initialised kohya
network (whose up weights are zero), the up weights here are non-zero, as in a
trained checkpoint, so the LoRA visibly changes what the pipeline draws.

Usage::

    base = build_tiny_sd15(tmp_path / "base")
    write_kohya_lora(base, tmp_path / "bespoke-000001.safetensors", seed=1)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bespoke_kohya.engines.kohya.offline_sd import bytes_to_unicode  # CLIP's byte table, shared with the offline tokenizer

# Words of the default prompt suite get whole-word tokens; anything else falls back to
# single characters, which CLIP's BPE also does for unknown words.
WORDS = (
    "pixel art 24x24 portrait of bespoke punk lad lady green solid background black hair blue "
    "eyes light skin blonde purple slight smile wearing gray baseball cap brown medium male tone "
    "red curly dark yellow hard color borders sharp edges"
).split()
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77
HIDDEN = 32  # text-encoder width = the U-Net's cross_attention_dim

# sd-scripts' target modules (networks/lora.py, LoRANetwork) for SD1.x.
UNET_TARGETS = ("Transformer2DModel",)
TEXT_ENCODER_TARGETS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")


def tiny_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """A CLIP-style BPE vocabulary: 256 byte characters (plain and word-final), whole words, specials."""
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    for word in WORDS:
        # Merge left to right, the last character carrying the end-of-word marker, as CLIP's merges do.
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            rule = f"{left} {right}"
            left = left + right
            if rule not in merges:
                merges.append(rule)
            if left not in tokens:
                tokens.append(left)
    tokens += [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_tiny_tokenizer(out_dir: Path) -> Path:
    """Write vocab.json, merges.txt and the tokenizer config of a tiny CLIPTokenizer into ``out_dir``."""
    vocab, merges = tiny_vocab_and_merges()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH, "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out_dir


def tiny_sd15_pipeline(tokenizer_dir: Path, seed: int = 0):
    """A StableDiffusionPipeline with random weights: 2-level U-Net (32, 64), tiny VAE, 2-layer CLIP."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        # Cross-attention at the first level and in the middle, as in SD1.5 (whose last level has none).
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=HIDDEN,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=32,
    )
    torch.manual_seed(seed)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    text_encoder = CLIPTextModel(text_config)
    # SD1.5's own scheduler config; the sampler swaps in the preset's scheduler from it.
    scheduler = PNDMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def build_tiny_sd15(out_dir: Path, seed: int = 0) -> Path:
    """Save a tiny random SD1.5 pipeline as a local diffusers folder (safetensors weights); returns ``out_dir``."""
    tokenizer_dir = write_tiny_tokenizer(out_dir.parent / f".{out_dir.name}-tokenizer")
    pipe = tiny_sd15_pipeline(tokenizer_dir, seed)
    pipe.save_pretrained(str(out_dir), safe_serialization=True)
    return out_dir


def kohya_module_names(root: torch.nn.Module, prefix: str, targets: tuple[str, ...]) -> dict[str, torch.nn.Module]:
    """sd-scripts' LoRA names for ``root``: every Linear / 1×1 Conv2d inside a target-class module.

    The name is ``prefix.<module path>.<child path>`` with every dot turned into ``_``.
    """
    found: dict[str, torch.nn.Module] = {}
    for name, module in root.named_modules():
        if module.__class__.__name__ not in targets:
            continue
        for child_name, child in module.named_modules():
            is_linear = isinstance(child, torch.nn.Linear)
            is_conv1x1 = isinstance(child, torch.nn.Conv2d) and child.kernel_size == (1, 1)
            if is_linear or is_conv1x1:
                found[f"{prefix}.{name}.{child_name}".replace(".", "_")] = child
    return found


def _lora_pair(module: torch.nn.Module, rank: int, gen: torch.Generator, strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(down, up) weights shaped as sd-scripts saves them for a Linear or a 1×1 Conv2d."""
    if isinstance(module, torch.nn.Conv2d):
        fan_in, fan_out, tail = module.in_channels, module.out_channels, (1, 1)
    else:
        fan_in, fan_out, tail = module.in_features, module.out_features, ()
    down = torch.randn((rank, fan_in, *tail), generator=gen) / fan_in**0.5
    up = torch.randn((fan_out, rank, *tail), generator=gen) * strength
    return down, up


def kohya_lora_state_dict(base_dir: Path, rank: int = 4, alpha: float = 2.0, seed: int = 1, strength: float = 0.5,
                          text_encoder: bool = True, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """The tensors of a kohya SD1.5 LoRA for the pipeline saved in ``base_dir`` (non-zero up weights)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(str(base_dir), subfolder="unet")
    modules = kohya_module_names(unet, "lora_unet", UNET_TARGETS)
    if text_encoder:
        te = CLIPTextModel.from_pretrained(str(base_dir), subfolder="text_encoder")
        modules.update(kohya_module_names(te, "lora_te", TEXT_ENCODER_TARGETS))
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name in sorted(modules):
        down, up = _lora_pair(modules[name], rank, gen, strength)
        tensors[f"{name}.lora_down.weight"] = down.to(dtype).contiguous()
        tensors[f"{name}.lora_up.weight"] = up.to(dtype).contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(alpha).to(dtype)  # sd-scripts keeps alpha as a 0-d buffer
    return tensors


def kohya_metadata(rank: int, alpha: float, epoch: int, output_name: str = "bespoke") -> dict[str, str]:
    """A subset of the ``ss_*`` metadata sd-scripts writes (safetensors metadata values are strings)."""
    return {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_base_model_version": "sd_v1",
        "ss_v2": "False",
        "ss_sd_model_name": "tiny-random-sd15",
        "ss_output_name": output_name,
        "ss_epoch": str(epoch),
        "ss_resolution": "(64, 64)",
        "ss_mixed_precision": "fp16",
    }


def write_kohya_lora(base_dir: Path, path: Path, *, rank: int = 4, alpha: float = 2.0, seed: int = 1, epoch: int = 1,
                     strength: float = 0.5, text_encoder: bool = True) -> Path:
    """Write a kohya-format LoRA (fp16 safetensors with ss_* metadata) for the pipeline in ``base_dir``."""
    from safetensors.torch import save_file

    tensors = kohya_lora_state_dict(base_dir, rank=rank, alpha=alpha, seed=seed, strength=strength, text_encoder=text_encoder)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=kohya_metadata(rank, alpha, epoch))
    return path
