"""pixel24: real diffusers U-Net, real training steps on real punks, tiny widths so it stays fast."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bespoke_kohya import pixel24
from bespoke_kohya.errors import UserError
from bespoke_kohya.presets import Preset

TINY = {"block_out_channels": [16, 32], "layers_per_block": 1, "text_dim": 16, "batch_size": 8, "warmup_steps": 2}


def tiny_preset(repeats: int = 1, **pixel24_overrides: object) -> Preset:
    """A pixel24 preset with a ~0.2 M-parameter U-Net."""
    return Preset.model_validate({"name": "tiny", "description": "test", "engine": "pixel24", "dataset": {"num_repeats": repeats}, "pixel24": {**TINY, **pixel24_overrides}})


@pytest.fixture(scope="module")
def sixteen(punks_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 real punks with their captions (a stray `.md` like the real folder's README is ignored)."""
    out = tmp_path_factory.mktemp("data") / "sixteen"
    out.mkdir()
    for png in sorted(punks_dir.glob("*.png"))[::11][:16]:
        shutil.copy(png, out / png.name)
        if png.with_suffix(".txt").exists():
            shutil.copy(png.with_suffix(".txt"), out / png.with_suffix(".txt").name)
    return out


@pytest.fixture(scope="module")
def trained(sixteen: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[dict]]:
    run = tmp_path_factory.mktemp("run")
    events: list[dict] = []
    result = pixel24.train(tiny_preset(epochs=2), sixteen, run, device="cpu", on_step=events.append)
    return run, result, events


@pytest.fixture(scope="module")
def model(trained: tuple[Path, dict, list[dict]]) -> pixel24.Pixel24Model:
    run, result, _ = trained
    return pixel24.load_checkpoint(run / result["epochs"][2], device="cpu")


def test_training_writes_a_checkpoint_per_epoch_config_and_loss_log(trained: tuple[Path, dict, list[dict]]) -> None:
    run, result, events = trained
    assert result["epochs"] == {1: "checkpoints/pixel24-000001.safetensors", 2: "checkpoints/pixel24-000002.safetensors"}
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["pixel24-000001.safetensors", "pixel24-000002.safetensors", "pixel24.json"]
    # 16 images at batch 8: 2 steps an epoch.
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


def test_config_holds_model_vocabulary_and_settings(trained: tuple[Path, dict, list[dict]], sixteen: Path) -> None:
    run, _, _ = trained
    config = json.loads((run / "checkpoints" / "pixel24.json").read_text())
    assert config["format"] == pixel24.FORMAT
    assert config["unet"]["block_out_channels"] == [16, 32]
    assert config["settings"]["text_dim"] == 16
    assert config["dataset"]["images"] == 16
    vocab = config["vocab"]
    # Words seen at least twice in the captions; the Bespoke captions all say "punk".
    assert "punk" in vocab and "background" in vocab
    assert len(vocab) == len(set(vocab))


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
    result = pixel24.train(tiny_preset(epochs=1, max_steps=1), folder, tmp_path / "run", device="cpu")
    assert result["warnings"] == [f"{uncaptioned[0].name}: no .txt caption; trained with the default caption"]


def test_sampling_is_deterministic_per_seed_and_differs_between_seeds(model: pixel24.Pixel24Model) -> None:
    prompt = "pixel art, 24x24, portrait of bespoke punk lady, blonde hair, green background"
    first = pixel24.sample(model, [prompt], [1, 2], steps=4, guidance_scale=3.0)
    again = pixel24.sample(model, [prompt], [1], steps=4, guidance_scale=3.0)
    assert first[0][0].shape == (24, 24, 3) and first[0][0].dtype == np.uint8
    assert np.array_equal(first[0][0], again[0][0])  # also independent of what else was in the batch
    assert (first[0][0] != first[0][1]).any(-1).mean() > 0.2


def test_a_reloaded_checkpoint_samples_the_same(model: pixel24.Pixel24Model, trained: tuple[Path, dict, list[dict]]) -> None:
    run, result, _ = trained
    other = pixel24.load_checkpoint(run / result["epochs"][2])
    a = pixel24.sample(model, ["lad, brown hair"], [7], steps=3, guidance_scale=2.0)
    b = pixel24.sample(other, ["lad, brown hair"], [7], steps=3, guidance_scale=2.0)
    assert np.array_equal(a[0][0], b[0][0])


def test_the_prompt_changes_the_output(model: pixel24.Pixel24Model) -> None:
    prompts = ["lady, blonde hair, green background", "lad, wearing cap, brown eyes"]
    out = pixel24.sample(model, prompts, [3], steps=4, guidance_scale=5.0)
    assert (out[0][0] != out[1][0]).any(-1).mean() > 0.05
    # The empty prompt is the unconditional model; a real prompt must differ from it.
    plain = pixel24.sample(model, [""], [3], steps=4, guidance_scale=5.0)
    assert not np.array_equal(out[0][0], plain[0][0])


def test_unknown_words_are_reported(model: pixel24.Pixel24Model) -> None:
    ids, unknown = pixel24.encode_prompt(model, "Lady, zorblax hair, green  BACKGROUND, qwxyz")
    assert unknown == ["zorblax", "qwxyz"]
    # The phrase "qwxyz" has no known word: dropped; "zorblax hair" keeps "hair".
    assert ids == [[model.vocab_index["lady"]], [model.vocab_index["hair"]], [model.vocab_index["green"], model.vocab_index["background"]]]


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


def test_should_stop_keeps_finished_epochs(sixteen: Path, tmp_path: Path) -> None:
    calls = {"n": 0}

    def stop_in_epoch_two() -> bool:
        calls["n"] += 1
        return calls["n"] > 3  # steps 1-2 (epoch 1) and 3 run; the 4th poll stops

    result = pixel24.train(tiny_preset(epochs=3), sixteen, tmp_path, device="cpu", should_stop=stop_in_epoch_two)
    assert result["stopped"] is True
    assert result["epochs"] == {1: "checkpoints/pixel24-000001.safetensors"}
    assert result["steps"] == 3
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["pixel24-000001.safetensors", "pixel24.json"]


def test_max_steps_is_spread_over_every_epoch(sixteen: Path, tmp_path: Path) -> None:
    result = pixel24.train(tiny_preset(epochs=3, batch_size=4, max_steps=5), sixteen, tmp_path, device="cpu")
    assert result["steps_per_epoch"] == 2 and result["steps"] == 6
    assert sorted(result["epochs"]) == [1, 2, 3]


def test_fine_tuning_from_a_checkpoint_extends_the_vocabulary(trained: tuple[Path, dict, list[dict]], sixteen: Path, tmp_path: Path) -> None:
    run, result, _ = trained
    data = tmp_path / "new"
    shutil.copytree(sixteen, data)
    for txt in sorted(data.glob("*.txt"))[:2]:
        txt.write_text(txt.read_text().strip() + ", glorpwave hat")
    base_vocab = json.loads((run / "checkpoints" / "pixel24.json").read_text())["vocab"]
    out = pixel24.train(tiny_preset(epochs=1, init_from=str(run)), data, tmp_path / "ft", device="cpu")
    tuned = pixel24.load_checkpoint(tmp_path / "ft" / out["epochs"][1])
    assert tuned.vocab[: len(base_vocab)] == base_vocab
    assert "glorpwave" in tuned.vocab
    assert any("new caption words" in w for w in out["warnings"])
    assert tuned.config["init_from"] == str(run / result["epochs"][2])


def test_fine_tuning_refuses_a_different_architecture(trained: tuple[Path, dict, list[dict]], sixteen: Path, tmp_path: Path) -> None:
    run, result, _ = trained
    with pytest.raises(UserError, match=r"block_out_channels = \[16, 32\] but the preset says \[16, 48\]; set pixel24.block_out_channels = \[16, 32\]"):
        pixel24.train(tiny_preset(block_out_channels=[16, 48], init_from=str(run / result["epochs"][1])), sixteen, tmp_path, device="cpu")
    with pytest.raises(UserError, match="prediction_type = 'v_prediction' but the preset says 'epsilon'"):
        pixel24.train(tiny_preset(prediction_type="epsilon", init_from=str(run)), sixteen, tmp_path, device="cpu")
    with pytest.raises(UserError, match="init_from = 'nowhere.safetensors': file not found"):
        pixel24.train(tiny_preset(init_from="nowhere.safetensors"), sixteen, tmp_path, device="cpu")


def test_images_that_are_not_24px_are_refused(tmp_path: Path) -> None:
    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "big.png")
    with pytest.raises(UserError, match=rf"{tmp_path / 'big.png'}: is 32x32"):
        pixel24.train(tiny_preset(), tmp_path, tmp_path / "run", device="cpu")


def test_an_unavailable_device_is_refused() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UserError, match="'cuda'.*no CUDA GPU"):
        pixel24.pick_device("cuda")
    assert pixel24.pick_device("cpu").type == "cpu"


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
    sources = sorted(punks_dir.glob("lad_*.png"))[:16]
    for i, png in enumerate(sources):
        rgb = np.asarray(Image.open(png).convert("RGB")).copy()
        corner = rgb[0, 0].copy()
        mask = (rgb == corner).all(-1)  # the solid background of these punks is their corner colour
        for name, value in colours.items():
            out = rgb.copy()
            out[mask] = value
            Image.fromarray(out).save(data / f"{name}_{i:02d}.png")
            (data / f"{name}_{i:02d}.txt").write_text(f"pixel art, portrait of bespoke punk lad, {name} background")
    preset = tiny_preset(repeats=75, epochs=1, batch_size=16, learning_rate=2e-3, cond_dropout=0.1, phrase_dropout=0.0)
    result = pixel24.train(preset, data, tmp_path / "run", device="cpu")
    assert result["steps"] == 150
    model = pixel24.load_checkpoint(tmp_path / "run" / result["epochs"][1])
    seeds = [1, 2, 3, 4]
    out = pixel24.sample(model, ["pixel art, portrait of bespoke punk lad, red background", "pixel art, portrait of bespoke punk lad, blue background"], seeds, steps=10, guidance_scale=3.0)
    for row, (want, other) in zip(out, [("red", "blue"), ("blue", "red")]):
        # The top row is background in every punk; its mean colour must be the prompted one.
        tops = np.stack([img[0].astype(float).mean(axis=0) for img in row])
        to_want = np.linalg.norm(tops - colours[want], axis=1)
        to_other = np.linalg.norm(tops - colours[other], axis=1)
        assert (to_want < to_other).all() and (to_want < 80).all(), f"{want} prompt gave top rows {tops.round().tolist()}"
