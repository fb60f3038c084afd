"""The documented checklist: what passes here, what is skipped and why, and the exit status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from bespoke_kohya.dataset import check_dataset, prepare
from bespoke_kohya.presets import load_preset
from bespoke_kohya.engines.kohya.recipe import config_differences
from bespoke_kohya.reproduce import FAIL, NA, PASS, SKIPPED, Checklist, check_upscale


def test_documented_preset_has_no_config_differences():
    assert config_differences(load_preset("sd15_512")) == []
    assert config_differences(load_preset("sd15_576")) == [
        "pretrained_model_name_or_path: 'runwayml/stable-diffusion-v1-5' → 'stable-diffusion-v1-5/stable-diffusion-v1-5'",
        "resolution: '512,512' → '576,576'",
    ]


def test_exit_status_tells_pass_skip_and_fail_apart():
    c = Checklist()
    c.add(1, "a", PASS)
    c.add(5, "b", NA)
    assert c.exit_code == 0
    c.add(3, "c", SKIPPED, reason="no GPU")
    assert c.exit_code == 3
    c.add(2, "d", FAIL)
    assert c.exit_code == 1


def test_upscale_check_catches_a_smoothed_image(small_punks: Path, tmp_path: Path):
    report = check_dataset(small_punks)
    prepared = prepare(report, tmp_path / "data", resolution=576, num_repeats=1, concept="c", default_caption="x", background="#ffffff")
    ok, evidence = check_upscale(report, prepared.folder, "#ffffff")
    assert ok and evidence.startswith("8/8")
    victim = prepared.folder / f"{report.images[0].name}.png"
    Image.open(victim).resize((24, 24), Image.BILINEAR).resize((576, 576), Image.BICUBIC).save(victim)
    ok, evidence = check_upscale(report, prepared.folder, "#ffffff")
    assert not ok and report.images[0].name in evidence


def test_reproduce_without_gpu_passes_steps_1_and_2_and_skips_the_rest(punks_dir: Path, tmp_path: Path):
    run = tmp_path / "repro run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, "-m", "bespoke_kohya", "reproduce", "--dataset", str(punks_dir), "--run-dir", str(run)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 3, r.stderr
    table = json.loads((run / "reproduce.json").read_text())
    status = {s["step"]: s["status"] for s in table["steps"]}
    assert status == {1: "pass", 2: "pass", 3: "skipped", 4: "skipped", 5: "skipped", 6: "skipped"}
    step2 = next(s for s in table["steps"] if s["step"] == 2)
    assert "14/14 keys equal" in step2["evidence"] and "training not launched" in step2["reason"] and step2["command"]
    # The recipe's one stated departure (issue 14) is said beside the keys that equal it.
    assert "apart from the recipe, 18 image(s) held out of training for a validation loss (dataset.validation_split=0.1; 0 trains on all" in step2["evidence"]
    assert all(s["reason"] and s["command"] for s in table["steps"] if s["status"] == "skipped")
    assert table["exit_code"] == 3
    assert "184/184" in next(s for s in table["steps"] if s["step"] == 1)["evidence"]


def test_reproduce_pixel24_passes_every_applicable_step_on_cpu(small_punks: Path, tmp_path: Path):
    run = tmp_path / "p24 run"
    tiny = ["pixel24.steps=4", "pixel24.base=none", "pixel24.epochs=2", "pixel24.block_out_channels=[16, 32]", "pixel24.batch_size=8", "pixel24.sample_steps=2", "seeds=[1, 2]"]
    args = [sys.executable, "-m", "bespoke_kohya", "reproduce", "--preset", "pixel24", "--dataset", str(small_punks), "--run-dir", str(run)]
    for item in tiny:
        args += ["--set", item]
    r = subprocess.run(args, capture_output=True, text=True, timeout=600, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = json.loads((run / "reproduce.json").read_text())
    status = {s["step"]: s["status"] for s in table["steps"]}
    assert status == {1: "n/a", 2: "pass", 3: "pass", 4: "pass", 5: "n/a", 6: "pass"}
    assert all(s["reason"] for s in table["steps"] if s["status"] == "n/a")
    assert (run / "report" / "index.html").is_file() and (run / "samples" / "epoch-002").is_dir()
    page = (run / "report" / "index.html").read_text()
    assert "take epoch 2 as documented" in page and "score with the report" in page


def test_table_shows_a_repeated_command_once_below():
    """Issue 12: `reproduce`'s table repeated the same long command in four rows."""
    from bespoke_kohya.reproduce import format_table

    c = Checklist()
    c.add(2, "config", PASS, reason="training not launched: no GPU", command="make vendor")
    then = "bespoke-kohya train --resume RUN && bespoke-kohya sample --run RUN && bespoke-kohya report --run RUN"
    for step in (3, 4, 5, 6):
        c.add(step, f"check {step}", SKIPPED, reason="needs trained checkpoints", command=then)
    rows, commands = format_table(c)
    assert commands == ["[1] make vendor", f"[2] {then}"]
    assert [row[4] for row in rows] == ["training not launched: no GPU → run [1] below"] + ["needs trained checkpoints → run [2] below"] * 4
    assert not any(then in cell for row in rows for cell in row)
