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


def tiny_sd15_pipeline(tokenizer_dir: Path, seed: int = 0, vae_levels: int = 2):
    """A StableDiffusionPipeline with random weights: 2-level U-Net (32, 64), tiny VAE, 2-layer CLIP.

    ``vae_levels``: 2 downsamples images 2× (fast); 4 downsamples 8× like SD1.5's VAE, which a
    ControlNet needs (its conditioning embedding always reduces the control image 8×).
    """
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
        block_out_channels=(32, 64) if vae_levels == 2 else (32,) * vae_levels,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * vae_levels,
        up_block_types=("UpDecoderBlock2D",) * vae_levels,
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


def build_tiny_sd15(out_dir: Path, seed: int = 0, vae_levels: int = 2) -> Path:
    """Save a tiny random SD1.5 pipeline as a local diffusers folder (safetensors weights); returns ``out_dir``."""
    tokenizer_dir = write_tiny_tokenizer(out_dir.parent / f".{out_dir.name}-tokenizer")
    pipe = tiny_sd15_pipeline(tokenizer_dir, seed, vae_levels)
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


# ------------------------------------------------------------------ the other kohya methods' files
#
# What sd-scripts v0.10.1 writes for each method, for the tiny base: a whole model in the original
# (LDM) single-file layout (train_db.py, library/model_util.py save_stable_diffusion_checkpoint), an
# embedding {"emb_params": (vectors, width)} (train_textual_inversion.py save_weights), and a ControlNet
# renamed by its convert_controlnet_state_dict_to_sd (train_control_net.py save_model).

UNET_RESNET_PARTS = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
                     ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
VAE_ATTENTION_PARTS = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")]


def _rename(state: dict[str, torch.Tensor], prefixes: list[tuple[str, str]], inner) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for old, new in prefixes:
            if key.startswith(old):
                out[new + inner(old, key[len(old):])] = value
                break
        else:
            raise KeyError(f"no LDM name for {key}")
    return out


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    """A diffusers UNet2DConditionModel's weights under LDM names, for any number of levels and layers per block
    (the inverse of diffusers' convert_ldm_unet_checkpoint)."""
    cfg = unet.config
    per, levels = cfg.layers_per_block, len(cfg.block_out_channels)
    prefixes = [("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."), ("conv_in.", "input_blocks.0.0."),
                ("conv_norm_out.", "out.0."), ("conv_out.", "out.2."), ("mid_block.resnets.0.", "middle_block.0."),
                ("mid_block.attentions.0.", "middle_block.1."), ("mid_block.resnets.1.", "middle_block.2.")]
    for b in range(levels):
        for j in range(per):
            prefixes += [(f"down_blocks.{b}.resnets.{j}.", f"input_blocks.{1 + b * (per + 1) + j}.0."),
                         (f"down_blocks.{b}.attentions.{j}.", f"input_blocks.{1 + b * (per + 1) + j}.1.")]
        prefixes.append((f"down_blocks.{b}.downsamplers.0.conv.", f"input_blocks.{(b + 1) * (per + 1)}.0.op."))
        for j in range(per + 1):
            prefixes += [(f"up_blocks.{b}.resnets.{j}.", f"output_blocks.{b * (per + 1) + j}.0."),
                         (f"up_blocks.{b}.attentions.{j}.", f"output_blocks.{b * (per + 1) + j}.1.")]
        attention = "CrossAttn" in cfg.up_block_types[b]
        prefixes.append((f"up_blocks.{b}.upsamplers.0.", f"output_blocks.{b * (per + 1) + per}.{2 if attention else 1}."))

    def inner(prefix: str, rest: str) -> str:
        if "resnets" in prefix:
            for hf, ldm in UNET_RESNET_PARTS:
                if rest.startswith(hf + "."):
                    return ldm + rest[len(hf):]
        return rest

    return _rename(unet.state_dict(), prefixes, inner)


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL's weights under LDM names (the inverse of diffusers' convert_ldm_vae_checkpoint)."""
    levels, per = len(vae.config.block_out_channels), vae.config.layers_per_block
    prefixes = [(f"{part}.conv_norm_out.", f"{part}.norm_out.") for part in ("encoder", "decoder")]
    prefixes += [(f"{part}.{name}.", f"{part}.{name}.") for part in ("encoder", "decoder") for name in ("conv_in", "conv_out")]
    prefixes += [("quant_conv.", "quant_conv."), ("post_quant_conv.", "post_quant_conv.")]
    for part in ("encoder", "decoder"):
        prefixes += [(f"{part}.mid_block.resnets.{k}.", f"{part}.mid.block_{k + 1}.") for k in range(2)]
        prefixes.append((f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1."))
    for i in range(levels):
        prefixes += [(f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.") for j in range(per)]
        prefixes.append((f"encoder.down_blocks.{i}.downsamplers.0.conv.", f"encoder.down.{i}.downsample.conv."))
        prefixes += [(f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{levels - 1 - i}.block.{j}.") for j in range(per + 1)]
        prefixes.append((f"decoder.up_blocks.{i}.upsamplers.0.conv.", f"decoder.up.{levels - 1 - i}.upsample.conv."))

    def inner(prefix: str, rest: str) -> str:
        if "attentions" in prefix:
            for hf, ldm in VAE_ATTENTION_PARTS:
                if rest.startswith(hf):
                    return ldm + rest[len(hf):]
        return rest.replace("conv_shortcut", "nin_shortcut")

    out = _rename(vae.state_dict(), prefixes, inner)
    for key, value in out.items():  # LDM's attention projections are 1×1 convolutions
        if ".mid.attn_1." in key and key.endswith((".q.weight", ".k.weight", ".v.weight", ".proj_out.weight")):
            out[key] = value.reshape(*value.shape, 1, 1)
    return out


def write_full_checkpoint(base_dir: Path, path: Path, *, seed: int = 1, strength: float = 0.05, dtype: torch.dtype = torch.float16) -> Path:
    """A whole-model checkpoint as train_db.py saves one (LDM names, fp16, modelspec metadata): the tiny base with
    every U-Net weight moved by ``strength`` × its own scale, so the samples visibly differ from the base."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    pipe = StableDiffusionPipeline.from_pretrained(str(base_dir), safety_checker=None, requires_safety_checker=False)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in pipe.unet.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * strength * (param.std() if param.numel() > 1 else 1.0))
    tensors = {f"model.diffusion_model.{k}": v for k, v in unet_to_ldm(pipe.unet).items()}
    tensors.update({f"first_stage_model.{k}": v for k, v in vae_to_ldm(pipe.vae).items()})
    # The real files' CLIP names carry `text_model.`; transformers 5 saves without it (see offline_sd.legacy_text_encoder_keys).
    tensors.update({f"cond_stage_model.transformer.{k if k.startswith('text_model.') else 'text_model.' + k}": v
                    for k, v in pipe.text_encoder.state_dict().items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(dtype).contiguous() for k, v in tensors.items()}, str(path),
              metadata={"modelspec.architecture": "stable-diffusion-v1", "modelspec.title": "tiny full fine-tune"})
    return path


def write_embedding(path: Path, *, vectors: int = 2, width: int = HIDDEN, seed: int = 1, scale: float = 1.0, dtype: torch.dtype = torch.float16) -> Path:
    """A textual-inversion embedding as train_textual_inversion.py saves one: {"emb_params": (vectors, width)}."""
    from safetensors.torch import save_file

    emb = torch.randn((vectors, width), generator=torch.Generator().manual_seed(seed)) * scale
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": emb.to(dtype).contiguous()}, str(path), metadata={"modelspec.title": "tiny embedding"})
    return path


def controlnet_to_sd(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """sd-scripts v0.10.1's convert_controlnet_state_dict_to_sd (library/model_util.py), step for step, from its own maps."""
    from bespoke_kohya.engines.kohya.method_samplers import CONTROLNET_RESNET_PARTS, CONTROLNET_WHOLE_NAMES, controlnet_conversion_map

    whole = {hf: sd for sd, hf in CONTROLNET_WHOLE_NAMES}
    out = {}
    for key, value in state_dict.items():
        name = whole.get(key, key)
        if "resnets" in name:
            for sd_part, hf_part in CONTROLNET_RESNET_PARTS:
                name = name.replace(hf_part, sd_part)
        for sd_part, hf_part in controlnet_conversion_map():
            name = name.replace(hf_part, sd_part)
        out[name] = value
    return out


def write_controlnet(base_dir: Path, path: Path, *, seed: int = 1, strength: float = 0.5, dtype: torch.dtype = torch.float16) -> Path:
    """A ControlNet for the tiny base as train_control_net.py saves one (sd-scripts' names, fp16), its zero
    convolutions made non-zero (as after training) so it visibly steers the samples."""
    from diffusers import ControlNetModel, UNet2DConditionModel
    from safetensors.torch import save_file

    unet = UNet2DConditionModel.from_pretrained(str(base_dir), subfolder="unet")
    torch.manual_seed(seed)
    model = ControlNetModel.from_unet(unet)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
                param.copy_(torch.randn(param.shape, generator=gen) * strength)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(dtype).contiguous() for k, v in controlnet_to_sd(model.state_dict()).items()}, str(path))
    return path
