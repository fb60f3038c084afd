"""Render a preset into what sd-scripts reads: train.toml, dataset.toml, sample_prompts.txt.

The builders are pure (preset in, dict out) so tests can assert exact values.
Paths inside the TOML files are relative to the run directory, and sd-scripts is
launched with the run directory as its working directory: a run can be moved or
copied to another machine and still train.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from .captions import for_training
from .dataset import DatasetReport, Prepared, prepare, split_heldout, training_folder_name
from .errors import UserError
from .presets import Preset

from .runfolder import CHECKPOINTS, DATA, TENSORBOARD

TOKENIZER_CACHE = "tokenizer_cache"


def train_args(preset: Preset, run_id: str = "", validate: bool | None = None) -> dict[str, dict[str, Any]]:
    """sd-scripts `--config_file` contents, grouped in sections (sd-scripts flattens them).

    Types matter: sd-scripts never converts config-file values, so resolution is
    the string "R,R" and network_alpha a float. ``validate``: whether the run holds
    images out (see :func:`validating`); None: whenever dataset.validation_split > 0.
    """
    k = preset.kohya
    if k is None:
        raise ValueError(f"preset {preset.name} is not a kohya preset")
    model: dict[str, Any] = {"pretrained_model_name_or_path": k.pretrained_model_name_or_path}
    network: dict[str, Any] = {"network_module": k.network_module, "network_dim": k.network_dim, "network_alpha": float(k.network_alpha)}
    optimizer: dict[str, Any] = {"optimizer_type": k.optimizer_type, "learning_rate": k.learning_rate}
    if k.unet_lr is not None:
        optimizer["unet_lr"] = k.unet_lr
    if k.text_encoder_lr == 0:
        network["network_train_unet_only"] = True
    elif k.text_encoder_lr is not None:
        optimizer["text_encoder_lr"] = k.text_encoder_lr
    optimizer["lr_scheduler"] = k.lr_scheduler
    if k.lr_scheduler == "cosine_with_restarts":
        optimizer["lr_scheduler_num_cycles"] = k.lr_scheduler_num_cycles
    if k.lr_warmup_steps:
        optimizer["lr_warmup_steps"] = k.lr_warmup_steps
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
    if _validate(preset, validate):
        # sd-scripts v0.10.1 already validates every epoch when a validation set exists; said
        # explicitly so the config shows it. No max_validation_steps: the held-out images are
        # seen once each (validation ignores num_repeats), a few batches × 4 timesteps an epoch.
        training["validate_every_n_epochs"] = 1
    saving: dict[str, Any] = {
        "output_dir": CHECKPOINTS,
        "output_name": k.output_name,
        "save_model_as": "safetensors",
        "save_every_n_epochs": k.save_every_n_epochs,
        "save_precision": k.save_precision,
    }
    if k.save_state:
        saving["save_state"] = True
    # console_log_simple: one plain line per log message instead of rich's wrapped boxes, so it parses.
    logging: dict[str, Any] = {"logging_dir": TENSORBOARD, "log_prefix": preset.name + "-", "console_log_simple": True}
    if run_id:
        logging["training_comment"] = f"bespoke-kohya run {run_id} preset {preset.name}"
    return {"model": model, "network": network, "optimizer": optimizer, "training": training, "saving": saving, "logging": logging}


def dataset_config(preset: Preset, validate: bool | None = None) -> dict[str, Any]:
    """sd-scripts `--dataset_config` contents: one DreamBooth subset with repeats and .txt captions.

    With ``validate`` (None: whenever dataset.validation_split > 0) the dataset carries
    validation_split and validation_seed, which sd-scripts v0.10.1 reads per dataset
    (config_util's DATASET_ASCENDABLE_SCHEMA) and splits off with `split_train_val`.
    """
    k = preset.kohya
    if k is None:
        raise ValueError(f"preset {preset.name} is not a kohya preset")
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
    subset = {
        "image_dir": f"{DATA}/{training_folder_name(d.num_repeats, d.concept)}",
        "num_repeats": d.num_repeats,
        "class_tokens": d.concept.replace("_", " "),
        "caption_extension": d.caption_extension,
    }
    dataset: dict[str, Any] = {"batch_size": k.train_batch_size}
    if _validate(preset, validate):
        dataset.update(validation_split=float(d.validation_split), validation_seed=d.validation_seed)  # the schema wants a float
    return {"general": general, "datasets": [{**dataset, "subsets": [subset]}]}


def _validate(preset: Preset, validate: bool | None) -> bool:
    return preset.dataset.validation_split > 0 if validate is None else validate


def heldout_images(run_dir: Path, preset: Preset) -> tuple[list[str], list[str]]:
    """(trained, held-out) prepared image names of a rendered run, as sd-scripts will split its image folder."""
    d = preset.dataset
    folder = run_dir / DATA / training_folder_name(d.num_repeats, d.concept)
    return split_heldout([p.name for p in folder.glob("*.png")], d.validation_split, d.validation_seed)


def validating(run_dir: Path, preset: Preset) -> bool:
    """Whether the run measures a validation loss: the split is on and holds out at least one image."""
    return bool(heldout_images(run_dir, preset)[1])


def split_notes(preset: Preset, trained: list[str], heldout: list[str]) -> list[str]:
    """One line when the split holds out nothing, or when it holds out images that are trained on anyway.

    sd-scripts v0.10.1 trains on ceil(n × (1 − split)) images and validates on round(n × split),
    so when n × split has a fraction of .5 or more one image is in both (8 × 0.1: 8 trained, 1 held out).
    """
    split, n = preset.dataset.validation_split, len(set(trained) | set(heldout))
    if split <= 0 or n == 0:
        return []
    if not heldout:
        better = _disjoint_split(n, 1)
        fix = f"set dataset.validation_split={better} to hold out 1, or 0 to turn it off" if better else "set dataset.validation_split=0 to turn it off"
        return [f"dataset.validation_split={split} holds out no image of {n} (round({n} × {split}) = 0): no validation loss and no held-out captions this run; {fix}"]
    both = sorted(set(trained) & set(heldout))
    if not both:
        return []
    better = _disjoint_split(n, len(heldout))
    fix = f"; dataset.validation_split={better} keeps them apart" if better else ""
    return [f"dataset.validation_split={split} of {n} images trains on {len(trained)} and holds out {len(heldout)}, so {len(both)} held-out image(s) "
            f"({', '.join(both[:3])}) are trained on too (sd-scripts v0.10.1 rounds the two parts separately){fix}"]


def _disjoint_split(n: int, held: int) -> float | None:
    """A validation_split (≤ 0.5, 4 decimals) holding out ``held`` of ``n`` images that are not also trained on (any seed)."""
    if held < 1:
        return None
    split = round((held + 0.25) / n, 4)  # a quarter image past `held`: clear of both roundings
    names = [str(i) for i in range(n)]
    trained, heldout = split_heldout(names, split, 0) if split <= 0.5 else (names, [])
    return split if len(heldout) == held and not set(trained) & set(heldout) else None


def sample_prompts(preset: Preset) -> str:
    """sd-scripts' prompt-file format (one prompt a line with --n/--w/--h/--l/--s/--d options), for reference and for sd-scripts' own sampler."""
    s = preset.sample
    width, height = preset.sample_size
    lines = [f"# {preset.name}: the fixed prompt suite; bespoke-kohya samples these for every epoch with seeds {s.seeds}"]
    for prompt in s.full_prompts():
        for seed in s.seeds:
            lines.append(f"{prompt} --n {s.negative_prompt} --w {width} --h {height} --l {s.guidance_scale} --s {s.steps} --d {seed}")
    return "\n".join(lines) + "\n"


def advice(preset: Preset) -> list[str]:
    """Warnings about a valid preset that sd-scripts would not give until it is too late."""
    notes = []
    k = preset.kohya
    if k and preset.family == "sdxl" and k.clip_skip is not None:
        notes.append("clip_skip is set for an SDXL preset: sd-scripts v0.10.1 only warns 'clip_skip will be unexpected' for SDXL (library/sdxl_train_util.py); kept as configured")
    if k and k.resolution < 64:
        notes.append(f"resolution {k.resolution} px gives {k.resolution // 8}x{k.resolution // 8} latents; expect failure or garbage (this is the native-24 experiment)")
    if k and k.pretrained_model_name_or_path == "runwayml/stable-diffusion-v1-5":
        notes.append("runwayml/stable-diffusion-v1-5 (as documented) was removed from the Hugging Face hub in 2024; unless it is in your cache, use the same weights with --set pretrained_model_name_or_path=stable-diffusion-v1-5/stable-diffusion-v1-5")
    if k and k.optimizer_type == "AdamW8bit":
        notes.append("AdamW8bit needs bitsandbytes and a CUDA GPU")
    return notes


# --------------------------------------------------------------- writing runs


@dataclass
class RenderedRun:
    """A run directory with configs and prepared data, ready to launch."""

    run_dir: Path
    prepared: Prepared
    warnings: list[str]
    captions: dict[str, Any] = field(default_factory=dict)  # dataset.captions mode and what it changed, for run.json
    heldout: list[str] = field(default_factory=list)  # prepared image files held out (dataset.validation_split), for run.json


def _toml(data: dict[str, Any]) -> str:
    return tomli_w.dumps(data)


def _header(preset_name: str) -> str:
    return f"# Rendered by bespoke-kohya from preset {preset_name}; paths are relative to the run directory.\n"


def write_train_toml(run_dir: Path, args: dict[str, dict[str, Any]], preset_name: str) -> None:
    """Write config/train.toml atomically (it is rewritten when an existing run changes device)."""
    path = run_dir / "config" / "train.toml"
    tmp = path.with_name(".train.toml.tmp")
    tmp.write_text(_header(preset_name) + _toml(args), encoding="utf-8")
    os.replace(tmp, path)


def rewrite_config(run_dir: Path, preset: Preset, write_preset_json: bool = True) -> None:
    """Re-render an existing run's config from a changed preset (a new base, CPU precision): preset.json and the engine's files."""
    from .engines import get_engine
    from .jsonfile import write_json_atomic

    if write_preset_json:
        write_json_atomic(run_dir / "config" / "preset.json", preset.model_dump(mode="json"))
    get_engine(preset.engine).write_config(run_dir, preset, run_dir.name)


def write_kohya_config(run_dir: Path, preset: Preset, run_id: str) -> None:
    """sd-scripts' own files: config/train.toml and config/dataset.toml (the kohya engine's config).

    Validation is rendered only when the split holds out an image of the prepared folder:
    a validation set of none is no measurement (render warns once, see split_notes).
    """
    validate = validating(run_dir, preset)
    write_train_toml(run_dir, train_args(preset, run_id, validate), preset.name)
    (run_dir / "config" / "dataset.toml").write_text(_header(preset.name) + _toml(dataset_config(preset, validate)), encoding="utf-8")


def write_run_files(preset: Preset, report: DatasetReport, run_dir: Path, run_id: str) -> RenderedRun:
    """Write configs and prepared data into an existing, empty ``run_dir``."""
    d = preset.dataset
    report, caption_notes, caption_record = for_training(report, d.captions)
    prepared = prepare(
        report,
        run_dir / DATA,
        resolution=preset.resolution,
        num_repeats=d.num_repeats,
        concept=d.concept,
        default_caption=d.default_caption,
        background=d.alpha_background,
        caption_extension=d.caption_extension,
    )
    config = run_dir / "config"
    config.mkdir()
    (config / "preset.json").write_text(json.dumps(preset.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    from .engines import get_engine

    get_engine(preset.engine).write_config(run_dir, preset, run_id)
    (config / "sample_prompts.txt").write_text(sample_prompts(preset), encoding="utf-8")
    trained, heldout = heldout_images(run_dir, preset)
    warnings = prepared.warnings + caption_notes + advice(preset) + split_notes(preset, trained, heldout)
    return RenderedRun(run_dir=run_dir, prepared=prepared, warnings=warnings, captions=caption_record, heldout=heldout)


def create_run_dir(target: Path, build) -> Any:
    """Create ``target`` atomically: ``build(tmp_dir)`` fills a hidden sibling that is renamed into place.

    An existing target is never overwritten; a failure or Ctrl-C leaves nothing behind.
    """
    target = target.resolve()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"{target}: already exists; runs are never overwritten, choose another --out/--run-dir or remove it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; a run is an ordinary folder
        result = build(tmp)
        _move_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished ``tmp`` to ``target``; another process that got there first is a one-line refusal."""
    try:
        if target.exists():
            target.rmdir()  # an empty folder the user made on purpose (fails if someone filled it)
        os.rename(tmp, target)  # fails if target appeared and is not empty
    except OSError:
        if target.exists():
            raise UserError(f"{target}: already exists (another render created it); runs are never overwritten, choose another --out/--run-dir") from None
        raise


def render(preset: Preset, report: DatasetReport, out_dir: Path, run_id: str) -> RenderedRun:
    """Render configs + prepared data into a new directory ``out_dir`` (atomically)."""
    rendered = create_run_dir(out_dir, lambda tmp: write_run_files(preset, report, tmp, run_id))
    # Built in a temporary sibling: point the result at the final location.
    rendered.run_dir = out_dir.resolve()
    rendered.prepared.folder = rendered.run_dir / DATA / rendered.prepared.folder.name
    return rendered
