"""`generate` on the pixel24 benchmark's run: what selection buys, measured in one run.

    .venv/bin/python benchmarks/generate.py --run runs/benchmark-pixel24/work/run-new     # after pixel24.py --part new --keep

Generates ``--count`` tokens (default 200) with ``--candidates`` per token (default 4) through the
library (the CLI's code), then prints: tokens/s and candidates/s; candidates left out by reason;
and, for the *first* candidate of each token's prompt (no selection) beside the *selected*
collection: the two-sample test against the real punks (mean of four test seeds; each token has its
own prompt, so the folds are pooled), colours per image, outer-ring colours and near-copies of
the run's training images. Target (issue 23): the selected collection reads at least 0.08 lower
on the two-sample test than the first draws. The contact sheet (selected left, first draws right,
the same tokens on the same rows) goes to OUT/contact-sheet.png, and with ``--sheet NAME`` to
benchmarks/results/NAME.png too (never by default: the sheets there belong to figures in benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bespoke_kohya import distinguish, metrics  # noqa: E402
from bespoke_kohya.generate import layout  # noqa: E402
from bespoke_kohya.generate.collection import GenerateOptions, generate, training_set  # noqa: E402
from bespoke_kohya.images import load_rgb  # noqa: E402
from bespoke_kohya.runfolder.records import RunHandle  # noqa: E402

DEFAULT_BESPOKE = REPO.parent / "shared" / "datasets" / "bespoke-punks-24"
TEST_SEEDS = (0, 1, 2, 3)
TARGET = 0.08


def candidate_image(out: Path, n: int, record: dict) -> Path:
    """The image of one of token n's candidates: the token's own when it was kept, else its saved copy."""
    path = out / layout.IMAGES / layout.image_name(n) if record.get("kept") else layout.candidate_path(out, n, record["k"])
    if path is None:
        raise SystemExit(f"{out / layout.CANDIDATES}/{n}.json: a candidate without a number (k)")
    return path


def first_draws(out: Path, count: int) -> np.ndarray:
    """Each token's candidate k = 0: the image an unselected collection would hold."""
    arts = []
    for n in range(1, count + 1):
        first = next(c for c in layout.read_candidates(out, n) if c["k"] == 0)
        arts.append(load_rgb(candidate_image(out, n, first)))
    return np.stack(arts)


def measure(images: np.ndarray, real: np.ndarray, training: np.ndarray) -> dict:
    each = [distinguish.two_sample_accuracy(real, images, seed=s).accuracy for s in TEST_SEEDS]
    return {"two_sample": float(np.mean(each)), "two_sample_each": each, "near_copies": distinguish.near_copy_share(images, training),
            "colours": float(np.median([metrics.colour_count(im) for im in images])),
            "ring_colours": float(np.median([metrics.ring_colours(im) for im in images])),
            "orphans": float(np.median([metrics.orphan_share(im) for im in images]))}


def sheet(left: np.ndarray, right: np.ndarray, cols: int = 10, scale: int = 4):
    from PIL import Image

    def block(images: np.ndarray) -> Image.Image:
        rows = -(-len(images) // cols)
        im = Image.new("RGB", (cols * 24 * scale + (cols - 1) * 4, rows * 24 * scale + (rows - 1) * 4), "white")
        for i, art in enumerate(images):
            tile = Image.fromarray(art).resize((24 * scale, 24 * scale), Image.NEAREST)
            im.paste(tile, ((i % cols) * (24 * scale + 4), (i // cols) * (24 * scale + 4)))
        return im

    a, b = block(left), block(right)
    both = Image.new("RGB", (a.width + b.width + 48, max(a.height, b.height)), "white")
    both.paste(a, (0, 0))
    both.paste(b, (a.width + 48, 0))
    return both


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a trained pixel24 run (benchmarks/pixel24.py --part new --keep: OUT/work/run-new)")
    ap.add_argument("--dataset", type=Path, default=DEFAULT_BESPOKE, help="the real punks the two-sample test compares with")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "benchmark-generate")
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--epoch", type=int, default=None, help="default: the run's last epoch")
    ap.add_argument("--sheet", help="also save the contact sheet as benchmarks/results/SHEET.png (for a figure in benchmarks/README.md)")
    args = ap.parse_args()
    run = RunHandle.open(args.run)
    epoch = args.epoch or max(run.record.checkpoints())
    collection = args.out / "collection"
    shutil.rmtree(collection, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = generate(GenerateOptions(run=args.run, out=collection, count=args.count, epoch=epoch, candidates=args.candidates))
    seconds = time.perf_counter() - started
    real = np.stack([load_rgb(p) for p in sorted(args.dataset.glob("*.png"))])
    _, training, _ = training_set(run)
    selected = np.stack([load_rgb(collection / layout.IMAGES / layout.image_name(n)) for n in range(1, args.count + 1)])
    unselected = first_draws(collection, args.count)
    rows = {"first candidate (no selection)": measure(unselected, real, training), "selected collection": measure(selected, real, training)}
    drawn = result.candidates
    rejected = dict(sorted(result.rejections.items()))
    print(f"{args.run} epoch {epoch}: {args.count} tokens × {args.candidates} candidates (+ rounds as needed), {drawn} drawn in {seconds:.0f} s "
          f"(incl. {48} pilot draws and the critic)")
    print(f"speed: {args.count / seconds:.2f} tokens/s, {drawn / seconds:.1f} candidates/s")
    print(f"left out: {', '.join(f'{k} {v} ({v / drawn:.0%})' for k, v in rejected.items()) or 'none'}; kept {args.count} of {drawn} ({args.count / drawn:.0%})")
    print()
    print("| | two-sample (mean of 4 seeds) | each | near-copies | colours | ring colours | orphans |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        each = ", ".join(f"{a:.2f}" for a in r["two_sample_each"])
        print(f"| {name} | {r['two_sample']:.2f} | {each} | {r['near_copies']:.3f} | {r['colours']:.0f} | {r['ring_colours']:.0f} | {r['orphans']:.3f} |")
    gain = rows["first candidate (no selection)"]["two_sample"] - rows["selected collection"]["two_sample"]
    print(f"\nselection lowers the two-sample test by {gain:.2f} (target ≥ {TARGET}): {'met' if gain >= TARGET else 'NOT met'}")
    out = sheet(selected[:60], unselected[:60])
    out.save(args.out / "contact-sheet.png")
    if args.sheet:
        (REPO / "benchmarks" / "results").mkdir(exist_ok=True)
        out.save(REPO / "benchmarks" / "results" / f"{args.sheet}.png")
    (args.out / "results.json").write_text(json.dumps({"rows": rows, "seconds": seconds, "drawn": drawn, "rejections": rejected, "gain": gain,
                                                      "when": time.strftime("%Y-%m-%d %H:%M")}, indent=1))
    print(f"contact sheet: {args.out / 'contact-sheet.png'} (left: selected, right: the first candidate of the same tokens)")


if __name__ == "__main__":
    main()
