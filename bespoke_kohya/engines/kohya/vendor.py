"""kohya sd-scripts as a pinned external dependency: install, locate, and check it.

sd-scripts is not on PyPI and pins libraries older than ours (diffusers 0.32.1,
transformers 4.54.1, accelerate 1.6.0), so it lives in its own clone with its own
virtual environment and is only ever run as a child process:

    vendor/sd-scripts/          a clone of the tag (git-ignored, never committed)
    vendor/sd-scripts/venv/     its interpreter (sd-scripts' own .gitignore skips `venv`)

`SD_SCRIPTS_DIR` / `SD_SCRIPTS_PYTHON` point at an existing install instead.
This module is standard-library only: the CLI imports it without torch.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from ...atomic import staged_folder, write_json_atomic
from ...errors import UserError
from ...paths import cache_dir, hub_cache_dir

SD_SCRIPTS_TAG = "v0.10.1"
SD_SCRIPTS_UPSTREAM = "https://github.com/kohya-ss/sd-scripts.git"
# On a CPU machine the PyPI torchvision that matches the venv's torch must not be a
# CUDA-only build ("operator torchvision::nms does not exist"); this pair works on
# x86_64 CPU. GPU boxes override it (e.g. with a CUDA index URL) through SD_SCRIPTS_TORCH.
DEFAULT_TORCH_SPEC = "torch==2.14.1 torchvision==0.29.1"
VENV_NAME = "venv"
# Folders some mirrors of sd-scripts lack the files of (Windows DLLs, a Qwen3 tokenizer);
# nothing the SD1.5/SDXL LoRA scripts import lives there, so they may be left out.
SPARSE_EXCLUDE = ("bitsandbytes_windows/", "configs/qwen3_06b/")
# Written into the clone's .git (invisible to `git status`) once an install is complete.
MARKER = "bespoke-kohya-install.json"
CLIP_L_TOKENIZER_ID = "openai/clip-vit-large-patch14"
CLIP_G_TOKENIZER_ID = "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"
VERIFY_IMPORTS = "import library.train_util, torchvision, torchvision.ops; torchvision.ops.nms"

Log = Callable[[str], None]


@dataclass
class SdScripts:
    """A located sd-scripts install: its clone, its interpreter and what it is checked out at."""

    path: Path
    python: Path
    commit: str | None
    tag: str | None
    accelerate: Path | None

    def to_dict(self) -> dict[str, str | None]:
        """JSON-ready form (paths as strings), recorded in run.json."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


# ---------------------------------------------------------------- locating


def vendor_dir(repo_root: Path) -> Path:
    """Where `make vendor` puts sd-scripts."""
    return repo_root / "vendor" / "sd-scripts"


def venv_python(venv: Path) -> Path:
    """The interpreter of a virtual environment (POSIX or Windows layout)."""
    posix = venv / "bin" / "python"
    return posix if posix.exists() or os.name != "nt" else venv / "Scripts" / "python.exe"


def tokenizer_cache_dir() -> Path:
    """Where sd-scripts finds (or stores) the CLIP tokenizers, shared by all runs.

    Same rule as `train.tokenizer_cache_dir()`: `$BESPOKE_CACHE/tokenizers`, default
    `~/.cache/bespoke-kohya/tokenizers`.
    """
    return cache_dir() / "tokenizers"


def tokenizer_cache_entry(cache_dir: Path, model_id: str = CLIP_L_TOKENIZER_ID) -> Path:
    """The folder sd-scripts loads a tokenizer from: `<cache>/<model_id with / -> _>`.

    (library/strategy_base.py `_load_tokenizer` at v0.10.1.)
    """
    return cache_dir / model_id.replace("/", "_")


def _git_out(git: str, path: Path, *args: str) -> str | None:
    """stdout of a git command in `path`, or None when it fails (not a repo, no tag)."""
    try:
        done = subprocess.run([git, "-C", str(path), *args], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def git_revision(path: Path) -> tuple[str | None, str | None]:
    """(commit, tag) the clone at `path` is checked out at; tag is None when not exactly on one."""
    git = shutil.which("git")
    if git is None:
        return None, None
    commit = _git_out(git, path, "rev-parse", "HEAD")
    tag = _git_out(git, path, "describe", "--tags", "--exact-match") if commit else None
    return commit, tag


def read_marker(path: Path) -> dict | None:
    """The install record `install()` leaves in a clone's .git, or None."""
    marker = path / ".git" / MARKER
    try:
        return json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser() if value else None


def _check_sd_scripts_dir(path: Path, origin: str) -> None:
    if not path.is_dir():
        raise UserError(f"{origin}={path}: no such folder; point it at a clone of kohya-ss/sd-scripts, or unset it to use vendor/sd-scripts (make vendor)")
    if not (path / "train_network.py").is_file():
        raise UserError(f"{origin}={path}: no train_network.py there, so it is not an sd-scripts clone; point it at the clone's top folder")


def find_sd_scripts(repo_root: Path) -> SdScripts | None:
    """Locate sd-scripts: `SD_SCRIPTS_DIR` (+ `SD_SCRIPTS_PYTHON`) first, else `vendor/sd-scripts`.

    Returns None when nothing is installed (or `vendor/sd-scripts` is an interrupted
    install); raises UserError when an environment variable points at something unusable,
    because silently falling back would train with an install the user did not choose.
    """
    env_dir = _env_path("SD_SCRIPTS_DIR")
    env_python = _env_path("SD_SCRIPTS_PYTHON")
    if env_python is not None and not env_python.is_file():
        raise UserError(f"SD_SCRIPTS_PYTHON={env_python}: no such file; set it to the python of sd-scripts' virtual environment (…/venv/bin/python)")
    if env_dir is not None:
        _check_sd_scripts_dir(env_dir, "SD_SCRIPTS_DIR")
        path = env_dir
    else:
        path = vendor_dir(repo_root)
        if not (path / "train_network.py").is_file() or (read_marker(path) or {}).get("status") != "complete":
            return None
    python = env_python
    if python is None:
        candidates = [venv_python(path / VENV_NAME), venv_python(path / ".venv")]
        python = next((c for c in candidates if c.is_file()), None)
        if python is None:
            raise UserError(f"SD_SCRIPTS_DIR={path}: no venv/bin/python or .venv/bin/python in it; set SD_SCRIPTS_PYTHON to the interpreter that has sd-scripts' requirements")
    accelerate = python.parent / ("accelerate.exe" if os.name == "nt" else "accelerate")
    commit, tag = git_revision(path)
    return SdScripts(path=path, python=python, commit=commit, tag=tag, accelerate=accelerate if accelerate.is_file() else None)


# ---------------------------------------------------------------- installing


def _child_env() -> dict[str, str]:
    """Our own venv must not leak into sd-scripts' pip or python."""
    env = dict(os.environ)
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PIP_REQUIRE_VIRTUALENV"):
        env.pop(name, None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run(cmd: list[str], what: str, fix: str, log: Log, cwd: Path | None = None, quiet: bool = False) -> str:
    """Run a step, streaming its output to `log`; on failure raise one line naming the step.

    Returns the whole output (stdout and stderr together).
    """
    tail: deque[str] = deque(maxlen=40)
    lines: list[str] = []
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    except OSError as exc:
        raise UserError(f"{what}: could not start {cmd[0]} ({exc}); {fix}") from exc
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            tail.append(line)
            if not quiet:
                log(f"  {line}")
        code = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if code != 0:
        last = next((text.strip() for text in reversed(tail) if text.strip()), "(no output)")
        raise UserError(f"{what} failed (exit {code}): {last}; {fix}")
    return "\n".join(lines)


def _is_url(source: str) -> bool:
    return "://" in source or source.startswith("git@")


def resolve_source(source: str | None) -> str:
    """`--source`, else `SD_SCRIPTS_SRC`, else the upstream repository; local paths must exist."""
    chosen = source or os.environ.get("SD_SCRIPTS_SRC", "").strip() or SD_SCRIPTS_UPSTREAM
    if _is_url(chosen):
        return chosen
    path = Path(chosen).expanduser().resolve()
    if not path.exists():
        origin = "--source" if source else "SD_SCRIPTS_SRC"
        raise UserError(f"{origin}={chosen}: no such folder; give a clone or mirror of kohya-ss/sd-scripts, or leave it unset to clone {SD_SCRIPTS_UPSTREAM}")
    return str(path)


def missing_paths(git: str, clone: Path, rev: str) -> list[str]:
    """Files of `rev` whose blobs the clone lacks (some mirrors drop large files)."""
    listing = subprocess.run([git, "-C", str(clone), "ls-tree", "-r", "-z", rev], capture_output=True, check=True).stdout
    entries = [e.decode("utf-8", "replace") for e in listing.split(b"\0") if e]
    blobs: list[tuple[str, str]] = []
    for entry in entries:
        meta, _, path = entry.partition("\t")
        mode, kind, oid = meta.split()
        if kind == "blob":
            blobs.append((oid, path))
    if not blobs:
        return []
    query = "".join(f"{oid}\n" for oid, _ in blobs)
    answer = subprocess.run([git, "-C", str(clone), "cat-file", "--batch-check"], input=query, capture_output=True, text=True, check=True).stdout
    return [path for (oid, path), line in zip(blobs, answer.splitlines(), strict=True) if line.endswith(" missing")]


def _sparse_patterns(missing: Iterable[str]) -> list[str] | None:
    """Non-cone sparse patterns leaving out SPARSE_EXCLUDE, or None when nothing is missing.

    Raises when a missing file lies elsewhere: that copy cannot give a working install.
    """
    missing = list(missing)
    if not missing:
        return None
    outside = [p for p in missing if not p.startswith(SPARSE_EXCLUDE)]
    if outside:
        shown = ", ".join(outside[:3]) + (f" and {len(outside) - 3} more" if len(outside) > 3 else "")
        raise UserError(f"the sd-scripts source lacks files sd-scripts needs ({shown}); use a complete clone or the upstream repository (SD_SCRIPTS_SRC={SD_SCRIPTS_UPSTREAM})")
    return ["/*"] + [f"!/{folder}" for folder in SPARSE_EXCLUDE]


def clone_at_tag(git: str, source: str, tag: str, dest: Path, log: Log) -> str:
    """Clone `source` into the empty folder `dest` and check out `tag`; returns the commit.

    A plain `git checkout` exits 0 even when blobs are missing, so they are looked for
    first and the two known-optional folders are left out with a sparse checkout.
    """
    fix = "check the source (--source / SD_SCRIPTS_SRC) and your network, then run make vendor again"
    _run([git, "clone", "--no-checkout", "--quiet", source, str(dest)], f"git clone {source}", fix, log)
    commit = _git_out(git, dest, "rev-parse", "--verify", "--quiet", f"{tag}^{{commit}}")
    if commit is None:
        raise UserError(f"tag {tag} is not in {source}: pick an existing tag (--tag) or a newer mirror; this tool is tested with {SD_SCRIPTS_TAG}")
    patterns = _sparse_patterns(missing_paths(git, dest, commit))
    if patterns is not None:
        log(f"the source lacks files under {', '.join(SPARSE_EXCLUDE)}: sparse checkout without them")
        _run([git, "-C", str(dest), "sparse-checkout", "set", "--no-cone", *patterns], "git sparse-checkout", fix, log)
    _run([git, "-C", str(dest), "-c", "advice.detachedHead=false", "checkout", "--quiet", tag], f"git checkout {tag}", fix, log)
    dirty = _git_out(git, dest, "status", "--porcelain")
    if dirty:
        raise UserError(f"git checkout {tag} left missing or changed files ({dirty.splitlines()[0].strip()}); use a complete clone of sd-scripts as the source")
    return commit


def _pip(python: Path, args: list[str], what: str, log: Log, cwd: Path | None = None) -> None:
    _run([str(python), "-m", "pip", "install", "--disable-pip-version-check", *args], what, "fix the cause above and run make vendor again (nothing was kept)", log, cwd=cwd)


def _installed_versions(python: Path, dists: Iterable[str]) -> dict[str, str]:
    code = "import importlib.metadata as m, json, sys; print(json.dumps({d: m.version(d) for d in sys.argv[1:]}))"
    out = _run([str(python), "-c", code, *dists], "reading installed versions", "run make vendor again", lambda _: None, quiet=True)
    return json.loads(out.strip().splitlines()[-1])


def build_venv(clone: Path, torch_spec: str, constraints: Path | None, log: Log) -> dict[str, str]:
    """Create `clone/venv`, install the torch pair, then sd-scripts' requirements.

    The installed torch/torchvision are written to `venv/torch-constraints.txt` and pinned
    with `-c`, so requirements.txt (diffusers[torch], bitsandbytes, …) cannot swap the build.
    """
    venv = clone / VENV_NAME
    _run([sys.executable, "-m", "venv", str(venv)], "creating sd-scripts' virtual environment", "check that this Python has the venv module (apt-get install python3-venv)", log)
    python = venv_python(venv)
    torch_args = shlex.split(torch_spec)
    log(f"installing {torch_spec} into {venv}")
    _pip(python, torch_args, f"pip install {torch_spec}", log)
    versions = _installed_versions(python, ["torch", "torchvision"])
    pins = venv / "torch-constraints.txt"
    pins.write_text("".join(f"{name}=={version}\n" for name, version in versions.items()), encoding="utf-8")
    cons = ["-c", str(pins)] + (["-c", str(constraints)] if constraints and constraints.is_file() else [])
    log("installing sd-scripts' requirements.txt")
    # cwd=clone: requirements.txt ends with `-e .`, which installs sd-scripts' `library` package.
    _pip(python, ["-r", "requirements.txt", *cons], "pip install -r requirements.txt", log, cwd=clone)
    log("checking that sd-scripts imports")
    _run([str(python), "-c", VERIFY_IMPORTS], "importing library.train_util and torchvision in sd-scripts' venv",
         "a torchvision built for another torch or for CUDA fails like this on CPU: set SD_SCRIPTS_TORCH to a matching pair and run make vendor again",
         log, cwd=clone.parent)
    return _installed_versions(python, ["torch", "torchvision", "accelerate", "diffusers", "transformers"])


def _from_clone(target: Path) -> SdScripts:
    """The SdScripts of a `make vendor` clone (its own venv, whatever the environment says)."""
    python = venv_python(target / VENV_NAME)
    accelerate = python.parent / ("accelerate.exe" if os.name == "nt" else "accelerate")
    commit, tag = git_revision(target)
    return SdScripts(target, python, commit, tag, accelerate if accelerate.is_file() else None)


def _existing_install(target: Path, tag: str, log: Log) -> SdScripts | None:
    """An install already at `target`: return it when at `tag`, clear an interrupted one, refuse others."""
    marker = read_marker(target)
    if marker is None:
        raise UserError(f"{target} exists but was not made by make vendor; move it away (or point SD_SCRIPTS_DIR at it) and run make vendor again")
    if marker.get("status") != "complete":
        log(f"removing an interrupted install in {target}")
        shutil.rmtree(target)
        return None
    found = _from_clone(target)
    if found.tag == tag and found.python.is_file():
        log(f"sd-scripts {tag} is already installed in {target} (commit {found.commit})")
        return found
    at = found.tag or (found.commit[:10] if found.commit else "an unknown commit")
    raise UserError(f"{target} holds sd-scripts at {at}, not {tag}: remove it (rm -rf {target}) and run make vendor again")


def install(repo_root: Path, source: str | None = None, tag: str = SD_SCRIPTS_TAG, torch_spec: str | None = None, log: Log = print) -> SdScripts:
    """Install sd-scripts `tag` into `vendor/sd-scripts` with its own venv (what `make vendor` runs).

    Idempotent: an install already at `tag` is returned as is. All-or-nothing: the clone
    is made in a temporary folder under vendor/ and renamed; if any later step fails (or
    is interrupted) the whole `vendor/sd-scripts` is removed again. The venv is built in
    place because virtual environments and editable installs cannot be moved.
    """
    git = shutil.which("git")
    if git is None:
        raise UserError("git is not installed: install it (apt-get install git) and run make vendor again")
    target = vendor_dir(repo_root)
    if os.environ.get("SD_SCRIPTS_DIR"):
        log(f"note: SD_SCRIPTS_DIR is set, so it is used instead of {target}")
    if target.exists():
        found = _existing_install(target, tag, log)
        if found is not None:
            return found
    src = resolve_source(source)
    spec = torch_spec or os.environ.get("SD_SCRIPTS_TORCH", "").strip() or DEFAULT_TORCH_SPEC
    started = time.monotonic()
    with staged_folder(target, refusal="move it away and run make vendor again") as staging:
        log(f"cloning sd-scripts {tag} from {src}")
        commit = clone_at_tag(git, src, tag, staging, log)
        write_json_atomic(staging / ".git" / MARKER, {"status": "installing", "tag": tag, "commit": commit, "source": src, "torch_spec": spec})
    try:  # the venv is built in place: virtual environments cannot be moved
        versions = build_venv(target, spec, repo_root / "vendor" / "constraints.txt", log)
        record = {"status": "complete", "tag": tag, "commit": commit, "source": src, "torch_spec": spec, "versions": versions,
                  "installed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": round(time.monotonic() - started, 1)}
        write_json_atomic(target / ".git" / MARKER, record)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    log(f"installed sd-scripts {tag} ({commit[:10]}) in {target} in {time.monotonic() - started:.0f} s: {versions}")
    return _from_clone(target)


# ---------------------------------------------------------------- doctor

PROBE = r"""
import importlib.metadata as m, json, platform
out = {"python": platform.python_version()}
for d in ("accelerate", "torch", "torchvision", "diffusers", "transformers"):
    try:
        out[d] = m.version(d)
    except m.PackageNotFoundError:
        out[d] = None
try:
    import torch
    out["cuda"] = torch.cuda.is_available()
    out["cuda_version"] = torch.version.cuda
    out["device"] = torch.cuda.get_device_name(0) if out["cuda"] else None
except Exception as exc:  # report, don't crash doctor
    out["torch_error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def probe_python(python: Path, timeout: float = 120) -> dict:
    """Versions and CUDA state inside sd-scripts' interpreter (one child process)."""
    try:
        done = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, timeout=timeout, env=_child_env(), check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": last}
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"unexpected output: {done.stdout[-200:]!r}"}


def _tokenizer_row(cache: Path) -> tuple[str, str, str]:
    entry = tokenizer_cache_entry(cache)
    if (entry / "vocab.json").is_file() and (entry / "merges.txt").is_file():
        return ("CLIP tokenizer (offline)", f"{entry}", "")
    hub = hub_cache_dir()
    cached = hub / ("models--" + CLIP_L_TOKENIZER_ID.replace("/", "--"))
    if cached.is_dir():
        return ("CLIP tokenizer (offline)", f"in the hub cache ({cached})", "")
    return ("CLIP tokenizer (offline)", f"not in {entry} nor the hub cache",
            f"online, sd-scripts fetches {CLIP_L_TOKENIZER_ID} on first use and keeps it in {cache}; offline: bespoke-kohya smoke --tokenizer-cache {cache}")


def doctor_rows(repo_root: Path) -> list[tuple[str, str, str]]:
    """(component, status, how to fix) rows for sd-scripts; an empty fix means fine."""
    install_fix = "make vendor (or set SD_SCRIPTS_DIR and SD_SCRIPTS_PYTHON to an existing install)"
    try:
        sd = find_sd_scripts(repo_root)
    except UserError as exc:
        return [("sd-scripts", str(exc), "fix or unset the variable"), _tokenizer_row(tokenizer_cache_dir())]
    if sd is None:
        target = vendor_dir(repo_root)
        marker = read_marker(target) if target.exists() else None
        status = f"interrupted install in {target}" if marker else f"not installed ({target} absent, SD_SCRIPTS_DIR unset)"
        if target.exists() and marker is None:
            status = f"{target} exists but was not made by make vendor"
        return [("sd-scripts", status, install_fix), _tokenizer_row(tokenizer_cache_dir())]
    at = sd.tag or (f"commit {sd.commit[:10]}" if sd.commit else "unknown revision (not a git clone)")
    if sd.commit and sd.tag:
        at += f" ({sd.commit[:10]})"
    tag_fix = "" if sd.tag == SD_SCRIPTS_TAG else f"this tool is tested with {SD_SCRIPTS_TAG}: git -C {sd.path} checkout {SD_SCRIPTS_TAG}, or make vendor"
    rows = [("sd-scripts", f"{sd.path} at {at}", tag_fix)]
    info = probe_python(sd.python)
    if "error" in info:
        rows.append(("sd-scripts python", f"{sd.python}: fails ({info['error']})", "run make vendor again (or fix SD_SCRIPTS_PYTHON)"))
        return rows + [_tokenizer_row(tokenizer_cache_dir())]
    rows.append(("sd-scripts python", f"{sd.python} (Python {info['python']})", ""))
    if info.get("accelerate") and sd.accelerate:
        rows.append(("sd-scripts accelerate", f"{info['accelerate']} ({sd.accelerate})", ""))
    else:
        rows.append(("sd-scripts accelerate", "not installed in sd-scripts' venv", f"{sd.python} -m pip install -r {sd.path / 'requirements.txt'}"))
    if info.get("torch") is None or "torch_error" in info:
        rows.append(("sd-scripts torch", info.get("torch_error", "not installed"), "make vendor (SD_SCRIPTS_TORCH chooses the torch build)"))
    elif info.get("cuda"):
        rows.append(("sd-scripts torch", f"{info['torch']}, CUDA {info.get('cuda_version')} ({info.get('device')})", ""))
    else:
        rows.append(("sd-scripts torch", f"{info['torch']}, CPU only", "training at 512 px needs a CUDA GPU; on a GPU box install a CUDA torch (SD_SCRIPTS_TORCH=…, then make vendor)"))
    rows.append(_tokenizer_row(tokenizer_cache_dir()))
    return rows


# ---------------------------------------------------------------- key lists

# Run inside sd-scripts' venv: the argparse dests of each training script's parser, and the keys of
# the voluptuous schemas each script validates its dataset TOML with, built exactly as the script
# builds its ConfigSanitizer(support_dreambooth, support_finetuning, support_controlnet, support_dropout)
# (masked_loss, which only switches ControlNet keys on for the DreamBooth scripts, is off):
#   train_network.py     ConfigSanitizer(True, True, args.masked_loss, True)    DreamBooth subsets
#   train_db.py          ConfigSanitizer(True, False, args.masked_loss, True)   DreamBooth subsets
#   train_textual_inversion.py  ConfigSanitizer(True, True, args.masked_loss, False): no caption dropout keys
#   train_control_net.py ConfigSanitizer(False, False, True, True)              ControlNet subsets (conditioning_data_dir)
KEYS_PROBE = r"""
import argparse, importlib, json, sys
sys.path.insert(0, ".")
from library.config_util import ConfigSanitizer

SCRIPTS = json.loads(sys.argv[1])

def dests(parser):
    return sorted({a.dest for a in parser._actions if a.dest != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)})

def keys(schema):
    return sorted(str(k) for k in schema if str(k) != "subsets")

out = {"args": {}, "dataset": {}}
for module, (flags, kind) in SCRIPTS.items():
    out["args"][module] = dests(importlib.import_module(module).setup_parser())
    if kind:
        s = ConfigSanitizer(*flags)
        out["dataset"][module] = {"general": keys(s.general_schema), "datasets": keys(getattr(s, kind + "_dataset_schema")),
                                  "datasets.subsets": keys(getattr(s, kind + "_subset_schema"))}
print(json.dumps(out))
"""
# script module -> (its ConfigSanitizer flags, the subset kind it validates: db = DreamBooth, cn = ControlNet; None: no dataset list)
KEY_SCRIPTS: dict[str, tuple[tuple[bool, bool, bool, bool], str | None]] = {
    "train_network": ((True, True, False, True), "db"),
    "sdxl_train_network": ((True, True, False, True), None),  # the same sanitizer as train_network: one dataset list serves both
    "train_db": ((True, False, False, True), "db"),
    "train_textual_inversion": ((True, True, False, False), "db"),
    "train_control_net": ((False, False, True, True), "cn"),
}
# The LoRA scripts' lists keep the names they had before the other methods (tests/data/README.md).
_LEGACY_STEMS = {"train_network": "", "sdxl_train_network": "sdxl_"}
ARGS_HEADER = "# argparse dests of {module}.py at {tag} ({module}.setup_parser())"
DATASET_HEADER = (
    "# dataset-config keys accepted by sd-scripts {tag} {module}.py (library/config_util.py ConfigSanitizer{flags}, {kind} subsets),\n"
    "# one `<section>.<key>` a line; sections: general = [general], datasets = [[datasets]],\n"
    "# datasets.subsets = [[datasets.subsets]]; {required}"
)
_KINDS = {"db": ("DreamBooth", "datasets.subsets.image_dir is the only required key"),
          "cn": ("ControlNet", "datasets.subsets.image_dir and datasets.subsets.conditioning_data_dir are required")}


def args_list_name(module: str, tag: str = SD_SCRIPTS_TAG) -> str:
    """The tests/data file listing ``module``'s argparse dests (``train_network`` -> sd_scripts_<tag>_args.txt)."""
    stem = _LEGACY_STEMS.get(module, f"{module}_")
    return f"sd_scripts_{tag}_{stem}args.txt"


def dataset_list_name(module: str, tag: str = SD_SCRIPTS_TAG) -> str:
    """The tests/data file listing the dataset keys ``module`` accepts (the LoRA scripts share sd_scripts_<tag>_dataset_keys.txt)."""
    stem = "" if module in _LEGACY_STEMS else f"{module}_"
    return f"sd_scripts_{tag}_{stem}dataset_keys.txt"


def extract_keys(sd: SdScripts, timeout: float = 300) -> dict[str, dict[str, object]]:
    """The real parsers' argument names and the dataset schema keys of every script in KEY_SCRIPTS, read in sd-scripts' venv."""
    spec = json.dumps({module: [list(flags), kind] for module, (flags, kind) in KEY_SCRIPTS.items()})
    try:
        done = subprocess.run([str(sd.python), "-c", KEYS_PROBE, spec], cwd=sd.path, env=_child_env(), capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"reading sd-scripts' parsers with {sd.python} failed ({exc}); run make vendor again") from exc
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"reading sd-scripts' parsers with {sd.python} failed (exit {done.returncode}): {last}; run make vendor again")
    return json.loads(done.stdout.strip().splitlines()[-1])


def key_list_texts(keys: dict[str, dict[str, object]], tag: str = SD_SCRIPTS_TAG) -> dict[str, str]:
    """File name -> text of the committed key lists (tests/data) built from `extract_keys()`."""
    texts: dict[str, str] = {}
    for module, names in keys["args"].items():
        texts[args_list_name(module, tag)] = "\n".join([ARGS_HEADER.format(module=module, tag=tag), *names])  # type: ignore[misc]
    for module, sections in keys["dataset"].items():
        flags, kind = KEY_SCRIPTS[module]
        label, required = _KINDS[kind or "db"]
        header = DATASET_HEADER.format(tag=tag, module=module, flags=tuple(flags), kind=label, required=required)
        lines = [f"{section}.{key}" for section in ("general", "datasets", "datasets.subsets") for key in sections[section]]  # type: ignore[index]
        texts[dataset_list_name(module, tag)] = "\n".join([header, *lines])
    return {name: text + "\n" for name, text in texts.items()}


def read_key_list(path: Path) -> list[str]:
    """The names in a key-list file (comment lines and blanks skipped)."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and not line.startswith("#")]


# ---------------------------------------------------------------- command line


def write_key_lists(repo_root: Path, out_dir: Path) -> list[tuple[Path, int]]:
    """Write the key-list files for the installed sd-scripts (which must be at a tag) into `out_dir`; returns (file, names) pairs."""
    sd = find_sd_scripts(repo_root)
    if sd is None or sd.tag is None:
        raise UserError("no sd-scripts checked out at a tag was found: run make vendor first")
    written = []
    for name, text in key_list_texts(extract_keys(sd), sd.tag).items():
        path = out_dir / name
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        written.append((path, len(text.splitlines()) - 1))
    return written
