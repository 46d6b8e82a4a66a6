# LungVLM developer entry points. `make help` lists them.
SHELL := /bin/bash
PYTHON_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
RUNS ?= runs
export PYTHONUNBUFFERED := 1

.DEFAULT_GOAL := help
.PHONY: help install test test-all lint format phantom train-stage1 train-stage2 train-language train-stage3 audit data-efficiency federate federated-compare sweep bench clean

help: ## List the targets with a one-line description
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	@test -d $(VENV) || $(PYTHON_SYS) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e '.[test]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv once and install LungVLM (editable) with its test extras

test: $(STAMP) ## Run the fast test suite (CPU, skips tests marked slow)
	$(PY) -m pytest -m "not slow and not gpu" -q --timeout=600

test-all: $(STAMP) ## Run every test, slow ones included (no GPU tests without a GPU)
	$(PY) -m pytest -q --timeout=1800

lint: $(STAMP) ## Check the code with ruff
	$(VENV)/bin/ruff check lungvlm data_modules tests benchmarks
	$(VENV)/bin/ruff format --check lungvlm data_modules tests benchmarks

format: $(STAMP) ## Format the code with ruff
	$(VENV)/bin/ruff format lungvlm data_modules tests benchmarks
	$(VENV)/bin/ruff check --fix lungvlm data_modules tests benchmarks

phantom: $(STAMP) ## Write 4 phantom chest CTs with labels, reports and a preview to $(RUNS)/phantom
	$(VENV)/bin/lungvlm phantom --out $(RUNS)/phantom --n 4 --seed 0 --preview $(RUNS)/phantom/preview.png

STAGE1_CKPT := $(RUNS)/stage1/checkpoints/last.ckpt
STAGE2_CKPT := $(RUNS)/stage2/checkpoints/last.ckpt
LANGUAGE_CKPT := $(RUNS)/language/checkpoints/last.ckpt
STAGE3_CKPT := $(RUNS)/stage3/checkpoints/last.ckpt

train-stage1: $(STAMP) ## Stage 1: masked-volume pretraining of the encoder on phantoms
	$(VENV)/bin/lungvlm fit --config experiments/base.yaml --config experiments/stage1.yaml

train-stage2: $(STAMP) ## Stage 2: nodule segmentation, initialised from stage 1 when its checkpoint exists
	$(VENV)/bin/lungvlm fit --config experiments/base.yaml --config experiments/stage2.yaml

# Stage 3 starts from stage 2, which starts from stage 1: missing checkpoints are trained first.
$(STAGE1_CKPT): | $(STAMP)
	$(MAKE) train-stage1
$(STAGE2_CKPT): | $(STAGE1_CKPT)
	$(MAKE) train-stage2

train-language: $(STAMP) ## Stage language: the report decoder on text (causal LM + report coherence) into $(RUNS)/language
	$(VENV)/bin/lungvlm fit --config experiments/base.yaml --config experiments/language.yaml

# Stage 3's fresh decoder starts from the language checkpoint (model.vl.language_init).
$(LANGUAGE_CKPT): | $(STAMP)
	$(MAKE) train-language

train-stage3: $(STAMP) | $(STAGE2_CKPT) $(LANGUAGE_CKPT) ## Stage 3: grounded vision-language model on phantoms (runs stages 1-2 and the language pretraining first if their checkpoints are missing), then calibrates it into last_calibrated.ckpt (sentence confidence, and the candidate threshold on validation chests)
	$(VENV)/bin/lungvlm fit --config experiments/base.yaml --config experiments/stage3.yaml
	$(VENV)/bin/lungvlm calibrate --ckpt $(STAGE3_CKPT) --no-progress
	$(VENV)/bin/lungvlm calibrate --ckpt $(STAGE3_CKPT) --detection --n-chests 6 --no-progress

AUDIT_CKPT ?= $(RUNS)/stage3/checkpoints/last_calibrated.ckpt
DATA_EFFICIENCY := $(RUNS)/data_efficiency/data_efficiency.json
audit: $(STAMP) ## Audit the calibrated stage-3 checkpoint (calibration, Brock, Lung-RADS hierarchy, subgroups, robustness, deferral, zero-shot, energy) into $(RUNS)/audit
	$(VENV)/bin/lungvlm audit --ckpt $(AUDIT_CKPT) --out $(RUNS)/audit --no-progress \
		--runs $(wildcard $(RUNS)/stage1 $(RUNS)/stage2 $(RUNS)/language $(RUNS)/stage3) \
		$(if $(wildcard $(DATA_EFFICIENCY)),--data-efficiency $(DATA_EFFICIENCY))

data-efficiency: $(STAMP) | $(STAGE1_CKPT) ## Stage-2 Dice at 5-100 % of the labels, from stage 1 and from scratch, into $(RUNS)/data_efficiency (resumable; `make audit` then includes it)
	$(VENV)/bin/lungvlm data-efficiency --out $(RUNS)/data_efficiency --stage1-ckpt $(STAGE1_CKPT) --no-progress

federate: $(STAMP) ## Federated stage 2 across three phantom sites with Flower (FedAvgM) into $(RUNS)/federated (resumable)
	$(VENV)/bin/lungvlm federate --config experiments/federated.yaml --out $(RUNS)/federated

federated-compare: $(STAMP) ## Centralised vs FedAvg vs FedAvgM vs FedAvgM+DP on the same sites and steps (crop Dice, CPM, epsilon) into $(RUNS)/federated_compare
	$(PY) -m benchmarks.federated_compare --config experiments/federated.yaml --out $(RUNS)/federated_compare

SWEEP ?= experiments/sweeps/stage2_tiny.yaml
TRIALS ?=
sweep: $(STAMP) ## Optuna sweep (SWEEP=experiments/sweeps/<name>.yaml, TRIALS=N) into $(RUNS)/sweeps
	$(VENV)/bin/lungvlm sweep --config $(SWEEP) $(if $(TRIALS),--trials $(TRIALS))

bench: $(STAMP) ## Run the benchmarks and write benchmarks/RESULTS.md
	$(PY) -m benchmarks.run_all --out benchmarks/RESULTS.md

clean: ## Remove caches and run outputs (keeps .venv)
	rm -rf .pytest_cache .ruff_cache $(RUNS) lightning_logs
