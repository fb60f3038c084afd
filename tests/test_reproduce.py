"""The documented checklist: what passes here, what is skipped and why, and the exit status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from bespoke_kohya.dataset import check_dataset, prepare
from bespoke_kohya.presets import load_preset
from bespoke_kohya.reproduce import FAIL, NA, PASS, SKIPPED, Checklist, check_upscale, config_differences


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
    assert all(s["reason"] and s["command"] for s in table["steps"] if s["status"] == "skipped")
    assert table["exit_code"] == 3
    assert "184/184" in next(s for s in table["steps"] if s["step"] == 1)["evidence"]
