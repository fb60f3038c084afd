"""The samplers of the kohya methods other than LoRA, on tiny random-weight SD1.5 models and files laid out as
sd-scripts v0.10.1 writes them: a whole-model checkpoint (from_single_file), an embedding (load_textual_inversion)
and a ControlNet (StableDiffusionControlNetPipeline on exact pixel edges).

What is proved: each epoch's file changes what is drawn, and the base draws exactly as before once it is gone;
files of the wrong kind are refused naming the file; a ControlNet run draws each held-out caption from its own
image's edges, the suite from the held-out originals or from `--control DIR`, and records which image each prompt
followed; a run folder is sampled end to end through `sample_run`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bespoke_kohya import sample
from bespoke_kohya.engines.kohya import method_samplers as methods
from bespoke_kohya.engines.protocol import SampleJob
from bespoke_kohya.errors import UserError
from bespoke_kohya.presets import validate_preset
from bespoke_kohya.settings import SampleSettings

from tests.helpers.punks import copy_punks
from tests.helpers.runs import write_record, write_training_images
from tests.helpers.tiny_sd import build_tiny_sd15, write_controlnet, write_embedding, write_full_checkpoint, write_kohya_lora

SIZE = (64, 64)
PROMPT = "pixel art, 24x24, portrait of bespoke punk lad, green solid background, black hair"
SETTINGS = SampleSettings(steps=2, guidance_scale=7.5, scheduler="euler_a", seeds=[1], postprocess="nearest", palette_max_delta_e=None)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def method_preset(base: Path, method: str, **kohya_over: object):
    return validate_preset({
        "name": f"tiny_{method}", "description": "tiny", "engine": "kohya", "family": "sd15",
        "kohya": {"method": method, "pretrained_model_name_or_path": str(base), "resolution": 64, **kohya_over},
        "sample": {"steps": 2, "scheduler": "euler_a", "width": 64, "height": 64, "seeds": [1], "postprocess": "nearest", "palette_max_delta_e": None,
                   "prompts": ["lad, green solid background, black hair"], "heldout_seeds": 1},
    }, "test preset")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_methods")
    base = build_tiny_sd15(root / "base")
    cn_base = build_tiny_sd15(root / "cn_base", vae_levels=4)  # a ControlNet reduces its image 8×, as SD1.5's VAE does
    return {
        "root": root, "base": base, "cn_base": cn_base,
        "full": write_full_checkpoint(base, root / "full" / "bespoke-000001.safetensors", seed=1),
        "same": write_full_checkpoint(base, root / "full" / "bespoke-000002.safetensors", strength=0.0),
        "embedding": write_embedding(root / "ti" / "bespoke-000001.safetensors", vectors=2, seed=1),
        "controlnet": write_controlnet(cn_base, root / "cn" / "bespoke-000001.safetensors", seed=1),
        "lora": write_kohya_lora(cn_base, root / "lora" / "bespoke-000002.safetensors", seed=3),
    }


def drawn(sampler, job: SampleJob, prompts: list[str] = [PROMPT], **kwargs) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    sampler.extra = sampler.draw(job, prompts, [1], lambda im, pid, _p, seed: out.__setitem__(f"{pid}-s{seed}", np.asarray(im, np.int16)), **kwargs)
    return out


def loaded(sampler, jobs: list[SampleJob]):
    sampler.check([PROMPT], [1], jobs)
    return sampler


def options(**over):
    from bespoke_kohya.engines.protocol import SampleOptions

    return SampleOptions(device="cpu", progress=False, **over)


# ------------------------------------------------------------------ full fine-tune


def test_a_full_checkpoint_is_loaded_with_the_base_configs_and_the_base_is_untouched(tiny):
    preset = method_preset(tiny["base"], "full")
    sampler = methods.sampler_for_run(None, preset, options())
    assert isinstance(sampler, methods.FullSampler) and sampler.config_source == str(tiny["base"])
    jobs = [SampleJob(0, None), SampleJob(1, tiny["full"]), SampleJob(2, tiny["same"])]
    loaded(sampler, jobs)
    before = drawn(sampler, jobs[0])["p01-s1"]
    tuned = drawn(sampler, jobs[1])
    assert sampler.extra == {"checkpoint_metadata": {"modelspec.architecture": "stable-diffusion-v1", "modelspec.title": "tiny full fine-tune"}}
    assert np.abs(tuned["p01-s1"] - before).mean() > 1
    # Unchanged weights saved in fp16 draw (nearly) as the base: the file's every component landed where it belongs.
    assert np.abs(drawn(sampler, jobs[2])["p01-s1"] - before).mean() < 1.5
    assert (drawn(sampler, jobs[0])["p01-s1"] == before).all()


def test_files_that_are_no_full_checkpoint_are_refused_naming_them(tiny, tmp_path: Path):
    sampler = methods.FullSampler(SETTINGS, SIZE, "", None, pipe=object(), config_source=None)
    with pytest.raises(UserError, match=r"bespoke-000001.safetensors: not a whole-model SD checkpoint \(no 'model.diffusion_model.' keys"):
        sampler.check_checkpoint(tiny["embedding"])
    with pytest.raises(UserError, match="checkpoint file not found"):
        sampler.check_checkpoint(tmp_path / "gone.safetensors")
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"not read")
    with pytest.raises(UserError, match=r"loaded from .safetensors only \(got .ckpt\)"):
        sampler.check_checkpoint(pickle)


def test_a_full_sampler_config_comes_from_the_base():
    assert methods.full_config_source("stable-diffusion-v1-5/stable-diffusion-v1-5") == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert methods.full_config_source(__file__) is None  # a single-file base: diffusers infers the configs


# ------------------------------------------------------------------ textual inversion


def test_an_embedding_changes_what_the_token_draws_and_unloading_restores_the_base_exactly(tiny):
    preset = method_preset(tiny["base"], "textual_inversion")
    sampler = loaded(methods.sampler_for_run(None, preset, options()), [SampleJob(1, tiny["embedding"])])
    tokens = len(sampler.pipe.tokenizer)
    base = drawn(sampler, SampleJob(0, None))["p01-s1"]
    with_embedding = drawn(sampler, SampleJob(1, tiny["embedding"]))["p01-s1"]
    assert sampler.extra == {"embedding": {"token": "bespoke punk", "vectors": 2}}
    assert np.abs(with_embedding - base).mean() > 0.5
    assert len(sampler.pipe.tokenizer) == tokens and (drawn(sampler, SampleJob(0, None))["p01-s1"] == base).all()
    without_token = drawn(sampler, SampleJob(1, tiny["embedding"]), ["pixel art, 24x24, portrait of a lad"])["p01-s1"]
    assert (without_token == drawn(sampler, SampleJob(0, None), ["pixel art, 24x24, portrait of a lad"])["p01-s1"]).all()  # only the token moved


def test_an_embedding_of_another_width_or_kind_is_refused(tiny, tmp_path: Path):
    preset = method_preset(tiny["base"], "textual_inversion")
    sampler = loaded(methods.sampler_for_run(None, preset, options()), [])
    wide = write_embedding(tmp_path / "wide.safetensors", width=768)
    with pytest.raises(UserError, match=r"its vectors are 768 wide but this base's text encoder embeds 32; it was trained on another base"):
        drawn(sampler, SampleJob(1, wide))
    with pytest.raises(UserError, match=r"not a textual-inversion embedding from train_textual_inversion.py \(expected the one tensor 'emb_params'"):
        sampler.check_checkpoint(tiny["full"])
    assert (drawn(sampler, SampleJob(0, None))["p01-s1"] == drawn(sampler, SampleJob(0, None))["p01-s1"]).all()


# ------------------------------------------------------------------ ControlNet


def test_sd_scripts_controlnet_names_convert_back_exactly():
    from diffusers import ControlNetModel, UNet2DConditionModel
    from accelerate import init_empty_weights

    from bespoke_kohya.engines.kohya.offline_sd import sd15_configs
    from tests.helpers.tiny_sd import controlnet_to_sd

    with init_empty_weights():  # the real SD1.5 ControlNet's names, no weights
        names = list(ControlNetModel.from_unet(UNet2DConditionModel(**sd15_configs()["unet"])).state_dict())
    saved = controlnet_to_sd({n: n for n in names})
    assert len(saved) == len(names) and any(k.startswith("input_hint_block.") for k in saved) and any(k.startswith("zero_convs.11.") for k in saved)
    assert not any("down_blocks" in k or "controlnet_" in k for k in saved)  # every name renamed, as sd-scripts' files have them
    assert methods.controlnet_from_sd(saved) == {n: n for n in names}


@pytest.fixture(scope="module")
def cn_run(tiny, punks_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ControlNet run folder on the tiny base: 8 real punks, 2 held out, one epoch's ControlNet."""
    root = tmp_path_factory.mktemp("cn_run")
    dataset = copy_punks(punks_dir, root / "punks", every=20, count=8)
    run = root / "run"
    preset = method_preset(tiny["cn_base"], "controlnet")
    ckpt = run / "checkpoints" / "bespoke-000001.safetensors"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(tiny["controlnet"].read_bytes())
    write_training_images(run, preset, dataset)
    names = sorted(p.name for p in (run / "data" / "10_bespoke_punk").glob("*.png"))
    write_record(run, preset, dataset, {"1": "checkpoints/bespoke-000001.safetensors"}, heldout=names[:2])
    return run


def run_handle(run: Path):
    from bespoke_kohya.runfolder.records import RunHandle

    return RunHandle.open(run)


def test_a_controlnet_follows_the_edges_and_draws_held_out_captions_from_their_own_image(tiny, cn_run: Path):
    from bespoke_kohya.engines.kohya.edges import edge_map
    from bespoke_kohya.runfolder.data import art_of

    handle = run_handle(cn_run)
    sampler = methods.sampler_for_run(handle, handle.record.preset_model(cn_run), options())
    assert sampler.takes_images and [name for name, _ in sampler.controls] == handle.record.dataset.heldout
    job = SampleJob(1, cn_run / "checkpoints" / "bespoke-000001.safetensors")
    loaded(sampler, [job])
    base = drawn(sampler, SampleJob(0, None), [PROMPT, PROMPT])
    steered = drawn(sampler, job, [PROMPT, PROMPT, PROMPT])
    first, second = handle.record.dataset.heldout
    assert sampler.extra == {"control_images": {"p01": first, "p02": second, "p03": first}}  # the suite takes the held-out originals in turn
    assert np.abs(steered["p01-s1"] - base["p01-s1"]).mean() > 1
    assert not (steered["p01-s1"] == steered["p02-s1"]).all() and (steered["p01-s1"] == steered["p03-s1"]).all()  # the picture decides
    own = drawn(sampler, job, [PROMPT, PROMPT], images=[second, first])
    assert sampler.extra == {}  # held-out draws name their image in samples.json already
    assert (own["p01-s1"] == steered["p02-s1"]).all()
    # What was drawn from is exactly the edge map of the prepared image's art.
    art = art_of(cn_run / "data" / "10_bespoke_punk" / first)
    cond = methods.control_tensor(edge_map(art, SIZE, 2), "cpu", torch.float32)
    assert cond.shape == (1, 3, 64, 64) and set(torch.unique(cond).tolist()) == {-1.0, 1.0}


def test_conditioning_scale_zero_draws_as_the_base(tiny, cn_run: Path):
    handle = run_handle(cn_run)
    preset = method_preset(tiny["cn_base"], "controlnet", controlnet={"conditioning_scale": 0.0})
    sampler = loaded(methods.sampler_for_run(handle, preset, options()), [])
    job = SampleJob(1, cn_run / "checkpoints" / "bespoke-000001.safetensors")
    assert (drawn(sampler, job)["p01-s1"] == drawn(sampler, SampleJob(0, None))["p01-s1"]).all()


def test_control_dir_takes_its_24x24_pngs_and_skips_the_rest(tiny, cn_run: Path, tmp_path: Path, punks_dir: Path):
    folder = tmp_path / "epoch-003"
    folder.mkdir()
    for i, png in enumerate(sorted(punks_dir.glob("*.png"))[40:42]):
        Image.open(png).save(folder / f"p0{i + 1}-s1.24.png")
        Image.open(png).resize((192, 192), Image.NEAREST).save(folder / f"p0{i + 1}-s1.x8.png")
    handle = run_handle(cn_run)
    sampler = methods.sampler_for_run(handle, handle.record.preset_model(cn_run), options(control=folder))
    assert [name for name, _ in sampler.controls] == ["p01-s1.24.png", "p02-s1.24.png"]
    assert sampler.warnings == [f"--control {folder}: 2 PNG(s) that are not 24x24 were skipped (p01-s1.x8.png, p02-s1.x8.png)"]
    loaded(sampler, [])
    assert sampler.settings([PROMPT], [1], {})["control"] == {"source": str(folder), "images": ["p01-s1.24.png", "p02-s1.24.png"], "edge_width": 2,
                                                             "conditioning_scale": 1.0, "lora": None}
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no 24x24 PNG in it"):
        methods.sampler_for_run(handle, handle.record.preset_model(cn_run), options(control=empty))
    with pytest.raises(UserError, match="no such folder"):
        methods.sampler_for_run(handle, handle.record.preset_model(cn_run), options(control=tmp_path / "gone"))


def test_a_controlnet_run_without_held_out_images_needs_control_images(tiny, cn_run: Path):
    handle = run_handle(cn_run)
    handle.record.dataset.heldout = []
    sampler = methods.sampler_for_run(handle, handle.record.preset_model(cn_run), options())
    with pytest.raises(UserError, match="give 24x24 images to follow with --control DIR"):
        sampler.check([PROMPT], [1], [SampleJob(1, cn_run / "checkpoints" / "bespoke-000001.safetensors")])


def test_a_controlnet_file_is_checked_and_a_foreign_one_refused(tiny, cn_run: Path):
    handle = run_handle(cn_run)
    sampler = methods.sampler_for_run(handle, handle.record.preset_model(cn_run), options())
    with pytest.raises(UserError, match="not a ControlNet from train_control_net.py"):
        sampler.check_checkpoint(tiny["embedding"])
    other = write_controlnet(tiny["cn_base"], tiny["root"] / "cn2" / "x.safetensors")
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(other))
    tensors.pop(next(k for k in tensors if k.startswith("zero_convs.")))
    save_file(tensors, str(other))
    with pytest.raises(UserError, match="does not fit a ControlNet of this base's U-Net"):
        methods.load_controlnet(other, loaded(sampler, []).pipe.unet)


def test_a_controlnet_run_samples_on_the_lora_it_names_end_to_end(tiny, cn_run: Path, tmp_path: Path):
    """`sample_run` on a ControlNet run whose preset names another run's LoRA: the copy in config/ is applied under
    every epoch, epoch 0 included; held-out captions are drawn from their own images; samples.json says which."""
    import shutil

    from bespoke_kohya.runfolder import CONFIG
    from bespoke_kohya.runfolder.records import read_run, write_run

    run = tmp_path / "run"
    shutil.copytree(cn_run, run)
    record = read_run(run)
    record.resolved["kohya"]["controlnet"]["lora"] = str(tiny["lora"])
    write_run(run, record)
    with pytest.raises(UserError, match="sample_lora.safetensors: the LoRA this ControlNet run samples with"):
        sample.sample_run(run, device="cpu", include_base=True, progress=False)
    (run / CONFIG).mkdir(exist_ok=True)
    shutil.copyfile(tiny["lora"], run / CONFIG / "sample_lora.safetensors")
    doc = sample.sample_run(run, device="cpu", include_base=True, progress=False)
    epoch = doc["epochs"]["1"]
    heldout = record.dataset.heldout
    assert epoch["control_images"] == {"p01": heldout[0]}  # the suite call; the held-out call's ids are its own
    assert {img["heldout"] for img in epoch["images"] if img.get("heldout")} == set(heldout)
    assert doc["settings"]["control"]["lora"]["file"] == "config/sample_lora.safetensors" and len(doc["settings"]["control"]["lora"]["sha256"]) == 64
    plain = sample.sample_run(cn_run, device="cpu", include_base=True, progress=False)
    base_with_lora = np.asarray(Image.open(run / doc["epochs"]["0"]["images"][0]["full"]), np.int16)
    base_alone = np.asarray(Image.open(cn_run / plain["epochs"]["0"]["images"][0]["full"]), np.int16)
    assert np.abs(base_with_lora - base_alone).mean() > 0.5  # epoch 0 is the base with the LoRA, not without


def test_control_is_refused_for_a_run_that_draws_from_prompts_alone(tiny, tmp_path: Path, punks_dir: Path):
    run = tmp_path / "run"
    preset = method_preset(tiny["base"], "textual_inversion")
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "bespoke-000001.safetensors").write_bytes(tiny["embedding"].read_bytes())
    write_record(run, preset, punks_dir, {"1": "checkpoints/bespoke-000001.safetensors"})
    with pytest.raises(UserError, match=r"--control .*: run run \(tiny_textual_inversion\) draws from prompts alone"):
        sample.sample_run(run, device="cpu", progress=False, control=tmp_path)


def test_a_collection_s_candidates_each_follow_a_control_picked_by_the_pair(tiny, cn_run: Path):
    """`generate` draws (prompt, seed) pairs: each follows one control image, picked by the pair alone, so the
    same candidate follows the same picture in any batch or process; its pixels are those `draw` gives from that picture."""
    handle = run_handle(cn_run)
    sampler = methods.sampler_for_run(handle, handle.record.preset_model(cn_run), options())
    job = SampleJob(1, cn_run / "checkpoints" / "bespoke-000001.safetensors")
    loaded(sampler, [job])
    pairs = [(PROMPT, seed) for seed in range(1, 9)]
    got: dict[tuple[str, int], np.ndarray] = {}
    sampler.draw_pairs(job, pairs, lambda im, _pid, p, seed: got.__setitem__((p, seed), np.asarray(im, np.int16)))
    alone: dict[tuple[str, int], np.ndarray] = {}
    sampler.draw_pairs(job, pairs[5:6], lambda im, _pid, p, seed: alone.__setitem__((p, seed), np.asarray(im, np.int16)))
    assert (alone[pairs[5]] == got[pairs[5]]).all()
    names = [name for name, _ in sampler.controls]
    followed = set()
    for prompt, seed in pairs:
        for name in names:
            one: dict[str, np.ndarray] = {}
            sampler.draw(job, [prompt], [seed], lambda im, pid, _p, s: one.__setitem__(pid, np.asarray(im, np.int16)), images=[name])
            if (one["p01"] == got[(prompt, seed)]).all():
                followed.add(name)
                break
        else:
            raise AssertionError(f"seed {seed} followed none of the controls")
    assert followed == set(names)  # eight candidates spread over both held-out originals
