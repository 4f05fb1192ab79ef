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
DATA_PAIRS ?= 12000
DATA_ARGS ?= --num-pairs $(DATA_PAIRS) --seed 0 --resolution 128 --min-objects 3 --max-objects 6 --max-broken 3 \
	--split-fractions 0.75 0.05 0.20

.PHONY: help setup test test-slow lint data data-rl data-generated data-ranked agreement-set pretrain-reward pretrain-reward-generated train-reward pretrain-generator train-rl exp-rl eval-benchmarks demo bench clean

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
comma := ,
space := $(subst ,, )

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

# The critic's agreement with the oracle where GRPO uses it: 64 RL test prompts x 24 samples of the generator, drawn
# with the rollouts' SDE sampler and labelled by the oracle (rl_policy draw); scored at the end of train-reward.
AGREEMENT_DIR ?= data/agreement-test
AGREEMENT_PROMPTS ?= 64
# Where stage B writes (the export the RL critic and the benchmarks read is $(REWARD_EXPORT)); REWARD_STEPS=n: n
# optimizer steps instead of the config's. `make demo` sets both (a small critic in runs/demo, apart from this one).
REWARD_RUN_DIR ?= runs/reward/tiny
REWARD_EXPORT = $(REWARD_RUN_DIR)/export
REWARD_STEPS ?=
# What the critic learns from (issue 18): CRITIC=ranked (default) the renders and the generator's own samples as
# on-policy ranked pairs ($(RANKED_DIR), `make data-ranked`; configs/reward/tiny_ranked.yaml: each read twice per
# epoch, 2,400 steps, from checkpoints/reward_tiny_stage_a_generated); CRITIC=render the renders alone (tiny.yaml: 300
# steps, from checkpoints/reward_tiny_stage_a). README results, row "critic default".
CRITIC ?= ranked
CRITICS = ranked render
ifeq ($(filter $(CRITIC),$(CRITICS)),)
$(error CRITIC=$(CRITIC) is not one of: $(CRITICS))
endif
# REWARD_EXTRA_DATA=DIR: more dataset dirs whose pairs join the critic's (e.g. $(GEN_DATA_DIR), the generator's own
# best-of-N pairs from `make data-generated`; accuracy is then reported per kind).
REWARD_EXTRA_DATA ?=
# the ranked pairs' dirs and size (`make data-ranked`, below)
RANKED_PROMPTS ?= 4800
RANKED_PER_PROMPT ?= 8
RANKED_DRAW_DIR ?= data/draw-train-x$(RANKED_PER_PROMPT)
# (the pairs' dir is per size, so that another RANKED_PROMPTS builds its own; the draw grows or shrinks in place)
RANKED_DIR ?= data/spatialworld-ranked-$(RANKED_PROMPTS)
REWARD_CONFIGS = $(strip --config $(REWARD_CONFIG) $(if $(filter ranked,$(CRITIC)),--config configs/reward/tiny_ranked.yaml))
REWARD_DATA_DIRS = $(strip $(if $(filter ranked,$(CRITIC)),$(RANKED_DIR)) $(REWARD_EXTRA_DATA))
# REWARD_REPEATS='{"ranked": 5}': how many times each training pair of a kind is read per epoch (--data.train_repeats)
REWARD_REPEATS ?=
train-reward: $(DATA_DIR)/verify_report.json $(AGREEMENT_DIR)/samples.parquet $(addsuffix /meta.json,$(REWARD_DATA_DIRS)) | $(STAMP) ## stage B on the shipped stage A (+ ranked pairs: the stage A that saw the generator's samples); exports runs/reward/tiny/export
	$(PYTHON) -m reward_model fit $(REWARD_CONFIGS) --data.dataset_dir $(DATA_DIR) \
		--export.agreement_set $(AGREEMENT_DIR) --trainer.default_root_dir $(REWARD_RUN_DIR) \
		$(if $(REWARD_STEPS),--trainer.max_steps $(REWARD_STEPS),) \
		$(if $(REWARD_DATA_DIRS),--data.extra_dataset_dirs '[$(subst $(space),$(comma),$(REWARD_DATA_DIRS))]',) \
		$(if $(REWARD_REPEATS),--data.train_repeats '$(REWARD_REPEATS)',)

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
# A draw from the generator is redone when its weights are newer; `rl_policy draw` then refuses a dir drawn from other
# weights (remove it: its samples are the old generator's).
GENERATOR_WEIGHTS = $(GENERATOR)/model_index.json $(wildcard $(GENERATOR)/transformer/*.safetensors)
# $(call draw,SPLIT,PROMPTS,PER_PROMPT,OUT): the generator's samples of the RL set's first PROMPTS prompts of SPLIT
draw = $(PYTHON) -m rl_policy draw --pipeline $(GENERATOR) --data $(RL_DATA_DIR) --split $(1) \
	--prompts $(2) --per-prompt $(3) --out $(4)

agreement-set: $(AGREEMENT_DIR)/samples.parquet ## the generator's own samples of RL test prompts, oracle-labelled

$(AGREEMENT_DIR)/samples.parquet: $(RL_DATA_DIR)/verify_report.json $(GENERATOR_WEIGHTS) | $(STAMP)
	$(call draw,test,$(AGREEMENT_PROMPTS),24,$(AGREEMENT_DIR))

data-rl: $(RL_DATA_DIR)/verify_report.json ## build and verify the RL prompt set in data/spatialworld-rl

$(RL_DATA_DIR)/verify_report.json: | $(STAMP)
	$(PYTHON) -m data_synthesis build --out $(RL_DATA_DIR) $(RL_DATA_ARGS) --workers $$(nproc)
	$(PYTHON) -m data_synthesis verify $(RL_DATA_DIR) --report $@.tmp && mv $@.tmp $@

# The generator's own images for the critic (issue 18): the RL prompt set's train split only (its test prompts stay
# unseen), drawn by the generator at 32 px with the evaluation's sampler (ODE, 20 steps) and the rollouts' (SDE, 6
# steps, noise 0.8), true CFG 3; each image drawn up to 8 times until the SpatialWorld oracle accepts it, half the
# pairs on-policy ranked pairs (two samples of one prompt the oracle orders). Then the oracle's decisions go into the
# review store (review --oracle-accepted shows them to people). Measured: 120 pairs tried in 191 s (98 s of CPU) on
# one thread of the busy 2-core machine, 82 kept (38% of generated, 100% of ranked): 2,000 tried take 30-55 min.
GEN_DATA_DIR ?= data/spatialworld-generated
GEN_DATA_PAIRS ?= 2000
GEN_DATA_ARGS ?= --num-pairs $(GEN_DATA_PAIRS) --seed 0 --resolution 32 --split-fractions 0.8 0.1 0.1 --best-of 8 \
	--ranked-fraction 0.5 --sampler ode:20 --sampler sde:6:0.8 --generator-true-cfg 3 --generator-batch-size 16
data-generated: $(GEN_DATA_DIR)/meta.json ## generated pairs of the RL train prompts, oracle-reviewed (best-of-8)

$(GEN_DATA_DIR)/meta.json: $(RL_DATA_DIR)/verify_report.json $(GENERATOR)/model_index.json | $(STAMP)
	$(PYTHON) -m data_synthesis build --out $(GEN_DATA_DIR) $(GEN_DATA_ARGS) --prompt-source dataset \
		--source-dir $(RL_DATA_DIR) --source-split train --generator tiny=$(GENERATOR)
	$(PYTHON) -m data_synthesis oracle-review $(GEN_DATA_DIR) --quiet

# On-policy ranked pairs (issue 18), what the default critic learns beside the renders: RANKED_PROMPTS train prompts
# of the RL set x RANKED_PER_PROMPT samples of the generator with the rollouts' sampler (rl_policy draw), and per prompt
# up to 6 pairs of samples the oracle strictly orders (data_synthesis ranked-groups). 4,800 x 8: ~40 minutes of
# drawing here, 25,128 pairs from the shipped generator (the critic agrees with the oracle as with 1,600 x 24, the
# same number of images: README results, row "tiny critic vs the oracle").
data-ranked: $(RANKED_DIR)/meta.json ## ranked pairs of the generator's own samples of RL train prompts (oracle-ordered)

$(RANKED_DIR)/meta.json: $(RL_DATA_DIR)/verify_report.json $(GENERATOR_WEIGHTS) | $(STAMP)
	$(call draw,train,$(RANKED_PROMPTS),$(RANKED_PER_PROMPT),$(RANKED_DRAW_DIR))
	$(PYTHON) -m data_synthesis ranked-groups $(RANKED_DRAW_DIR) --source-dir $(RL_DATA_DIR) --out $(RANKED_DIR)

# The default critic's stage A (issue 18; checkpoints/reward_tiny_stage_a_generated): the shipped stage A + four
# phases on the generator's own samples of every RL train prompt (x 8, the rollouts' sampler), labelled by the oracle's
# reading of each image, 80% of each batch beside the renders; the last phase adds the samples that lost an object,
# so that the matching logit the critic starts from reads presence too. ~70 min after the draw. The draw is the ranked
# pairs' (`make data-ranked` first: its 4,800 groups are the first of these, noise seeded by prompt position) grown to
# every train prompt in place (~20 min more), so the two targets draw each group once. (Do not run another size of
# data-ranked beside it: the draw's table follows the last --prompts.)
STAGE_A_DRAW_DIR ?= data/draw-train-x8
# $(call stage_a_generated,PHASE,FROM,STEPS,SEED[,MORE]): one phase into $(A)/generated/PHASE
stage_a_generated = OMP_NUM_THREADS=1 $(PYTHON) -m reward_model pretrain --config configs/reward/tiny_stage_a_generated.yaml \
	--init-from $(2) --trainer.max_steps $(3) --model.schedule_steps $(3) --data.seed $(4) $(5) \
	--data.generated_dirs '[$(STAGE_A_DRAW_DIR)]' --data.generated_source_dir $(RL_DATA_DIR) --data.dataset_dir $(DATA_DIR) \
	--trainer.default_root_dir $(A)/generated/$(1)

pretrain-reward-generated: $(DATA_DIR)/verify_report.json $(RL_DATA_DIR)/verify_report.json $(GENERATOR_WEIGHTS) | $(RANKED_DIR)/meta.json $(STAMP) ## reproduce the default critic's stage A (~2 h with the draw) into runs/stage_a/generated/g4
	$(call draw,train,7200,8,$(STAGE_A_DRAW_DIR))
	$(call stage_a_generated,g1,checkpoints/reward_tiny_stage_a,600,0)
	$(call stage_a_generated,g2,$(A)/generated/g1/backbone,1500,0)
	$(call stage_a_generated,g3,$(A)/generated/g2/backbone,2400,1)
	$(call stage_a_generated,g4,$(A)/generated/g3/backbone,1200,2,--data.generated_missing true)
	@echo "stage A written to $(A)/generated/g4/backbone (the shipped copy is checkpoints/reward_tiny_stage_a_generated)"

pretrain-generator: $(GENERATOR_DIR)/pipeline/model_index.json ## pretrain the tiny generator (3 stages, ~6 h, resumable)

# The shipped generator's recipe (checkpoints/generator_tiny/README.md): (1) rectified flow on the RL set, 13,600
# steps; (2) its T5 trained to read layouts on 200,000 fresh train-split prompts (6,000 steps); (3) the transformer
# warm-started on both, on the RL set + those fresh scenes, with the layout head (rl_policy/layout_head.py) and, for
# its last 10,000 steps, the object-weighted flow loss.
GENERATOR_FRESH = --fresh-scenes 200000 --fresh-path $(GENERATOR_DIR)/fresh_scenes.safetensors --workers $$(nproc)
# Stage 3 as measured: 5,000 steps (decay over the last 2,000), then resumed to 10,000 (the rate back at 1e-3 after
# 5,000, decayed again over the last 2,000), then to 20,000 with the object-weighted flow loss as well.
GENERATOR_LAYOUT_ARGS ?= --lr 1e-3 --warmup-steps 100 --decay-steps 2000 --eval-prompts 256 --epoch-steps 1000 \
	--layout-loss-weight 0.1
GENERATOR_OBJECT_ARGS ?= --object-loss-weight 4

$(GENERATOR_DIR)/base/pipeline/model_index.json: $(RL_DATA_DIR)/verify_report.json | $(STAMP)
	$(PYTHON) -m rl_policy pretrain --data $(RL_DATA_DIR) --out $(GENERATOR_DIR)/base

$(GENERATOR_DIR)/text/pipeline/model_index.json: $(GENERATOR_DIR)/base/pipeline/model_index.json
	$(PYTHON) -m rl_policy pretrain-text --data $(RL_DATA_DIR) --out $(GENERATOR_DIR)/text \
		--init-from $(GENERATOR_DIR)/base/pipeline $(GENERATOR_FRESH)

$(GENERATOR_DIR)/pipeline/model_index.json: $(GENERATOR_DIR)/text/pipeline/model_index.json
	for steps in 5000 10000 20000; do \
		$(PYTHON) -m rl_policy pretrain --data $(RL_DATA_DIR) --out $(GENERATOR_DIR) --steps $$steps \
			--init-from $(GENERATOR_DIR)/text/pipeline $(GENERATOR_FRESH) $(GENERATOR_LAYOUT_ARGS) \
			$$(test $$steps = 20000 && echo "$(GENERATOR_OBJECT_ARGS)") || exit 1; \
	done

# REWARD=spatialscore (default: the tiny critic of make train-reward), REWARD=oracle (the SpatialWorld oracle) or
# REWARD=geneval (the GenEval rules: the paper's Flow-GRPO* baseline); each writes runs/rl/tiny[-oracle|-geneval].
RL_REWARDS = spatialscore oracle geneval
ifeq ($(filter $(REWARD),$(RL_REWARDS)),)
$(error REWARD=$(REWARD) is not one of: $(RL_REWARDS))
endif
RL_REWARD_CONFIG = $(if $(filter spatialscore,$(REWARD)),,--config configs/rl/reward_$(REWARD).yaml)
# RL_RECIPE=layout (default: configs/rl/tiny.yaml's, the same for every reward) or topk (the paper's: top-6 and
# bottom-6, configs/rl/recipe_topk.yaml; its runs go to runs/rl/tiny[-REWARD]-topk)
RL_RECIPE ?= layout
RL_RECIPES = layout topk
ifeq ($(filter $(RL_RECIPE),$(RL_RECIPES)),)
$(error RL_RECIPE=$(RL_RECIPE) is not one of: $(RL_RECIPES))
endif
RL_CONFIGS = $(strip --config configs/rl/tiny.yaml $(if $(filter topk,$(RL_RECIPE)),--config configs/rl/recipe_topk.yaml) \
	$(RL_REWARD_CONFIG))
RL_REWARD_DEPS = $(if $(filter spatialscore,$(REWARD)),$(REWARD_EXPORT)/metrics.json,)
# The critic is the config's runs/reward/tiny/export unless REWARD_RUN_DIR says otherwise (given whole, as JSON: a
# protocol-typed argument is not overridden field by field)
RL_CRITIC_ARGS = $(if $(and $(filter spatialscore,$(REWARD)),$(filter-out runs/reward/tiny/export,$(REWARD_EXPORT))),\
	--model.reward '{"class_path": "reward_model.SpatialScorer"$(comma) "init_args": {"checkpoint_dir": "$(REWARD_EXPORT)"}}',)
# RL_RUNS_DIR: where the runs go (runs/rl/tiny[-REWARD]); another dir moves the run, its checkpoints and the base
# evaluation cache there (`make demo`: runs/demo/rl). RL_STEPS=n: n GRPO iterations instead of the config's;
# RL_EVAL_PROMPTS=n: the end-of-fit evaluation on the first n test prompts (x 2 seeds) instead of all of them.
RL_RUNS_DIR ?= runs/rl
RL_RUN_DIR = $(RL_RUNS_DIR)/tiny$(if $(filter spatialscore,$(REWARD)),,-$(REWARD))$(if $(filter topk,$(RL_RECIPE)),-topk)
RL_STEPS ?=
RL_EVAL_PROMPTS ?=
RL_SIZE_ARGS = $(if $(or $(filter-out runs/rl,$(RL_RUNS_DIR)),$(filter topk,$(RL_RECIPE))),--trainer.default_root_dir $(RL_RUN_DIR) \
	--trainer.callbacks.init_args.dirpath $(RL_RUN_DIR)/checkpoints --export.base_cache $(RL_RUNS_DIR)/base_eval_cache,) \
	$(if $(RL_STEPS),--trainer.max_steps $(RL_STEPS),) $(if $(RL_EVAL_PROMPTS),--export.num_prompts $(RL_EVAL_PROMPTS),)
# a killed run resumes from its last checkpoint (LoRA, optimizer, EMA, data position and RNG)
# SEED=n: the run's seed (LoRA init, rollout noise, prompt order)
RL_SEED = $(if $(SEED),--seed_everything $(SEED) --data.seed $(SEED) --model.seed $(SEED),)
RL_RESUME = $(if $(wildcard $(RL_RUN_DIR)/checkpoints/last.ckpt),--ckpt_path $(RL_RUN_DIR)/checkpoints/last.ckpt,)

# (a critic older than its ranked pairs, e.g. one of renders alone from before they were the default, is retrained)
$(REWARD_EXPORT)/metrics.json: $(addsuffix /meta.json,$(REWARD_DATA_DIRS))
	$(MAKE) train-reward

train-rl: $(RL_DATA_DIR)/verify_report.json $(GENERATOR)/model_index.json $(RL_REWARD_DEPS) | $(STAMP) ## Flow-GRPO of the tiny generator (REWARD=oracle|geneval too)
	$(PYTHON) -m rl_policy fit $(RL_CONFIGS) --data.source $(RL_DATA_DIR) \
		--model.policy.pipeline $(GENERATOR) $(RL_CRITIC_ARGS) $(RL_SIZE_ARGS) $(RL_SEED) $(RL_RESUME)

# The RL comparison (not in CI; 10-20 CPU-minutes per run, 18 runs): 3 seeds each of the critic, the oracle and the
# GenEval-rule reward, under tiny.yaml's recipe (`-layout`) and the paper's (`-topk`), only the reward differing within
# a recipe (experiments/exp_rl.py); runs/exp-rl/comparison.md and curves.png. Resumable. EXP_RL_ONLY="CONFIGURATION
# ...": only those configurations (e.g. oracle-layout), so that two processes can share the runs.
EXP_RL_REWARD ?= spatialscore
EXP_RL_ONLY ?=
exp-rl: $(RL_DATA_DIR)/verify_report.json $(GENERATOR)/model_index.json runs/reward/tiny/export/metrics.json | $(STAMP) ## RL comparison: rewards x recipes x 3 seeds
	$(PYTHON) experiments/exp_rl.py --reward $(EXP_RL_REWARD) --out runs/exp-rl $(if $(EXP_RL_ONLY),--only $(EXP_RL_ONLY),) \
		-- --data.source $(RL_DATA_DIR) --model.policy.pipeline $(GENERATOR)

# Every benchmark for the tiny reward model and for each generator that exists (the pretrained base, the RL runs);
# cached and resumable: a rerun makes no judge call and gives a byte-identical reports/summary.json.
RL_RUNS = $(foreach run,tiny tiny-oracle tiny-geneval,$(if $(wildcard $(RL_RUNS_DIR)/$(run)/lora/policy.json),\
	--generator $(run)=$(RL_RUNS_DIR)/$(run)))

EVAL_SAMPLER_ARGS = --steps 20 --height 32 --width 32 --true-cfg 3
# EVAL_LIMIT=40: only the first 40 prompts (pairs) of each task, for a quick look. The full suite draws 796 images per
# generator for the tasks that share the SpatialWorld prompt text and more for TIIF's long versions, 8 per pipeline
# call (--batch-size); spatialworld-oracle took 185 s for 588 of them on a loaded 2-core machine.
EVAL_LIMIT ?=
EVAL_OUT ?= reports

eval-benchmarks: $(RL_DATA_DIR)/verify_report.json $(REWARD_EXPORT)/metrics.json $(GENERATOR)/model_index.json | $(STAMP) ## all benchmarks -> reports/
	$(PYTHON) -m benchmarks suite --out $(EVAL_OUT) --reward-data $(DATA_DIR) --scorer $(REWARD_EXPORT) \
		--prompt-data $(RL_DATA_DIR) --generator base=$(GENERATOR) $(RL_RUNS) \
		$(EVAL_SAMPLER_ARGS) --images-per-prompt 2 $(if $(EVAL_LIMIT),--limit $(EVAL_LIMIT),)

# The whole chain from nothing at demo size (each stage only when its output is missing), timed, with base-vs-RL
# samples drawn with the benchmarks' sampler settings: reports/demo.md. benchmarks/demo.py holds the demo's sizes and
# their time budget (45 minutes on 2 cores) and passes them to every stage target; the demo's data, runs and
# benchmark reports go to data/demo, runs/demo and reports/demo, so no full-size target reads them.
demo: $(STAMP) ## the whole chain at demo size (~45 min): data, critic, GRPO (oracle and critic), benchmarks -> reports/demo.md
	$(PYTHON) -m benchmarks.demo --out reports --prompt-data $(RL_DATA_DIR) --generator $(GENERATOR) $(EVAL_SAMPLER_ARGS)

bench: $(STAMP) ## speed benchmarks (prints ratios against the targets)
	$(PYTHON) bench/data_synthesis_build.py
	$(PYTHON) bench/reward_speed.py
	$(PYTHON) bench/rl_speed.py
	$(PYTHON) bench/serve_speed.py

clean: ## remove the venv, caches and generated data/runs/reports
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info data runs reports
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
