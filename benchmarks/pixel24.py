"""pixel24 as an artist meets it: cold start to samples, then how real the samples look.

    .venv/bin/python benchmarks/pixel24.py                    # both models, ~40 min on 2 idle cores
    .venv/bin/python benchmarks/pixel24.py --part new         # only today's model, preset pixel24_v3 (~20 min cold)
    .venv/bin/python benchmarks/pixel24.py --part old         # only version 2 (the last commit before v3)
    .venv/bin/python benchmarks/pixel24.py --part new --preset pixel24 --set pixel24.steps=5200 --label "2x steps"   # another recipe

20 of the real punks are held out with a fixed seed; each model trains on the other
164 exactly as a user would, through the CLI, from a cold cache (a fresh
``BESPOKE_CACHE``: the stand-in is built and, for today's model, the base model trained
from nothing). Today's model is the ``pixel24_v3`` preset (``--preset`` names another), version 2
is that tree's ``pixel24``. Then each held-out caption is drawn with 8 seeds and the samples are
measured against the real punks:

- wall time: base pretraining, fine-tuning, sampling (seconds);
- two-sample test (``bespoke_kohya.distinguish``): a small CNN's cross-validated accuracy
  at telling samples from real punks; 0.5 = indistinguishable. "grouped" keeps all
  seeds of one caption in one fold (the classifier must judge the generator, not
  recognise the 20 captions' backgrounds), "pooled" does not;
- near-copies of a training image (against the real set's own rate);
- colours per image and orphan-pixel share, medians, against the real set's 5–95% range;
- ring colours: distinct colours of the outer ring of pixels, median (``metrics.ring_colours``);
- caption adherence: for the captions that name one background colour, the share of samples
  whose commonest border colour has that name (``metrics.caption_adherence``), beside the
  real punks' own figure (the ceiling);
- the same per type (lads, ladies), as the eye found lads worse;
- drawing time of the 160 images in this process (model loaded; the CLI's time beside it).

The old model (version 2) runs from the git tree of ``--old-ref`` (the last commit before
version 3) with that tree's preset, exactly as the new one: trained through its CLI from
a cold cache, sampled through its ``sample`` stage. Results of each part go to
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
OLD_REF = "fc13de0"  # the last commit of pixel24 version 2 (issue 11's recipe)


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


def uptime() -> str:
    """The load averages now (1, 5, 15 min): a time measured beside another job is inflated."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def part(args: argparse.Namespace, train_dir: Path, held: list[Path], work: Path, name: str, tree: Path | None) -> dict:
    """Cold start through the CLI of ``tree`` (None: this checkout): train on the 164, then draw the held-out captions."""
    env = {**os.environ, "BESPOKE_CACHE": str(args.cache or work / f"cache-{name}"), "PYTHONUNBUFFERED": "1"}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    if args.threads:  # experiments beside another job: fewer threads spin less (the times are then not the 2-core figures)
        env["OMP_NUM_THREADS"] = str(args.threads)
    run_dir, log = work / f"run-{name}", args.out / f"log-{name}.txt"
    cli = [sys.executable, "-m", "bespoke_kohya"]
    sets = [x for s in (args.set if name == "new" else []) for x in ("--set", s)]
    load = {"start": uptime()}
    # The benchmark holds out its own 20 punks, so the 164 are all trained on (the preset's own 10% split is for the report).
    preset = args.preset if name == "new" else "pixel24"  # version 2's tree has only its own pixel24
    total = run(cli + ["train", "--preset", preset, "--dataset", str(train_dir), "--run-dir", str(run_dir), "--no-sample", "--set", "dataset.validation_split=0",
                       *sets], env, tree or REPO, log)
    load["trained"] = uptime()
    base_cfg = next((Path(env["BESPOKE_CACHE"]) / "pixel24-base").glob("*/pixel24.json"), None) if not args.cache else None
    base_s = float(json.loads(base_cfg.read_text())["base"]["seconds"]) if base_cfg else 0.0  # none when pixel24.base is a file, "none" or cached
    last = max(int(k) for k in json.loads((run_dir / "run.json").read_text())["epochs"])
    prompts = work / f"held-out-prompts-{name}.txt"
    prompts.write_text("".join(caption(p) + "\n" for p in held))
    sample_s = run(cli + ["sample", "--run", str(run_dir), "--epochs", str(last), "--prompts", str(prompts), "--seeds", ",".join(map(str, SEEDS))], env, tree or REPO, log)
    load["sampled"] = uptime()
    result = {"base_s": base_s, "finetune_s": total - base_s, "sample_s": sample_s, "images": samples_from(run_dir, last), "load": load,
              "preset": preset, "set": list(args.set) if name == "new" else [], "label": (args.label or f"{preset} (this checkout)") if name == "new" else f"version 2 ({args.old_ref})",
              "cache": str(args.cache) if args.cache else None, "threads": args.threads}
    if tree is None and not args.threads:  # the drawing alone, in this process (the CLI's time adds start-up, loading and writing the PNGs)
        result["draw_s"] = draw_seconds(run_dir, last, [caption(p) for p in held])
        result["load"]["drawn"] = uptime()
    return result


def draw_seconds(run_dir: Path, epoch: int, prompts: list[str]) -> float:
    from bespoke_kohya.engines.pixel24 import api as pixel24
    from bespoke_kohya.presets import validate_preset

    preset = validate_preset(json.loads((run_dir / "run.json").read_text())["resolved"], f"{run_dir}/run.json")
    model = pixel24.load_checkpoint(run_dir / "checkpoints" / pixel24.checkpoint_name(epoch), device="cpu")
    started = time.perf_counter()
    pixel24.sample(model, prompts, SEEDS, **preset.pixel24.sampler_options())
    return time.perf_counter() - started


def part_new(args: argparse.Namespace, train_dir: Path, held: list[Path], work: Path) -> dict:
    return part(args, train_dir, held, work, "new", None)


def part_old(args: argparse.Namespace, train_dir: Path, held: list[Path], work: Path) -> dict:
    tree = work / "old-tree"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", args.old_ref], check=True, capture_output=True).stdout
    tarfile.open(fileobj=io.BytesIO(archive)).extractall(tree)
    return part(args, train_dir, held, work, "old", tree)


TEST_SEEDS = (0, 1, 2, 3)  # the two-sample test's folds and classifier vary by ±0.04 with its seed: report the mean of four


def kind(prompt: str) -> str:
    """"lady" or "lad", as the caption says ("portrait of bespoke punk lady")."""
    words = set(prompt.lower().replace(",", " ").split())
    return "lady" if "lady" in words else "lad"


def measure(images: np.ndarray, real: np.ndarray, training: np.ndarray, prompts: list[str] | None = None, real_prompts: list[str] | None = None) -> dict:
    """The figures of one part: ``images`` prompt-major (len(SEEDS) seeds of each of ``prompts``)."""
    groups = [str(i // len(SEEDS)) for i in range(len(images))]
    grouped = [distinguish.two_sample_accuracy(real, images, groups=groups, seed=s).accuracy for s in TEST_SEEDS]
    pooled = [distinguish.two_sample_accuracy(real, images, seed=s).accuracy for s in TEST_SEEDS]
    out = {
        "two_sample_grouped": float(np.mean(grouped)), "two_sample_grouped_each": grouped,
        "two_sample_pooled": float(np.mean(pooled)), "two_sample_pooled_each": pooled,
        "near_copies": distinguish.near_copy_share(images, training),
        "colours": float(np.median([metrics.colour_count(im) for im in images])),
        "orphans": float(np.median([metrics.orphan_share(im) for im in images])),
        "ring_colours": float(np.median([metrics.ring_colours(im) for im in images])),
    }
    if prompts is not None:
        per_image = [p for p in prompts for _ in SEEDS]
        out["caption_adherence"], out["adherence_pairs"] = metrics.caption_adherence(per_image, list(images))
        for k in ("lad", "lady"):
            mine = np.array([kind(p) == k for p in per_image])
            theirs = np.array([kind(p) == k for p in real_prompts]) if real_prompts is not None else None
            entry = {"ring_colours": float(np.median([metrics.ring_colours(im) for im in images[mine]])),
                     "colours": float(np.median([metrics.colour_count(im) for im in images[mine]])),
                     "caption_adherence": metrics.caption_adherence([p for p, m in zip(per_image, mine) if m], list(images[mine]))[0]}
            if theirs is not None:
                g = [groups[i] for i in np.nonzero(mine)[0]]
                entry["two_sample_grouped"] = float(np.mean([distinguish.two_sample_accuracy(real[theirs], images[mine], groups=g, seed=s).accuracy for s in TEST_SEEDS]))
            out[k] = entry
    return out


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


TARGETS = "two-sample grouped ≤ 0.60; ring colours ≤ 6; colours ≤ 30; caption adherence ≥ 0.8; cold start ≤ 20 min; drawing 160 ≤ 20 s; no near-copies"


def targets(r: dict) -> list[tuple[str, bool]]:
    total = (r["base_s"] + r["finetune_s"] + r["sample_s"]) / 60
    return [("two-sample grouped ≤ 0.60", r["two_sample_grouped"] <= 0.60), ("ring colours ≤ 6", r["ring_colours"] <= 6), ("colours ≤ 30", r["colours"] <= 30),
            ("caption adherence ≥ 0.8", (r.get("caption_adherence") or 0) >= 0.8), ("cold start ≤ 20 min", total <= 20),
            ("drawing 160 ≤ 20 s", r.get("draw_s", r["sample_s"]) <= 20), ("no near-copies", r["near_copies"] == 0)]


def held_out(dataset: Path) -> tuple[list[Path], list[Path]]:
    """(training PNGs, held-out PNGs) of :func:`split`, without copying anything."""
    paths = sorted(dataset.glob("*.png"))
    order = np.random.default_rng(0).permutation(len(paths))
    return sorted(paths[i] for i in order[HELD_OUT:]), sorted(paths[i] for i in order[:HELD_OUT])


def real_reference(args: argparse.Namespace, real: np.ndarray, real_prompts: list[str]) -> dict:
    _, held = held_out(args.dataset)
    held_images = np.stack([load_rgb(p) for p in held])
    held_prompts = [caption(p) for p in held]
    return {"colours": float(np.median([metrics.colour_count(im) for im in real])), "ring_colours": float(np.median([metrics.ring_colours(im) for im in real])),
            "ring_colours_held": float(np.median([metrics.ring_colours(im) for im in held_images])),
            "adherence": metrics.caption_adherence(real_prompts, list(real)), "adherence_held": metrics.caption_adherence(held_prompts, list(held_images))}


def table(args: argparse.Namespace, real: np.ndarray, real_prompts: list[str]) -> None:
    rows = {part: json.loads((args.out / f"results-{part}.json").read_text()) for part in ("old", "new") if (args.out / f"results-{part}.json").is_file()}
    cal = json.loads((args.out / "calibration.json").read_text())
    ref = real_reference(args, real, real_prompts)
    colours = [metrics.colour_count(im) for im in real]
    orphans = [metrics.orphan_share(im) for im in real]
    print(f"\ncalibration: real vs real {cal['real_vs_real']:.2f} (≈0.5 expected), CryptoPunks vs Bespoke {cal['cryptopunks_vs_bespoke']:.2f} (≈1.0); "
          f"near-copies within the real set {cal['real_near_copies']:.3f}")
    print(f"real set 5–95%: colours {np.percentile(colours, 5):.0f}–{np.percentile(colours, 95):.0f} (median {ref['colours']:.0f}), "
          f"orphans {np.percentile(orphans, 5):.3f}–{np.percentile(orphans, 95):.3f}; ring colours median {ref['ring_colours']:.0f} (the 20 held out: {ref['ring_colours_held']:.0f}); "
          f"caption adherence of the real punks to their own captions {ref['adherence'][0]:.2f} ({ref['adherence'][1]} that name a background colour; "
          f"the 20 held out: {ref['adherence_held'][0]:.2f} of {ref['adherence_held'][1]})\n")
    print("| model | base s | fine-tune s | sample s (CLI) | draw 160 s | cold start → samples | two-sample grouped (4 test seeds) | pooled | near-copies "
          "| colours | orphans | ring colours | caption adherence | lads / ladies grouped | lads / ladies adherence | load (1-min avg) start → end |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for part, r in rows.items():
        total = r["base_s"] + r["finetune_s"] + r["sample_s"]
        each = r["two_sample_grouped_each"]
        lad, lady = r.get("lad", {}), r.get("lady", {})
        fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
        load = r.get("load") or {}
        print(f"| {r.get('label') or part} | {r['base_s']:.0f} | {r['finetune_s']:.0f} | {r['sample_s']:.0f} | {fmt(r.get('draw_s'))} | {total / 60:.1f} min "
              f"| {r['two_sample_grouped']:.2f} ({min(each):.2f}–{max(each):.2f}) | {r['two_sample_pooled']:.2f} | {r['near_copies']:.3f} | {r['colours']:.0f} "
              f"| {r['orphans']:.3f} | {r.get('ring_colours', float('nan')):.0f} | {fmt(r.get('caption_adherence'))} ({r.get('adherence_pairs', 0)}) "
              f"| {fmt(lad.get('two_sample_grouped'))} / {fmt(lady.get('two_sample_grouped'))} | {fmt(lad.get('caption_adherence'))} / {fmt(lady.get('caption_adherence'))} "
              f"| {load.get('start', '?').split()[0]} → {load.get('sampled', '?').split()[0]} |")
    print(f"\ntargets (issue 24): {TARGETS}")
    for part, r in rows.items():
        if "caption_adherence" in r:
            marks = [f"{name}: {'met' if ok else 'NOT met'}" for name, ok in targets(r)]
            print(f"  {r.get('label') or part}: " + "; ".join(marks))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, default=DEFAULT_BESPOKE)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "benchmark-pixel24")
    ap.add_argument("--part", choices=["all", "old", "new", "table"], default="all")
    ap.add_argument("--old-ref", default=OLD_REF)
    ap.add_argument("--keep", action="store_true", help="keep the runs and caches in OUT/work instead of a temporary folder")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting for the new model's training run (repeatable), as `train --set`")
    ap.add_argument("--preset", default="pixel24_v3", help="the new model's preset (the old one always trains its tree's pixel24)")
    ap.add_argument("--label", default=None, help="the new model's row label (default: its preset, this checkout)")
    ap.add_argument("--cache", type=Path, help="reuse this BESPOKE_CACHE (its stand-in and base models) instead of a cold one: for experiments, not cold-start times")
    ap.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the CLI steps (experiments beside another job); the times are then not the 2-core figures")
    ap.add_argument("--remeasure", action="store_true", help="measure the parts' saved samples (OUT/samples-*.npy) again with today's measures")
    args = ap.parse_args()
    if not args.dataset.is_dir():
        raise SystemExit(f"{args.dataset}: not found; pass --dataset DIR (the Bespoke Punks folder)")
    args.out.mkdir(parents=True, exist_ok=True)
    real_paths = sorted(args.dataset.glob("*.png"))
    real = np.stack([load_rgb(p) for p in real_paths])
    real_prompts = [caption(p) for p in real_paths]
    train_paths, held = held_out(args.dataset)
    prompts = [caption(p) for p in held]
    if args.remeasure:
        training = np.stack([load_rgb(p) for p in train_paths])
        for name in ("old", "new"):
            if (args.out / f"results-{name}.json").is_file() and (args.out / f"samples-{name}.npy").is_file():
                result = json.loads((args.out / f"results-{name}.json").read_text())
                result.update(measure(np.load(args.out / f"samples-{name}.npy"), real, training, prompts, real_prompts))
                (args.out / f"results-{name}.json").write_text(json.dumps(result, indent=1))
    elif args.part != "table":
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
                print(f"training the {part} model (log: {args.out / f'log-{part}.txt'}; load {uptime()}) …", flush=True)
                result = (part_old if part == "old" else part_new)(args, work / "train-164", held, work)
                images = result.pop("images")
                grid(images).save(args.out / f"samples-{part}.png")
                np.save(args.out / f"samples-{part}.npy", images)
                result.update(measure(images, real, training, prompts, real_prompts), when=time.strftime("%Y-%m-%d %H:%M"))
                (args.out / f"results-{part}.json").write_text(json.dumps(result, indent=1))
    table(args, real, real_prompts)
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
