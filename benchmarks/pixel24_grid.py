"""A grid to look at: each held-out real punk, then the samples drawn from its caption, NEAREST-upscaled.

    .venv/bin/python benchmarks/pixel24_grid.py OUT/samples-new.npy --out grid.png                 # all 20 captions × 8 seeds
    .venv/bin/python benchmarks/pixel24_grid.py OUT/samples-old.npy OUT/samples-new.npy --rows 0,3,8,13,19 --out grid.png

``samples-*.npy`` are the arrays ``benchmarks/pixel24.py`` saves (held-out captions in order, 8 seeds each).
Each row: the real punk (framed in black), a gap, then the seeds of every given array in turn (a wider gap
between arrays), so two models' samples of one caption sit side by side. Cells are numbered 1…N left to right,
top to bottom (real punks excluded) when ``--numbers`` is given, for a keep/reject tally.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bespoke_kohya.images import load_rgb  # noqa: E402
from benchmarks.pixel24 import DEFAULT_BESPOKE, SEEDS, held_out  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("samples", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rows", help="held-out caption indices to show (default all 20)")
    ap.add_argument("--scale", type=int, default=5)
    ap.add_argument("--numbers", action="store_true")
    ap.add_argument("--dataset", type=Path, default=DEFAULT_BESPOKE)
    args = ap.parse_args()
    _, held = held_out(args.dataset)
    arrays = [np.load(p) for p in args.samples]
    rows = [int(r) for r in args.rows.split(",")] if args.rows else list(range(len(held)))
    n = len(SEEDS)
    cell, gap, wide = 24 * args.scale, 2 * args.scale, 6 * args.scale
    width = cell + wide + len(arrays) * (n * (cell + gap)) + (len(arrays) - 1) * wide
    height = len(rows) * (cell + gap)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    count = 0
    for r, row in enumerate(rows):
        y = r * (cell + gap)
        real = Image.fromarray(load_rgb(held[row])).resize((cell, cell), Image.NEAREST)
        canvas.paste(real, (0, y))
        draw.rectangle([0, y, cell - 1, y + cell - 1], outline="black", width=max(1, args.scale // 2))
        x = cell + wide
        for a in arrays:
            for s in range(n):
                canvas.paste(Image.fromarray(a[row * n + s]).resize((cell, cell), Image.NEAREST), (x, y))
                if args.numbers and a is arrays[-1]:
                    count += 1
                    draw.rectangle([x, y, x + 9 * len(str(count)) + 2, y + 11], fill="white")
                    draw.text((x + 1, y), str(count), fill="black")
                x += cell + gap
            x += wide - gap
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
