"""`bespoke-kohya smoke`: prove a fresh install trains and samples offline, in minutes.

Two tiny epochs of the sd15_576 preset at 64 px through sd-scripts on the CPU, on a
random-weight SD1.5 base (bespoke_kohya.offline_sd), then each epoch's LoRA sampled.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ...errors import UserError
from .offline_sd import MARKER, _write_text, build_random_sd15, write_tokenizer_cache
from ...paths import REPO_ROOT, cache_dir
from ...runfolder import LOSS_CSV, TRAIN_LOG, VALIDATION_CSV
from ...runfolder.records import read_loss, read_run, read_validation


# ---------------------------------------------------------------- `bespoke-kohya smoke`

SMOKE_PRESET = "sd15_576"
SMOKE_IMAGES = 8
SMOKE_RESOLUTION = 64  # 8x8 latents: the smallest size sd-scripts' SD1.x path handles
SMOKE_EPOCHS = 2
# Small and fast, and everything else the preset's own: the smoke run trains through the
# same render/launch/record code as `bespoke-kohya train`. Batches of 4 give 2 steps an
# epoch (at 64 px a step costs about the same for 1 image or 4: the weights dominate), and
# the higher learning rate moves the LoRA far enough in 4 steps to change a sample visibly.
# A split of 0.25 holds 2 of the 8 out for the validation loss (the default 0.1 would hold out 1
# that sd-scripts trains on as well), leaving 6 to train on: still 2 steps an epoch.
SMOKE_OVERRIDES = [
    f"resolution={SMOKE_RESOLUTION}", "allow_uneven_pixels=true", f"max_train_epochs={SMOKE_EPOCHS}", "train_batch_size=4",
    "network_dim=4", "network_alpha=2.0", "num_repeats=1", "cache_latents=false", "mixed_precision=no",
    "save_state=false", "learning_rate=1e-3", "unet_lr=1e-3", "text_encoder_lr=5e-4",
    "steps=2", "seeds=[1]", 'prompts=["lad, green solid background, black hair"]', "dataset.validation_split=0.25",
]
REPO_DATASET = REPO_ROOT / "dataset"
SYNTH_CAPTION = "pixel art, 24x24, portrait of bespoke punk {kind}, {bg} background, {hair} hair"

StageRow = tuple[str, bool, str]
SKIPPED = "skipped: an earlier stage failed"


class StageFailed(Exception):
    """A smoke stage did not pass; the message says why."""


def smoke_cache_dir() -> Path:
    """`$BESPOKE_CACHE/smoke` (default ~/.cache/bespoke-kohya/smoke), next to the tokenizer cache."""
    return cache_dir() / "smoke"


def synthetic_punks(out_dir: Path, count: int = SMOKE_IMAGES, seed: int = 0) -> Path:
    """Draw ``count`` punk-like 24x24 portraits with captions: solid background, head, hair, eyes, dark outline."""
    import numpy as np

    from ...images import save_png

    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    backgrounds = {"green": (96, 160, 96), "purple": (130, 90, 170), "red": (190, 70, 60), "yellow": (225, 200, 80), "blue": (80, 120, 200)}
    hairs = {"black": (25, 20, 20), "blonde": (230, 200, 110), "brown": (110, 70, 40), "red": (170, 60, 30)}
    for i in range(count):
        bg_name, bg = list(backgrounds.items())[i % len(backgrounds)]
        hair_name, hair = list(hairs.items())[int(rng.integers(len(hairs)))]
        skin = tuple(int(v) for v in rng.integers(90, 235, 3))
        img = np.empty((24, 24, 3), np.uint8)
        img[:] = bg
        img[6:24, 7:17] = (0, 0, 0)  # outline
        img[7:23, 8:16] = skin  # head and neck
        img[19:24, 5:19] = (0, 0, 0)
        img[20:24, 6:18] = tuple(int(v) for v in rng.integers(0, 256, 3))  # shoulders
        img[4:8, 7:17] = hair
        img[11, 10] = img[11, 13] = (20, 20, 60)  # eyes
        img[15, 10:14] = (120, 40, 40)  # mouth
        kind = "lad" if i % 2 == 0 else "lady"
        name = f"synthetic_{i:02d}_{kind}"
        save_png(img, out_dir / f"{name}.png")
        _write_text(out_dir / f"{name}.txt", SYNTH_CAPTION.format(kind=kind, bg=bg_name, hair=hair_name) + "\n")
    return out_dir


def choose_images(dataset: Path | None, out_dir: Path, count: int = SMOKE_IMAGES) -> str:
    """Copy ``count`` images (and their captions) spread over a dataset into ``out_dir``; returns where they came from.

    Source: ``dataset``, else `dataset/` of the checkout when it holds PNGs, else synthetic
    punks drawn here (nothing outside the checkout is assumed).
    """
    candidates = [dataset] if dataset is not None else [REPO_DATASET]
    for folder in candidates:
        if folder is None or not folder.is_dir():
            if dataset is not None:
                raise UserError(f"--dataset {dataset}: no such folder; pass a folder of 24x24 PNGs with .txt captions")
            continue
        pngs = sorted(folder.glob("*.png"))
        if not pngs:
            if dataset is not None:
                raise UserError(f"--dataset {dataset}: no .png images in it")
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        picked = pngs[:: max(1, len(pngs) // count)][:count]  # spread over the set, not 8 variants of one series
        for png in picked:
            shutil.copy2(png, out_dir / png.name)
            caption = png.with_suffix(".txt")
            if caption.is_file():
                shutil.copy2(caption, out_dir / caption.name)
        return f"{len(picked)} from {folder}"
    synthetic_punks(out_dir, count)
    return f"{count} synthetic punks drawn in code (no dataset found)"


@contextmanager
def _offline() -> Iterator[None]:
    """Forbid hub downloads (here and in sd-scripts, which inherits the environment) for the block."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _stage_sd_scripts() -> str:
    from .vendor import find_sd_scripts

    sd = find_sd_scripts(REPO_ROOT)
    if sd is None:
        raise StageFailed("not installed: run `make vendor` (or set SD_SCRIPTS_DIR and SD_SCRIPTS_PYTHON)")
    return f"{sd.path} ({sd.tag or (sd.commit or '?')[:12]})"


def _stage_base(base_dir: Path) -> str:
    cached = (base_dir / MARKER).is_file()
    started = time.perf_counter()
    build_random_sd15(base_dir)
    return f"{base_dir} ({'cached' if cached else f'built in {time.perf_counter() - started:.0f} s'})"


def _stage_tokenizers() -> str:
    from .vendor import tokenizer_cache_dir

    entries = write_tokenizer_cache(tokenizer_cache_dir())
    return ", ".join(str(e) for e in entries)


def _stage_train(images: Path, run_dir: Path, base_dir: Path, console: Any, err_console: Any) -> str:
    from ...progress import TrainProgress
    from ..protocol import TrainOptions
    from ..session import new_run, start_session, train_run

    options = TrainOptions(preset=SMOKE_PRESET, overrides=[f"pretrained_model_name_or_path={base_dir}", *SMOKE_OVERRIDES], dataset=images, run_dir=run_dir, cpu=True)
    started = time.perf_counter()
    run, _ = new_run(options, console, err_console)
    session = start_session(run, options)
    with TrainProgress(console) as view:
        outcome = train_run(run, session, options, view.update)
    if outcome.status != "finished":
        cause = (outcome.failure.cause if outcome.failure else None) or f"exit status {outcome.exit_code}"
        raise StageFailed(f"status {outcome.status}: {cause}; log: {run_dir / TRAIN_LOG}")
    return f"{SMOKE_EPOCHS} epochs at {SMOKE_RESOLUTION} px in {time.perf_counter() - started:.0f} s, sd-scripts exit 0"


def _stage_checkpoints(run_dir: Path) -> str:
    epochs = read_run(run_dir).epochs
    wanted = [str(e) for e in range(1, SMOKE_EPOCHS + 1)]
    missing = [e for e in wanted if e not in epochs or not (run_dir / epochs[e]).is_file()]
    if missing:
        raise StageFailed(f"no checkpoint for epoch(s) {', '.join(missing)} (run.json epochs: {epochs})")
    return ", ".join(f"{e}: {epochs[e]} ({(run_dir / epochs[e]).stat().st_size / 1e6:.1f} MB)" for e in wanted)


def _stage_losses(run_dir: Path) -> str:
    rows = [r for r in read_loss(run_dir) if r.loss is not None]
    if not rows:
        raise StageFailed(f"{run_dir / LOSS_CSV} has no per-step losses (TensorBoard events unreadable?)")
    bad = [r.step for r in rows if r.loss != r.loss]  # NaN != NaN
    if bad:
        raise StageFailed(f"loss is NaN at step(s) {bad[:5]}")
    epochs = sorted({r.epoch for r in rows if r.epoch})
    validation = {r.epoch: r.loss for r in read_validation(run_dir) if r.loss is not None}
    if sorted(validation) != list(range(1, SMOKE_EPOCHS + 1)):
        raise StageFailed(f"{run_dir / VALIDATION_CSV} has a held-out loss for epochs {sorted(validation)}, expected 1 to {SMOKE_EPOCHS}")
    return (f"{len(rows)} steps over epochs {epochs}, loss {rows[0].loss:.3f} -> {rows[-1].loss:.3f}; "
            f"held-out loss {', '.join(f'{v:.3f}' for _, v in sorted(validation.items()))}")


def _stage_sample(run_dir: Path, base_dir: Path) -> str:
    import numpy as np
    from PIL import Image

    from ...sample import sample_run

    doc = sample_run(run_dir, device="cpu", include_base=True, base_override=str(base_dir), progress=False)
    first = {int(e): entry["images"][0]["full"] for e, entry in doc["epochs"].items()}
    if sorted(first) != list(range(SMOKE_EPOCHS + 1)):
        raise StageFailed(f"samples.json has epochs {sorted(first)}, expected 0 (base) to {SMOKE_EPOCHS}")
    pixels = {e: np.asarray(Image.open(run_dir / rel).convert("RGB"), dtype=np.int16) for e, rel in first.items()}
    size = pixels[0].shape[1::-1]
    changes = {e: float(np.abs(pixels[e] - pixels[0]).mean()) for e in range(1, SMOKE_EPOCHS + 1)}
    same = [e for e, d in changes.items() if d == 0]
    if same:
        raise StageFailed(f"epoch(s) {same} sampled exactly like the base model: the LoRA had no effect")
    return f"{size[0]}x{size[1]}, 2 steps; mean |pixel change| vs base: " + ", ".join(f"epoch {e} {d:.2f}" for e, d in changes.items())


def run_smoke(work_dir: Path | None = None, dataset: Path | None = None, keep: bool = False, console: Any = None) -> list[StageRow]:
    """Prove a fresh install trains and samples, offline, in minutes: one (stage, ok, detail) row per stage.

    Stages: sd-scripts found; random SD1.5 base built or cached (`$BESPOKE_CACHE/smoke/sd15-random`);
    tokenizer cache written; 8 images chosen; 2 tiny epochs at 64 px trained on the CPU through
    sd-scripts by the same code as `train`; both epoch checkpoints present; loss series parsed;
    each epoch's LoRA sampled on the random base (2 steps, 64 px) and differing from the base.
    The first failure ends the run: later stages are not attempted, and the work folder is kept.
    Hub downloads are switched off throughout (HF_HUB_OFFLINE=1).
    """
    from rich.console import Console

    console = console or Console()
    err_console = Console(stderr=True)
    own_dir = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="bespoke-smoke-")) if own_dir else Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    images, run_dir = work / "images", work / "run"
    for path in (images, run_dir):
        if path.exists():
            raise UserError(f"{path} exists: give `smoke` an empty or new --work-dir (nothing there is overwritten)")
    base_dir = smoke_cache_dir() / "sd15-random"
    stages: list[tuple[str, Any]] = [
        ("sd-scripts found", _stage_sd_scripts),
        ("random SD1.5 base", lambda: _stage_base(base_dir)),
        ("tokenizer cache", _stage_tokenizers),
        (f"{SMOKE_IMAGES} training images", lambda: choose_images(dataset, images)),
        (f"train {SMOKE_EPOCHS} epochs (sd-scripts, CPU)", lambda: _stage_train(images, run_dir, base_dir, console, err_console)),
        ("epoch checkpoints", lambda: _stage_checkpoints(run_dir)),
        ("loss series", lambda: _stage_losses(run_dir)),
        ("LoRA sampling", lambda: _stage_sample(run_dir, base_dir)),
    ]
    rows: list[StageRow] = []
    with _offline():
        for name, stage in stages:
            console.print(f"[bold]smoke:[/] {name} …")
            try:
                rows.append((name, True, str(stage())))
            except (StageFailed, UserError) as exc:
                rows.append((name, False, str(exc)))
                break
            except Exception as exc:  # an unexpected error is this stage's failure, reported, not a traceback
                rows.append((name, False, f"{exc.__class__.__name__}: {exc}"))
                break
    passed = len(rows) == len(stages) and all(ok for _, ok, _ in rows)
    rows += [(name, False, SKIPPED) for name, _ in stages[len(rows):]]
    if passed and not keep:
        shutil.rmtree(work if own_dir else images, ignore_errors=True)
        if not own_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
    elif not any(work.iterdir()):  # failed before writing anything: nothing worth keeping
        if own_dir:
            work.rmdir()
    else:
        # Informational (ok): the failing row above already decides the outcome.
        rows.append(("work folder", True, f"kept: {work}" + ("" if passed or not run_dir.exists() else f"; training log: {run_dir / 'logs' / 'train.log'}")))
    return rows
