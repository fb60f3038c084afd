"""Run bundles for a rented GPU box: build from the real punks, unpack elsewhere, dry-run go.sh.

The bundle is built once per module from the real dataset (a real wheel, a real render);
go.sh runs as a child process in a clean environment (`env -i`) from a folder whose
name has a space, as it would on a fresh box.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

from bespoke_kohya.bundle import gohelper as bundle_mod
from bespoke_kohya.bundle.base import set_base
from bespoke_kohya.bundle.build import BundleResult, build_bundle, run_id_for
from bespoke_kohya.bundle.gohelper import stage_state
from bespoke_kohya.bundle.results import pack_results
from bespoke_kohya.runfolder import unsampled_epochs
from bespoke_kohya.captions import lint
from bespoke_kohya.dataset import check_dataset
from bespoke_kohya.errors import UserError
from bespoke_kohya.presets import validate_preset
from bespoke_kohya.runfolder import run_document as read_run, write_run_document
from bespoke_kohya.runfolder.records import SampledEpoch, SampleImage, Samples, write_samples

REPO = Path(__file__).resolve().parents[1]
BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="go.sh needs bash")


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, punks_dir: Path) -> BundleResult:
    """The recommended preset bundled from all 184 real punks, with a wheel built from this checkout."""
    out = tmp_path_factory.mktemp("home") / "sd15_576-gpu.tar.gz"
    return build_bundle("sd15_576", punks_dir, out)


@pytest.fixture(scope="module")
def wheel(built: BundleResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel inside the built bundle (reused so further bundles skip the wheel build)."""
    out = tmp_path_factory.mktemp("wheel")
    with tarfile.open(built.path) as tar:
        member = tar.getmember(f"{built.run_id}/wheels/{built.wheel}")
        (out / built.wheel).write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
    return out / built.wheel


def unpack(tarball: Path, where: Path) -> Path:
    """Extract like `tar xzf` on the box, into `where` (created; its name may have a space)."""
    where.mkdir(parents=True)
    subprocess.run(["tar", "xzf", str(tarball), "-C", str(where)], check=True)
    (run_dir,) = list(where.iterdir())
    return run_dir


@pytest.fixture
def unpacked(built: BundleResult, tmp_path: Path) -> Path:
    """The bundle unpacked into a fresh folder with a space in its name."""
    return unpack(built.path, tmp_path / "gpu box")


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """What a fresh box gives: a PATH with a Python 3.11+ and the basic tools, an empty HOME."""
    home.mkdir(exist_ok=True)
    path = os.pathsep.join([str(Path(sys.base_prefix) / "bin"), "/usr/local/bin", "/usr/bin", "/bin"])
    return {"PATH": path, "HOME": str(home), "LANG": "C.UTF-8", **extra}


def go(run_dir: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["./go.sh", *args], cwd=run_dir, env=env, capture_output=True, text=True, timeout=300)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its size and mtime: equal snapshots mean nothing changed."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def would_run(output: str) -> list[list[str]]:
    """The commands a dry run prints, split back into argv lists exactly as bash would."""
    prefix = "  would run: "
    return [shlex.split(line[len(prefix):]) for line in output.splitlines() if line.startswith(prefix)]


# ---------------------------------------------------------------- building


def test_run_folder_is_named_after_the_file():
    assert run_id_for(Path("/x/sd15_576-gpu.tar.gz")) == "sd15_576-gpu"
    assert run_id_for(Path("run.1.tgz")) == "run.1"
    with pytest.raises(UserError, match=r"--out run\.zip: the bundle must be a \.tar\.gz"):
        run_id_for(Path("run.zip"))
    with pytest.raises(UserError, match="would be named 'my run'"):
        run_id_for(Path("my run.tar.gz"))


def test_an_existing_file_is_never_overwritten(tmp_path: Path, punks_dir: Path):
    out = tmp_path / "taken.tar.gz"
    out.write_bytes(b"the user's file")
    with pytest.raises(UserError, match=r"taken\.tar\.gz: already exists; bundles are never overwritten"):
        build_bundle("sd15_576", punks_dir, out)
    assert out.read_bytes() == b"the user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.tar.gz"]  # no staging left behind


def test_bundle_layout_and_tar_metadata(built: BundleResult):
    assert built.path.is_file() and built.size == built.path.stat().st_size
    assert built.wheel.startswith("bespoke_kohya-") and built.wheel.endswith("-py3-none-any.whl")
    with tarfile.open(built.path) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    top = built.run_id
    assert names[0] == top and all(n == top or n.startswith(top + "/") for n in names)
    for expected in ("go.sh", "run.json", "bundle.json", "config/train.toml", "config/dataset.toml", "config/sample_prompts.txt",
                     f"wheels/{built.wheel}", "vendor/constraints.txt"):
        assert f"{top}/{expected}" in names, expected
    prepared = [n for n in names if n.startswith(f"{top}/data/10_bespoke_punk/") and n.endswith(".png")]
    assert len(prepared) == 184 and not any(n.startswith(f"{top}/originals") for n in names)  # data/ is the one copy of the art
    assert not any(n.startswith(f"{top}/base") for n in names)  # hub id base: never packed unasked
    assert sorted(names[1:]) == names[1:]  # deterministic order
    assert {(m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, "", "")}
    assert len({m.mtime for m in members}) == 1
    modes = {m.name: m.mode for m in members}
    assert modes[f"{top}/go.sh"] == 0o755 and modes[f"{top}/run.json"] == 0o644 and modes[f"{top}/config"] == 0o755


def test_bundle_names_no_path_of_this_machine(built: BundleResult, punks_dir: Path):
    """Every member, and every file inside the wheel, is free of the repo, dataset and home paths."""
    needles = [str(REPO), str(punks_dir), str(punks_dir.resolve()), str(Path.home()), str(built.path.parent)]
    found = []
    with tarfile.open(built.path) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            blobs = {member.name: data}
            if member.name.endswith(".whl"):
                import io

                with zipfile.ZipFile(io.BytesIO(data)) as zf:
                    blobs.update({f"{member.name}!{n}": zf.read(n) for n in zf.namelist()})
            found += [f"{name}: {needle}" for name, blob in blobs.items() for needle in needles if needle.encode() in blob]
    assert found == []


def test_run_json_is_portable_and_rendered(unpacked: Path, punks_dir: Path):
    record = read_run(unpacked)
    assert record["status"] == "rendered" and record["id"] == "sd15_576-gpu" and record["epochs"] == {}
    assert "cwd" not in record and "command" not in record
    report = check_dataset(punks_dir)
    captions = record["dataset"].pop("captions")  # the caption mode data/ was written with (no path in it)
    assert captions["mode"] == "raw" and captions["problems"] == lint(report).counts()
    heldout = record["dataset"].pop("heldout")  # the held-out images travel too: the report pairs them on the way home
    assert len(heldout) == 18 and all((unpacked / "data" / "10_bespoke_punk" / name).is_file() for name in heldout)
    assert record["dataset"] == {"name": "bespoke-punks-24", "path": "data", "content_hash": report.content_hash(), "images": 184}
    preset = validate_preset(record["resolved"], "test preset")
    assert preset.name == "sd15_576" and preset.kohya.pretrained_model_name_or_path == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    toml = tomllib.loads((unpacked / "config" / "train.toml").read_text(encoding="utf-8"))
    assert toml["saving"]["output_dir"] == "checkpoints" and toml["model"]["pretrained_model_name_or_path"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    manifest = json.loads((unpacked / "bundle.json").read_text(encoding="utf-8"))
    assert manifest["wheel"] == next((unpacked / "wheels").glob("*.whl")).name and manifest["sd_scripts_tag"] == "v0.10.1"


@pytest.mark.slow
def test_report_works_on_the_unpacked_run(unpacked: Path):
    from bespoke_kohya.cli import main

    # An untrained run has nothing to compare: the page is still written, and the exit says so (issue 16).
    assert main(["report", "--run", str(unpacked)]) == 1
    assert (unpacked / "report" / "index.html").is_file()


# ---------------------------------------------------------------- go.sh --dry-run


def test_dry_run_in_a_fresh_folder_shows_every_stage(unpacked: Path, built: BundleResult, punks_dir: Path, tmp_path: Path):
    home = tmp_path / "home"
    before = snapshot(unpacked)
    done = go(unpacked, "--dry-run", env=clean_env(home, HF_HUB_OFFLINE="1"))
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert f"wheel: {built.wheel}" in out
    run = str(unpacked)
    assert would_run(out) == [
        ["python3", "-m", "venv", ".venv"],
        [".venv/bin/python", "-m", "pip", "install", "--disable-pip-version-check", f"wheels/{built.wheel}"],
        [".venv/bin/bespoke-kohya", "vendor", "--repo-root", run, "--tag", "v0.10.1"],
        [f"{run}/vendor/sd-scripts/venv/bin/python", "-c", bundle_gpu_probe(out)],
        [".venv/bin/bespoke-kohya", "train", "--resume", ".", "--preset", "sd15_576", "--no-sample"],
        [".venv/bin/bespoke-kohya", "sample", "--run", "."],
        [".venv/bin/bespoke-kohya", "report", "--run", "."],
        [".venv/bin/python", "-m", "bespoke_kohya.bundle", "pack-results", "."],
    ]
    for stage in ("[1/8] install", "[2/8] the kohya engine's tools", "[3/8] base model", "[4/8] gpu", "[5/8] train", "[6/8] sample", "[7/8] report", "[8/8] results"):
        assert stage in out
    assert "to do: stable-diffusion-v1-5/stable-diffusion-v1-5 is not in the Hugging Face cache and HF_HUB_OFFLINE is set" in out
    # The pre-flight runs first, from the wheel with the system python (nothing installed yet), and names the cause.
    assert out.index("pre-flight") < out.index("[1/8] install")
    assert "  error: base model stable-diffusion-v1-5/stable-diffusion-v1-5: not in the Hugging Face cache and HF_HUB_OFFLINE is set" in out
    assert "(a real run stops here)" in out
    for path in (str(REPO), str(punks_dir), str(punks_dir.resolve())):
        assert path not in out and path not in done.stderr
    assert snapshot(unpacked) == before, "a dry run changed the run folder"
    assert list(home.iterdir()) == []
    again = go(unpacked, "--dry-run", env=clean_env(home, HF_HUB_OFFLINE="1"))
    assert again.returncode == 0 and again.stdout == out


def bundle_gpu_probe(output: str) -> str:
    """The python code of the GPU check as printed (checked to be the CUDA probe)."""
    line = next(line for line in output.splitlines() if "torch.cuda.is_available()" in line)
    code = shlex.split(line.split("would run: ", 1)[1])[-1]
    assert code.startswith("import sys, torch") and "sys.exit(0 if ok else 1)" in code
    return code


def test_dry_run_options_reach_their_commands(unpacked: Path, tmp_path: Path):
    base = tmp_path / "my models" / "sd15.safetensors"
    base.parent.mkdir()
    base.write_bytes(b"weights")
    env = clean_env(tmp_path / "home", BASE_MODEL=str(base), SD_SCRIPTS_SRC="/mirror/sd-scripts", TORCH_SPEC="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu124")
    done = go(unpacked, "--dry-run", "--cpu", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    cmds = would_run(done.stdout)
    assert [".venv/bin/python", "-m", "pip", "install", "--disable-pip-version-check", "torch==2.5.1", "--index-url", "https://download.pytorch.org/whl/cu124"] in cmds
    assert [".venv/bin/bespoke-kohya", "vendor", "--repo-root", str(unpacked), "--tag", "v0.10.1", "--source", "/mirror/sd-scripts"] in cmds
    assert [".venv/bin/python", "-m", "bespoke_kohya.bundle", "set-base", ".", str(base)] in cmds
    assert [".venv/bin/bespoke-kohya", "train", "--resume", ".", "--preset", "sd15_576", "--no-sample", "--cpu"] in cmds
    assert [".venv/bin/bespoke-kohya", "sample", "--run", ".", "--device", "cpu"] in cmds
    assert "skip: --cpu given" in done.stdout and not any("torch.cuda" in " ".join(c) for c in cmds)
    assert f"  error: base model {base}: not a readable .safetensors file" in done.stdout  # pre-flight read BASE_MODEL's header
    assert tomllib.loads((unpacked / "config" / "train.toml").read_text())["model"]["pretrained_model_name_or_path"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"


def test_go_sh_refuses_bad_input_with_one_clear_line(unpacked: Path, tmp_path: Path):
    missing = go(unpacked, "--dry-run", env=clean_env(tmp_path / "home", BASE_MODEL="/nowhere/model.safetensors"))
    assert missing.returncode == 1
    assert "go.sh: error: BASE_MODEL=/nowhere/model.safetensors: no such file or folder" in missing.stderr
    unknown = go(unpacked, "--dry-rnu", env=clean_env(tmp_path / "home"))
    assert unknown.returncode == 2 and "unknown option --dry-rnu" in unknown.stderr
    next((unpacked / "wheels").glob("*.whl")).unlink()
    no_wheel = go(unpacked, "--dry-run", env=clean_env(tmp_path / "home"))
    assert no_wheel.returncode == 1 and "is missing, so this is not a complete bundle" in no_wheel.stderr


def test_go_sh_hands_over_to_bash_when_started_with_sh(unpacked: Path, tmp_path: Path):
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("no sh")
    done = subprocess.run([sh, "go.sh", "--help"], cwd=unpacked, env=clean_env(tmp_path / "home"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("usage: ./go.sh [--dry-run] [--cpu]")


# ---------------------------------------------------------------- stage states, set-base, results


def fake_trained(run_dir: Path, epochs: int = 2) -> None:
    """Mark an unpacked run as trained with `epochs` checkpoints and a leftover optimizer state."""
    ckpt = run_dir / "checkpoints"
    ckpt.mkdir()
    record = read_run(run_dir)
    record["epochs"] = {}
    for e in range(1, epochs + 1):
        name = f"bespoke-{e:06d}.safetensors" if e < epochs else "bespoke.safetensors"
        (ckpt / name).write_bytes(b"lora")
        record["epochs"][str(e)] = f"checkpoints/{name}"
    (ckpt / "bespoke-000001-state").mkdir()
    (ckpt / "bespoke-000001-state" / "optimizer.bin").write_bytes(b"state")
    record["status"] = "finished"
    write_run_document(run_dir, record)


def test_stage_states_follow_the_real_state(unpacked: Path):
    assert not stage_state(unpacked, "install").done
    (unpacked / ".venv" / "bin").mkdir(parents=True)
    (unpacked / ".venv" / "bin" / "bespoke-kohya").write_text("#!/bin/sh\n")
    assert stage_state(unpacked, "install").reason.endswith("is not installed into .venv yet")
    (unpacked / "logs").mkdir()
    manifest = json.loads((unpacked / "bundle.json").read_text())
    (unpacked / "logs" / "go-install.done").write_text(manifest["wheel"] + "\n")
    assert stage_state(unpacked, "install").done
    assert stage_state(unpacked, "tools").reason == "vendor/sd-scripts is not installed yet"
    assert stage_state(unpacked, "train") == bundle_mod.StageState(False, "not trained yet")
    assert stage_state(unpacked, "sample").reason == "no epoch checkpoints yet (train first)"

    fake_trained(unpacked, epochs=3)
    assert stage_state(unpacked, "train").done
    assert unsampled_epochs(unpacked) == [1, 2, 3]
    samples = unpacked / "samples"
    image = SampleImage(prompt_id="p01", seed=1)
    write_samples(unpacked, Samples(epochs={"1": SampledEpoch(checkpoint="checkpoints/bespoke-000001.safetensors", images=[image]),
                                            "2": SampledEpoch(checkpoint="checkpoints/another.safetensors", images=[image])}))
    assert unsampled_epochs(unpacked) == [2, 3]  # epoch 2 was sampled from another checkpoint
    assert stage_state(unpacked, "sample") == bundle_mod.StageState(False, "epochs 2,3 not sampled yet")
    assert not stage_state(unpacked, "report").done

    (unpacked / "report").mkdir()
    (unpacked / "report" / "index.html").write_text("<html></html>")
    assert stage_state(unpacked, "report").done
    os.utime(samples / "samples.json")  # newer samples make the report stale
    os.utime(unpacked / "report" / "index.html", ns=(1, 1))
    assert not stage_state(unpacked, "report").done
    with pytest.raises(UserError, match="stage 'sampel': expected one of"):
        stage_state(unpacked, "sampel")


def test_state_command_exit_codes_for_go_sh(unpacked: Path, capsys: pytest.CaptureFixture[str]):
    assert bundle_mod.main(["state", str(unpacked), "train"]) == bundle_mod.NOT_DONE
    assert capsys.readouterr().out == "not trained yet\n"
    fake_trained(unpacked)
    assert bundle_mod.main(["state", str(unpacked), "train"]) == 0
    assert bundle_mod.main(["unsampled", str(unpacked)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1,2"


def test_set_base_rewrites_the_run_and_is_idempotent(unpacked: Path, tmp_path: Path):
    base = tmp_path / "models dir" / "sd15.safetensors"
    base.parent.mkdir()
    base.write_bytes(b"weights")
    train_toml = unpacked / "config" / "train.toml"
    header = train_toml.read_text().splitlines()[0]
    assert set_base(unpacked, str(base)) == f"kohya.pretrained_model_name_or_path: stable-diffusion-v1-5/stable-diffusion-v1-5 -> {base}"
    assert train_toml.read_text().splitlines()[0] == header  # comments and layout kept
    assert tomllib.loads(train_toml.read_text())["model"]["pretrained_model_name_or_path"] == str(base)
    assert json.loads((unpacked / "config" / "preset.json").read_text())["kohya"]["pretrained_model_name_or_path"] == str(base)
    record = read_run(unpacked)
    assert record["resolved"]["kohya"]["pretrained_model_name_or_path"] == str(base)
    assert record["base_changes"][0]["from"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert set_base(unpacked, str(base)) == f"kohya.pretrained_model_name_or_path is already {base}"
    assert stage_state(unpacked, "base") == bundle_mod.StageState(True, f"local base {base} is present")
    with pytest.raises(UserError, match="BASE_MODEL=/no/such.safetensors: no such file or folder"):
        set_base(unpacked, "/no/such.safetensors")
    fake_trained(unpacked)
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"x")
    with pytest.raises(UserError, match=r"this run already trained from .*sd15\.safetensors \(status finished\)"):
        set_base(unpacked, str(other))


def test_results_carry_what_the_report_needs_and_no_environments(unpacked: Path):
    fake_trained(unpacked)
    for junk in (".venv/bin/python", "vendor/sd-scripts/train_network.py", ".cache/tokenizers/x"):
        (unpacked / junk).parent.mkdir(parents=True, exist_ok=True)
        (unpacked / junk).write_text("x")
    (unpacked / "report").mkdir()
    (unpacked / "report" / "index.html").write_text("<html></html>")
    path, size = pack_results(unpacked)
    assert path == unpacked / "results.tar.gz" and size == path.stat().st_size
    with tarfile.open(path) as tar:
        names = tar.getnames()
    top = unpacked.name
    assert f"{top}/checkpoints/bespoke.safetensors" in names and f"{top}/report/index.html" in names and f"{top}/run.json" in names
    assert not any(part in n for n in names for part in ("-state", ".venv", "/vendor", "/wheels", ".cache", "go.sh", "results.tar.gz"))
    assert stage_state(unpacked, "results").done
    pack_results(unpacked)  # rebuilt in place when run again


# ---------------------------------------------------------------- local base models


def test_local_base_is_packed_only_when_asked(tmp_path: Path, small_punks: Path, wheel: Path):
    model = tmp_path / "models" / "pixnite15.safetensors"
    model.parent.mkdir()
    model.write_bytes(b"not really weights")
    override = [f"pretrained_model_name_or_path={model}"]

    packed = build_bundle("pixnite_sd15", small_punks, tmp_path / "with-base.tar.gz", override, include_base=True, wheel=wheel)
    assert packed.base == "base/pixnite15.safetensors" and packed.base_included
    run_dir = unpack(packed.path, tmp_path / "box one")
    assert (run_dir / "base" / "pixnite15.safetensors").read_bytes() == b"not really weights"
    assert tomllib.loads((run_dir / "config" / "train.toml").read_text())["model"]["pretrained_model_name_or_path"] == "base/pixnite15.safetensors"
    record = read_run(run_dir)
    assert record["overrides"] == ["pretrained_model_name_or_path=base/pixnite15.safetensors"]
    assert stage_state(run_dir, "base").done

    plain = build_bundle("pixnite_sd15", small_punks, tmp_path / "without-base.tar.gz", override, wheel=wheel)
    assert not plain.base_included and any("is not packed (--include-base packs it)" in n for n in plain.notes)
    run_dir = unpack(plain.path, tmp_path / "box two")
    assert not (run_dir / "base").exists()
    state = stage_state(run_dir, "base")
    assert not state.done and "copy it to base/pixnite15.safetensors" in state.reason
    for path in run_dir.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".toml", ".txt"):
            assert str(model.parent) not in path.read_text(encoding="utf-8"), path

    with pytest.raises(UserError, match="--include-base packs a local base model, but kohya.pretrained_model_name_or_path = 'stable-diffusion-v1-5/stable-diffusion-v1-5' is a hub id"):
        build_bundle("sd15_576", small_punks, tmp_path / "hub.tar.gz", include_base=True, wheel=wheel)
    assert not (tmp_path / "hub.tar.gz").exists()


def test_a_wrong_wheel_is_refused(tmp_path: Path, small_punks: Path):
    fake = tmp_path / "bespoke_kohya-0.1.0-py3-none-any.whl"
    fake.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a wheel"):
        build_bundle("sd15_576", small_punks, tmp_path / "x.tar.gz", wheel=fake)


def test_cli_bundle_command(tmp_path: Path, small_punks: Path, wheel: Path, capsys: pytest.CaptureFixture[str]):
    from bespoke_kohya import cli

    parser = cli.build_parser()
    choices = next(a for a in parser._subparsers._group_actions if a.dest == "command").choices  # type: ignore[union-attr]
    if "bundle" not in choices:
        pytest.skip("the `bundle` subcommand is not wired into cli.py yet")
    out = tmp_path / "cli-run.tar.gz"
    assert cli.main(["bundle", "--preset", "sd15_576", "--dataset", str(small_punks), "--out", str(out), "--wheel", str(wheel), "--set", "network_dim=16"]) == 0
    printed = capsys.readouterr().out
    assert f"tar xzf {out.name} && cd cli-run && ./go.sh" in printed
    assert re.search(r"\(\d+\.\d (KiB|MiB),", printed), printed
    with tarfile.open(out) as tar:
        train_toml = tar.extractfile("cli-run/config/train.toml").read().decode()  # type: ignore[union-attr]
    assert tomllib.loads(train_toml)["network"]["network_dim"] == 16
    assert cli.main(["bundle", "--preset", "sd15_576", "--dataset", str(small_punks), "--out", str(out), "--wheel", str(wheel)]) == 2
    assert "already exists" in capsys.readouterr().err


# ---------------------------------------------------------------- real go.sh runs (CPU)


def seed_offline_venv(run_dir: Path) -> None:
    """Pre-create `.venv` so go.sh's `pip install wheels/*.whl` needs no package index.

    On a GPU box pip downloads torch and the rest; here there is no index (PIP_NO_INDEX=1),
    so the new venv sees this environment's installed packages through a .pth file, except
    bespoke-kohya itself, which go.sh must install from the bundled wheel. go.sh keeps an
    existing .venv and still runs the real `pip install` of the wheel into it.
    """
    deps = run_dir.parent / "deps"
    deps.mkdir()
    here = Path(sysconfig.get_paths()["purelib"])
    for entry in here.iterdir():
        if entry.name.startswith(("__editable__", "bespoke_kohya", "__pycache__")) or entry.suffix == ".pth":
            continue
        (deps / entry.name).symlink_to(entry)
    base_python = Path(sys.base_prefix) / "bin" / "python3"
    subprocess.run([str(base_python), "-m", "venv", "--without-pip", str(run_dir / ".venv")], check=True)
    (purelib,) = (run_dir / ".venv" / "lib").glob("python3*/site-packages")
    (purelib / "_offline_test_deps.pth").write_text(f"{deps}\n", encoding="utf-8")


def stage_commands(output: str) -> list[str]:
    """The commands go.sh actually ran (`  $ ...` lines)."""
    return [line[4:] for line in output.splitlines() if line.startswith("  $ ")]


@pytest.mark.slow
def test_go_sh_trains_samples_and_reports_a_pixel24_bundle(tmp_path: Path, small_punks: Path, wheel: Path):
    """The whole path without a GPU: install from the wheel, train, sample, report, results; re-run skips all."""
    tiny = ["epochs=2", "pixel24.steps=2", "base=none", "batch_size=8", "sample.steps=2", "sample.seeds=[1]"]
    made = build_bundle("pixel24", small_punks, tmp_path / "p24.tar.gz", tiny, wheel=wheel)
    run_dir = unpack(made.path, tmp_path / "gpu box")
    seed_offline_venv(run_dir)
    env = clean_env(tmp_path / "home", PIP_NO_INDEX="1", HF_HUB_OFFLINE="1")
    first = subprocess.run(["./go.sh", "--cpu"], cwd=run_dir, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert stage_commands(first.stdout) == [
        f".venv/bin/python -m pip install --disable-pip-version-check wheels/{made.wheel}",
        ".venv/bin/bespoke-kohya train --resume . --preset pixel24 --no-sample --cpu",
        ".venv/bin/bespoke-kohya sample --run . --epochs 1,2 --device cpu",
        ".venv/bin/bespoke-kohya report --run .",
        ".venv/bin/python -m bespoke_kohya.bundle pack-results .",
    ]
    record = read_run(run_dir)
    assert record["status"] == "finished" and sorted(record["epochs"]) == ["1", "2"]
    assert all((run_dir / path).is_file() for path in record["epochs"].values())
    samples = json.loads((run_dir / "samples" / "samples.json").read_text())
    assert sorted(samples["epochs"]) == ["1", "2"]
    for stage in ("install", "train", "sample", "report", "results"):
        assert (run_dir / "logs" / f"go-{stage}.log").stat().st_size > 0

    again = subprocess.run(["./go.sh", "--cpu"], cwd=run_dir, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and stage_commands(again.stdout) == []
    assert again.stdout.count("  skip: ") == 8

    # Back home: unpack results.tar.gz elsewhere and report there; the numbers are the box's.
    home = tmp_path / "home copy"
    home.mkdir()
    subprocess.run(["tar", "xzf", str(run_dir / "results.tar.gz"), "-C", str(home)], check=True)
    copied = home / run_dir.name
    assert not (copied / ".venv").exists() and not (copied / "wheels").exists()
    from bespoke_kohya.cli import main

    assert main(["report", "--run", str(copied)]) == 0
    box = json.loads((run_dir / "report" / "metrics.json").read_text())
    back = json.loads((copied / "report" / "metrics.json").read_text())
    for key in ("samples_sha256", "epochs", "recommendation", "verdicts"):
        assert back[key] == box[key], key


@pytest.fixture(scope="module")
def random_sd15(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight SD1.5 diffusers folder (the real architecture sd-scripts needs)."""
    from bespoke_kohya.engines.kohya import offline_sd as smoke

    try:
        smoke.clip_bpe_path()
    except UserError as exc:
        pytest.skip(str(exc))
    return smoke.build_random_sd15(tmp_path_factory.mktemp("base") / "sd15 random", seed=0)


@pytest.mark.slow
@pytest.mark.sd_scripts
def test_go_sh_trains_a_kohya_bundle_with_sd_scripts(tmp_path: Path, small_punks: Path, wheel: Path, random_sd15: Path):
    """The smoke path from an unpacked bundle: local sd-scripts, BASE_MODEL, CPU, 64 px, one epoch."""
    from bespoke_kohya.engines.kohya import offline_sd as smoke
    from bespoke_kohya.engines.kohya.vendor import find_sd_scripts

    sd = find_sd_scripts(REPO)
    if sd is None:
        pytest.skip("kohya sd-scripts is not installed (make vendor)")
    for png in sorted(small_punks.glob("*.png"))[4:]:  # 4 images keep the CPU run short
        png.unlink()
    tiny = ["resolution=64", "allow_uneven_pixels=true", "num_repeats=1", "max_train_epochs=1", "mixed_precision=no",
            "network_dim=4", "network_alpha=2", "max_data_loader_n_workers=0",
            "sample.steps=2", "sample.seeds=[1]", 'sample.prompts=["lad, green solid background"]']
    made = build_bundle("sd15_576", small_punks, tmp_path / "kohya.tar.gz", tiny, wheel=wheel)
    run_dir = unpack(made.path, tmp_path / "gpu box")
    seed_offline_venv(run_dir)
    cache = tmp_path / "cache"
    smoke.write_tokenizer_cache(cache / "tokenizers")
    env = clean_env(tmp_path / "home", PIP_NO_INDEX="1", HF_HUB_OFFLINE="1", BESPOKE_CACHE=str(cache),
                    SD_SCRIPTS_DIR=str(sd.path), SD_SCRIPTS_PYTHON=str(sd.python), BASE_MODEL=str(random_sd15))
    done = subprocess.run(["./go.sh", "--cpu"], cwd=run_dir, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f".venv/bin/python -m bespoke_kohya.bundle set-base . '{random_sd15}'" in stage_commands(done.stdout)
    record = read_run(run_dir)
    assert record["status"] == "finished" and record["epochs"] == {"1": "checkpoints/bespoke.safetensors"}
    assert tomllib.loads((run_dir / "config" / "train.toml").read_text())["model"]["pretrained_model_name_or_path"] == str(random_sd15)
    samples = json.loads((run_dir / "samples" / "samples.json").read_text())
    assert samples["epochs"]["1"]["checkpoint"] == "checkpoints/bespoke.safetensors"
    with tarfile.open(run_dir / "results.tar.gz") as tar:
        names = tar.getnames()
    assert f"{run_dir.name}/checkpoints/bespoke.safetensors" in names and not any("-state" in n for n in names)


# ---------------------------------------------------------------- the kohya methods travel in the run (issue 25)


def test_a_controlnet_run_travels_with_its_edge_maps_and_sampling_lora(tmp_path: Path, small_punks: Path, wheel: Path):
    import torch
    from safetensors.torch import save_file

    lora = tmp_path / "other run" / "bespoke-000002.safetensors"
    lora.parent.mkdir()
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(lora))
    built = build_bundle("sd15_576_controlnet", small_punks, tmp_path / "cn.tar.gz", [f"kohya.controlnet.lora={lora}", "resolution=96"], wheel=wheel)
    with tarfile.open(built.path) as tar:
        names = set(tar.getnames())
    root = built.run_id
    assert f"{root}/config/sample_lora.safetensors" in names
    assert sum(n.startswith(f"{root}/data/10_bespoke_punk_conditioning/") and n.endswith(".png") for n in names) == 8  # ceil(8 × 0.9): the one held out is trained on too (render warns)
    assert sum(n.startswith(f"{root}/data/10_bespoke_punk_trained/") and n.endswith(".png") for n in names) == 8
    run_dir = unpack(built.path, tmp_path / "gpu box")
    lora.unlink()  # the box never had the original
    model = tmp_path / "models" / "sd15.safetensors"
    model.parent.mkdir()
    model.write_bytes(b"weights")
    set_base(run_dir, str(model))  # re-renders the config on the box: the edge maps and the LoRA copy stay
    assert (run_dir / "config" / "sample_lora.safetensors").is_file()
    assert len(list((run_dir / "data" / "10_bespoke_punk_conditioning").glob("*.png"))) == 8
    assert read_run(run_dir)["script"] == "train_control_net.py"
