# SpatialScore. `make` lists the targets; `make test` on a fresh clone installs everything and runs the tests.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   ?= .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH_PIN := $(shell grep -m1 '^torch==' requirements.txt)

DATA_DIR ?= data/spatialworld
DATA_ARGS ?= --num-pairs 12000 --seed 0 --resolution 128 --min-objects 3 --max-objects 6 --max-broken 3 \
	--split-fractions 0.75 0.05 0.20

.PHONY: help setup test test-slow lint data pretrain-reward train-reward bench clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-12s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv and install torch (CPU, pinned) then the project with dev extras; idempotent

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade-strategy only-if-needed "$(TORCH_PIN)"
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

pretrain-reward: $(STAMP) ## stage A of the tiny reward backbone (about 26 min); writes runs/reward/tiny_pretrain/backbone
	$(PYTHON) -m reward_model pretrain --out runs/reward/tiny_pretrain

train-reward: $(DATA_DIR)/verify_report.json ## train the tiny reward model (stage B); exports runs/reward/tiny/export
	$(PYTHON) -m reward_model fit --config $(REWARD_CONFIG) --data.dataset_dir $(DATA_DIR)

bench: $(STAMP) ## speed benchmarks (prints ratios against the targets)
	$(PYTHON) bench/data_synthesis_build.py
	$(PYTHON) bench/reward_speed.py

clean: ## remove the venv, caches and generated data/runs/reports
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info data runs reports
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
