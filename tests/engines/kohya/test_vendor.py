"""sd-scripts as an external dependency: locating, installing from a real git repo, key lists,
and the offline stand-ins (CLIP tokenizer, random SD1.5) checked against sd-scripts' own venv."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bespoke_kohya.engines.kohya import vendor
from bespoke_kohya.errors import UserError
from bespoke_kohya.engines.kohya.vendor import (
    SD_SCRIPTS_TAG,
    SdScripts,
    doctor_rows,
    find_sd_scripts,
    install,
    key_list_texts,
    missing_paths,
    read_key_list,
)

REPO = Path(__file__).resolve().parents[3]
DATA = Path(__file__).resolve().parents[2] / "data"
KEY_FILES = [f"sd_scripts_{SD_SCRIPTS_TAG}_args.txt", f"sd_scripts_{SD_SCRIPTS_TAG}_sdxl_args.txt", f"sd_scripts_{SD_SCRIPTS_TAG}_dataset_keys.txt"]
METHOD_SCRIPTS = ("train_db", "train_textual_inversion", "train_control_net")
METHOD_KEY_FILES = [f"sd_scripts_{SD_SCRIPTS_TAG}_{m}_{kind}.txt" for m in METHOD_SCRIPTS for kind in ("args", "dataset_keys")]
# What OpenAI's CLIP tokenizer gives for this text (ids of openai/clip-vit-large-patch14).
CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]
GIT = shutil.which("git")
needs_git = pytest.mark.skipif(GIT is None, reason="git is not installed")


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start without the user's sd-scripts variables."""
    for name in ("SD_SCRIPTS_DIR", "SD_SCRIPTS_PYTHON", "SD_SCRIPTS_SRC", "SD_SCRIPTS_TORCH"):
        monkeypatch.delenv(name, raising=False)


def git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def fake_sd_scripts(root: Path, venv: str | None = "venv") -> Path:
    """A folder shaped like an sd-scripts clone (train_network.py, a venv python and accelerate)."""
    root.mkdir(parents=True)
    (root / "train_network.py").write_text("# stand-in\n")
    if venv:
        (root / venv / "bin").mkdir(parents=True)
        for name in ("python", "accelerate"):
            (root / venv / "bin" / name).write_text("")
    return root


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    """A small real git repo standing in for sd-scripts: v0.10.1, then one more commit."""
    repo = tmp_path / "upstream"
    repo.mkdir()
    git("init", "-q", "-b", "main", cwd=repo)
    (repo / "train_network.py").write_text("print('train')\n")
    (repo / "requirements.txt").write_text("-e .\n")
    (repo / ".gitignore").write_text("venv\n")  # as sd-scripts' own .gitignore
    (repo / "bitsandbytes_windows").mkdir()
    (repo / "bitsandbytes_windows" / "big.dll").write_bytes(b"dll bytes that some mirrors drop")
    (repo / "library").mkdir()
    (repo / "library" / "train_util.py").write_text("X = 1\n")
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "release", cwd=repo)
    git("tag", SD_SCRIPTS_TAG, cwd=repo)
    (repo / "train_network.py").write_text("print('newer')\n")
    git("commit", "-q", "-am", "after the tag", cwd=repo)
    return repo


@pytest.fixture
def fake_venv(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Replace the minutes-long venv build with a recorder that makes the interpreter files."""
    calls: list[dict] = []

    def build(clone: Path, torch_spec: str, constraints: Path | None, log) -> dict[str, str]:
        calls.append({"clone": clone, "torch_spec": torch_spec, "constraints": constraints})
        (clone / "venv" / "bin").mkdir(parents=True)
        (clone / "venv" / "bin" / "python").write_text("")
        return {"torch": "0-test"}

    monkeypatch.setattr(vendor, "build_venv", build)
    return calls


# ---------------------------------------------------------------- locating


def test_nothing_installed_is_none(tmp_path: Path):
    assert find_sd_scripts(tmp_path) is None


def test_sd_scripts_dir_with_its_venv_and_git_tag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    sd = fake_sd_scripts(tmp_path / "my sd-scripts", venv=".venv")
    if GIT:
        git("init", "-q", cwd=sd)
        git("add", "train_network.py", cwd=sd)
        git("commit", "-q", "-m", "x", cwd=sd)
        git("tag", "v9.9", cwd=sd)
    monkeypatch.setenv("SD_SCRIPTS_DIR", str(sd))
    found = find_sd_scripts(tmp_path / "repo")
    assert found is not None
    assert found.path == sd and found.python == sd / ".venv" / "bin" / "python"
    assert found.accelerate == sd / ".venv" / "bin" / "accelerate"
    if GIT:
        assert found.tag == "v9.9" and found.commit == git("rev-parse", "HEAD", cwd=sd)
    assert json.loads(json.dumps(found.to_dict()))["path"] == str(sd)


def test_sd_scripts_python_overrides_the_venv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    sd = fake_sd_scripts(tmp_path / "sd", venv=None)
    python = tmp_path / "elsewhere" / "python3"
    python.parent.mkdir()
    python.write_text("")
    monkeypatch.setenv("SD_SCRIPTS_DIR", str(sd))
    monkeypatch.setenv("SD_SCRIPTS_PYTHON", str(python))
    found = find_sd_scripts(tmp_path)
    assert found is not None and found.python == python and found.accelerate is None
    assert found.commit is None and found.tag is None  # not a git clone


@pytest.mark.parametrize(
    "setup, message",
    [
        ("missing_dir", "SD_SCRIPTS_DIR={p}/nowhere: no such folder"),
        ("not_sd_scripts", "SD_SCRIPTS_DIR={p}/empty: no train_network.py there"),
        ("no_venv", "SD_SCRIPTS_DIR={p}/sd: no venv/bin/python or .venv/bin/python in it; set SD_SCRIPTS_PYTHON"),
        ("bad_python", "SD_SCRIPTS_PYTHON={p}/nope/python: no such file"),
    ],
)
def test_bad_environment_variables_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setup: str, message: str):
    (tmp_path / "empty").mkdir()
    fake_sd_scripts(tmp_path / "sd", venv=None)
    env = {"missing_dir": ("SD_SCRIPTS_DIR", "nowhere"), "not_sd_scripts": ("SD_SCRIPTS_DIR", "empty"),
           "no_venv": ("SD_SCRIPTS_DIR", "sd"), "bad_python": ("SD_SCRIPTS_PYTHON", "nope/python")}[setup]
    monkeypatch.setenv(env[0], str(tmp_path / env[1]))
    with pytest.raises(UserError) as err:
        find_sd_scripts(tmp_path)
    assert str(err.value).startswith(message.format(p=tmp_path))


def test_vendor_copy_without_a_complete_marker_is_not_used(tmp_path: Path):
    sd = fake_sd_scripts(tmp_path / "vendor" / "sd-scripts")
    assert find_sd_scripts(tmp_path) is None  # no marker: not made (or not finished) by make vendor
    (sd / ".git").mkdir()
    (sd / ".git" / vendor.MARKER).write_text(json.dumps({"status": "installing"}))
    assert find_sd_scripts(tmp_path) is None
    (sd / ".git" / vendor.MARKER).write_text(json.dumps({"status": "complete"}))
    found = find_sd_scripts(tmp_path)
    assert found is not None and found.python == sd / "venv" / "bin" / "python"


def test_doctor_rows_say_what_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("BESPOKE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    rows = doctor_rows(tmp_path)
    assert rows[0][0] == "sd-scripts" and "not installed" in rows[0][1] and rows[0][2].startswith("make vendor")
    assert rows[1][0] == "CLIP tokenizer (offline)" and "bespoke-kohya smoke --tokenizer-cache" in rows[1][2]
    monkeypatch.setenv("SD_SCRIPTS_DIR", str(tmp_path / "nowhere"))
    assert "SD_SCRIPTS_DIR=" in doctor_rows(tmp_path)[0][1]


# ---------------------------------------------------------------- installing (real git, venv stubbed)


@needs_git
def test_install_checks_out_the_tag_and_is_idempotent(tmp_path: Path, upstream: Path, fake_venv: list[dict]):
    repo_root = tmp_path / "repo"
    logs: list[str] = []
    sd = install(repo_root, source=str(upstream), torch_spec="torch==1.0 torchvision==2.0", log=logs.append)
    target = repo_root / "vendor" / "sd-scripts"
    assert sd.path == target and sd.tag == SD_SCRIPTS_TAG
    assert sd.commit == git("rev-parse", f"{SD_SCRIPTS_TAG}^{{commit}}", cwd=upstream) != git("rev-parse", "HEAD", cwd=upstream)
    assert (target / "train_network.py").read_text() == "print('train')\n"
    assert (target / "bitsandbytes_windows" / "big.dll").is_file()  # complete source: full checkout
    assert fake_venv[0]["torch_spec"] == "torch==1.0 torchvision==2.0"
    assert fake_venv[0]["constraints"] == repo_root / "vendor" / "constraints.txt"
    assert vendor.read_marker(target)["status"] == "complete"
    assert sorted(p.name for p in (repo_root / "vendor").iterdir()) == ["sd-scripts"]  # no staging left
    assert find_sd_scripts(repo_root) == sd

    logs.clear()
    again = install(repo_root, source=str(upstream), log=logs.append)
    assert again.commit == sd.commit and len(fake_venv) == 1
    assert any("already installed" in line for line in logs)


@needs_git
def test_install_refuses_another_tag_and_foreign_folders(tmp_path: Path, upstream: Path, fake_venv: list[dict]):
    install(tmp_path, source=str(upstream), log=lambda _: None)
    git("tag", "v0.10.2", cwd=upstream)
    with pytest.raises(UserError, match=r"holds sd-scripts at v0\.10\.1, not v0\.10\.2: remove it"):
        install(tmp_path, source=str(upstream), tag="v0.10.2", log=lambda _: None)
    other = tmp_path / "other"
    fake_sd_scripts(other / "vendor" / "sd-scripts")
    with pytest.raises(UserError, match="exists but was not made by make vendor"):
        install(other, source=str(upstream), log=lambda _: None)


@needs_git
@pytest.mark.parametrize("failure", [UserError("pip install -r requirements.txt failed (exit 1): boom"), KeyboardInterrupt()])
def test_failed_install_leaves_nothing(tmp_path: Path, upstream: Path, monkeypatch: pytest.MonkeyPatch, failure: BaseException):
    def broken(*args, **kwargs):
        assert (tmp_path / "vendor" / "sd-scripts" / "train_network.py").is_file()  # the clone is in place by then
        raise failure

    monkeypatch.setattr(vendor, "build_venv", broken)
    with pytest.raises(type(failure)):
        install(tmp_path, source=str(upstream), log=lambda _: None)
    assert list((tmp_path / "vendor").iterdir()) == []


@needs_git
def test_interrupted_install_is_replaced(tmp_path: Path, upstream: Path, fake_venv: list[dict]):
    half = fake_sd_scripts(tmp_path / "vendor" / "sd-scripts")
    (half / ".git").mkdir()
    (half / ".git" / vendor.MARKER).write_text(json.dumps({"status": "installing"}))
    logs: list[str] = []
    sd = install(tmp_path, source=str(upstream), log=logs.append)
    assert sd.tag == SD_SCRIPTS_TAG and any("interrupted install" in line for line in logs)


@needs_git
def test_missing_tag_source_and_git_are_user_errors(tmp_path: Path, upstream: Path, fake_venv: list[dict], monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(UserError, match=rf"tag v9\.9\.9 is not in {upstream}"):
        install(tmp_path, source=str(upstream), tag="v9.9.9", log=lambda _: None)
    assert list((tmp_path / "vendor").iterdir()) == []
    with pytest.raises(UserError, match=r"--source=.*nowhere: no such folder"):
        install(tmp_path, source=str(tmp_path / "nowhere"), log=lambda _: None)
    monkeypatch.setenv("SD_SCRIPTS_SRC", str(tmp_path / "gone"))
    with pytest.raises(UserError, match=r"SD_SCRIPTS_SRC=.*gone: no such folder"):
        install(tmp_path, log=lambda _: None)
    monkeypatch.setattr(vendor.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="git is not installed"):
        install(tmp_path, source=str(upstream), log=lambda _: None)
    assert fake_venv == []


def drop_blob(bare: Path, path: str) -> None:
    """Delete one file's blob from a bare repo, as some mirrors do with large files."""
    oid = git("rev-parse", f"{SD_SCRIPTS_TAG}:{path}", cwd=bare)
    (bare / "objects" / oid[:2] / oid[2:]).unlink()


@needs_git
def test_mirror_missing_optional_blobs_gets_a_sparse_checkout(tmp_path: Path, upstream: Path, fake_venv: list[dict]):
    bare = tmp_path / "mirror.git"
    git("clone", "-q", "--bare", "--no-local", str(upstream), str(bare), cwd=tmp_path)
    for pack in (bare / "objects" / "pack").glob("*.pack"):
        # unpack into loose objects so that single blobs can be removed
        data = pack.read_bytes()
        pack.unlink()
        pack.with_suffix(".idx").unlink()
        subprocess.run(["git", "unpack-objects", "-q"], cwd=bare, input=data, check=True)
    assert missing_paths(GIT, bare, SD_SCRIPTS_TAG) == []
    drop_blob(bare, "bitsandbytes_windows/big.dll")
    assert missing_paths(GIT, bare, SD_SCRIPTS_TAG) == ["bitsandbytes_windows/big.dll"]
    logs: list[str] = []
    sd = install(tmp_path / "repo", source=str(bare), log=logs.append)
    assert (sd.path / "train_network.py").is_file() and not (sd.path / "bitsandbytes_windows").exists()
    assert git("status", "--porcelain", cwd=sd.path) == ""
    assert any("sparse checkout" in line for line in logs)

    drop_blob(bare, "library/train_util.py")
    with pytest.raises(UserError, match=r"lacks files sd-scripts needs \(library/train_util\.py\)"):
        install(tmp_path / "repo2", source=str(bare), log=lambda _: None)
    assert list((tmp_path / "repo2" / "vendor").iterdir()) == []


# ---------------------------------------------------------------- a real venv (failure path)


@pytest.mark.slow
@needs_git
def test_real_venv_failure_is_one_line_and_cleans_up(tmp_path: Path, upstream: Path):
    # A pip step that cannot succeed offline: the venv is real, the failure message names the step.
    with pytest.raises(UserError) as err:
        install(tmp_path, source=str(upstream), torch_spec="--no-index bespoke-kohya-no-such-package", log=lambda _: None)
    message = str(err.value)
    assert message.startswith("pip install --no-index bespoke-kohya-no-such-package failed (exit 1): ")
    assert "\n" not in message and "run make vendor again" in message
    assert list((tmp_path / "vendor").iterdir()) == []


# ---------------------------------------------------------------- key lists


def test_key_list_files_are_sorted_unique_and_headed():
    for name in KEY_FILES + METHOD_KEY_FILES:
        text = (DATA / name).read_text(encoding="utf-8")
        assert text.startswith("# ") and text.endswith("\n")
        names = read_key_list(DATA / name)
        assert len(names) == len(set(names)) > 50
    args = read_key_list(DATA / KEY_FILES[0])
    assert args == sorted(args)
    # the keys our presets lean on, and the SDXL-only ones that must stay out of SD1.5 configs
    assert {"tokenizer_cache_dir", "caption_extension", "save_every_n_epochs", "network_dim", "output_name"} <= set(args)
    sdxl = set(read_key_list(DATA / KEY_FILES[1]))
    assert sdxl - set(args) == {"cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk", "disable_mmap_load_safetensors"}
    dataset = set(read_key_list(DATA / KEY_FILES[2]))
    assert {"general.resolution", "datasets.subsets.image_dir", "datasets.subsets.resize_interpolation"} <= dataset
    assert "datasets.subsets.image_dir" in dataset and "general.image_dir" not in dataset



def test_each_methods_lists_are_named_after_its_script_and_differ_where_its_sanitizer_does():
    from bespoke_kohya.engines.kohya.vendor import args_list_name, dataset_list_name

    assert args_list_name("train_network") == KEY_FILES[0] and args_list_name("sdxl_train_network") == KEY_FILES[1]
    assert dataset_list_name("sdxl_train_network") == KEY_FILES[2] == dataset_list_name("train_network")
    assert [args_list_name(m) for m in METHOD_SCRIPTS] == METHOD_KEY_FILES[::2]
    lora = set(read_key_list(DATA / KEY_FILES[2]))
    assert set(read_key_list(DATA / dataset_list_name("train_db"))) == lora  # ConfigSanitizer(True, False, False, True): the same keys
    ti = set(read_key_list(DATA / dataset_list_name("train_textual_inversion")))
    assert lora - ti == {f"{s}.{k}" for s in ("general", "datasets", "datasets.subsets")
                         for k in ("caption_dropout_every_n_epochs", "caption_dropout_rate", "caption_tag_dropout_rate")}
    cn = set(read_key_list(DATA / dataset_list_name("train_control_net")))
    assert cn - lora == {"datasets.subsets.conditioning_data_dir"} and "datasets.subsets.class_tokens" not in cn
    for m, own in (("train_db", {"learning_rate_te", "stop_text_encoder_training"}), ("train_textual_inversion", {"token_string", "init_word", "num_vectors_per_token"}),
                   ("train_control_net", {"controlnet_model_name_or_path", "conditioning_data_dir"})):
        assert own <= set(read_key_list(DATA / args_list_name(m)))


@pytest.fixture(scope="module")
def real_sd() -> SdScripts:
    """The installed sd-scripts (make vendor), or skip."""
    try:
        sd = find_sd_scripts(REPO)
    except UserError as exc:
        pytest.skip(f"sd-scripts environment variables are wrong: {exc}")
    if sd is None:
        pytest.skip("kohya sd-scripts is not installed (make vendor)")
    return sd


@pytest.mark.slow
@pytest.mark.sd_scripts
def test_key_lists_are_sd_scripts_own(real_sd: SdScripts):
    if real_sd.tag != SD_SCRIPTS_TAG:
        pytest.skip(f"installed sd-scripts is at {real_sd.tag or real_sd.commit}, the lists are for {SD_SCRIPTS_TAG}")
    keys = vendor.extract_keys(real_sd)
    for name, text in key_list_texts(keys).items():
        assert (DATA / name).read_text(encoding="utf-8") == text, f"{name} differs from sd-scripts' parsers; regenerate (tests/data/README.md)"


@pytest.mark.slow
@pytest.mark.sd_scripts
def test_doctor_reports_the_real_install(real_sd: SdScripts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("BESPOKE_CACHE", str(tmp_path))
    rows = {component: (status, fix) for component, status, fix in doctor_rows(REPO)}
    assert rows["sd-scripts"][0].startswith(f"{real_sd.path} at {real_sd.tag}")
    assert rows["sd-scripts python"][1] == "" and "Python 3." in rows["sd-scripts python"][0]
    assert rows["sd-scripts accelerate"][0].startswith("1.6.0")
    assert rows["sd-scripts torch"][0].split(",")[0] == vendor.probe_python(real_sd.python)["torch"]


# ---------------------------------------------------------------- offline stand-ins (smoke.py)


@pytest.fixture(scope="module")
def tokenizer_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bespoke_kohya.engines.kohya import offline_sd as smoke

    try:
        smoke.clip_bpe_path()
    except UserError as exc:
        pytest.skip(str(exc))
    cache = tmp_path_factory.mktemp("tokenizers")
    smoke.write_tokenizer_cache(cache)
    return cache


def test_clip_tokenizer_from_local_vocab_matches_openai_ids(tokenizer_cache: Path):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tokenizer_cache / "openai_clip-vit-large-patch14"))
    assert len(tok) == 49408 and tok.model_max_length == 77
    assert tok("a photo of a cat").input_ids == CAT_IDS
    assert tok("A photo of a  CAT").input_ids == CAT_IDS  # lower-cased, whitespace collapsed
    assert (tokenizer_cache / "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k" / "vocab.json").is_file()


@pytest.mark.slow
@pytest.mark.sd_scripts
def test_sd_scripts_loads_the_tokenizer_cache_offline(real_sd: SdScripts, tokenizer_cache: Path):
    code = (
        "import sys, json; sys.path.insert(0, '.')\n"
        "from library.strategy_sd import SdTokenizeStrategy\n"
        f"s = SdTokenizeStrategy(False, None, {str(tokenizer_cache)!r})\n"
        "print(json.dumps(s.tokenizer('a photo of a cat').input_ids))\n"
    )
    env = {**vendor._child_env(), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([str(real_sd.python), "-c", code], cwd=real_sd.path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == CAT_IDS


@pytest.mark.slow
@pytest.mark.sd_scripts
def test_random_sd15_loads_identically_in_both_environments(real_sd: SdScripts, tmp_path_factory: pytest.TempPathFactory):
    import torch
    from diffusers import StableDiffusionPipeline

    from bespoke_kohya.engines.kohya import offline_sd as smoke

    try:
        smoke.clip_bpe_path()
    except UserError as exc:
        pytest.skip(str(exc))
    base = tmp_path_factory.mktemp("base") / "sd15"
    smoke.build_random_sd15(base, seed=0)
    assert smoke.build_random_sd15(base, seed=0) == base  # cached: returns at once
    with pytest.raises(UserError, match="holds another model"):
        smoke.build_random_sd15(base, seed=1)
    # sd-scripts' exact loading call (library/train_util.py _load_target_model), with its old
    # diffusers/transformers: every weight must arrive (a re-initialised one changes the sums).
    code = (
        "import sys, json\n"
        "from diffusers import StableDiffusionPipeline\n"
        "pipe = StableDiffusionPipeline.from_pretrained(sys.argv[1], tokenizer=None, safety_checker=None)\n"
        "print(json.dumps({n: sum(float(p.double().abs().sum()) for p in getattr(pipe, n).state_dict().values()) for n in ('unet', 'vae', 'text_encoder')}))\n"
    )
    env = {**vendor._child_env(), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([str(real_sd.python), "-c", code, str(base)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "newly initialized" not in done.stderr and "were not used" not in done.stderr
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    pipe = StableDiffusionPipeline.from_pretrained(str(base), safety_checker=None)
    ours = {n: sum(float(p.double().abs().sum()) for p in getattr(pipe, n).state_dict().values()) for n in ("unet", "vae", "text_encoder")}
    assert ours == pytest.approx(theirs, rel=1e-12)
    assert list(pipe.unet.config.block_out_channels) == [320, 640, 1280, 1280]
    assert pipe.unet.config.cross_attention_dim == 768 and pipe.vae.config.latent_channels == 4
    assert pipe.text_encoder.config.num_hidden_layers == 12
    assert pipe.tokenizer("a photo of a cat").input_ids == CAT_IDS
    with torch.no_grad():
        hidden = pipe.text_encoder(torch.tensor([CAT_IDS])).last_hidden_state
    assert hidden.shape == (1, 7, 768) and torch.isfinite(hidden).all()
