"""pixel24's sampler variants on one trained model: refinement by pixel or by connected component, steps, batch, precision.

    .venv/bin/python benchmarks/pixel24.py --part new --keep          # trains the model this reads (~20 min)
    .venv/bin/python benchmarks/pixel24_refine.py                     # the default variants, ~10 min on 2 cores
    .venv/bin/python benchmarks/pixel24_refine.py --variant 'T 0.4={"temperature": 0.4}' --no-defaults

Draws the held-out captions of ``benchmarks/pixel24.py`` (its ``--keep`` folder) with two
sets of 8 seeds for each sampler variant and measures each set as that benchmark does: the
two-sample test (grouped folds, mean over its four test seeds, both seed sets: 8 values),
colours per image, orphan share and ring colours (medians), caption adherence, near-copies of
the training punks, and the drawing time of the first 160 (in this process, the load
average beside it). Only the sampler changes between rows: same weights, captions and seeds;
a variant's keywords override the run's own ``sampler_options()``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bespoke_kohya import distinguish, metrics  # noqa: E402
from bespoke_kohya.engines.pixel24 import api as pixel24  # noqa: E402
from bespoke_kohya.images import load_rgb  # noqa: E402
from bespoke_kohya.presets import validate_preset  # noqa: E402
from benchmarks.pixel24 import DEFAULT_BESPOKE, TEST_SEEDS, uptime  # noqa: E402

SEED_SETS = (list(range(1, 9)), list(range(9, 17)))
# (label, overrides of the run's own sampler options); {} = the run's own settings
VARIANTS: list[tuple[str, dict]] = [
    ("the run's own settings", {}),
    ("MaskGIT only (refine_rounds=0)", {"refine_rounds": 0}),
    ("refine by component (areas ≤ 8 px)", {"refine_components": 8}),
    ("refine by component (areas ≤ 16 px)", {"refine_components": 16}),
]


def measure(model: pixel24.Pixel24Model, knobs: dict, prompts: list[str], real: np.ndarray, training: np.ndarray, seed_sets: tuple[list[int], ...]) -> dict:
    accuracies, colours, orphans, rings, adherence, copies, seconds, loads = [], [], [], [], [], [], [], []
    for seeds in seed_sets:
        loads.append(uptime().split()[0])
        started = time.perf_counter()
        drawn = pixel24.sample(model, prompts, seeds, **knobs)
        seconds.append(time.perf_counter() - started)
        images = np.stack([im for row in drawn for im in row])
        groups = [str(i // len(seeds)) for i in range(len(images))]
        accuracies += [distinguish.two_sample_accuracy(real, images, groups=groups, seed=s).accuracy for s in TEST_SEEDS]
        colours.append(float(np.median([metrics.colour_count(im) for im in images])))
        orphans.append(float(np.median([metrics.orphan_share(im) for im in images])))
        rings.append(float(np.median([metrics.ring_colours(im) for im in images])))
        adherence.append(metrics.caption_adherence([p for p in prompts for _ in seeds], list(images))[0])
        copies.append(distinguish.near_copy_share(images, training))
    return {"two_sample_grouped": float(np.mean(accuracies)), "each": accuracies, "colours": float(np.mean(colours)), "orphans": float(np.mean(orphans)),
            "ring_colours": float(np.mean(rings)), "caption_adherence": float(np.mean(adherence)), "near_copies": float(np.mean(copies)),
            "seconds": seconds[0], "load": loads[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "benchmark-pixel24" / "work", help="the --keep folder of benchmarks/pixel24.py")
    ap.add_argument("--run", default="run-new", help="the run folder inside --work")
    ap.add_argument("--dataset", type=Path, default=DEFAULT_BESPOKE)
    ap.add_argument("--epoch", type=int, default=None, help="the checkpoint to draw (default: the run's last)")
    ap.add_argument("--variant", action="append", default=[], metavar='LABEL={"key": value}', help="another variant (repeatable)")
    ap.add_argument("--no-defaults", action="store_true", help="only the --variant rows (and the run's own settings)")
    ap.add_argument("--skip-own", action="store_true", help="leave out the run's own settings' row (measured already)")
    ap.add_argument("--one-seed-set", action="store_true", help="seeds 1–8 only (half the time, twice the noise)")
    ap.add_argument("--save", type=Path, help="write each variant's first 160 images as LABEL.npy into this folder")
    args = ap.parse_args()
    run, prompts_file = args.work / args.run, args.work / "held-out-prompts-new.txt"
    if not prompts_file.is_file():
        raise SystemExit(f"{prompts_file}: not found; run `benchmarks/pixel24.py --part new --keep` first (or pass --work)")
    last = args.epoch or max(int(k) for k in json.loads((run / "run.json").read_text())["epochs"])
    model = pixel24.load_checkpoint(run / "checkpoints" / pixel24.checkpoint_name(last), device="cpu")
    own = validate_preset(json.loads((run / "run.json").read_text())["resolved"], f"{run}/run.json").pixel24.sampler_options()  # as `sample` draws
    prompts = prompts_file.read_text(encoding="utf-8").splitlines()
    real = np.stack([load_rgb(p) for p in sorted(args.dataset.glob("*.png"))])
    training = np.stack([load_rgb(p) for p in sorted((args.work / "train-164").glob("*.png"))])
    variants = [VARIANTS[0]] if args.no_defaults else list(VARIANTS)
    if args.skip_own:
        variants = variants[1:]
    for text in args.variant:
        label, _, knobs = text.partition("=")
        variants.append((label, json.loads(knobs)))
    seed_sets = SEED_SETS[:1] if args.one_seed_set else SEED_SETS
    print(f"{run} epoch {last}: {len(prompts)} held-out captions x {sum(map(len, seed_sets))} seeds per variant; its own sampler: {own}\n")
    print(f"| sampler | two-sample grouped (mean of {4 * len(seed_sets)}) | colours | orphans | ring colours | caption adherence | near-copies | draw 160 s (load) |")
    print("|---|---|---|---|---|---|---|---|")
    for label, overrides in variants:
        knobs = {**own, **overrides}
        r = measure(model, knobs, prompts, real, training, seed_sets)
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            np.save(args.save / f"{label.replace('/', '_')}.npy", np.stack([im for row in pixel24.sample(model, prompts, seed_sets[0], **knobs) for im in row]))
        print(f"| {label} | {r['two_sample_grouped']:.3f} ({min(r['each']):.2f}–{max(r['each']):.2f}) | {r['colours']:.1f} | {r['orphans']:.3f} | {r['ring_colours']:.1f} "
              f"| {r['caption_adherence']:.2f} | {r['near_copies']:.3f} | {r['seconds']:.1f} ({r['load']}) |", flush=True)


if __name__ == "__main__":
    main()
