"""Style metrics: constructed images with known answers, the recommendation, and the real set.

Synthetic "punks" (solid background, outlined head, eyes, hair) stand in for a training
set where the answer has to be exact; the last tests re-measure pixel-facts' numbers on
the real Bespoke Punks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from bespoke_kohya import metrics as M
from bespoke_kohya.colour import delta_e, rgb_to_lab
from bespoke_kohya.errors import UserError

DATASET = Path(os.environ.get("BESPOKE_DATASET", Path(__file__).resolve().parents[2] / "shared/datasets/bespoke-punks-24"))


def synthetic_punk(seed: int) -> np.ndarray:
    """A 24×24 punk-like image: solid background, head with a black outline, eyes, hair."""
    rng = np.random.default_rng(seed)
    img = np.empty((24, 24, 3), np.uint8)
    img[:] = rng.integers(40, 256, 3)
    top, left = int(rng.integers(4, 8)), int(rng.integers(5, 9))
    bottom, right = 24, left + int(rng.integers(9, 12))
    img[top:bottom, left:right] = 0  # outline
    img[top + 1 : bottom, left + 1 : right - 1] = rng.integers(90, 256, 3)  # skin
    hair = rng.integers(0, 256, (2, 3))
    img[top + 1 : top + 3, left + 1 : right - 1] = hair[0]
    img[top + 1, left + 2 : right - 2 : 2] = hair[1]
    eye = top + 6
    img[eye, left + 3] = img[eye, right - 4] = rng.integers(0, 256, 3)
    img[eye + 4, left + 4 : right - 4] = (150, 40, 40)  # mouth
    return img


def upscale(art: np.ndarray, size: int, resample: int = Image.NEAREST) -> np.ndarray:
    return np.asarray(Image.fromarray(art).resize((size, size), resample))


@pytest.fixture(scope="module")
def synth_ref() -> M.Reference:
    """30 synthetic punks: enough for the percentile-based copy threshold."""
    return M.Reference.from_images([f"punk_{i:02d}" for i in range(30)], [synthetic_punk(i) for i in range(30)])


# ------------------------------------------------------------------ per-image metrics


def test_two_colour_image_has_two_colours() -> None:
    img = np.zeros((24, 24, 3), np.uint8)
    img[:, 12:] = (200, 30, 30)
    assert M.colour_count(img) == 2
    assert M.perceptual_colour_count(img) == 2


def test_shades_closer_than_delta_e_3_count_as_one_perceptual_colour() -> None:
    img = np.full((24, 24, 3), (100, 150, 200), np.uint8)
    img[:4] = (101, 151, 201)  # a shade the eye cannot tell apart
    img[-4:] = (240, 20, 20)
    assert delta_e(rgb_to_lab(np.array([100, 150, 200], np.uint8)), rgb_to_lab(np.array([101, 151, 201], np.uint8))) < 3
    assert M.colour_count(img) == 3
    assert M.perceptual_colour_count(img) == 2


def test_solid_border_and_known_background_area() -> None:
    img = np.full((24, 24, 3), (20, 120, 220), np.uint8)
    img[8:18, 6:16] = (250, 200, 150)  # a 10×10 figure inside
    img[0, 0] = img[0, 0]  # border untouched
    assert M.border_solidity(img) == 1.0
    assert M.background_area(img) == pytest.approx(1 - 100 / 576)


def test_background_stops_at_the_figure_and_ignores_enclosed_same_colour() -> None:
    bg = (20, 120, 220)
    img = np.full((24, 24, 3), bg, np.uint8)
    img[6:18, 6:18] = 0  # figure outline block
    img[10:14, 10:14] = bg  # background colour enclosed by the figure: not background
    img[0, :4] = (255, 255, 255)  # 4 of the 92 border pixels differ
    assert M.border_solidity(img) == pytest.approx(88 / 92)
    assert M.background_area(img) == pytest.approx((576 - 144 - 4) / 576)


def test_checkerboard_is_all_orphans_and_solid_is_none() -> None:
    yy, xx = np.indices((24, 24))
    img = np.where(((yy + xx) % 2 == 0)[..., None], np.uint8(255), np.uint8(0)).astype(np.uint8).repeat(3, axis=2)
    assert M.orphan_share(img) == 1.0
    assert M.orphan_share(np.zeros((24, 24, 3), np.uint8)) == 0.0
    one = np.zeros((24, 24, 3), np.uint8)
    one[5, 5] = 255
    assert M.orphan_share(one) == pytest.approx(1 / 576)


def test_dark_outline_share() -> None:
    img = np.full((24, 24, 3), (80, 200, 120), np.uint8)
    img[6:24, 6:18] = 0  # black outline ring…
    img[7:24, 7:17] = (230, 190, 160)  # …around light skin
    assert M.dark_outline(img) == 1.0
    img[6:24, 6:18] = (230, 190, 160)  # no outline
    assert M.dark_outline(img) == 0.0
    assert M.dark_outline(np.zeros((24, 24, 3), np.uint8)) == 0.0  # all background: no figure edge


def test_palette_adherence_one_for_palette_colours_and_zero_for_far_ones() -> None:
    palette = np.array([[0, 0, 0], [255, 255, 255], [200, 30, 30]], np.uint8)
    lab = rgb_to_lab(palette)
    rng = np.random.default_rng(0)
    img = palette[rng.integers(0, 3, (24, 24))]
    assert M.palette_adherence(img, lab) == 1.0
    far = np.full((24, 24, 3), (30, 200, 40), np.uint8)
    assert M.palette_adherence(far, lab) == 0.0
    half = img.copy()
    half[:12] = (30, 200, 40)
    assert M.palette_adherence(half, lab) == 0.5


def test_identical_to_a_training_image_is_a_flagged_copy(synth_ref: M.Reference) -> None:
    out = M.image_metrics(synthetic_punk(7), synth_ref)
    assert out["nearest_distance"] == 0.0
    assert out["nearest_name"] == "punk_07"
    assert out["near_copy"] is True
    assert out["palette_adherence"] == 1.0


def test_a_new_image_is_not_a_copy(synth_ref: M.Reference) -> None:
    out = M.image_metrics(synthetic_punk(1000), synth_ref)
    assert out["nearest_distance"] > synth_ref.copy_threshold
    assert out["near_copy"] is False


def test_copy_threshold_comes_from_the_leave_one_out_distribution(synth_ref: M.Reference) -> None:
    d = synth_ref.distributions["nearest_distance"]
    assert len(d) == 30 and d.min() > 0  # itself excluded, or every distance would be 0
    # these synthetic punks have no near-duplicates: their 5th percentile is far above the cap
    assert np.percentile(d, 5) > M.MAX_COPY_THRESHOLD
    assert synth_ref.copy_threshold == M.MAX_COPY_THRESHOLD


def test_near_duplicate_series_set_the_threshold_above_zero() -> None:
    base = [synthetic_punk(i) for i in range(24)]
    variants = []
    for i in range(4):  # "-2" variants: the same punk with a few pixels changed
        v = base[i].copy()
        v[0, :5] = (255, 0, 255)
        variants.append(v)
    ref = M.Reference.from_images([f"p{i}" for i in range(28)], base + variants)
    assert ref.copy_threshold == pytest.approx(np.percentile(ref.distributions["nearest_distance"], 5))
    assert 0 < ref.copy_threshold <= 5 / 576 + 1e-9
    assert M.image_metrics(variants[0], ref)["near_copy"] is True


def test_small_reference_uses_the_fallback_threshold() -> None:
    ref = M.Reference.from_images(["a", "b"], [synthetic_punk(0), synthetic_punk(1)])
    assert ref.copy_threshold == M.FALLBACK_COPY_THRESHOLD
    assert ref.nearest == ["b", "a"]


def test_palette_adherence_of_training_images_is_against_the_others() -> None:
    a = np.full((24, 24, 3), (10, 10, 10), np.uint8)
    b = np.full((24, 24, 3), (10, 10, 10), np.uint8)
    b[:6] = (250, 20, 200)  # a colour no other image uses
    ref = M.Reference.from_images(["a", "b"], [a, b])
    assert ref.distributions["palette_adherence"].tolist() == [1.0, 0.75]
    assert M.image_metrics(b, ref)["palette_adherence"] == 1.0  # an output is judged against the whole palette


# ------------------------------------------------------------------ grid metrics on full-size renders


@pytest.mark.parametrize("size", [512, 576])
def test_blurred_upscale_has_lower_grid_alignment_than_nearest(size: int) -> None:
    art = synthetic_punk(3)
    clean = upscale(art, size)
    blurred = np.asarray(Image.fromarray(clean).filter(ImageFilter.GaussianBlur(size / 48)))
    bicubic = upscale(art, size, Image.BICUBIC)
    g_clean, g_blur, g_bicubic = (M.grid_alignment(x) for x in (clean, blurred, bicubic))
    assert g_clean == pytest.approx(1.0, abs=1e-6)
    assert g_blur < 0.5 and g_bicubic < 0.5
    assert M.cell_flatness(clean) == 1.0
    assert M.cell_flatness(blurred) < 0.9


def test_grid_alignment_keeps_noise_apart_from_blur_and_misalignment() -> None:
    rng = np.random.default_rng(0)
    clean = upscale(synthetic_punk(4), 512)
    noisy = np.clip(clean + rng.normal(0, 8, clean.shape), 0, 255).astype(np.uint8)
    pitch = 512 / 24
    half_off = {"pitch_x": pitch, "pitch_y": pitch, "offset_x": pitch / 2, "offset_y": pitch / 2}
    assert M.grid_alignment(noisy) > 0.5  # edges still on the grid…
    assert M.cell_flatness(noisy) < 0.3  # …but cells are not flat
    assert M.grid_alignment(clean, half_off) < 0.05  # the grid says the edges are mid-cell


def test_grid_alignment_uses_the_given_grid_of_a_shifted_render() -> None:
    clean = upscale(synthetic_punk(5), 576)
    shifted = np.roll(clean, (5, 7), axis=(0, 1))
    grid = {"pitch_x": 24.0, "pitch_y": 24.0, "offset_x": 7.0, "offset_y": 5.0}
    assert M.grid_alignment(shifted, grid) == pytest.approx(1.0, abs=1e-6)
    assert M.grid_alignment(shifted) < 0.1  # the nominal grid is 5–7 px off


def test_grid_metrics_not_applicable_without_a_full_size_render(synth_ref: M.Reference) -> None:
    art = synthetic_punk(8)
    out = M.image_metrics(art, synth_ref)
    assert out["grid_alignment"] is None and out["cell_flatness"] is None
    assert M.grid_alignment(art) is None  # a 24×24-only output (native model)
    full = M.image_metrics(art, synth_ref, full=upscale(art, 512), grid={"pitch_x": 512 / 24, "pitch_y": 512 / 24, "offset_x": 0, "offset_y": 0, "score": 0.9})
    assert full["grid_alignment"] == pytest.approx(1.0, abs=1e-6) and full["cell_flatness"] == 1.0


def test_bad_grid_value_names_the_field() -> None:
    full = upscale(synthetic_punk(0), 512)
    with pytest.raises(UserError, match=r"grid\.pitch_x: .*'abc'"):
        M.grid_alignment(full, {"pitch_x": "abc", "pitch_y": 21.3, "offset_x": 0, "offset_y": 0})
    with pytest.raises(UserError, match=r"grid\.pitch_y: must be a finite positive number, got 0"):
        M.grid_alignment(full, {"pitch_x": 21.3, "pitch_y": 0, "offset_x": 0, "offset_y": 0})


# ------------------------------------------------------------------ diversity and epochs


def test_identical_seeds_have_zero_diversity() -> None:
    a, b = synthetic_punk(1), synthetic_punk(2)
    assert M.diversity([a, a, a]) == 0.0
    assert M.diversity([a, b]) == pytest.approx(float((delta_e(rgb_to_lab(a), rgb_to_lab(b)) > 5).mean()))
    # grouped by prompt: each prompt's seeds are identical, although the prompts differ
    assert M.diversity([a, a, b, b], groups=["p1", "p1", "p2", "p2"]) == 0.0
    assert M.diversity([a]) is None and M.diversity([]) is None


def test_epoch_metrics_are_json_ready_and_count_copies(synth_ref: M.Reference) -> None:
    images = [synthetic_punk(3), synthetic_punk(500), synthetic_punk(501), synthetic_punk(9)]
    result = M.epoch_metrics(images, synth_ref, groups=["a", "a", "b", "b"])
    json.dumps(result)  # no numpy scalars
    assert result["n"] == 4
    assert result["values"]["near_copies"] == 2
    assert [(c["index"], c["nearest"]) for c in result["copies"]] == [(0, "punk_03"), (3, "punk_09")]
    assert set(result["values"]) == set(M.METRICS)
    assert result["values"]["grid_alignment"] is None and result["grid"] is None
    assert result["copy_share"] == 0.5


def test_empty_epoch_has_no_numbers(synth_ref: M.Reference) -> None:
    result = M.epoch_metrics([], synth_ref)
    assert result["n"] == 0 and result["quality"] is None
    assert all(v is None for v in result["values"].values())


def test_wrong_size_output_is_refused_with_its_shape(synth_ref: M.Reference) -> None:
    with pytest.raises(UserError, match=r"output image 1: is 32×32, the training images are 24×24"):
        M.epoch_metrics([synthetic_punk(0), np.zeros((32, 32, 3), np.uint8)], synth_ref)
    with pytest.raises(UserError, match=r"expected uint8 pixels, got float64"):
        M.image_metrics(np.zeros((24, 24, 3)), synth_ref)


def test_missing_dataset_folder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="training folder not found"):
        M.Reference.from_dataset(tmp_path / "nope")
    with pytest.raises(UserError, match=r"no \.png images"):
        M.Reference.from_dataset(tmp_path)


def test_every_metric_is_explained_in_one_line() -> None:
    for key, info in M.METRICS.items():
        assert info.key == key and info.label and info.better in ("higher", "lower", "closer_to_reference")
        assert "\n" not in info.explanation and 20 < len(info.explanation) < 160, key
    assert set(M.STYLE_KEYS) <= set(M.METRICS)


def test_typicality() -> None:
    dist = np.arange(1, 101, dtype=float)
    assert M.typicality(50.5, dist) == 1.0
    assert M.typicality(200, dist) == 0.0 and M.typicality(-5, dist) == 0.0
    assert M.typicality(200, dist, "higher") == 1.0
    assert M.typicality(-5, dist, "lower") == 1.0
    assert 0.0 < M.typicality(25, dist) < M.typicality(40, dist) < 1.0
    assert M.typicality(None, dist) is None


# ------------------------------------------------------------------ the recommendation


def noisy(art: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(art + rng.normal(0, 30, art.shape), 0, 255).astype(np.uint8)


def test_the_style_evidence_prefers_the_clean_new_epoch_and_flags_noise_and_copies(synth_ref: M.Reference) -> None:
    # What the report's recommendation weighs (report/recommend.py decides; tests/test_report_recommend.py).
    rng = np.random.default_rng(0)
    groups = ["p1", "p1", "p2", "p2", "p3", "p3"]
    fresh = [synthetic_punk(100 + i) for i in range(6)]
    noise = M.epoch_metrics([noisy(a, rng) for a in fresh], synth_ref, groups)
    clean = M.epoch_metrics(fresh, synth_ref, groups)
    copies = M.epoch_metrics([synthetic_punk(i) for i in range(6)], synth_ref, groups)
    assert clean["quality"] > noise["quality"] and clean["copy_share"] == 0 and copies["copy_share"] == 1.0
    assert any("copies 6 training punks" in p for p in M.verdict_parts(copies))
    assert any("off-style" in p and "distinct colours high" in p for p in M.verdict_parts(noise))


def test_grid_alignment_breaks_a_tie_in_style(synth_ref: M.Reference) -> None:
    arts = [synthetic_punk(200 + i) for i in range(4)]
    sharp = [upscale(a, 512) for a in arts]
    soft = [np.asarray(Image.fromarray(f).filter(ImageFilter.GaussianBlur(6))) for f in sharp]
    blurred, clean = M.epoch_metrics(arts, synth_ref, fulls=soft), M.epoch_metrics(arts, synth_ref, fulls=sharp)
    assert blurred["style"] == clean["style"] and clean["quality"] > blurred["quality"]
    assert any("pixel grid blurred or misaligned" in p for p in M.verdict_parts(blurred))
    assert not any("pixel grid" in p for p in M.verdict_parts(clean))


def test_collapsed_seeds_are_said(synth_ref: M.Reference) -> None:
    same = [synthetic_punk(300)] * 4
    varied = [synthetic_punk(300 + i) for i in range(4)]
    groups = ["a", "a", "b", "b"]
    collapsed, diverse = M.epoch_metrics(same, synth_ref, groups), M.epoch_metrics(varied[:1] * 2 + varied[2:3] * 2, synth_ref, groups)
    healthy = M.epoch_metrics(varied, synth_ref, groups)
    assert collapsed["values"]["seed_diversity"] == 0.0 == diverse["values"]["seed_diversity"]
    assert healthy["values"]["seed_diversity"] > 0.3 and healthy["diversity_score"] > collapsed["diversity_score"]
    assert any("seeds look alike" in p for p in M.verdict_parts(collapsed))


# ------------------------------------------------------------------ the real dataset


@pytest.fixture(scope="module")
def real_ref() -> M.Reference:
    if not DATASET.is_dir():
        pytest.skip(f"real dataset not found at {DATASET} (set BESPOKE_DATASET)")
    return M.Reference.from_dataset(DATASET)


def test_real_dataset_medians_match_pixel_facts(real_ref: M.Reference) -> None:
    """docs/pixel-facts.md, measured on 204 punks; these are the 184 of them we have."""
    values = real_ref.values()
    expected = {  # key: (pixel-facts median, allowed deviation)
        "distinct_colours": (23, 3),
        "perceptual_colours": (20, 3),
        "palette_adherence": (0.67, 0.06),
        "border_solidity": (0.85, 0.05),
        "background_area": (0.51, 0.05),
        "dark_outline": (0.54, 0.08),
        "orphan_pixels": (0.15, 0.03),
        "nearest_distance": (0.70, 0.06),
    }
    for key, (median, tolerance) in expected.items():
        assert values[key] == pytest.approx(median, abs=tolerance), key
    assert real_ref.range_of("distinct_colours") == pytest.approx((13, 50), abs=3)
    # the near-duplicate series put the copy threshold above 0 but far below a typical neighbour
    assert 0.01 < real_ref.copy_threshold < 0.1


def test_real_training_images_are_copies_of_themselves_but_edits_are_not(real_ref: M.Reference) -> None:
    names = real_ref.names
    i = names.index("lad_001_carbon")
    art = real_ref.images[i]
    assert M.image_metrics(art, real_ref)["near_copy"] is True
    mirrored = art[:, ::-1].copy()
    mirrored[(mirrored == mirrored[0, 0]).all(-1)] = (255, 0, 255)  # new background colour
    out = M.image_metrics(mirrored, real_ref)
    assert out["near_copy"] is False and out["nearest_distance"] > 0.3


# ------------------------------------------------------------------ background: ring colours and caption adherence


def test_ring_colours_counts_the_outer_ring_only() -> None:
    img = np.zeros((24, 24, 3), np.uint8)
    img[:] = (40, 120, 200)
    img[5:20, 5:20] = (255, 0, 0)  # the figure, away from the edge: not counted
    assert M.ring_colours(img) == 1
    img[23, 8:16] = (10, 10, 10)  # shoulders reaching the bottom edge
    img[0, 0] = img[12, 23] = (200, 200, 0)  # a stray pixel in a corner, one on the right edge
    assert M.ring_colours(img) == 3
    assert M.image_metrics(img, M.Reference.from_images(["a"], [img]))["ring_colours"] == 3


@pytest.mark.parametrize(("hex_colour", "name"), [
    ("#ff0000", "red"), ("#a61114", "red"), ("#0000ff", "blue"), ("#0153fd", "blue"), ("#3b77cd", "blue"), ("#000c55", "blue"),
    ("#808080", "grey"), ("#4d4d4d", "grey"), ("#000000", "black"), ("#ffffff", "white"), ("#ff8c00", "orange"), ("#ffff00", "yellow"),
    ("#00ff00", "green"), ("#2c5f34", "green"), ("#008080", "teal"), ("#800080", "purple"), ("#1f003b", "purple"), ("#ffc0cb", "pink"),
    ("#e50bb4", "pink"), ("#8b4513", "brown"), ("#453128", "brown"), ("#fee6ba", "beige"),
])
def test_colour_names_agree_with_the_eye(hex_colour: str, name: str) -> None:
    rgb = [int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)]
    assert M.colour_name(rgb) == name
    assert name in M.colour_names(rgb)


def test_delta_e_2000_matches_published_test_pairs() -> None:
    """Sharma, Wu and Dalal (2005), pairs 1, 7, 17 and 25 of their test data."""
    a = np.array([[50, 2.6772, -79.7751], [50, 0, 0], [50, 2.5, 0], [60.2574, -34.0099, 36.2677]])
    b = np.array([[50, 0, -82.7485], [50, -1, 2], [73, 25, -18], [60.4626, -34.1751, 39.4387]])
    assert M.delta_e_2000(a, b) == pytest.approx([2.0425, 2.3669, 27.1492, 1.2644], abs=1e-4)
    assert M.delta_e_2000(b, a) == pytest.approx(M.delta_e_2000(a, b))


@pytest.mark.parametrize(("caption", "names"), [
    ("pixel art, lady, deep royal purple pigmented background, hard color borders", {"purple"}),
    ("lady, raspberry shirt dark dark green background", {"green"}),
    ("lad, bright bleu (Coinbase blue) background", {"blue"}),
    ("lady, tiffany blue background", {"teal", "blue"}),
    ("lady, greybackground", {"grey"}),
    ("lady, electric purplblue bright background", {"purple", "blue"}),
    ("lad, grey background medium, brown eyes", {"grey"}),
    ("lad, a white lanyard and black hoodie here with a pale blue grey background", {"blue", "grey"}),
    ("lad, light light opal orange background", {"orange"}),
    ("lad, light grey bg", {"grey"}),
    ("lad, solid background", None),
    ("lad, split background", None),
    ("lady, pink to purple gradient background", None),
    ("lady, medium green and light green pinstripe background", None),
    ("lad, wearing dark grey background baseball cap, gradient background", None),
    ("lad, red hair, blue eyes", None),
])
def test_background_colour_names_reads_the_artists_phrases(caption: str, names: set[str] | None) -> None:
    assert M.background_colour_names(caption) == (None if names is None else frozenset(names))


def test_caption_adherence_counts_pairs_whose_border_has_the_named_colour() -> None:
    blue, red = np.zeros((24, 24, 3), np.uint8), np.zeros((24, 24, 3), np.uint8)
    blue[:], red[:] = (30, 80, 230), (220, 20, 20)
    prompts = ["lad, blue background", "lad, blue background", "lad, red background", "lad, solid background"]
    assert M.caption_adherence(prompts, [blue, red, red, blue]) == (pytest.approx(2 / 3), 3)
    assert M.caption_adherence(["lad, solid background"], [blue]) == (None, 0)
    with pytest.raises(UserError, match="2 prompts for 1 images"):
        M.caption_adherence(prompts[:2], [blue])


def test_real_punks_follow_their_own_background_captions() -> None:
    """The ceiling: the artist's images against the artist's captions (benchmarks/README.md reports the figure)."""
    if not DATASET.is_dir():
        pytest.skip(f"real dataset not found at {DATASET} (set BESPOKE_DATASET)")
    from bespoke_kohya.images import load_rgb

    pairs = [(p.with_suffix(".txt").read_text(encoding="utf-8"), load_rgb(p)) for p in sorted(DATASET.glob("*.png")) if p.with_suffix(".txt").is_file()]
    share, checked = M.caption_adherence([c for c, _ in pairs], [im for _, im in pairs])
    assert checked >= 80 and share >= 0.9
    rings = [M.ring_colours(im) for _, im in pairs]
    assert np.median(rings) == pytest.approx(5, abs=1)


def test_even_sample_spreads_distinct_indices_over_the_whole_set_first_and_last_included() -> None:
    assert M.even_sample(10, 3) == [0, 4, 9]
    assert M.even_sample(1000, 4) == [0, 333, 666, 999]
    assert M.even_sample(3, 10) == [0, 1, 2]  # a small set is used whole
    assert M.even_sample(5, 0) == [] and M.even_sample(0, 5) == []
    picked = M.even_sample(501, 500)  # the spacing is just over one: rounding must not repeat an index
    assert len(picked) == len(set(picked)) == 500 and picked[0] == 0 and picked[-1] == 500
