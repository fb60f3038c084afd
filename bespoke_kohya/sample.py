"""`sample`: every epoch of a run drawn with the same prompts × seeds, whatever the engine.

`draw_epochs` is the one epoch loop: the run's engine loads its model once
(`engines.<name>.sampler`) and draws each epoch's suite; every image is written
three times here: full size, the true 24×24 result of post-processing, and a
NEAREST ×8 preview. ``samples.json`` (paths in it are relative to the run folder)
is merged, so sampling epochs one at a time accumulates. Beside the suite, each held-out
image's own caption (run.json dataset.heldout) is drawn with the first ``sample.heldout_seeds``
seeds, so the report can set the draws beside the real image.

Nothing is half-written: an epoch's images are built in a hidden folder that is
renamed into place when the epoch is complete, and ``samples.json`` is replaced
atomically after each epoch. The diffusers helpers below (base model, schedulers,
kohya LoRAs) are what the kohya engine's sampler draws with.
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
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image

from .devices import resolve_device  # noqa: F401 - part of the sampling API
from .engines import EpochSampler, SampleJob, SampleOptions, get_engine
from .errors import UserError
from .images import enlarge, save_png
from .paths import hub_offline
from .preflight import PIPELINE_CLASSES
from .preflight import check_model_index as _check_model_index
from .presets import Preset, SampleSettings
from .progress import counter
from .runfolder import ADHOC, DATA, RUN_JSON, SAMPLES, inside_run, recorded_dataset
from .runfolder.lock import SAMPLE, run_lock
from .runfolder.records import RunHandle, RunRecord, SampledEpoch, Samples, read_samples, write_samples

if TYPE_CHECKING:  # diffusers is heavy; it is imported only when a base is loaded
    from diffusers import DiffusionPipeline

PREVIEW_FACTOR = 8
ADAPTER = "epoch"
SINGLE_FILE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Metadata sd-scripts writes into every LoRA that is worth keeping next to the samples.
KEPT_METADATA = ("ss_epoch", "ss_network_dim", "ss_network_alpha", "ss_base_model_version", "ss_output_name", "ss_steps")


# ------------------------------------------------------------------ device and base model


def base_source(preset: Preset, base_override: str | None = None) -> str:
    """The base model a kohya preset samples on: ``base_override`` or the preset's own."""
    if preset.kohya is None:
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
    offline = hub_offline()
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


@dataclass(frozen=True)
class HeldoutPrompt:
    """A held-out image's own caption (run.json dataset.heldout), drawn beside the suite so the report can pair them."""

    id: str  # prompt_id and file stem of its draws: `heldout-<stem>`
    prompt: str  # the caption as trained, verbatim
    file: str  # the prepared image file it describes (SampleImage.heldout)


_PLAIN_STEM = re.compile(r"[A-Za-z0-9_-]{1,80}")


def heldout_id(file: str) -> str:
    """``heldout-<stem>``: never a suite id (``p01``), and a safe file name whatever the stem holds.

    A stem with other characters becomes a slug plus ``~`` and a hash of the name; ``~`` is
    never in a plain stem, so two held-out files can never share an id.
    """
    stem = Path(file).stem
    if _PLAIN_STEM.fullmatch(stem):
        return f"heldout-{stem}"
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-")[:40] or "image"
    return f"heldout-{slug}~{hashlib.sha256(file.encode('utf-8')).hexdigest()[:8]}"


def heldout_prompts(run: RunHandle) -> tuple[list[HeldoutPrompt], list[str]]:
    """The held-out images' captions to draw, and a warning for those whose caption is not in the run's data/."""
    prompts, missing = [], []
    for file, caption in run.heldout_captions():
        if caption is None:
            missing.append(file)
        else:
            prompts.append(HeldoutPrompt(heldout_id(file), caption, file))
    warnings = [f"{len(missing)} held-out image(s) have no caption in {run.dir / DATA}, so their captions are not drawn: {', '.join(missing[:5])}"
                f"{' …' if len(missing) > 5 else ''}"] if missing else []
    return prompts, warnings


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



def suite_id(suite: dict[str, Any]) -> str:
    """A short hash of the suite: epochs with the same id were drawn the same way and are comparable."""
    canonical = json.dumps(suite, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


@contextmanager
def _staged_epoch(out_dir: Path, name: str, keep_old: bool = False) -> Iterator[Path]:
    """A private folder to draw an epoch into; on success it replaces ``out_dir/name`` whole, on failure it is removed.

    ``keep_old``: the staging folder starts as a copy of the current one, so what is drawn is added to it.
    """
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_dir))
    try:
        if keep_old and (out_dir / name).is_dir():
            shutil.copytree(out_dir / name, staging, dirs_exist_ok=True)
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



def check_suite(prompts: list[str], seeds: list[int], size: tuple[int, int], factor: int = 8) -> None:
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



# ------------------------------------------------------------------ the one epoch loop


def draw_epochs(run_dir: Path, sampler: EpochSampler, jobs: list[SampleJob], prompts: list[str], seeds: list[int], options: Any,
                progress: bool = True, adhoc: bool = False, heldout: list[HeldoutPrompt] | None = None, heldout_seeds: list[int] | None = None) -> Samples:
    """Draw every job's prompts × seeds into ``RUN/samples`` with ``sampler`` and return the merged samples.json.

    Writes ``epoch-NNN/<prompt-id>-s<seed>.png`` (full size), ``.24.png`` (24×24 result)
    and ``.x8.png`` (×8 preview); paths in samples.json are relative to the run folder.
    Each epoch is drawn into a private folder swapped in whole, and samples.json is
    rewritten after every epoch, so an interruption keeps the finished ones.

    ``adhoc``: prompts tried out beside the suite, not instead of it. They go to
    ``samples/adhoc/epoch-NNN/`` (named by the prompt's text, added to what is there) and to
    samples.json's ``adhoc`` table; the suite's folders and records, which the report
    compares, are left as they are.

    ``heldout``: held-out images' captions, each drawn with ``heldout_seeds`` into the same epoch
    folders and records as the suite (``SampleImage.heldout`` names the image); not with ``adhoc``.
    """
    epochs = [job.epoch for job in jobs]
    if len(set(epochs)) != len(epochs):
        raise UserError(f"sample: an epoch is listed twice ({epochs}); list each once")
    heldout = [] if adhoc or not heldout_seeds else list(heldout or [])
    heldout_seeds = list(heldout_seeds or []) if heldout else []
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir, SAMPLE):  # samples.json is read, merged and rewritten: one sampler at a time
        sampler.check(prompts, seeds, jobs)
        out_dir = run_dir / SAMPLES
        out_dir.mkdir(exist_ok=True)
        _remove_leftovers(out_dir)
        doc = read_samples(run_dir) or Samples()
        ids = adhoc_ids(prompts) if adhoc else prompt_ids(prompts)
        sid = None
        if not adhoc:
            settings = sampler.settings(prompts, seeds, _options_record(options))
            # How many held-out seeds is part of the suite only when held-out captions are drawn (below), so the
            # suite of a run without held-out images keeps the id it had before held-out draws existed.
            settings.pop("heldout_seeds", None)
            suite = {"settings": settings, "prompts": [{"id": pid, "prompt": p} for pid, p in zip(ids, prompts)], "seeds": list(seeds)}
            hashed = {**suite, "heldout": {"prompts": [asdict(h) for h in heldout], "seeds": heldout_seeds}} if heldout else suite
            sid = suite_id(hashed)
            doc.settings, doc.prompts, doc.seeds, doc.suite_id = suite["settings"], suite["prompts"], suite["seeds"], sid
        jobs = [job for job in jobs if not (job.if_missing and _drawn(doc, job.epoch, sid, ids, seeds, adhoc))]
        folder = out_dir / ADHOC if adhoc else out_dir
        folder.mkdir(exist_ok=True)
        rel_folder = f"{SAMPLES}/{ADHOC}" if adhoc else SAMPLES
        with counter("sampling", len(jobs) * (len(prompts) * len(seeds) + len(heldout) * len(heldout_seeds)), progress) as tick:
            for job in jobs:
                name = f"epoch-{job.epoch:03d}"
                with _staged_epoch(folder, name, keep_old=adhoc) as staging:
                    started = time.perf_counter()
                    entry: dict[str, Any] = {"checkpoint": None, "sha256": None, "base_only": job.checkpoint is None}
                    if job.checkpoint is not None:
                        entry.update(checkpoint=_rel(job.checkpoint, run_dir), sha256=lora_sha256(job.checkpoint))
                    images: list[dict[str, Any]] = []

                    def write(full: Image.Image, pid: str, prompt: str, seed: int) -> None:
                        # The sampler numbers prompts in call order; ad-hoc files are named by the text instead.
                        images.append(_write_sample(full, staging, f"{rel_folder}/{name}", ids[prompts.index(prompt)] if adhoc else pid, prompt, seed, options))
                        tick()

                    def write_heldout(full: Image.Image, h: HeldoutPrompt, seed: int) -> None:
                        images.append({**_write_sample(full, staging, f"{rel_folder}/{name}", h.id, h.prompt, seed, options), "heldout": h.file})
                        tick()

                    extra = sampler.draw(job, prompts, seeds, write)
                    if heldout:
                        extra.update(_draw_heldout(sampler, job, heldout, heldout_seeds, write_heldout))
                entry.update(extra, suite_id=sid, sampled=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             seconds=round(time.perf_counter() - started, 3), images=images)
                if adhoc:
                    entry["images"] = _merged_images(doc.adhoc.get(str(job.epoch)), images)
                    doc.adhoc[str(job.epoch)] = SampledEpoch.model_validate(entry)
                    doc.adhoc = dict(sorted(doc.adhoc.items(), key=lambda kv: int(kv[0])))
                else:
                    doc.epochs[str(job.epoch)] = SampledEpoch.model_validate(entry)
                    doc.epochs = dict(sorted(doc.epochs.items(), key=lambda kv: int(kv[0])))
                write_samples(run_dir, doc)
    return doc


def _draw_heldout(sampler: EpochSampler, job: SampleJob, heldout: list[HeldoutPrompt], seeds: list[int],
                  write: Callable[[Image.Image, HeldoutPrompt, int], None]) -> dict[str, Any]:
    """Draw each held-out caption × ``seeds`` with ``job``'s checkpoint: one more ``draw`` call, so engines need nothing new.

    Samplers number a call's prompts p01, p02, … (prompt_ids); two held-out images may share a
    caption, so each draw is matched to its image by that number, not by the text.
    """
    captions = [h.prompt for h in heldout]
    by_pid = dict(zip(prompt_ids(captions), heldout))
    return sampler.draw(job, captions, seeds, lambda full, pid, _prompt, seed: write(full, by_pid[pid], seed))


def _drawn(doc: Samples, epoch: int, sid: str | None, ids: list[str], seeds: list[int], adhoc: bool) -> bool:
    """Whether samples.json already holds ``epoch`` drawn with this suite (ad hoc: every prompt × seed of this call)."""
    entry = (doc.adhoc if adhoc else doc.epochs).get(str(epoch))
    if entry is None:
        return False
    have = {(img.prompt_id, img.seed) for img in entry.images}
    return (adhoc or entry.suite_id == sid) and all((pid, seed) in have for pid in ids for seed in seeds)


def adhoc_ids(prompts: list[str]) -> list[str]:
    """File stems of ad-hoc prompts: a slug of the text plus a short hash, so the same prompt lands on the same files."""
    out = []
    for prompt in prompts:
        slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40].rstrip("-") or "prompt"
        out.append(f"{slug}-{hashlib.sha256(prompt.encode('utf-8')).hexdigest()[:6]}")
    return out


def _merged_images(before: SampledEpoch | None, new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An epoch's earlier ad-hoc images, with those drawn again (same prompt and seed) replaced by the new ones."""
    drawn = {(img["prompt_id"], img["seed"]) for img in new}
    kept = [img.model_dump(mode="json") for img in (before.images if before else []) if (img.prompt_id, img.seed) not in drawn]
    return kept + new


def _remove_leftovers(out_dir: Path) -> None:
    """Hidden staging folders of a sampler that was killed (SIGKILL, out of memory); called under the sample lock, so none is in use."""
    for folder in (out_dir, out_dir / ADHOC):
        for path in folder.glob(".epoch-*") if folder.is_dir() else []:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)


def sample_epochs(pipe: Any, jobs: list[SampleJob], prompts: list[str], seeds: list[int], settings: SampleSettings, out_dir: Path, *,
                  size: tuple[int, int], negative_prompt: str, postprocess_options: Any, progress: bool = True, clip_skip: int | None = None) -> dict[str, Any]:
    """:func:`draw_epochs` with an already loaded diffusers pipeline (``out_dir`` is ``RUN/samples``); returns samples.json as a dict."""
    from .engines.kohya import DiffusersSampler

    sampler = DiffusersSampler(settings, size, negative_prompt, clip_skip, pipe=pipe)
    return draw_epochs(out_dir.parent, sampler, jobs, prompts, seeds, postprocess_options, progress).as_dict()


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



def select_jobs(run: RunHandle, epochs: list[int] | None, include_base: bool | None, engine_default: bool = False) -> list[SampleJob]:
    """The epochs to sample (all recorded ones by default) with their checkpoint paths, and epoch 0 (the base alone).

    ``include_base`` None: the engine's default (``engine_default``), and then a base already drawn
    with the same suite is not drawn again; True/False: as asked (True draws it even if drawn).
    """
    recorded = run.record.checkpoints()
    if not recorded and not include_base:  # the default base alone is nothing to compare
        raise UserError(f"{run.dir}: run.json records no epoch checkpoints yet (status {str(run.record.status)!r}); train it first")
    wanted = sorted(recorded) if epochs is None else epochs
    missing = [e for e in wanted if e not in recorded]
    if missing:
        have = ", ".join(map(str, sorted(recorded))) or "none"
        raise UserError(f"--epochs: {', '.join(map(str, missing))} not in {run.dir / RUN_JSON} (recorded epochs: {have})")
    outside = [f"epochs.{e}: {recorded[e]}" for e in wanted if inside_run(run.dir, recorded[e]) is None]
    if outside:
        raise UserError(f"{run.dir / RUN_JSON}: {outside[0]} is outside the run folder; checkpoints are read from the run's own checkpoints/ only")
    base = engine_default if include_base is None else include_base
    jobs = [SampleJob(0, None, if_missing=include_base is None)] if base else []
    return jobs + [SampleJob(e, run.dir / recorded[e]) for e in wanted]


def training_images_dir(run_dir: Path, record: RunRecord, dataset_dir: Path | None) -> Path | None:
    """Where the training colours come from: --dataset, the recorded dataset, else the run's own prepared copy.

    NEAREST upscaling keeps the exact colours, so the prepared folder has the same palette.
    """
    if dataset_dir is not None:
        return dataset_dir
    path = recorded_dataset(run_dir, record.as_dict())
    if path is not None and path.is_dir():
        return path
    prepared = sorted(p for p in (run_dir / DATA).glob("*_*") if p.is_dir())
    # Neither: return the recorded path so the error names what is missing.
    return prepared[0] if prepared else path


def sample_run(run_dir: Path, *, epochs: list[int] | None = None, prompts_file: Path | None = None, prompts: list[str] | None = None,
               seeds: list[int] | None = None, device: str | None = None, include_base: bool | None = None, base_override: str | None = None,
               dataset_dir: Path | None = None, progress: bool = True) -> dict[str, Any]:
    """`bespoke-kohya sample --run RUN`: draw the run's epochs with its engine into ``RUN/samples``; returns samples.json (+ warnings).

    The suite is the preset's prompts, or ``prompts_file`` in their place; ``prompts`` (``--prompt``)
    are ad-hoc: drawn beside the suite into ``samples/adhoc/``, never over it. ``include_base``
    None: epoch 0 (the base alone) when the engine has one (`samples_base`) and it is not drawn yet.
    """
    run = RunHandle.open(Path(run_dir))
    with run_lock(run.dir, SAMPLE):  # taken before the model loads: a second sampler is refused at once
        preset = run.record.preset_model(run.dir)
        if prompts is None and prompts_file is None:
            suite = preset.sample.full_prompts()
        else:
            suite = list(prompts or []) + (read_prompts_file(prompts_file) if prompts_file else [])
        engine = get_engine(run.record.engine)
        jobs = select_jobs(run, epochs, include_base, engine.samples_base)
        options = SampleOptions(epochs=epochs, prompts=suite, seeds=list(seeds) if seeds else list(preset.sample.seeds), device=device,
                                include_base=any(job.checkpoint is None for job in jobs), base_override=base_override, dataset_dir=dataset_dir, progress=progress)
        sampler = engine.sampler(run, options)
        post = postprocess_options_for(preset.sample, training_images_dir(run.dir, run.record, dataset_dir))
        # Held-out captions go with the suite (the preset's, or --prompts FILE), never with ad-hoc --prompt draws.
        heldout, notes = ([], []) if prompts or not preset.sample.heldout_seeds else heldout_prompts(run)
        seeds_used = options.seeds or []
        doc = draw_epochs(run.dir, sampler, jobs, options.prompts or [], seeds_used, post, progress, adhoc=bool(prompts),
                          heldout=heldout, heldout_seeds=seeds_used[: preset.sample.heldout_seeds]).as_dict()
    doc["warnings"] = notes + list(sampler.warnings)
    return doc
