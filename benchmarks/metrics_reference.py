"""Re-measure the style metrics on the real Bespoke Punks, next to docs/pixel-facts.md.

Prints, from one run:
  1. each metric's median and 5–95% over the training set (leave-one-out for palette
     adherence and the nearest training punk), beside pixel-facts' figures;
  2. the near-copy threshold that follows from the leave-one-out distribution;
  3. grid alignment and cell flatness of full-size renders of real punks, clean and
     degraded the ways generated images are;
  4. how long the reference and ~50 outputs take.

Usage: python benchmarks/metrics_reference.py [--dataset DIR] [--renders N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bespoke_kohya import metrics as M

DEFAULT_DATASET = Path(os.environ.get("BESPOKE_DATASET", Path(__file__).resolve().parents[2] / "shared/datasets/bespoke-punks-24"))

# docs/pixel-facts.md, "Style metrics that separate real punks from failures" (204 punks).
PIXEL_FACTS = {
    "distinct_colours": "23 (13–50)",
    "perceptual_colours": "20 (11–38)",
    "palette_adherence": "0.67 (0.25–1.0)",
    "border_solidity": "0.85 (0.28–0.92)",
    "background_area": "0.51 (0.08–0.66)",
    "dark_outline": "0.54 (0–1)",
    "orphan_pixels": "0.15 (0.04–0.37)",
    "nearest_distance": "0.70 (0.06–0.93)",
}


def fmt(value: float) -> str:
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"


def reference_table(ref: M.Reference) -> None:
    print(f"Training set: {len(ref.names)} images, {len(ref.palette)} distinct colours in all\n")
    print(f"{'metric':24} {'median':>8} {'5%':>8} {'95%':>8}   pixel-facts median (5–95%)")
    for key, facts in PIXEL_FACTS.items():
        d = ref.distributions[key]
        lo, hi = np.percentile(d, [5, 95])
        print(f"{label(key):24} {fmt(float(np.median(d))):>8} {fmt(lo):>8} {fmt(hi):>8}   {facts}")
    d = ref.distributions["nearest_distance"]
    print(
        f"\nNear-copy threshold (5th percentile of leave-one-out NN distance, capped at {M.MAX_COPY_THRESHOLD}): "
        f"{ref.copy_threshold:.4f}; smallest NN distances: {', '.join(f'{x:.3f}' for x in np.sort(d)[:6])}"
    )
    share = float((d <= ref.copy_threshold).mean())
    print(f"Training images at or under it (the near-duplicate series): {share:.1%}")


def label(key: str) -> str:
    return M.METRICS[key].label


def renders(art: np.ndarray, size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Full-size versions of one punk: clean, and degraded the ways generated images are."""
    im = Image.fromarray(art)
    clean = np.asarray(im.resize((size, size), Image.NEAREST))
    blur1 = np.asarray(Image.fromarray(clean).filter(ImageFilter.GaussianBlur(1.0)))
    heavy = np.asarray(Image.fromarray(clean).filter(ImageFilter.GaussianBlur(size / 48)))

    def noise(x: np.ndarray, sigma: float) -> np.ndarray:
        return np.clip(x + rng.normal(0, sigma, x.shape), 0, 255).astype(np.uint8)

    return {
        "clean NEAREST": clean,
        "noise σ4": noise(clean, 4),
        "noise σ8": noise(clean, 8),
        "blur 1 px + noise σ4": noise(blur1, 4),
        "bicubic upscale (no grid)": np.asarray(im.resize((size, size), Image.BICUBIC)),
        f"blur {size / 48:.1f} px + noise σ28": noise(heavy, 28),
    }


def grid_table(ref: M.Reference, count: int) -> None:
    rng = np.random.default_rng(0)
    picks = np.linspace(0, len(ref.images) - 1, count).astype(int)
    for size in (512, 576):
        rows: dict[str, list[tuple[float, float]]] = {}
        for i in picks:
            for name, full in renders(ref.images[i], size, rng).items():
                g, f = M.grid_alignment(full), M.cell_flatness(full)
                rows.setdefault(name, []).append((np.nan if g is None else g, np.nan if f is None else f))
        print(f"\nFull-size renders at {size} px ({count} real punks, nominal grid): mean (min–max)")
        print(f"{'render':34} {'grid alignment':>22} {'cell flatness':>22}")
        for name, vals in rows.items():
            a = np.array(vals)
            cols = [f"{np.nanmean(a[:, j]):.3f} ({np.nanmin(a[:, j]):.2f}–{np.nanmax(a[:, j]):.2f})" for j in (0, 1)]
            print(f"{name:34} {cols[0]:>22} {cols[1]:>22}")
    print("pixel-facts (comb): clean 0.997, degraded 0.71–0.91, bicubic with no hard grid 0.36")


def timing(dataset: Path) -> M.Reference:
    t0 = time.perf_counter()
    ref = M.Reference.from_dataset(dataset)
    t1 = time.perf_counter()
    rng = np.random.default_rng(1)
    outputs = [np.clip(ref.images[i] + rng.normal(0, 6, (24, 24, 3)), 0, 255).astype(np.uint8) for i in range(0, 150, 3)]
    t2 = time.perf_counter()
    M.epoch_metrics(outputs, ref, groups=[str(i // 2) for i in range(len(outputs))])
    t3 = time.perf_counter()
    fulls = [np.asarray(Image.fromarray(o).resize((512, 512), Image.NEAREST)) for o in outputs[:12]]
    t4 = time.perf_counter()
    M.epoch_metrics(outputs[:12], ref, fulls=fulls)
    t5 = time.perf_counter()
    print(
        f"Timing: reference {t1 - t0:.2f} s; {len(outputs)} noisy 24×24 outputs {t3 - t2:.2f} s; "
        f"12 outputs with 512 px renders {t5 - t4:.2f} s ({(t5 - t4) / 12 * 1000:.0f} ms each)\n"
    )
    return ref


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET, help="folder of 24×24 training PNGs")
    parser.add_argument("--renders", type=int, default=12, help="real punks rendered at full size for the grid table")
    args = parser.parse_args()
    if not args.dataset.is_dir():
        sys.exit(f"dataset not found at {args.dataset}; pass --dataset or set BESPOKE_DATASET")
    ref = timing(args.dataset)
    reference_table(ref)
    grid_table(ref, args.renders)


if __name__ == "__main__":
    main()
