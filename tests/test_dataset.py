"""Dataset intake on the real, messy Bespoke Punks and on constructed bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bespoke_kohya.dataset import check_dataset, dedupe_phrases, prepare, repeated_phrases
from bespoke_kohya.errors import UserError

from tests.helpers.punks import make_punk


def test_real_dataset_report(punks_dir: Path):
    report = check_dataset(punks_dir)
    s = report.summary()
    assert s["images"] == 184
    assert s["sizes"] == {"24x24": 184}
    assert set(s["modes"]) == {"RGB", "RGBA"}
    assert sorted(s["missing_captions"]) == ["lad_057_Hughx", "lady_063_PVR"]
    assert 9 <= s["colours_min"] and s["colours_max"] <= 120 and 18 <= s["colours_median"] <= 28
    assert s["captions_with_repeated_phrases"] > 0
    assert s["with_transparency"] == 0  # measured: every RGBA original is fully opaque
    assert len(report.content_hash()) == 64


def test_phrase_helpers():
    caption = "punk, red hair, Red Hair, blue eyes, red hair"
    assert repeated_phrases(caption) == ["red hair"]
    assert dedupe_phrases(caption) == "punk, red hair, blue eyes"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: make_punk(d / "a.png", size=(23, 24)), "a.png: image is 23x24, expected 24x24"),
        (lambda d: (d / "b.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really"), "b.png: cannot read this image"),
        (lambda d: (d / "notes.pdf").write_bytes(b"%PDF"), "notes.pdf: not a PNG image or a .txt caption"),
    ],
)
def test_bad_files_are_named(tmp_path: Path, make, message):
    make_punk(tmp_path / "ok.png")
    make(tmp_path)
    with pytest.raises(UserError) as e:
        check_dataset(tmp_path)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_and_empty_folders(tmp_path: Path):
    with pytest.raises(UserError, match="dataset folder not found"):
        check_dataset(tmp_path / "nope")
    with pytest.raises(UserError, match="no .png images found"):
        check_dataset(tmp_path)


def test_duplicates_are_found(tmp_path: Path):
    make_punk(tmp_path / "a.png", seed=1)
    make_punk(tmp_path / "b.png", seed=1)
    make_punk(tmp_path / "c.png", seed=2)
    for n in "abc":
        (tmp_path / f"{n}.txt").write_text("same words")
    report = check_dataset(tmp_path)
    assert report.duplicate_images == [["a", "b"]]
    assert report.duplicate_captions == [["a", "b", "c"]]


def test_prepare_upscales_pixel_exactly_and_flattens_alpha(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    rgba = np.zeros((24, 24, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = 255
    rgba[0, 0] = (10, 20, 30, 0)  # fully transparent pixel storing a stray colour
    Image.fromarray(rgba, "RGBA").save(src / "t.png")
    report = check_dataset(src)
    prepared = prepare(report, tmp_path / "data", resolution=576, num_repeats=10, concept="bespoke_punk", default_caption="pixel art", background="#00ff00")
    out = np.asarray(Image.open(prepared.folder / "t.png"))
    assert prepared.folder.name == "10_bespoke_punk" and out.shape == (576, 576, 3)
    assert (out[:24, :24] == (0, 255, 0)).all() and (out[24:48, :24] == 200).all()
    assert (prepared.folder / "t.txt").read_text() == "pixel art\n"
    assert any("no caption" in w for w in prepared.warnings)
    back = np.asarray(Image.fromarray(out).resize((24, 24), Image.NEAREST))
    assert (back[1:, 1:] == 200).all()


def test_uneven_scale_warns(tmp_path: Path):
    make_punk(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("x")
    prepared = prepare(check_dataset(tmp_path), tmp_path / "data", resolution=512, num_repeats=1, concept="c", default_caption="x", background="#ffffff")
    assert any("not a multiple of 24" in w for w in prepared.warnings)
    assert Image.open(prepared.folder / "a.png").size == (512, 512)
