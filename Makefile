# SpatialScore. `make` lists the targets; `make test` on a fresh clone installs everything and runs the tests.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   ?= .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH_PIN := $(shell grep -m1 '^torch==' requirements.txt)
# TORCH_CPU=1: torch's CPU-only wheel from PyTorch's index (a laptop without an NVIDIA GPU); CI does not set it
TORCH_INDEX = $(if $(TORCH_CPU),--index-url https://download.pytorch.org/whl/cpu,)

DATA_DIR ?= data/spatialworld
DATA_ARGS ?= --num-pairs 12000 --seed 0 --resolution 128 --min-objects 3 --max-objects 6 --max-broken 3 \
	--split-fractions 0.75 0.05 0.20

.PHONY: help setup test test-slow lint data data-rl pretrain-reward train-reward pretrain-generator train-rl exp-rl eval-benchmarks demo bench clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-12s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv and install torch (CPU, pinned) then the project with dev extras; idempotent

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade-strategy only-if-needed $(TORCH_INDEX) "$(TORCH_PIN)"
	$(PYTHON) -m pip install --quiet --upgrade-strategy only-if-needed -e '.[dev]'
	touch $(STAMP)

test: $(STAMP) ## run the test suite (not `slow`, not `gpu`)
	$(PYTHON) -m pytest -q

test-slow: $(STAMP) ## run only the slow tests
	$(PYTHON) -m pytest -q -m slow

lint: $(STAMP) ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

data: $(DATA_DIR)/verify_report.json ## build and verify the default SpatialWorld dataset in data/spatialworld

# The report is written only when verify passes, so a finished, verified dataset is not rebuilt or re-verified.
$(DATA_DIR)/verify_report.json: | $(STAMP)
	$(PYTHON) -m data_synthesis build --out $(DATA_DIR) $(DATA_ARGS) --workers $$(nproc)
	$(PYTHON) -m data_synthesis verify $(DATA_DIR) --report $@.tmp && mv $@.tmp $@

REWARD_CONFIG ?= configs/reward/tiny.yaml

# Stage A of the tiny reward backbone (reward_model/stage_a/) is shipped in checkpoints/reward_tiny_stage_a with its
# training logs: it takes about 3.5 hours here, beyond the demo budget; `make train-reward` runs stage B only.
# As the shipped checkpoint was made (docs/research/2026-11_reward_tiny.md): ten phases, one config each, each from the
# previous one's weights, adding the losses that made the sentence verdict learnable (mention binding, image-token
# cells, sentence slots, coordinates, stated margins).
A = runs/stage_a
# $(call stage_a_phase,PHASE,PREVIOUS): configs/reward/tiny_stage_a_PHASE.yaml into $(A)/PHASE, from PREVIOUS's backbone
stage_a_phase = OMP_NUM_THREADS=1 $(PYTHON) -m reward_model pretrain --config configs/reward/tiny_stage_a_$(1).yaml \
	$(if $(2),--init-from $(A)/$(2)/backbone) --data.dataset_dir $(DATA_DIR)

pretrain-reward: $(DATA_DIR)/verify_report.json | $(STAMP) ## reproduce the shipped stage-A backbone (~3.5 h) into runs/stage_a/v12
	$(call stage_a_phase,v3)
	$(call stage_a_phase,v4,v3)
	$(call stage_a_phase,v5,v4)
	$(call stage_a_phase,v6,v5)
	$(call stage_a_phase,v7,v6)
	$(call stage_a_phase,v8,v7)
	$(call stage_a_phase,v9,v8)
	$(call stage_a_phase,v10,v9)
	$(call stage_a_phase,v11,v10)
	$(call stage_a_phase,v12,v11)
	@echo "stage A written to $(A)/v12/backbone (the shipped copy is checkpoints/reward_tiny_stage_a; logs beside it)"

train-reward: $(DATA_DIR)/verify_report.json | $(STAMP) ## stage B on the shipped stage A; exports runs/reward/tiny/export
	$(PYTHON) -m reward_model fit --config $(REWARD_CONFIG) --data.dataset_dir $(DATA_DIR)

# The RL testbed: 2-object SpatialWorld scenes (every relation family but `between`, which needs 3), prompts of at
# most 84 tokens, drawn by the tiny generator at 32 px.
RL_DATA_DIR ?= data/spatialworld-rl
RL_DATA_ARGS ?= --num-pairs 8000 --seed 1 --resolution 64 --min-objects 2 --max-objects 2 --max-broken 1 \
	--split-fractions 0.9 0.05 0.05
GENERATOR_DIR ?= runs/rl/generator
# The generator the RL stage starts from: the shipped one (checkpoints/generator_tiny, with its training log) when the
# repo has it, so `make train-rl` does not pretrain for hours; else the one `make pretrain-generator` writes.
SHIPPED_GENERATOR = checkpoints/generator_tiny/pipeline
GENERATOR ?= $(if $(wildcard $(SHIPPED_GENERATOR)/model_index.json),$(SHIPPED_GENERATOR),$(GENERATOR_DIR)/pipeline)
REWARD ?= spatialscore

data-rl: $(RL_DATA_DIR)/verify_report.json ## build and verify the RL prompt set in data/spatialworld-rl

$(RL_DATA_DIR)/verify_report.json: | $(STAMP)
	$(PYTHON) -m data_synthesis build --out $(RL_DATA_DIR) $(RL_DATA_ARGS) --workers $$(nproc)
	$(PYTHON) -m data_synthesis verify $(RL_DATA_DIR) --report $@.tmp && mv $@.tmp $@

pretrain-generator: $(GENERATOR_DIR)/pipeline/model_index.json ## pretrain the tiny generator (rectified flow)

$(GENERATOR_DIR)/pipeline/model_index.json: $(RL_DATA_DIR)/verify_report.json | $(STAMP)
	$(PYTHON) -m rl_policy pretrain --data $(RL_DATA_DIR) --out $(GENERATOR_DIR)

# REWARD=spatialscore (default: the tiny critic of make train-reward), REWARD=oracle (the SpatialWorld oracle) or
# REWARD=geneval (the GenEval rules: the paper's Flow-GRPO* baseline); each writes runs/rl/tiny[-oracle|-geneval].
RL_REWARDS = spatialscore oracle geneval
ifeq ($(filter $(REWARD),$(RL_REWARDS)),)
$(error REWARD=$(REWARD) is not one of: $(RL_REWARDS))
endif
RL_REWARD_CONFIG = $(if $(filter spatialscore,$(REWARD)),,--config configs/rl/reward_$(REWARD).yaml)
RL_REWARD_DEPS = $(if $(filter spatialscore,$(REWARD)),runs/reward/tiny/export/metrics.json,)
RL_RUN_DIR = runs/rl/tiny$(if $(filter spatialscore,$(REWARD)),,-$(REWARD))
# a killed run resumes from its last checkpoint (LoRA, optimizer, EMA, data position and RNG)
# SEED=n: the run's seed (LoRA init, rollout noise, prompt order)
RL_SEED = $(if $(SEED),--seed_everything $(SEED) --data.seed $(SEED) --model.seed $(SEED),)
RL_RESUME = $(if $(wildcard $(RL_RUN_DIR)/checkpoints/last.ckpt),--ckpt_path $(RL_RUN_DIR)/checkpoints/last.ckpt,)

runs/reward/tiny/export/metrics.json:
	$(MAKE) train-reward

train-rl: $(RL_DATA_DIR)/verify_report.json $(GENERATOR)/model_index.json $(RL_REWARD_DEPS) | $(STAMP) ## Flow-GRPO of the tiny generator (REWARD=oracle|geneval too)
	$(PYTHON) -m rl_policy fit --config configs/rl/tiny.yaml $(RL_REWARD_CONFIG) --data.source $(RL_DATA_DIR) \
		--model.policy.pipeline $(GENERATOR) $(RL_SEED) $(RL_RESUME)

# The RL comparison (not in CI; about 20 CPU-minutes per run, 9 runs): 3 seeds of the paper's recipe, the same
# without top-k filtering, and the GenEval-rule reward; runs/exp-rl/comparison.md and curves.png. Resumable.
EXP_RL_REWARD ?= spatialscore
exp-rl: $(RL_DATA_DIR)/verify_report.json $(GENERATOR)/model_index.json runs/reward/tiny/export/metrics.json | $(STAMP) ## RL comparison: seeds, top-k off, GenEval reward
	$(PYTHON) experiments/exp_rl.py --reward $(EXP_RL_REWARD) --out runs/exp-rl -- --data.source $(RL_DATA_DIR) \
		--model.policy.pipeline $(GENERATOR)

# Every benchmark for the tiny reward model and for each generator that exists (the pretrained base, the RL runs);
# cached and resumable: a rerun makes no judge call and gives a byte-identical reports/summary.json.
RL_RUNS = $(foreach run,tiny tiny-oracle tiny-geneval,$(if $(wildcard runs/rl/$(run)/lora/policy.json),--generator $(run)=runs/rl/$(run)))

EVAL_SAMPLER_ARGS = --steps 20 --height 32 --width 32 --true-cfg 3
# EVAL_LIMIT=40: only the first 40 prompts (pairs) of each task, for a quick look. The full suite draws 796 images per
# generator for the tasks that share the SpatialWorld prompt text and more for TIIF's long versions, 8 per pipeline
# call (--batch-size); spatialworld-oracle took 185 s for 588 of them on a loaded 2-core machine.
EVAL_LIMIT ?=

eval-benchmarks: $(RL_DATA_DIR)/verify_report.json runs/reward/tiny/export/metrics.json $(GENERATOR)/model_index.json | $(STAMP) ## all benchmarks -> reports/
	$(PYTHON) -m benchmarks suite --out reports --reward-data $(DATA_DIR) --scorer runs/reward/tiny/export \
		--prompt-data $(RL_DATA_DIR) --generator base=$(GENERATOR) $(RL_RUNS) \
		$(EVAL_SAMPLER_ARGS) --images-per-prompt 2 $(if $(EVAL_LIMIT),--limit $(EVAL_LIMIT),)

# The whole chain from nothing (each stage only when its output is missing), timed, with base-vs-RL samples drawn
# with the benchmarks' sampler settings: reports/demo.md.
demo: $(STAMP) ## data, reward model, generator, GRPO (oracle and critic), benchmarks -> reports/demo.md
	$(PYTHON) -m benchmarks.demo --out reports --prompt-data $(RL_DATA_DIR) --generator $(GENERATOR) $(EVAL_SAMPLER_ARGS)

bench: $(STAMP) ## speed benchmarks (prints ratios against the targets)
	$(PYTHON) bench/data_synthesis_build.py
	$(PYTHON) bench/reward_speed.py
	$(PYTHON) bench/rl_speed.py
	$(PYTHON) bench/serve_speed.py

clean: ## remove the venv, caches and generated data/runs/reports
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info data runs reports
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
