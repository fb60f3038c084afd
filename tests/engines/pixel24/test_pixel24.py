"""pixel24: real diffusers U-Net over palette indices, real training steps on real punks, tiny widths so it stays fast."""

from __future__ import annotations

import csv
import os
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bespoke_kohya.engines.pixel24 import api as pixel24
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
    rng = np.random.default_rng(0)
    few = rng.integers(0, 255, (5, 3)).astype(np.uint8)
    images = few[rng.integers(0, 5, (3, 24, 24))]
    palette = pixel24.build_palette(images, 16)
    assert {tuple(c) for c in palette.tolist()} == {tuple(c) for c in few.tolist()}
    assert np.array_equal(palette[pixel24.to_indices(images, palette)], images)  # exact round trip
    many = rng.integers(0, 255, (4, 24, 24, 3)).astype(np.uint8)
    palette = pixel24.build_palette(many, 16)
    assert len(palette) == 16 and {tuple(c) for c in palette.tolist()} <= colours_of(many)


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


def test_resume_continues_exactly_where_it_stopped(sixteen: Path, tmp_path: Path) -> None:
    """Stopped after epoch 1 then resumed: the same weights, loss log, held-out losses and epochs as one uninterrupted run."""
    from safetensors.torch import load_file

    preset = tiny_preset(steps=6, epochs=3)
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
