"""The kohya engine's diffusers sampler, and the epoch loop it draws through, on a tiny random-weight SD1.5 and real kohya-format LoRAs.

What is proved: a LoRA changes the output and every one of its modules lands on a
layer; removing it restores the base output bit for bit; a seed reproduces exactly
and different seeds differ; each epoch is drawn the same way whatever was sampled
before it; the files and samples.json are complete and merge across calls; bad
inputs (missing, corrupt, mismatched LoRAs, bad bases, bad devices) are one clear
UserError naming the file, and leave nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from bespoke_kohya import sample
from bespoke_kohya.devices import resolve_device
from bespoke_kohya.engines.kohya import sampler as kohya
from bespoke_kohya.errors import UserError
from bespoke_kohya.postprocess import PostprocessOptions, postprocess
from bespoke_kohya.presets import validate_preset
from bespoke_kohya.settings import Preset, SampleSettings
from bespoke_kohya.engines.protocol import SampleJob
from bespoke_kohya.runfolder import file_sha256

from tests.helpers.punks import copy_punks
from tests.helpers.runs import write_record, write_training_images
from tests.helpers.tiny_sd import build_tiny_sd15, kohya_lora_state_dict, kohya_metadata, write_kohya_lora

SIZE = (64, 64)
PROMPTS = [
    "pixel art, 24x24, portrait of bespoke punk lad, green solid background, black hair",
    "pixel art, 24x24, portrait of bespoke punk lady, blonde hair, purple background",
]
NEGATIVE = "blurry, gradient"


def tiny_preset(base: Path | str, family: str = "sd15", **sample_over: object) -> Preset:
    """A kohya preset whose base is the tiny model, sampling 64×64 in 2 steps."""
    sample_table = {"steps": 2, "guidance_scale": 7.5, "scheduler": "euler_a", "width": 64, "height": 64,
                    "seeds": [1, 2], "postprocess": "nearest", "palette_max_delta_e": None, **sample_over}
    return validate_preset({
        "name": "tiny", "description": "tiny random SD1.5", "engine": "kohya", "family": family,
        "kohya": {"pretrained_model_name_or_path": str(base), "resolution": 64, "output_name": "bespoke"},
        "sample": sample_table,
    }, "test preset")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the tiny model gains nothing from two, and on a shared CPU two
    threads that wait on each other made each call 3-10× slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny base folder and a run folder holding two epoch LoRAs for it."""
    root = tmp_path_factory.mktemp("tiny_sd")
    base = build_tiny_sd15(root / "base")
    run = root / "run"
    ckpt = run / "checkpoints"
    return {
        "base": base,
        "run": run,
        "lora1": write_kohya_lora(base, ckpt / "bespoke-000001.safetensors", seed=1, epoch=1),
        "lora2": write_kohya_lora(base, ckpt / "bespoke.safetensors", seed=2, epoch=2),
    }


@pytest.fixture(scope="module")
def pipe(tiny: dict[str, Path]):
    """The tiny base, loaded once through the sampler's own loader (as a local diffusers folder)."""
    p = kohya.load_base(tiny_preset(tiny["base"]), device="cpu")
    p.scheduler = kohya.scheduler_for("euler_a", p.scheduler.config)
    return p


SETTINGS = SampleSettings(steps=2, guidance_scale=7.5, scheduler="euler_a", seeds=[1, 2], postprocess="nearest", palette_max_delta_e=None)


def draw(pipe, seed: int = 1, prompt: str = PROMPTS[0]) -> np.ndarray:
    return np.asarray(kohya.draw_image(pipe, prompt, seed, SETTINGS, SIZE, NEGATIVE))


# ------------------------------------------------------------------ apply / remove / seeds


def test_lora_changes_output_and_removing_it_restores_the_base_exactly(pipe, tiny) -> None:
    before = draw(pipe)
    tensors, _ = kohya.read_lora(tiny["lora1"])
    expected_modules = len(kohya.lora_module_names(tensors))
    with kohya.lora_applied(pipe, tiny["lora1"]) as metadata:
        # Every kohya module (U-Net and text encoder) found its layer: none silently dropped.
        assert kohya._adapted_modules(pipe, kohya.ADAPTER) == expected_modules
        assert expected_modules > 40 and any(n.startswith("lora_te_") for n in kohya.lora_module_names(tensors))
        with_lora = draw(pipe)
    assert metadata["ss_epoch"] == "1" and metadata["ss_network_dim"] == "4"
    assert kohya._adapted_modules(pipe, kohya.ADAPTER) == 0
    after = draw(pipe)
    diff = np.abs(with_lora.astype(int) - before.astype(int))
    assert diff.mean() > 5, f"the LoRA barely changed the image (mean |diff| {diff.mean():.2f})"
    assert np.array_equal(after, before), "unloading the LoRA did not restore the base output exactly"


def test_text_encoder_part_of_the_lora_is_applied_too(pipe, tiny, tmp_path: Path) -> None:
    # A LoRA with only its lora_te_* modules must still change the prompt embedding.
    tensors = {k: v for k, v in kohya_lora_state_dict(tiny["base"], seed=3).items() if k.startswith("lora_te_")}
    path = tmp_path / "te-only.safetensors"
    save_file(tensors, str(path), metadata=kohya_metadata(4, 2.0, 1))
    ids = pipe.tokenizer(PROMPTS[0], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        base_emb = pipe.text_encoder(ids)[0]
        with kohya.lora_applied(pipe, path):
            lora_emb = pipe.text_encoder(ids)[0]
        restored = pipe.text_encoder(ids)[0]
    assert (lora_emb - base_emb).abs().max() > 1e-2
    assert torch.equal(restored, base_emb)


def test_same_seed_is_bit_exact_and_other_seeds_differ(pipe) -> None:
    a, b, c = draw(pipe, 1), draw(pipe, 1), draw(pipe, 2)
    assert np.array_equal(a, b)
    assert (a != c).mean() > 0.5, "seeds 1 and 2 gave (nearly) the same image"


def test_one_sampling_call_is_fast(pipe) -> None:
    start = time.perf_counter()
    draw(pipe, 7)
    seconds = time.perf_counter() - start
    print(f"one 64x64, 2-step tiny sampling call: {seconds:.3f} s")
    assert seconds < 10


# ------------------------------------------------------------------ sample_epochs: files and samples.json


@pytest.mark.slow
def test_sample_epochs_writes_every_file_and_records_them(pipe, tiny, tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    lora = run / "checkpoints" / "bespoke-000001.safetensors"
    lora.write_bytes(tiny["lora1"].read_bytes())
    options = PostprocessOptions(method="grid")
    jobs = [SampleJob(0, None), SampleJob(1, lora)]
    doc = kohya.sample_epochs(pipe, jobs, PROMPTS, [1, 2], SETTINGS, run / "samples", size=SIZE,
                               negative_prompt=NEGATIVE, postprocess_options=options, progress=False)

    on_disk = json.loads((run / "samples" / "samples.json").read_text(encoding="utf-8"))
    assert on_disk == doc
    assert doc["version"] == 1 and doc["seeds"] == [1, 2]
    assert doc["prompts"] == [{"id": "p01", "prompt": PROMPTS[0]}, {"id": "p02", "prompt": PROMPTS[1]}]
    s = doc["settings"]
    assert (s["steps"], s["guidance_scale"], s["scheduler"], s["width"], s["height"]) == (2, 7.5, "euler_a", 64, 64)
    assert s["negative_prompt"] == NEGATIVE and s["device"] == "cpu" and s["dtype"] == "float32"
    assert s["postprocess_options"]["method"] == "grid" and s["base"] == str(tiny["base"])
    assert list(doc["epochs"]) == ["0", "1"]
    e0, e1 = doc["epochs"]["0"], doc["epochs"]["1"]
    assert e0["base_only"] and e0["checkpoint"] is None and e0["sha256"] is None
    assert e1["checkpoint"] == "checkpoints/bespoke-000001.safetensors"
    assert e1["sha256"] == hashlib.sha256(lora.read_bytes()).hexdigest() == file_sha256(lora)
    assert e1["lora_metadata"]["ss_epoch"] == "1"
    assert e0["suite_id"] == e1["suite_id"] == doc["suite_id"]

    for epoch, entry in doc["epochs"].items():
        assert [(i["prompt_id"], i["seed"]) for i in entry["images"]] == [("p01", 1), ("p01", 2), ("p02", 1), ("p02", 2)]
        for img in entry["images"]:
            assert img["full"] == f"samples/epoch-{int(epoch):03d}/{img['prompt_id']}-s{img['seed']}.png"
            full, art, preview = (Image.open(run / img[k]) for k in ("full", "art", "preview"))
            assert full.size == SIZE and art.size == (24, 24) and preview.size == (192, 192)
            # The 24x24 file is the post-processor's result and the preview its exact x8 enlargement.
            expected_art, grid = postprocess(full.convert("RGB"), options)
            assert np.array_equal(np.asarray(art.convert("RGB")), np.asarray(expected_art))
            assert np.array_equal(np.asarray(preview.convert("RGB")), np.asarray(expected_art).repeat(8, 0).repeat(8, 1))
            assert img["grid"] == grid.to_dict()
    # Epoch 0 is the base alone: the same pixels the pipeline draws without any LoRA.
    first = run / e0["images"][0]["full"]
    assert np.array_equal(np.asarray(Image.open(first).convert("RGB")), draw(pipe, 1, PROMPTS[0]))
    # The LoRA epoch differs from the base on the same prompt and seed.
    lora_full = np.asarray(Image.open(run / e1["images"][0]["full"]).convert("RGB"))
    assert np.abs(lora_full.astype(int) - draw(pipe, 1, PROMPTS[0]).astype(int)).mean() > 5
    # No staging folders or temporary files are left behind.
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["epoch-000", "epoch-001", "samples.json"]
    assert not [p for p in (run / "samples").rglob(".*")]


def test_an_epoch_looks_the_same_whatever_was_sampled_before_it(pipe, tiny, tmp_path: Path) -> None:
    opts = PostprocessOptions(method="nearest")
    kw = dict(size=SIZE, negative_prompt=NEGATIVE, postprocess_options=opts, progress=False)
    both = kohya.sample_epochs(pipe, [SampleJob(1, tiny["lora1"]), SampleJob(2, tiny["lora2"])], PROMPTS[:1], [1], SETTINGS, tmp_path / "a" / "samples", **kw)
    alone = kohya.sample_epochs(pipe, [SampleJob(2, tiny["lora2"])], PROMPTS[:1], [1], SETTINGS, tmp_path / "b" / "samples", **{**kw, "progress": True})
    read = lambda root, doc, e: np.asarray(Image.open(root / doc["epochs"][e]["images"][0]["full"]))  # noqa: E731
    e1, e2_after_e1 = read(tmp_path / "a", both, "1"), read(tmp_path / "a", both, "2")
    e2_alone = read(tmp_path / "b", alone, "2")
    assert np.array_equal(e2_after_e1, e2_alone), "epoch 1's LoRA leaked into epoch 2"
    assert np.abs(e1.astype(int) - e2_alone.astype(int)).mean() > 5, "two different LoRAs drew the same image"


def test_samples_json_accumulates_and_resampling_replaces_an_epoch(pipe, tiny, tmp_path: Path) -> None:
    out = tmp_path / "run" / "samples"
    kw = dict(size=SIZE, negative_prompt=NEGATIVE, postprocess_options=PostprocessOptions(method="nearest"), progress=False)
    kohya.sample_epochs(pipe, [SampleJob(2, tiny["lora2"])], PROMPTS[:1], [1, 2], SETTINGS, out, **kw)
    doc = kohya.sample_epochs(pipe, [SampleJob(1, tiny["lora1"])], PROMPTS[:1], [1, 2], SETTINGS, out, **kw)
    assert list(doc["epochs"]) == ["1", "2"]  # sorted numerically, both kept
    assert json.loads((out / "samples.json").read_text(encoding="utf-8"))["epochs"].keys() == {"1", "2"}
    # A LoRA outside the run folder is recorded by its absolute path.
    assert doc["epochs"]["2"]["checkpoint"] == str(tiny["lora2"].resolve())
    # Re-sampling epoch 1 with one seed replaces its folder: no stale seed-2 file remains.
    doc = kohya.sample_epochs(pipe, [SampleJob(1, tiny["lora1"])], PROMPTS[:1], [1], SETTINGS, out, **kw)
    assert sorted(p.name for p in (out / "epoch-001").iterdir()) == ["p01-s1.24.png", "p01-s1.png", "p01-s1.x8.png"]
    assert len(doc["epochs"]["1"]["images"]) == 1 and len(doc["epochs"]["2"]["images"]) == 2
    # Epoch 2 was drawn with another seed list: its suite id tells the report it is not comparable.
    assert doc["epochs"]["1"]["suite_id"] == doc["suite_id"] != doc["epochs"]["2"]["suite_id"]


def test_a_failure_mid_epoch_keeps_the_previous_samples_intact(pipe, tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run" / "samples"
    kw = dict(size=SIZE, negative_prompt=NEGATIVE, postprocess_options=PostprocessOptions(method="nearest"), progress=False)
    kohya.sample_epochs(pipe, [SampleJob(1, tiny["lora1"])], PROMPTS[:1], [1, 2], SETTINGS, out, **kw)
    before_json = (out / "samples.json").read_bytes()
    before_files = {p.name: p.read_bytes() for p in (out / "epoch-001").iterdir()}
    real_generate, calls = kohya.draw_image, []

    def failing_generate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second image of the re-run: one image of it is already on disk
            raise KeyboardInterrupt
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(kohya, "draw_image", failing_generate)
    with pytest.raises(KeyboardInterrupt):
        kohya.sample_epochs(pipe, [SampleJob(1, tiny["lora2"])], PROMPTS[:1], [1, 2], SETTINGS, out, **kw)
    assert (out / "samples.json").read_bytes() == before_json
    assert {p.name: p.read_bytes() for p in (out / "epoch-001").iterdir()} == before_files
    assert sorted(p.name for p in out.iterdir()) == ["epoch-001", "samples.json"], "a staging folder was left behind"
    assert kohya._adapted_modules(pipe, kohya.ADAPTER) == 0, "the interrupted epoch's LoRA stayed applied"


def test_prompt_ids_are_zero_padded_in_suite_order() -> None:
    assert sample.prompt_ids(["a", "b"]) == ["p01", "p02"]
    assert sample.prompt_ids(["x"] * 120)[-1] == "p120" and sample.prompt_ids(["x"] * 120)[0] == "p001"


# ------------------------------------------------------------------ bad LoRAs


@pytest.mark.parametrize("damage", ["random-bytes", "truncated", "empty", "not-a-lora", "wrong-suffix"])
def test_damaged_lora_is_a_user_error_naming_the_file_and_writes_nothing(pipe, tiny, tmp_path: Path, damage: str) -> None:
    path = tmp_path / ("bespoke-000003.ckpt" if damage == "wrong-suffix" else "bespoke-000003.safetensors")
    good = tiny["lora1"].read_bytes()
    if damage == "random-bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "not-a-lora":
        save_file({"model.diffusion_model.weight": torch.zeros(2, 2)}, str(path))
    else:
        path.write_bytes(good)
    out = tmp_path / "run" / "samples"
    with pytest.raises(UserError) as err:
        kohya.sample_epochs(pipe, [SampleJob(0, None), SampleJob(3, path)], PROMPTS[:1], [1], SETTINGS, out, size=SIZE,
                             negative_prompt=NEGATIVE, postprocess_options=PostprocessOptions(method="nearest"), progress=False)
    assert str(path) in str(err.value)
    assert not out.exists(), "a refused LoRA must be found before anything is drawn or written"


def test_missing_lora_is_a_user_error_naming_the_file(pipe, tmp_path: Path) -> None:
    missing = tmp_path / "checkpoints" / "bespoke-000009.safetensors"
    with pytest.raises(UserError, match="not found") as err:
        kohya.sample_epochs(pipe, [SampleJob(9, missing)], PROMPTS[:1], [1], SETTINGS, tmp_path / "samples", size=SIZE,
                             negative_prompt=NEGATIVE, postprocess_options=PostprocessOptions(), progress=False)
    assert str(missing) in str(err.value)
    with pytest.raises(UserError, match="not found"):
        file_sha256(missing)


@pytest.mark.parametrize("mismatch", ["extra-module", "sdxl-text-encoder", "wrong-shape"])
def test_lora_for_another_model_is_refused_not_half_applied(pipe, tiny, tmp_path: Path, mismatch: str) -> None:
    tensors = kohya_lora_state_dict(tiny["base"], seed=4)
    if mismatch == "extra-module":  # a layer this base does not have: diffusers would only warn
        for tail in ("lora_down.weight", "lora_up.weight", "alpha"):
            tensors[f"lora_unet_down_blocks_7_attentions_0_proj_in.{tail}"] = tensors[f"lora_unet_down_blocks_0_attentions_0_proj_in.{tail}"].clone()
    elif mismatch == "sdxl-text-encoder":  # SDXL's second text encoder: dropped by an SD1.5 pipeline
        tensors = {k.replace("lora_te_", "lora_te2_"): v for k, v in tensors.items()}
    else:
        key = "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"
        tensors[key] = torch.zeros(4, 48, 1, 1, dtype=torch.float16)
    path = tmp_path / f"{mismatch}.safetensors"
    save_file(tensors, str(path), metadata=kohya_metadata(4, 2.0, 1))
    before = draw(pipe)
    with pytest.raises(UserError) as err:
        kohya.apply_lora(pipe, path)
    assert str(path) in str(err.value)
    assert ("of its" in str(err.value)) if mismatch != "wrong-shape" else ("does not fit" in str(err.value))
    assert kohya._adapted_modules(pipe, kohya.ADAPTER) == 0
    assert np.array_equal(draw(pipe), before), "a refused LoRA left layers behind"


# ------------------------------------------------------------------ base models and devices


def test_resolve_device() -> None:
    if torch.cuda.is_available():
        assert resolve_device(None) == ("cuda", torch.float16)
    elif not torch.backends.mps.is_available():
        assert resolve_device(None) == ("cpu", torch.float32)
    assert resolve_device("CPU") == ("cpu", torch.float32)
    with pytest.raises(UserError, match="'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            resolve_device("cuda:0")


def test_base_errors_name_the_path_and_the_fix(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere" / "model.safetensors"
    with pytest.raises(UserError, match="no such file") as err:
        kohya.load_base(tiny_preset(missing), device="cpu")
    assert str(missing) in str(err.value)

    ckpt = tmp_path / "pixnite.ckpt"
    ckpt.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(UserError, match=r"\.safetensors only"):
        kohya.load_base(tiny_preset(ckpt), device="cpu")

    corrupt = tmp_path / "pixnite.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="could not load this single-file checkpoint") as err:
        kohya.load_base(tiny_preset(corrupt), device="cpu")
    assert str(corrupt) in str(err.value)

    empty_dir = tmp_path / "not-a-model"
    empty_dir.mkdir()
    with pytest.raises(UserError, match="no model_index.json"):
        kohya.load_base(tiny_preset(empty_dir), device="cpu")

    with pytest.raises(UserError, match="family is sdxl"):
        kohya.load_base(tiny_preset(tiny["base"], family="sdxl"), device="cpu")

    with pytest.raises(UserError, match="is empty"):
        kohya.load_base(tiny_preset(""), device="cpu")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as err:
        kohya.load_base(tiny_preset("bespoke-test/no-such-model-cached"), device="cpu")
    assert "'bespoke-test/no-such-model-cached'" in str(err.value) and "HF_HUB_OFFLINE" in str(err.value)
    assert "hf download bespoke-test/no-such-model-cached" in str(err.value) and "--base" in str(err.value)


def test_scheduler_choice_changes_the_image_and_is_checked(pipe) -> None:
    original = pipe.scheduler
    try:
        a = draw(pipe)
        pipe.scheduler = kohya.scheduler_for("ddim", original.config)
        assert type(pipe.scheduler).__name__ == "DDIMScheduler"
        assert not np.array_equal(draw(pipe), a)
        dpm = kohya.scheduler_for("dpmsolver++", original.config)
        assert dpm.config.algorithm_type == "dpmsolver++"
    finally:
        pipe.scheduler = original
    with pytest.raises(UserError, match="'lms'"):
        kohya.scheduler_for("lms", original.config)


def test_bad_suite_is_refused_before_sampling(pipe, tmp_path: Path) -> None:
    kw = dict(negative_prompt="", postprocess_options=PostprocessOptions(), progress=False)
    with pytest.raises(UserError, match="seeds repeat"):
        kohya.sample_epochs(pipe, [SampleJob(0, None)], PROMPTS, [1, 1], SETTINGS, tmp_path, size=SIZE, **kw)
    with pytest.raises(UserError, match="multiples of 2"):
        kohya.sample_epochs(pipe, [SampleJob(0, None)], PROMPTS, [1], SETTINGS, tmp_path, size=(65, 64), **kw)
    with pytest.raises(UserError, match="listed twice"):
        kohya.sample_epochs(pipe, [SampleJob(0, None), SampleJob(0, None)], PROMPTS, [1], SETTINGS, tmp_path, size=SIZE, **kw)
    assert not (tmp_path / "samples.json").exists()


def test_clip_skip_follows_kohya_numbering(tiny) -> None:
    preset = tiny_preset(tiny["base"])
    assert kohya.kohya_clip_skip_to_diffusers(preset) is None
    preset.kohya.clip_skip = 2  # kohya: penultimate layer = diffusers clip_skip 1
    assert kohya.kohya_clip_skip_to_diffusers(preset) == 1
    sdxl = tiny_preset(tiny["base"], family="sdxl")
    sdxl.kohya.clip_skip = 2
    assert kohya.kohya_clip_skip_to_diffusers(sdxl) is None


# ------------------------------------------------------------------ a whole run


def write_run(run: Path, base: Path, dataset: Path, epochs: dict[str, str], palette: float | None) -> None:
    preset = tiny_preset(base, palette_max_delta_e=palette, seeds=[5], postprocess="grid")
    preset.sample.prompts = ["lad, green solid background, black hair"]
    write_record(run, preset, dataset, epochs)
    if dataset.is_dir() and not (run / "data").exists():
        write_training_images(run, preset, dataset)


def test_sample_run_on_a_run_folder_snaps_to_the_real_training_palette(tiny, tmp_path: Path, punks_dir: Path) -> None:
    from bespoke_kohya.postprocess import dataset_palette

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "bespoke-000001.safetensors").write_bytes(tiny["lora1"].read_bytes())
    write_run(run, tiny["base"], punks_dir, {"1": "checkpoints/bespoke-000001.safetensors"}, palette=50.0)
    doc = sample.sample_run(run, device="cpu", include_base=True, progress=False)
    assert list(doc["epochs"]) == ["0", "1"]
    assert doc["prompts"][0]["prompt"].startswith("pixel art, 24x24, portrait of bespoke punk lad, green")
    palette = {tuple(c) for c in dataset_palette(punks_dir)}
    assert doc["settings"]["postprocess_options"]["palette"]["colours"] == len(palette)
    art = np.asarray(Image.open(run / doc["epochs"]["1"]["images"][0]["art"]).convert("RGB")).reshape(-1, 3)
    # With a ΔE 50 snapping radius nearly every colour of the random model's render lands on a training colour.
    on_palette = np.mean([tuple(c) in palette for c in art])
    assert on_palette > 0.9, f"only {on_palette:.2f} of pixels were snapped to the training palette"


def test_sample_run_refuses_unknown_epochs_and_missing_palette_data(tiny, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    write_run(run, tiny["base"], tmp_path / "gone", {"1": "checkpoints/bespoke-000001.safetensors"}, palette=4.0)
    with pytest.raises(UserError, match=r"--epochs: 4 not in .*recorded epochs: 1"):
        sample.sample_run(run, epochs=[4], device="cpu", progress=False)
    with pytest.raises(UserError, match="the run's prepared training images are missing, so there is no palette to snap to") as err:
        sample.sample_run(run, device="cpu", progress=False)
    assert str(run / "data") in str(err.value) and "--dataset FOLDER" in str(err.value)


def test_prompts_file(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("# my suite\npixel art, lad\n\n  pixel art, lady  \n", encoding="utf-8")
    assert sample.read_prompts_file(path) == ["pixel art, lad", "pixel art, lady"]
    path.write_text("# only a comment\n", encoding="utf-8")
    with pytest.raises(UserError, match="no prompts"):
        sample.read_prompts_file(path)
    with pytest.raises(UserError, match="not found"):
        sample.read_prompts_file(tmp_path / "nope.txt")


# ------------------------------------------------------------------ nothing lost (issue 12)


def _two_epoch_run(tiny, tmp_path: Path, punks_dir: Path) -> Path:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "bespoke-000001.safetensors").write_bytes(tiny["lora1"].read_bytes())
    (run / "checkpoints" / "bespoke-000002.safetensors").write_bytes(tiny["lora2"].read_bytes())
    write_run(run, tiny["base"], punks_dir, {"1": "checkpoints/bespoke-000001.safetensors", "2": "checkpoints/bespoke-000002.safetensors"}, palette=None)
    return run


def test_a_second_sampler_is_refused_while_one_samples_the_run(tiny, tmp_path: Path, punks_dir: Path) -> None:
    """Issue 12 item 2: two `sample` processes on one run lost records; the second is now refused in one line."""
    import os
    import subprocess
    import sys

    from bespoke_kohya.runfolder.lock import SAMPLE, holder

    run = _two_epoch_run(tiny, tmp_path, punks_dir)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3]), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "bespoke_kohya", "sample", "--run", str(run), "--epochs", "1", "--device", "cpu", "--no-include-base"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while (who := holder(run, SAMPLE)) is None or who.pid != first.pid:
            assert first.poll() is None, first.stdout.read()
            assert time.monotonic() < deadline, "the first sampler never took the run's lock"
            time.sleep(0.02)
        with pytest.raises(UserError, match=rf"run {run} is being sampled by pid {first.pid} .*wait for it to finish"):
            sample.sample_run(run, epochs=[2], device="cpu", include_base=False, progress=False)
        assert first.wait(timeout=300) == 0, first.stdout.read()
    finally:
        first.kill()
        first.wait()
    sample.sample_run(run, epochs=[2], device="cpu", include_base=False, progress=False)  # afterwards it is free: both epochs are recorded
    doc = json.loads((run / "samples" / "samples.json").read_text(encoding="utf-8"))
    assert list(doc["epochs"]) == ["1", "2"]
    assert all((run / img["art"]).is_file() for e in doc["epochs"].values() for img in e["images"])


def test_adhoc_prompts_are_drawn_beside_the_suite_not_over_it(tiny, tmp_path: Path, punks_dir: Path) -> None:
    """Issue 12 item 3: `sample --prompt "lady" --seeds 9` replaced epoch-001 whole; it now goes to samples/adhoc/
    and samples.json's `adhoc` table, and the report still compares the full suite."""
    from bespoke_kohya.report.collect import collect

    run = _two_epoch_run(tiny, tmp_path, punks_dir)
    suite = sample.sample_run(run, epochs=[1], seeds=[5, 6], device="cpu", include_base=False, progress=False)
    suite_files = {p.name: p.read_bytes() for p in (run / "samples" / "epoch-001").iterdir()}
    assert len(suite_files) == 6

    doc = sample.sample_run(run, epochs=[1], prompts=["lady"], seeds=[9], device="cpu", include_base=False, progress=False)
    assert {p.name: p.read_bytes() for p in (run / "samples" / "epoch-001").iterdir()} == suite_files
    assert doc["epochs"] == suite["epochs"] and (doc["prompts"], doc["seeds"], doc["suite_id"]) == (suite["prompts"], suite["seeds"], suite["suite_id"])
    lady = sample.adhoc_ids(["lady"])[0]
    assert [(i["prompt"], i["seed"], i["art"]) for i in doc["adhoc"]["1"]["images"]] == [("lady", 9, f"samples/adhoc/epoch-001/{lady}-s9.24.png")]
    # A second ad-hoc prompt is added to the first, not swapped for it.
    doc = sample.sample_run(run, epochs=[1], prompts=["lad, cap"], seeds=[9], device="cpu", include_base=False, progress=False)
    assert [i["prompt"] for i in doc["adhoc"]["1"]["images"]] == ["lady", "lad, cap"]
    assert all((run / i[k]).is_file() for i in doc["adhoc"]["1"]["images"] for k in ("full", "art", "preview"))
    assert len(list((run / "samples" / "adhoc" / "epoch-001").iterdir())) == 6

    data = collect(run)
    assert [(e.epoch, sorted(e.cells)) for e in data.sampled] == [(1, [("p01", 5), ("p01", 6)])]
    assert data.seeds == [5, 6] and [pid for pid, _ in data.prompts] == ["p01"]


def test_staging_folders_of_a_killed_sampler_are_removed_by_the_next_one(tiny, tmp_path: Path, punks_dir: Path) -> None:
    """Issue 12 (minor): a killed `sample` left hidden .epoch-NNN.* folders; the next sampling (under the lock) removes them."""
    run = _two_epoch_run(tiny, tmp_path, punks_dir)
    for leftover in (run / "samples" / ".epoch-001.k1ll3d", run / "samples" / ".epoch-002.old-4242", run / "samples" / "adhoc" / ".epoch-001.x"):
        leftover.mkdir(parents=True)
        (leftover / "p01-s5.png").write_bytes(b"half")
    sample.sample_run(run, epochs=[2], device="cpu", include_base=False, progress=False)
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["adhoc", "epoch-002", "samples.json"]
    assert list((run / "samples" / "adhoc").iterdir()) == []


def test_checkpoints_recorded_outside_the_run_are_refused(tmp_path: Path, punks_dir: Path) -> None:
    """Issue 12: run.json's epochs may name any file; `sample` reads checkpoints from inside the run only."""
    from bespoke_kohya.runfolder.records import RunHandle

    run = tmp_path / "run"
    outside = tmp_path / "elsewhere.safetensors"
    write_run(run, tmp_path / "base", punks_dir, {"1": "checkpoints/bespoke-000001.safetensors", "2": str(outside), "3": "../elsewhere.safetensors"}, palette=None)
    assert [j.epoch for j in sample.select_jobs(RunHandle.open(run), [1], False)] == [1]
    for epoch, shown in ((2, str(outside)), (3, "../elsewhere.safetensors")):
        with pytest.raises(UserError, match=rf"run.json: epochs.{epoch}: {shown} is outside the run folder"):
            sample.select_jobs(RunHandle.open(run), [epoch], False)


# ------------------------------------------------------------------ held-out captions (issue 14)

# A pixel24 run trains and draws in seconds; the sample stage is the same for every engine.
P24_TINY = ["pixel24.base=none", "pixel24.steps=2", "pixel24.epochs=2", "pixel24.block_out_channels=[16,32]", "pixel24.batch_size=4",
            "pixel24.text_dim=16", "pixel24.colour_dim=8", "pixel24.feature_dim=16", "pixel24.sample_steps=2", "sample.seeds=[3,4,5]"]
SUITE_PROMPTS = 4  # the pixel24 preset's fixed suite


@pytest.fixture(scope="module")
def twenty(punks_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 real punks with their captions: the default split (0.1) holds out 2."""
    return copy_punks(punks_dir, tmp_path_factory.mktemp("twenty") / "punks", every=9, count=20)


def train_pixel24(dataset: Path, run: Path, *overrides: str) -> Path:
    """A real run: `bespoke-kohya train --preset pixel24` in this process (render, held-out split, training), not sampled."""
    from bespoke_kohya.cli import main

    args = ["train", "--preset", "pixel24", "--dataset", str(dataset), "--run-dir", str(run), "--no-sample", *(f"--set={s}" for s in [*P24_TINY, *overrides])]
    assert main(args) == 0
    return run


@pytest.fixture(scope="module")
def heldout_run(twenty: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_pixel24(twenty, tmp_path_factory.mktemp("p24") / "run")


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def prepared_caption(run: Path, file: str) -> str:
    """The caption training saw: data/<repeats>_<concept>/<stem>.txt, as render wrote it."""
    (folder,) = (run / "data").iterdir()
    return (folder / Path(file).with_suffix(".txt").name).read_text(encoding="utf-8").strip()


def set_heldout(run: Path, heldout: list[str] | None) -> None:
    from bespoke_kohya.runfolder.records import read_run, write_run

    record = read_run(run)
    record.dataset.heldout = heldout
    write_run(run, record)


def test_heldout_captions_are_drawn_beside_the_suite_with_the_first_seeds(heldout_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bespoke_kohya.engines.pixel24 import api as pixel24
    from bespoke_kohya.runfolder.records import RunHandle

    run = copy_run(heldout_run, tmp_path / "run")
    handle = RunHandle.open(run)
    held = handle.record.dataset.heldout
    assert held is not None and len(held) == 2
    doc = sample.sample_run(run, epochs=[2], progress=True)
    # 4 prompts × 3 seeds, and 2 held-out captions × the first 2 seeds (sample.heldout_seeds), all counted by the progress line.
    assert "sampling 16/16" in capsys.readouterr().err
    images = doc["epochs"]["2"]["images"]
    suite = [(i["prompt_id"], i["seed"]) for i in images if i["heldout"] is None]
    assert suite == [(pid, s) for pid in sample.prompt_ids(["x"] * SUITE_PROMPTS) for s in (3, 4, 5)]
    drawn = [i for i in images if i["heldout"] is not None]
    assert [(i["prompt_id"], i["heldout"], i["prompt"], i["seed"]) for i in drawn] == [
        (f"heldout-{Path(f).stem}", f, prepared_caption(run, f), s) for f in held for s in (3, 4)]
    # The suite's own list stays the fixed prompts; held-out draws are marked on each image.
    assert [p["id"] for p in doc["prompts"]] == sample.prompt_ids(["x"] * SUITE_PROMPTS)
    # Each is the model's own draw for the caption as trained and that seed, in the epoch's folder.
    p = handle.record.preset_model(run).pixel24
    model = pixel24.load_checkpoint(run / handle.record.epochs["2"], device="cpu")
    for img in drawn:
        assert img["art"] == f"samples/epoch-002/{img['prompt_id']}-s{img['seed']}.24.png"
        assert all((run / img[k]).is_file() for k in ("full", "art", "preview"))
        expected = pixel24.sample(model, [img["prompt"]], [img["seed"]], **p.sampler_options())[0][0]
        assert np.array_equal(np.asarray(Image.open(run / img["full"]).convert("RGB")), expected)
    assert doc["epochs"]["2"]["suite_id"] == doc["suite_id"]
    # Sampling another epoch later draws the same suite: the same id, so the report compares them.
    doc = sample.sample_run(run, epochs=[1], progress=False)
    assert doc["epochs"]["1"]["suite_id"] == doc["epochs"]["2"]["suite_id"] == doc["suite_id"]
    assert [i["prompt_id"] for i in doc["epochs"]["1"]["images"]] == [i["prompt_id"] for i in images]


def test_no_heldout_draws_without_a_split_without_seeds_or_in_an_old_run(heldout_run: Path, twenty: Path, tmp_path: Path) -> None:
    """split 0, heldout_seeds 0, and a run made before held-out validation (dataset.heldout absent) draw the suite as before, with one suite id."""
    off = train_pixel24(twenty, tmp_path / "off", "dataset.validation_split=0")
    no_seeds = train_pixel24(twenty, tmp_path / "no-seeds", "sample.heldout_seeds=0")
    old = copy_run(heldout_run, tmp_path / "old")
    set_heldout(old, None)
    ids = set()
    for run in (off, no_seeds, old):
        doc = sample.sample_run(run, epochs=[1], progress=False)
        images = doc["epochs"]["1"]["images"]
        assert len(images) == SUITE_PROMPTS * 3 and not any(i["heldout"] for i in images)
        assert "heldout_seeds" not in doc["settings"] and not [w for w in doc["warnings"] if "held-out" in w]
        assert sorted(p.name for p in (run / "samples" / "epoch-001").iterdir() if p.name.startswith("heldout-")) == []
        ids.add(doc["suite_id"])
    assert len(ids) == 1  # nothing held-out drawn: the split and heldout_seeds leave the suite's identity alone
    assert read_json(off / "run.json")["dataset"]["heldout"] == [] and len(read_json(no_seeds / "run.json")["dataset"]["heldout"]) == 2


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_an_epoch_drawn_before_heldout_draws_is_kept_and_told_apart(heldout_run: Path, tmp_path: Path) -> None:
    """samples.json from before this feature (epoch 1 without held-out draws) is read and merged; the new epoch carries
    the held-out draws and a new suite id, so the report asks for epoch 1 to be drawn again rather than comparing unfairly."""
    run = copy_run(heldout_run, tmp_path / "run")
    held = read_json(run / "run.json")["dataset"]["heldout"]
    set_heldout(run, None)
    before = sample.sample_run(run, epochs=[1], progress=False)
    set_heldout(run, held)
    after = sample.sample_run(run, epochs=[2], progress=False)
    assert after["epochs"]["1"] == before["epochs"]["1"]
    assert [i["heldout"] for i in after["epochs"]["2"]["images"] if i["heldout"]] == [held[0], held[0], held[1], held[1]]
    assert after["epochs"]["2"]["suite_id"] == after["suite_id"] != after["epochs"]["1"]["suite_id"]


def test_adhoc_prompts_draw_no_heldout_captions(heldout_run: Path, tmp_path: Path) -> None:
    run = copy_run(heldout_run, tmp_path / "run")
    doc = sample.sample_run(run, epochs=[1], prompts=["lady"], seeds=[9], progress=False)
    assert doc["epochs"] == {} and [(i["prompt"], i["seed"], i["heldout"]) for i in doc["adhoc"]["1"]["images"]] == [("lady", 9, None)]


def test_a_heldout_caption_missing_from_data_is_skipped_with_a_warning(heldout_run: Path, tmp_path: Path) -> None:
    run = copy_run(heldout_run, tmp_path / "run")
    held = read_json(run / "run.json")["dataset"]["heldout"]
    (folder,) = (run / "data").iterdir()
    (folder / Path(held[0]).with_suffix(".txt").name).unlink()
    doc = sample.sample_run(run, epochs=[1], progress=False)
    assert [i["heldout"] for i in doc["epochs"]["1"]["images"] if i["heldout"]] == [held[1], held[1]]
    assert doc["warnings"][0] == f"1 held-out image(s) have no caption in {next((run / 'data').iterdir())}, so their captions are not drawn: {held[0]}"


def test_heldout_ids_are_safe_file_names_that_never_collide() -> None:
    assert sample.heldout_id("lad_001.png") == "heldout-lad_001"
    odd = ["lad 001 (copy).png", "lad-001--copy-.png", "../x.png", "ünïcode.png", "a.b.png", "a_b.png", ".png"]
    ids = [sample.heldout_id(f) for f in odd]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"heldout-[A-Za-z0-9_~-]+", i) for i in ids), ids
    assert sample.heldout_id("a.b.png").startswith("heldout-a-b~") and sample.heldout_id("a_b.png") == "heldout-a_b"
    assert not any(i in sample.prompt_ids(["x"] * 200) for i in ids)


def test_heldout_captions_are_drawn_by_the_diffusers_sampler_as_trained(tiny, pipe, tmp_path: Path, punks_dir: Path) -> None:
    """The kohya route: each held-out caption, verbatim from data/, is the prompt; the image is the LoRA's draw of it."""
    from bespoke_kohya.dataset import check_dataset, prepare
    from bespoke_kohya.images import load_rgb

    source = copy_punks(punks_dir, tmp_path / "punks", every=1, count=6)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "bespoke-000001.safetensors").write_bytes(tiny["lora1"].read_bytes())
    preset = tiny_preset(tiny["base"], seeds=[5, 6], heldout_seeds=1)
    d = preset.dataset
    prepared = prepare(check_dataset(source), run / "data", resolution=64, num_repeats=d.num_repeats, concept=d.concept,
                       default_caption=d.default_caption, background=d.alpha_background)
    held = sorted(p.name for p in prepared.folder.glob("*.png"))[1:3]
    write_record(run, preset, source, {"1": "checkpoints/bespoke-000001.safetensors"}, heldout=held)
    doc = sample.sample_run(run, epochs=[1], device="cpu", progress=False)
    drawn = [i for i in doc["epochs"]["1"]["images"] if i["heldout"]]
    captions = [(prepared.folder / Path(f).with_suffix(".txt").name).read_text(encoding="utf-8").strip() for f in held]
    assert [(i["heldout"], i["prompt"], i["seed"]) for i in drawn] == [(held[0], captions[0], 5), (held[1], captions[1], 5)]
    assert len(doc["epochs"]["1"]["images"]) == len(preset.sample.prompts) * 2 + 2
    with kohya.lora_applied(pipe, run / "checkpoints" / "bespoke-000001.safetensors"):
        for img, caption in zip(drawn, captions):
            expected = np.asarray(kohya.draw_image(pipe, caption, 5, preset.sample, SIZE, preset.sample.negative_prompt))
            assert np.array_equal(load_rgb(run / img["full"]), expected)


# ------------------------------------------------------------------ epoch 0: the base without a LoRA (issue 14)


def test_kohya_runs_draw_the_base_as_epoch_0_by_default_and_only_once(tiny, tmp_path: Path, punks_dir: Path) -> None:
    run = _two_epoch_run(tiny, tmp_path, punks_dir)
    doc = sample.sample_run(run, epochs=[1], device="cpu", progress=False)
    assert list(doc["epochs"]) == ["0", "1"] and doc["epochs"]["0"]["base_only"] and doc["epochs"]["0"]["checkpoint"] is None
    base = run / "samples" / "epoch-000"
    drawn = base.stat().st_ino  # each drawing swaps in a new folder
    doc = sample.sample_run(run, epochs=[2], device="cpu", progress=False)
    assert list(doc["epochs"]) == ["0", "1", "2"] and base.stat().st_ino == drawn  # kept, not drawn again
    # Another suite draws it again with that suite, so epoch 0 stays comparable with the epochs beside it.
    doc = sample.sample_run(run, epochs=[2], seeds=[7], device="cpu", progress=False)
    assert base.stat().st_ino != drawn and [i["seed"] for i in doc["epochs"]["0"]["images"]] == [7]
    assert doc["epochs"]["0"]["suite_id"] == doc["epochs"]["2"]["suite_id"] == doc["suite_id"]
    # Asked for explicitly, it is drawn even when it is there; --no-include-base leaves it alone.
    drawn = base.stat().st_ino
    sample.sample_run(run, epochs=[2], seeds=[7], device="cpu", include_base=True, progress=False)
    assert base.stat().st_ino != drawn
    drawn = base.stat().st_ino
    sample.sample_run(run, epochs=[2], seeds=[7], device="cpu", include_base=False, progress=False)
    assert base.stat().st_ino == drawn


def test_which_engines_draw_the_base_by_default(tmp_path: Path, punks_dir: Path) -> None:
    from bespoke_kohya.cli import build_parser
    from bespoke_kohya.engines import get_engine
    from bespoke_kohya.runfolder.records import RunHandle

    assert get_engine("kohya").samples_base is True and get_engine("pixel24").samples_base is False
    run = tmp_path / "run"
    write_run(run, tmp_path / "base", punks_dir, {"1": "checkpoints/bespoke-000001.safetensors"}, palette=None)
    handle = RunHandle.open(run)
    assert [(j.epoch, j.if_missing) for j in sample.select_jobs(handle, None, None, True)] == [(0, True), (1, False)]
    assert [j.epoch for j in sample.select_jobs(handle, None, None, False)] == [1]  # pixel24's default: no base
    assert [(j.epoch, j.if_missing) for j in sample.select_jobs(handle, None, True, False)] == [(0, False), (1, False)]
    assert [j.epoch for j in sample.select_jobs(handle, None, False, True)] == [1]
    parse = lambda *flags: build_parser().parse_args(["sample", "--run", str(run), *flags]).include_base  # noqa: E731
    assert (parse(), parse("--include-base"), parse("--no-include-base")) == (None, True, False)
    # A run with no checkpoint yet: the default base alone is nothing to compare, so it is refused as before.
    write_run(run, tmp_path / "base", punks_dir, {}, palette=None)
    with pytest.raises(UserError, match="records no epoch checkpoints yet"):
        sample.select_jobs(RunHandle.open(run), None, None, True)


def test_report_and_train_sampling_add_a_missing_base(tiny, tmp_path: Path, punks_dir: Path) -> None:
    """`sample_unsampled` (after `train`, before `report`) draws epoch 0 of a kohya run sampled without it, then nothing."""
    import io

    from rich.console import Console

    from bespoke_kohya.engines.session import sample_unsampled

    run = _two_epoch_run(tiny, tmp_path, punks_dir)
    sample.sample_run(run, device="cpu", include_base=False, progress=False)
    out = Console(file=io.StringIO(), width=200)
    assert sample_unsampled(run, out, out, "no samples yet", device="cpu") == [0]
    assert "epoch(s) 0 (base model) (no samples yet)" in out.file.getvalue()
    doc = json.loads((run / "samples" / "samples.json").read_text(encoding="utf-8"))
    assert list(doc["epochs"]) == ["0", "1", "2"] and doc["epochs"]["0"]["base_only"]
    assert sample_unsampled(run, out, out, "no samples yet", device="cpu") == []


def test_generate_makes_a_kohya_collection_through_the_diffusers_sampler(tiny, tmp_path: Path, punks_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`generate` on a kohya run: each token drawn by the LoRA on the base through diffusers, then post-processed as `sample` does."""
    from bespoke_kohya.generate import collection, select
    from bespoke_kohya.generate.collection import GenerateOptions, generate
    from bespoke_kohya.postprocess import postprocess

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "bespoke-000001.safetensors").write_bytes(tiny["lora1"].read_bytes())
    small = copy_punks(punks_dir, tmp_path / "punks", every=15, count=12)
    write_run(run, tiny["base"], small, {"1": "checkpoints/bespoke-000001.safetensors"}, palette=None)
    # A random-weight model draws noise, which every style rule rightly rejects: keep each candidate to test the drawing itself.
    monkeypatch.setattr(select.Judge, "_reasons", lambda self, *args: [])
    monkeypatch.setattr(collection, "PILOT", 8)  # the critic is not what this test is about
    out = tmp_path / "collection"
    result = generate(GenerateOptions(run=run, out=out, count=2, epoch=1, candidates=2, progress=False, device="cpu"))
    assert result.tokens == 2 and (out / "index.html").is_file()
    meta = json.loads((out / "metadata" / "1.json").read_text(encoding="utf-8"))
    preset = tiny_preset(tiny["base"], seeds=[5], postprocess="grid", palette_max_delta_e=None)
    p = kohya.load_base(preset, device="cpu")
    p.scheduler = kohya.scheduler_for("euler_a", p.scheduler.config)
    with kohya.lora_applied(p, run / "checkpoints" / "bespoke-000001.safetensors"):
        full = kohya.draw_image(p, meta["generator"]["prompt"], meta["generator"]["seed"], preset.sample, SIZE, preset.sample.negative_prompt)
    from bespoke_kohya.sample import postprocess_options_for
    from bespoke_kohya.runfolder.records import RunHandle

    expected = np.asarray(postprocess(full, postprocess_options_for(preset.sample, RunHandle.open(run), None))[0].convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(out / "images" / "1.png").convert("RGB")), expected)
