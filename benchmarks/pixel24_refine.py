"""pixel24's sampler: plain MaskGIT against MaskGIT + refinement, on one trained model.

    .venv/bin/python benchmarks/pixel24.py --part new --keep          # trains the model this reads (~20 min)
    .venv/bin/python benchmarks/pixel24_refine.py                     # ~25 min on 2 cores

Draws the held-out captions of ``benchmarks/pixel24.py`` (its ``--keep`` folder) with two
sets of 8 seeds for each sampler variant and measures each set as that benchmark does: the
two-sample test (grouped folds, mean over its four test seeds), colours per image and
orphan share (medians), near-copies of the training punks, and the sampling time relative
to plain MaskGIT. Only the sampler changes between rows: same weights, captions and seeds.
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

from bespoke_kohya import distinguish, metrics, pixel24  # noqa: E402
from bespoke_kohya.images import load_rgb  # noqa: E402
from bespoke_kohya.presets import Pixel24Settings  # noqa: E402
from benchmarks.pixel24 import DEFAULT_BESPOKE, TEST_SEEDS  # noqa: E402

SEED_SETS = (list(range(1, 9)), list(range(9, 17)))
# (label, refinement overrides); None = the run's own settings (the preset's defaults)
VARIANTS: list[tuple[str, dict | None]] = [
    ("MaskGIT only (refine_rounds=0)", {"refine_rounds": 0}),
    ("defaults (2 rounds x 10%, 4 steps, T 0.3)", None),
    ("3 rounds x 15%, T 0.2", {"refine_rounds": 3, "refine_share": 0.15, "refine_temperature": 0.2}),
    ("2 rounds x 25%, 6 steps", {"refine_rounds": 2, "refine_share": 0.25, "refine_steps": 6}),
]


def measure(model: pixel24.Pixel24Model, knobs: dict, prompts: list[str], real: np.ndarray, training: np.ndarray) -> dict:
    accuracies, colours, orphans, copies, seconds = [], [], [], [], 0.0
    for seeds in SEED_SETS:
        started = time.perf_counter()
        drawn = pixel24.sample(model, prompts, seeds, **knobs)
        seconds += time.perf_counter() - started
        images = np.stack([im for row in drawn for im in row])
        groups = [str(i // len(seeds)) for i in range(len(images))]
        accuracies += [distinguish.two_sample_accuracy(real, images, groups=groups, seed=s).accuracy for s in TEST_SEEDS]
        colours.append(float(np.median([metrics.colour_count(im) for im in images])))
        orphans.append(float(np.median([metrics.orphan_share(im) for im in images])))
        copies.append(distinguish.near_copy_share(images, training))
    return {"two_sample_grouped": float(np.mean(accuracies)), "each": accuracies, "colours": float(np.mean(colours)),
            "orphans": float(np.mean(orphans)), "near_copies": float(np.mean(copies)), "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "benchmark-pixel24" / "work", help="the --keep folder of benchmarks/pixel24.py")
    ap.add_argument("--dataset", type=Path, default=DEFAULT_BESPOKE)
    args = ap.parse_args()
    run, prompts_file = args.work / "run-new", args.work / "held-out-prompts-new.txt"
    if not prompts_file.is_file():
        raise SystemExit(f"{prompts_file}: not found; run `benchmarks/pixel24.py --part new --keep` first (or pass --work)")
    last = max(int(k) for k in json.loads((run / "run.json").read_text())["epochs"])
    model = pixel24.load_checkpoint(run / "checkpoints" / pixel24.checkpoint_name(last), device="cpu")
    s = Pixel24Settings.model_validate(model.config["settings"])  # a run from before refinement gets today's defaults
    defaults = s.sampler_options()
    prompts = prompts_file.read_text(encoding="utf-8").splitlines()
    real = np.stack([load_rgb(p) for p in sorted(args.dataset.glob("*.png"))])
    training = np.stack([load_rgb(p) for p in sorted((args.work / "train-164").glob("*.png"))])
    print(f"{run} epoch {last}: {len(prompts)} held-out captions x {sum(map(len, SEED_SETS))} seeds per variant\n")
    print("| sampler | two-sample grouped (mean of 8) | colours | orphans | near-copies | time vs MaskGIT only |")
    print("|---|---|---|---|---|---|")
    base_seconds = None
    for label, overrides in VARIANTS:
        r = measure(model, {**defaults, **(overrides or {})}, prompts, real, training)
        base_seconds = base_seconds or r["seconds"]
        print(f"| {label} | {r['two_sample_grouped']:.3f} ({min(r['each']):.2f}–{max(r['each']):.2f}) | {r['colours']:.1f} | {r['orphans']:.3f} "
              f"| {r['near_copies']:.3f} | {r['seconds'] / base_seconds:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
