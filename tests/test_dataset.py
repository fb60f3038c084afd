"""Dataset intake on the real, messy Bespoke Punks and on constructed bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bespoke_kohya.dataset import check_dataset, dedupe_phrases, prepare, repeated_phrases
from bespoke_kohya.errors import UserError
from bespoke_kohya.images import open_image

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


# ------------------------------------------------------------------ issue 12: odd files


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width×height RGB but holds one tiny, wrong IDAT (a few hundred bytes)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))
    return path


def test_16bit_greyscale_keeps_its_grey_levels(tmp_path: Path):
    """Issue 12 item 4: an I;16 PNG with 15 grey levels came out of prepare as 2 colours (Pillow clips at 255)."""
    src = tmp_path / "src"
    src.mkdir()
    levels = (np.arange(24 * 24).reshape(24, 24) % 15 * 4369).astype(np.uint16)  # 0, 4369, … 61166 of 65535
    Image.fromarray(levels).save(src / "grey.png")
    assert Image.open(src / "grey.png").mode == "I;16"
    report = check_dataset(src)
    assert report.images[0].colours == 15
    prepared = prepare(report, tmp_path / "data", resolution=24, num_repeats=1, concept="c", default_caption="x", background="#ffffff")
    out = np.asarray(Image.open(prepared.folder / "grey.png"))
    expected = np.round(levels.astype(np.float64) / 257).astype(np.uint8)
    assert (out[..., 0] == expected).all() and (out[..., 1] == expected).all()
    assert len(np.unique(out[..., 0])) == 15


def test_other_modes_convert_with_their_transparency(tmp_path: Path):
    """Issue 12 item 4 (modes I, F, LA, P with transparency): each becomes the right RGB, or is refused in one line."""
    src = tmp_path / "src"
    src.mkdir()
    grey = np.full((24, 24), 100, np.uint8)
    alpha = np.full((24, 24), 255, np.uint8)
    alpha[0, 0] = 0
    Image.merge("LA", (Image.fromarray(grey), Image.fromarray(alpha))).save(src / "la.png")
    pal = Image.fromarray(np.ones((24, 24), np.uint8), "P")
    pal.putpalette([255, 0, 0, 0, 0, 255])  # index 0 red (transparent), 1 blue
    pal.putpixel((0, 0), 0)
    pal.save(src / "p.png", transparency=0)
    sixteen = np.full((24, 24), 30000, np.uint16)
    sixteen[0, 0] = 4369
    Image.fromarray(sixteen).save(src / "i16t.png", transparency=4369)
    report = check_dataset(src)
    assert {i.name: i.transparent for i in report.images} == {"i16t": True, "la": True, "p": True}
    prepared = prepare(report, tmp_path / "data", resolution=24, num_repeats=1, concept="c", default_caption="x", background="#00ff00")
    rgb = {n: np.asarray(Image.open(prepared.folder / f"{n}.png")) for n in ("la", "p", "i16t")}
    assert tuple(rgb["la"][0, 0]) == (0, 255, 0) and tuple(rgb["la"][1, 1]) == (100, 100, 100)
    assert tuple(rgb["p"][0, 0]) == (0, 255, 0) and tuple(rgb["p"][1, 1]) == (0, 0, 255)
    assert tuple(rgb["i16t"][0, 0]) == (0, 255, 0) and tuple(rgb["i16t"][1, 1]) == (117, 117, 117)  # 30000/65535*255
    # 32-bit integer (I) and float (F) images come from TIFFs: 16-bit range scaled, floats refused.
    Image.fromarray(np.full((24, 24), 65535, np.int32)).save(tmp_path / "i.tif")
    assert np.asarray(open_image(tmp_path / "i.tif").convert("RGB")).min() == 255
    Image.fromarray(np.full((24, 24), 0.5, np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(UserError, match=r"f.tif: floating-point image \(mode F\)"):
        open_image(tmp_path / "f.tif")


@pytest.mark.parametrize("side", [30000, 10000])
def test_huge_png_is_refused_from_its_header(tmp_path: Path, side: int):
    """Issue 12 (tracebacks): 30000² raised DecompressionBombError; 10000² was decoded before the size error."""
    make_punk(tmp_path / "ok.png")
    png_claiming(tmp_path / "huge.png", side, side)
    with pytest.raises(UserError) as e:
        check_dataset(tmp_path)
    message = str(e.value)
    assert "huge.png" in message and "at most 4096x4096" in message and "\n" not in message
    # The data is garbage: an attempt to decode it would have said "cannot read".
    assert "cannot read" not in message
    with pytest.raises(UserError, match="at most 4096x4096"):
        open_image(tmp_path / "huge.png")


def test_jpeg_named_png_is_refused(tmp_path: Path):
    """Issue 12 (accepted silently): a JPEG renamed .png was taken for pixel art."""
    make_punk(tmp_path / "ok.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(tmp_path / "photo.png", format="JPEG")
    with pytest.raises(UserError, match="photo.png: is a JPEG file, not PNG"):
        check_dataset(tmp_path)


def test_caption_extension_matches_any_case(tmp_path: Path):
    """Issue 12 (accepted silently): `A.TXT` was ignored and the image reported as uncaptioned."""
    make_punk(tmp_path / "A.png", seed=1)
    (tmp_path / "A.TXT").write_text("lad, red hair")
    make_punk(tmp_path / "b.png", seed=2)
    (tmp_path / "b.Txt").write_text("lady")
    report = check_dataset(tmp_path)
    assert report.missing_captions == []
    assert [i.caption for i in report.images] == ["lad, red hair", "lady"]


def test_caption_extension_cannot_be_an_image_extension(tmp_path: Path):
    """Issue 12 (misleading wording): `.png` as caption extension said 'not a PNG image or a .png caption'."""
    make_punk(tmp_path / "a.png")
    with pytest.raises(UserError, match="'.png' is an image extension; captions are text files"):
        check_dataset(tmp_path, ".png")


def test_split_heldout_is_sd_scripts_split_and_deterministic():
    from bespoke_kohya.dataset import split_heldout

    files = [f"{i:03d}.png" for i in range(184)]
    training, heldout = split_heldout(list(reversed(files)), 0.1, 42)
    assert len(heldout) == 18 and len(training) == 166 and not set(training) & set(heldout)
    assert (training, heldout) == split_heldout(files, 0.1, 42)  # input order does not matter (sd-scripts sorts)
    assert split_heldout(files, 0.1, 7)[1] != heldout
    assert split_heldout(files, 0, 42) == (files, [])
    assert split_heldout(files[:4], 0.1, 42)[1] == []  # round(0.4) = 0: nothing held out
