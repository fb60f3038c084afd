"""Sampling the kohya methods other than LoRA: each epoch's file put on the base once, the suite drawn, the base restored.

- full (train_db.py): the epoch's whole-model checkpoint, an original-format SD ``.safetensors``,
  loaded with diffusers' ``from_single_file`` using the base's own component configs (offline) and
  the base's tokenizer and scheduler; the base pipeline stays as it is (epoch 0).
- textual_inversion (train_textual_inversion.py): the epoch's embedding (``emb_params``, one row per
  vector) added to the base with ``load_textual_inversion`` under the preset's token, and unloaded again.
- controlnet (train_control_net.py): the epoch's ControlNet (sd-scripts saves it with original-format
  key names; :func:`controlnet_from_sd` renames them back) on the base U-Net in a
  ``StableDiffusionControlNetPipeline``. Every prompt is drawn from a picture: a held-out caption
  from the exact edges of its own image, the suite's prompts from the held-out originals in turn,
  or from the 24×24 images of ``sample --control DIR``. Epoch 0 is the base (with the sampling LoRA,
  if any) without a ControlNet.

Every file is read as safetensors (never a pickle); nothing trusts remote code.
"""

from __future__ import annotations

import gc
import hashlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ...errors import UserError
from ...paths import hub_offline
from ..protocol import SampleJob, pair_prompt_ids, prompt_ids
from .preflight import safetensors_keys
from .sampler import DiffusersSampler, _dtype_kwargs, _load, _quiet_loaders, draw_image

# Metadata sd-scripts writes into a whole-model checkpoint (library/sai_model_spec.py) worth keeping beside the samples.
KEPT_FULL_METADATA = ("modelspec.architecture", "modelspec.title", "modelspec.date", "modelspec.resolution")


def _header_keys(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise UserError(f"{path}: {what} file not found; check run.json's checkpoints or train the run first")
    if path.suffix.lower() != ".safetensors":
        raise UserError(f"{path}: {what} files are loaded from .safetensors only (got {path.suffix or 'no suffix'}); sd-scripts writes them with save_model_as = \"safetensors\"")
    return safetensors_keys(path)


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise UserError(f"{path}: not a readable .safetensors file ({exc.__class__.__name__}: {str(exc)[:200]}); copy it again or retrain this epoch") from None


def _release(device: Any) -> None:
    """Give an epoch's model memory back before the next one loads."""
    gc.collect()
    if getattr(device, "type", device) == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------ full fine-tune


def full_config_source(base: str) -> str | None:
    """Where ``from_single_file`` finds the component configs of a full checkpoint: the base's own diffusers folder or
    hub id; None for a single-file base (diffusers then infers them and fetches the matching hub configs)."""
    path = Path(base).expanduser()
    if path.is_dir():
        return str(path)
    return None if path.is_file() else base


class FullSampler(DiffusersSampler):
    """Each epoch a whole SD1.5 model, loaded beside the base and dropped after its draws."""

    def __init__(self, *args: Any, config_source: str | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config_source = config_source

    def check_checkpoint(self, path: Path) -> None:
        keys = _header_keys(path, "checkpoint")
        if not any(k.startswith("model.diffusion_model.") for k in keys):
            raise UserError(f"{path}: not a whole-model SD checkpoint (no 'model.diffusion_model.' keys; first key: {keys[0] if keys else 'none'}); "
                            "is it the output of train_db.py (method full)?")

    @contextmanager
    def epoch(self, job: SampleJob) -> Iterator[tuple[Any, dict[str, Any]]]:
        if job.checkpoint is None:
            yield self.pipe, {}
            return
        pipe = load_full_checkpoint(job.checkpoint, self.pipe, self.config_source)
        try:
            metadata = _read_metadata(job.checkpoint)
            yield pipe, {"checkpoint_metadata": {k: metadata[k] for k in KEPT_FULL_METADATA if k in metadata}}
        finally:
            del pipe
            _release(self.pipe.device)


def _read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        return dict(f.metadata() or {})


def load_full_checkpoint(path: Path, base: Any, config_source: str | None) -> Any:
    """The pipeline of a train_db.py checkpoint: ``from_single_file`` with the base's configs, tokenizer and scheduler."""
    cls = type(base)
    kwargs: dict[str, Any] = {**_dtype_kwargs(base.dtype), "tokenizer": base.tokenizer, "scheduler": base.scheduler,
                              "safety_checker": None, "feature_extractor": None}
    offline = True if config_source else hub_offline()
    with _quiet_loaders():
        pipe = _load(lambda: cls.from_single_file(str(path), config=config_source, local_files_only=offline, **kwargs),
                     f"{path}: could not load this whole-model checkpoint",
                     "it must be an SD1.5 checkpoint from train_db.py of this run's base; pass the base again with --base-model if it moved")
    pipe.to(base.device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------ textual inversion


class EmbeddingSampler(DiffusersSampler):
    """Each epoch's embedding added to the base's tokenizer and text encoder under the token, then unloaded."""

    def __init__(self, *args: Any, token: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.token = token

    def check_checkpoint(self, path: Path) -> None:
        keys = _header_keys(path, "embedding")
        if keys != ["emb_params"]:
            raise UserError(f"{path}: not a textual-inversion embedding from train_textual_inversion.py (expected the one tensor "
                            f"'emb_params', found {', '.join(keys[:3]) or 'none'})")

    @contextmanager
    def epoch(self, job: SampleJob) -> Iterator[tuple[Any, dict[str, Any]]]:
        if job.checkpoint is None:
            yield self.pipe, {}
            return
        vectors = apply_embedding(self.pipe, job.checkpoint, self.token)
        try:
            yield self.pipe, {"embedding": {"token": self.token, "vectors": vectors}}
        finally:
            self.pipe.unload_textual_inversion()


def apply_embedding(pipe: Any, path: Path, token: str) -> int:
    """Add the epoch's embedding under ``token`` (more vectors: ``token_1`` … as diffusers names them); returns how many vectors."""
    tensors, _ = _read_tensors(path)
    emb = tensors.get("emb_params")
    if emb is None or emb.ndim != 2:
        raise UserError(f"{path}: no 'emb_params' matrix (vectors × width) in it; is it an embedding from train_textual_inversion.py?")
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    if emb.shape[1] != width:
        raise UserError(f"{path}: its vectors are {emb.shape[1]} wide but this base's text encoder embeds {width}; it was trained on another base")
    try:
        with _quiet_loaders():
            pipe.load_textual_inversion({"emb_params": emb}, token=token)
    except ValueError as exc:
        pipe.unload_textual_inversion()
        raise UserError(f"{path}: could not add it under the token {token!r} ({str(exc).splitlines()[0][:200]})") from None
    return int(emb.shape[0])


# ------------------------------------------------------------------ ControlNet


def controlnet_conversion_map() -> list[tuple[str, str]]:
    """(sd-scripts name part, diffusers name part) pairs, exactly sd-scripts v0.10.1's `controlnet_conversion_map`
    (library/model_util.py), whose `convert_controlnet_state_dict_to_sd` names the ControlNet files it saves."""
    layer: list[tuple[str, str]] = []
    for i in range(4):
        for j in range(2):
            layer.append((f"input_blocks.{3 * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            if i < 3:
                layer.append((f"input_blocks.{3 * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}."))
        if i < 3:
            layer.append((f"input_blocks.{3 * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
    layer.append(("middle_block.1.", "mid_block.attentions.0."))
    for j in range(2):
        layer.append((f"middle_block.{2 * j}.", f"mid_block.resnets.{j}."))
    for i, part in enumerate(["conv_in"] + [f"blocks.{n}" for n in range(6)] + ["conv_out"]):
        layer.append((f"input_hint_block.{i * 2}.", f"controlnet_cond_embedding.{part}."))
    for i in range(12):
        layer.append((f"zero_convs.{i}.0.", f"controlnet_down_blocks.{i}."))
    return layer


CONTROLNET_WHOLE_NAMES = [
    ("time_embed.0.weight", "time_embedding.linear_1.weight"), ("time_embed.0.bias", "time_embedding.linear_1.bias"),
    ("time_embed.2.weight", "time_embedding.linear_2.weight"), ("time_embed.2.bias", "time_embedding.linear_2.bias"),
    ("input_blocks.0.0.weight", "conv_in.weight"), ("input_blocks.0.0.bias", "conv_in.bias"),
    ("middle_block_out.0.weight", "controlnet_mid_block.weight"), ("middle_block_out.0.bias", "controlnet_mid_block.bias"),
]
CONTROLNET_RESNET_PARTS = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"), ("out_layers.3", "conv2"),
                           ("emb_layers.1", "time_emb_proj"), ("skip_connection", "conv_shortcut")]


def controlnet_from_sd(state_dict: dict[str, Any]) -> dict[str, Any]:
    """diffusers names for a ControlNet as sd-scripts saves it: sd-scripts' `convert_controlnet_state_dict_to_diffusers`,
    step for step (whole names, then layer prefixes, then resnet parts of names that now say `resnets`)."""
    whole = dict(CONTROLNET_WHOLE_NAMES)
    layer = controlnet_conversion_map()
    out = {}
    for key, value in state_dict.items():
        name = whole.get(key, key)
        for sd_part, hf_part in layer:
            name = name.replace(sd_part, hf_part)
        if "resnets" in name:
            for sd_part, hf_part in CONTROLNET_RESNET_PARTS:
                name = name.replace(sd_part, hf_part)
        out[name] = value
    return out


def load_controlnet(path: Path, unet: Any) -> Any:
    """The epoch's ControlNet: the architecture diffusers derives from the base U-Net, sd-scripts' weights loaded strictly."""
    from diffusers import ControlNetModel

    tensors, _ = _read_tensors(path)
    model = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
    try:
        model.load_state_dict(controlnet_from_sd(tensors), strict=True)
    except RuntimeError as exc:
        raise UserError(f"{path}: does not fit a ControlNet of this base's U-Net ({str(exc).splitlines()[0][:240]}); "
                        "was it trained by train_control_net.py on this run's base?") from None
    model.to(unet.device)
    return model if model.dtype == unet.dtype else model.to(unet.dtype)


def control_tensor(image: Any, device: Any, dtype: torch.dtype) -> torch.Tensor:
    """An edge map as the ControlNet saw edge maps in training: (1, 3, H, W) in [-1, 1].

    train_control_net.py v0.10.1 feeds its conditioning images through IMAGE_TRANSFORMS
    (ToTensor, then Normalize(0.5, 0.5)); diffusers' pipeline would pass a PIL image in [0, 1].
    A tensor with negative values passes its preprocessing unchanged (do_normalize is off for control images).
    """
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).to(device=device, dtype=dtype)


class ControlNetSampler(DiffusersSampler):
    """Each epoch's ControlNet on the base, every prompt drawn from the exact edges of a 24×24 image.

    ``controls``: (name, 24×24 art) the suite's prompts follow in turn (the held-out originals, or
    `--control DIR`); ``reference``: the 24×24 art of a prepared image by file name (held-out draws).
    """

    takes_images = True  # sample.py passes the held-out image each held-out caption describes

    def __init__(self, *args: Any, controls: list[tuple[str, np.ndarray]], reference: Callable[[str], np.ndarray], edge_width: int,
                 conditioning_scale: float, control_source: str, sample_lora: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.controls, self.reference = controls, reference
        self.edge_width, self.conditioning_scale = edge_width, conditioning_scale
        self.control_source, self.sample_lora = control_source, sample_lora

    def check(self, prompts: list[str], seeds: list[int], jobs: list[SampleJob]) -> None:
        if not self.controls and any(job.checkpoint is not None for job in jobs):
            raise UserError("sample: a ControlNet draws from a picture, and this run holds no image out (dataset.validation_split = 0); "
                            "give 24x24 images to follow with --control DIR")
        super().check(prompts, seeds, jobs)

    def check_checkpoint(self, path: Path) -> None:
        keys = _header_keys(path, "ControlNet")
        if not any(k.startswith(("zero_convs.", "input_hint_block.")) for k in keys):
            raise UserError(f"{path}: not a ControlNet from train_control_net.py (no 'zero_convs.' or 'input_hint_block.' keys; first key: "
                            f"{keys[0] if keys else 'none'})")

    def settings(self, prompts: list[str], seeds: list[int], options_record: dict[str, Any]) -> dict[str, Any]:
        recorded = super().settings(prompts, seeds, options_record)
        recorded["control"] = {"source": self.control_source, "images": [name for name, _ in self.controls], "edge_width": self.edge_width,
                               "conditioning_scale": self.conditioning_scale, "lora": self.sample_lora}
        return recorded

    def draw(self, job: SampleJob, prompts: list[str], seeds: list[int], write: Callable[..., Any], images: list[str] | None = None) -> dict[str, Any]:
        if job.checkpoint is None:  # the base (and sampling LoRA) alone: what the ControlNet adds is what the report compares
            return super().draw(job, prompts, seeds, write)
        items = []
        for i, (pid, prompt) in enumerate(zip(prompt_ids(prompts), prompts)):
            name, art = (images[i], self.reference(images[i])) if images else self.controls[i % len(self.controls)]
            items += [(pid, prompt, seed, name, art) for seed in seeds]
        used = self._draw_items(job, items, write)
        # Held-out draws follow their own image, which samples.json already names (SampleImage.heldout); only the
        # suite's pairing is recorded, so the held-out call does not overwrite it in the epoch's entry.
        return {} if images else {"control_images": used}

    def draw_pairs(self, job: SampleJob, pairs: list[tuple[str, int]], write: Callable[..., Any]) -> None:
        """A collection's candidates: each (prompt, seed) follows one of the controls, picked by the pair itself.

        The pick is a hash of the pair, so a candidate follows the same image whichever batch or process draws it.
        """
        if job.checkpoint is None:
            for prompt, seed in pairs:
                super().draw(job, [prompt], [seed], write)
            return
        ids = pair_prompt_ids(pairs)
        items = []
        for prompt, seed in pairs:
            pick = int.from_bytes(hashlib.sha256(f"{prompt}\0{seed}".encode()).digest()[:4], "big") % len(self.controls)
            items.append((ids[prompt], prompt, seed, *self.controls[pick]))
        self._draw_items(job, items, write)

    def _draw_items(self, job: SampleJob, items: list[tuple[str, str, int, str, np.ndarray]], write: Callable[..., Any]) -> dict[str, str]:
        """Draw each (prompt id, prompt, seed, control name, control art) with the epoch's ControlNet loaded once."""
        from diffusers import StableDiffusionControlNetPipeline

        assert job.checkpoint is not None
        controlnet = load_controlnet(job.checkpoint, self.pipe.unet)
        pipe = StableDiffusionControlNetPipeline(**{**self.pipe.components, "controlnet": controlnet}, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        used: dict[str, str] = {}
        try:
            for pid, prompt, seed, name, art in items:
                used[pid] = name
                cond = control_tensor(self.edge_map(art), pipe.device, controlnet.dtype)
                write(draw_image(pipe, prompt, seed, self.settings_, self.size, self.negative_prompt, self.clip_skip,
                                 image=cond, controlnet_conditioning_scale=self.conditioning_scale), pid, prompt, seed)
        finally:
            del pipe, controlnet
            _release(self.pipe.device)
        return used

    def edge_map(self, art: np.ndarray) -> Any:
        from .edges import edge_map

        return edge_map(art, self.size, self.edge_width)


# ------------------------------------------------------------------ choosing the sampler of a run


def sampler_for_run(run: Any, preset: Any, options: Any) -> DiffusersSampler:
    """The sampler of a kohya run's method, its base loaded lazily (at `check`), after cheap refusals."""
    from .sampler import base_source, kohya_clip_skip_to_diffusers, load_base

    source = base_source(preset, options.base_override)  # an empty base is refused before anything heavy
    common = (preset.sample, preset.sample_size, preset.sample.negative_prompt, kohya_clip_skip_to_diffusers(preset))
    method = preset.settings.method
    load = lambda: load_base(preset, options.device, options.base_override)  # noqa: E731
    if method == "full":
        return FullSampler(*common, load=load, config_source=full_config_source(source))
    if method == "textual_inversion":
        return EmbeddingSampler(*common, load=load, token=preset.settings.textual_inversion.token_string)
    if method == "controlnet":
        return _controlnet_sampler(run, preset, options, common, load)
    return DiffusersSampler(*common, load=load)


def _controlnet_sampler(run: Any, preset: Any, options: Any, common: tuple[Any, ...], load_plain: Callable[[], Any]) -> ControlNetSampler:
    from ...runfolder import CONFIG, file_sha256
    from ...runfolder.data import art_of
    from .config import SAMPLE_LORA
    from .sampler import apply_lora

    cn = preset.settings.controlnet
    lora = run.dir / CONFIG / SAMPLE_LORA if cn.lora else None
    if lora is not None and not lora.is_file():
        raise UserError(f"{lora}: the LoRA this ControlNet run samples with (kohya.controlnet.lora = {cn.lora}) is missing from the run; "
                        "copy it there again, or render the run again")

    def load() -> Any:
        pipe = load_plain()
        if lora is not None:
            apply_lora(pipe, lora, adapter="sample_lora")  # stays on for every epoch, the base of epoch 0 included
        return pipe

    warnings: list[str] = []
    if options.control is not None:
        controls, warnings = control_images(Path(options.control), preset.dataset.alpha_background)
        source = str(options.control)
    else:
        folder = run.training_folder
        controls = [(name, art_of(folder / name)) for name in run.record.dataset.heldout or [] if Path(name).name == name and (folder / name).is_file()]
        source = "held-out originals"
    sampler = ControlNetSampler(*common, load=load, controls=controls, reference=lambda name: art_of(run.training_folder / Path(name).name),
                                edge_width=cn.edge_width, conditioning_scale=cn.conditioning_scale, control_source=source,
                                sample_lora={"file": f"{CONFIG}/{SAMPLE_LORA}", "sha256": file_sha256(lora)} if lora is not None else None)
    sampler.warnings.extend(warnings)
    return sampler


def control_images(folder: Path, background: str) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
    """(name, 24×24 RGB art) of every 24×24 PNG in ``folder``, sorted by name, alpha flattened onto ``background`` as
    render does; other PNGs (a sample folder's full-size and ×8 files) are skipped with a warning."""
    from ...images import flatten_alpha, open_image, parse_hex_colour
    from ...paths import ART

    if not folder.is_dir():
        raise UserError(f"--control {folder}: no such folder; give a folder of 24x24 PNG punks (e.g. a run's samples/epoch-003, whose .24.png files are used)")
    found, skipped = [], []
    for path in sorted(folder.glob("*.png")):
        im = open_image(path, formats=("PNG",))
        if im.size != (ART, ART):
            skipped.append(path.name)
            continue
        found.append((path.name, np.asarray(flatten_alpha(im, parse_hex_colour(background)), dtype=np.uint8)))
    if not found:
        raise UserError(f"--control {folder}: no 24x24 PNG in it ({len(skipped)} of another size); give 24x24 punks whose edges the samples should follow")
    notes = [f"--control {folder}: {len(skipped)} PNG(s) that are not 24x24 were skipped ({', '.join(skipped[:3])}{' …' if len(skipped) > 3 else ''})"] if skipped else []
    return found, notes
