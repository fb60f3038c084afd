"""The kohya engine's sampler: the diffusers base model loaded once, each epoch's kohya LoRA applied, drawn and removed.

Base models load from a hub id (cached), a diffusers folder or a single ``.safetensors``
file, from safetensors only and never with remote code. A LoRA must place every one of
its modules on the base (diffusers only warns about the ones it cannot place, which would
silently sample the base).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from PIL import Image

from ...devices import resolve_device
from ...errors import UserError
from ...paths import hub_offline
from ...settings import SampleSettings
from ..protocol import SampleJob, check_suite, prompt_ids
from .preflight import PIPELINE_CLASSES
from .preflight import check_model_index as _check_model_index
from .settings import KohyaPreset

if TYPE_CHECKING:  # diffusers is heavy; it is imported only when a base is loaded
    from diffusers import DiffusionPipeline

ADAPTER = "epoch"
SINGLE_FILE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Metadata sd-scripts writes into every LoRA that is worth keeping next to the samples.
KEPT_METADATA = ("ss_epoch", "ss_network_dim", "ss_network_alpha", "ss_base_model_version", "ss_output_name", "ss_steps")



# ------------------------------------------------------------------ the base model


def base_source(preset: KohyaPreset, base_override: str | None = None) -> str:
    """The base model a kohya preset samples on: ``base_override`` or the preset's own."""
    source = (base_override or preset.settings.pretrained_model_name_or_path or "").strip()
    if not source:
        raise UserError(f"preset {preset.name}: kohya.pretrained_model_name_or_path is empty; pass the base model with --base /path/to/model.safetensors")
    return source


def load_base(preset: KohyaPreset, device: str | None = None, base_override: str | None = None) -> "DiffusionPipeline":
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


# ------------------------------------------------------------------ schedulers and LoRAs


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


# ------------------------------------------------------------------ drawing


def draw_image(pipe: Any, prompt: str, seed: int, settings: SampleSettings, size: tuple[int, int], negative_prompt: str, clip_skip: int | None = None,
               **extra: Any) -> Image.Image:
    """One full-size image; its own generator seeded with ``seed``, so it does not depend on what else is drawn.

    ``extra``: more arguments of the pipeline's call (a ControlNet pipeline's image and conditioning scale)."""
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
        **extra,
    )
    return result.images[0]


def kohya_clip_skip_to_diffusers(preset: KohyaPreset) -> int | None:
    """The diffusers ``clip_skip`` matching the preset's training: kohya counts the last layer as 1, diffusers as 0.

    SDXL pipelines always use the penultimate layer, as sd-scripts' SDXL training does,
    so nothing is passed for them.
    """
    clip_skip = preset.settings.clip_skip
    if preset.family != "sd15" or not clip_skip or clip_skip < 2:
        return None
    return clip_skip - 1


class DiffusersSampler:
    """A diffusers base model loaded once; each epoch's LoRA applied, drawn, and removed again.

    The other methods' samplers (method_samplers.py) change what :meth:`epoch` puts on the base and
    what :meth:`check_checkpoint` accepts; the drawing is this one.
    """

    def __init__(self, settings: Any, size: tuple[int, int], negative_prompt: str, clip_skip: int | None,
                 pipe: Any = None, load: Callable[[], Any] | None = None) -> None:
        self.settings_, self.size, self.negative_prompt, self.clip_skip = settings, size, negative_prompt, clip_skip
        self.pipe, self._load, self.warnings = pipe, load, []

    def check(self, prompts: list[str], seeds: list[int], jobs: list[SampleJob]) -> None:
        if self.pipe is None:
            check_suite(prompts, seeds, self.size)  # before minutes of loading
            self.pipe = self._load()
        check_suite(prompts, seeds, self.size, int(getattr(self.pipe, "vae_scale_factor", 8)))
        for job in jobs:  # fail on a missing or damaged file before minutes of sampling other epochs
            if job.checkpoint is not None:
                self.check_checkpoint(job.checkpoint)
        self.pipe.scheduler = scheduler_for(self.settings_.scheduler, self.pipe.scheduler.config)

    def check_checkpoint(self, path: Path) -> None:
        """Refuse a missing, damaged or foreign epoch file cheaply (its header only); the LoRA route's check."""
        lora_header(path)

    @contextmanager
    def epoch(self, job: SampleJob) -> Iterator[tuple[Any, dict[str, Any]]]:
        """(the pipeline that draws ``job``, extra samples.json fields): here the base with the epoch's LoRA, removed afterwards."""
        with lora_applied(self.pipe, job.checkpoint) as metadata:
            yield self.pipe, {"lora_metadata": {k: metadata[k] for k in KEPT_METADATA if k in metadata}}

    def settings(self, prompts: list[str], seeds: list[int], options_record: dict[str, Any]) -> dict[str, Any]:
        pipe, size = self.pipe, self.size
        recorded = self.settings_.model_dump(mode="json")
        recorded.update(
            width=size[0], height=size[1], negative_prompt=self.negative_prompt, clip_skip=self.clip_skip,
            base=str(getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path", "")),
            pipeline=pipe.__class__.__name__, device=pipe.device.type, dtype=str(pipe.dtype).removeprefix("torch."),
            postprocess_options=options_record,
        )
        return recorded

    def draw(self, job: SampleJob, prompts: list[str], seeds: list[int], write: Callable[..., Any]) -> dict[str, Any]:
        with self.epoch(job) as (pipe, extra):
            for pid, prompt in zip(prompt_ids(prompts), prompts):
                for seed in seeds:
                    write(draw_image(pipe, prompt, seed, self.settings_, self.size, self.negative_prompt, self.clip_skip), pid, prompt, seed)
        return extra


def sample_epochs(pipe: Any, jobs: list[SampleJob], prompts: list[str], seeds: list[int], settings: SampleSettings, out_dir: Path, *,
                  size: tuple[int, int], negative_prompt: str, postprocess_options: Any, progress: bool = True, clip_skip: int | None = None) -> dict[str, Any]:
    """:func:`draw_epochs` with an already loaded diffusers pipeline (``out_dir`` is ``RUN/samples``); returns samples.json as a dict."""
    from ...sample import draw_epochs

    sampler = DiffusersSampler(settings, size, negative_prompt, clip_skip, pipe=pipe)
    return draw_epochs(out_dir.parent, sampler, jobs, prompts, seeds, postprocess_options, progress).as_dict()


