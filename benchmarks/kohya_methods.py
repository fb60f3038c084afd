"""Step times of the kohya methods on a GPU: LoRA and the other routes through the real sd-scripts, random SD1.5 base.

    make vendor   # on the GPU box, with a CUDA torch for sd-scripts (SD_SCRIPTS_TORCH=...)
    .venv/bin/python benchmarks/kohya_methods.py --dataset dataset/ [--methods lora,controlnet] [--resolution 576] [--steps 20]

Each method's shipped preset (sd15_576, sd15_576_full, sd15_576_ti, sd15_576_controlnet) trains one epoch
of ``--steps`` optimiser steps (batch 1, so steps = images × repeats) on the cached random-weight SD1.5 with
the full architecture (offline_sd; no download, weights do not change a step's time), through the same CLI a
user runs, with `--no-sample`. The seconds per step are read from sd-scripts' own progress bar in
logs/train.log (the median of the steps after the first, which includes warm-up); the GPU is named by
nvidia-smi, whose used memory is sampled every second for the peak (the training runs in sd-scripts' own
process, so torch's counters are out of reach). Writes benchmarks/results/kohya-methods-<gpu>-<UTC time>.json
and prints a table. Not run yet: no GPU was at hand when the methods were added (issue 25).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PRESETS = {"lora": "sd15_576", "full": "sd15_576_full", "textual_inversion": "sd15_576_ti", "controlnet": "sd15_576_controlnet"}


def gpu_name() -> str:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return "no-gpu"
    out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, check=False).stdout
    return out.strip().splitlines()[0] if out.strip() else "unknown-gpu"


def gpu_memory_used() -> int | None:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    out = subprocess.run([smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits"], capture_output=True, text=True, check=False).stdout
    return int(out.strip().splitlines()[0]) * 1024**2 if out.strip() else None


def step_seconds(log: Path) -> list[float]:
    """Seconds per step from sd-scripts' tqdm bar, one value per step it printed."""
    from bespoke_kohya.engines.kohya.launch import parse_line

    rates: dict[int, float] = {}
    for segment in log.read_text(errors="replace").replace("\r", "\n").splitlines():
        event = parse_line(segment)
        if event is not None and event.kind == "step" and event.data.get("it_per_s"):
            rates[event.data["step"]] = 1 / event.data["it_per_s"]
    return [rates[s] for s in sorted(rates)]


def bench(method: str, dataset: Path, base: Path, out: Path, resolution: int, steps: int) -> dict:
    run = out / f"run-{method}"
    sets = [f"pretrained_model_name_or_path={base}", f"resolution={resolution}", "max_train_epochs=1", "train_batch_size=1",
            f"num_repeats={max(1, steps // max(1, len(list(dataset.glob('*.png')))))}", "dataset.validation_split=0"]
    if resolution % 24:
        sets.append("allow_uneven_pixels=true")
    cmd = [sys.executable, "-m", "bespoke_kohya", "train", "--preset", PRESETS[method], "--no-sample", "--run-dir", str(run), "--dataset", str(dataset)]
    cmd += [a for s in sets for a in ("--set", s)]
    peak = [0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], gpu_memory_used() or 0)
            time.sleep(1)

    threading.Thread(target=watch, daemon=True).start()
    started = time.monotonic()
    code = subprocess.run(cmd, cwd=REPO, check=False).returncode
    done.set()
    per_step = step_seconds(run / "logs" / "train.log")
    return {"method": method, "preset": PRESETS[method], "exit": code, "wall_s": round(time.monotonic() - started, 1), "steps": len(per_step),
            "s_per_step_median": round(statistics.median(per_step[1:] or per_step), 3) if per_step else None,
            "gpu_memory_peak_bytes": peak[0] or None, "resolution": resolution}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--methods", default="lora,controlnet", help=f"comma-separated, of {', '.join(PRESETS)}")
    parser.add_argument("--resolution", type=int, default=576)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    from bespoke_kohya.engines.kohya.offline_sd import build_random_sd15, write_tokenizer_cache
    from bespoke_kohya.engines.kohya.smoke import smoke_cache_dir
    from bespoke_kohya.engines.kohya.vendor import tokenizer_cache_dir

    write_tokenizer_cache(tokenizer_cache_dir())
    base = build_random_sd15(smoke_cache_dir() / "sd15-random")
    gpu = gpu_name()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = REPO / "benchmarks" / "results" / f"kohya-methods-{gpu.replace(' ', '_')}-{stamp}"
    out.mkdir(parents=True)
    rows = [bench(m, args.dataset, base, out, args.resolution, args.steps) for m in args.methods.split(",")]
    (out.parent / f"{out.name}.json").write_text(json.dumps({"gpu": gpu, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    print(f"GPU: {gpu}")
    for r in rows:
        mem = f"{r['gpu_memory_peak_bytes'] / 1024**3:.1f} GiB" if r["gpu_memory_peak_bytes"] else "-"
        print(f"{r['method']:<18} {r['preset']:<20} exit {r['exit']}  {r['steps']} steps  {r['s_per_step_median']} s/step  peak {mem}  ({r['wall_s']} s)")
    return 0 if all(r["exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
