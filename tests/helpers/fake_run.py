"""Build a realistic run directory from REAL Bespoke Punks, for report/metrics tests.

The run looks like one that `train` + `sample` produced: run.json (finished, one
checkpoint per epoch), logs/loss.csv with a decreasing curve, and for each epoch the
fixed prompt × seed suite as full-size PNGs, their true 24×24 results and ×8
previews, recorded in samples/samples.json. Every run file is written by the run
contract (bespoke_kohya.runfolder), so a format lives in one place.

The epochs are built to be told apart by the style metrics:
  epoch 1 ("bad"):       blurred, noisy, colour-drifted renders (what a young LoRA makes);
  epoch 2 ("good"):      clean renders of real punks with small changes (mirrored,
                         background recoloured), so they are new images in the style;
  epoch 3 ("memorised"): exact copies of training images.

Usage: ``build_fake_run(tmp_path / "run", punks_dir)``; options remove pieces to
build the broken runs the report must explain (no samples, a missing epoch, a failed
training), or add held-out validation: ``heldout_seeds=N`` holds out 10% of the images
(dataset.split_heldout, as `render` does), writes their prepared copies into data/ and
draws each held-out caption with the first N seeds in every epoch (the same three kinds);
``validation={epoch: loss}`` writes logs/validation.csv.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from bespoke_kohya.dataset import split_heldout
from bespoke_kohya.presets import Preset, load_preset
from bespoke_kohya.runfolder import Status, write_reproduce_document
from bespoke_kohya.runfolder.records import (DatasetRef, Failure, LossRow, RunRecord, SampledEpoch, SampleImage, Samples, ValidationRow, write_loss, write_run, write_samples,
                                             write_validation)
from bespoke_kohya.sample import prompt_ids, suite_id

PROMPTS = [
    "lad, green solid background, black hair, blue eyes, light skin",
    "lady, blonde hair, purple background, green eyes, slight smile",
    "lad, wearing gray baseball cap, brown eyes, medium male skin tone, red background",
]
SEEDS = [1, 2]
KINDS = {1: "degraded", 2: "clean-new", 3: "copy"}


@dataclass
class FakeRun:
    """What was built, so tests can check the report against it."""

    run_dir: Path
    dataset_dir: Path
    epochs: list[int]
    prompt_ids: list[str]
    seeds: list[int]
    # (epoch, prompt_id, seed) -> the 24x24 array written as the .24.png
    arts: dict[tuple[int, str, int], np.ndarray] = field(default_factory=dict)
    # (epoch, prompt_id, seed) -> the training image an epoch-3 copy was taken from
    sources: dict[tuple[int, str, int], str] = field(default_factory=dict)
    heldout: list[str] = field(default_factory=list)  # held-out prepared file names (run.json dataset.heldout)
    # (epoch, held-out file name, seed) -> the 24x24 array drawn from that image's caption
    heldout_arts: dict[tuple[int, str, int], np.ndarray] = field(default_factory=dict)


def load_punks(dataset_dir: Path) -> list[tuple[str, np.ndarray]]:
    """(stem, RGB uint8 24x24) for every PNG of the real dataset, sorted by name."""
    out = []
    for path in sorted(dataset_dir.glob("*.png")):
        with Image.open(path) as im:
            out.append((path.stem, np.asarray(im.convert("RGB"), dtype=np.uint8)))
    return out


# ------------------------------------------------------------------ the three kinds of render


def upscale(art: np.ndarray, size: int) -> np.ndarray:
    """A full-size render of an art image: NEAREST upscale (what a good model draws)."""
    return np.asarray(Image.fromarray(art).resize((size, size), Image.NEAREST))


def degrade(full: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur, colour drift and noise: a render whose pixel grid and palette have fallen apart."""
    im = Image.fromarray(full).filter(ImageFilter.GaussianBlur(radius=full.shape[0] / 48))
    arr = np.asarray(im).astype(np.float64)
    arr += rng.normal(0, 3, size=3)  # one global drift per image
    arr += rng.normal(0, 28, size=arr.shape)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def vary(art: np.ndarray, donor: np.ndarray) -> np.ndarray:
    """A new punk in the style: mirrored, with its background recoloured to another punk's.

    The background is the colour of the top-left pixel; only pixels of exactly that
    colour change, so edges stay hard and the palette stays the dataset's.
    """
    out = art[:, ::-1].copy()
    bg = out[0, 0].copy()
    new_bg = donor[0, 0]
    if np.array_equal(new_bg, bg):
        new_bg = donor[0, -1] if not np.array_equal(donor[0, -1], bg) else (255 - bg)
    out[(out == bg).all(axis=-1)] = new_bg
    return out


def to_art(full: np.ndarray) -> np.ndarray:
    """The sampler's `nearest` post-processing: full-size → 24×24 with NEAREST."""
    return np.asarray(Image.fromarray(full).resize((24, 24), Image.NEAREST))


def render_epoch(kind: str, index: int, punks: list[tuple[str, np.ndarray]], size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """(full-size image, 24×24 result, source punk name) for one prompt × seed of an epoch."""
    # Spread the picks over the dataset so lads and ladies both appear.
    name, art = punks[(index * 37 + 11) % len(punks)]
    if kind == "copy":
        full = upscale(art, size)
    elif kind == "clean-new":
        donor = punks[(index * 53 + 90) % len(punks)][1]
        full = upscale(vary(art, donor), size)
    else:
        full = degrade(upscale(art, size), rng)
    return full, to_art(full), name


# ------------------------------------------------------------------ files


def save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_checkpoint(path: Path, epoch: int) -> None:
    """A real (tiny) safetensors file, so the recorded sha256 is of real bytes."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"lora_unet_down.weight": np.full((4, 4), epoch, dtype=np.float32)}, str(path))


def loss_rows(epochs: int, steps_per_epoch: int, seed: int = 0) -> list[LossRow]:
    """A decreasing, noisy loss with a running average and a cosine learning rate."""
    rng = np.random.default_rng(seed)
    rows, total, avg = [], epochs * steps_per_epoch, None
    for step in range(1, total + 1):
        loss = 0.015 + 0.02 * math.exp(-step / (total / 3)) + abs(rng.normal(0, 0.004))
        avg = loss if avg is None else 0.9 * avg + 0.1 * loss
        lr = 1e-4 * 0.5 * (1 + math.cos(math.pi * (step - 1) / total))
        rows.append(LossRow(step=step, epoch=(step - 1) // steps_per_epoch + 1, loss=loss, avg_loss=avg, lr=lr))
    return rows


def fake_preset() -> Preset:
    """The shipped sd15_512 preset with this fake run's prompt suite and NEAREST post-processing."""
    preset = load_preset("sd15_512")
    preset.sample.prompts = list(PROMPTS)
    preset.sample.seeds = list(SEEDS)
    preset.sample.postprocess = "nearest"
    preset.sample.palette_max_delta_e = None
    return preset


def suite(preset: Preset, size: int) -> dict[str, Any]:
    """The suite block `sample` records: settings, prompts with ids, seeds (see sample.suite_record)."""
    settings = preset.sample.model_dump(mode="json")
    settings.update(width=size, height=size, base="runwayml/stable-diffusion-v1-5", pipeline="StableDiffusionPipeline", device="cuda", dtype="float16")
    prompts = preset.sample.full_prompts()
    return {"settings": settings, "prompts": [{"id": pid, "prompt": p} for pid, p in zip(prompt_ids(prompts), prompts)], "seeds": list(SEEDS)}


def run_record(run_dir: Path, dataset_dir: Path, epochs: dict[str, str], status: str, preset: Preset) -> RunRecord:
    """run.json as `train` writes it for a kohya run."""
    record = RunRecord(
        id=run_dir.name, preset=preset.name, engine=preset.engine, script=preset.script, resolved=preset.model_dump(mode="json"),
        overrides=["sample.postprocess=nearest"],
        dataset=DatasetRef(path=str(dataset_dir.resolve()), content_hash="0" * 64, images=len(list(dataset_dir.glob("*.png")))),
        status=Status(status), created="2025-01-01T00:00:00+00:00", epochs=epochs,
    )
    if status == "failed":
        record.failure = Failure(
            cause="CUDA out of memory while training epoch 3",
            tail=["steps:  66%|██████▌   | 400/609", "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB <GPU 0>"],
        )
    return record


def build_fake_run(
    run_dir: Path,
    dataset_dir: Path,
    *,
    epochs: int = 3,
    size: int = 512,
    with_samples: bool = True,
    skip_sample_epochs: tuple[int, ...] = (),
    skip_checkpoint_epochs: tuple[int, ...] = (),
    status: str = "finished",
    with_loss: bool = True,
    reproduce: dict[str, Any] | None = None,
    heldout_seeds: int = 0,
    validation: dict[int, float] | None = None,
    prepared: bool = True,
) -> FakeRun:
    """Write a run directory (see the module docstring) and return what is in it.

    ``skip_sample_epochs``: epochs whose checkpoint exists but that were never sampled.
    ``skip_checkpoint_epochs``: epochs with no checkpoint at all (a gap in run.json).
    ``status="failed"``: run.json records a failure (cause + log tail).
    ``prepared=False``: no data/ (a run copied without its training images).
    """
    punks = load_punks(dataset_dir)
    preset = fake_preset()
    fake = FakeRun(run_dir, dataset_dir, [], prompt_ids(PROMPTS), list(SEEDS))
    checkpoints: dict[str, str] = {}
    for epoch in range(1, epochs + 1):
        if epoch in skip_checkpoint_epochs:
            continue
        rel = f"checkpoints/bespoke-{epoch:06d}.safetensors" if epoch < epochs else "checkpoints/bespoke.safetensors"
        write_checkpoint(run_dir / rel, epoch)
        checkpoints[str(epoch)] = rel
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    (run_dir / "logs" / "train.log").write_text("epoch 1/3\nepoch 2/3\nepoch 3/3\n", encoding="utf-8")
    if with_loss:
        write_loss(run_dir, loss_rows(epochs, steps_per_epoch=40))
    if prepared:
        write_prepared(run_dir, dataset_dir, punks, size)
    if heldout_seeds:
        _, fake.heldout = split_heldout([f"{name}.png" for name, _ in punks], 0.1, 42)
    if validation is not None:
        write_validation(run_dir, [ValidationRow(epoch=e, step=e * 40, loss=v) for e, v in validation.items()])
    if with_samples:
        samples = fake_samples(run_dir, checkpoints, punks, suite(preset, size), skip_sample_epochs, fake)
        add_heldout_draws(run_dir, samples, punks, fake, SEEDS[:heldout_seeds], size)
        write_samples(run_dir, samples)
    record = run_record(run_dir, dataset_dir, checkpoints, status, preset)
    record.dataset.heldout = list(fake.heldout) if heldout_seeds else None
    write_run(run_dir, record)
    if reproduce is not None:
        write_reproduce_document(run_dir, reproduce)
    return fake


def fake_samples(
    run_dir: Path,
    checkpoints: dict[str, str],
    punks: list[tuple[str, np.ndarray]],
    suite_doc: dict[str, Any],
    skip: tuple[int, ...],
    fake: FakeRun,
) -> Samples:
    """Write every epoch's images and return the samples.json document (sample.py's format)."""
    sid = suite_id(suite_doc)
    doc = Samples(**suite_doc, suite_id=sid)
    for epoch_s, rel in checkpoints.items():
        epoch = int(epoch_s)
        if epoch in skip:
            continue
        kind = KINDS.get(epoch, "clean-new")
        rng = np.random.default_rng(epoch)
        images = []
        index = 0
        for entry in suite_doc["prompts"]:
            pid, text = entry["id"], entry["prompt"]
            for seed in suite_doc["seeds"]:
                full, art, source = render_epoch(kind, index, punks, suite_doc["settings"]["width"], rng)
                index += 1
                stem = f"samples/epoch-{epoch:03d}/{pid}-s{seed}"
                save(full, run_dir / f"{stem}.png")
                save(art, run_dir / f"{stem}.24.png")
                save(upscale(art, 24 * 8), run_dir / f"{stem}.x8.png")
                fake.arts[(epoch, pid, seed)] = art
                fake.sources[(epoch, pid, seed)] = source
                images.append({"prompt_id": pid, "prompt": text, "seed": seed, "full": f"{stem}.png", "art": f"{stem}.24.png", "preview": f"{stem}.x8.png", "grid": None})
        doc.epochs[epoch_s] = SampledEpoch.model_validate({
            "checkpoint": rel,
            "sha256": sha256(run_dir / rel),
            "base_only": False,
            "lora_metadata": {"ss_epoch": epoch_s, "ss_network_dim": "32"},
            "suite_id": sid,
            "sampled": "2025-01-01T01:00:00+00:00",
            "seconds": 12.5,
            "images": images,
        })
        fake.epochs.append(epoch)
    return doc


# ------------------------------------------------------------------ held-out validation


def write_prepared(run_dir: Path, dataset_dir: Path, punks: list[tuple[str, np.ndarray]], size: int) -> None:
    """What `render` leaves in data/: every image NEAREST-upscaled, with its caption (later stages read the originals from here)."""
    folder = run_dir / "data" / "10_bespoke_punk"
    for name, art in punks:
        save(upscale(art, size), folder / f"{name}.png")
        caption = dataset_dir / f"{name}.txt"
        (folder / f"{name}.txt").write_text(caption.read_text(encoding="utf-8") if caption.is_file() else f"bespoke punk {name}\n", encoding="utf-8")


def heldout_caption(run_dir: Path, name: str) -> str:
    return (run_dir / "data" / "10_bespoke_punk" / f"{Path(name).stem}.txt").read_text(encoding="utf-8").strip()


def add_heldout_draws(run_dir: Path, samples: Samples, punks: list[tuple[str, np.ndarray]], fake: FakeRun, seeds: list[int], size: int) -> None:
    """Each held-out caption drawn with ``seeds`` in every sampled epoch, of the epoch's kind (sample.py's format)."""
    if not seeds:
        return
    arts = dict(punks)
    training = [(n, a) for n, a in punks if f"{n}.png" not in fake.heldout]
    for epoch_s, entry in samples.epochs.items():
        epoch = int(epoch_s)
        kind = KINDS.get(epoch, "clean-new")
        rng = np.random.default_rng(1000 + epoch)
        for i, name in enumerate(fake.heldout):
            stem = Path(name).stem
            for seed in seeds:
                real = arts[stem]
                if kind == "copy":  # a memorised epoch returns training images, whatever the caption
                    full = upscale(training[(i * 7 + seed) % len(training)][1], size)
                elif kind == "clean-new":
                    full = upscale(vary(real, training[(i * 13 + seed * 5) % len(training)][1]), size)
                else:
                    full = degrade(upscale(real, size), rng)
                art = to_art(full)
                rel = f"samples/epoch-{epoch:03d}/heldout-{stem}-s{seed}"
                save(full, run_dir / f"{rel}.png")
                save(art, run_dir / f"{rel}.24.png")
                fake.heldout_arts[(epoch, name, seed)] = art
                entry.images.append(SampleImage(prompt_id=f"heldout-{stem}", prompt=heldout_caption(run_dir, name), seed=seed, full=f"{rel}.png", art=f"{rel}.24.png", heldout=name))
