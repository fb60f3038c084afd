"""Every shipped preset loads; bad values and unknown keys are refused with advice."""

from __future__ import annotations

from pathlib import Path

import pytest

from bespoke_kohya.errors import UserError
from bespoke_kohya.presets import validate_preset, PRESETS_DIR, apply_overrides, available_presets, explain, load_preset, read_preset_data

EXPECTED = {"pixel24", "pixel24_long", "pixel24_v3", "pixnite_sd15", "sd15_192", "sd15_512", "sd15_576", "sd15_576_controlnet", "sd15_576_full", "sd15_576_ti", "sdxl_24_native", "sdxl_512"}


def test_every_preset_file_validates():
    assert set(available_presets()) == EXPECTED
    for name in available_presets():
        preset = validate_preset(read_preset_data(PRESETS_DIR / f"{name}.toml"), "test preset")
        assert preset.name == name
        text = (PRESETS_DIR / f"{name}.toml").read_text()
        assert text.startswith("#"), f"{name}.toml should open with a comment giving its command"


def test_pixel24_long_is_pixel24_with_the_version_3_recipe_and_more_steps():
    """The README's second pixel24 setting: what benchmarks/README.md measured (e5), and nothing else changed."""
    short, long = load_preset("pixel24").pixel24, load_preset("pixel24_long").pixel24
    differ = {k for k in type(short).model_fields if getattr(short, k) != getattr(long, k)}
    assert differ == {"steps", "background_head", "recolour_background", "refine_components", "refine_rare_colours", "background_from_caption",
                      "background_repaint", "background_flatten", "sample_batch"}
    assert long.steps == 9000 and long.background_flatten == 14 and long.sample_batch == 40 and not long.compile


def test_pixel24_v3_is_pixel24_long_in_4000_steps_at_twice_the_rate_refined_by_pixel_once_half_guided():
    """The README's 20-minute version-3 setting: what benchmarks/README.md measured (b13), and nothing else changed."""
    long, v3 = load_preset("pixel24_long").pixel24, load_preset("pixel24_v3").pixel24
    differ = {k for k in type(long).model_fields if getattr(long, k) != getattr(v3, k)}
    assert differ == {"steps", "schedule_steps", "learning_rate", "refine_components", "refine_rare_colours", "refine_rounds", "guided_steps", "sample_batch",
                      "fast_step", "fast_draw"}
    assert v3.fast_step and not long.fast_step  # the same loss in less time per step
    assert v3.fast_draw and not long.fast_draw  # the same distribution in less time per drawing pass
    assert (v3.steps, v3.schedule_steps, v3.learning_rate) == (4000, 19000, 2 * long.learning_rate)
    assert (v3.refine_components, v3.refine_rare_colours, v3.refine_rounds) == (0, 0, 1)  # one round of refinement by pixel
    assert (v3.guided_steps, v3.sample_steps, v3.sample_batch) == (8, 16, 20) and v3.refine_guidance  # drawing 160 in ~18 s on 2 cores


def test_sd15_512_is_the_documented_recipe():
    p = load_preset("sd15_512")
    k = p.kohya
    assert p.script == "train_network.py"
    assert k.pretrained_model_name_or_path == "runwayml/stable-diffusion-v1-5"
    assert (k.resolution, k.network_dim, k.network_alpha, k.max_train_epochs) == (512, 32, 16.0, 3)
    assert (k.learning_rate, k.unet_lr, k.text_encoder_lr) == (1e-4, 1e-4, 5e-5)
    assert (k.lr_scheduler, k.lr_scheduler_num_cycles, k.optimizer_type, k.mixed_precision) == ("cosine_with_restarts", 3, "AdamW", "fp16")
    assert (k.noise_offset, k.min_snr_gamma, k.save_every_n_epochs) == (0.1, 5.0, 1)
    assert p.dataset.num_repeats == 10
    assert (p.sample.steps, p.sample.guidance_scale) == (30, 7.5)


def test_sd15_576_differs_only_in_resolution():
    a, b = load_preset("sd15_512"), load_preset("sd15_576")
    assert b.kohya.resolution == 576 and 576 % 24 == 0 and 576 % 64 == 0
    assert a.kohya.model_dump(exclude={"resolution", "pretrained_model_name_or_path"}) == b.kohya.model_dump(exclude={"resolution", "pretrained_model_name_or_path"})
    assert b.kohya.pretrained_model_name_or_path == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert not b.dataset.allow_uneven_pixels


def test_sdxl_uses_the_sdxl_script():
    p = load_preset("sdxl_512")
    assert p.script == "sdxl_train_network.py"
    assert p.kohya.clip_skip == 2
    assert p.kohya.pretrained_model_name_or_path == "stabilityai/stable-diffusion-xl-base-1.0"


@pytest.mark.parametrize("name", ["sdxl_24_native", "sd15_192"])
def test_experiments_need_consent(name):
    with pytest.raises(UserError, match="--experimental"):
        load_preset(name)
    assert load_preset(name, experimental=True).experimental


def test_native_24_explains_latents_and_turns_buckets_off():
    with pytest.raises(UserError, match="3x3 latents"):
        load_preset("sdxl_24_native")
    p = load_preset("sdxl_24_native", experimental=True)
    assert p.kohya.resolution == 24 and not p.kohya.enable_bucket


def test_pixnite_needs_a_local_file(tmp_path: Path):
    with pytest.raises(UserError, match="pretrained_model_name_or_path=/path/to/model.safetensors"):
        load_preset("pixnite_sd15")
    with pytest.raises(UserError, match="not found"):
        load_preset("pixnite_sd15", [f"pretrained_model_name_or_path={tmp_path / 'missing.safetensors'}"])
    ckpt = tmp_path / "pix nite.safetensors"
    ckpt.write_bytes(b"x")
    assert load_preset("pixnite_sd15", [f"pretrained_model_name_or_path={ckpt}"]).kohya.pretrained_model_name_or_path == str(ckpt)


def test_overrides_are_validated_like_the_file():
    assert load_preset("sd15_576", ["network_dim=16", "sample.steps=20", "num_repeats=5"]).kohya.network_dim == 16
    with pytest.raises(UserError) as e:
        load_preset("sd15_512", ["network_dim=-3"])
    assert str(e.value) == "sd15_512.toml with --set overrides: kohya.network_dim: Input should be greater than or equal to 1 (got -3)"
    with pytest.raises(UserError, match="did you mean 'learning_rate'"):
        load_preset("sd15_512", ["learnig_rate=1e-4"])
    with pytest.raises(UserError, match="expected key=value"):
        load_preset("sd15_512", ["network_dim"])
    with pytest.raises(UserError, match="Input should be a valid number"):
        load_preset("sd15_512", ["learning_rate=fast"])


def test_unknown_key_in_a_file_gets_did_you_mean(tmp_path: Path):
    text = (PRESETS_DIR / "sd15_576.toml").read_text().replace("network_dim = 32", "network_dimm = 32")
    (tmp_path / "mine.toml").write_text(text)
    with pytest.raises(UserError) as e:
        load_preset(str(tmp_path / "mine.toml"))
    assert "kohya.network_dimm: unknown key (did you mean 'network_dim'?)" in str(e.value)


def test_every_problem_is_reported_at_once(tmp_path: Path):
    text = (PRESETS_DIR / "sd15_576.toml").read_text().replace("network_dim = 32", "network_dim = 0").replace("max_train_epochs = 3", "max_train_epochs = -1")
    (tmp_path / "two.toml").write_text(text)
    with pytest.raises(UserError) as e:
        load_preset(str(tmp_path / "two.toml"))
    assert "kohya.network_dim" in str(e.value) and "kohya.max_train_epochs" in str(e.value)


def test_uneven_resolution_needs_consent():
    with pytest.raises(UserError, match="not a multiple of 24"):
        load_preset("sd15_576", ["resolution=512"])
    with pytest.raises(UserError, match="multiple of 8"):
        load_preset("sd15_576", ["resolution=500", "allow_uneven_pixels=true"])


def test_unknown_preset_suggests():
    with pytest.raises(UserError, match="did you mean 'sd15_512'"):
        load_preset("sd15_521")


def test_every_field_is_documented():
    rows = explain()
    assert len(rows) > 40
    missing = [key for key, _, _, doc in rows if not doc]
    assert not missing, f"fields without a description: {missing}"


def test_apply_overrides_does_not_touch_the_input():
    data = {"kohya": {"network_dim": 32}}
    out = apply_overrides(data, ["network_dim=8"])
    assert data["kohya"]["network_dim"] == 32 and out["kohya"]["network_dim"] == 8


# ------------------------------------------------------------------ issue 12: values and wording


def test_booleans_are_refused_where_numbers_are_meant():
    """Issue 12 (misleading wording): `resolution=true` said '≥ 16 (got True)'; booleans are not numbers."""
    with pytest.raises(UserError) as e:
        load_preset("sd15_576", ["resolution=true"])
    assert str(e.value) == "sd15_576.toml with --set overrides: kohya.resolution: Input should be a valid integer (got True)"
    with pytest.raises(UserError, match="learning_rate: Input should be a valid number"):
        load_preset("sd15_576", ["learning_rate=false"])
    # TOML integers stay valid for float fields.
    assert load_preset("sd15_576", ["network_alpha=16", "learning_rate=1"]).kohya.network_alpha == 16.0


@pytest.mark.parametrize("override", ["pixel24.seed=99999999999999999999999", "pixel24.seed=4294967296", "seeds=[1, 99999999999999999999]", "seeds=[-1]"])
def test_seeds_outside_32_bits_are_refused(override: str):
    """Issue 12 (tracebacks): `--set pixel24.seed=99999999999999999999999` raised `ValueError: Overflow` mid-run."""
    with pytest.raises(UserError) as e:
        load_preset("pixel24", [override])
    assert "seed" in str(e.value) and "\n" not in str(e.value)
    assert load_preset("pixel24", ["pixel24.seed=4294967295"]).pixel24.seed == 2**32 - 1


def test_background_settings_without_the_head_are_refused_not_ignored():
    """pixel24.background_repaint (and the head's other settings) without pixel24.background_head would draw exactly as
    without them: one line saying what to set, instead of a setting that silently does nothing."""
    with pytest.raises(UserError) as e:
        load_preset("pixel24", ["pixel24.background_repaint=true", "pixel24.background_flatten=8"])
    message = str(e.value)
    assert "pixel24.background_repaint, pixel24.background_flatten" in message and "pixel24.background_head = true" in message and "\n" not in message
    assert load_preset("pixel24", ["pixel24.background_head=true", "pixel24.background_repaint=true"]).pixel24.background_repaint


def test_huge_pixel24_unet_is_refused_before_allocating():
    """Issue 12 (accepted silently): block_out_channels=[4096,4096,4096] with layers_per_block=4 (~17 B parameters)."""
    with pytest.raises(UserError) as e:
        load_preset("pixel24", ["pixel24.block_out_channels=[4096, 4096, 4096]", "pixel24.layers_per_block=4"])
    message = str(e.value)
    assert "17,034 million parameters" in message and "limit is 200 million" in message
    assert "pixel24.block_out_channels" in message and "\n" not in message
    assert load_preset("pixel24", ["pixel24.block_out_channels=[128, 256, 384]", "pixel24.layers_per_block=3"])


def test_parameter_estimate_matches_the_real_unet():
    """Issue 12: the estimate behind the limit above counts what diffusers would build (on the meta device: nothing allocated)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from diffusers import UNet2DModel

    from bespoke_kohya.engines.pixel24.model import unet_config
    from bespoke_kohya.engines.pixel24.settings import Pixel24Settings, unet_parameters

    for channels, layers, attention in [([32, 64, 96], 1, 1), ([16, 32], 1, 1), ([32, 64, 96, 128], 2, 1), ([64, 64], 4, 1), ([4096, 4096, 4096], 4, 1),
                                        ([32, 64, 96], 1, 2), ([32, 64, 96, 128], 2, 4), ([16, 32], 1, 4)]:
        settings = Pixel24Settings.model_construct(block_out_channels=channels, layers_per_block=layers, colour_dim=32, feature_dim=64, attention_levels=attention)
        with torch.device("meta"):
            unet = UNet2DModel(**unet_config(settings))
        real = sum(p.numel() for p in unet.parameters())
        assert unet_parameters(channels, layers, 32, 64, attention) == pytest.approx(real, rel=1e-3), (channels, attention)


def test_background_head_estimate_matches_the_real_head():
    """The cap counts version 3's background head too (as wide as the time embedding)."""
    import numpy as np

    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from bespoke_kohya.engines.pixel24.model import Pixel24Net, model_config
    from bespoke_kohya.engines.pixel24.settings import Pixel24Settings, background_head_parameters

    settings = Pixel24Settings(block_out_channels=[16, 32], colour_dim=8, feature_dim=16, text_dim=16, palette_size=2, background_head=True)
    with torch.device("meta"):
        net = Pixel24Net(model_config(settings, ["<reserved>"], np.zeros((2, 3), np.uint8)), 1)
    real = sum(p.numel() for name, p in net.named_parameters() if name.startswith("background_"))
    assert background_head_parameters([16, 32], 8, 16) == real


def test_every_version_3_setting_is_explained_as_version_3():
    from bespoke_kohya.engines.pixel24.settings import VERSION_3_FIELDS

    rows = {key: doc for key, _, _, doc in explain()}
    for name in VERSION_3_FIELDS:
        assert f"pixel24.{name}" in rows and "Version 3" in rows[f"pixel24.{name}"], name


def test_caption_extension_cannot_name_an_image_format():
    """Issue 12 (misleading wording): `--set caption_extension=.png` said 'not a PNG image or a .png caption'."""
    with pytest.raises(UserError, match="dataset.caption_extension: the caption extension cannot be an image extension"):
        load_preset("sd15_576", ["caption_extension=.PNG"])


def test_preset_folder_and_non_utf8_file_get_one_clear_line(tmp_path: Path):
    """Issue 12 (misleading wording / tracebacks): a folder said 'preset file not found'; a non-UTF-8 .toml raised."""
    with pytest.raises(UserError, match="is a folder, not a preset file"):
        load_preset(str(tmp_path))
    latin = tmp_path / "latin.toml"
    latin.write_bytes((PRESETS_DIR / "sd15_576.toml").read_bytes().replace(b'description = "', b'description = "caf\xe9 '))
    with pytest.raises(UserError) as e:
        load_preset(str(latin))
    assert str(e.value) == f"{latin}: not UTF-8 text; re-save the preset as UTF-8"
