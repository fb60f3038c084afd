"""The ControlNet method's conditioning images: exact pixel edges of 24×24 art, white lines on black, on real punks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bespoke_kohya.engines.kohya.edges import edge_image, edge_map, edges_of, write_conditioning
from bespoke_kohya.images import load_rgb


def two_colour_art() -> np.ndarray:
    """Left half red, right half blue, a green pixel at (row 5, col 3)."""
    art = np.zeros((24, 24, 3), np.uint8)
    art[:, :12] = (200, 30, 30)
    art[:, 12:] = (30, 30, 200)
    art[5, 3] = (30, 200, 30)
    return art


def test_a_two_px_line_is_centred_on_each_boundary_and_nothing_else_is_white():
    lines = np.asarray(edge_map(two_colour_art(), 576, 2).convert("L")) == 255
    assert lines.shape == (576, 576)
    # Red | blue at art column 12 = x 288: pixels 287 and 288, on every row.
    assert lines[:, 287].all() and lines[:, 288].all() and not lines[:, 289].any() and not lines[300, 286]
    # The green pixel's cell is x 72..95, y 120..143: lines along x 72 and 96 and along y 120 and 144, 2 px each.
    assert set(np.nonzero(lines.any(axis=0))[0]) == {71, 287, 288} | set(range(72, 97))
    assert list(np.nonzero(lines[:, 80])[0]) == [119, 120, 143, 144]
    assert list(np.nonzero(lines[:, 72])[0]) == list(range(119, 145))
    assert lines.sum() == 2 * 576 + 4 * 2 * 24 - 4  # two full columns, four 2×24 segments, each of the 4 corners overlapping in 1 px


def test_edges_sit_only_on_art_pixel_boundaries_of_real_punks(punks_dir: Path):
    """Every white pixel at 576 px (24 per art pixel) touches a boundary of its cell where the neighbouring
    art pixel has another colour, and every such boundary is drawn along its whole length."""
    for png in sorted(punks_dir.glob("*.png"))[::23][:8]:
        art = load_rgb(png)
        lines = np.asarray(edge_map(art, 576, 2).convert("L")) == 255
        expected = np.zeros((576, 576), bool)
        for y in range(24):
            for x in range(24):
                ys, xs = slice(24 * y, 24 * y + 24), slice(24 * x, 24 * x + 24)
                if x > 0 and (art[y, x] != art[y, x - 1]).any():
                    expected[ys, 24 * x - 1: 24 * x + 1] = True
                if y > 0 and (art[y, x] != art[y - 1, x]).any():
                    expected[24 * y - 1: 24 * y + 1, xs] = True
        assert (lines == expected).all(), png.name
        inner = np.ones((24, 24), bool)
        inner[[0, 23], :] = inner[:, [0, 23]] = False  # a cell's outermost ring is where lines may fall
        assert not lines[np.tile(inner, (24, 24))].any(), png.name


@pytest.mark.parametrize(("width", "covered"), [(1, [288]), (2, [287, 288]), (3, [287, 288, 289]), (4, [286, 287, 288, 289])])
def test_line_width_grows_about_the_boundary(width: int, covered: list[int]):
    lines = np.asarray(edge_map(two_colour_art(), 576, width).convert("L"))[300] == 255  # a row away from the green pixel
    assert list(np.nonzero(lines)[0]) == covered


def test_white_lines_on_black_rgb_and_the_image_border_is_no_edge():
    im = edge_map(two_colour_art(), 96, 2)
    assert im.mode == "RGB" and im.size == (96, 96)
    values = np.unique(np.asarray(im))
    assert list(values) == [0, 255]
    flat = np.zeros((24, 24, 3), np.uint8)
    assert not np.asarray(edge_map(flat, 96, 8)).any()  # a solid image has no edge, not even round its border


def test_a_non_square_sample_size_and_uneven_pixels_follow_the_nearest_upscale():
    art = two_colour_art()
    im = edge_map(art, (128, 64), 1)
    assert im.size == (128, 64)
    upscaled = np.asarray(Image.fromarray(art).resize((512, 512), Image.NEAREST))
    change = np.nonzero((upscaled[300, 1:] != upscaled[300, :-1]).any(axis=-1))[0] + 1
    row = np.asarray(edge_map(art, 512, 1).convert("L"))[300] == 255
    assert list(np.nonzero(row)[0]) == list(change)  # 21.33 px cells: the line is where NEAREST changes colour


def test_width_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1 px"):
        edges_of(np.zeros((4, 4, 3), np.uint8), 0)


def test_write_conditioning_names_each_map_like_its_image(tmp_path: Path, punks_dir: Path):
    from bespoke_kohya.dataset import upscale

    images = []
    for png in sorted(punks_dir.glob("*.png"))[:3]:
        path = tmp_path / "data" / png.name
        path.parent.mkdir(exist_ok=True)
        upscale(Image.fromarray(load_rgb(png)), 96).save(path)
        images.append(path)
    out = tmp_path / "cond"
    out.mkdir()
    assert write_conditioning(images, out, 2) == 3
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in images)
    for path in images:  # the same picture as the sampler's edge map of the same art
        assert (np.asarray(Image.open(out / path.name)) == np.asarray(edge_image(edges_of(load_rgb(path), 2)))).all()
