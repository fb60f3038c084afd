"""pixel24's speed on this CPU: fp32 against bf16 autocast, channels_last and torch.compile, for training and drawing.

    .venv/bin/python benchmarks/pixel24_speed.py                 # ~5 min on 2 cores
    .venv/bin/python benchmarks/pixel24_speed.py --set attention_levels=2 --set background_head=true

Builds the preset's network (random weights: speed does not depend on them) on a 256-colour
palette and times, per variant, a training step (forward, backward, AdamW, batch 32) and a
guided drawing pass (the U-Net on 2 × 16 images, as the sampler runs it). Variants are timed
in turns (A B C A B C …) so that load from other jobs falls on all of them alike; the load
average is printed with the table. torch.compile is timed after its first (compiling) calls,
whose cost is printed separately: a run pays it once per process.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bespoke_kohya.engines.pixel24 import api as pixel24  # noqa: E402
from bespoke_kohya.engines.pixel24.settings import Pixel24Settings  # noqa: E402
from bespoke_kohya.presets import load_preset  # noqa: E402


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def build(settings: Pixel24Settings, channels_last: bool) -> pixel24.Pixel24Model:
    torch.manual_seed(0)
    palette = np.random.default_rng(0).integers(0, 256, (settings.palette_size, 3)).astype(np.uint8)
    model = pixel24.build_model(pixel24.model_config(settings, ["<reserved>"] + [f"w{i}" for i in range(300)], palette))
    if channels_last:
        model.net.to(memory_format=torch.channels_last)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a pixel24 setting over the preset's (repeatable)")
    ap.add_argument("--rounds", type=int, default=5, help="turns per variant")
    ap.add_argument("--steps", type=int, default=6, help="training steps (and drawing passes) per turn")
    ap.add_argument("--variants", default="fp32,bf16,channels_last,bf16+channels_last,compile,bf16+compile")
    args = ap.parse_args()
    settings = load_preset("pixel24", [f"pixel24.{s}" for s in args.set]).pixel24
    print(f"pixel24 {settings.block_out_channels} attention_levels={settings.attention_levels} background_head={settings.background_head}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; load {load()}", flush=True)
    b, k = 32, settings.palette_size
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randint(k, (b, 24, 24), generator=gen)
    masked = torch.rand(b, 24, 24, generator=gen) < 0.5
    ratio = torch.full((b,), 0.5)
    conds = [[[1, 2], [3]] for _ in range(b)]
    background = torch.randint(k, (b,), generator=gen)
    variants = {}
    for name in args.variants.split(","):
        model = build(settings, "channels_last" in name)
        net = model.net
        bf16 = "bf16" in name
        forward = torch.compile(net.forward, dynamic=False) if "compile" in name else net.forward
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

        def cast():
            return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

        def train_step(model=model, net=net, forward=forward, opt=opt, cast=cast):
            text = net.text(conds)
            cond = net.condition(text, background if net.has_background else None, model.lab)
            with cast():
                logits = forward(torch.where(masked, torch.full_like(x0, k), x0), ratio, cond, model.lab)
                loss = torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[masked].float(), x0[masked])
            opt.zero_grad()
            loss.backward()
            opt.step()

        @torch.no_grad()
        def draw_pass(model=model, net=net, forward=forward, cast=cast):
            text = net.text(conds)
            cond = net.condition(text, background if net.has_background else None, model.lab)
            with cast():
                forward(torch.where(masked, torch.full_like(x0, k), x0), ratio, cond, model.lab).float()

        started = time.perf_counter()
        train_step()
        net.eval()
        draw_pass()
        net.train()
        variants[name] = {"train": train_step, "draw": draw_pass, "net": net, "first_s": time.perf_counter() - started, "times": {"train": [], "draw": []}}
    for _ in range(args.rounds):
        for name, v in variants.items():
            for what in ("train", "draw"):
                v["net"].train(what == "train")
                started = time.perf_counter()
                for _ in range(args.steps):
                    v[what]()
                v["times"][what].append((time.perf_counter() - started) / args.steps)
    print(f"load after: {load()}\n")
    print("| variant | training img/s (batch 32) | vs fp32 | drawing img/s (2 × 16 a pass) | vs fp32 | first calls s |")
    print("|---|---|---|---|---|---|")
    base = variants.get("fp32")
    for name, v in variants.items():
        t, d = np.median(v["times"]["train"]), np.median(v["times"]["draw"])
        rt = np.median(base["times"]["train"]) / t if base else float("nan")
        rd = np.median(base["times"]["draw"]) / d if base else float("nan")
        print(f"| {name} | {b / t:.0f} | {rt:.2f}x | {b / d:.0f} | {rd:.2f}x | {v['first_s']:.1f} |")


if __name__ == "__main__":
    main()
