"""pixel24: real diffusers U-Net over palette indices, real training steps on real punks, tiny widths so it stays fast."""

from __future__ import annotations

import csv
import os
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from bespoke_kohya.engines.pixel24 import api as pixel24
from bespoke_kohya.engines.pixel24.model import has_compiler
from bespoke_kohya.errors import UserError
from bespoke_kohya.presets import validate_preset, Preset
from bespoke_kohya.runfolder.records import read_validation

from tests.helpers.punks import copy_punks

TINY = {"block_out_channels": [16, 32], "layers_per_block": 1, "text_dim": 16, "colour_dim": 8, "feature_dim": 16, "palette_size": 32,
        "batch_size": 8, "warmup_steps": 2, "base": "none", "steps": 4, "epochs": 2, "sample_steps": 4}


def tiny_preset(repeats: int = 1, **pixel24_overrides: object) -> Preset:
    """A pixel24 preset with a ~0.2 M-parameter U-Net, trained from scratch (no base) for 4 steps."""
    return validate_preset({"name": "tiny", "description": "test", "engine": "pixel24", "dataset": {"num_repeats": repeats}, "pixel24": {**TINY, **pixel24_overrides}}, "test preset")


@pytest.fixture(scope="module")
def sixteen(punks_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 real punks with their captions (a stray `.md` like the real folder's README is ignored)."""
    return copy_punks(punks_dir, tmp_path_factory.mktemp("data") / "sixteen", every=11, count=16)


@pytest.fixture(scope="module")
def trained(sixteen: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[dict]]:
    run = tmp_path_factory.mktemp("run")
    events: list[dict] = []
    result = pixel24.train(tiny_preset(), sixteen, run, device="cpu", on_step=events.append)
    return run, result, events


@pytest.fixture(scope="module")
def model(trained: tuple[Path, dict, list[dict]]) -> pixel24.Pixel24Model:
    run, result, _ = trained
    return pixel24.load_checkpoint(run / result["epochs"][2], device="cpu")


def sample(model: pixel24.Pixel24Model, prompts: list[str], seeds: list[int], steps: int = 4, guidance: float = 2.0) -> list[list[np.ndarray]]:
    return pixel24.sample(model, prompts, seeds, steps=steps, guidance_scale=guidance, temperature=0.7)


def colours_of(img: np.ndarray) -> set[tuple[int, int, int]]:
    return {tuple(c) for c in img.reshape(-1, 3).tolist()}


def test_training_writes_checkpoints_state_config_and_loss_log(trained: tuple[Path, dict, list[dict]]) -> None:
    run, result, events = trained
    assert result["epochs"] == {1: "checkpoints/pixel24-000001.safetensors", 2: "checkpoints/pixel24-000002.safetensors"}
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "pixel24-000001.safetensors", "pixel24-000002.safetensors", "pixel24-state.json", "pixel24-state.safetensors", "pixel24.json"]
    # Sized in steps: 4 steps over 2 epochs, whatever the 16 images would make an "epoch".
    assert result["steps"] == 4 and result["images"] == 16
    with (run / "logs" / "loss.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["step", "epoch", "loss", "avg_loss", "lr"]
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert [int(r["epoch"]) for r in rows] == [1, 1, 2, 2]
    assert all(math.isfinite(float(r["loss"])) and float(r["loss"]) > 0 for r in rows)
    assert [e["step"] for e in events] == [1, 2, 3, 4]
    assert set(events[0]) == {"epoch", "epochs", "step", "total_steps", "loss", "avg_loss", "lr", "images_per_s"}
    assert events[-1]["total_steps"] == 4 and events[0]["epochs"] == 2
    assert result["heldout"] == 0 and not (run / "logs" / "validation.csv").exists()  # nothing held out: no validation file


def test_config_holds_model_vocabulary_palette_and_settings(trained: tuple[Path, dict, list[dict]], sixteen: Path) -> None:
    run, _, _ = trained
    config = json.loads((run / "checkpoints" / "pixel24.json").read_text())
    assert (config["format"], config["version"]) == (pixel24.FORMAT, 2)
    assert config["unet"]["block_out_channels"] == [16, 32] and config["unet"]["in_channels"] == 8
    assert config["settings"]["text_dim"] == 16 and config["dataset"]["images"] == 16
    assert "punk" in config["vocab"] and "background" in config["vocab"] and len(config["vocab"]) == len(set(config["vocab"]))
    # The palette: at most palette_size colours, each a real colour of the training images.
    training = set().union(*(colours_of(np.asarray(Image.open(p).convert("RGB"))) for p in sixteen.glob("*.png")))
    palette = {tuple(int(h[i : i + 2], 16) for i in (1, 3, 5)) for h in config["palette"]}
    assert len(palette) == len(config["palette"]) <= 32 and palette <= training


def test_palette_is_exact_when_few_colours_and_real_colours_when_many() -> None:
    from bespoke_kohya.colour import rgb_to_lab

    rng = np.random.default_rng(0)
    few = rng.integers(0, 255, (5, 3)).astype(np.uint8)
    images = few[rng.integers(0, 5, (3, 24, 24))]
    palette = pixel24.build_palette(images, 16)
    assert {tuple(c) for c in palette.tolist()} == {tuple(c) for c in few.tolist()}
    assert np.array_equal(palette[pixel24.to_indices(images, palette)], images)  # exact round trip
    many = rng.integers(0, 255, (4, 24, 24, 3)).astype(np.uint8)
    palette = pixel24.build_palette(many, 16)
    assert len(palette) == 16 and {tuple(c) for c in palette.tolist()} <= colours_of(many)
    # each distinct colour matched once: every pixel still gets its own nearest palette colour
    lab, pal = rgb_to_lab(many).reshape(-1, 1, 3), rgb_to_lab(palette)[None]
    assert np.array_equal(pixel24.to_indices(many, palette).reshape(-1), ((lab - pal) ** 2).sum(-1).argmin(1))
    assert pixel24.to_indices(many[:0], palette).shape == (0, 24, 24)


def test_samples_hold_only_palette_colours(model: pixel24.Pixel24Model) -> None:
    """Grain-free by construction: every pixel is one of the model's palette colours, none in between."""
    out = sample(model, ["lady, green background", "lad"], [1, 2, 3])
    palette = {tuple(c) for c in model.palette.tolist()}
    for row in out:
        for img in row:
            assert img.shape == (24, 24, 3) and img.dtype == np.uint8
            assert colours_of(img) <= palette


def test_sampling_is_deterministic_per_seed_and_differs_between_seeds(model: pixel24.Pixel24Model) -> None:
    prompt = "pixel art, 24x24, portrait of bespoke punk lady, blonde hair, green background"
    first = sample(model, [prompt], [1, 2])
    again = sample(model, [prompt], [1])
    assert np.array_equal(first[0][0], again[0][0])  # also independent of what else was in the batch
    assert (first[0][0] != first[0][1]).any(-1).mean() > 0.2


def test_refinement_redraws_only_the_least_likely_share_and_keeps_seeds_reproducible(model: pixel24.Pixel24Model) -> None:
    prompt, knobs = "lady, green background", {"steps": 4, "guidance_scale": 2.0, "temperature": 0.7}
    plain = pixel24.sample(model, [prompt], [1, 2], **knobs)
    assert all(np.array_equal(a, b) for a, b in zip(plain[0], pixel24.sample(model, [prompt], [1, 2], **knobs, refine_rounds=0)[0]))
    refined = pixel24.sample(model, [prompt], [1, 2], **knobs, refine_rounds=1, refine_share=0.1, refine_steps=2)
    for before, after in zip(plain[0], refined[0]):
        changed = int((before != after).any(-1).sum())
        assert 0 < changed <= round(0.1 * 24 * 24), changed  # only the re-masked tenth can change
    alone = pixel24.sample(model, [prompt], [2], **knobs, refine_rounds=1, refine_share=0.1, refine_steps=2)
    assert np.array_equal(refined[0][1], alone[0][0])  # a seed's image does not depend on its batch-mates


def test_a_reloaded_checkpoint_samples_the_same(model: pixel24.Pixel24Model, trained: tuple[Path, dict, list[dict]]) -> None:
    run, result, _ = trained
    other = pixel24.load_checkpoint(run / result["epochs"][2])
    assert np.array_equal(sample(model, ["lad, brown hair"], [7])[0][0], sample(other, ["lad, brown hair"], [7])[0][0])


def test_the_prompt_changes_the_output(model: pixel24.Pixel24Model) -> None:
    prompts = ["lady, blonde hair, green background", "lad, wearing cap, brown eyes"]
    out = sample(model, prompts, [3], guidance=5.0)
    assert (out[0][0] != out[1][0]).any()  # a 4-step model hardly listens; the background test below shows it steering
    # The empty prompt is the unconditional model; a real prompt must differ from it.
    assert not np.array_equal(out[0][0], sample(model, [""], [3], guidance=5.0)[0][0])


def test_unknown_words_are_reported(model: pixel24.Pixel24Model) -> None:
    ids, unknown = pixel24.encode_prompt(model, "Lady, zorblax hair, green  BACKGROUND, qwxyz")
    assert unknown == ["zorblax", "qwxyz"]
    # The phrase "qwxyz" has no known word: dropped; "zorblax hair" keeps "hair".
    assert ids == [[model.vocab_index["lady"]], [model.vocab_index["hair"]], [model.vocab_index["green"], model.vocab_index["background"]]]


def test_two_images_without_captions_are_reported(punks_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    uncaptioned = [p for p in sorted(punks_dir.glob("*.png")) if not p.with_suffix(".txt").exists()]
    if not uncaptioned:
        pytest.skip("every image of this dataset has a caption")
    for png in uncaptioned[:1] + sorted(punks_dir.glob("lad_00*.png"))[:3]:
        shutil.copy(png, folder / png.name)
        if png.with_suffix(".txt").exists():
            shutil.copy(png.with_suffix(".txt"), folder / png.with_suffix(".txt").name)
    result = pixel24.train(tiny_preset(steps=1, epochs=1), folder, tmp_path / "run", device="cpu")
    assert result["warnings"] == [f"{uncaptioned[0].name}: no .txt caption; trained with the default caption"]


def test_missing_and_corrupt_checkpoints_name_the_file(trained: tuple[Path, dict, list[dict]], tmp_path: Path) -> None:
    run, result, _ = trained
    missing = run / "checkpoints" / "pixel24-000099.safetensors"
    with pytest.raises(UserError, match=str(missing)):
        pixel24.load_checkpoint(missing)
    corrupt = tmp_path / "pixel24-000001.safetensors"
    corrupt.write_bytes((run / result["epochs"][1]).read_bytes()[:300])
    shutil.copy(run / "checkpoints" / "pixel24.json", tmp_path / "pixel24.json")
    with pytest.raises(UserError, match=rf"{corrupt}: not a readable safetensors checkpoint"):
        pixel24.load_checkpoint(corrupt)


def test_a_checkpoint_without_its_config_is_refused(trained: tuple[Path, dict, list[dict]], tmp_path: Path) -> None:
    run, result, _ = trained
    lone = tmp_path / "pixel24-000001.safetensors"
    shutil.copy(run / result["epochs"][1], lone)
    with pytest.raises(UserError, match=rf"{tmp_path / 'pixel24.json'}: model config not found"):
        pixel24.load_checkpoint(lone)
    (tmp_path / "pixel24.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        pixel24.load_checkpoint(lone)


def test_a_run_of_the_first_pixel24_is_refused_with_what_to_do(trained: tuple[Path, dict, list[dict]], tmp_path: Path) -> None:
    run, result, _ = trained
    shutil.copy(run / result["epochs"][1], tmp_path / "pixel24-000001.safetensors")
    (tmp_path / "pixel24.json").write_text(json.dumps({"format": pixel24.FORMAT, "version": 1, "unet": {}, "text": {}, "scheduler": {}, "vocab": []}))
    with pytest.raises(UserError, match=r"first pixel24 \(continuous RGB\).*retrain it with `bespoke-kohya train --preset pixel24"):
        pixel24.load_checkpoint(tmp_path / "pixel24-000001.safetensors")


def test_should_stop_keeps_finished_epochs(sixteen: Path, tmp_path: Path) -> None:
    calls = {"n": 0}

    def stop_in_epoch_two() -> bool:
        calls["n"] += 1
        return calls["n"] > 3  # steps 1-2 (epoch 1) and 3 run; the 4th poll stops

    result = pixel24.train(tiny_preset(steps=6, epochs=3), sixteen, tmp_path, device="cpu", should_stop=stop_in_epoch_two)
    assert result["stopped"] is True
    assert result["epochs"] == {1: "checkpoints/pixel24-000001.safetensors"}
    assert result["steps"] == 3


@pytest.mark.parametrize("fast_step", [False, True], ids=["plain", "fast_step"])
def test_resume_continues_exactly_where_it_stopped(sixteen: Path, tmp_path: Path, fast_step: bool) -> None:
    """Stopped after epoch 1 then resumed: the same weights, loss log, held-out losses and epochs as one uninterrupted run
    (with fast_step, the fused AdamW's state too)."""
    from safetensors.torch import load_file

    preset = tiny_preset(steps=6, epochs=3, fast_step=fast_step)
    held = sorted(p.name for p in sixteen.glob("*.png"))[:2]
    whole = pixel24.train(preset, sixteen, tmp_path / "whole", device="cpu", heldout=held)
    stop = {"now": False}
    first = pixel24.train(preset, sixteen, tmp_path / "split", device="cpu", on_epoch=lambda e, p: stop.update(now=True), should_stop=lambda: stop["now"],
                          heldout=held)
    assert first["stopped"] and sorted(first["epochs"]) == [1]
    assert [r.epoch for r in read_validation(tmp_path / "split")] == [1]
    notes: list[str] = []
    second = pixel24.train(preset, sixteen, tmp_path / "split", device="cpu", on_note=notes.append, heldout=held)
    assert "resuming at step 2/6 (epoch 1 of 3)" in notes
    assert sorted(second["epochs"]) == [2, 3] and second["steps"] == 6
    for epoch in (1, 2, 3):
        a = load_file(tmp_path / "whole" / whole["epochs"][epoch])
        b = load_file(tmp_path / "split" / f"checkpoints/pixel24-{epoch:06d}.safetensors")
        assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a), f"epoch {epoch} differs"
    assert (tmp_path / "whole" / "logs" / "loss.csv").read_text() == (tmp_path / "split" / "logs" / "loss.csv").read_text()
    # Epoch 1's held-out loss, measured before the stop, is kept; 2 and 3 are added: the same file as the whole run's.
    assert [(r.epoch, r.step) for r in read_validation(tmp_path / "split")] == [(1, 2), (2, 4), (3, 6)]
    assert (tmp_path / "whole" / "logs" / "validation.csv").read_text() == (tmp_path / "split" / "logs" / "validation.csv").read_text()


def _with_marked_heldout(sixteen: Path, out: Path, held: list[str]) -> Path:
    """A copy of ``sixteen`` whose held-out images' captions carry a word no training caption has."""
    shutil.copytree(sixteen, out)
    for name in held:
        caption = out / Path(name).with_suffix(".txt").name
        caption.write_text(caption.read_text(encoding="utf-8").strip() + ", glorpwave hat", encoding="utf-8")
    return out


def test_heldout_images_are_not_trained_on_and_scored_after_every_epoch(sixteen: Path, tmp_path: Path) -> None:
    """dataset.heldout: trained on the other 13 only; each epoch's held-out loss is the saved (EMA) checkpoint's, on fixed draws."""
    from bespoke_kohya.dataset import split_heldout
    from bespoke_kohya.engines.pixel24.training import heldout_loss, hold_out, load_training_set
    from bespoke_kohya.engines.pixel24.text import encode_caption

    names = sorted(p.name for p in sixteen.glob("*.png"))
    held = split_heldout(names, 0.2, 42)[1]
    assert len(held) == 3
    data = _with_marked_heldout(sixteen, tmp_path / "data", held)
    notes: list[str] = []
    result = pixel24.train(tiny_preset(steps=4, epochs=2, vocab_min_count=1), data, tmp_path / "run", device="cpu", on_note=notes.append, heldout=held)

    assert (result["images"], result["heldout"]) == (13, 3)
    assert "validation: 3 of 16 images held out (dataset.validation_split), not trained on; their loss is measured after every epoch → logs/validation.csv" in notes
    config = json.loads((tmp_path / "run" / "checkpoints" / "pixel24.json").read_text())
    assert (config["dataset"]["images"], config["dataset"]["heldout"]) == (13, 3)
    # With vocab_min_count = 1 every training word is in the vocabulary: a word only the held-out captions have is not.
    assert "glorpwave" not in config["vocab"] and "punk" in config["vocab"]

    rows = read_validation(tmp_path / "run")
    assert [(r.epoch, r.step) for r in rows] == [(1, 2), (2, 4)]
    assert all(r.loss is not None and math.isfinite(r.loss) and r.loss > 0 for r in rows)
    assert rows[0].loss != rows[1].loss
    # The row is the loss of the checkpoint the epoch saved, and the same draws give the same number again.
    everything = load_training_set(data, "punk")
    _, held_set = hold_out(everything, held, data)
    assert held_set.names == held
    for row in rows:
        model = pixel24.load_checkpoint(tmp_path / "run" / result["epochs"][row.epoch], device="cpu")
        indices = pixel24.to_indices(held_set.images, model.palette)
        captions = [encode_caption(model.vocab_index, c)[0] for c in held_set.captions]
        again = heldout_loss(model, indices, captions, tiny_preset().pixel24.label_smoothing)
        assert again == pytest.approx(row.loss, rel=1e-5, abs=1e-6)
        assert heldout_loss(model, indices, captions, tiny_preset().pixel24.label_smoothing) == again


def test_a_heldout_name_the_folder_lacks_is_one_line(sixteen: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=rf"run.json dataset.heldout names nope.png, which {sixteen} does not hold"):
        pixel24.train(tiny_preset(), sixteen, tmp_path, device="cpu", heldout=["nope.png"])
    assert not (tmp_path / "checkpoints").exists()


def test_fine_tuning_from_a_base_extends_the_vocabulary_and_takes_the_new_palette(trained: tuple[Path, dict, list[dict]], sixteen: Path, tmp_path: Path) -> None:
    run, result, _ = trained
    data = tmp_path / "new"
    data.mkdir()
    for i, png in enumerate(sorted(sixteen.glob("*.png"))[:4]):
        rgb = 255 - np.asarray(Image.open(png).convert("RGB"))  # other colours than the base's palette
        Image.fromarray(rgb.astype(np.uint8)).save(data / png.name)
        (data / png.with_suffix(".txt").name).write_text("pixel art, lady, glorpwave hat")
    base_vocab = json.loads((run / "checkpoints" / "pixel24.json").read_text())["vocab"]
    out = pixel24.train(tiny_preset(steps=1, epochs=1, base=str(run), vocab_min_count=1), data, tmp_path / "ft", device="cpu")
    tuned = pixel24.load_checkpoint(tmp_path / "ft" / out["epochs"][1])
    assert tuned.vocab[: len(base_vocab)] == base_vocab and "glorpwave" in tuned.vocab
    assert any("new caption words" in w for w in out["warnings"])
    assert tuned.config["base"] == str(run / result["epochs"][2])
    drawn = sample(tuned, ["lady"], [1])[0][0]
    assert colours_of(drawn) <= colours_of(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in data.glob("*.png")]))


def test_a_base_with_another_architecture_or_missing_is_refused(trained: tuple[Path, dict, list[dict]], sixteen: Path, tmp_path: Path) -> None:
    run, result, _ = trained
    with pytest.raises(UserError, match=r"the base has block_out_channels = \[16, 32\] but the preset says \[16, 48\]"):
        pixel24.train(tiny_preset(block_out_channels=[16, 48], base=str(run / result["epochs"][1])), sixteen, tmp_path, device="cpu")
    with pytest.raises(UserError, match="pixel24.base = 'nowhere.safetensors': not found"):
        pixel24.train(tiny_preset(base="nowhere.safetensors"), sixteen, tmp_path, device="cpu")


def test_the_standin_base_is_trained_once_and_reused(sixteen: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """base = "standin": trained on the stand-in into the cache on first use, with progress and a time estimate; reused after."""
    from bespoke_kohya.engines.pixel24.standin import build_standin, default_standin_dir

    monkeypatch.setenv("BESPOKE_CACHE", str(tmp_path / "cache"))
    build_standin(default_standin_dir(), limit=24)
    from bespoke_kohya.engines.pixel24 import training

    monkeypatch.setattr(training, "ESTIMATE_AFTER_STEPS", 1)
    preset = tiny_preset(base="standin", base_steps=2, base_batch_size=4, steps=1, epochs=1)
    events: list[dict] = []
    pixel24.train(preset, sixteen, tmp_path / "one", device="cpu", on_step=events.append)
    base = pixel24.base_dir(preset.pixel24)
    assert sorted(p.name for p in base.iterdir()) == ["pixel24-base.safetensors", "pixel24.json"]
    assert [e["step"] for e in events if e.get("epoch") == "base"] == [1, 2]
    assert any("base model: training once on the 24 stand-in CryptoPunks" in e.get("note", "") for e in events)
    stamp = os.stat(base / "pixel24-base.safetensors").st_mtime_ns
    events.clear()
    pixel24.train(preset, sixteen, tmp_path / "two", device="cpu", on_step=events.append)
    assert not [e for e in events if e.get("epoch") == "base"] and os.stat(base / "pixel24-base.safetensors").st_mtime_ns == stamp
    # Another base schedule is another cache entry.
    assert pixel24.base_dir(tiny_preset(base_steps=3).pixel24) != base


def test_checkpoints_are_spread_over_the_steps_one_per_step_at_most() -> None:
    from bespoke_kohya.engines.pixel24.training import _epoch_ends

    assert _epoch_ends(2000, 5) == [400, 800, 1200, 1600, 2000]
    assert _epoch_ends(7, 3) == [2, 5, 7]
    assert _epoch_ends(3, 5) == [1, 2, 3]  # fewer steps than epochs: an epoch per step, numbered 1..3


def test_a_run_too_short_to_learn_is_warned_about_with_what_to_set() -> None:
    assert pixel24.short_run_warning(tiny_preset().pixel24) == (
        "pixel24.steps = 4 × batch 8 shows the model only 32 images; expect noise-like samples. Set pixel24.steps to at least 2500 for a usable model")
    assert pixel24.short_run_warning(tiny_preset(steps=2500).pixel24) is None


def test_images_that_are_not_24px_are_refused(tmp_path: Path) -> None:
    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "big.png")
    with pytest.raises(UserError, match=rf"{tmp_path / 'big.png'}: is 32x32"):
        pixel24.train(tiny_preset(), tmp_path, tmp_path / "run", device="cpu")


def test_an_unavailable_device_is_refused(sixteen: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UserError, match="'cuda'.*no CUDA GPU"):
        pixel24.train(tiny_preset(), sixteen, tmp_path, device="cuda")


def test_phrases_are_bound_to_their_words() -> None:
    """'green eyes, brown background' and 'brown eyes, green background' hold the same words but differ."""
    import torch

    torch.manual_seed(0)
    vocab = ["<reserved>", "background", "brown", "eyes", "green"]
    index = {w: i for i, w in enumerate(vocab)}
    encoder = pixel24.PhraseEncoder(len(vocab), 8, 12)
    a, unknown = pixel24.encode_caption(index, "green eyes, brown background")
    b, _ = pixel24.encode_caption(index, "brown eyes, green background")
    c, _ = pixel24.encode_caption(index, "brown background, green eyes")
    assert unknown == []
    with torch.no_grad():
        va, vb, vc, null = encoder([a, b, c, []])
    assert not torch.allclose(va, vb)
    assert torch.allclose(va, vc, atol=1e-6)  # phrase order does not matter
    assert torch.equal(null, encoder.null)


@pytest.mark.slow
def test_conditioning_steers_the_background(tmp_path: Path, punks_dir: Path) -> None:
    """Train briefly on punks whose caption names their (recoloured) background; the prompt must pick it."""
    data = tmp_path / "bg"
    data.mkdir()
    colours = {"red": (220, 30, 30), "blue": (30, 60, 220)}
    for i, png in enumerate(sorted(punks_dir.glob("lad_*.png"))[:16]):
        rgb = np.asarray(Image.open(png).convert("RGB")).copy()
        mask = (rgb == rgb[0, 0]).all(-1)  # the solid background of these punks is their corner colour
        for name, value in colours.items():
            out = rgb.copy()
            out[mask] = value
            Image.fromarray(out).save(data / f"{name}_{i:02d}.png")
            (data / f"{name}_{i:02d}.txt").write_text(f"pixel art, portrait of bespoke punk lad, {name} background")
    # Masked pixels can copy their colour from visible neighbours, so the caption matters only when most are masked:
    # it takes ~800 steps (not the ~150 of a continuous model) before the prompt picks the background.
    preset = tiny_preset(steps=800, epochs=1, batch_size=16, learning_rate=2e-3, cond_dropout=0.1, phrase_dropout=0.0, text_dim=32, colour_dim=16, feature_dim=32)
    result = pixel24.train(preset, data, tmp_path / "run", device="cpu")
    model = pixel24.load_checkpoint(tmp_path / "run" / result["epochs"][1])
    out = pixel24.sample(model, ["pixel art, portrait of bespoke punk lad, red background", "pixel art, portrait of bespoke punk lad, blue background"],
                         [1, 2, 3, 4], steps=10, guidance_scale=3.0, temperature=0.5)
    for row, (want, other) in zip(out, [("red", "blue"), ("blue", "red")]):
        # The top row is background in every punk: most of its pixels must be the prompted colour, few the other one.
        share = np.mean([(img[0] == colours[want]).all(-1).mean() for img in row])
        wrong = np.mean([(img[0] == colours[other]).all(-1).mean() for img in row])
        assert share > 0.8 and share > 3 * wrong, f"{want} prompt: {share:.2f} of the top rows are {want}, {wrong:.2f} {other}"

    # Refinement's critic: a blue pixel planted in a red background must be among the tenth of pixels it re-draws.
    import torch
    from bespoke_kohya.engines.pixel24.sampling import _scores

    img = out[0][0]
    row, col = next((r, c) for r in range(1, 4) for c in range(1, 23) if (img[r - 1 : r + 2, c - 1 : c + 2] == colours["red"]).all())
    planted = img.copy()
    planted[row, col] = colours["blue"]
    x = torch.from_numpy(pixel24.to_indices(planted[None], model.palette)).long()
    conditions = model.net.text([pixel24.encode_prompt(model, "pixel art, portrait of bespoke punk lad, red background")[0], []])
    scores = _scores(model, x, conditions, [torch.Generator().manual_seed(0)], 3.0)[0]
    rank = int((scores < scores[row, col]).sum())
    assert rank < round(0.1 * 24 * 24), f"the planted pixel ranks {rank} of 576 by likelihood"


def test_cli_resume_after_ctrl_c_continues_and_refuses_set(sixteen: Path, tmp_path: Path) -> None:
    """Issue 12 item 1: SIGINT in epoch 2, then `train --resume R` continues at the saved step (no restart, loss.csv kept);
    `--set` with `--resume` is refused in one line instead of being ignored."""
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "R"
    tiny = ["pixel24.base=none", "pixel24.steps=400", "pixel24.epochs=40", "pixel24.block_out_channels=[16,32]", "pixel24.batch_size=4",
            "pixel24.text_dim=16", "pixel24.colour_dim=8", "pixel24.feature_dim=16"]
    cli = [sys.executable, "-m", "bespoke_kohya"]
    child = subprocess.Popen(cli + ["train", "--preset", "pixel24", "--dataset", str(sixteen), "--run-dir", str(run), "--no-sample", *(f"--set={s}" for s in tiny)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300  # generous: only a busy machine gets near it; a fast one stops waiting at step 20
    state = run / "checkpoints" / "pixel24-state.json"

    def saved_step() -> int:
        try:
            return json.loads(state.read_text())["step"]
        except (OSError, ValueError):  # not written yet (it is replaced atomically, never half-written)
            return 0

    # Wait for epoch 2's resume state, which is written just after its checkpoint.
    while time.time() < deadline and saved_step() < 20:
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    assert child.wait(60) == 130
    saved = json.loads((run / "checkpoints" / "pixel24-state.json").read_text())["step"]
    assert 20 <= saved < 400
    refused = subprocess.run(cli + ["train", "--resume", str(run), "--set", "pixel24.steps=9"], capture_output=True, text=True)
    assert refused.returncode == 2 and "a run keeps the settings it was made with" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    again = subprocess.run(cli + ["train", "--resume", str(run), "--no-sample"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"resuming at step {saved}/400" in again.stdout + again.stderr
    with (run / "logs" / "loss.csv").open(newline="") as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh)]
    assert steps == list(range(1, 401))  # the curve before the interruption is kept, nothing repeated
    assert sorted(int(e) for e in json.loads((run / "run.json").read_text())["epochs"]) == list(range(1, 41))
    # render held out 2 of the 16 (dataset.validation_split 0.1): a held-out loss for every epoch, those before Ctrl-C kept.
    assert len(json.loads((run / "run.json").read_text())["dataset"]["heldout"]) == 2
    rows = read_validation(run)
    assert [r.epoch for r in rows] == list(range(1, 41)) and [r.step for r in rows] == list(range(10, 401, 10))
    assert all(r.loss is not None and math.isfinite(r.loss) for r in rows)


def test_resume_with_a_damaged_config_is_one_line(sixteen: Path, tmp_path: Path) -> None:
    stop = {"now": False}
    pixel24.train(tiny_preset(steps=4, epochs=2), sixteen, tmp_path, device="cpu", on_epoch=lambda e, p: stop.update(now=True), should_stop=lambda: stop["now"])
    (tmp_path / "checkpoints" / "pixel24.json").write_text("{not json")
    with pytest.raises(UserError, match="pixel24.json: not valid JSON"):
        pixel24.train(tiny_preset(steps=4, epochs=2), sixteen, tmp_path, device="cpu")


# ------------------------------------------------------------------ version 3: background head, components, attention; version 2 kept

# What 3b426a3 (the last commit before version 3 on this layout) trains and draws, computed by running its code on the
# `trained` fixture's run (tiny_preset() on `sixteen`) and on a seed-0 model; torch 2.13.0+cpu, x86_64, 2 threads, per
# CPU vendor and capability (torch.backends.cpu.get_cpu_capability()): their kernels round sums differently, and an
# AMD EPYC's AVX512 checkpoint is not an Intel Xeon's. The AMD ones were taken with both trees (3b426a3's and this
# one), which agreed.
PINNED = {
    ("GenuineIntel", "AVX512"): {
        "checkpoint": "451265dc5f560aa5b2fd2357b31168d30f31ed117dff30a364d25ec7671090e3",  # pixel24-000002.safetensors, byte for byte
        "pairs": "a753201abd7b2c54c62058602fcffad1470157e7a25fa41a889d0269f6e3f5cb",  # sample_pairs(), 20 pairs: two batches
    },
    ("AuthenticAMD", "AVX2"): {
        "checkpoint": "a4baceb7192e11989aa1cbc342a690c0ae7f39d8e8e0443bebea4b1232255d08",
        "pairs": "8c9aff44a62f6b075f7bd68e286dd7f01cd942cb23bfa194b0617b313212a2d2",
    },
    ("AuthenticAMD", "AVX512"): {
        "checkpoint": "50532ea4082926ef787c5a94809fc3cdbd500b7ff39ed6bb37e2b84989b8ded2",
        "pairs": "053084f1e23755636568a913e257eb936041997fabeeb28d1c4aea7dccbf36dd",
    },
}
BASE_SETTINGS_SHA256 = "ecfd49702016a69fd53a361a44a051be2d43be3eca42734d15f8e1fc874fc1ca"  # pixel24.json's settings, json.dumps(sort_keys=True)
BASE_SAMPLES_SHA256 = "52de309122c37f39d55addebc5f600849a2fa8f5b979820cc7b6a73176791c08"  # sample(), the preset's sampler_options() (both capabilities)
V2_SAMPLES_SHA256 = "f9101b91cf38e02e965c717f6c7c5aa79e44dbf7016f254ba5b5cc9754b50e05"  # the seed-0 model below (fc13de0 drew the same)
V2_KEYS_SHA256 = "d98aa7dcdbbb2e9d390f35fc0adc31941f56e03e1b14889776252d6abeb58c12"
BASE_PROMPTS = ["lady, green background", "lad, hair"]
PAIRS = [(p, s) for s in range(10) for p in ("lady, green background", "lad, blue background, cap")]


def _digest(images: list[np.ndarray]) -> str:
    import hashlib

    return hashlib.sha256(np.stack(images).tobytes()).hexdigest()


def _pinned() -> dict[str, str] | None:
    """The digests this machine must reproduce (PINNED's for its CPU capability), or None where they were not taken
    (other torch builds, thread counts or kernels may round sums differently)."""
    import platform

    import torch

    if torch.__version__ != "2.13.0+cpu" or platform.machine() != "x86_64" or torch.get_num_threads() != 2:
        return None
    return PINNED.get((_cpu_vendor(), torch.backends.cpu.get_cpu_capability()))


def _cpu_vendor() -> str:
    """/proc/cpuinfo's vendor_id (GenuineIntel, AuthenticAMD), or "" where there is none."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("vendor_id")), "")


def test_default_settings_train_and_draw_exactly_what_3b426a3_did(trained: tuple[Path, dict, list[dict]], model: pixel24.Pixel24Model) -> None:
    """Every version-3 part is off by default: the run is version 2, its pixel24.json settings are 3b426a3's (no new
    key, so 3b426a3 reads it), its checkpoint is 3b426a3's byte for byte and it draws 3b426a3's pixels."""
    import hashlib

    from bespoke_kohya.engines.pixel24.sampling import sample_pairs
    from bespoke_kohya.engines.pixel24.settings import VERSION_3_FIELDS

    run, result, _ = trained
    config = json.loads((run / "checkpoints" / "pixel24.json").read_text())
    assert config["version"] == 2 and "background" not in config and not set(VERSION_3_FIELDS) & set(config["settings"])
    options = tiny_preset().settings.sampler_options()
    assert set(options) == {"steps", "guidance_scale", "temperature", "refine_rounds", "refine_share", "refine_steps", "refine_temperature"}
    drawn = [im for row in pixel24.sample(model, BASE_PROMPTS, [1, 2, 3], **options) for im in row]
    pairs = sample_pairs(model, PAIRS, **options)
    explicit = sample_pairs(model, PAIRS, **options, refine_components=0, refine_rare_colours=0, background_temperature=1.0, batch=16)
    assert all(np.array_equal(a, b) for a, b in zip(pairs, explicit, strict=True))  # the new keywords at their defaults change nothing
    assert hashlib.sha256(json.dumps(config["settings"], sort_keys=True).encode()).hexdigest() == BASE_SETTINGS_SHA256
    pinned = _pinned()
    if pinned is None:
        pytest.skip("the digests were taken with torch 2.13.0+cpu on x86_64, 2 threads, on Intel AVX512 and AMD AVX2 / AVX512 kernels")
    assert hashlib.sha256((run / result["epochs"][2]).read_bytes()).hexdigest() == pinned["checkpoint"]
    assert _digest(drawn) == BASE_SAMPLES_SHA256
    assert _digest(pairs) == pinned["pairs"]


def test_a_version_2_model_rebuilds_and_samples_as_version_2_did(tmp_path: Path) -> None:
    """A pixel24.json without version 3's parts builds version 2's network and draws version 2's pixels (the digests:
    3b426a3's and fc13de0's code, from the same seed-0 weights); saved and loaded again, the same pixels."""
    import hashlib

    import torch

    from bespoke_kohya.engines.pixel24.model import save_checkpoint, write_config
    from bespoke_kohya.engines.pixel24.settings import Pixel24Settings

    s = Pixel24Settings(block_out_channels=[16, 32], text_dim=16, colour_dim=8, feature_dim=16, palette_size=8)
    palette = np.random.default_rng(0).integers(0, 256, (8, 3)).astype(np.uint8)
    config = pixel24.model_config(s, ["<reserved>", "lady", "lad", "green", "background", "hair"], palette)
    assert config["version"] == 2 and "background" not in config
    torch.manual_seed(0)
    model = pixel24.build_model(config).eval()
    assert hashlib.sha256(" ".join(sorted(model.net.state_dict())).encode()).hexdigest() == V2_KEYS_SHA256

    def draw(m: pixel24.Pixel24Model, **options: object) -> list[np.ndarray]:
        knobs = {"steps": 4, "guidance_scale": 2.0, "temperature": 0.7, "refine_rounds": 1, "refine_share": 0.1, "refine_steps": 2, "refine_temperature": 0.3}
        return [im for row in pixel24.sample(m, BASE_PROMPTS, [1, 2, 3], **{**knobs, **options}) for im in row]

    drawn = draw(model)
    if _pinned() is not None:
        assert _digest(drawn) == V2_SAMPLES_SHA256
    write_config(tmp_path / "pixel24.json", config)
    save_checkpoint(model, tmp_path / "pixel24-000001.safetensors", 1, 1)
    assert _digest(draw(pixel24.load_checkpoint(tmp_path / "pixel24-000001.safetensors"))) == _digest(drawn)
    options = Pixel24Settings(sample_steps=4, temperature=0.7, refine_rounds=1, refine_steps=2).sampler_options()
    assert _digest(draw(model, **options)) == _digest(drawn)  # sampler_options' defaults (besides those set here) draw the same


def test_a_config_newer_than_this_code_is_refused(trained: tuple[Path, dict, list[dict]], tmp_path: Path) -> None:
    run, result, _ = trained
    shutil.copy(run / result["epochs"][1], tmp_path / "pixel24-000001.safetensors")
    config = json.loads((run / "checkpoints" / "pixel24.json").read_text())
    (tmp_path / "pixel24.json").write_text(json.dumps({**config, "version": 4}))
    with pytest.raises(UserError, match="version 4 is newer than this bespoke-kohya understands"):
        pixel24.load_checkpoint(tmp_path / "pixel24-000001.safetensors")


@pytest.fixture(scope="module")
def v3_run(sixteen: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A tiny version 3 run: background head, background repainting, attention at both levels."""
    run = tmp_path_factory.mktemp("run-v3")
    return run, pixel24.train(tiny_preset(background_head=True, recolour_background=0.5, attention_levels=2), sixteen, run, device="cpu")


@pytest.fixture(scope="module")
def v3(v3_run: tuple[Path, dict]) -> pixel24.Pixel24Model:
    run, result = v3_run
    return pixel24.load_checkpoint(run / result["epochs"][2], device="cpu")


def test_version_3_parts_are_recorded_and_rebuilt(v3: pixel24.Pixel24Model) -> None:
    assert v3.config["version"] == 3 and v3.config["background"] == {"head": True}
    assert v3.config["settings"]["background_head"] is True and v3.config["settings"]["attention_levels"] == 2
    assert v3.config["unet"]["down_block_types"] == ["AttnDownBlock2D", "AttnDownBlock2D"]
    assert v3.config["unet"]["up_block_types"] == ["AttnUpBlock2D", "AttnUpBlock2D"]
    assert v3.net.has_background and any(k.startswith("background_head.") for k in v3.net.state_dict())


def test_a_background_head_draws_palette_colours_deterministically_per_seed(v3: pixel24.Pixel24Model) -> None:
    from bespoke_kohya.engines.pixel24.sampling import sample_pairs

    knobs = {"steps": 4, "guidance_scale": 2.0, "temperature": 0.7, "refine_rounds": 1, "refine_steps": 2, "refine_components": 8, "refine_rare_colours": 2}
    prompt = "lady, green background"
    both = pixel24.sample(v3, [prompt], [1, 2], **knobs)
    alone = pixel24.sample(v3, [prompt], [2], **knobs)
    assert np.array_equal(both[0][1], alone[0][0]) and not np.array_equal(both[0][0], both[0][1])
    palette = {tuple(c) for c in v3.palette.tolist()}
    assert all(colours_of(img) <= palette for img in both[0])
    small = pixel24.sample(v3, [prompt], [1, 2], **knobs, batch=2)  # another batch size: still one image per seed, independent of the rest
    assert np.array_equal(small[0][1], pixel24.sample(v3, [prompt], [2], **knobs, batch=2)[0][0])
    mixed = sample_pairs(v3, [("lad, cap", 5), (prompt, 2)], **knobs)  # the generate stage's mixed batches: the same image per pair
    assert np.array_equal(mixed[1], alone[0][0])


def test_a_named_background_colour_restricts_the_head_to_palette_colours_of_that_name(v3: pixel24.Pixel24Model) -> None:
    """background_from_caption: the head's draw for "green background" is one of the palette's greens, whatever the seed;
    a prompt naming no colour, or one the palette lacks, leaves the head free."""
    from bespoke_kohya.engines.pixel24.sampling import _backgrounds, named_backgrounds
    from bespoke_kohya.metrics import colour_names

    greens = named_backgrounds(v3, "portrait of bespoke punk lady, deep green background")
    assert greens is not None and 0 < int(greens.sum()) < len(v3.palette)
    assert all(("green" in colour_names(c)) == bool(ok) for c, ok in zip(v3.palette, greens.tolist()))
    assert named_backgrounds(v3, "lady, blonde hair") is None and named_backgrounds(v3, "lady, split background") is None
    tinted = v3.palette.copy()
    v3.set_palette(np.array([[0, 0, 0], [255, 255, 255]], np.uint8))
    try:
        assert named_backgrounds(v3, "lady, green background") is None  # no green to choose from: the head stays free
    finally:
        v3.set_palette(tinted)
    seeds = list(range(40))
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    text = v3.net.text([pixel24.encode_prompt(v3, "lady, green background")[0]] * len(seeds) + [[] for _ in seeds])
    free = _backgrounds(v3, text, generators, 2.0, 1.0)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    told = _backgrounds(v3, text, generators, 2.0, 1.0, [greens] * len(seeds))
    assert bool(greens[told].all()) and not bool(greens[free].all())  # a 2-epoch head alone often draws another colour
    knobs = {"steps": 4, "guidance_scale": 2.0, "temperature": 0.7}
    a = pixel24.sample(v3, ["lady, blonde hair"], [1, 2], **knobs)
    b = pixel24.sample(v3, ["lady, blonde hair"], [1, 2], **knobs, background_from_caption=True)
    assert all(np.array_equal(x, y) for x, y in zip(a[0], b[0]))  # nothing named: the same pixels as without the option


def _stub(palette: list[list[int]]) -> object:
    """What repaint_backgrounds and flatten_backgrounds read of a model: its palette and the palette's CIELAB."""
    from types import SimpleNamespace

    from bespoke_kohya.engines.pixel24.palette import palette_lab

    colours = np.array(palette, np.uint8)
    return SimpleNamespace(palette=colours, lab=palette_lab(colours))


def test_repaint_puts_the_told_colour_where_the_drawn_background_was() -> None:
    from bespoke_kohya.engines.pixel24.sampling import repaint_backgrounds

    model = _stub([[40, 90, 200], [200, 60, 60], [230, 200, 170], [0, 0, 0]])  # blue, red, skin, black
    x = torch.full((1, 24, 24), 1)  # the U-Net drew a red background …
    x[0, 6:, 6:18] = 2  # … round a figure,
    x[0, 10, 10] = 1  # with a red pixel inside it (not background: it does not touch the ring's red)
    x[0, 8:10, 8:16] = 3
    out = repaint_backgrounds(model, x, torch.tensor([0]))  # the head drew blue
    assert (out[0, :6] == 0).all() and (out[0, :, :6] == 0).all() and out[0, 10, 10] == 1
    assert torch.equal(out[0, 6:, 6:18], x[0, 6:, 6:18])  # the figure is untouched


def test_flatten_paints_near_shades_reached_from_the_ring_and_nothing_else() -> None:
    from bespoke_kohya.engines.pixel24.sampling import flatten_backgrounds

    model = _stub([[40, 90, 200], [44, 94, 206], [230, 200, 170], [46, 96, 208]])  # blue, two shades of it, skin
    x = torch.zeros((1, 24, 24), dtype=torch.long)
    x[0, ::3, ::5] = 1  # a grain of a near shade all over the background
    x[0, 8:, 6:18] = 2  # a figure reaching the bottom edge
    x[0, 12, 12] = 3  # a near shade inside the figure: not reached from the ring through near shades
    out = flatten_backgrounds(model, x, torch.tensor([0]), tolerance=8.0)
    assert (out[0][x[0] == 1] == 0).all() and out[0, 12, 12] == 3 and (out[0, 8:, 6:18][x[0, 8:, 6:18] == 2] == 2).all()
    assert torch.equal(flatten_backgrounds(model, x, torch.tensor([0]), tolerance=1.0), x)  # the shades are ~4 ΔE away: kept at 1


def test_caption_named_repainted_flattened_backgrounds_answer_to_the_caption(v3: pixel24.Pixel24Model) -> None:
    from bespoke_kohya.metrics import border_colour, colour_names

    knobs = {"steps": 4, "guidance_scale": 2.0, "temperature": 0.7, "refine_rounds": 1, "refine_steps": 2}
    told = {"background_from_caption": True, "background_repaint": True, "background_flatten": 8.0}
    drawn = pixel24.sample(v3, ["lady, green background"], list(range(8)), **knobs, **told)[0]
    assert all("green" in colour_names(border_colour(img)) for img in drawn)
    again = pixel24.sample(v3, ["lady, green background"], [3], **knobs, **told)[0][0]
    assert np.array_equal(again, drawn[3])  # still one image per seed


def test_guided_steps_and_refine_guidance_halve_the_images_of_the_later_passes(model: pixel24.Pixel24Model, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guidance doubles a pass (captioned + empty caption); guided_steps guides only the first MaskGIT steps, refine_guidance
    False none of refinement's 2 × (4 scoring + 2 drawing) passes. At their values that mean "all", the pixels are the default's."""
    knobs = {"steps": 4, "guidance_scale": 2.0, "temperature": 0.7, "refine_rounds": 2, "refine_steps": 2, "batch": 3}
    seeds = [1, 2]
    batches: list[int] = []
    real = type(model).logits

    def counted(self, indices, *args, **kwargs):  # the real network, its batch recorded
        batches.append(len(indices))
        return real(self, indices, *args, **kwargs)

    monkeypatch.setattr(type(model), "logits", counted)
    default = pixel24.sample(model, BASE_PROMPTS, seeds, **knobs)
    passes = 4 + 2 * (4 + 2)  # per batch of 3 images; 4 images make 2 batches
    assert batches == [6] * 2 * passes
    assert all(np.array_equal(a, b) for a, b in zip(np.concatenate(default), np.concatenate(pixel24.sample(model, BASE_PROMPTS, seeds, **knobs, guided_steps=4, refine_guidance=True))))
    batches.clear()
    fast = pixel24.sample(model, BASE_PROMPTS, seeds, **knobs, guided_steps=1, refine_guidance=False)
    assert batches == ([6] + [3] * (passes - 1)) * 2
    assert not all(np.array_equal(a, b) for a, b in zip(np.concatenate(default), np.concatenate(fast)))
    alone = pixel24.sample(model, BASE_PROMPTS[-1:], seeds[-1:], **knobs, guided_steps=1, refine_guidance=False)[0][0]
    assert np.array_equal(alone, fast[-1][-1])  # still one image per seed, whatever its batch-mates


def test_rare_colours_are_redrawn_from_the_image_s_other_colours(model: pixel24.Pixel24Model) -> None:
    """One round with refine_rare_colours = 3 starts from the MaskGIT draw (the same generators) and re-draws every pixel
    of a colour on at most 3 of its pixels from its other colours: what is left are the draw's colours on more than 3."""
    knobs = {"steps": 4, "guidance_scale": 2.0, "temperature": 0.7, "refine_steps": 2}
    seeds = [1, 2, 3]
    plain = [im for row in pixel24.sample(model, BASE_PROMPTS, seeds, **knobs, refine_rounds=0) for im in row]
    cleaned = [im for row in pixel24.sample(model, BASE_PROMPTS, seeds, **knobs, refine_rounds=1, refine_rare_colours=3) for im in row]
    for before, after in zip(plain, cleaned, strict=True):
        colours, counts = np.unique(before.reshape(-1, 3), axis=0, return_counts=True)
        assert colours_of(after) <= {tuple(c) for c, n in zip(colours.tolist(), counts) if n > 3}
    alone = pixel24.sample(model, BASE_PROMPTS[1:], seeds[2:], **knobs, refine_rounds=1, refine_rare_colours=3)[0][0]
    assert np.array_equal(alone, cleaned[-1])  # images re-mask different counts, and still never depend on their batch-mates


def test_refinement_may_always_draw_an_image_s_commonest_colour() -> None:
    import torch

    from bespoke_kohya.engines.pixel24.sampling import _allowed_colours

    x = torch.zeros(2, 24, 24, dtype=torch.long)
    x[0, 0, :2] = 1  # colour 1 on two pixels, colour 2 on one: both rare
    x[0, 5, 5] = 2
    x[1] = torch.arange(576).view(24, 24) % 10  # every colour on 57 or 58 pixels: all rare at 64, the commonest (0-5) still allowed
    assert _allowed_colours(x, 12, 2)[0].tolist() == [True] + [False] * 11
    assert _allowed_colours(x, 12, 64)[1].tolist() == [c < 6 for c in range(12)]


def test_background_indices_are_the_ring_mode_and_what_touches_it() -> None:
    from bespoke_kohya.engines.pixel24.training import background_indices

    img = np.full((1, 24, 24), 3)
    img[0, 8:, 6:18] = 1  # a figure reaching the bottom edge
    img[0, 10:12, 10:12] = 3  # background-coloured pixels inside the figure: not background
    palette = np.array([[0, 0, 0], [200, 150, 100], [0, 255, 0], [20, 40, 200]], np.uint8)
    colours, masks = background_indices(img, palette)
    assert colours.tolist() == [3]
    assert masks[0].sum() == 24 * 24 - 16 * 12 and not masks[0, 10, 10]


def test_components_name_each_one_colour_area() -> None:
    import torch

    from bespoke_kohya.engines.pixel24.sampling import components

    x = torch.zeros(1, 24, 24, dtype=torch.long)
    x[0, 2:4, 2:4] = 1  # a 2×2 blotch
    x[0, 10, :] = 2  # a line across the whole picture (touches both edges: no wrap-around joins)
    x[0, 0, 23] = 1  # a lone pixel in the top-right corner, not joined to anything across the edge
    label = components(x)[0]
    assert set(label[2:4, 2:4].flatten().tolist()) == {2 * 24 + 2}
    assert set(label[10].tolist()) == {240} and label[0, 23] == 23
    assert label[0, 0] == label[9, 0] == label[0, 22] == 0  # the background above the line is one area, round the blotch and the corner pixel
    assert label[11, 0] == label[23, 23] == 11 * 24  # below the line, another


def test_a_version_2_base_gets_a_background_head_and_a_sampler_part_alone_makes_version_3(trained: tuple[Path, dict, list[dict]], sixteen: Path, tmp_path: Path) -> None:
    run, result, _ = trained
    out = pixel24.train(tiny_preset(steps=1, epochs=1, base=str(run / result["epochs"][2]), background_head=True), sixteen, tmp_path / "ft", device="cpu")
    assert "base: a new background head added" in out["warnings"]
    tuned = pixel24.load_checkpoint(tmp_path / "ft" / out["epochs"][1])
    assert tuned.net.has_background and tuned.config["version"] == 3
    with pytest.raises(UserError, match="the base has down_block_types"):
        pixel24.train(tiny_preset(base=str(run / result["epochs"][2]), attention_levels=2), sixteen, tmp_path / "other", device="cpu")
    settings = tiny_preset(refine_components=8).settings
    assert pixel24.model_config(settings, ["<reserved>"], np.zeros((2, 3), np.uint8))["version"] == 3
    assert settings.sampler_options()["refine_components"] == 8


@pytest.mark.slow
@pytest.mark.skipif(not has_compiler(), reason="torch.compile on a CPU needs a C++ compiler")
def test_a_compile_run_trains_eagerly_and_draws_what_the_eager_network_computes(sixteen: Path, tmp_path: Path) -> None:
    """pixel24.compile: training is the eager run's bit for bit (torch's compiler gets this U-Net's gradients wrong), and the
    compiled network's logits are the eager ones up to rounding, drawing one image per seed."""
    runs = {flag: tmp_path / f"run-{flag}" for flag in (True, False)}
    results = {flag: pixel24.train(tiny_preset(compile=flag, background_head=True), sixteen, runs[flag], device="cpu") for flag in runs}
    assert results[True]["steps"] == 4
    model = pixel24.load_checkpoint(runs[True] / results[True]["epochs"][2], device="cpu")
    eager_run = pixel24.load_checkpoint(runs[False] / results[False]["epochs"][2], device="cpu")
    assert model.config["settings"]["compile"] is True and model.config["version"] == 3
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), eager_run.state_dict().values()))
    x = torch.randint(len(model.palette) + 1, (4, 24, 24), generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        cond = model.net.condition(model.net.text([[[1]], [[2]], [], []]), torch.tensor([0, 1, 2, 3]), model.lab)
        eager = model.logits(x, torch.full((4,), 0.5), cond)
        model.compile()
        compiled = model.logits(x, torch.full((4,), 0.5), cond)
    assert model._compiled is not None and torch.allclose(eager, compiled, atol=1e-4, rtol=1e-4)
    knobs = {"steps": 4, "guidance_scale": 2.0, "temperature": 0.7, "batch": 4, "compile": True}
    both = pixel24.sample(model, ["lady, green background"], [1, 2], **knobs)
    alone = pixel24.sample(model, ["lady, green background"], [2], **knobs)
    assert np.array_equal(both[0][1], alone[0][0]) and not np.array_equal(both[0][0], both[0][1])


def test_the_training_loss_never_runs_a_compiled_network() -> None:
    """A model compiled for drawing (sampling each epoch in the training process) still trains through the eager network."""
    from bespoke_kohya.engines.pixel24.settings import Pixel24Settings
    from bespoke_kohya.engines.pixel24.training import _masked_loss

    settings = Pixel24Settings(block_out_channels=[16, 32], text_dim=16, colour_dim=8, feature_dim=16, palette_size=8)
    model = pixel24.build_model(pixel24.model_config(settings, ["<reserved>", "lad", "lady"], np.zeros((8, 3), np.uint8)))

    def broken(*_args: object) -> torch.Tensor:
        raise AssertionError("the training loss ran the compiled network")

    model._compiled = broken
    x0 = torch.zeros(2, 24, 24, dtype=torch.long)
    loss, _ = _masked_loss(model, x0, torch.ones(2, 24, 24, dtype=torch.bool), torch.ones(2), [[[0]], []], 0.0)
    loss.backward()
    assert torch.isfinite(loss)


def test_fast_step_computes_the_same_loss_and_gradients_from_the_masked_pixels_alone() -> None:
    """settings.fast_step scores only the masked pixels: the loss and every gradient are the full logits' up to rounding,
    with a background head and some pixels unmasked; and the optimiser is AdamW's fused one. In float64: this tiny random
    network amplifies float32's last-bit differences (its own cross-entropy's, ~1e-7) to 1e-5 in some gradients."""
    from bespoke_kohya.engines.pixel24.settings import Pixel24Settings

    settings = Pixel24Settings(block_out_channels=[16, 32], text_dim=16, colour_dim=8, feature_dim=16, palette_size=8, background_head=True)
    palette = np.random.default_rng(0).integers(0, 256, (8, 3)).astype(np.uint8)
    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        _fast_step_against_the_full_logits(settings, palette)
    finally:
        torch.set_default_dtype(dtype)


def _fast_step_against_the_full_logits(settings: Any, palette: np.ndarray) -> None:
    from bespoke_kohya.engines.pixel24.training import Loop, Schedule, _masked_loss

    model = pixel24.build_model(pixel24.model_config(settings, ["<reserved>", "lad", "lady"], palette))
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randint(8, (3, 24, 24), generator=gen)
    masked = torch.rand(3, 24, 24, generator=gen) < torch.tensor([0.2, 0.6, 1.0])[:, None, None]
    args = (model, x0, masked, torch.tensor([0.2, 0.6, 1.0]), [[[1]], [[2], [1]], []], 0.05, torch.tensor([0, 3, 7]), torch.full((3,), 0.2))
    grads = {}
    for only in (False, True):
        model.net.zero_grad(set_to_none=True)
        loss, pixels = _masked_loss(*args, masked_only=only)
        loss.backward()
        grads[only] = (loss.detach(), pixels.detach(), [p.grad.clone() for p in model.net.parameters() if p.grad is not None])
    (full, full_px, full_g), (fast, fast_px, fast_g) = grads[False], grads[True]
    assert full.dtype == torch.float64 and len(full_g) == len(fast_g) > 50
    assert torch.allclose(full, fast, rtol=1e-12) and torch.allclose(full_px, fast_px, rtol=1e-12)
    assert all(torch.allclose(a, b, rtol=1e-9, atol=1e-12) for a, b in zip(full_g, fast_g))
    loop = Loop(model, x0.numpy(), [[[1]], [[2]], []], settings.model_copy(update={"fast_step": True}), Schedule(4, 2, 1e-3, 0, 0.9))
    assert loop.opt.param_groups[0]["fused"] and not Loop(model, x0.numpy(), [[[1]], [[2]], []], settings, Schedule(4, 2, 1e-3, 0, 0.9)).opt.param_groups[0]["fused"]


@pytest.mark.parametrize("eps", [0.0, 0.05, 0.3])
def test_the_fast_step_s_cross_entropy_is_torch_s_loss_and_gradient(eps: float) -> None:
    from bespoke_kohya.engines.pixel24.training import smoothed_cross_entropy

    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(300, 17, generator=gen) * 4).requires_grad_()
    target = torch.randint(17, (300,), generator=gen)
    grads = []
    for loss_fn in (lambda: torch.nn.functional.cross_entropy(logits, target, label_smoothing=eps), lambda: smoothed_cross_entropy(logits, target, eps)):
        logits.grad = None
        loss = loss_fn()
        (3.0 * loss).backward()  # an upstream gradient other than 1
        grads.append((loss.detach(), logits.grad.clone()))
    (ref, ref_g), (ours, ours_g) = grads
    assert torch.allclose(ref, ours, rtol=1e-6) and torch.allclose(ref_g, ours_g, rtol=1e-5, atol=1e-8)


def test_fast_draw_s_inverse_cdf_draws_each_colour_at_its_probability_and_never_an_excluded_one() -> None:
    from bespoke_kohya.engines.pixel24.sampling import _categorical

    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2], [0.0, 0.0, 1.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    logp = probs.log()  # log 0 = -inf: what the sampler gives an excluded colour
    rows = logp.repeat(4000, 1)  # image 0's 6,000 rows, then image 1's
    drawn = _categorical(rows, [6000, 6000], [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    counts = torch.zeros(3, 4)
    counts.index_put_((torch.arange(12000) % 3, drawn), torch.ones(12000), accumulate=True)
    assert torch.allclose(counts / counts.sum(1, keepdim=True), probs, atol=0.03)
    assert counts[0, 1] == counts[1, 0] == counts[1, 1] == counts[1, 3] == 0
    again = _categorical(rows[:6000], [6000], [torch.Generator().manual_seed(1)])
    assert torch.equal(again, drawn[:6000])  # an image's draws come from its own generator alone


def test_fast_draw_scores_the_drawn_pixels_as_the_full_logits_do_and_draws_one_image_per_seed(v3: pixel24.Pixel24Model) -> None:
    """fast_draw projects only the pixels a pass draws, guidance mixed on the features: those pixels' logits are the full
    pass's; then it draws palette colours, one image per seed whatever its batch-mates, other pixels than Gumbel-max."""
    from bespoke_kohya.engines.pixel24.sampling import _logits, _logits_where

    v3.eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(len(v3.palette) + 1, (3, 24, 24), generator=gen)
    where = torch.rand(3, 24, 24, generator=gen) < 0.4
    with torch.no_grad():
        text = v3.net.text([[[1]], [[2]], [], [], [], []])
        cond = v3.net.condition(text, torch.tensor([0, 1, 2, 0, 1, 2]), v3.lab)
        for guidance, conditions in ((2.0, cond), (1.0, cond[:3])):
            full = _logits(v3, x, conditions, guidance)[where]
            assert torch.allclose(_logits_where(v3, x, conditions, guidance, where), full, atol=1e-4, rtol=1e-4)
    knobs = {"steps": 4, "guidance_scale": 2.0, "temperature": 0.7, "refine_rounds": 1, "refine_steps": 2, "refine_rare_colours": 2,
             "background_from_caption": True, "background_repaint": True, "batch": 3}
    fast = pixel24.sample(v3, BASE_PROMPTS, [1, 2], **knobs, fast_draw=True)
    palette = {tuple(c) for c in v3.palette.tolist()}
    assert all(colours_of(img) <= palette for row in fast for img in row)
    alone = pixel24.sample(v3, BASE_PROMPTS[-1:], [2], **knobs, fast_draw=True)[0][0]
    assert np.array_equal(alone, fast[-1][-1])
    assert not np.array_equal(fast[0][0], fast[0][1])
    plain = pixel24.sample(v3, BASE_PROMPTS, [1, 2], **knobs)
    assert not all(np.array_equal(a, b) for a, b in zip(np.concatenate(plain), np.concatenate(fast)))  # another draw of the same distribution
    from bespoke_kohya.engines.pixel24.settings import Pixel24Settings

    assert Pixel24Settings(fast_draw=True).sampler_options()["fast_draw"] is True and "fast_draw" not in Pixel24Settings().sampler_options()


def test_compile_without_a_cpp_compiler_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from bespoke_kohya.engines.pixel24 import model as model_module

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="pixel24.compile = true needs a C\\+\\+ compiler"):
        model_module.require_compiler()


def test_schedule_steps_stop_the_run_partway_down_a_longer_cosine() -> None:
    """A run of 3,800 steps on a 19,000-step schedule takes, step for step, the learning rates of the first 3,800 steps of
    a 19,000-step run (the measured e8 epoch 1); 0 keeps today's schedule, which ends at 10% of the peak."""
    from bespoke_kohya.engines.pixel24.settings import Pixel24Settings
    from bespoke_kohya.engines.pixel24.training import Schedule, _lr

    short = Schedule(3800, 32, 1e-3, 100, 0.999, horizon=19000)
    long = Schedule(19000, 32, 1e-3, 100, 0.999)
    assert [_lr(short, s) for s in range(0, 3800, 7)] == [_lr(long, s) for s in range(0, 3800, 7)]
    assert _lr(short, 3799) > 0.9e-3 and _lr(Schedule(3800, 32, 1e-3, 100, 0.999), 3799) == pytest.approx(1e-4, rel=1e-3)
    assert Schedule(3800, 32, 1e-3, 100, 0.999) == Schedule(3800, 32, 1e-3, 100, 0.999, horizon=0)
    assert "schedule_steps" in Pixel24Settings(schedule_steps=19000).version_3_parts() and not Pixel24Settings().version_3_parts()
