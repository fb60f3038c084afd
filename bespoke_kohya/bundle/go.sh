#!/usr/bin/env bash
# go.sh: train this bespoke-kohya run (@@RUN_ID@@) on a GPU box, sample every epoch, write the report.
#
#   tar xzf @@RUN_ID@@.tar.gz && cd @@RUN_ID@@ && ./go.sh
#
# Made by `bespoke-kohya bundle` (bespoke-kohya @@VERSION@@). Everything is written inside this
# folder, logs in logs/. Safe to re-run after a disconnect: finished stages are skipped and
# training continues from its last saved state. Run it inside tmux (or with nohup) so that
# a dropped SSH session does not stop it.
# `sh go.sh` would run this under a shell without arrays or pipefail: hand over to bash.
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail

usage() {
  cat <<'EOF'
usage: ./go.sh [--dry-run] [--cpu] [--skip-preflight]

First a pre-flight (GPU, base model, GPU memory, disk) that stops before anything is installed.

Stages, each skipped when already done:
  1 install     python3 -m venv .venv, then pip install the bundled wheel (pip picks torch)
  2 tools       the engine's own tools in vendor/ (kohya: sd-scripts with its own venv)
  3 base        BASE_MODEL=/path if given; else the preset's base (a hub id is downloaded on first use)
  4 gpu         a CUDA GPU must be visible (skipped with --cpu)
  5 train       bespoke-kohya train --resume . --no-sample
  6 sample      bespoke-kohya sample --run .   (only epochs not sampled yet)
  7 report      bespoke-kohya report --run .
  8 results     results.tar.gz: run.json, checkpoints, samples, report and logs, to copy home

options:
  --dry-run   print each stage's exact command and whether it would be skipped; change nothing
  --cpu       train and sample on the CPU (no GPU check; very slow for kohya presets)
  --skip-preflight  go on even when the pre-flight finds a problem (also passed to train)
  -h, --help  this text

environment:
  PYTHON=python3            Python 3.11+ that creates .venv
  TORCH_SPEC="..."          pip arguments installing torch first, e.g.
                            TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"
  BASE_MODEL=/path          a local base model (diffusers folder or .safetensors) to train from
  BESPOKE_CACHE=DIR         caches (default: .cache in this folder)
EOF
  # The engine's own settings (standard-library helper from the bundled wheel).
  helper usage-env . 2>/dev/null || true
}

RUN="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
cd -- "$RUN"
ENGINE="@@ENGINE@@"
WHEEL="wheels/@@WHEEL@@"
PYTHON="${PYTHON:-python3}"

# helper ARGS...: bespoke_kohya.bundle straight from the bundled wheel (works before install).
helper() { PYTHONPATH="$WHEEL" "$PYTHON" -m bespoke_kohya.bundle "$@"; }

DRY=0
CPU=0
SKIP_PREFLIGHT=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    --cpu) CPU=1 ;;
    --skip-preflight) SKIP_PREFLIGHT=1 ;;
    -h|--help) usage; exit 0 ;;
    *) printf 'go.sh: unknown option %s\n\n' "$arg" >&2; usage >&2; exit 2 ;;
  esac
done

VENV_PY=".venv/bin/python"
APP=".venv/bin/bespoke-kohya"
STAGES=8
N=0
export BESPOKE_CACHE="${BESPOKE_CACHE:-$RUN/.cache}"

say() { printf '%s\n' "$*"; }
die() { printf 'go.sh: error: %s\n' "$*" >&2; exit 1; }

# show ARGS...: the command as one line that can be pasted into a shell.
show() {
  local out="" a
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./=:,+@%-]+$ ]]; then
      out+="$a "
    elif [[ "$a" != *"'"* ]]; then
      out+="'$a' "
    else
      out+="$(printf '%q' "$a") "
    fi
  done
  printf '%s' "${out% }"
}

begin() {
  N=$((N + 1))
  say ""
  say "[$N/$STAGES] $1"
}

# check STAGE: print whether it is done; succeed when it is.
check() {
  local why rc=0
  why="$(helper state . "$1" 2>&1)" || rc=$?
  case "$rc" in
    0) say "  skip: $why"; return 0 ;;
    10) say "  to do: $why"; return 1 ;;
    *) die "checking stage $1 failed: $why" ;;
  esac
}

# run STAGE HINT CMD...: print the exact command, then run it with its output on the terminal
# and appended to logs/go-STAGE.log. On failure stop with HINT.
run() {
  local stage="$1" hint="$2"
  shift 2
  if ((DRY)); then
    say "  would run: $(show "$@")"
    return 0
  fi
  mkdir -p logs
  local log="logs/go-$stage.log"
  say "  \$ $(show "$@")"
  printf '\n[%s] $ %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(show "$@")" >>"$log"
  # tee -i: Ctrl-C reaches the command (which records an interrupted run), not the logger.
  if ! "$@" 2>&1 | tee -ia "$log"; then
    die "stage $stage failed: $hint (full output: logs/go-$stage.log)"
  fi
}

AGAIN="fix the cause above and run ./go.sh again; finished stages are skipped"

# ------------------------------------------------------------------ preflight
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found: install Python 3.11+ (apt-get install python3 python3-venv) or set PYTHON=/path/to/python3.11"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  die "$PYTHON is Python $("$PYTHON" -c 'import sys; print(sys.version.split()[0])'); bespoke-kohya needs 3.11 or newer: set PYTHON=/path/to/python3.11"
[[ -f "$WHEEL" ]] || die "$WHEEL is missing, so this is not a complete bundle: unpack the .tar.gz again"
say "run: $RUN (engine $ENGINE)"
say "wheel: @@WHEEL@@"
((DRY)) && say "dry run: printing each stage's command; nothing is changed"

# What can be checked before installing anything (stdlib only, from the wheel): a failed
# start on a rented box costs money. The engine's tools are checked again by `train`.
say ""
say "pre-flight"
pre=(preflight .)
if ((CPU)); then pre+=(--cpu); fi
if [[ -n "${BASE_MODEL:-}" ]]; then pre+=(--base "$BASE_MODEL"); fi
if ! helper "${pre[@]}"; then
  if ((DRY)); then
    say "  (a real run stops here)"
  elif ((SKIP_PREFLIGHT)); then
    say "  --skip-preflight: going on anyway"
  else
    die "pre-flight failed (the lines above name each cause); fix them, or run ./go.sh --skip-preflight to go on anyway"
  fi
fi

# ------------------------------------------------------------------ 1 install
begin "install: bespoke-kohya into .venv"
if ! check install; then
  if [[ ! -x "$VENV_PY" ]]; then
    run install "could not create .venv (Debian/Ubuntu: apt-get install python3-venv); $AGAIN" "$PYTHON" -m venv .venv
  fi
  if [[ -n "${TORCH_SPEC:-}" ]]; then
    read -r -a torch_args <<<"$TORCH_SPEC"
    run install "pip could not install TORCH_SPEC=$TORCH_SPEC; $AGAIN" "$VENV_PY" -m pip install --disable-pip-version-check "${torch_args[@]}"
  fi
  run install "pip could not install the wheel and its dependencies; $AGAIN" "$VENV_PY" -m pip install --disable-pip-version-check "$WHEEL"
  if ((!DRY)); then
    printf '%s\n' "@@WHEEL@@" >"logs/go-install.done"
  fi
fi

# ------------------------------------------------------------------ 2 tools
begin "the $ENGINE engine's tools"
if ! check tools; then
  mapfile -t tools < <(helper tools-command .) || die "could not ask the engine for its tools"
  if ((${#tools[@]})); then
    run tools "installing the engine's tools failed (see above; ./go.sh --help lists their settings); $AGAIN" "$APP" "${tools[@]}"
  fi
fi
while IFS='=' read -r key value; do
  [[ -n "$key" ]] && export "$key=$value"
done < <(helper tools-env .)

# ------------------------------------------------------------------ 3 base
begin "base model"
if [[ -n "${BASE_MODEL:-}" ]]; then
  [[ -e "$BASE_MODEL" ]] || die "BASE_MODEL=$BASE_MODEL: no such file or folder; give a diffusers folder or a .safetensors checkpoint on this machine"
  run base "could not set BASE_MODEL; $AGAIN" "$VENV_PY" -m bespoke_kohya.bundle set-base . "$BASE_MODEL"
fi
if ((DRY)) && [[ -n "${BASE_MODEL:-}" ]]; then
  say "  (after set-base the run trains from $BASE_MODEL)"
elif ! check base; then
  if ((DRY)); then
    say "  (a real run stops here until the base model is available)"
  else
    die "no base model to train from: copy it into this folder where named above, or run BASE_MODEL=/path/to/model ./go.sh"
  fi
fi

# ------------------------------------------------------------------ 4 gpu
begin "gpu"
if ((CPU)); then
  say "  skip: --cpu given, training and sampling run on the CPU"
else
  probe_py="$(helper gpu-python .)" || die "could not ask the engine which python trains"
  no_gpu="no CUDA GPU is usable (check the driver with nvidia-smi, and that torch is a CUDA build: TORCH_SPEC, or the engine's own setting in ./go.sh --help); to train on the CPU anyway (very slow) run ./go.sh --cpu"
  if command -v nvidia-smi >/dev/null 2>&1; then
    run gpu "$no_gpu" nvidia-smi -L
  fi
  run gpu "$no_gpu" "$probe_py" -c 'import sys, torch; ok = torch.cuda.is_available(); print("torch", torch.__version__, "CUDA", torch.version.cuda, "->", torch.cuda.get_device_name(0) if ok else "no CUDA device"); sys.exit(0 if ok else 1)'
fi

# ------------------------------------------------------------------ 5 train
begin "train"
if ! check train; then
  # --preset is ignored with --resume (run.json's resolved preset is used); the parser requires it.
  # --no-sample: the next stage samples, resumably (the palette comes from the run's own data/).
  cmd=("$APP" train --resume . --preset "@@PRESET@@" --no-sample)
  if ((CPU)); then cmd+=(--cpu); fi
  if ((SKIP_PREFLIGHT)); then cmd+=(--skip-preflight); fi
  run train "training stopped; run ./go.sh again to continue from the last saved state (logs/train.log has the trainer's output)" "${cmd[@]}"
fi

# ------------------------------------------------------------------ 6 sample
begin "sample every epoch"
if ! check sample; then
  cmd=("$APP" sample --run .)
  epochs="$(helper unsampled .)" || die "could not read run.json / samples/samples.json"
  if [[ -n "$epochs" ]]; then cmd+=(--epochs "$epochs"); fi
  if ((CPU)); then cmd+=(--device cpu); fi
  run sample "sampling stopped; run ./go.sh again (sampled epochs are kept)" "${cmd[@]}"
fi

# ------------------------------------------------------------------ 7 report
begin "report"
if ! check report; then
  run report "$AGAIN" "$APP" report --run .
fi

# ------------------------------------------------------------------ 8 results
begin "results to copy home"
if ! check results; then
  run results "$AGAIN" "$VENV_PY" -m bespoke_kohya.bundle pack-results .
fi

say ""
if ((DRY)); then
  say "dry run complete: nothing was changed"
else
  say "done. Report: $RUN/report/index.html"
  say "Copy the results home and open the report there:"
  say "  scp BOX:$(show "$RUN/results.tar.gz") . && tar xzf results.tar.gz && bespoke-kohya report --run $(show "$(basename -- "$RUN")")"
fi
