"""Render a kohya preset into what sd-scripts reads: config/train.toml, config/dataset.toml, config/sample_prompts.txt.

One builder per method (kohya.method) from shared pieces: each renders only keys its own script's parser
has (tests/data key lists). The LoRA builder renders exactly what it did before the other methods
(tests/data/lora_renders). The builders are pure (preset in, dict out) so tests can assert exact values.
Paths inside the TOML files are relative to the run directory, and sd-scripts is
launched with the run directory as its working directory: a run can be moved or
copied to another machine and still train.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import tomli_w

from ...atomic import staged_folder, write_atomic
from ...errors import UserError
from ...render import validating
from ...runfolder import CHECKPOINTS, CONFIG, DATA, TENSORBOARD, training_folder_name
from .settings import KohyaPreset


def train_args(preset: KohyaPreset, run_id: str = "", validate: bool | None = None) -> dict[str, dict[str, Any]]:
    """sd-scripts `--config_file` contents, grouped in sections (sd-scripts flattens them).

    Types matter: sd-scripts never converts config-file values, so resolution is
    the string "R,R" and network_alpha a float. ``validate``: whether the run holds
    images out (see :func:`validating`); None: whenever dataset.validation_split > 0.
    Each method renders only keys its own script's parser has (tests/data key lists).
    """
    method = preset.settings.method
    if method == "lora":
        return _lora_args(preset, run_id, validate)
    if method == "full":
        sections = {"model": _model(preset), "full": _full(preset), "optimizer": _optimizer(preset, _full_rates(preset))}
    elif method == "textual_inversion":
        sections = {"model": _model(preset), "embedding": _embedding(preset), "optimizer": _optimizer(preset, {})}
    else:
        sections = {"model": _model(preset), "optimizer": _optimizer(preset, {})}
    # None of train_db.py, train_textual_inversion.py, train_control_net.py v0.10.1 computes a validation
    # loss (their val_dataset_group is never used), nor has training_comment: neither is rendered.
    return {**sections, "training": _training(preset, validate=False), "saving": _saving(preset), "logging": _logging(preset, "")}


def _lora_args(preset: KohyaPreset, run_id: str, validate: bool | None) -> dict[str, dict[str, Any]]:
    """train_network.py's config: exactly what it was before the other methods (tests/data/lora_renders)."""
    k = preset.settings
    network: dict[str, Any] = {"network_module": k.network_module, "network_dim": k.network_dim, "network_alpha": float(k.network_alpha)}
    rates: dict[str, Any] = {}
    if k.unet_lr is not None:
        rates["unet_lr"] = k.unet_lr
    if k.text_encoder_lr == 0:
        network["network_train_unet_only"] = True
    elif k.text_encoder_lr is not None:
        rates["text_encoder_lr"] = k.text_encoder_lr
    return {"model": _model(preset), "network": network, "optimizer": _optimizer(preset, rates),
            "training": _training(preset, _validate(preset, validate)), "saving": _saving(preset), "logging": _logging(preset, run_id)}


def _model(preset: KohyaPreset) -> dict[str, Any]:
    return {"pretrained_model_name_or_path": preset.settings.pretrained_model_name_or_path}


def _optimizer(preset: KohyaPreset, rates: dict[str, Any]) -> dict[str, Any]:
    """The optimizer and schedule; ``rates``: the method's own learning rates, placed after the base rate."""
    k = preset.settings
    optimizer: dict[str, Any] = {"optimizer_type": k.optimizer_type, "learning_rate": k.learning_rate, **rates}
    optimizer["lr_scheduler"] = k.lr_scheduler
    if k.lr_scheduler == "cosine_with_restarts":
        optimizer["lr_scheduler_num_cycles"] = k.lr_scheduler_num_cycles
    if k.lr_warmup_steps:
        optimizer["lr_warmup_steps"] = k.lr_warmup_steps
    return optimizer


def _training(preset: KohyaPreset, validate: bool) -> dict[str, Any]:
    k = preset.settings
    training: dict[str, Any] = {
        "resolution": f"{k.resolution},{k.resolution}",
        "max_train_epochs": k.max_train_epochs,
        "train_batch_size": k.train_batch_size,
        "mixed_precision": k.mixed_precision,
        "noise_offset": k.noise_offset,
        "seed": k.seed,
        "max_data_loader_n_workers": k.max_data_loader_n_workers,
    }
    if k.min_snr_gamma is not None:
        training["min_snr_gamma"] = k.min_snr_gamma
    if k.clip_skip is not None:
        training["clip_skip"] = k.clip_skip
    for flag in ("gradient_checkpointing", "cache_latents", "sdpa"):
        if getattr(k, flag):
            training[flag] = True
    if validate:
        # sd-scripts v0.10.1 already validates every epoch when a validation set exists; said
        # explicitly so the config shows it. No max_validation_steps: the held-out images are
        # seen once each (validation ignores num_repeats), a few batches × 4 timesteps an epoch.
        training["validate_every_n_epochs"] = 1
    return training


def _saving(preset: KohyaPreset) -> dict[str, Any]:
    # save_model_as = safetensors for every method: train_textual_inversion.py defaults to a
    # pickled .pt, and a pickle is never loaded here (nor is .ckpt, train_db.py's other choice).
    k = preset.settings
    saving: dict[str, Any] = {
        "output_dir": CHECKPOINTS,
        "output_name": k.output_name,
        "save_model_as": "safetensors",
        "save_every_n_epochs": k.save_every_n_epochs,
        "save_precision": k.save_precision,
    }
    if k.save_state:
        saving["save_state"] = True
    return saving


def _logging(preset: KohyaPreset, run_id: str) -> dict[str, Any]:
    # console_log_simple: one plain line per log message instead of rich's wrapped boxes, so it parses.
    logging: dict[str, Any] = {"logging_dir": TENSORBOARD, "log_prefix": preset.name + "-", "console_log_simple": True}
    if run_id:
        logging["training_comment"] = f"bespoke-kohya run {run_id} preset {preset.name}"
    return logging


def _full(preset: KohyaPreset) -> dict[str, Any]:
    """train_db.py's text-encoder switch: -1 is its way of never training it (`stop_text_encoder_training`)."""
    full = preset.settings.full
    assert full is not None
    return {} if full.train_text_encoder else {"stop_text_encoder_training": -1}


def _full_rates(preset: KohyaPreset) -> dict[str, Any]:
    full = preset.settings.full
    assert full is not None
    return {"learning_rate_te": full.learning_rate_te} if full.train_text_encoder and full.learning_rate_te is not None else {}


def _embedding(preset: KohyaPreset) -> dict[str, Any]:
    ti = preset.settings.textual_inversion
    assert ti is not None
    embedding: dict[str, Any] = {"token_string": ti.token_string, "num_vectors_per_token": ti.num_vectors_per_token}
    if ti.init_word is not None:
        embedding["init_word"] = ti.init_word
    return embedding


def dataset_config(preset: KohyaPreset, validate: bool | None = None) -> dict[str, Any]:
    """sd-scripts `--dataset_config` contents: one DreamBooth subset with repeats and .txt captions (ControlNet: see below).

    With ``validate`` (None: whenever dataset.validation_split > 0) the dataset carries
    validation_split and validation_seed, which sd-scripts v0.10.1 reads per dataset
    (config_util's DATASET_ASCENDABLE_SCHEMA) and splits off with `split_train_val`.

    ControlNet is different: train_control_net.py's dataset asserts that its conditioning folder
    holds exactly one image per training image ("extra conditioning data"), and builds its train
    and validation parts both with is_training_dataset=True, so a split cannot be rendered. When
    the run holds images out, it trains instead from data/<r>_<concept>_trained/, the prepared
    images less the held-out ones (write_config copies them), and renders no split.
    """
    k = preset.settings
    d = preset.dataset
    general: dict[str, Any] = {
        "resolution": k.resolution,
        "caption_extension": d.caption_extension,  # sd-scripts defaults to .caption
        "shuffle_caption": False,
        "keep_tokens": 0,
        "flip_aug": k.flip_aug,
        "color_aug": False,
        "random_crop": False,
        "enable_bucket": k.enable_bucket,
        "resize_interpolation": "nearest",  # sd-scripts resizes with lanczos otherwise
    }
    if k.enable_bucket and k.resolution < 256:
        # Default min_bucket_reso is 256; sd-scripts asserts it is <= resolution.
        general["min_bucket_reso"] = k.resolution - k.resolution % 8 or 8
        general["max_bucket_reso"] = k.resolution
    dataset: dict[str, Any] = {"batch_size": k.train_batch_size}
    if k.method == "controlnet":
        subset = {
            "image_dir": f"{DATA}/{controlnet_image_folder(preset, _validate(preset, validate))}",
            "conditioning_data_dir": f"{DATA}/{conditioning_folder(preset)}",
            "num_repeats": d.num_repeats,
            "caption_extension": d.caption_extension,  # no class_tokens: ControlNet subsets do not have it
        }
        return {"general": general, "datasets": [{**dataset, "subsets": [subset]}]}
    subset = {
        "image_dir": f"{DATA}/{training_folder_name(d.num_repeats, d.concept)}",
        "num_repeats": d.num_repeats,
        "class_tokens": d.concept.replace("_", " "),
        "caption_extension": d.caption_extension,
    }
    if _validate(preset, validate):
        dataset.update(validation_split=float(d.validation_split), validation_seed=d.validation_seed)  # the schema wants a float
    return {"general": general, "datasets": [{**dataset, "subsets": [subset]}]}


def conditioning_folder(preset: KohyaPreset) -> str:
    """``<repeats>_<concept>_conditioning``: the ControlNet's edge maps, one per image it trains on, named like it (under data/)."""
    d = preset.dataset
    return f"{training_folder_name(d.num_repeats, d.concept)}_conditioning"


def controlnet_image_folder(preset: KohyaPreset, heldout: bool) -> str:
    """The folder under data/ the ControlNet trains from: the prepared images, or (images held out) ``<…>_trained``, the same less those."""
    d = preset.dataset
    name = training_folder_name(d.num_repeats, d.concept)
    return f"{name}_trained" if heldout else name


def _validate(preset: KohyaPreset, validate: bool | None) -> bool:
    return preset.dataset.validation_split > 0 if validate is None else validate


def sample_prompts(preset: KohyaPreset) -> str:
    """sd-scripts' prompt-file format (one prompt a line with --n/--w/--h/--l/--s/--d options), for reference and for sd-scripts' own sampler."""
    s = preset.sample
    width, height = preset.sample_size
    lines = [f"# {preset.name}: the fixed prompt suite; bespoke-kohya samples these for every epoch with seeds {s.seeds}"]
    for prompt in s.full_prompts():
        for seed in s.seeds:
            lines.append(f"{prompt} --n {s.negative_prompt} --w {width} --h {height} --l {s.guidance_scale} --s {s.steps} --d {seed}")
    return "\n".join(lines) + "\n"


def advice(preset: KohyaPreset) -> list[str]:
    """Warnings about a valid preset that sd-scripts would not give until it is too late."""
    notes = []
    k = preset.settings
    if preset.family == "sdxl" and k.clip_skip is not None:
        notes.append("clip_skip is set for an SDXL preset: sd-scripts v0.10.1 only warns 'clip_skip will be unexpected' for SDXL (library/sdxl_train_util.py); kept as configured")
    if k.resolution < 64:
        notes.append(f"resolution {k.resolution} px gives {k.resolution // 8}x{k.resolution // 8} latents; expect failure or garbage (this is the native-24 experiment)")
    if k.pretrained_model_name_or_path == "runwayml/stable-diffusion-v1-5":
        notes.append("runwayml/stable-diffusion-v1-5 (as documented) was removed from the Hugging Face hub in 2024; unless it is in your cache, use the same weights with --set pretrained_model_name_or_path=stable-diffusion-v1-5/stable-diffusion-v1-5")
    if k.optimizer_type == "AdamW8bit":
        notes.append("AdamW8bit needs bitsandbytes and a CUDA GPU")
    return notes


def _header(preset_name: str) -> str:
    return f"# Rendered by bespoke-kohya from preset {preset_name}; paths are relative to the run directory.\n"


def _write(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_config(run_dir: Path, preset: KohyaPreset, run_id: str) -> list[str]:
    """sd-scripts' own files in config/: train.toml, dataset.toml and sample_prompts.txt; returns the preset's warnings.

    Validation is rendered only when the split holds out an image of the prepared folder:
    a validation set of none is no measurement (render warns once, see render.split_notes).
    Rewritten whole (atomically) when an existing run changes device or base. The ControlNet
    method also gets its edge maps (and, with images held out, its own image folder) in data/
    and the LoRA it samples with in config/; textual inversion checks its token is in the captions.
    """
    validate = validating(run_dir, preset)
    config = Path(run_dir) / CONFIG
    _write(config / "train.toml", _header(preset.name) + tomli_w.dumps(train_args(preset, run_id, validate)))
    _write(config / "dataset.toml", _header(preset.name) + tomli_w.dumps(dataset_config(preset, validate)))
    _write(config / "sample_prompts.txt", sample_prompts(preset))
    notes = advice(preset)
    if preset.settings.method == "controlnet":
        notes += write_controlnet_data(Path(run_dir), preset)
    elif preset.settings.method == "textual_inversion":
        notes += token_notes(Path(run_dir), preset)
    return notes


SAMPLE_LORA = "sample_lora.safetensors"


def write_controlnet_data(run_dir: Path, preset: KohyaPreset) -> list[str]:
    """data/<r>_<concept>_conditioning/ (an edge map per image trained on), data/<r>_<concept>_trained/ when images are held
    out, and config/sample_lora.safetensors when kohya.controlnet.lora names one. Each folder is rebuilt whole."""
    from ...render import heldout_images
    from .edges import write_conditioning

    cn = preset.settings.controlnet
    assert cn is not None
    trained, heldout = heldout_images(run_dir, preset)
    data = run_dir / DATA
    prepared = data / training_folder_name(preset.dataset.num_repeats, preset.dataset.concept)
    if heldout:
        with staged_folder(data / controlnet_image_folder(preset, True), "replace") as tmp:
            for name in trained:
                for path in (prepared / name, (prepared / name).with_suffix(preset.dataset.caption_extension)):
                    if path.is_file():
                        shutil.copyfile(path, tmp / path.name)
    with staged_folder(data / conditioning_folder(preset), "replace") as tmp:
        write_conditioning([prepared / name for name in trained], tmp, cn.edge_width)
    return _copy_sample_lora(run_dir, cn.lora)


def _copy_sample_lora(run_dir: Path, lora: str | None) -> list[str]:
    """The ControlNet run's sampling LoRA copied into config/, so the run (and its bundle) carries it; a rewrite on a
    machine without the original keeps the copy it has."""
    from .preflight import safetensors_keys

    target = run_dir / CONFIG / SAMPLE_LORA
    if lora is None:
        return []
    source = Path(lora).expanduser()
    if not source.is_file():
        if target.is_file():
            return []
        raise UserError(f"kohya.controlnet.lora = {lora}: no such file; give the .safetensors LoRA of a kohya run, e.g. runs/<run>/checkpoints/bespoke-000002.safetensors")
    if not any(key.endswith(".lora_down.weight") for key in safetensors_keys(source)):
        raise UserError(f"kohya.controlnet.lora = {lora}: holds no LoRA weights (no '<module>.lora_down.weight' keys); give a LoRA from a kohya run's checkpoints/")
    write_atomic(target, lambda tmp: shutil.copyfile(source, tmp))
    return []


def token_notes(run_dir: Path, preset: KohyaPreset) -> list[str]:
    """Textual inversion learns only from captions that contain its token: say how many prepared captions lack it."""
    ti = preset.settings.textual_inversion
    assert ti is not None
    d = preset.dataset
    folder = run_dir / DATA / training_folder_name(d.num_repeats, d.concept)
    captions = sorted(folder.glob(f"*{d.caption_extension}"))
    lacking = [p.stem for p in captions if ti.token_string not in p.read_text(encoding="utf-8").lower()]
    if not lacking:
        return []
    return [f"{len(lacking)} of {len(captions)} captions do not contain kohya.textual_inversion.token_string {ti.token_string!r} "
            f"({', '.join(lacking[:3])}{' …' if len(lacking) > 3 else ''}): the embedding learns nothing from them; "
            "add the token to those captions or choose a token every caption has"]
