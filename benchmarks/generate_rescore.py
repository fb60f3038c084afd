"""Choosing a token's punk by pixel24's own likelihood instead of the critic, on a collection's saved candidates.

    .venv/bin/python benchmarks/generate.py --run RUN --out OUT      # draws and keeps every candidate
    .venv/bin/python benchmarks/generate_rescore.py --run RUN --collection OUT

Scores every candidate of every token with the run's model: each pixel's log-probability given the
rest of the image, its prompt and its own border colour (the 576 pixels masked in four interleaved
groups of 144, so each is scored once, conditional, no guidance). Two scores per image: the mean
over its pixels, and the mean of its worst 5% (a blotch is a few very unlikely pixels). Then, among
each token's candidates that no hard rule left out (near-copy, duplicate, off-style), the best by
each score, and prints the two-sample test against the real punks (mean of four test seeds, as
generate.py) for: the first candidate (no selection), the collection's own choice (the critic), and
the first candidate that passes every rule (the rules' rejections without the critic's choice), and each likelihood choice.

Two choices by nearness to the run's training punks, with the near-copy rule's own distance (the share of
pixels more than ΔE 3 apart): the candidate nearest any training punk, and the highest realism score
(Kynkäänniemi et al. 2019, as `generate` computes it: generate/select.py). Both pull towards the training punks, which are part
of the real set the test compares with, so each also prints the mean distance to the nearest of the 20
held-out punks the run never saw (the dataset's punks not in its data/): a choice that is really more punk-like moves that too.

And what more candidates buy: the realism choice among each token's first 2, 4, 8… candidates only (those
fewer than the collection drew per round), beside the choice among all of them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bespoke_kohya import metrics  # noqa: E402
from bespoke_kohya.distinguish import NEAR_COPY_DELTA_E  # noqa: E402
from bespoke_kohya.engines.pixel24 import api as pixel24  # noqa: E402
from bespoke_kohya.engines.pixel24.palette import to_indices  # noqa: E402
from bespoke_kohya.engines.pixel24.sampling import encode_prompt  # noqa: E402
from bespoke_kohya.engines.pixel24.training import background_indices  # noqa: E402
from bespoke_kohya.generate import layout  # noqa: E402
from bespoke_kohya.generate.collection import training_set  # noqa: E402
from bespoke_kohya.generate.select import SOFT, neighbourhoods, realism_scores  # noqa: E402
from bespoke_kohya.images import load_rgb  # noqa: E402
from bespoke_kohya.runfolder.records import RunHandle  # noqa: E402
from benchmarks.generate import DEFAULT_BESPOKE, candidate_image, measure  # noqa: E402

GROUPS = 4  # pixel (r, c) is in group (r % 2) * 2 + c % 2
WORST = 0.05


@torch.no_grad()
def pixel_logp(model: pixel24.Pixel24Model, arts: np.ndarray, prompts: list[str]) -> np.ndarray:
    """(N, 24, 24) log-probability of each pixel's colour given the rest, the prompt and the border colour."""
    model.eval()
    k = len(model.palette)
    x = torch.from_numpy(to_indices(arts, model.palette)).long()
    text = model.net.text([encode_prompt(model, p)[0] for p in prompts])
    background = torch.from_numpy(background_indices(x.numpy(), model.palette)[0]) if model.net.has_background else None
    cond = model.net.condition(text, background, model.lab)
    rows, cols = np.indices((24, 24))
    group = torch.from_numpy((rows % 2) * 2 + cols % 2)
    out = torch.zeros(x.shape)
    for g in range(GROUPS):
        masked = (group == g).expand_as(x)
        logits = model.logits(torch.where(masked, torch.full_like(x, k), x), masked.float().mean(dim=(1, 2)), cond, compiled=False)
        logp = logits.permute(0, 2, 3, 1).log_softmax(-1).gather(-1, x[..., None])[..., 0]
        out = torch.where(masked, logp, out)
    return out.numpy()


def scores(logp: np.ndarray) -> dict[str, np.ndarray]:
    flat = np.sort(logp.reshape(len(logp), -1), axis=1)
    worst = max(1, int(round(WORST * flat.shape[1])))
    return {"mean": flat.mean(axis=1), "worst 5%": flat[:, :worst].mean(axis=1)}


def realism(query: np.ndarray, training_labs: np.ndarray, reference: np.ndarray, radii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance of each query to its nearest training punk, its realism score as `generate` computes it), distance =
    share of pixels > ΔE 3 apart; ``reference``, ``radii`` from select.neighbourhoods(training_labs)."""
    d = metrics.difference_matrix(metrics._labs(query), training_labs, threshold=NEAR_COPY_DELTA_E)
    return d.min(axis=1), realism_scores(d[:, reference], radii)


def nearest_share(images: np.ndarray, others: np.ndarray) -> float:
    """Mean over ``images`` of the distance to the nearest of ``others`` (share of pixels > ΔE 3 apart)."""
    return float(metrics.difference_matrix(metrics._labs(images), metrics._labs(others), threshold=NEAR_COPY_DELTA_E).min(axis=1).mean())


def candidates(out: Path, n: int) -> list[tuple[dict, np.ndarray]]:
    found = []
    for c in layout.read_candidates(out, n):
        found.append((c, load_rgb(candidate_image(out, n, c))))
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--collection", type=Path, required=True)
    ap.add_argument("--dataset", type=Path, default=DEFAULT_BESPOKE)
    ap.add_argument("--epoch", type=int, default=None)
    ap.add_argument("--only", action="append", default=[], metavar="TEXT", help="measure only the choices whose name contains TEXT (repeatable)")
    args = ap.parse_args()
    settings = json.loads((args.collection / "collection.json").read_text())
    count = len(settings["tokens"])
    epoch = args.epoch or settings["settings"]["epoch"]
    model = pixel24.load_checkpoint(args.run / "checkpoints" / pixel24.checkpoint_name(epoch), device="cpu")
    run = RunHandle.open(args.run)
    names, training, _ = training_set(run)
    real_paths = sorted(args.dataset.glob("*.png"))
    real = np.stack([load_rgb(p) for p in real_paths])
    trained = set(names)
    held = np.stack([load_rgb(p) for p in real_paths if p.stem not in trained])  # the benchmark's 20 held out
    training_labs = metrics._labs(training)
    reference, radii = neighbourhoods(training_labs)  # once: the training punks' neighbourhoods do not change between tokens
    chosen: dict[str, list[np.ndarray]] = {"first candidate (no selection)": [], "the collection's (critic)": [], "first passing every rule": [],
                                           "likelihood: mean": [], "likelihood: worst 5%": [], "nearest a training punk": [],
                                           "realism score": []}
    per_token = settings["settings"]["candidates"]
    first_k = [k for k in (2, 4, 8, 16) if k < per_token]
    for n in range(1, count + 1):
        found = candidates(args.collection, n)
        arts = np.stack([a for _, a in found])
        s = scores(pixel_logp(model, arts, [c["prompt"] for c, _ in found]))
        usable = [i for i, (c, _) in enumerate(found) if c.get("kept") or c.get("reason") in SOFT or c.get("reason") is None]
        chosen["first candidate (no selection)"].append(next(a for c, a in found if c["k"] == 0))
        chosen["the collection's (critic)"].append(next(a for c, a in found if c.get("kept")))
        # the rules as the collection applies them, then the lowest k instead of the critic's favourite
        chosen["first passing every rule"].append(next((a for c, a in sorted(found, key=lambda f: f[0]["k"]) if c.get("kept") or c.get("reason") is None), arts[0]))
        for name, key in (("likelihood: mean", "mean"), ("likelihood: worst 5%", "worst 5%")):
            chosen[name].append(arts[max(usable, key=lambda i: s[key][i])] if usable else arts[0])
        near, real_score = realism(arts, training_labs, reference, radii)
        chosen["nearest a training punk"].append(arts[min(usable, key=lambda i: near[i])] if usable else arts[0])
        chosen["realism score"].append(arts[max(usable, key=lambda i: real_score[i])] if usable else arts[0])
        for k in first_k:  # what more candidates buy: the same choice among each token's first k only
            some = [i for i in usable if found[i][0]["k"] < k] or [i for i, (c, _) in enumerate(found) if c["k"] == 0]
            chosen.setdefault(f"realism score, first {k} candidates", []).append(arts[max(some, key=lambda i: real_score[i])])
    print(f"{count} tokens, epoch {epoch}; against {len(real)} real punks")
    print(f"held out: {len(held)} punks the run never trained on")
    print("| choice | two-sample (4 test seeds) | each | near-copies | colours | ring colours | orphans | nearest held-out (share > ΔE 3) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, arts in chosen.items():
        if args.only and not any(text in name for text in args.only):
            continue
        m = measure(np.stack(arts), real, training)
        print(f"| {name} | {m['two_sample']:.3f} | {', '.join(f'{v:.2f}' for v in m['two_sample_each'])} | {m['near_copies']:.3f} | "
              f"{m['colours']:.0f} | {m['ring_colours']:.0f} | {m['orphans']:.3f} | {nearest_share(np.stack(arts), held):.3f} |")


if __name__ == "__main__":
    main()
