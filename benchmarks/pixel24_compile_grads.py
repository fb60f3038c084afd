"""Does torch.compile get pixel24's training gradients right? One batch's gradients, eager against compiled backends.

    .venv/bin/python benchmarks/pixel24_compile_grads.py                      # the preset's network, random weights (~2 min)
    .venv/bin/python benchmarks/pixel24_compile_grads.py --run RUN --epoch 5  # a trained run's checkpoint

Prints, per backend, the loss and the relative error of all gradients against eager (``aot_eager`` traces the
same graph without inductor's kernels, so an error only under ``inductor`` is the code generator's), and the
parameters whose compiled gradient is zero where the eager one is not. pixel24 trains eagerly for this reason
(``pixel24.compile`` is for drawing); rerun it on a new torch before letting training compile again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bespoke_kohya.engines.pixel24 import api as pixel24  # noqa: E402
from bespoke_kohya.engines.pixel24.model import Pixel24Model  # noqa: E402
from bespoke_kohya.presets import load_preset  # noqa: E402


def model_of(args: argparse.Namespace) -> Pixel24Model:
    if args.run:
        return pixel24.load_checkpoint(args.run / "checkpoints" / pixel24.checkpoint_name(args.epoch), device="cpu")
    settings = load_preset("pixel24", ["pixel24.background_head=true"]).pixel24
    palette = torch.randint(256, (settings.palette_size, 3), generator=torch.Generator().manual_seed(0)).to(torch.uint8).numpy()
    torch.manual_seed(0)
    return pixel24.build_model(pixel24.model_config(settings, ["<reserved>"] + [f"w{i}" for i in range(40)], palette))


def pixel_loss(model: Pixel24Model, batch: tuple) -> torch.Tensor:
    """The training loss's pixel part, through model._compiled when set (training itself never uses it), else eager."""
    x0, masked, ratio, conds, background = batch
    k = len(model.palette)
    text = model.net.text(conds)
    cond = model.net.condition(text, background, model.lab) if model.net.has_background else text
    logits = model.logits(torch.where(masked, torch.full_like(x0, k), x0), ratio, cond, compiled=True)
    return torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[masked], x0[masked])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path)
    ap.add_argument("--epoch", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    model = model_of(args)
    model.net.train()
    g = torch.Generator().manual_seed(0)
    k, n = len(model.palette), args.batch
    ratio = torch.rand(n, generator=g).clamp(min=0.05)
    batch = (torch.randint(k, (n, 24, 24), generator=g), torch.rand(n, 24, 24, generator=g) < ratio[:, None, None], ratio,
             [[[1, 2]], [[3]]] * (n // 2), torch.randint(k, (n,), generator=g))
    names = [name for name, p in model.net.named_parameters() if p.requires_grad]
    model._compiled = None
    eager_loss, eager = gradients(model, batch)
    flat = torch.cat([e.flatten() for e in eager])
    print(f"torch {torch.__version__}; eager loss {eager_loss:.6f}")
    for backend in ("aot_eager", "inductor"):
        torch._dynamo.reset()
        model._compiled = torch.compile(model.net, backend=backend, dynamic=False)
        gradients(model, batch)  # the first call compiles; measure the second, as a training step would run
        loss, grads = gradients(model, batch)
        error = (flat - torch.cat([c.flatten() for c in grads])).norm().item() / flat.norm().item()
        zero = [name for name, e, c in zip(names, eager, grads) if e.norm() > 0 and c.norm() == 0]
        print(f"{backend:10s} loss {loss:.6f}  gradient relative error {error:.2e}  zero where eager is not: {len(zero)} of {len(names)}"
              + (f" (e.g. {', '.join(zero[:3])})" if zero else ""))


def gradients(model: Pixel24Model, batch: tuple) -> tuple[float, list[torch.Tensor]]:
    params = [p for p in model.net.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    loss = pixel_loss(model, batch)
    loss.backward()
    return loss.item(), [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]


if __name__ == "__main__":
    main()
