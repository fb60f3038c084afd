"""`sample`: every epoch's LoRA on one base model, the same prompts × seeds for each.

The base pipeline is loaded once; each epoch's kohya LoRA is applied, the fixed
prompt suite is drawn with one ``torch.Generator`` per image, and the LoRA is
removed again before the next epoch, so the only thing that differs between
epoch columns is the LoRA. Every image is written three times: full size, the
true 24×24 result of post-processing, and a NEAREST ×8 preview. ``samples.json``
(paths in it are relative to the run folder) is merged, so sampling epochs one at
a time accumulates.

Nothing is half-written: an epoch's images are built in a hidden folder that is
renamed into place when the epoch is complete, and ``samples.json`` is replaced
atomically after each epoch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch
from PIL import Image

from .errors import UserError
from .jsonfile import write_json_atomic
from .preflight import PIPELINE_CLASSES
from .preflight import check_model_index as _check_model_index
from .images import enlarge, save_png
from .presets import Preset, SampleSettings

if TYPE_CHECKING:  # diffusers is heavy; it is imported only when a base is loaded
    from diffusers import DiffusionPipeline

SAMPLES_JSON = "samples.json"
FORMAT_VERSION = 1
PREVIEW_FACTOR = 8
ADAPTER = "epoch"
SINGLE_FILE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Metadata sd-scripts writes into every LoRA that is worth keeping next to the samples.
KEPT_METADATA = ("ss_epoch", "ss_network_dim", "ss_network_alpha", "ss_base_model_version", "ss_output_name", "ss_steps")


@dataclass(frozen=True)
class SampleJob:
    """One epoch column: the LoRA file to apply, or ``None`` for the base model alone (epoch 0)."""

    epoch: int
    lora: Path | None


# ------------------------------------------------------------------ device and base model


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
            raise UserError(f"--device {device}: no CUDA GPU is visible to torch {torch.__version__}; use --device cpu (slow) or install a CUDA build of torch")
        index = int(match.group(1) or 0)
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible (cuda:0 … cuda:{torch.cuda.device_count() - 1})")
        return wanted, torch.float16
    raise UserError(f"--device {device!r}: expected auto, cpu, cuda, cuda:N or mps")


def _hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE is set (read now, so a test or the CLI can set it at run time)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def base_source(preset: Preset, base_override: str | None = None) -> str:
    """The base model a kohya preset samples on: ``base_override`` or the preset's own."""
    if preset.engine != "kohya" or preset.kohya is None:
        raise UserError(f"preset {preset.name} uses the {preset.engine} engine, which has its own sampler; `sample` draws kohya LoRA runs")
    source = (base_override or preset.kohya.pretrained_model_name_or_path or "").strip()
    if not source:
        raise UserError(f"preset {preset.name}: kohya.pretrained_model_name_or_path is empty; pass the base model with --base /path/to/model.safetensors")
    return source


def load_base(preset: Preset, device: str | None = None, base_override: str | None = None) -> "DiffusionPipeline":
    """Load the run's base model once: a hub id, a local diffusers folder, or a single-file ``.safetensors``.

    SD1.5 presets get a ``StableDiffusionPipeline``, SDXL ones a
    ``StableDiffusionXLPipeline``, in fp16 on CUDA and fp32 elsewhere. Weights are
    read from safetensors only and remote code is never trusted. A hub id must
    already be in the Hugging Face cache when ``HF_HUB_OFFLINE`` is set (and on a
    machine without network); otherwise the UserError says how to get it.
    """
    import diffusers

    source = base_source(preset, base_override)
    family = preset.family or "sd15"
    cls = getattr(diffusers, PIPELINE_CLASSES[family])
    dev, dtype = resolve_device(device)
    offline = _hub_offline()
    kwargs: dict[str, Any] = _dtype_kwargs(dtype)
    if family == "sd15":
        # The SD safety checker replaces flagged images by black ones; a false positive would
        # read as a failed epoch in the comparison, and kohya's own sampler runs without it.
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    path = Path(source).expanduser()
    if path.is_dir():
        _check_model_index(path, family)
        pipe = _load(lambda: cls.from_pretrained(str(path), use_safetensors=True, local_files_only=True, **kwargs),
                     f"{path}: could not load this diffusers folder", "it needs .safetensors weights for every component; re-save it with save_pretrained(safe_serialization=True)")
    elif path.is_file():
        suffix = path.suffix.lower()
        if suffix in PICKLE_SUFFIXES:
            raise UserError(f"{path}: {suffix} checkpoints are Python pickles, which can run code when loaded; bespoke-kohya loads .safetensors only. Use the model's .safetensors release or convert it once in a trusted environment")
        if suffix not in SINGLE_FILE_SUFFIXES:
            raise UserError(f"{path}: unknown model file type {suffix!r}; pass a .safetensors checkpoint, a diffusers folder or a hub id")
        single_kwargs = {k: v for k, v in kwargs.items() if k != "requires_safety_checker"}
        pipe = _load(lambda: cls.from_single_file(str(path), local_files_only=offline, **single_kwargs),
                     f"{path}: could not load this single-file checkpoint",
                     f"diffusers also needs the {family} component configs, which it fetches from the hub once; run once online, or convert the file to a diffusers folder")
    elif HUB_ID.match(source) and not source.startswith((".", "~", "/")):
        hint = f"download it once with `hf download {source}` on a machine with network, or pass a local diffusers folder or .safetensors file with --base PATH"
        reason = "it is not in the Hugging Face cache and HF_HUB_OFFLINE is set" if offline else "it is not in the Hugging Face cache and could not be downloaded"
        pipe = _load(lambda: cls.from_pretrained(source, use_safetensors=True, local_files_only=offline, **kwargs), f"base model {source!r}: {reason}", hint)
    else:
        raise UserError(f"base model {source}: no such file or folder; pass a diffusers folder, a .safetensors checkpoint or a hub id like runwayml/stable-diffusion-v1-5")
    pipe.to(dev)
    # The sampler shows its own progress; diffusers' per-call bars would interleave with it.
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """The loader's dtype argument: diffusers renamed ``torch_dtype`` to ``dtype`` (the old name
    warns until 1.0), and releases before the rename ignore an unknown ``dtype`` silently."""
    from diffusers.utils import deprecation_utils

    return {"dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype": dtype}


def _load(build, what: str, hint: str):
    """Run a diffusers loader, turning its environment errors into one UserError with the fix."""
    try:
        return build()
    except (OSError, ValueError, EnvironmentError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise UserError(f"{what} ({detail[:300]}); {hint}") from None


# ------------------------------------------------------------------ schedulers and LoRAs


def scheduler_for(name: str, config: Any) -> Any:
    """The preset's scheduler, built from the base's own scheduler config (keeps its betas and offsets)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, PNDMScheduler

    if name == "euler_a":
        return EulerAncestralDiscreteScheduler.from_config(config)
    if name == "euler":
        return EulerDiscreteScheduler.from_config(config)
    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")
    if name == "pndm":
        return PNDMScheduler.from_config(config)
    raise UserError(f"sample.scheduler: unknown scheduler {name!r}; expected euler_a, euler, ddim, dpmsolver++ or pndm")


def lora_sha256(path: Path) -> str:
    """SHA-256 of a LoRA file, so the report can tell samples of a since-retrained epoch."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        raise UserError(f"{path}: LoRA file not found; check run.json's checkpoints or train the run first") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read this LoRA file ({exc.strerror or exc})") from None
    return digest.hexdigest()


def _read_safetensors(path: Path, with_tensors: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """({key: tensor or None}, metadata) of a LoRA file; missing or damaged files raise UserError."""
    from safetensors import safe_open

    if not path.is_file():
        raise UserError(f"{path}: LoRA file not found; check run.json's checkpoints or train the run first")
    if path.suffix.lower() != ".safetensors":
        raise UserError(f"{path}: LoRA files are loaded from .safetensors only (got {path.suffix or 'no suffix'}); save the LoRA with save_model_as = \"safetensors\"")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: (f.get_tensor(key) if with_tensors else None) for key in f.keys()}
    except Exception as exc:  # safetensors raises its own SafetensorError, not an OSError subclass
        raise UserError(f"{path}: not a readable .safetensors file ({exc.__class__.__name__}: {str(exc)[:200]}); the file is corrupt or truncated, copy it again or retrain this epoch") from None
    if not lora_module_names(tensors):
        example = next(iter(tensors), "no tensors at all")
        raise UserError(f"{path}: holds no LoRA weights (no '<module>.lora_down.weight' keys; first key: {example}); is it a LoRA from sd-scripts' networks.lora?")
    return tensors, metadata


def lora_header(path: Path) -> dict[str, str]:
    """Check a LoRA file cheaply (header and key names, no tensor data); returns its metadata."""
    return _read_safetensors(path, with_tensors=False)[1]


def read_lora(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a LoRA ``.safetensors`` file; missing, corrupt or non-LoRA files raise UserError."""
    return _read_safetensors(path, with_tensors=True)


def lora_module_names(tensors: dict[str, Any]) -> set[str]:
    """The module names a LoRA state dict adapts (kohya ``lora_down`` or diffusers/peft ``lora_A`` style)."""
    names = set()
    for key in tensors:
        for tail in (".lora_down.weight", ".lora_A.weight", ".lora.down.weight"):
            if key.endswith(tail):
                names.add(key[: -len(tail)])
    return names


def _adapted_modules(pipe: Any, adapter: str) -> int:
    """How many layers of the pipeline carry the named adapter after loading."""
    count = 0
    for name in ("unet", "text_encoder", "text_encoder_2"):
        component = getattr(pipe, name, None)
        if component is None:
            continue
        for module in component.modules():
            lora_a = getattr(module, "lora_A", None)
            if lora_a is not None and adapter in lora_a:
                count += 1
    return count


def apply_lora(pipe: Any, path: Path, adapter: str = ADAPTER) -> dict[str, str]:
    """Load a kohya LoRA into the pipeline as ``adapter``; returns the file's metadata.

    diffusers converts kohya's ``lora_unet_*``/``lora_te_*`` names itself but only
    warns about modules it cannot place; such a LoRA (trained for another base or
    family) would silently sample as the base, so every module must find a layer.
    """
    tensors, metadata = read_lora(path)
    expected = len(lora_module_names(tensors))
    try:
        with _quiet_loaders():
            pipe.load_lora_weights(tensors, adapter_name=adapter)
    except (ValueError, RuntimeError, KeyError) as exc:
        _remove_lora(pipe)
        first = str(exc).strip().splitlines()
        raise UserError(f"{path}: does not fit this base model ({' '.join(first[:2])[:300]}); was it trained on another base or family (its ss_base_model_version: {metadata.get('ss_base_model_version', 'not recorded')})?") from None
    applied = _adapted_modules(pipe, adapter)
    if applied < expected:
        _remove_lora(pipe)
        raise UserError(
            f"{path}: only {applied} of its {expected} LoRA modules match a layer of the base model, so it would be partly ignored; "
            f"it was probably trained for another base or family (its ss_base_model_version: {metadata.get('ss_base_model_version', 'not recorded')})"
        )
    return metadata


@contextmanager
def _quiet_loaders() -> Iterator[None]:
    """Silence diffusers' and transformers' load logs while a LoRA is applied.

    With transformers 5 a text-encoder LoRA prints a "LOAD REPORT" listing every base
    weight as MISSING / newly initialised, which is false (the tests prove the base output
    is unchanged), and a U-Net-only LoRA logs "No LoRA keys associated to CLIPTextModel".
    Neither helps the user; :func:`apply_lora` checks that every module was placed instead.
    Exceptions still propagate.
    """
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    before = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    bars = transformers_logging.is_progress_bar_enabled()  # its "Loading weights" bar, once per epoch
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(before[0])
        transformers_logging.set_verbosity(before[1])
        if bars:
            transformers_logging.enable_progress_bar()


def _remove_lora(pipe: Any) -> None:
    """Take every LoRA layer out again, restoring the base weights exactly (nothing was fused)."""
    pipe.unload_lora_weights()


@contextmanager
def lora_applied(pipe: Any, path: Path | None) -> Iterator[dict[str, str]]:
    """Within the block the pipeline carries the LoRA at ``path`` (none when ``path`` is None)."""
    if path is None:
        yield {}
        return
    metadata = apply_lora(pipe, path)
    try:
        yield metadata
    finally:
        _remove_lora(pipe)


# ------------------------------------------------------------------ sampling


def prompt_ids(prompts: list[str]) -> list[str]:
    """``p01``, ``p02``, … in suite order (zero-padded so files sort like the suite)."""
    width = max(2, len(str(len(prompts))))
    return [f"p{i + 1:0{width}d}" for i in range(len(prompts))]


def generate(pipe: Any, prompt: str, seed: int, settings: SampleSettings, size: tuple[int, int], negative_prompt: str, clip_skip: int | None = None) -> Image.Image:
    """One full-size image; its own generator seeded with ``seed``, so it does not depend on what else is drawn."""
    device = pipe.device.type
    # On mps a CPU generator: diffusers then draws the noise on the CPU and moves it, which
    # works on every torch version and gives the same starting noise as a CPU run.
    generator = torch.Generator(device="cpu" if device == "mps" else pipe.device).manual_seed(seed)
    width, height = size
    result = pipe(
        prompt=prompt,
        negative_prompt=negative_prompt or None,
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance_scale,
        width=width,
        height=height,
        generator=generator,
        clip_skip=clip_skip,
        output_type="pil",
    )
    return result.images[0]


def _save_png_atomic(im: Image.Image, path: Path) -> None:
    """Write a PNG beside its final name and rename it, so a crash never leaves half an image."""
    tmp = path.with_name(f".{path.name}.tmp")
    save_png(im, tmp)
    os.replace(tmp, path)


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to the run folder when it lies inside it, else absolute (POSIX separators)."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def _options_record(options: Any) -> dict[str, Any]:
    """The post-processing options as JSON (the palette as its size and a hash, not every colour)."""
    palette = getattr(options, "palette", None)
    record = {name: getattr(options, name, None) for name in ("method", "max_delta_e", "merge", "max_colors")}
    if palette is None:
        record["palette"] = None
    else:
        arr = np.ascontiguousarray(np.asarray(palette, dtype=np.uint8))
        record["palette"] = {"colours": int(arr.shape[0]), "sha256": hashlib.sha256(arr.tobytes()).hexdigest()}
    return record


def suite_record(pipe: Any, prompts: list[str], seeds: list[int], settings: SampleSettings, size: tuple[int, int], negative_prompt: str, options: Any, clip_skip: int | None) -> dict[str, Any]:
    """Everything that decides what an epoch's images look like, apart from the LoRA."""
    recorded = settings.model_dump(mode="json")
    recorded.update(
        width=size[0], height=size[1], negative_prompt=negative_prompt, clip_skip=clip_skip,
        base=str(getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path", "")),
        pipeline=pipe.__class__.__name__, device=pipe.device.type, dtype=str(pipe.dtype).removeprefix("torch."),
        postprocess_options=_options_record(options),
    )
    return {"settings": recorded, "prompts": [{"id": pid, "prompt": p} for pid, p in zip(prompt_ids(prompts), prompts)], "seeds": list(seeds)}


def suite_id(suite: dict[str, Any]) -> str:
    """A short hash of the suite: epochs with the same id were drawn the same way and are comparable."""
    canonical = json.dumps(suite, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def read_samples_json(path: Path) -> dict[str, Any] | None:
    """An existing samples.json, or None; a damaged one is an error, never silently replaced."""
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); delete it (and the epoch-* folders beside it) and sample again") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("epochs"), dict):
        raise UserError(f"{path}: has no 'epochs' table, so it was not written by `sample`; delete it and sample again")
    if doc.get("version") != FORMAT_VERSION:
        raise UserError(f"{path}: format version {doc.get('version')!r}, this bespoke-kohya writes {FORMAT_VERSION}; delete it and sample again")
    return doc


@contextmanager
def _staged_epoch(out_dir: Path, name: str) -> Iterator[Path]:
    """A private folder to draw an epoch into; on success it replaces ``out_dir/name`` whole, on failure it is removed."""
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_dir))
    try:
        yield staging
        staging.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
        _swap_in(staging, out_dir / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_in(staging: Path, final: Path) -> None:
    """Replace ``final`` by the complete ``staging`` folder (the old one is removed only afterwards)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
    staging.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_sample(full: Image.Image, staging: Path, final_rel: str, pid: str, prompt: str, seed: int, options: Any) -> dict[str, Any]:
    """Post-process one sample and write its three files; the record names them by their final paths."""
    from .postprocess import postprocess

    art, grid = postprocess(full, options)
    stem = f"{pid}-s{seed}"
    _save_png_atomic(full, staging / f"{stem}.png")
    _save_png_atomic(art, staging / f"{stem}.24.png")
    _save_png_atomic(enlarge(art, PREVIEW_FACTOR), staging / f"{stem}.x8.png")
    return {
        "prompt_id": pid, "prompt": prompt, "seed": seed,
        "full": f"{final_rel}/{stem}.png", "art": f"{final_rel}/{stem}.24.png", "preview": f"{final_rel}/{stem}.x8.png",
        "grid": grid.to_dict() if grid is not None else None,
    }


def _epoch_images(pipe: Any, staging: Path, final_rel: str, prompts: list[str], seeds: list[int], settings: SampleSettings,
                  size: tuple[int, int], negative_prompt: str, options: Any, clip_skip: int | None, tick) -> list[dict[str, Any]]:
    """Draw the suite into ``staging``; the records name the files by their final paths."""

    images = []
    for pid, prompt in zip(prompt_ids(prompts), prompts):
        for seed in seeds:
            full = generate(pipe, prompt, seed, settings, size, negative_prompt, clip_skip)
            images.append(_write_sample(full, staging, final_rel, pid, prompt, seed, options))
            tick()
    return images


def _check_suite(prompts: list[str], seeds: list[int], size: tuple[int, int], factor: int = 8) -> None:
    """Refuse an empty or ambiguous suite before any model time is spent."""
    if not prompts or any(not p.strip() for p in prompts):
        raise UserError("sample: the prompt suite is empty or has an empty prompt; give at least one prompt")
    if not seeds:
        raise UserError("sample: no seeds given; give at least one, e.g. --seeds 1,2,3,4")
    dupes = sorted({s for s in seeds if seeds.count(s) > 1})
    if dupes:
        raise UserError(f"sample: seeds repeat ({', '.join(map(str, dupes))}); each seed names one image file, give each once")
    if any(s < 0 for s in seeds):
        raise UserError(f"sample: seeds must be ≥ 0, got {seeds}")
    if size[0] % factor or size[1] % factor or min(size) < factor:
        raise UserError(f"sample: width and height must be multiples of {factor} (the VAE downsamples {factor}×), got {size[0]}x{size[1]}")


def sample_epochs(
    pipe: Any,
    jobs: list[SampleJob],
    prompts: list[str],
    seeds: list[int],
    settings: SampleSettings,
    out_dir: Path,
    *,
    size: tuple[int, int],
    negative_prompt: str,
    postprocess_options: Any,
    progress: bool = True,
    clip_skip: int | None = None,
) -> dict[str, Any]:
    """Draw every job's prompts × seeds into ``out_dir`` (``RUN/samples``) and return the merged samples.json.

    Writes ``epoch-NNN/<prompt-id>-s<seed>.png`` (full size), ``.24.png`` (24×24
    result) and ``.x8.png`` (×8 preview). Paths in samples.json are relative to the
    run folder (``out_dir``'s parent). The same seeds, steps, guidance and scheduler
    are used for every epoch; epoch 0 (``lora=None``) is the base model alone.
    ``clip_skip`` follows diffusers (1 = penultimate CLIP layer, kohya's clip_skip 2).
    """
    _check_suite(prompts, seeds, size, int(getattr(pipe, "vae_scale_factor", 8)))
    epochs = [job.epoch for job in jobs]
    if len(set(epochs)) != len(epochs):
        raise UserError(f"sample: an epoch is listed twice ({epochs}); list each once")
    for job in jobs:  # fail on a missing or damaged file before minutes of sampling other epochs
        if job.lora is not None:
            lora_header(job.lora)
    run_dir = out_dir.parent
    json_path = out_dir / SAMPLES_JSON
    doc = read_samples_json(json_path) or {"version": FORMAT_VERSION, "epochs": {}}
    pipe.scheduler = scheduler_for(settings.scheduler, pipe.scheduler.config)
    suite = suite_record(pipe, prompts, seeds, settings, size, negative_prompt, postprocess_options, clip_skip)
    sid = suite_id(suite)
    doc.update(suite, suite_id=sid)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _progress(progress, len(jobs) * len(prompts) * len(seeds)) as tick:
        for job in jobs:
            name = f"epoch-{job.epoch:03d}"
            with _staged_epoch(out_dir, name) as staging:
                started = time.perf_counter()
                entry: dict[str, Any] = {"checkpoint": None, "sha256": None, "base_only": job.lora is None}
                if job.lora is not None:
                    entry.update(checkpoint=_rel(job.lora, run_dir), sha256=lora_sha256(job.lora))
                with lora_applied(pipe, job.lora) as metadata:
                    images = _epoch_images(pipe, staging, f"{out_dir.name}/{name}", prompts, seeds, settings, size, negative_prompt, postprocess_options, clip_skip, tick)
            entry.update(
                lora_metadata={k: metadata[k] for k in KEPT_METADATA if k in metadata},
                suite_id=sid, sampled=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                seconds=round(time.perf_counter() - started, 3), images=images,
            )
            doc["epochs"][str(job.epoch)] = entry
            doc["epochs"] = dict(sorted(doc["epochs"].items(), key=lambda kv: int(kv[0])))
            write_json_atomic(json_path, doc)  # after every epoch, so an interruption keeps finished ones
    return doc


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Any]:
    """A rich progress bar on stderr (or a no-op) yielding a function to call per image."""
    if not enabled:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("sampling"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True)) as bar:
        task = bar.add_task("sampling", total=total)
        yield lambda: bar.advance(task)


# ------------------------------------------------------------------ a whole run


def read_prompts_file(path: Path) -> list[str]:
    """Prompts from a text file: one full prompt per line; blank lines and ``#`` comments are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"--prompts {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--prompts {path}: cannot read it as UTF-8 text ({exc})") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise UserError(f"--prompts {path}: no prompts in it (one prompt per line; # starts a comment)")
    return prompts


def kohya_clip_skip_to_diffusers(preset: Preset) -> int | None:
    """The diffusers ``clip_skip`` matching the preset's training: kohya counts the last layer as 1, diffusers as 0.

    SDXL pipelines always use the penultimate layer, as sd-scripts' SDXL training does,
    so nothing is passed for them.
    """
    if preset.family != "sd15" or preset.kohya is None or not preset.kohya.clip_skip or preset.kohya.clip_skip < 2:
        return None
    return preset.kohya.clip_skip - 1


def postprocess_options_for(settings: SampleSettings, dataset_dir: Path | None) -> Any:
    """PostprocessOptions from the preset: the method, and the training palette when snapping is on."""
    from .postprocess import PostprocessOptions, dataset_palette

    palette = None
    if settings.palette_max_delta_e is not None:
        if dataset_dir is None or not dataset_dir.is_dir():
            raise UserError(
                f"sample.palette_max_delta_e = {settings.palette_max_delta_e} snaps colours to the training palette, but the training images "
                f"are not at {dataset_dir}; put them back there or pass --dataset FOLDER"
            )
        palette = dataset_palette(dataset_dir)
    merge = {"auto": "auto", "on": True, "off": False}[settings.merge]
    if palette is None:
        return PostprocessOptions(method=settings.postprocess, merge=merge, max_colors=settings.max_colors)
    return PostprocessOptions(method=settings.postprocess, palette=palette, max_delta_e=settings.palette_max_delta_e, merge=merge, max_colors=settings.max_colors)


def select_jobs(run_dir: Path, record: dict[str, Any], epochs: list[int] | None, include_base: bool) -> list[SampleJob]:
    """The epochs to sample (all recorded ones by default) with their checkpoint paths."""
    recorded = {int(k): v for k, v in (record.get("epochs") or {}).items()}
    if not recorded and not include_base:
        raise UserError(f"{run_dir}: run.json records no epoch checkpoints yet (status {record.get('status')!r}); train it first")
    wanted = sorted(recorded) if epochs is None else epochs
    missing = [e for e in wanted if e not in recorded]
    if missing:
        have = ", ".join(map(str, sorted(recorded))) or "none"
        raise UserError(f"--epochs: {', '.join(map(str, missing))} not in {run_dir / 'run.json'} (recorded epochs: {have})")
    jobs = [SampleJob(0, None)] if include_base else []
    return jobs + [SampleJob(e, run_dir / recorded[e]) for e in wanted]


def sample_run(
    run_dir: Path,
    *,
    epochs: list[int] | None = None,
    prompts_file: Path | None = None,
    seeds: list[int] | None = None,
    device: str | None = None,
    include_base: bool = False,
    base_override: str | None = None,
    dataset_dir: Path | None = None,
    progress: bool = True,
    prompts: list[str] | None = None,
) -> dict[str, Any]:
    """`bespoke-kohya sample --run RUN`: sample the run's epochs into ``RUN/samples`` and return samples.json."""
    from pydantic import ValidationError

    from .presets import format_validation_error
    from .train import read_run

    record = read_run(run_dir)
    try:
        preset = Preset.model_validate(record["resolved"])
    except (KeyError, ValidationError) as exc:
        detail = format_validation_error("run.json resolved", exc) if isinstance(exc, ValidationError) else "no 'resolved' preset"
        raise UserError(f"{run_dir / 'run.json'}: {detail}; the run folder was not made by this bespoke-kohya") from None
    base_source(preset, base_override)  # refuse pixel24 runs / an empty base before anything heavy
    jobs = select_jobs(run_dir, record, epochs, include_base)
    prompts = prompts or (read_prompts_file(prompts_file) if prompts_file else preset.sample.full_prompts())
    seeds = list(seeds) if seeds else list(preset.sample.seeds)
    if dataset_dir is None:
        dataset_dir = training_images_dir(run_dir, record, None)
    options = postprocess_options_for(preset.sample, dataset_dir)
    _check_suite(prompts, seeds, preset.sample_size)
    pipe = load_base(preset, device, base_override)
    return sample_epochs(
        pipe, jobs, prompts, seeds, preset.sample, run_dir / "samples",
        size=preset.sample_size, negative_prompt=preset.sample.negative_prompt, postprocess_options=options,
        progress=progress, clip_skip=kohya_clip_skip_to_diffusers(preset),
    )


# ------------------------------------------------------------------ the native pixel24 model


def _pixel24_epoch(model: Any, staging: Path, final_rel: str, prompts: list[str], seeds: list[int], steps: int, guidance: float, options: Any) -> list[dict[str, Any]]:
    """Draw the suite with a pixel24 checkpoint; the raw 24×24 output is the "full" image, its post-processed copy the result."""
    from . import pixel24

    drawn = pixel24.sample(model, prompts, seeds, steps=steps, guidance_scale=guidance)
    images = []
    for pid, prompt, row in zip(prompt_ids(prompts), prompts, drawn):
        for seed, pixels in zip(seeds, row):
            images.append(_write_sample(Image.fromarray(pixels), staging, final_rel, pid, prompt, seed, options))
    return images


def sample_pixel24(run_dir: Path, preset: Preset, jobs: list[SampleJob], prompts: list[str], seeds: list[int], options: Any, device: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Sample a pixel24 run's epochs into ``RUN/samples`` in the same layout and samples.json as the diffusers sampler."""
    from . import pixel24

    if any(job.lora is None for job in jobs):
        raise UserError("sample: --include-base has no meaning for pixel24 (there is no base model)")
    _check_suite(prompts, seeds, (24, 24), factor=1)
    assert preset.pixel24 is not None
    steps, guidance = preset.pixel24.sample_steps, preset.pixel24.guidance_scale
    out_dir = run_dir / "samples"
    json_path = out_dir / SAMPLES_JSON
    doc = read_samples_json(json_path) or {"version": FORMAT_VERSION, "epochs": {}}
    recorded = preset.sample.model_dump(mode="json")
    recorded.update(steps=steps, guidance_scale=guidance, width=24, height=24, engine="pixel24", postprocess_options=_options_record(options))
    suite = {"settings": recorded, "prompts": [{"id": pid, "prompt": p} for pid, p in zip(prompt_ids(prompts), prompts)], "seeds": list(seeds)}
    sid = suite_id(suite)
    doc.update(suite, suite_id=sid)
    warnings: list[str] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    with _progress(progress, len(jobs)) as tick:
        for job in jobs:
            assert job.lora is not None
            model = pixel24.load_checkpoint(job.lora, device)
            if not warnings:
                for prompt in prompts:
                    unknown = pixel24.encode_prompt(model, prompt)[1]
                    if unknown:
                        warnings.append(f"prompt {prompt!r}: the model never saw these words, they have no effect: {', '.join(unknown)}")
            name = f"epoch-{job.epoch:03d}"
            with _staged_epoch(out_dir, name) as staging:
                started = time.perf_counter()
                images = _pixel24_epoch(model, staging, f"{out_dir.name}/{name}", prompts, seeds, steps, guidance, options)
            doc["epochs"][str(job.epoch)] = {
                "checkpoint": _rel(job.lora, run_dir), "sha256": lora_sha256(job.lora), "base_only": False,
                "suite_id": sid, "sampled": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "seconds": round(time.perf_counter() - started, 3), "images": images,
            }
            doc["epochs"] = dict(sorted(doc["epochs"].items(), key=lambda kv: int(kv[0])))
            write_json_atomic(json_path, doc)
            tick()
    doc["warnings"] = warnings
    return doc


def _run_preset(run_dir: Path, record: dict[str, Any]) -> Preset:
    from pydantic import ValidationError

    from .presets import format_validation_error

    try:
        return Preset.model_validate(record["resolved"])
    except (KeyError, ValidationError) as exc:
        detail = format_validation_error("run.json resolved", exc) if isinstance(exc, ValidationError) else "no 'resolved' preset"
        raise UserError(f"{run_dir / 'run.json'}: {detail}; the run folder was not made by this bespoke-kohya") from None


def training_images_dir(run_dir: Path, record: dict[str, Any], dataset_dir: Path | None) -> Path | None:
    """Where the training colours come from: --dataset, the recorded dataset, else the run's own prepared copy.

    NEAREST upscaling keeps the exact colours, so the prepared folder has the same palette.
    """
    if dataset_dir is not None:
        return dataset_dir
    recorded = (record.get("dataset") or {}).get("path")
    path = None
    if recorded:
        path = Path(recorded) if Path(recorded).is_absolute() else run_dir / recorded  # bundles record it relative to the run
        if path.is_dir():
            return path
    prepared = sorted(p for p in (run_dir / "data").glob("*_*") if p.is_dir())
    # Neither: return the recorded path so the error names what is missing.
    return prepared[0] if prepared else path


def sample_any_run(
    run_dir: Path,
    *,
    epochs: list[int] | None = None,
    prompts_file: Path | None = None,
    prompts: list[str] | None = None,
    seeds: list[int] | None = None,
    device: str | None = None,
    include_base: bool = False,
    base_override: str | None = None,
    dataset_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """`bespoke-kohya sample --run RUN` for either engine: kohya LoRAs via diffusers, or pixel24 checkpoints."""
    from .train import read_run

    record = read_run(run_dir)
    preset = _run_preset(run_dir, record)
    dataset_dir = training_images_dir(run_dir, record, dataset_dir)
    if prompts is None and prompts_file is None:
        full = None
    else:
        full = list(prompts or []) + (read_prompts_file(prompts_file) if prompts_file else [])
    if preset.engine != "pixel24":
        return sample_run(run_dir, epochs=epochs, prompts=full, seeds=seeds, device=device, include_base=include_base,
                          base_override=base_override, dataset_dir=dataset_dir, progress=progress)
    jobs = select_jobs(run_dir, record, epochs, include_base)
    options = postprocess_options_for(preset.sample, dataset_dir)
    suite = full if full is not None else preset.sample.full_prompts()
    return sample_pixel24(run_dir, preset, jobs, suite, list(seeds) if seeds else list(preset.sample.seeds), options, device, progress)
