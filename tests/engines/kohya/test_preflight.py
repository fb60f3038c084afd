"""Pre-flight before a kohya run: each check with fakes of the machine at its boundary, then the CLI as a user meets it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from bespoke_kohya.engines.kohya import preflight
from bespoke_kohya.errors import UserError
from bespoke_kohya.engines.kohya.preflight import GIB, Check, Gpu, GpuProbe, HubAnswer, Level, RunNeeds, Probes
from bespoke_kohya.presets import validate_preset, PRESETS_DIR, available_presets, load_preset, read_preset_data
from bespoke_kohya.engines.kohya.vendor import SD_SCRIPTS_TAG, SdScripts, find_sd_scripts

REPO = Path(__file__).resolve().parents[3]
NO_GPU = GpuProbe((), "nvidia-smi not found")
H100 = GpuProbe((Gpu("NVIDIA H100 80GB HBM3", 80 * GIB, 79 * GIB),), "nvidia-smi")


def plan(preset: str = "sd15_512", *sets: str) -> RunNeeds:
    made = RunNeeds.from_resolved(load_preset(preset, list(sets)).model_dump(mode="json"))
    assert made is not None
    return made


def no_network(*_: object) -> HubAnswer:
    raise AssertionError("the hub must not be asked")


def fakes(**overrides: object) -> Probes:
    """Probes that touch nothing real: no GPU, an empty offline hub cache, plenty of disk, no sd-scripts."""
    base: dict[str, object] = dict(
        gpus=lambda: NO_GPU, offline=lambda: True, hub_cached=lambda _: False, hub_lookup=no_network,
        hub_cache_dir=lambda: Path("/hub"), disk_space=lambda _: (1, 500 * GIB), sd_scripts=lambda _: None,
        sd_python=lambda _: {"error": "not asked"}, cpu_cores=lambda: 2,
    )
    base.update(overrides)
    return Probes(**base)  # type: ignore[arg-type]


# ---------------------------------------------------------------- plan and estimates


def test_every_kohya_preset_has_a_plan_and_pixel24_none():
    plans = {name: RunNeeds.from_resolved(validate_preset(read_preset_data(PRESETS_DIR / f"{name}.toml"), "test preset").model_dump(mode="json"))
             for name in available_presets(PRESETS_DIR)}
    native = [name for name in plans if read_preset_data(PRESETS_DIR / f"{name}.toml")["engine"] == "pixel24"]
    assert "pixel24" in native and all(plans.pop(name) is None for name in native)
    assert len(plans) >= 5 and all(p is not None and p.family in ("sd15", "sdxl") and p.samples_per_epoch > 0 for p in plans.values())


def test_lora_size_matches_the_known_file_size():
    # A dim-32 SD1.5 LoRA from sd-scripts is a ~38 MB fp16 file (U-Net + text encoder).
    assert 36e6 < preflight.lora_params(plan()) * 2 < 40e6
    assert preflight.lora_params(plan("sd15_512", "text_encoder_lr=0")) < preflight.lora_params(plan())


def test_memory_estimate_is_within_the_public_figures_and_moves_with_each_setting():
    sd15 = preflight.memory_estimate(plan())
    assert 5 * GIB < sd15 < 9 * GIB  # SD1.5 LoRA, 512 px, batch 1, fp16: commonly 6-8 GB
    # sd-scripts README: SDXL LoRA at 1024 fits 8 GB (10 recommended) with checkpointing, 8-bit optimizer, dim 4-8.
    sdxl = preflight.memory_estimate(plan("sdxl_512", "resolution=1024", "gradient_checkpointing=true", "optimizer_type=AdamW8bit", "network_dim=8"))
    assert 8 * GIB < sdxl < 12 * GIB
    assert preflight.memory_estimate(plan("sd15_512", "gradient_checkpointing=true")) < sd15
    assert preflight.memory_estimate(plan("sd15_512", "train_batch_size=4")) > sd15
    assert preflight.memory_estimate(plan("sd15_512", "mixed_precision=no")) > sd15
    assert preflight.memory_estimate(plan("sd15_512", "resolution=768")) > sd15


def test_saved_epochs_follow_sd_scripts_naming():
    assert preflight.saved_epochs(plan()) == 3  # -000001, -000002, and the last as bespoke.safetensors
    assert preflight.saved_epochs(plan("sd15_512", "max_train_epochs=10", "save_every_n_epochs=3")) == 4  # 3, 6, 9, last
    assert preflight.saved_epochs(plan(), from_epoch=2) == 1
    with_states = preflight.run_bytes(plan(), 184)
    assert preflight.run_bytes(plan("sd15_512", "save_state=false"), 184) < with_states
    assert preflight.run_bytes(plan(), 184, from_epoch=2) < with_states / 2


# ---------------------------------------------------------------- device


def test_no_gpu_without_cpu_fails_with_the_cpu_estimate():
    check = preflight.check_device(plan(), NO_GPU, cpu=False, images=184, cores=2)
    assert check.level is Level.FAIL and "\n" not in check.message
    assert check.message.startswith("no CUDA GPU found (nvidia-smi not found)")
    assert "5,520 steps" in check.message and "days" in check.message and "--cpu" in check.message


def test_cpu_flag_accepts_the_cpu_and_a_gpu_passes():
    assert preflight.check_device(plan(), NO_GPU, cpu=True, images=8, cores=16).level is Level.WARN
    ok = preflight.check_device(plan(), H100, cpu=False, images=8, cores=2)
    assert ok.level is Level.OK and "H100" in ok.message


def test_nvidia_smi_is_read_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'NVIDIA A10G, 23028, 22300'\necho 'NVIDIA A10G, 23028, 1000'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    probe = preflight.probe_gpus()
    assert [g.free_bytes for g in probe.gpus] == [22300 * 2**20, 1000 * 2**20] and probe.note == "nvidia-smi"
    fake.write_text("#!/bin/sh\necho \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\"\nexit 9\n")
    failed = preflight.probe_gpus()
    assert failed.gpus == () and "couldn't communicate with the NVIDIA driver" in failed.note


# ---------------------------------------------------------------- base model, every form


def write_index(folder: Path, class_name: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    return folder


def single_file(path: Path, *keys: str) -> Path:
    save_file({k: np.zeros(2, np.float16) for k in keys}, str(path))
    return path


SD15_KEYS = ("model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.transformer.text_model.final_layer_norm.weight")
SDXL_KEYS = ("model.diffusion_model.input_blocks.0.0.weight", "conditioner.embedders.1.model.ln_final.weight")


def base_check(tmp_path: Path, base: str, preset: str = "sd15_512", **probes: object) -> Check:
    return preflight.check_base(plan(preset, f"pretrained_model_name_or_path={base}"), fakes(**probes), tmp_path)


def test_local_diffusers_folder_of_the_right_family(tmp_path: Path):
    assert base_check(tmp_path, str(write_index(tmp_path / "sd15", "StableDiffusionPipeline"))).level is Level.OK
    wrong = base_check(tmp_path, str(write_index(tmp_path / "xl", "StableDiffusionXLPipeline")))
    assert wrong.level is Level.FAIL and "StableDiffusionXLPipeline" in wrong.message
    (tmp_path / "empty").mkdir()
    assert "no model_index.json" in base_check(tmp_path, str(tmp_path / "empty")).message


def test_single_file_architecture_and_corruption(tmp_path: Path):
    assert base_check(tmp_path, str(single_file(tmp_path / "sd15.safetensors", *SD15_KEYS))).level is Level.OK
    xl = single_file(tmp_path / "xl.safetensors", *SDXL_KEYS)
    assert base_check(tmp_path, str(xl), "sdxl_512").level is Level.OK
    wrong = base_check(tmp_path, str(xl))
    assert wrong.level is Level.FAIL and "sdxl checkpoint but preset sd15_512 is sd15" in wrong.message
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes((tmp_path / "sd15.safetensors").read_bytes()[:40])
    corrupt = base_check(tmp_path, str(cut))
    assert corrupt.level is Level.FAIL and "corrupt or cut short" in corrupt.message
    missing = base_check(tmp_path, str(tmp_path / "nowhere.safetensors"))
    assert missing.level is Level.FAIL and "no such file or folder" in missing.message
    (tmp_path / "old.ckpt").write_bytes(b"pickle")
    assert base_check(tmp_path, str(tmp_path / "old.ckpt")).level is Level.WARN


def test_hub_id_cached_offline_found_missing_unreachable(tmp_path: Path):
    hub = "runwayml/stable-diffusion-v1-5"
    assert base_check(tmp_path, hub, hub_cached=lambda _: True).level is Level.OK
    offline = base_check(tmp_path, hub)
    assert offline.level is Level.FAIL and "HF_HUB_OFFLINE is set" in offline.message
    assert "pretrained_model_name_or_path=stable-diffusion-v1-5/stable-diffusion-v1-5" in offline.message
    online = dict(offline=lambda: False)
    assert base_check(tmp_path, "org/model", hub_lookup=lambda _: HubAnswer.FOUND, **online).level is Level.OK
    gone = base_check(tmp_path, hub, hub_lookup=lambda _: HubAnswer.MISSING, **online)
    assert gone.level is Level.FAIL and "no such (public) model" in gone.message and "stable-diffusion-v1-5/stable-diffusion-v1-5" in gone.message
    silent = base_check(tmp_path, hub, hub_lookup=lambda _: HubAnswer.UNREACHABLE, **online)
    assert silent.level is Level.FAIL and "did not answer" in silent.message and "\n" not in silent.message


def test_real_hub_cache_probe_reads_the_cache_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert not preflight.hub_cached("org/model")
    repo = tmp_path / "models--org--model"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123" / "model_index.json").write_text("{}")
    assert preflight.hub_cached("org/model")


def test_stdlib_hub_lookup_answers_quickly_when_nothing_listens(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused at once
    started = time.monotonic()
    assert preflight._hub_lookup_stdlib("org/model", timeout=2) is HubAnswer.UNREACHABLE
    assert time.monotonic() - started < 3


# ---------------------------------------------------------------- memory and disk


def test_memory_warns_with_the_setting_to_change():
    small = GpuProbe((Gpu("RTX 3060", 12 * GIB, 5 * GIB),), "nvidia-smi").gpus
    check = preflight.check_memory(plan(), small)
    assert check.level is Level.WARN and "--set gradient_checkpointing=true brings it to" in check.message
    batched = preflight.check_memory(plan("sd15_512", "gradient_checkpointing=true", "train_batch_size=8"), small)
    assert "--set train_batch_size=4" in batched.message
    assert preflight.check_memory(plan(), H100.gpus).level is Level.OK
    assert preflight.check_memory(plan(), ()).level is Level.SKIP


def test_disk_adds_up_per_filesystem_and_names_the_place(tmp_path: Path):
    needs = preflight.disk_needs(plan(), fakes(), run_dir=tmp_path / "run", images=184, from_epoch=0, download=True, before_install=True)
    assert [what for _, _, what in needs] == ["checkpoints, states and samples", "installs", "base model download"]
    total = sum(size for _, size, _ in needs)
    same_fs = preflight.check_disk(needs, lambda _: (1, total - 1))
    assert same_fs.level is Level.FAIL and same_fs.message.startswith(f"{tmp_path / 'run'}: needs") and "installs" in same_fs.message
    assert preflight.check_disk(needs, lambda _: (1, total)).level is Level.OK
    download = needs[2][1]
    assert 3 * GIB < download < 5 * GIB  # SD1.5's fp32 U-Net, text encoder and VAE
    split = preflight.check_disk(needs, lambda p: (2, download) if p == Path("/hub") else (1, total - download))
    assert split.level is Level.OK
    short_hub = preflight.check_disk(needs, lambda p: (2, download - 1) if p == Path("/hub") else (1, total))
    assert short_hub.level is Level.FAIL and short_hub.message.startswith("/hub: needs") and "base model download" in short_hub.message
    real = preflight.check_disk(needs[:1], preflight.disk_space)
    assert real.level is Level.OK or "free space there" in real.message


# ---------------------------------------------------------------- sd-scripts


def sd(tag: str | None = SD_SCRIPTS_TAG) -> SdScripts:
    return SdScripts(Path("/opt/sd-scripts"), Path("/opt/sd-scripts/venv/bin/python"), "0123456789abcdef", tag, None)


def test_sd_scripts_installed_tag_and_cuda():
    missing = preflight.check_sd_scripts(fakes(), REPO, need_cuda=False)
    assert missing.level is Level.FAIL and "make vendor" in missing.message

    def bad_env(_: Path) -> None:
        raise UserError("SD_SCRIPTS_DIR=/x: no such folder; point it at a clone")

    assert "SD_SCRIPTS_DIR=/x" in preflight.check_sd_scripts(fakes(sd_scripts=bad_env), REPO, need_cuda=False).message
    assert preflight.check_sd_scripts(fakes(sd_scripts=lambda _: sd("v0.9.0")), REPO, need_cuda=False).level is Level.WARN
    cpu_torch = fakes(sd_scripts=lambda _: sd(), sd_python=lambda _: {"torch": "2.14.1+cpu", "cuda": False, "cuda_version": None})
    no_cuda = preflight.check_sd_scripts(cpu_torch, REPO, need_cuda=True)
    assert no_cuda.level is Level.FAIL and "cannot use CUDA" in no_cuda.message and "SD_SCRIPTS_TORCH" in no_cuda.message
    broken = fakes(sd_scripts=lambda _: sd(), sd_python=lambda _: {"error": "ImportError: libcudart.so.12: cannot open shared object file"})
    assert "libcudart" in preflight.check_sd_scripts(broken, REPO, need_cuda=True).message
    cuda = fakes(sd_scripts=lambda _: sd(), sd_python=lambda _: {"torch": "2.5.1+cu124", "cuda": True})
    assert preflight.check_sd_scripts(cuda, REPO, need_cuda=True).level is Level.OK


# ---------------------------------------------------------------- together


def test_for_train_refuses_with_one_line_per_cause_and_returns_warnings(tmp_path: Path):
    resolved = load_preset("sd15_512", []).model_dump(mode="json")
    with pytest.raises(UserError) as refused:
        preflight.for_train(resolved, repo_root=REPO, run_dir=tmp_path / "run", images=184, cpu=False, num_gpus=1, probes=fakes())
    lines = str(refused.value).splitlines()
    assert lines[0].startswith("no CUDA GPU found") and lines[1].startswith("base model runwayml/stable-diffusion-v1-5:")
    assert lines[2].startswith("sd-scripts is not installed") and len(lines) == 4
    ready = fakes(gpus=lambda: GpuProbe((Gpu("T4", 16 * GIB, 4 * GIB),), "nvidia-smi"), hub_cached=lambda _: True,
                  sd_scripts=lambda _: sd(), sd_python=lambda _: {"torch": "2.5.1", "cuda": True})
    warnings = preflight.for_train(resolved, repo_root=REPO, run_dir=tmp_path / "run", images=184, cpu=False, num_gpus=1, probes=ready)
    assert len(warnings) == 1 and "gradient_checkpointing=true" in warnings[0]
    assert not (tmp_path / "run").exists()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bespoke_kohya", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, timeout=120)


needs_no_gpu = pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="checks the no-GPU refusal; this machine has nvidia-smi")


@needs_no_gpu
def test_train_stops_in_seconds_before_writing_anything(punks_dir: Path, tmp_path: Path):
    run = tmp_path / "x"
    started = time.monotonic()
    r = cli("train", "--preset", "sd15_512", "--dataset", str(punks_dir), "--run-dir", str(run))
    assert r.returncode == 2 and time.monotonic() - started < 60
    lines = r.stderr.splitlines()
    assert lines[0].startswith("error: no CUDA GPU found") and "--cpu" in lines[0]
    assert lines[1].strip().startswith("base model runwayml/stable-diffusion-v1-5: not in the Hugging Face cache and HF_HUB_OFFLINE is set")
    assert sum("base model" in line for line in lines) == 1 and sum("GPU" in line for line in lines) == 1
    assert not run.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(find_sd_scripts(REPO) is not None, reason="shows what --skip-preflight leaves when sd-scripts is not installed")
def test_skip_preflight_reaches_the_older_refusal(punks_dir: Path, tmp_path: Path):
    r = cli("train", "--preset", "sd15_512", "--dataset", str(punks_dir), "--run-dir", str(tmp_path / "x"), "--skip-preflight")
    assert r.returncode == 2 and r.stderr.startswith("error: kohya sd-scripts is not installed") and "GPU" not in r.stderr


def test_doctor_preset_shows_the_same_checks(tmp_path: Path, punks_dir: Path):
    r = cli("doctor", "--preset", "sd15_512", "--dataset", str(punks_dir), "--set", f"pretrained_model_name_or_path={tmp_path / 'none.safetensors'}")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "pre-flight for sd15_512" in r.stdout and "no such file or folder" in r.stdout
    for name in ("device", "base", "disk", "sd-scripts"):
        assert f"│ {name}" in r.stdout


@needs_no_gpu
def test_resume_is_checked_again_before_anything_changes(punks_dir: Path, tmp_path: Path):
    # A dry run renders without the pre-flight; resuming it for real is checked by the engine's plan() first.
    from bespoke_kohya.runfolder import run_document

    run = tmp_path / "x"
    assert cli("train", "--preset", "sd15_512", "--dataset", str(punks_dir), "--run-dir", str(run), "--dry-run").returncode == 0
    before = run_document(run)
    r = cli("train", "--resume", str(run))
    assert r.returncode == 2 and r.stderr.startswith("error: no CUDA GPU found"), r.stderr
    assert "base model runwayml/stable-diffusion-v1-5: not in the Hugging Face cache" in r.stderr
    assert run_document(run) == before  # nothing recorded for a session that never started
    if find_sd_scripts(REPO) is None:
        skipped = cli("train", "--resume", str(run), "--skip-preflight")
        assert skipped.returncode == 2 and skipped.stderr.startswith("error: kohya sd-scripts is not installed"), skipped.stderr


@needs_no_gpu
def test_reproduce_blockers_are_the_preflight_failures(monkeypatch: pytest.MonkeyPatch):
    from bespoke_kohya.engines import get_engine

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    blockers = get_engine("kohya").blockers(load_preset("sd15_512"), cpu=False)
    causes = [cause for cause, _ in blockers]
    assert any(c.startswith("no CUDA GPU found") for c in causes)
    assert any(c.startswith("base model runwayml/stable-diffusion-v1-5: not in the Hugging Face cache") for c in causes)
    assert not any(c.startswith("no CUDA GPU") for c, _ in get_engine("kohya").blockers(load_preset("sd15_512"), cpu=True))


# ---------------------------------------------------------------- the other training methods (issue 25)


def test_each_method_preset_has_its_own_plan():
    assert [plan(n).method for n in ("sd15_576", "sd15_576_full", "sd15_576_ti", "sd15_576_controlnet")] == ["lora", "full", "textual_inversion", "controlnet"]
    assert not plan("sd15_576_full").train_text_encoder and plan("sd15_576_full", "kohya.full.train_text_encoder=true").train_text_encoder
    assert (plan("sd15_576_ti").token_string, plan("sd15_576_ti").vectors) == ("bespoke punk", 2)
    old = load_preset("sd15_576").model_dump(mode="json")
    del old["kohya"]["method"]  # a run.json from before the methods
    assert RunNeeds.from_resolved(old).method == "lora"


def test_method_memory_follows_what_each_script_trains():
    lora, full, ti, cn = (preflight.memory_estimate(plan(n)) for n in ("sd15_576", "sd15_576_full", "sd15_576_ti", "sd15_576_controlnet"))
    assert lora < ti < cn < full
    # train_db's U-Net in fp32 with AdamW: 860M x (4 + 4 + 8) bytes = 12.8 GiB before the frozen parts and activations.
    assert preflight.weights_bytes(plan("sd15_576_full")) > 859_520_964 * 16
    assert 15 * GIB < full < 18 * GIB and 9 * GIB < cn < 12 * GIB
    # sd-scripts' train_db README (zh): the most memory-saving command (8-bit Adam, checkpointing, cached latents,
    # fp16, text encoder trained, 512 px) "needs about 12 GB".
    saving = plan("sd15_576_full", "optimizer_type=AdamW8bit", "kohya.full.train_text_encoder=true", "resolution=512", "allow_uneven_pixels=true")
    assert 11 * GIB < preflight.memory_estimate(saving) < 13.5 * GIB
    assert preflight.memory_estimate(plan("sd15_576_full", "optimizer_type=Adafactor")) < full
    assert preflight.memory_estimate(plan("sd15_576_controlnet", "gradient_checkpointing=false")) > cn


def test_checkpoint_sizes_per_method_match_the_files_sd_scripts_writes():
    # Measured: the CPU smoke's train_db.py checkpoint (fp16) is 2,132,625,558 bytes.
    assert abs(preflight.checkpoint_bytes(plan("sd15_576_full")) - 2_132_625_558) < 1e6
    assert abs(preflight.checkpoint_bytes(plan("sd15_576_full", "save_precision=float")) - 2 * 2_132_625_558) < 2e6
    assert abs(preflight.checkpoint_bytes(plan("sd15_576_controlnet")) - 361_279_120 * 2) < 1e6
    assert preflight.checkpoint_bytes(plan("sd15_576_ti")) < 100_000  # 2 vectors x 768 x 2 bytes and a header
    assert abs(preflight.checkpoint_bytes(plan("sd15_576")) - 38e6) < 2e6


def test_checkpoints_that_add_up_are_announced_with_save_every_n_epochs():
    full = preflight.check_checkpoints(plan("sd15_576_full"))
    assert full.level is Level.WARN
    assert full.message == ("sd15_576_full: 3 whole-model checkpoints (train_db.py saves U-Net, text encoder and VAE) of ~2.13 GB each (fp16), "
                            "~6.40 GB in checkpoints/; --set save_every_n_epochs=2 writes 2 (~4.27 GB), the last epoch always included")
    floats = preflight.check_checkpoints(plan("sd15_576_full", "save_precision=float", "max_train_epochs=10", "save_every_n_epochs=2"))
    assert "--set save_every_n_epochs=3 writes 4" in floats.message and "save_precision=fp16 halves each" in floats.message
    assert preflight.check_checkpoints(plan("sd15_576")).level is Level.OK
    assert "embeddings of ~" in preflight.check_checkpoints(plan("sd15_576_ti")).message


def test_disk_counts_each_methods_checkpoints_and_no_states(tmp_path: Path):
    full = preflight.run_bytes(plan("sd15_576_full"), images=184)
    assert full > 3 * 2_132_625_558 and full < 3 * 2_132_625_558 + 1 * GIB
    assert preflight.run_bytes(plan("sd15_576_controlnet"), images=184) > 3 * 722_000_000


def render_for_preflight(tmp_path: Path, punks_dir: Path, name: str) -> Path:
    from bespoke_kohya.dataset import check_dataset
    from bespoke_kohya.render import render
    from tests.helpers.punks import copy_punks

    dataset = copy_punks(punks_dir, tmp_path / "punks", every=30, count=6)
    return render(load_preset(name, ["resolution=96"]), check_dataset(dataset), tmp_path / "run", run_id="run").run_dir


def test_a_controlnet_run_needs_its_conditioning_folder_paired_with_its_images(tmp_path: Path, punks_dir: Path):
    needs = plan("sd15_576_controlnet")
    assert preflight.check_conditioning(needs, None).level is Level.SKIP  # a new run: render writes them
    run = render_for_preflight(tmp_path, punks_dir, "sd15_576_controlnet")
    ok = preflight.check_conditioning(needs, run)
    # 6 x 0.1 holds 1 out that sd-scripts trains on as well (ceil(6 x 0.9) = 6, render warns): all 6 are trained on.
    assert ok.level is Level.OK and ok.message == "6 edge maps in 10_bespoke_punk_conditioning, one per training image"
    one = next((run / "data" / "10_bespoke_punk_conditioning").glob("*.png"))
    one.rename(one.with_name("stray.png"))
    paired = preflight.check_conditioning(needs, run)
    assert paired.level is Level.FAIL and f"1 training image(s) without an edge map ({one.stem})" in paired.message
    assert "1 edge map(s) without an image (stray)" in paired.message and paired.fix == "render the run again"
    shutil.rmtree(run / "data" / "10_bespoke_punk_conditioning")
    gone = preflight.check_conditioning(needs, run)
    assert gone.level is Level.FAIL and "the conditioning folder is missing" in gone.message


def test_the_textual_inversion_token_must_be_new_to_clips_vocabulary():
    vocab = preflight.clip_vocabulary()
    assert vocab is not None and len(vocab) == 49408  # CLIP's BPE vocabulary, offline from open-clip-torch's file
    assert preflight.check_token(plan("sd15_576_ti"), vocab).level is Level.OK
    taken = preflight.check_token(plan("sd15_576_ti", "kohya.textual_inversion.token_string=punk", "trigger=punk"), vocab)
    assert taken.level is Level.FAIL and taken.message.startswith("kohya.textual_inversion.token_string 'punk': 'punk' is already a single CLIP token")
    assert 'token_string = "bespoke punk"' in taken.fix
    assert preflight.check_token(plan("sd15_576_ti"), None).level is Level.SKIP  # go.sh before anything is installed


def test_run_checks_add_each_methods_own_checks(tmp_path: Path):
    def names(preset: str) -> list[str]:
        return [c.name for c in preflight.run_checks(plan(preset), repo_root=REPO, run_dir=tmp_path, images=8, cpu=True,
                                                     probes=fakes(vocabulary=lambda: {"punk</w>": 1}))]

    assert names("sd15_576") == ["device", "base", "disk", "checkpoints", "sd-scripts"]
    assert names("sd15_576_full") == ["device", "base", "disk", "checkpoints", "sd-scripts"]
    assert names("sd15_576_ti") == ["device", "base", "disk", "checkpoints", "token", "sd-scripts"]
    assert names("sd15_576_controlnet") == ["device", "base", "disk", "checkpoints", "conditioning", "sd-scripts"]
