"""Pre-flight for a kohya run: the checks that can be made before sd-scripts starts.

On a rented box every failed start costs money, so the causes that can be seen before
launch are reported in one line each, before anything is written: the device, the base
model (every form), GPU memory, disk space and the sd-scripts install.

Each check is a function of plain inputs returning a `Check`; what it asks the machine
(the GPUs, the model hub and its cache, free disk space, sd-scripts' interpreter) comes
through `Probes`, whose fields tests replace with fakes. Standard library only at import
time: go.sh runs it (through `python -m bespoke_kohya.bundle preflight`) from the bundled wheel before
anything is installed (huggingface_hub and torch are used when they are there).

GPU memory estimate (`memory_estimate`), in bytes:

    frozen weights   params(U-Net + text encoders [+ VAE unless cache_latents]) x weight bytes
                     (2 for fp16/bf16, 4 for mixed_precision = "no")
  + LoRA training    lora_params x (4 weight + 4 grad + optimizer state bytes), fp32
  + activations      ACTIVATION_GIB[family][gradient_checkpointing] x batch
                     x (resolution / native resolution)^2 x (2 when mixed_precision = "no")
  + CUDA context     1 GiB, then x 1.1 for allocator fragmentation

Parameter counts are those of the public configs (SD1.5: runwayml/stable-diffusion-v1-5;
SDXL: stabilityai/stable-diffusion-xl-base-1.0), counted by instantiating diffusers'
UNet2DConditionModel / AutoencoderKL and transformers' CLIP text models with those configs.
LoRA parameters per rank are the in+out features of every Linear and 1x1 Conv that
sd-scripts' networks.lora wraps (Transformer2DModel blocks of the U-Net; CLIPAttention
and CLIPMLP of the text encoders), counted the same way: 589,824 per rank for SD1.5
(dim 32 gives the familiar ~38 MB fp16 file). Activations are the rough part: not measured
on a GPU here, they are set so the totals match public figures for sd-scripts LoRA runs
(sd-scripts README, "Tips for SDXL training": SDXL LoRA at 1024 px fits 8 GB, 10 GB
recommended, with gradient checkpointing, cached text-encoder outputs, an 8-bit optimizer
and dim 4-8; SD1.5 LoRA at 512 px, batch 1, fp16 is commonly run in 6-8 GB without
gradient checkpointing). Treat the estimate as +-30 %; it only warns.

The other methods (kohya.method) train other weights, read off their scripts (sd-scripts v0.10.1):

    full (train_db.py)       the U-Net trains in fp32 under autocast: U-Net x (4 weight + 4 grad + optimizer
                             state bytes); the text encoder the same when kohya.full.train_text_encoder, else
                             frozen at weight bytes; activations as for a LoRA (the same backward pass)
    textual_inversion        U-Net frozen at weight bytes; the text encoder stays fp32 (4 bytes) and its whole
                             token-embedding matrix (49,408 + new rows x 768) trains: x (4 grad + optimizer
                             state) plus sd-scripts' fp32 copy of it; activations as for a LoRA
    controlnet               U-Net and text encoder frozen at weight bytes; the ControlNet (361,279,120
                             weights: diffusers' ControlNetModel.from_unet of the SD1.5 U-Net config, counted
                             the same way) x (4 + 4 + optimizer state); activations x 1.4 (its own encoder
                             copy runs forward and backward beside the U-Net: an estimate)

The full fine-tune's total is checked against sd-scripts' own figure: its train_db README (zh) says
the most memory-saving command (8-bit Adam, gradient checkpointing, cached latents, fp16, text
encoder trained) needs about 12 GB; this formula gives 11.9 GiB (12.8 GB) for it at 512 px.

Disk estimate (`disk_needs`): per saved epoch a LoRA file (lora_params x save bytes) and,
with save_state, a resume state (lora_params x (4 + optimizer state bytes)); the last
epoch is saved as `<output_name>.safetensors` plus `<output_name>-state`. Samples:
prompts x seeds x saved epochs x (full-size RGB + 24x24 + x8 preview, as uncompressed
upper bounds). Prepared images: count x resolution^2 x 3. A hub base that is not cached
adds its download to the Hugging Face cache's filesystem. The other methods' files per epoch:
full, the whole model as train_db.py saves it (U-Net + text encoder + VAE x save bytes: 2.13 GB
fp16, 4.27 GB float); textual inversion, vectors x 768 x save bytes; ControlNet, 361M x save bytes
(0.72 GB fp16). None of them saves a resume state (their scripts cannot resume from one). When the
checkpoints add up to CHECKPOINT_WARN_BYTES or more, pre-flight says so and names save_every_n_epochs.
"""

from __future__ import annotations

import argparse
import json
import re
import math
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from ...errors import UserError
from ...paths import hub_cache_dir, hub_offline
from ...runfolder import BASE_DIR, run_document
from .vendor import SD_SCRIPTS_TAG, SdScripts, find_sd_scripts, probe_python

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
GIB = 1024**3
MIB = 1024**2
PIPELINE_CLASSES = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}
NATIVE_RESOLUTION = {"sd15": 512, "sdxl": 1024}
PARAMS = {  # frozen weights of the base, see the module docstring
    "sd15": {"unet": 859_520_964, "text": 123_060_480, "vae": 83_653_863},
    "sdxl": {"unet": 2_567_463_684, "text": 123_060_480 + 694_659_840, "vae": 83_653_863},
}
LORA_PER_RANK = {"sd15": {"unet": 423_936, "text": 165_888}, "sdxl": {"unet": 2_659_840, "text": 165_888 + 737_280}}
ACTIVATION_GIB = {"sd15": {False: 2.5, True: 0.7}, "sdxl": {False: 9.0, True: 2.5}}  # per image at native resolution, fp16
# diffusers' ControlNetModel.from_unet(UNet2DConditionModel(**offline_sd.sd15_configs()["unet"])), counted.
CONTROLNET_PARAMS = 361_279_120
# CLIP ViT-L/14's token embedding (vocab_size x hidden_size), the matrix textual inversion trains.
TOKEN_EMBEDDING_PARAMS = 49_408 * 768
ACTIVATION_FACTOR = {"lora": 1.0, "full": 1.0, "textual_inversion": 1.0, "controlnet": 1.4}
# Checkpoints adding up to this much are announced before launch, with save_every_n_epochs to write fewer.
CHECKPOINT_WARN_BYTES = 4 * GIB
OPTIMIZER_STATE_BYTES = {"AdamW": 8, "AdamW8bit": 2, "Lion": 4, "SGDNesterov": 4, "Prodigy": 16, "Adafactor": 4}
CUDA_CONTEXT = 1 * GIB
FRAGMENTATION = 1.1
# What sd-scripts downloads for a hub base: the fp32 safetensors of each component it loads
# (diffusers skips the safety checker sd-scripts passes as None).
HUB_DOWNLOAD = {family: sum(params.values()) * 4 for family, params in PARAMS.items()}
# `go.sh` before install: our venv and sd-scripts' venv, each with a CUDA torch (sd-scripts' venv
# measured 6.0 GB with torch 2.14.1 and its CUDA 13 libraries), plus pip's cache.
INSTALL_BYTES = 15 * GIB
# Measured by `bespoke-kohya smoke`: ~60 s an optimizer step at 64 px (batch 4) on 2 cores.
CPU_SMOKE = {"seconds": 60.0, "resolution": 64, "batch": 4, "cores": 2}
HUB_TIMEOUT = 4.0
# Hub ids that moved: the same weights under another id.
MIRRORS = {"runwayml/stable-diffusion-v1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5"}


class Level(str, Enum):
    """How a check came out: FAIL stops the launch, WARN is printed, OK and SKIP are quiet."""

    OK = "ok"
    WARN = "warning"
    FAIL = "error"
    SKIP = "skipped"


@dataclass(frozen=True)
class Check:
    """One check's outcome: the cause, and for problems what to do; `message` joins them into one line."""

    name: str
    level: Level
    cause: str
    fix: str = ""

    @property
    def message(self) -> str:
        return f"{self.cause}; {self.fix}" if self.fix else self.cause


@dataclass(frozen=True)
class Gpu:
    name: str
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class GpuProbe:
    """What the machine says about its GPUs; `note` says how it was asked (or why it could not)."""

    gpus: tuple[Gpu, ...]
    note: str


class HubAnswer(str, Enum):
    FOUND = "found"
    MISSING = "missing"  # not found, gated or private
    UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class RunNeeds:
    """What a kohya preset will do, read from its resolved form (`Preset.model_dump()` or run.json's `resolved`)."""

    name: str
    family: str
    base: str
    resolution: int
    batch: int
    precision: str
    gradient_checkpointing: bool
    cache_latents: bool
    network_dim: int
    train_text_encoder: bool
    optimizer: str
    save_precision: str
    epochs: int
    save_every: int
    save_state: bool
    repeats: int
    samples_per_epoch: int
    sample_pixels: int
    method: str = "lora"
    token_string: str | None = None  # textual inversion: the token sd-scripts adds (its vectors add "<token>1", …)
    vectors: int = 1

    @classmethod
    def from_resolved(cls, resolved: dict[str, Any]) -> RunNeeds | None:
        """What a kohya preset needs; None for other engines (nothing to check)."""
        k = resolved.get("kohya")
        if resolved.get("engine") != "kohya" or not k:
            return None
        s = resolved.get("sample") or {}
        width, height = s.get("width") or k["resolution"], s.get("height") or k["resolution"]
        method = k.get("method") or "lora"
        ti = k.get("textual_inversion") or {}
        if method == "lora":
            train_text_encoder = k.get("text_encoder_lr") != 0
        else:  # only the full fine-tune can train the text encoder's weights (textual inversion trains its embedding rows)
            train_text_encoder = bool((k.get("full") or {}).get("train_text_encoder")) if method == "full" else False
        return cls(
            name=resolved["name"], family=resolved.get("family") or "sd15", base=(k.get("pretrained_model_name_or_path") or "").strip(),
            resolution=k["resolution"], batch=k["train_batch_size"], precision=k["mixed_precision"],
            gradient_checkpointing=k["gradient_checkpointing"], cache_latents=k["cache_latents"], network_dim=k["network_dim"],
            train_text_encoder=train_text_encoder, optimizer=k["optimizer_type"], save_precision=k["save_precision"],
            epochs=k["max_train_epochs"], save_every=k["save_every_n_epochs"], save_state=k["save_state"],
            repeats=(resolved.get("dataset") or {}).get("num_repeats", 1),
            samples_per_epoch=len(s.get("prompts") or []) * len(s.get("seeds") or []), sample_pixels=width * height,
            method=method, token_string=ti.get("token_string"), vectors=int(ti.get("num_vectors_per_token") or 1),
        )


def is_local_path(value: str, run_dir: Path | None = None) -> bool:
    """Whether a base-model value names a local file/folder rather than a hub id like `org/name`.

    `base/<name>` is where bundles put (or expect) a local base, relative to the run folder;
    it would otherwise read as a hub id of an organisation called "base".
    """
    if not value:
        return False
    if Path(value).expanduser().exists() or (run_dir is not None and (run_dir / value).exists()):
        return True
    return value.startswith((f"{BASE_DIR}/", ".", "~", "/")) or not HUB_ID.match(value)


# ---------------------------------------------------------------- probes (the machine's side)


def probe_gpus() -> GpuProbe:
    """The CUDA GPUs and their free memory: nvidia-smi (no torch needed), else torch in this interpreter."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            done = subprocess.run([smi, "--query-gpu=name,memory.total,memory.free", "--format=csv,noheader,nounits"],
                                  capture_output=True, text=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return GpuProbe((), f"nvidia-smi failed ({exc})")
        if done.returncode != 0:
            last = (done.stdout.strip() or done.stderr.strip() or "no output").splitlines()[-1]
            return GpuProbe((), f"nvidia-smi failed: {last}")
        gpus = []
        for row in done.stdout.strip().splitlines():
            name, total, free = (part.strip() for part in row.rsplit(",", 2))
            gpus.append(Gpu(name, int(float(total)) * MIB, int(float(free)) * MIB))
        return GpuProbe(tuple(gpus), "nvidia-smi")
    try:
        import torch
    except ImportError:
        return GpuProbe((), "nvidia-smi not found")
    if not torch.cuda.is_available():
        return GpuProbe((), f"nvidia-smi not found; torch {torch.__version__} sees no CUDA device")
    gpus = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        gpus.append(Gpu(torch.cuda.get_device_name(i), total, free))
    return GpuProbe(tuple(gpus), f"torch {torch.__version__}")


def hub_cached(model_id: str) -> bool:
    """Whether the hub cache holds the model's model_index.json (diffusers' entry point)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # before go.sh installs anything: the cache's documented layout
        return any((hub_cache_dir() / ("models--" + model_id.replace("/", "--")) / "snapshots").glob("*/model_index.json"))
    return isinstance(try_to_load_from_cache(model_id, "model_index.json"), str)


def hub_lookup(model_id: str, timeout: float = HUB_TIMEOUT) -> HubAnswer:
    """Ask the hub (or $HF_ENDPOINT) whether the model exists, waiting at most `timeout` seconds."""
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    except ImportError:
        return _hub_lookup_stdlib(model_id, timeout)
    try:
        HfApi().model_info(model_id, timeout=timeout)
    except (RepositoryNotFoundError, GatedRepoError):
        return HubAnswer.MISSING
    except Exception:  # any network or server error: the hub did not answer usefully
        return HubAnswer.UNREACHABLE
    return HubAnswer.FOUND


def _hub_lookup_stdlib(model_id: str, timeout: float) -> HubAnswer:
    import urllib.error
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        with urllib.request.urlopen(f"{endpoint}/api/models/{model_id}", timeout=timeout):
            return HubAnswer.FOUND
    except urllib.error.HTTPError as exc:
        return HubAnswer.MISSING if exc.code in (401, 403, 404) else HubAnswer.UNREACHABLE
    except (OSError, ValueError):
        return HubAnswer.UNREACHABLE


def disk_space(path: Path) -> tuple[int, int]:
    """(filesystem id, free bytes) where `path` would be written (its nearest existing folder)."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path.stat().st_dev, shutil.disk_usage(path).free


def clip_vocabulary() -> dict[str, int] | None:
    """CLIP's BPE vocabulary (offline, from open-clip-torch's file), or None when it is not here (go.sh before installing)."""
    try:
        from ...errors import UserError as _Missing
        from .offline_sd import clip_bpe_path, clip_vocab_and_merges

        return clip_vocab_and_merges(clip_bpe_path())[0]
    except (ImportError, OSError, _Missing):
        return None


@dataclass
class Probes:
    """The machine, as the checks see it; tests replace fields with fakes."""

    gpus: Callable[[], GpuProbe] = probe_gpus
    offline: Callable[[], bool] = hub_offline
    hub_cached: Callable[[str], bool] = hub_cached
    hub_lookup: Callable[[str], HubAnswer] = hub_lookup
    hub_cache_dir: Callable[[], Path] = hub_cache_dir
    disk_space: Callable[[Path], tuple[int, int]] = disk_space
    sd_scripts: Callable[[Path], SdScripts | None] = find_sd_scripts
    sd_python: Callable[[Path], dict] = probe_python
    cpu_cores: Callable[[], int] = field(default=lambda: os.cpu_count() or 1)
    vocabulary: Callable[[], dict[str, int] | None] = clip_vocabulary


# ---------------------------------------------------------------- estimates


def lora_params(needs: RunNeeds) -> int:
    per_rank = LORA_PER_RANK[needs.family]
    return needs.network_dim * (per_rank["unet"] + (per_rank["text"] if needs.train_text_encoder else 0))


def weights_bytes(needs: RunNeeds) -> int:
    """GPU bytes of the weights, gradients and optimizer state of ``needs.method`` (module docstring)."""
    params = PARAMS[needs.family]
    weight_bytes = 4 if needs.precision == "no" else 2
    trained = 8 + OPTIMIZER_STATE_BYTES.get(needs.optimizer, 8)  # fp32 weight + fp32 grad + optimizer state
    vae = 0 if needs.cache_latents else params["vae"] * weight_bytes
    if needs.method == "full":
        text = params["text"] * (trained if needs.train_text_encoder else weight_bytes)
        return params["unet"] * trained + text + vae
    if needs.method == "textual_inversion":
        # Its weight is counted with the fp32 text encoder; on top: its grad (4), the optimizer state and sd-scripts'
        # fp32 copy of it (orig_embeds_params, 4) — as many bytes as `trained`.
        embedding = TOKEN_EMBEDDING_PARAMS * trained
        return params["unet"] * weight_bytes + params["text"] * 4 + embedding + vae
    if needs.method == "controlnet":
        return (params["unet"] + params["text"]) * weight_bytes + CONTROLNET_PARAMS * trained + vae
    return (params["unet"] + params["text"]) * weight_bytes + vae + lora_params(needs) * trained


def memory_estimate(needs: RunNeeds) -> int:
    """Peak GPU memory of one training process, in bytes (formula in the module docstring)."""
    scale = (needs.resolution / NATIVE_RESOLUTION[needs.family]) ** 2 * needs.batch * (2 if needs.precision == "no" else 1)
    activations = ACTIVATION_GIB[needs.family][needs.gradient_checkpointing] * GIB * scale * ACTIVATION_FACTOR.get(needs.method, 1.0)
    return int((weights_bytes(needs) + activations + CUDA_CONTEXT) * FRAGMENTATION)


def checkpoint_bytes(needs: RunNeeds) -> int:
    """One epoch's saved file: a LoRA, the whole model (train_db.py saves U-Net, text encoder and VAE), an embedding, a ControlNet."""
    save = 4 if needs.save_precision == "float" else 2
    params = PARAMS[needs.family]
    count = {"full": params["unet"] + params["text"] + params["vae"], "textual_inversion": needs.vectors * 768,
             "controlnet": CONTROLNET_PARAMS}.get(needs.method, lora_params(needs))
    return count * save + (MIB if needs.method == "lora" else 64 * 1024)  # + header and metadata


def saved_epochs(needs: RunNeeds, from_epoch: int = 0) -> int:
    """Checkpoints sd-scripts writes after `from_epoch`: every save_every epochs before the last, and the last."""
    return sum(1 for e in range(from_epoch + 1, needs.epochs) if e % needs.save_every == 0) + (1 if from_epoch < needs.epochs else 0)


def run_bytes(needs: RunNeeds, images: int, from_epoch: int = 0) -> int:
    """What the run folder grows by: checkpoints, resume states, samples and (fresh runs) the prepared images."""
    n = saved_epochs(needs, from_epoch)
    params = lora_params(needs)
    checkpoint = checkpoint_bytes(needs)
    state = params * (4 + OPTIMIZER_STATE_BYTES.get(needs.optimizer, 8)) + MIB if needs.save_state and needs.method == "lora" else 0
    sample = needs.sample_pixels * 3 + 24 * 24 * 4 + (24 * 8) ** 2 * 4
    prepared = images * needs.resolution**2 * 3 if from_epoch == 0 else 0
    return n * (checkpoint + state + needs.samples_per_epoch * sample) + prepared + 50 * MIB  # + logs


def cpu_seconds_per_step(needs: RunNeeds, cores: int) -> float:
    """A lower bound on a CPU step, scaled from the smoke by pixels x batch (at 64 px the weights dominate, so never below it),
    by the U-Net's size for SDXL, and by cores."""
    work = (needs.resolution / CPU_SMOKE["resolution"]) ** 2 * needs.batch / CPU_SMOKE["batch"]
    size = PARAMS[needs.family]["unet"] / PARAMS["sd15"]["unet"]
    return CPU_SMOKE["seconds"] * max(1.0, work) * size * CPU_SMOKE["cores"] / max(1, cores)


def _duration(seconds: float) -> str:
    for unit, length in (("days", 86400), ("hours", 3600), ("min", 60)):
        if seconds >= 2 * length:
            return f"{seconds / length:,.0f} {unit}"
    return f"{seconds:.0f} s"


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


# ---------------------------------------------------------------- checks


def check_device(needs: RunNeeds, probe: GpuProbe, *, cpu: bool, images: int | None, cores: int) -> Check:
    """A CUDA GPU is present, or --cpu was given; otherwise say how slow the CPU would be."""
    step = cpu_seconds_per_step(needs, cores)
    steps = math.ceil(images * needs.repeats / needs.batch) * needs.epochs if images else None
    slow = f"~{_duration(step)} a step" + (f" x {steps:,} steps = ~{_duration(step * steps)}" if steps else "")
    if cpu:
        return Check("device", Level.WARN if not probe.gpus else Level.OK, f"--cpu: {needs.name} on {cores} CPU cores takes at least {slow}")
    if probe.gpus:
        names = ", ".join(sorted({g.name for g in probe.gpus}))
        return Check("device", Level.OK, f"{len(probe.gpus)} CUDA GPU ({names}) via {probe.note}")
    return Check("device", Level.FAIL,
                 f"no CUDA GPU found ({probe.note}): {needs.name} on these {cores} CPU cores would take at least {slow} "
                 "(smoke: ~60 s a step at 64 px on 2 cores)", "train on a GPU box (bespoke-kohya bundle), or pass --cpu to accept it")


def check_model_index(folder: Path, family: str) -> None:
    """Refuse a diffusers folder that is missing its model_index.json or is of the other family."""
    index = folder / "model_index.json"
    if not index.is_file():
        raise UserError(f"{folder}: not a diffusers model folder (no model_index.json); pass a diffusers folder, a single-file .safetensors or a hub id")
    try:
        class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    except (ValueError, AttributeError) as exc:
        raise UserError(f"{index}: not valid JSON ({exc}); re-download or re-save the model") from None
    expected = PIPELINE_CLASSES[family]
    if class_name and class_name != expected:
        raise UserError(f"{folder}: is a {class_name} but the preset's family is {family} (needs {expected}); pick a preset of the matching family or another base")


def safetensors_keys(path: Path) -> list[str]:
    """The tensor names in a .safetensors header (8-byte length, then JSON); UserError when it is not one."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            size = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 2 <= size <= min(100 * MIB, path.stat().st_size - 8):
                raise ValueError("bad header length")
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error) as exc:
        raise UserError(f"{path}: not a readable .safetensors file ({exc}), corrupt or cut short; download it again") from None
    return [k for k in header if k != "__metadata__"]


def _single_file_family(keys: list[str]) -> str | None:
    """sd15 / sdxl from an original-format checkpoint's key names; None when neither layout is recognised."""
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.") for k in keys) and any(k.startswith("model.diffusion_model.") for k in keys):
        return "sd15"
    return None


def _hub_fix(model_id: str) -> str:
    """How to get a hub base that is not here: its new id when it moved, else a download; or a local file."""
    if mirror := MIRRORS.get(model_id):
        get = f"it left the hub: use the same weights with --set pretrained_model_name_or_path={mirror}"
    else:
        get = f"download it on a machine with network (hf download {model_id})"
    return f"{get}, or pass a local .safetensors file or diffusers folder with --set pretrained_model_name_or_path=/path"


def check_base(needs: RunNeeds, probes: Probes, run_dir: Path | None = None) -> Check:
    """The base model exists in its form: local folder/file of the right architecture, cached hub id, or a hub answer."""
    base = needs.base
    name = f"base model {base}"
    if not base:
        return Check("base", Level.FAIL, f"preset {needs.name}: pretrained_model_name_or_path is empty", "pass --set pretrained_model_name_or_path=/path/model.safetensors")
    if is_local_path(base, run_dir):
        path = Path(base).expanduser()
        if not path.is_absolute() and run_dir is not None and (run_dir / path).exists():
            path = run_dir / path
        try:
            if path.is_dir():
                check_model_index(path, needs.family)
                return Check("base", Level.OK, f"{name}: local diffusers folder ({PIPELINE_CLASSES[needs.family]})")
            if not path.is_file():
                return Check("base", Level.FAIL, f"{name}: no such file or folder", "give a diffusers folder or a .safetensors file that exists, or a hub id")
            if path.suffix.lower() != ".safetensors":
                return Check("base", Level.WARN, f"{name}: a {path.suffix} file is a Python pickle sd-scripts can load but `sample` refuses", "prefer the .safetensors release")
            found = _single_file_family(safetensors_keys(path))
        except UserError as exc:
            return Check("base", Level.FAIL, f"base model {exc}")  # the message names the file
        if found is None:
            return Check("base", Level.WARN, f"{name}: not an original-format SD checkpoint (no known key layout), sd-scripts may refuse it")
        if found != needs.family:
            return Check("base", Level.FAIL, f"{name}: is an {found} checkpoint but preset {needs.name} is {needs.family}", "pick a preset of the matching family or another base")
        return Check("base", Level.OK, f"{name}: local {found} single-file checkpoint")
    if probes.hub_cached(base):
        return Check("base", Level.OK, f"{name}: in the Hugging Face cache")
    if probes.offline():
        return Check("base", Level.FAIL, f"{name}: not in the Hugging Face cache and HF_HUB_OFFLINE is set", _hub_fix(base))
    answer = probes.hub_lookup(base)
    if answer is HubAnswer.FOUND:
        return Check("base", Level.OK, f"{name}: on the hub, sd-scripts downloads it on first use")
    if answer is HubAnswer.MISSING:
        return Check("base", Level.FAIL, f"{name}: the hub has no such (public) model", _hub_fix(base))
    return Check("base", Level.FAIL, f"{name}: not in the Hugging Face cache and the hub did not answer within {HUB_TIMEOUT:g} s",
                 f"{_hub_fix(base)}; without network set HF_HUB_OFFLINE=1")


def check_memory(needs: RunNeeds, gpus: tuple[Gpu, ...], num_gpus: int = 1) -> Check:
    """The estimate against the smallest free memory of the GPUs used; warn with the setting to change."""
    if not gpus:
        return Check("memory", Level.SKIP, "no GPU to compare with")
    need = memory_estimate(needs)
    free = min(g.free_bytes for g in gpus[: max(1, num_gpus)])
    if need <= free:
        return Check("memory", Level.OK, f"~{_gib(need)} estimated, {_gib(free)} free")
    if not needs.gradient_checkpointing:
        fix = "gradient_checkpointing=true"
        fixed = RunNeeds(**{**needs.__dict__, "gradient_checkpointing": True})
    elif needs.batch > 1:
        fix = f"train_batch_size={needs.batch // 2}"
        fixed = RunNeeds(**{**needs.__dict__, "batch": needs.batch // 2})
    else:
        fix = f"resolution={needs.resolution * 3 // 4 // 64 * 64}"
        fixed = RunNeeds(**{**needs.__dict__, "resolution": needs.resolution * 3 // 4 // 64 * 64})
    return Check("memory", Level.WARN, f"{needs.name} needs ~{_gib(need)} of GPU memory (estimate), {_gib(free)} is free",
                 f"--set {fix} brings it to ~{_gib(memory_estimate(fixed))}")


def _gb(n: float) -> str:
    """A file size the way the README quotes them: KB, MB or GB (decimal)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:.2f} {unit}" if n < 10 * size else f"{n / size:.0f} {unit}"
    return f"{n / 1e3:.0f} KB"


def check_checkpoints(needs: RunNeeds) -> Check:
    """What the epochs' checkpoints add up to, said before launch; when it is a lot, how save_every_n_epochs writes fewer."""
    n, size = saved_epochs(needs), checkpoint_bytes(needs)
    what = {"full": "whole-model checkpoints (train_db.py saves U-Net, text encoder and VAE)", "textual_inversion": "embeddings",
            "controlnet": "ControlNets"}.get(needs.method, "LoRA files")
    cause = f"{needs.name}: {n} {what} of ~{_gb(size)} each ({needs.save_precision}), ~{_gb(n * size)} in checkpoints/"
    if n * size < CHECKPOINT_WARN_BYTES:
        return Check("checkpoints", Level.OK, cause)
    every = needs.save_every + 1
    fewer = saved_epochs(RunNeeds(**{**needs.__dict__, "save_every": every}))
    fix = f"--set save_every_n_epochs={every} writes {fewer} (~{_gb(fewer * size)}), the last epoch always included"
    if needs.save_precision == "float":
        fix += "; save_precision=fp16 halves each"
    return Check("checkpoints", Level.WARN, cause, fix if fewer < n else "")


def check_conditioning(needs: RunNeeds, run_dir: Path | None) -> Check:
    """A ControlNet run's conditioning folder holds one edge map per image it trains on, named like it (sd-scripts asserts both ways)."""
    import tomllib

    config = (run_dir / "config" / "dataset.toml") if run_dir is not None else None
    if config is None or not config.is_file():
        return Check("conditioning", Level.SKIP, "the edge maps are written when the run is rendered")
    try:
        subset = tomllib.loads(config.read_text(encoding="utf-8"))["datasets"][0]["subsets"][0]
        images, conditioning = run_dir / subset["image_dir"], run_dir / subset["conditioning_data_dir"]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        return Check("conditioning", Level.FAIL, f"{config}: no ControlNet subset with image_dir and conditioning_data_dir ({exc})", "render the run again")
    if not conditioning.is_dir():
        return Check("conditioning", Level.FAIL, f"{conditioning}: the conditioning folder is missing (train_control_net.py needs an edge map per image)",
                     "render the run again (bespoke-kohya render / train make it), or copy the run whole")
    want = {p.stem for p in images.glob("*.png")} if images.is_dir() else set()
    have = {p.stem for p in conditioning.glob("*.png")}
    if want != have:
        missing, extra = sorted(want - have), sorted(have - want)
        return Check("conditioning", Level.FAIL, f"{conditioning}: {len(missing)} training image(s) without an edge map ({', '.join(missing[:3])}) and "
                     f"{len(extra)} edge map(s) without an image ({', '.join(extra[:3])}); train_control_net.py asserts they pair up", "render the run again")
    return Check("conditioning", Level.OK, f"{len(have)} edge maps in {conditioning.name}, one per training image")


def check_token(needs: RunNeeds, vocabulary: dict[str, int] | None) -> Check:
    """Textual inversion's token must be new to the tokenizer: sd-scripts asserts it adds every `<token>`, `<token>1`, …,
    and a word CLIP already has as one token would be hijacked in every prompt that uses it."""
    token = needs.token_string or ""
    if vocabulary is None:
        return Check("token", Level.SKIP, "the CLIP vocabulary is not available here to check kohya.textual_inversion.token_string")
    names = [token] + [f"{token}{i}" for i in range(1, needs.vectors)]
    taken = [n for n in names if n in vocabulary or f"{n}</w>" in vocabulary]
    if taken:
        shown = ", ".join(f"{n!r}" for n in taken[:3])
        return Check("token", Level.FAIL, f"kohya.textual_inversion.token_string {token!r}: {shown} {'is' if len(taken) == 1 else 'are'} already a single CLIP token, so sd-scripts would refuse it "
                     "(\"tokenizer has same word to token string\") or every prompt's word would become the embedding",
                     "choose words CLIP splits into several tokens, e.g. token_string = \"bespoke punk\"")
    return Check("token", Level.OK, f"token {token!r} ({needs.vectors} vector(s)) is new to CLIP's vocabulary")


def disk_needs(needs: RunNeeds, probes: Probes, *, run_dir: Path, images: int, from_epoch: int, download: bool, before_install: bool) -> list[tuple[Path, int, str]]:
    """(where, bytes, what) the run will write: the run folder (and, before go.sh installs, the venvs), a hub download."""
    writes = [(run_dir, run_bytes(needs, images, from_epoch), "checkpoints, states and samples")]
    if before_install:
        writes.append((run_dir, INSTALL_BYTES, "installs"))
    if download:
        writes.append((probes.hub_cache_dir(), int(HUB_DOWNLOAD[needs.family]), "base model download"))
    return writes


def check_disk(writes: list[tuple[Path, int, str]], space: Callable[[Path], tuple[int, int]]) -> Check:
    """Enough free space on each filesystem written to (writes to the same one are added up)."""
    by_fs: dict[int, tuple[Path, int, int, list[str]]] = {}
    for path, size, what in writes:
        fs, free = space(path)
        first, total, _, whats = by_fs.get(fs, (path, 0, free, []))
        by_fs[fs] = (first, total + size, free, whats + [f"{what} ~{_gib(size)}"])
    for path, total, free, whats in by_fs.values():
        if total > free:
            return Check("disk", Level.FAIL, f"{path}: needs ~{_gib(total)} ({', '.join(whats)}), only {_gib(free)} free", "free space there or pick another --run-dir")
    return Check("disk", Level.OK, "; ".join(f"{path}: ~{_gib(total)} needed, {_gib(free)} free" for path, total, free, _ in by_fs.values()))


def check_sd_scripts(probes: Probes, repo_root: Path, *, need_cuda: bool) -> Check:
    """sd-scripts is installed, at the tested tag, and (on a GPU run) its interpreter imports torch with CUDA."""
    try:
        sd = probes.sd_scripts(repo_root)
    except UserError as exc:
        return Check("sd-scripts", Level.FAIL, f"sd-scripts: {exc}")
    if sd is None:
        return Check("sd-scripts", Level.FAIL, "sd-scripts is not installed", "run `make vendor` (or set SD_SCRIPTS_DIR and SD_SCRIPTS_PYTHON)")
    if need_cuda:
        info = probes.sd_python(sd.python)
        if "error" in info or "torch_error" in info or not info.get("torch"):
            why = info.get("error") or info.get("torch_error") or "torch is not installed"
            return Check("sd-scripts", Level.FAIL, f"sd-scripts' python {sd.python} cannot import torch ({why})", "run `make vendor` again")
        if not info.get("cuda"):
            return Check("sd-scripts", Level.FAIL, f"sd-scripts' torch {info['torch']} cannot use CUDA (a CPU build, or a CUDA {info.get('cuda_version')} build this driver does not run)",
                         "install a matching CUDA torch: SD_SCRIPTS_TORCH='torch torchvision --index-url https://download.pytorch.org/whl/cuXXX' make vendor")
    if sd.tag != SD_SCRIPTS_TAG:
        at = sd.tag or (sd.commit[:10] if sd.commit else "an unknown revision")
        return Check("sd-scripts", Level.WARN, f"sd-scripts in {sd.path} is at {at}, this tool is tested with {SD_SCRIPTS_TAG}", f"git -C {sd.path} checkout {SD_SCRIPTS_TAG}")
    return Check("sd-scripts", Level.OK, f"sd-scripts {sd.tag} in {sd.path}")


# ---------------------------------------------------------------- all together


def count_images(dataset: Path | None) -> int:
    return sum(1 for p in dataset.iterdir() if p.suffix.lower() == ".png") if dataset and dataset.is_dir() else 0


def run_checks(needs: RunNeeds, *, repo_root: Path, run_dir: Path, images: int, cpu: bool = False, num_gpus: int = 1,
               from_epoch: int = 0, before_install: bool = False, probes: Probes | None = None) -> list[Check]:
    """Every pre-flight check for what a kohya run needs, in the order a user fixes them."""
    probes = probes or Probes()
    gpus = probes.gpus()
    checks = [check_device(needs, gpus, cpu=cpu, images=images, cores=probes.cpu_cores())]
    base = check_base(needs, probes, run_dir)
    checks.append(base)
    if not cpu:
        checks.append(check_memory(needs, gpus.gpus, num_gpus))
    download = base.level is Level.OK and not is_local_path(needs.base, run_dir) and not probes.hub_cached(needs.base)
    writes = disk_needs(needs, probes, run_dir=run_dir, images=images, from_epoch=from_epoch, download=download, before_install=before_install)
    checks.append(check_disk(writes, probes.disk_space))
    checks.append(check_checkpoints(needs))
    if needs.method == "controlnet":
        checks.append(check_conditioning(needs, run_dir))
    if needs.method == "textual_inversion":
        checks.append(check_token(needs, probes.vocabulary()))
    if not before_install:
        checks.append(check_sd_scripts(probes, repo_root, need_cuda=not cpu and bool(gpus.gpus)))
    return checks


def enforce(checks: list[Check]) -> list[str]:
    """The warning lines to show; raises one UserError listing every failure, one line each."""
    failures = [c.message for c in checks if c.level is Level.FAIL]
    if failures:
        raise UserError("\n".join(failures + ["(checked before launch; --skip-preflight launches anyway)"]))
    return [c.message for c in checks if c.level is Level.WARN]


def for_train(resolved: dict[str, Any], *, repo_root: Path, run_dir: Path, images: int, cpu: bool, num_gpus: int,
              from_epoch: int = 0, probes: Probes | None = None) -> list[str]:
    """`train`'s pre-flight: warnings to print, or a UserError naming each cause (nothing written either way)."""
    needs = RunNeeds.from_resolved(resolved)
    if needs is None:
        return []
    return enforce(run_checks(needs, repo_root=repo_root, run_dir=run_dir, images=images, cpu=cpu,
                              num_gpus=num_gpus, from_epoch=from_epoch, probes=probes))


def main(argv: list[str] | None = None) -> int:
    """go.sh's check of a bundled run before installing anything (`python -m bespoke_kohya.bundle preflight RUN`)."""
    parser = argparse.ArgumentParser(prog="python -m bespoke_kohya.engines.kohya.preflight", description=main.__doc__)
    parser.add_argument("--run", type=Path, required=True, help="run folder (its run.json)")
    parser.add_argument("--cpu", action="store_true", help="training will run on the CPU")
    parser.add_argument("--base", help="the base model go.sh will set (BASE_MODEL)")
    parser.add_argument("--before-install", action="store_true", help="sd-scripts is not installed yet: count the installs, skip its check")
    args = parser.parse_args(argv)
    run_dir = args.run.resolve()
    try:
        record = run_document(run_dir)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    resolved = record.get("resolved") or {}
    if args.base and resolved.get("kohya"):
        resolved = {**resolved, "kohya": {**resolved["kohya"], "pretrained_model_name_or_path": args.base}}
    needs = RunNeeds.from_resolved(resolved)
    if needs is None:
        print(f"  ok: the {resolved.get('engine')} engine needs no pre-flight")
        return 0
    images = int((record.get("dataset") or {}).get("images") or 0)
    checks = run_checks(needs, repo_root=run_dir, run_dir=run_dir, images=images, cpu=args.cpu,
                        from_epoch=len(record.get("epochs") or {}), before_install=args.before_install)
    for c in checks:  # ok lines carry free-space figures that change between runs: only problems are printed in full
        if c.level in (Level.WARN, Level.FAIL):
            print(f"  {c.level.value}: {c.message}")
    passed = sum(c.level is Level.OK for c in checks)
    print(f"  pre-flight: {passed} of {len(checks)} checks passed")
    return 1 if any(c.level is Level.FAIL for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
