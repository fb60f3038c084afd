"""The real kohya sd-scripts v0.10.1 for each method other than LoRA (issue 25), driven through our CLI on the CPU.

Each test trains 2 tiny epochs at 64 px on 8 real punks (2 held out) against the random-weight SD1.5 with the
full architecture (as test_sd_scripts.py does for LoRA), then proves: the script ran to the end, wrote a file per
epoch named as run.json records them, of the kind the method makes; the loss series came from its TensorBoard
tags; and our sampler loads every epoch's file onto the base and draws something else than the base.

Needs `make vendor` (skipped otherwise) and a few GB of memory; run one at a time:

    .venv/bin/python -m pytest -m sd_scripts tests/engines/kohya/test_sd_scripts_methods.py -s

Each test prints its training time and peak RSS (GNU time's, of sd-scripts' training process). Measured on
this project's shared 2-core CPU machine: the README's Tests section.
"""

from __future__ import annotations

import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bespoke_kohya.engines.kohya.preflight import safetensors_keys
from bespoke_kohya.runfolder import run_document as read_run
from bespoke_kohya.runfolder.records import read_loss

from tests.engines.kohya.test_sd_scripts import RUN_TIMEOUT, SD, cli_env, needs_sd_scripts, random_base, run_cli  # noqa: F401 (fixture)

SPLIT = 0.25  # 8 punks: 2 held out that sd-scripts does not train on, 6 trained
# The sampling suite cut to one prompt, one seed and 2 steps (the LoRA smoke's), so each epoch draws in seconds.
SAMPLE_SETS = ["steps=2", "seeds=[1]", 'prompts=["lad, green solid background, black hair"]', "sample.heldout_seeds=1"]
METHOD_SETS = {
    # AdamW's fp32 moments for 860M weights would need ~20 GB of RAM on the CPU; Adafactor's factored ones fit
    # (measured 11.1 GB peak). Batches of 6: one optimiser step an epoch (a step costs ~90-150 s here).
    "sd15_576_full": ["optimizer_type=Adafactor", "train_batch_size=6"],
    # A higher rate than the preset's so 2 steps move the embedding and the ControlNet's zero convolutions visibly.
    "sd15_576_ti": ["train_batch_size=4", "learning_rate=5e-2"],
    "sd15_576_controlnet": ["train_batch_size=4", "learning_rate=1e-3"],
}
SCRIPTS = {"sd15_576_full": "train_db.py", "sd15_576_ti": "train_textual_inversion.py", "sd15_576_controlnet": "train_control_net.py"}


def train_command(preset: str, dataset: Path, run_dir: Path, base: Path) -> list[str]:
    sets = [f"pretrained_model_name_or_path={base}", "resolution=64", "allow_uneven_pixels=true", "max_train_epochs=2", "num_repeats=1",
            "cache_latents=false", f"dataset.validation_split={SPLIT}", *METHOD_SETS[preset], *SAMPLE_SETS]
    cmd = [sys.executable, "-m", "bespoke_kohya", "train", "--preset", preset, "--cpu", "--no-sample", "--run-dir", str(run_dir), "--dataset", str(dataset)]
    return cmd + [arg for s in sets for arg in ("--set", s)]


def trained(preset: str, small_punks: Path, tmp_path: Path, base: Path) -> tuple[Path, str, float, float]:
    """Train and check what every method shares: finished, both epochs recorded and on disk, per-step losses; returns
    (run, train.log, wall seconds, peak RSS of the training processes in GB)."""
    run_dir = tmp_path / "run"
    started = time.monotonic()
    # GNU time reports the largest resident set of the processes it waited for, sd-scripts' training process among them.
    timer = ["/usr/bin/time", "-v"] if Path("/usr/bin/time").is_file() else []
    code = run_cli(timer + train_command(preset, small_punks, run_dir, base), tmp_path / "cli.out")
    seconds = time.monotonic() - started
    out = (tmp_path / "cli.out").read_text(errors="replace")
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", out)
    peak = int(found.group(1)) / 1e6 if found else float("nan")
    assert code == 0, out[-3000:]
    record = read_run(run_dir)
    assert record["status"] == "finished" and record["exit_code"] == 0, record.get("failure")
    assert record["epochs"] == {"1": "checkpoints/bespoke-000001.safetensors", "2": "checkpoints/bespoke.safetensors"}
    assert any(c.endswith("/" + SCRIPTS[preset]) for c in record["command"]) and "--resume" not in record["command"]
    log = (run_dir / "logs" / "train.log").read_text(errors="replace")
    assert "epoch 1/2" in log and "epoch 2/2" in log and "saving checkpoint: checkpoints/bespoke-000001.safetensors" in log
    assert log.rstrip().endswith("with exit status 0")
    rows = read_loss(run_dir)
    assert rows and all(r.loss is not None and math.isfinite(r.loss) for r in rows) and {r.epoch for r in rows} == {1, 2}
    assert not list((run_dir / "checkpoints").glob("*-state"))  # these methods save no resume state
    print(f"\n{preset}: trained 2 epochs ({len(rows)} steps) in {seconds:.0f} s, peak RSS {peak:.1f} GB")
    return run_dir, log, seconds, peak


def sampled_differently(run_dir: Path, base: Path) -> dict[str, float]:
    """Every epoch drawn by our sampler (epoch 0: the base alone); the mean |pixel change| of each epoch against it."""
    from PIL import Image

    from bespoke_kohya.sample import sample_run

    started = time.monotonic()
    doc = sample_run(run_dir, device="cpu", include_base=True, base_override=str(base), progress=False)
    first = {int(e): entry["images"][0]["full"] for e, entry in doc["epochs"].items()}
    assert sorted(first) == [0, 1, 2]
    pixels = {e: np.asarray(Image.open(run_dir / rel).convert("RGB"), dtype=np.int16) for e, rel in first.items()}
    changes = {str(e): float(np.abs(pixels[e] - pixels[0]).mean()) for e in (1, 2)}
    assert all(d > 0 for d in changes.values()), f"an epoch drew exactly like the base: {changes}"
    print(f"sampled epochs 0-2 in {time.monotonic() - started:.0f} s; mean |pixel change| vs base: {changes}")
    return changes


@needs_sd_scripts
@pytest.mark.sd_scripts
@pytest.mark.slow
def test_full_fine_tune_through_train_db(random_base: Path, small_punks: Path, tmp_path: Path):
    run_dir, log, _, _ = trained("sd15_576_full", small_punks, tmp_path, random_base)
    assert "Text Encoder is not trained." in log  # stop_text_encoder_training = -1
    for name in ("bespoke-000001.safetensors", "bespoke.safetensors"):
        path = run_dir / "checkpoints" / name
        keys = safetensors_keys(path)
        assert any(k.startswith("model.diffusion_model.") for k in keys) and any(k.startswith("first_stage_model.") for k in keys)
        assert 2.0e9 < path.stat().st_size < 2.3e9  # the whole SD1.5 in fp16, as pre-flight estimates (2.13 GB)
    sampled_differently(run_dir, random_base)


@needs_sd_scripts
@pytest.mark.sd_scripts
@pytest.mark.slow
def test_textual_inversion_of_the_bespoke_punk_token(random_base: Path, small_punks: Path, tmp_path: Path):
    run_dir, log, _, _ = trained("sd15_576_ti", small_punks, tmp_path, random_base)
    assert "tokens are added for tokenizer 1: [49408, 49409]" in log  # "bespoke punk" and "bespoke punk1": two new tokens
    for name in ("bespoke-000001.safetensors", "bespoke.safetensors"):
        assert safetensors_keys(run_dir / "checkpoints" / name) == ["emb_params"]
    sampled_differently(run_dir, random_base)


@needs_sd_scripts
@pytest.mark.sd_scripts
@pytest.mark.slow
def test_controlnet_on_the_exact_edges(random_base: Path, small_punks: Path, tmp_path: Path):
    run_dir, log, _, _ = trained("sd15_576_controlnet", small_punks, tmp_path, random_base)
    assert "6 train images with repeats." in log  # 8 punks, 2 held out: the trained-only folder
    assert len(list((run_dir / "data" / "1_bespoke_punk_conditioning").glob("*.png"))) == 6  # num_repeats = 1: the folder is 1_<concept>
    for name in ("bespoke-000001.safetensors", "bespoke.safetensors"):
        keys = safetensors_keys(run_dir / "checkpoints" / name)
        assert any(k.startswith("zero_convs.") for k in keys) and any(k.startswith("input_hint_block.") for k in keys)
    sampled_differently(run_dir, random_base)
    from bespoke_kohya.runfolder.records import read_samples

    doc = read_samples(run_dir)
    heldout = read_run(run_dir)["dataset"]["heldout"]
    assert doc.settings["control"]["source"] == "held-out originals" and doc.settings["control"]["images"] == heldout
    assert doc.epochs["1"].model_dump()["control_images"] == {"p01": heldout[0]}
