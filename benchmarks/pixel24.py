"""pixel24 as an artist meets it: cold start to samples, then how real the samples look.

    .venv/bin/python benchmarks/pixel24.py                    # both models, ~40 min on 2 idle cores
    .venv/bin/python benchmarks/pixel24.py --part new         # only today's model (~20 min cold)
    .venv/bin/python benchmarks/pixel24.py --part old         # only the first pixel24 (continuous RGB)

20 of the real punks are held out with a fixed seed; each model trains on the other
164 exactly as a user would, through the CLI, from a cold cache (a fresh
``BESPOKE_CACHE``: the stand-in is built and, for today's model, the base model trained
from nothing). Then each held-out caption is drawn with 8 seeds and the samples are
measured against the real punks:

- wall time: base pretraining, fine-tuning, sampling (seconds);
- two-sample test (``bespoke_kohya.distinguish``): a small CNN's cross-validated accuracy
  at telling samples from real punks; 0.5 = indistinguishable. "grouped" keeps all
  seeds of one caption in one fold (the classifier must judge the generator, not
  recognise the 20 captions' backgrounds), "pooled" does not;
- near-copies of a training image (against the real set's own rate);
- colours per image and orphan-pixel share, medians, against the real set's 5–95% range.

The old model runs from the git tree of ``--old-ref`` (the last commit with the
continuous-RGB pixel24), with the recipe its README documented: stand-in pretraining
(5 epochs), then ``init_from`` + lr 2e-4, 10 epochs × 10 repeats, sampled through its own
``sample`` stage (colour clean-up included). Results of each part go to
``OUT/results-{old,new}.json`` and the grids to ``OUT/samples-{old,new}.png`` and
``OUT/side-by-side.png``; the table is printed from whichever parts exist.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import io
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bespoke_kohya import distinguish, metrics  # noqa: E402
from bespoke_kohya.images import load_rgb  # noqa: E402

DEFAULT_BESPOKE = Path(os.environ.get("BESPOKE_DATASET", REPO.parent / "shared" / "datasets" / "bespoke-punks-24"))
HELD_OUT = 20
SEEDS = list(range(1, 9))
OLD_REF = "89f2c15"  # the last commit whose pixel24 denoised continuous RGB


def split(dataset: Path, out: Path) -> tuple[list[Path], list[Path]]:
    """(training PNGs copied with their captions into ``out``, held-out PNGs), fixed seed."""
    paths = sorted(dataset.glob("*.png"))
    order = np.random.default_rng(0).permutation(len(paths))
    held = sorted(paths[i] for i in order[:HELD_OUT])
    train = sorted(paths[i] for i in order[HELD_OUT:])
    out.mkdir(parents=True)
    for p in train:
        shutil.copy2(p, out / p.name)
        if p.with_suffix(".txt").is_file():
            shutil.copy2(p.with_suffix(".txt"), out / p.with_suffix(".txt").name)
    return train, held


def caption(path: Path) -> str:
    t = path.with_suffix(".txt")
    return t.read_text(encoding="utf-8").strip() if t.is_file() else "punk"


def run(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> float:
    """Run a CLI step, its output to ``log``; returns wall seconds (raises on failure)."""
    started = time.perf_counter()
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        done = subprocess.run(cmd, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise SystemExit(f"step failed ({done.returncode}): {' '.join(cmd)}; see {log}")
    return time.perf_counter() - started


def samples_from(run_dir: Path, epoch: int) -> np.ndarray:
    """The 24×24 outputs of one epoch, in samples.json order (prompt-major, then seed)."""
    doc = json.loads((run_dir / "samples" / "samples.json").read_text())
    return np.stack([load_rgb(run_dir / img["art"]) for img in doc["epochs"][str(epoch)]["images"]])


def part_new(args: argparse.Namespace, train_dir: Path, held: list[Path], work: Path) -> dict:
    env = {**os.environ, "BESPOKE_CACHE": str(work / "cache-new"), "PYTHONUNBUFFERED": "1"}
    run_dir, log = work / "run-new", args.out / "log-new.txt"
    cli = [sys.executable, "-m", "bespoke_kohya"]
    # The benchmark holds out its own 20 punks, so the 164 are all trained on (the preset's own 10% split is for the report).
    total = run(cli + ["train", "--preset", "pixel24", "--dataset", str(train_dir), "--run-dir", str(run_dir), "--no-sample", "--set", "dataset.validation_split=0"], env, REPO, log)
    base_cfg = next((work / "cache-new" / "pixel24-base").glob("*/pixel24.json"))
    base_s = float(json.loads(base_cfg.read_text())["base"]["seconds"])
    last = max(int(k) for k in json.loads((run_dir / "run.json").read_text())["epochs"])
    prompts = work / "held-out-prompts-new.txt"
    prompts.write_text("".join(caption(p) + "\n" for p in held))
    sample_s = run(cli + ["sample", "--run", str(run_dir), "--epochs", str(last), "--prompts", str(prompts), "--seeds", ",".join(map(str, SEEDS))], env, REPO, log)
    return {"base_s": base_s, "finetune_s": total - base_s, "sample_s": sample_s, "images": samples_from(run_dir, last)}


def part_old(args: argparse.Namespace, train_dir: Path, held: list[Path], work: Path) -> dict:
    tree = work / "old-tree"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", args.old_ref], check=True, capture_output=True).stdout
    tarfile.open(fileobj=io.BytesIO(archive)).extractall(tree)
    env = {**os.environ, "BESPOKE_CACHE": str(work / "cache-old"), "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1"}
    log = args.out / "log-old.txt"
    cli = [sys.executable, "-m", "bespoke_kohya"]
    base_run, ft_run = work / "run-old-base", work / "run-old"
    base_s = run(cli + ["train", "--preset", "pixel24", "--run-dir", str(base_run)], env, tree, log)
    ft_s = run(cli + ["train", "--preset", "pixel24", "--dataset", str(train_dir), "--run-dir", str(ft_run), "--set", f"pixel24.init_from={base_run}",
                      "--set", "pixel24.learning_rate=2e-4", "--set", "pixel24.epochs=10", "--set", "dataset.num_repeats=10"], env, tree, log)
    prompts = work / "held-out-prompts-old.txt"
    prompts.write_text("".join(caption(p) + "\n" for p in held))
    sample_s = run(cli + ["sample", "--run", str(ft_run), "--epochs", "10", "--prompts", str(prompts), "--seeds", ",".join(map(str, SEEDS))], env, tree, log)
    return {"base_s": base_s, "finetune_s": ft_s, "sample_s": sample_s, "images": samples_from(ft_run, 10)}


TEST_SEEDS = (0, 1, 2, 3)  # the two-sample test's folds and classifier vary by ±0.03 with its seed: report the mean of four


def measure(images: np.ndarray, real: np.ndarray, training: np.ndarray) -> dict:
    groups = [str(i // len(SEEDS)) for i in range(len(images))]
    grouped = [distinguish.two_sample_accuracy(real, images, groups=groups, seed=s).accuracy for s in TEST_SEEDS]
    pooled = [distinguish.two_sample_accuracy(real, images, seed=s).accuracy for s in TEST_SEEDS]
    return {
        "two_sample_grouped": float(np.mean(grouped)), "two_sample_grouped_each": grouped,
        "two_sample_pooled": float(np.mean(pooled)), "two_sample_pooled_each": pooled,
        "near_copies": distinguish.near_copy_share(images, training),
        "colours": float(np.median([metrics.colour_count(im) for im in images])),
        "orphans": float(np.median([metrics.orphan_share(im) for im in images])),
    }


def grid(images: np.ndarray, cols: int = 16, scale: int = 4) -> "Image.Image":
    from PIL import Image

    rows = -(-len(images) // cols)
    canvas = np.full((rows * 25, cols * 25, 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        canvas[r * 25 : r * 25 + 24, c * 25 : c * 25 + 24] = im
    return Image.fromarray(canvas).resize((canvas.shape[1] * scale, canvas.shape[0] * scale), Image.NEAREST)


def calibration(real: np.ndarray, work: Path) -> dict:
    from bespoke_kohya.engines.pixel24.standin import ensure_standin

    half = np.random.default_rng(1).permutation(len(real))
    crypto_dir = ensure_standin(work / "standin-calibration")
    crypto = np.stack([load_rgb(p) for p in sorted(crypto_dir.glob("*.png"))[: len(real)]])
    return {"real_vs_real": distinguish.two_sample_accuracy(real[half[: len(real) // 2]], real[half[len(real) // 2 :]]).accuracy,
            "cryptopunks_vs_bespoke": distinguish.two_sample_accuracy(real, crypto).accuracy,
            "real_near_copies": distinguish.near_copy_share(real, real, exclude_self=True)}


def table(args: argparse.Namespace, real: np.ndarray) -> None:
    rows = {part: json.loads((args.out / f"results-{part}.json").read_text()) for part in ("old", "new") if (args.out / f"results-{part}.json").is_file()}
    cal = json.loads((args.out / "calibration.json").read_text())
    colours = [metrics.colour_count(im) for im in real]
    orphans = [metrics.orphan_share(im) for im in real]
    print(f"\ncalibration: real vs real {cal['real_vs_real']:.2f} (≈0.5 expected), CryptoPunks vs Bespoke {cal['cryptopunks_vs_bespoke']:.2f} (≈1.0); "
          f"near-copies within the real set {cal['real_near_copies']:.3f}")
    print(f"real set 5–95%: colours {np.percentile(colours, 5):.0f}–{np.percentile(colours, 95):.0f}, orphans {np.percentile(orphans, 5):.3f}–{np.percentile(orphans, 95):.3f}\n")
    print("| model | base s | fine-tune s | sample s | cold start → samples | two-sample grouped | pooled | near-copies | colours | orphans | measured |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for part, r in rows.items():
        total = r["base_s"] + r["finetune_s"] + r["sample_s"]
        print(f"| {part} | {r['base_s']:.0f} | {r['finetune_s']:.0f} | {r['sample_s']:.0f} | {total / 60:.1f} min | {r['two_sample_grouped']:.2f} | {r['two_sample_pooled']:.2f} "
              f"| {r['near_copies']:.3f} | {r['colours']:.0f} | {r['orphans']:.3f} | {r['when']} |")
    print("\ntargets: cold start ≤ 20 min; two-sample ≤ 0.70; colours and orphans inside the real range; near-copies ≤ the real set's rate")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, default=DEFAULT_BESPOKE)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "benchmark-pixel24")
    ap.add_argument("--part", choices=["all", "old", "new", "table"], default="all")
    ap.add_argument("--old-ref", default=OLD_REF)
    ap.add_argument("--keep", action="store_true", help="keep the runs and caches in OUT/work instead of a temporary folder")
    args = ap.parse_args()
    if not args.dataset.is_dir():
        raise SystemExit(f"{args.dataset}: not found; pass --dataset DIR (the Bespoke Punks folder)")
    args.out.mkdir(parents=True, exist_ok=True)
    real = np.stack([load_rgb(p) for p in sorted(args.dataset.glob("*.png"))])
    if args.part != "table":
        import tempfile

        with tempfile.TemporaryDirectory(prefix="bench-pixel24-") as tmp:
            work = Path(tmp)
            if args.keep:  # keep the trained runs (and caches) to sample them again with other settings
                work = args.out / "work"
                shutil.rmtree(work, ignore_errors=True)
            train, held = split(args.dataset, work / "train-164")
            training = np.stack([load_rgb(p) for p in train])
            if not (args.out / "calibration.json").is_file():
                (args.out / "calibration.json").write_text(json.dumps(calibration(real, work)))
            for part in (["old", "new"] if args.part == "all" else [args.part]):
                print(f"training the {part} model (log: {args.out / f'log-{part}.txt'}) …", flush=True)
                result = (part_old if part == "old" else part_new)(args, work / "train-164", held, work)
                images = result.pop("images")
                grid(images).save(args.out / f"samples-{part}.png")
                np.save(args.out / f"samples-{part}.npy", images)
                result.update(measure(images, real, training), when=time.strftime("%Y-%m-%d %H:%M"))
                (args.out / f"results-{part}.json").write_text(json.dumps(result, indent=1))
    table(args, real)
    if all((args.out / f"samples-{p}.png").is_file() for p in ("old", "new")):
        from PIL import Image

        old, new = Image.open(args.out / "samples-old.png"), Image.open(args.out / "samples-new.png")
        both = Image.new("RGB", (old.width + new.width + 40, max(old.height, new.height)), "white")
        both.paste(old, (0, 0))
        both.paste(new, (old.width + 40, 0))
        both.save(args.out / "side-by-side.png")
        print(f"grids: {args.out / 'side-by-side.png'} (left: old, right: new)")


if __name__ == "__main__":
    main()
