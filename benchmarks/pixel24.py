"""pixel24 on this machine: throughput, time until samples look like punks, and held-out metrics.

    python benchmarks/pixel24.py                      # ~6 minutes on 2 idle cores
    python benchmarks/pixel24.py --minutes 10 --finetune-minutes 5 --samples 64

Three measurements, all in one run:

1. Training throughput (images/s) of the preset's U-Net at a few batch sizes.
2. Pretraining on the CryptoPunks stand-in (built into a temporary folder if needed):
   after each of ``--evals`` epochs, sample and score the outputs with
   ``bespoke_kohya.metrics`` against stand-in images, raw and "tidy" (colours merged
   below ΔE 6, capped at 24: the raw RGB output carries low-amplitude grain that makes
   every pixel a distinct colour). "Looks like punks by the metrics" = the first epoch
   where, on average over background solidity, background area and dark outline, at
   least ``--punk-shape`` of the tidy outputs fall inside the originals' 5–95% range.
3. Fine-tuning on part of the real Bespoke set with the rest held out: metrics of samples
   (prompted with the held-out captions) next to the same metrics of the held-out
   originals the model never saw, both against the training part.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bespoke_kohya import metrics, pixel24, standin  # noqa: E402
from bespoke_kohya.images import load_rgb  # noqa: E402
from bespoke_kohya.presets import load_preset  # noqa: E402

DEFAULT_BESPOKE = REPO.parent / "shared" / "datasets" / "bespoke-punks-24"
PROMPTS = [
    "lad, wearing cap, green background",
    "lady, blonde bob hair, purple background",
    "lad, mohawk, wearing big shades, yellow background",
    "lady, wild hair, dark skin tone, light blue background",
]
TRIGGER = "pixel art, 24x24, portrait of bespoke punk "
SUFFIX = ", hard color borders, sharp pixel edges"
SHAPE = ["border_solidity", "background_area", "dark_outline"]
MERGE_DELTA_E = 6.0  # the tidy step: merge the output's colours closer than this ...
MAX_COLOURS = 24  # ... then cap the count (Bespoke median: 23)
SHOWN = ["distinct_colours", "perceptual_colours", "palette_adherence", "border_solidity", "background_area", "dark_outline", "orphan_pixels", "nearest_distance"]


def throughput(preset_name: str, batches: list[int], steps: int) -> None:
    """Images/s of full training steps (forward, backward, AdamW) on random data."""
    import torch
    from diffusers import UNet2DModel

    settings = load_preset(preset_name).pixel24
    print(f"\n## 1. Throughput ({preset_name}: block_out_channels {settings.block_out_channels}, layers_per_block {settings.layers_per_block}, {pixel24.cpu_threads()} CPU threads)")
    print("| batch | images/s |\n|---|---|")
    torch.set_num_threads(pixel24.cpu_threads())
    for batch in batches:
        torch.manual_seed(0)
        unet = UNet2DModel(**pixel24.unet_config(settings))
        opt = torch.optim.AdamW(unet.parameters(), 1e-4)
        x, emb = torch.randn(batch, 3, 24, 24), torch.randn(batch, settings.block_out_channels[0] * 4)
        times = []
        for _ in range(steps + 2):
            t0 = time.perf_counter()
            loss = unet(x, torch.randint(0, 1000, (batch,)), class_labels=emb).sample.pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        print(f"| {batch} | {batch / float(np.median(times[2:])):.0f} |")


def tidy(img: np.ndarray) -> np.ndarray:
    """Merge near-identical colours and cap their number: the raw RGB output carries low-amplitude grain."""
    from PIL import Image

    from bespoke_kohya.postprocess import cap_colours, merge_close_colours

    return np.asarray(cap_colours(merge_close_colours(Image.fromarray(img), MERGE_DELTA_E), MAX_COLOURS))


def shape_in_range(scored: dict) -> float:
    """Mean share of outputs inside the reference's 5–95% range for the shape metrics (background, outline)."""
    return float(np.mean([scored["in_range"][k] for k in SHAPE]))


def sample_and_score(checkpoint: Path, prompts: list[str], seeds: list[int], ref: metrics.Reference, steps: int, guidance: float) -> tuple[dict, list[np.ndarray], float]:
    """Sample prompts × seeds, score them; returns (epoch metrics, images, seconds spent sampling)."""
    model = pixel24.load_checkpoint(checkpoint)
    t0 = time.perf_counter()
    images = pixel24.sample(model, prompts, seeds, steps=steps, guidance_scale=guidance)
    spent = time.perf_counter() - t0
    flat = [im for row in images for im in row]
    groups = [str(i) for i, row in enumerate(images) for _ in row]
    return metrics.epoch_metrics(flat, ref, groups=groups), flat, spent


def save_grid(images: list[np.ndarray], columns: int, path: Path) -> None:
    """An 8× NEAREST grid of 24×24 images."""
    from PIL import Image

    rows = [np.concatenate(images[i : i + columns], axis=1) for i in range(0, len(images), columns)]
    rows[-1] = np.pad(rows[-1], ((0, 0), (0, rows[0].shape[1] - rows[-1].shape[1]), (0, 0)), constant_values=255)
    grid = np.concatenate(rows, axis=0)
    Image.fromarray(grid).resize((grid.shape[1] * 8, grid.shape[0] * 8), Image.NEAREST).save(path)


def estimate_steps(preset_name: str, minutes: float, batch: int) -> int:
    """Optimizer steps that fit in ``minutes`` at the throughput of a short timing run."""
    import torch
    from diffusers import UNet2DModel

    settings = load_preset(preset_name).pixel24
    torch.set_num_threads(pixel24.cpu_threads())
    unet = UNet2DModel(**pixel24.unet_config(settings))
    opt = torch.optim.AdamW(unet.parameters(), 1e-4)
    x, emb = torch.randn(batch, 3, 24, 24), torch.randn(batch, settings.block_out_channels[0] * 4)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        unet(x, torch.randint(0, 1000, (batch,)), class_labels=emb).sample.pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    return max(1, int(minutes * 60 / float(np.median(times[1:]))))


def pretrain(args: argparse.Namespace, work: Path) -> Path:
    """Section 2: train on the stand-in, score each epoch; returns the run folder."""
    data = Path(args.standin) if args.standin else standin.build_standin(work / "standin")
    paths = sorted(data.glob("*.png"))
    ref_paths = paths[:: max(1, len(paths) // args.reference)][: args.reference]
    ref = metrics.Reference.from_images([p.stem for p in ref_paths], [load_rgb(p) for p in ref_paths])
    preset = load_preset(args.preset)
    steps = estimate_steps(args.preset, args.minutes, preset.pixel24.batch_size)
    overrides = [f"epochs={args.evals}", f"max_steps={steps}"] + list(args.set or [])
    preset = load_preset(args.preset, overrides)
    run = work / "pretrain"
    print(f"\n## 2. Pretraining on the stand-in ({len(paths)} images, {args.minutes:g} min budget ≈ {steps} steps of {preset.pixel24.batch_size}; overrides {overrides})")
    log: list[dict] = []
    t0 = time.perf_counter()
    marks: dict[int, float] = {}

    def on_step(event: dict) -> None:
        log.append(event)
        marks[event["epoch"]] = time.perf_counter() - t0

    result = pixel24.train(preset, data, run, on_step=on_step)
    print(f"trained {result['steps']} steps in {result['seconds']:.0f} s: {result['images_per_s']:.0f} images/s")
    print(f"Raw = the model's RGB output; tidy = colours merged below ΔE {MERGE_DELTA_E:g} and capped at {MAX_COLOURS}. "
          f"'shape' = share of tidy outputs inside the stand-in's 5–95% range of {', '.join(SHAPE)}, averaged.")
    print("| epoch | wall s (train) | images seen | avg loss | raw style | raw colours | tidy colours | tidy orphan px | tidy border solid | tidy bg area | tidy dark outline | shape | sample s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    first_punk = None
    s = preset.pixel24
    for epoch, rel in sorted(result["epochs"].items()):
        scored, images, spent = sample_and_score(run / rel, [TRIGGER + p + SUFFIX for p in PROMPTS], list(range(1, args.seeds + 1)), ref, s.sample_steps, s.guidance_scale)
        tidied = metrics.epoch_metrics([tidy(im) for im in images], ref)
        seen = sum(1 for e in log if e["epoch"] <= epoch) * s.batch_size
        avg = [e["avg_loss"] for e in log if e["epoch"] == epoch][-1]
        v, t = scored["values"], tidied["values"]
        shape = shape_in_range(tidied)
        print(f"| {epoch} | {marks[epoch]:.0f} | {seen} | {avg:.4f} | {scored['style']:.2f} | {v['distinct_colours']:.0f} | {t['distinct_colours']:.0f} | {t['orphan_pixels']:.2f} "
              f"| {t['border_solidity']:.2f} | {t['background_area']:.2f} | {t['dark_outline']:.2f} | {shape:.2f} | {spent:.1f} |")
        if first_punk is None and shape >= args.punk_shape:
            first_punk = (epoch, marks[epoch])
        save_grid(images, args.seeds, work / f"pretrain-epoch{epoch}.png")
    d = ref.distributions
    print(f"(stand-in originals, medians: colours {np.median(d['distinct_colours']):.0f}, orphan px {np.median(d['orphan_pixels']):.2f}, border solid {np.median(d['border_solidity']):.2f}, "
          f"bg area {np.median(d['background_area']):.2f}, dark outline {np.median(d['dark_outline']):.2f})")
    if first_punk:
        print(f"samples first look like punks by the metrics (shape ≥ {args.punk_shape}) after epoch {first_punk[0]}: {first_punk[1]:.0f} s of training")
    else:
        print(f"shape never reached {args.punk_shape} within {args.minutes:g} min; try --minutes {args.minutes * 2:g}")
    print(f"grids: {work}/pretrain-epoch*.png (rows = prompts, columns = seeds)")
    return run


def finetune(args: argparse.Namespace, work: Path, pretrained: Path) -> None:
    """Section 3: fine-tune on part of the Bespoke set; samples vs held-out originals."""
    bespoke = Path(args.bespoke)
    if not bespoke.is_dir():
        print(f"\n## 3. skipped: Bespoke dataset not found at {bespoke} (pass --bespoke)")
        return
    paths = sorted(bespoke.glob("*.png"))
    held = paths[:: args.holdout_every]
    train_paths = [p for p in paths if p not in held]
    train_dir = work / "bespoke-train"
    train_dir.mkdir()
    for p in train_paths:
        (train_dir / p.name).symlink_to(p)
        if p.with_suffix(".txt").exists():
            (train_dir / p.with_suffix(".txt").name).symlink_to(p.with_suffix(".txt"))
    preset = load_preset(args.preset)
    steps = estimate_steps(args.preset, args.finetune_minutes, preset.pixel24.batch_size)
    # One epoch of ~`steps` steps: the 147 images repeated (an epoch of them alone is 3 steps).
    repeats = max(1, round(steps * preset.pixel24.batch_size / len(train_paths)))
    overrides = ["epochs=1", f"num_repeats={repeats}", f"init_from={pretrained}", f"learning_rate={args.finetune_lr}"] + list(args.set or [])
    preset = load_preset(args.preset, overrides)
    print(f"\n## 3. Fine-tuning on {len(train_paths)} Bespoke Punks, {len(held)} held out ({args.finetune_minutes:g} min ≈ {steps} steps)")
    result = pixel24.train(preset, train_dir, work / "finetune", on_step=None)
    ref = metrics.Reference.from_images([p.stem for p in train_paths], [load_rgb(p) for p in train_paths])
    captions = [p.with_suffix(".txt").read_text(encoding="utf-8").strip() if p.with_suffix(".txt").exists() else preset.dataset.default_caption for p in held]
    model = pixel24.load_checkpoint(work / "finetune" / result["epochs"][1])
    unknown = sorted({w for c in captions for w in pixel24.encode_prompt(model, c)[1]})
    # Output k: held-out caption k (cycled) with seed k + 1, so no two outputs share starting noise.
    s = preset.pixel24
    flat = [pixel24.sample(model, [captions[k % len(captions)]], [k + 1], steps=s.sample_steps, guidance_scale=s.guidance_scale)[0][0] for k in range(args.samples)]
    ours = metrics.epoch_metrics(flat, ref)
    ours_tidy = metrics.epoch_metrics([tidy(im) for im in flat], ref)
    originals = metrics.epoch_metrics([load_rgb(p) for p in held], ref)
    print(f"trained {result['steps']} steps in {result['seconds']:.0f} s; {len(unknown)} held-out caption words unknown to the model")
    print("| metric (median) | pixel24 raw | pixel24 tidy | held-out originals | training set |\n|---|---|---|---|---|")
    train_values = ref.values()
    for key in SHOWN:
        cells = [ours["values"][key], ours_tidy["values"][key], originals["values"][key], train_values.get(key)]
        print(f"| {metrics.METRICS[key].label} | " + " | ".join(_fmt(c) for c in cells) + " |")
    print(f"| style score | {ours['style']:.2f} | {ours_tidy['style']:.2f} | {originals['style']:.2f} | – |")
    print(f"| shape in range | {shape_in_range(ours):.2f} | {shape_in_range(ours_tidy):.2f} | {shape_in_range(originals):.2f} | – |")
    print(f"| near-copies | {len(ours['copies'])}/{ours['n']} | {len(ours_tidy['copies'])}/{ours_tidy['n']} | {len(originals['copies'])}/{originals['n']} | – |")
    save_grid(flat, 8, work / "finetune-samples.png")
    save_grid([load_rgb(p) for p in held], 8, work / "heldout-originals.png")
    print(f"grids: {work}/finetune-samples.png, {work}/heldout-originals.png")


def _fmt(value: float | None) -> str:
    return "–" if value is None else (f"{value:.0f}" if value >= 10 else f"{value:.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="pixel24")
    ap.add_argument("--set", action="append", help="preset override key=value (repeatable)")
    ap.add_argument("--standin", help="existing stand-in folder (default: build one in the work folder)")
    ap.add_argument("--bespoke", default=str(DEFAULT_BESPOKE), help="Bespoke Punks folder for the held-out comparison")
    ap.add_argument("--work", help="keep outputs here (default: a temporary folder, kept and printed)")
    ap.add_argument("--minutes", type=float, default=4.0, help="pretraining budget")
    ap.add_argument("--evals", type=int, default=3, help="epochs (= evaluation points) in the pretraining budget")
    ap.add_argument("--finetune-minutes", type=float, default=1.5)
    ap.add_argument("--finetune-lr", type=float, default=2e-4)
    ap.add_argument("--holdout-every", type=int, default=5, help="every N-th Bespoke image (sorted) is held out")
    ap.add_argument("--samples", type=int, default=32, help="samples for the held-out comparison")
    ap.add_argument("--seeds", type=int, default=8, help="seeds per prompt when scoring pretraining epochs")
    ap.add_argument("--reference", type=int, default=400, help="stand-in images in the metrics reference")
    ap.add_argument("--punk-shape", type=float, default=0.5, help="'shape' value that counts as 'looks like punks' (see the table legend)")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--pretrained", help="an existing pixel24 run (or checkpoint) to fine-tune from: skips section 2")
    args = ap.parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="pixel24-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# pixel24 benchmark (outputs in {work})")
    if not args.skip_throughput:
        throughput(args.preset, [32, 64, 128], steps=4)
    run = Path(args.pretrained) if args.pretrained else pretrain(args, work)
    finetune(args, work, run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
