"""The kohya engine's training methods (issue 25): each preset renders only its script's keys, validates with
advice-like errors, prints its exact command on --dry-run, and is counted by the pre-flight; LoRA runs render
byte for byte as before the methods existed."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w

from bespoke_kohya.engines.kohya import config
from bespoke_kohya.engines.kohya.settings import SCRIPTS
from bespoke_kohya.engines.kohya.vendor import args_list_name, dataset_list_name, read_key_list
from bespoke_kohya.errors import UserError
from bespoke_kohya.presets import PRESETS_DIR, apply_overrides, available_presets, explain, load_preset, read_preset_data, validate_preset

DATA = Path(__file__).resolve().parents[2] / "data"
REPO = Path(__file__).resolve().parents[3]
METHOD_PRESETS = {"full": "sd15_576_full", "textual_inversion": "sd15_576_ti", "controlnet": "sd15_576_controlnet"}
KOHYA_PRESETS = [n for n in available_presets() if read_preset_data(PRESETS_DIR / f"{n}.toml").get("engine", "kohya") == "kohya"]


def preset(name: str, *overrides: str):
    extra = ["pretrained_model_name_or_path=/models/pixnite.safetensors"] if name == "pixnite_sd15" else []
    # pixnite_sd15 needs its local file to exist only when used; shape and render do not look at it.
    return validate_preset(apply_overrides(read_preset_data(PRESETS_DIR / f"{name}.toml"), extra + list(overrides)), name)


def flat(sections: dict) -> dict:
    return {k: v for section in sections.values() for k, v in section.items()}


# ------------------------------------------------------------------ LoRA runs are unchanged


@pytest.mark.parametrize("validate", [True, False])
@pytest.mark.parametrize("name", [n for n in KOHYA_PRESETS if preset(n).method == "lora"])
def test_lora_presets_render_byte_identical_to_before_the_methods(name: str, validate: bool):
    p = preset(name)
    tag = "validate" if validate else "novalidate"
    assert config._header(p.name) + tomli_w.dumps(config.train_args(p, "golden", validate)) == (DATA / "lora_renders" / f"{name}.{tag}.train.toml").read_text()
    assert config._header(p.name) + tomli_w.dumps(config.dataset_config(p, validate)) == (DATA / "lora_renders" / f"{name}.{tag}.dataset.toml").read_text()


def test_every_lora_preset_has_a_frozen_render():
    lora = {n for n in KOHYA_PRESETS if preset(n).method == "lora"}
    frozen = {p.name.split(".")[0] for p in (DATA / "lora_renders").glob("*.toml")}
    assert lora == frozen


# ------------------------------------------------------------------ what each method renders


def test_each_method_has_its_script_and_the_presets_ship_one_each():
    assert {preset(n).method: preset(n).script for n in METHOD_PRESETS.values()} == {
        "full": "train_db.py", "textual_inversion": "train_textual_inversion.py", "controlnet": "train_control_net.py"}
    assert SCRIPTS[("lora", "sd15")] == "train_network.py" and SCRIPTS[("controlnet", "sdxl")] == "sdxl_train_control_net.py"


COMMON = {
    "pretrained_model_name_or_path": "stable-diffusion-v1-5/stable-diffusion-v1-5", "resolution": "576,576", "max_train_epochs": 3,
    "train_batch_size": 1, "mixed_precision": "fp16", "noise_offset": 0.1, "seed": 42, "max_data_loader_n_workers": 1, "min_snr_gamma": 5.0,
    "cache_latents": True, "sdpa": True, "output_dir": "checkpoints", "output_name": "bespoke", "save_model_as": "safetensors",
    "save_every_n_epochs": 1, "save_precision": "fp16", "logging_dir": "logs/tensorboard", "console_log_simple": True,
    "optimizer_type": "AdamW", "lr_scheduler": "constant",
}


def test_full_renders_train_db_arguments():
    args = config.train_args(preset("sd15_576_full"), "run-1")
    assert args["full"] == {"stop_text_encoder_training": -1}
    assert flat(args) == {**COMMON, "learning_rate": 1e-6, "gradient_checkpointing": True, "stop_text_encoder_training": -1, "log_prefix": "sd15_576_full-"}
    trained = flat(config.train_args(preset("sd15_576_full", "kohya.full.train_text_encoder=true", "kohya.full.learning_rate_te=5e-7")))
    assert "stop_text_encoder_training" not in trained and trained["learning_rate_te"] == 5e-7


def test_textual_inversion_renders_its_token():
    args = config.train_args(preset("sd15_576_ti"), "run-1")
    assert args["embedding"] == {"token_string": "bespoke punk", "num_vectors_per_token": 2, "init_word": "punk"}
    assert flat(args) == {**COMMON, "learning_rate": 5e-4, **args["embedding"], "log_prefix": "sd15_576_ti-"}
    data = read_preset_data(PRESETS_DIR / "sd15_576_ti.toml")
    data["kohya"]["textual_inversion"]["init_word"] = None  # TOML has no null: a preset written in Python
    assert "init_word" not in flat(config.train_args(validate_preset(data, "test")))


def test_controlnet_renders_no_validation_and_trains_from_its_own_folders():
    p = preset("sd15_576_controlnet")
    expected = {k: v for k, v in COMMON.items() if k != "min_snr_gamma"}  # train_control_net.py v0.10.1 crashes with it
    assert flat(config.train_args(p, "run-1", validate=True)) == {**expected, "learning_rate": 1e-5, "gradient_checkpointing": True, "log_prefix": "sd15_576_controlnet-"}
    held = config.dataset_config(p, validate=True)["datasets"][0]
    assert held == {"batch_size": 1, "subsets": [{"image_dir": "data/10_bespoke_punk_trained", "conditioning_data_dir": "data/10_bespoke_punk_conditioning",
                                                   "num_repeats": 10, "caption_extension": ".txt"}]}
    assert config.dataset_config(p, validate=False)["datasets"][0]["subsets"][0]["image_dir"] == "data/10_bespoke_punk"


@pytest.mark.parametrize("name", KOHYA_PRESETS)
@pytest.mark.parametrize("validate", [True, False])
def test_every_rendered_key_is_one_its_own_script_accepts(name: str, validate: bool):
    """Each shipped preset, each method: train.toml keys against the argparse dests of its script, dataset.toml keys
    against the schema that script builds (both lists read from sd-scripts v0.10.1's own code, tests/data)."""
    p = preset(name)
    module = p.script.removesuffix(".py")
    accepted = set(read_key_list(DATA / args_list_name(module)))
    unknown = set(flat(config.train_args(p, "run-1", validate))) - accepted
    assert not unknown, f"{p.script} would silently ignore {unknown}"
    keys = set(read_key_list(DATA / dataset_list_name(module)))
    cfg = config.dataset_config(p, validate)
    used = {f"general.{k}" for k in cfg["general"]} | {f"datasets.{k}" for k in cfg["datasets"][0] if k != "subsets"}
    used |= {f"datasets.subsets.{k}" for k in cfg["datasets"][0]["subsets"][0]}
    assert not used - keys, f"{p.script}'s dataset schema rejects {used - keys}"


def test_the_command_line_flags_exist_in_every_script():
    """build_command's own flags (not from train.toml) are in each script's parser too; --skip_until_initial_step only in LoRA's."""
    for module in ("train_network", "train_db", "train_textual_inversion", "train_control_net"):
        names = set(read_key_list(DATA / args_list_name(module)))
        assert {"config_file", "dataset_config", "tokenizer_cache_dir", "resume"} <= names
        assert ("skip_until_initial_step" in names) == (module == "train_network")


# ------------------------------------------------------------------ validation speaks in keys and fixes


@pytest.mark.parametrize(("name", "override", "message"), [
    ("sd15_576_full", "network_dim=16", "kohya.network_dim = 16 is a LoRA setting, which method 'full' does not read; remove it (method 'full' trains no LoRA)"),
    ("sd15_576_full", "text_encoder_lr=0", "kohya.text_encoder_lr = 0.0 is a LoRA setting, which method 'full' does not read; remove it; the full fine-tune "
                                           "trains the text encoder with kohya.full.train_text_encoder = true (its rate: kohya.full.learning_rate_te)"),
    ("sd15_576_ti", "unet_lr=1e-5", "kohya.unet_lr = 1e-05 is a LoRA setting, which method 'textual_inversion' does not read; set kohya.learning_rate, the rate of what this method trains"),
    ("sd15_576_ti", "kohya.full.train_text_encoder=true", "kohya.full is set but kohya.method = 'textual_inversion'; remove the [kohya.full] table, or set kohya.method = 'full'"),
    ("sd15_576", "kohya.controlnet.edge_width=3", "kohya.controlnet is set but kohya.method = 'lora'; remove the [kohya.controlnet] table, or set kohya.method = 'controlnet'"),
    ("sd15_576_full", "kohya.full.learning_rate_te=1e-6", "kohya.full.learning_rate_te is set but kohya.full.train_text_encoder is false, so no text encoder trains"),
    ("sd15_576_controlnet", "save_state=true", "kohya.save_state = true: train_control_net.py (sd-scripts v0.10.1) loads a saved state with --resume but then trains "
                                               "every epoch again from epoch 1"),
    ("sd15_576_full", "family=sdxl", "kohya.method = 'full' is rendered for family \"sd15\" only in this version: its SDXL script (sdxl_train.py) takes other arguments"),
    ("sd15_576_ti", "trigger=pixel art, 24x24", "sample.trigger 'pixel art, 24x24' does not contain kohya.textual_inversion.token_string 'bespoke punk', so no sample "
                                                "would use the learned embedding"),
    ("sd15_576_ti", "kohya.textual_inversion.token_string=Bespoke", "kohya.textual_inversion.token_string: String should match pattern"),
    ("sd15_576_controlnet", "kohya.controlnet.lora=runs/x/bespoke.ckpt", "kohya.controlnet.lora must be a .safetensors LoRA file (pickles are never loaded)"),
    ("sd15_576_controlnet", "kohya.controlnet.edge_width=0", "kohya.controlnet.edge_width: Input should be greater than or equal to 1 (got 0)"),
    ("sd15_576_controlnet", "min_snr_gamma=5", "kohya.min_snr_gamma = 5.0: train_control_net.py (sd-scripts v0.10.1) crashes on its first step with it "
                                               "('DDPMScheduler' object has no attribute 'all_snr'"),
])
def test_a_wrong_setting_is_one_line_naming_the_key_and_the_fix(name: str, override: str, message: str):
    with pytest.raises(UserError) as err:
        load_preset(name, [override])
    assert message in str(err.value)
    assert str(err.value).startswith(f"{name}.toml with --set overrides: ")


def test_a_method_preset_need_not_repeat_its_table_and_saves_no_state():
    p = validate_preset({"name": "mine", "description": "x", "engine": "kohya", "family": "sd15", "kohya": {"method": "controlnet"}}, "mine.toml")
    assert p.settings.controlnet is not None and p.settings.controlnet.edge_width == 2 and p.settings.save_state is False
    again = validate_preset(p.model_dump(mode="json"), "run.json")  # a run.json's resolved preset validates as it was written
    assert again == p
    assert validate_preset({"name": "old", "description": "x", "engine": "kohya", "family": "sd15", "kohya": {}}, "old run").method == "lora"


def test_explain_documents_every_method_field():
    rows = {key: text for key, _kind, _default, text in explain()}
    for key in ("kohya.method", "kohya.full", "kohya.full.train_text_encoder", "kohya.full.learning_rate_te", "kohya.textual_inversion.token_string",
                "kohya.textual_inversion.init_word", "kohya.textual_inversion.num_vectors_per_token", "kohya.controlnet.edge_width",
                "kohya.controlnet.conditioning_scale", "kohya.controlnet.lora"):
        assert key in rows and len(rows[key]) > 40, key
    assert "train_db.py" in rows["kohya.method"] and "train_control_net.py" in rows["kohya.method"]


def test_presets_lists_the_routes(capsys):
    from bespoke_kohya.cli import main

    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in METHOD_PRESETS.values():
        assert name in out
    for script in ("train_db.py", "train_textual_inver", "train_control_net"):
        assert script in out


# ------------------------------------------------------------------ rendered runs


@pytest.fixture(scope="module")
def twelve(punks_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.helpers.punks import copy_punks

    return copy_punks(punks_dir, tmp_path_factory.mktemp("twelve") / "punks", every=15, count=12)


def render_run(name: str, dataset: Path, out: Path, *overrides: str):
    from bespoke_kohya.dataset import check_dataset
    from bespoke_kohya.render import render

    p = load_preset(name, ["resolution=96", *overrides])
    return p, render(p, check_dataset(dataset), out, run_id=out.name)


def test_controlnet_render_writes_an_edge_map_per_trained_image_and_the_trained_folder(twelve: Path, tmp_path: Path):
    from bespoke_kohya.engines.kohya.edges import edge_map
    from bespoke_kohya.runfolder.data import art_of

    p, rendered = render_run("sd15_576_controlnet", twelve, tmp_path / "run", "dataset.validation_split=0.25")
    data = rendered.run_dir / "data"
    prepared = sorted(x.name for x in (data / "10_bespoke_punk").glob("*.png"))
    trained = sorted(x.name for x in (data / "10_bespoke_punk_trained").glob("*.png"))
    assert len(prepared) == 12 and len(rendered.heldout) == 3 and trained == sorted(set(prepared) - set(rendered.heldout))
    assert sorted(x.name for x in (data / "10_bespoke_punk_conditioning").glob("*.png")) == trained
    assert sorted(x.name for x in (data / "10_bespoke_punk_trained").glob("*.txt")) == [n.replace(".png", ".txt") for n in trained]
    one = trained[0]
    assert (data / "10_bespoke_punk_trained" / one).read_bytes() == (data / "10_bespoke_punk" / one).read_bytes()
    from PIL import Image
    import numpy as np

    written = np.asarray(Image.open(data / "10_bespoke_punk_conditioning" / one).convert("RGB"))
    assert written.shape == (96, 96, 3)
    assert (written == np.asarray(edge_map(art_of(data / "10_bespoke_punk" / one), 96, 2))).all()  # the sampler's edges of the same art
    dataset = tomllib.loads((rendered.run_dir / "config" / "dataset.toml").read_text())
    assert dataset["datasets"][0]["subsets"][0]["image_dir"] == "data/10_bespoke_punk_trained" and "validation_split" not in dataset["datasets"][0]


def test_controlnet_without_a_split_trains_from_the_prepared_folder(twelve: Path, tmp_path: Path):
    _, rendered = render_run("sd15_576_controlnet", twelve, tmp_path / "run", "dataset.validation_split=0")
    data = rendered.run_dir / "data"
    assert sorted(x.name for x in data.iterdir()) == ["10_bespoke_punk", "10_bespoke_punk_conditioning"]
    assert len(list((data / "10_bespoke_punk_conditioning").glob("*.png"))) == 12


def test_controlnet_copies_its_sampling_lora_into_the_run_and_keeps_it_when_the_original_is_gone(twelve: Path, tmp_path: Path):
    from safetensors.torch import save_file
    import torch

    from bespoke_kohya.render import rewrite_config

    lora = tmp_path / "other" / "bespoke-000002.safetensors"
    lora.parent.mkdir()
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2), "lora_unet_x.lora_up.weight": torch.zeros(2, 2)}, str(lora))
    p, rendered = render_run("sd15_576_controlnet", twelve, tmp_path / "run", f"kohya.controlnet.lora={lora}")
    copy = rendered.run_dir / "config" / "sample_lora.safetensors"
    assert copy.read_bytes() == lora.read_bytes()
    lora.unlink()  # a rented box: the run travelled, the original path did not
    rewrite_config(rendered.run_dir, p)
    assert copy.is_file()
    not_lora = tmp_path / "plain.safetensors"
    save_file({"weight": torch.zeros(2)}, str(not_lora))
    with pytest.raises(UserError, match="holds no LoRA weights"):
        render_run("sd15_576_controlnet", twelve, tmp_path / "run2", f"kohya.controlnet.lora={not_lora}")
    with pytest.raises(UserError, match="kohya.controlnet.lora = .*missing.safetensors: no such file"):
        render_run("sd15_576_controlnet", twelve, tmp_path / "run3", f"kohya.controlnet.lora={tmp_path / 'missing.safetensors'}")
    assert not (tmp_path / "run2").exists() and not (tmp_path / "run3").exists()  # render is all or nothing


def test_textual_inversion_warns_about_captions_without_its_token(twelve: Path, tmp_path: Path):
    _, rendered = render_run("sd15_576_ti", twelve, tmp_path / "run")
    assert not [w for w in rendered.warnings if "token_string" in w]
    _, other = render_run("sd15_576_ti", twelve, tmp_path / "run2", "kohya.textual_inversion.token_string=crypto punk", "trigger=crypto punk")
    assert any(w.startswith("12 of 12 captions do not contain kohya.textual_inversion.token_string 'crypto punk'") for w in other.warnings)


# ------------------------------------------------------------------ the dry run through the CLI


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bespoke_kohya", *args], capture_output=True, text=True, cwd=REPO, timeout=600)


@pytest.mark.parametrize(("name", "script"), [("sd15_576_full", "train_db.py"), ("sd15_576_ti", "train_textual_inversion.py"),
                                              ("sd15_576_controlnet", "train_control_net.py")])
def test_dry_run_prints_the_exact_command_and_the_files(name: str, script: str, twelve: Path, tmp_path: Path):
    from bespoke_kohya.engines.kohya.launch import build_command
    from bespoke_kohya.engines.kohya.vendor import find_sd_scripts, tokenizer_cache_dir

    run = tmp_path / "run"
    r = cli("train", "--preset", name, "--dataset", str(twelve), "--run-dir", str(run), "--dry-run")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    files = lines[lines.index(f"rendered {run}") + 1: lines.index("would run, from the run directory:")]
    expected = ["config/dataset.toml", "config/preset.json", "config/sample_prompts.txt", "config/train.toml", "data/10_bespoke_punk/ (12 images)"]
    if name == "sd15_576_controlnet":
        expected += ["data/10_bespoke_punk_conditioning/ (11 images)", "data/10_bespoke_punk_trained/ (11 images)"]  # 12 × 0.1 holds 1 out
    assert [f.strip() for f in files] == expected
    sd = find_sd_scripts(REPO)
    command = build_command(load_preset(name), sd.path if sd else Path("<sd-scripts>"), sd.python if sd else Path("<sd-scripts-python>"),
                            tokenizer_cache=tokenizer_cache_dir())
    assert shlex.split(lines[-1]) == command and command[command.index("--config_file") - 1].endswith("/" + script)
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "dry-run" and record["script"] == script and record["resolved"]["kohya"]["method"] == load_preset(name).method


def test_build_command_for_each_method_is_the_lora_command_with_its_script():
    from bespoke_kohya.engines.kohya.launch import build_command

    base = build_command(load_preset("sd15_576"), Path("/sd"), Path("/py"), cpu_threads=2)
    for name, script in (("sd15_576_full", "train_db.py"), ("sd15_576_ti", "train_textual_inversion.py"), ("sd15_576_controlnet", "train_control_net.py")):
        cmd = build_command(load_preset(name), Path("/sd"), Path("/py"), cpu_threads=2)
        assert cmd == [c.replace("/sd/train_network.py", f"/sd/{script}") for c in base]
        with pytest.raises(ValueError, match="cannot resume from a state"):
            build_command(load_preset(name), Path("/sd"), Path("/py"), resume_state="checkpoints/bespoke-000001-state")


# ------------------------------------------------------------------ engine: resume, recipe, describe, bundles


def test_a_non_lora_run_never_resumes_from_a_state_and_says_it_starts_over(twelve: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import io

    from bespoke_kohya.engines.kohya import engine as kohya_engine
    from bespoke_kohya.engines.kohya.vendor import SdScripts

    if kohya_engine._sd_scripts() is None:  # a dry run of a resume needs an install to name; a stand-in one is enough (nothing runs)
        stand_in = SdScripts(tmp_path / "sd-scripts", tmp_path / "python", None, None, None)
        monkeypatch.setattr(kohya_engine, "_sd_scripts", lambda run_dir=None: stand_in)

    from rich.console import Console

    from bespoke_kohya.engines.kohya.engine import ENGINE
    from bespoke_kohya.engines.protocol import TrainOptions
    from bespoke_kohya.engines.session import create_run

    run, _ = create_run(load_preset("sd15_576_full", ["resolution=96"]), [], twelve, tmp_path / "run", Console(file=io.StringIO()))
    (run.dir / "checkpoints" / "bespoke-000001-state").mkdir(parents=True)  # as if a state existed
    (run.dir / "checkpoints" / "bespoke-000001.safetensors").write_bytes(b"x")
    run.record.epochs = {"1": "checkpoints/bespoke-000001.safetensors"}
    run.record.status = "interrupted"
    said: list[str] = []
    session = ENGINE.start_session(run, TrainOptions(resume=run.dir, dry_run=True, warn=said.append))
    assert "--resume" not in session.command and session.resume_from is None
    assert said == []  # a dry run only shows the command
    session = ENGINE.start_session(run, TrainOptions(resume=run.dir, warn=said.append, skip_preflight=True))
    assert "--resume" not in session.command and session.resume_from is None
    assert said and said[0].startswith("train_db.py cannot continue from a saved epoch")


def test_reproduce_explains_that_another_method_is_not_the_documented_recipe():
    from bespoke_kohya.engines.kohya.engine import ENGINE

    check = ENGINE.recipe_check(load_preset("sd15_576_controlnet"))
    assert check.differences == ["kohya.method: 'lora' (train_network.py, the documented recipe) → 'controlnet' (train_control_net.py); "
                                 "this preset takes another route of the notes, so the recipe's LoRA keys are not compared"]
    assert ENGINE.recipe_check(load_preset("sd15_512")).differences == []


def test_presets_columns_show_lora_dims_only_for_lora():
    from bespoke_kohya.engines.kohya.engine import ENGINE

    assert ENGINE.describe(load_preset("sd15_576"))["dim/alpha"] == "32/16"
    assert ENGINE.describe(load_preset("sd15_576_full")) == {"script": "train_db.py", "epochs": "3", "lr": "1e-06"}


def test_resume_only_globs_cover_every_methods_state_names():
    from fnmatch import fnmatch

    from bespoke_kohya.engines.kohya.engine import ENGINE

    for name in ("checkpoints/bespoke-000001-state", "checkpoints/bespoke-state/optimizer.bin", "checkpoints/bespoke-000002-state/model.safetensors"):
        assert any(fnmatch(name, glob) for glob in ENGINE.resume_only)
    for kept in ("checkpoints/bespoke-000001.safetensors", "checkpoints/bespoke.safetensors", "data/10_bespoke_punk_conditioning/a.png"):
        assert not any(fnmatch(kept, glob) for glob in ENGINE.resume_only)


# ------------------------------------------------------------------ loss series of each script


def test_each_scripts_tensorboard_tags_give_the_step_losses():
    from bespoke_kohya.engines.kohya.tensorboard import loss_rows, parse_scalars

    logged = {  # the per-step tags each script logs (v0.10.1), beside its epoch average
        "full": "1,loss,0.5\n1,lr/unet,1e-06\n2,loss,0.4\n2,lr/unet,1e-06\n1,loss/epoch,0.45",
        "textual_inversion": "1,loss,0.5\n1,lr,0.0005\n2,loss,0.4\n2,lr,0.0005\n1,loss/epoch,0.45",
        "controlnet": "1,loss/current,0.5\n1,loss/average,0.5\n1,lr,1e-05\n2,loss/current,0.4\n2,loss/average,0.45\n2,lr,1e-05\n1,loss/epoch,0.45",
    }
    for method, text in logged.items():
        rows = loss_rows(parse_scalars(text), method)
        assert [(r.step, r.loss) for r in rows] == [(1, 0.5), (2, 0.4)], method
        assert rows[0].lr == {"full": 1e-06, "textual_inversion": 0.0005, "controlnet": 1e-05}[method]


def test_each_scripts_own_refusal_is_one_line_with_the_fix():
    from bespoke_kohya.engines.kohya.launch import parse_line

    # As sd-scripts v0.10.1 words them (library/train_util.py ControlNetDataset; train_textual_inversion.py).
    cond = parse_line("AssertionError: missing conditioning data for 2 images / 制御用画像が見つかりませんでした: ['a', 'b']")
    assert cond.kind == "failure" and cond.data["cause"].startswith("the ControlNet's edge maps do not pair one to one with its training images")
    assert parse_line("AssertionError: extra conditioning data for 1 images / 余分な制御用画像があります: ['x.png']").kind == "failure"
    token = parse_line("AssertionError: tokenizer has same word to token string. please use another one / 指定した…: tokenizer 1, punk")
    assert token.kind == "failure" and token.data["cause"].startswith("kohya.textual_inversion.token_string is already a word of the tokenizer")
