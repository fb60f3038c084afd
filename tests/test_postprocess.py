"""Post-processing: known 24×24 answers rendered large and degraded, then recovered."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bespoke_kohya.colour import delta_e, rgb_to_lab, unique_colours
from bespoke_kohya.errors import UserError
from bespoke_kohya.images import load_rgb
from bespoke_kohya.postprocess import (
    Grid,
    PostprocessOptions,
    cap_colours,
    dataset_palette,
    detect_grid,
    downscale_grid,
    downscale_nearest,
    estimate_noise,
    merge_close_colours,
    postprocess,
    postprocess_files,
    snap_to_palette,
)


# ----------------------------------------------------------------------------- helpers


def palette_art(seed: int = 0, colours: int = 12) -> np.ndarray:
    """A random 24×24 image drawn from a small random palette (every cell independent)."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (colours, 3), dtype=np.uint8)
    return palette[rng.integers(0, colours, (24, 24))]


def render(art: np.ndarray, size: int) -> np.ndarray:
    """NEAREST upscale to size×size, the way training images are made."""
    return np.asarray(Image.fromarray(art).resize((size, size), Image.NEAREST))


def shifted(arr: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Move the picture by (dx, dy) px, filling the uncovered edge with the border colour."""
    h, w = arr.shape[:2]
    p = max(abs(dx), abs(dy))
    padded = np.pad(arr, ((p, p), (p, p), (0, 0)), mode="edge")
    return padded[p - dy : p - dy + h, p - dx : p - dx + w]


def rescaled(art: np.ndarray, size: int, factor: float) -> np.ndarray:
    """Render at size·factor then centre-crop back to size×size (the art spills over the edge)."""
    big = render(art, round(size * factor))
    start = (big.shape[0] - size) // 2
    return big[start : start + size, start : start + size]


def noisy(arr: np.ndarray, sigma: float = 8.0, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(arr + rng.normal(0, sigma, arr.shape), 0, 255).round().astype(np.uint8)


def exact_share(out: Image.Image, art: np.ndarray) -> float:
    return float((np.asarray(out)[..., :3] == art).all(axis=-1).mean())


def within_share(out: Image.Image, art: np.ndarray, limit: float = 3.0) -> float:
    return float((delta_e(rgb_to_lab(np.asarray(out)[..., :3]), rgb_to_lab(art)) <= limit).mean())


# ----------------------------------------------------------------------------- grid


@pytest.mark.parametrize("size", [512, 576])
def test_grid_recovers_clean_render_exactly(size: int) -> None:
    art = palette_art(0)
    out, grid = downscale_grid(Image.fromarray(render(art, size)))
    assert out.size == (24, 24)
    assert exact_share(out, art) == 1.0
    assert abs(grid.pitch_x - size / 24) < 0.1 and abs(grid.pitch_y - size / 24) < 0.1
    assert grid.score > 0.95


@pytest.mark.parametrize("size", [512, 576])
def test_grid_recovers_shifted_render(size: int) -> None:
    art = palette_art(1)
    out, grid = downscale_grid(Image.fromarray(shifted(render(art, size), 7, -7)))
    assert exact_share(out, art) >= 0.99
    assert abs(grid.pitch_x - size / 24) < 0.1
    # The 7 px shift is found as the grid's offset on both axes.
    assert abs(grid.offset_x - 7) < 1.0 and abs(grid.offset_y + 7) < 1.0


@pytest.mark.parametrize("size", [512, 576])
def test_grid_recovers_scale_error(size: int) -> None:
    art = palette_art(2)
    out, grid = downscale_grid(Image.fromarray(rescaled(art, size, 1.03)))
    truth = round(size * 1.03) / 24
    assert abs(grid.pitch_x - truth) < 0.1 and abs(grid.pitch_y - truth) < 0.1
    assert exact_share(out, art) >= 0.99


@pytest.mark.parametrize("size", [512, 576])
def test_grid_recovers_scale_error_plus_shift(size: int) -> None:
    art = palette_art(2)
    degraded = Image.fromarray(shifted(rescaled(art, size, 1.03), 7, 7))
    out, grid = downscale_grid(degraded)
    assert abs(grid.pitch_x - round(size * 1.03) / 24) < 0.1
    assert exact_share(out, art) >= 0.99
    # Drift and shift add up to more than half a cell at one edge: the naive resize
    # samples the neighbouring cell there.
    assert exact_share(downscale_nearest(degraded), art) < 0.97


@pytest.mark.parametrize("size", [512, 576])
def test_grid_under_noise_stays_within_delta_e_3(size: int) -> None:
    art = palette_art(3)
    degraded = Image.fromarray(noisy(render(art, size)))
    out, _ = downscale_grid(degraded)
    assert within_share(out, art) >= 0.99
    # The baseline it replaces keeps the noise of the one pixel it samples.
    assert within_share(downscale_nearest(degraded), art) < 0.6


def test_detect_grid_accepts_arrays_and_scores_clean_above_degraded() -> None:
    art = palette_art(4)
    clean = detect_grid(render(art, 512))
    blurred = Image.fromarray(render(art, 512)).resize((96, 96), Image.BILINEAR).resize((512, 512), Image.BICUBIC)
    soft = detect_grid(blurred)
    assert clean.score > 0.95
    assert soft.score < clean.score


def test_detect_grid_on_flat_image_falls_back_to_nominal_grid() -> None:
    grid = detect_grid(np.full((480, 480, 3), 128, np.uint8))
    assert grid == Grid(20.0, 20.0, 0.0, 0.0, 0.0)


def test_grid_to_dict_is_json_ready() -> None:
    d = Grid(21.333333, 21.3, -0.5, 7.25, 0.99).to_dict()
    assert d == {"pitch_x": 21.3333, "pitch_y": 21.3, "offset_x": -0.5, "offset_y": 7.25, "score": 0.99}


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
@pytest.mark.parametrize("method", ["grid", "nearest"])
def test_24px_input_passes_through_unchanged(mode: str, method: str) -> None:
    im = Image.fromarray(palette_art(5)).convert(mode)
    out, grid = postprocess(im, PostprocessOptions(method=method))
    assert out.mode == mode
    assert np.array_equal(np.asarray(out), np.asarray(im))
    if method == "grid":
        assert grid is not None and grid.pitch_x == 1.0 and grid.pitch_y == 1.0


def test_nearest_is_the_documented_pil_resize() -> None:
    big = Image.fromarray(noisy(render(palette_art(6), 512)))
    out, grid = postprocess(big, PostprocessOptions(method="nearest", merge=False))
    assert grid is None
    assert np.array_equal(np.asarray(out), np.asarray(big.resize((24, 24), Image.NEAREST)))


def test_alpha_is_kept_and_recovered() -> None:
    art = palette_art(7)
    alpha = np.full((24, 24), 255, np.uint8)
    alpha[:, :6] = 0  # a transparent strip, as a sprite with no background would have
    rgba = np.dstack([art, alpha])
    big = Image.fromarray(rgba, "RGBA").resize((512, 512), Image.NEAREST)
    out, _ = postprocess(big, PostprocessOptions(max_colors=4, palette=np.array([[0, 0, 0]], np.uint8)))
    assert out.mode == "RGBA" and out.size == (24, 24)
    assert np.array_equal(np.asarray(out)[..., 3], alpha)


# ----------------------------------------------------------------------------- colours


def test_snap_to_palette_snaps_near_colours_and_leaves_far_ones() -> None:
    arr = np.zeros((2, 2, 3), np.uint8)
    arr[0, 0] = (200, 30, 30)  # 1 level from the palette's red: snapped
    arr[0, 1] = (20, 200, 20)  # far from everything in the palette: kept
    arr[1, :] = (10, 10, 200)  # exactly a palette colour: unchanged
    palette = np.array([[201, 30, 30], [10, 10, 200], [255, 255, 0]], np.uint8)
    out = np.asarray(snap_to_palette(Image.fromarray(arr), palette, max_delta_e=4.0))
    assert tuple(out[0, 0]) == (201, 30, 30)
    assert tuple(out[0, 1]) == (20, 200, 20)
    assert (out[1] == (10, 10, 200)).all()


def test_snap_threshold_is_respected() -> None:
    arr = np.array([[[200, 30, 30]]], np.uint8)
    palette = np.array([[190, 30, 30]], np.uint8)
    gap = float(delta_e(rgb_to_lab(arr[0, 0]), rgb_to_lab(palette[0])))
    assert tuple(np.asarray(snap_to_palette(Image.fromarray(arr), palette, gap - 0.1))[0, 0]) == (200, 30, 30)
    assert tuple(np.asarray(snap_to_palette(Image.fromarray(arr), palette, gap + 0.1))[0, 0]) == (190, 30, 30)


def test_merge_close_colours_merges_noise_but_not_distinct_shades() -> None:
    arr = np.zeros((4, 6, 3), np.uint8)
    arr[:, :3] = (100, 100, 100)
    arr[0, 0] = (101, 100, 100)  # noise around grey
    arr[1, 1] = (99, 101, 100)
    arr[:, 3:] = (100, 160, 100)  # a clearly different green
    out = np.asarray(merge_close_colours(Image.fromarray(arr), 3.0))
    assert (out[:, :3] == (100, 100, 100)).all()
    assert (out[:, 3:] == (100, 160, 100)).all()
    assert len(unique_colours(out)) == 2


def test_cap_colours_caps_and_leaves_small_palettes_alone() -> None:
    rich = Image.fromarray(palette_art(8, colours=40))
    capped = cap_colours(rich, 8)
    assert len(unique_colours(np.asarray(capped))) <= 8
    few = Image.fromarray(palette_art(9, colours=6))
    assert np.array_equal(np.asarray(cap_colours(few, 8)), np.asarray(few))
    with pytest.raises(UserError, match="max_colors.*0"):
        cap_colours(few, 0)


def test_dataset_palette_is_the_union_of_colours(tmp_path: Path) -> None:
    a, b = palette_art(10, colours=5), palette_art(11, colours=7)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).convert("RGBA").save(tmp_path / "b.png")
    (tmp_path / "a.txt").write_text("caption, not an image")
    pal = dataset_palette(tmp_path)
    expected = np.unique(np.concatenate([a.reshape(-1, 3), b.reshape(-1, 3)]), axis=0)
    assert pal.dtype == np.uint8 and np.array_equal(pal, expected)
    with pytest.raises(UserError, match="not found"):
        dataset_palette(tmp_path / "missing")


# ----------------------------------------------------------------------------- pipeline


def test_auto_merge_only_on_noisy_renders() -> None:
    art = palette_art(12)
    clean = Image.fromarray(render(art, 512))
    dirty = Image.fromarray(noisy(render(art, 512)))
    assert estimate_noise(clean) == 0.0
    assert 5.0 < estimate_noise(dirty) < 11.0
    out_clean, _ = postprocess(clean, PostprocessOptions())
    assert exact_share(out_clean, art) == 1.0
    merged, _ = postprocess(dirty, PostprocessOptions(merge="auto"))
    unmerged, _ = postprocess(dirty, PostprocessOptions(merge=False))
    # Noise splits each of the 12 drawn colours into many; merging gathers them back.
    assert len(unique_colours(np.asarray(merged))) < len(unique_colours(np.asarray(unmerged)))
    assert len(unique_colours(np.asarray(merged))) <= 16
    assert exact_share(merged, art) > exact_share(unmerged, art)


def test_bad_options_and_sizes_raise_user_errors() -> None:
    big = Image.fromarray(render(palette_art(13), 512))
    with pytest.raises(UserError, match="method.*'lanczos'"):
        postprocess(big, PostprocessOptions(method="lanczos"))  # type: ignore[arg-type]
    with pytest.raises(UserError, match="16×16"):
        postprocess(Image.new("RGB", (16, 16)), PostprocessOptions())
    with pytest.raises(UserError, match="512×300.*not roughly square"):
        postprocess(Image.new("RGB", (512, 300)), PostprocessOptions())


def test_postprocess_files_writes_result_and_preview(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    arts = [palette_art(20 + i) for i in range(3)]
    paths = []
    for i, art in enumerate(arts):
        paths.append(src / f"sample {i}.png")
        Image.fromarray(render(art, 512)).save(paths[-1])
    out_dir = tmp_path / "out"
    records = postprocess_files(paths, out_dir, PostprocessOptions(), progress=False)
    assert [r["source"] for r in records] == [str(p) for p in paths]
    for art, rec in zip(arts, records):
        small, preview = Image.open(rec["output"]), Image.open(rec["preview"])
        assert small.size == (24, 24) and preview.size == (192, 192)
        assert np.array_equal(np.asarray(small), art)
        assert np.array_equal(np.asarray(preview), np.asarray(Image.fromarray(art).resize((192, 192), Image.NEAREST)))
        assert rec["grid"]["pitch_x"] == pytest.approx(512 / 24, abs=0.1)
        assert rec["merged"] is False
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        [f"sample {i}.png" for i in range(3)] + [f"sample {i}.x8.png" for i in range(3)]
    )


def test_postprocess_files_names_corrupt_and_tiny_files(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(render(palette_art(30), 576)).save(good)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (12, 12)).save(tiny)
    out_dir = tmp_path / "out"
    with pytest.raises(UserError, match="corrupt.png"):
        postprocess_files([good, corrupt], out_dir, PostprocessOptions(), progress=False)
    assert not out_dir.exists()  # every input is checked before anything is written (issue 26 item 4)
    with pytest.raises(UserError, match=r"tiny.png.*12×12"):
        postprocess_files([tiny], out_dir, PostprocessOptions(), progress=False)
    with pytest.raises(UserError, match="missing.png.*not found"):
        postprocess_files([tmp_path / "missing.png"], out_dir, PostprocessOptions(), progress=False)


def test_postprocess_files_refuses_to_overwrite_its_input(tmp_path: Path) -> None:
    small = tmp_path / "punk.png"
    Image.fromarray(palette_art(31)).save(small)
    with pytest.raises(UserError, match="overwrite an input"):
        postprocess_files([small], tmp_path, PostprocessOptions(), progress=False)
    (tmp_path / "b").mkdir()
    other = tmp_path / "b" / "punk.png"
    Image.fromarray(palette_art(32)).save(other)
    with pytest.raises(UserError, match="same file name"):
        postprocess_files([small, other], tmp_path / "out", PostprocessOptions(), progress=False)


def test_progress_bar_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(render(palette_art(33), 512)).save(path)
    records = postprocess_files([path], tmp_path / "out", PostprocessOptions(), progress=True)
    assert len(records) == 1 and capsys.readouterr().out == ""


# ----------------------------------------------------------------------------- real data


def test_real_punks_recovered_from_clean_and_noisy_renders(punks_dir: Path) -> None:
    pngs = sorted(punks_dir.glob("*.png"))[::30][:6]
    assert pngs, f"no PNGs in {punks_dir}"
    for png in pngs:
        art = load_rgb(png)
        for size in (512, 576):
            out, _ = postprocess(Image.fromarray(render(art, size)), PostprocessOptions())
            assert exact_share(out, art) == 1.0, png.name
            degraded = noisy(shifted(render(art, size), 5, 3), seed=len(png.name))
            out, grid = postprocess(Image.fromarray(degraded), PostprocessOptions())
            assert within_share(out, art) >= 0.99, (png.name, size, grid)


# ----------------------------------------------------------------------------- issue 12: output folder and odd inputs


def test_existing_files_in_out_are_never_overwritten(tmp_path: Path) -> None:
    """Issue 12 item 5: `postprocess --out DIR` overwrote unrelated files in DIR that shared an output name."""
    src = tmp_path / "a.png"
    Image.fromarray(render(palette_art(40), 512)).save(src)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "a.x8.png").write_bytes(b"someone else's preview")
    with pytest.raises(UserError) as e:
        postprocess_files([src], out_dir, PostprocessOptions(), progress=False)
    assert "a.x8.png: already exists; postprocess never overwrites" in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.name for p in out_dir.iterdir()) == ["a.x8.png"]
    assert (out_dir / "a.x8.png").read_bytes() == b"someone else's preview"


def test_a_file_appearing_meanwhile_is_not_replaced(tmp_path: Path) -> None:
    """Issue 12 item 5: the final write itself never replaces a file (another process may write the same name meanwhile);
    issue 26 item 4: and what this call linked in before the clash goes again (all or none)."""
    from bespoke_kohya.postprocess import _write_outputs

    (tmp_path / "other.txt").write_bytes(b"a file already there")
    target = tmp_path / "b.png"
    target.write_bytes(b"theirs")
    with pytest.raises(UserError, match="b.png: already exists"):
        _write_outputs(tmp_path, [(tmp_path / "a.png", Image.fromarray(palette_art(41))), (target, Image.fromarray(palette_art(42)))])
    assert target.read_bytes() == b"theirs" and sorted(p.name for p in tmp_path.iterdir()) == ["b.png", "other.txt"]


def test_a_truncated_input_writes_nothing_and_the_rerun_without_it_works(tmp_path: Path) -> None:
    """Issue 26 item 4: `postprocess good1.png good2.png truncated.png --out O` exited 2 having written 4 files into O,
    so the rerun without the bad file was refused ("already exists")."""
    goods = []
    for i in (1, 2):
        goods.append(tmp_path / f"good{i}.png")
        Image.fromarray(render(palette_art(50 + i), 512)).save(goods[-1])
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(goods[0].read_bytes()[:200])
    for out_dir in (tmp_path / "O", tmp_path / "existing"):
        if out_dir.name == "existing":
            out_dir.mkdir()
            (out_dir / "notes.txt").write_text("mine", encoding="utf-8")
        before = sorted(p.name for p in out_dir.iterdir()) if out_dir.exists() else None
        with pytest.raises(UserError, match="truncated.png: cannot read this image") as err:
            postprocess_files([*goods, truncated], out_dir, PostprocessOptions(), progress=False)
        assert "\n" not in str(err.value)
        assert (sorted(p.name for p in out_dir.iterdir()) if out_dir.exists() else None) == before  # nothing written, no temporary left
        records = postprocess_files(goods, out_dir, PostprocessOptions(), progress=False)
        assert len(records) == 2 and {"good1.png", "good1.x8.png", "good2.png", "good2.x8.png"} <= {p.name for p in out_dir.iterdir()}


def test_out_that_is_a_file_and_refusals_leave_no_folder(tmp_path: Path) -> None:
    """Issue 12: `--out FILE` raised FileExistsError; a refused postprocess left an empty output folder."""
    src = tmp_path / "a.png"
    Image.fromarray(render(palette_art(42), 512)).save(src)
    with pytest.raises(UserError, match="--out is an existing file, not a folder"):
        postprocess_files([src], src, PostprocessOptions(), progress=False)
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (12, 12)).save(tiny)
    with pytest.raises(UserError, match="12×12"):
        postprocess_files([tiny], tmp_path / "new" / "out", PostprocessOptions(), progress=False)
    assert not (tmp_path / "new").exists()


def test_noise_is_flagged_as_not_pixel_art(tmp_path: Path) -> None:
    """Issue 12 (accepted silently): a 512×512 noise image given to postprocess was taken for pixel art."""
    rng = np.random.default_rng(3)
    noise = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(noise)
    art = tmp_path / "art.png"
    Image.fromarray(noisy(shifted(render(palette_art(43), 512), 5, 3), sigma=16)).save(art)
    for method in ("grid", "nearest"):
        records = postprocess_files([noise, art], tmp_path / method, PostprocessOptions(method=method), progress=False)
        assert "noise.png: does not look like upscaled pixel art" in records[0]["warning"]
        assert records[1]["warning"] is None  # heavily degraded art still passes
