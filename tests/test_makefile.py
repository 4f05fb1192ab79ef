"""Every make target works from a fresh clone: each builds what it reads. Checked without running any stage, with
`make -n` (print the commands, run nothing) in a copy of the tracked files, where no data, run or venv exists."""

from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks.demo import DemoSize, default_stages

REPO = Path(__file__).resolve().parents[1]
SETUP = "python3 -m venv .venv"
DATA = "data_synthesis build --out data/spatialworld "
RL_DATA = "data_synthesis build --out data/spatialworld-rl "
REWARD = "reward_model fit --config configs/reward/tiny.yaml"
RL = "rl_policy fit --config configs/rl/tiny.yaml"
STAGE_A = "reward_model pretrain --config configs/reward/tiny_stage_a_"
PHASES = ["v3", "v4", "v5", "v6", "v7", "v8", "v9", "v10", "v11", "v12"]

# target (with variables) -> the steps its dry run must name, in order
NEEDS = {
    "test": [SETUP, "pytest"],
    "data": [SETUP, DATA, "data_synthesis verify data/spatialworld "],
    "data-rl": [SETUP, RL_DATA],
    "data-ranked": [SETUP, RL_DATA, "rl_policy draw", "--split train", "--prompts 4800", "ranked-groups data/draw"],
    "train-reward": [
        SETUP,
        DATA,
        "rl_policy draw",
        "--prompts 4800 --per-prompt 8 --out data/draw-train-x8",
        "data_synthesis ranked-groups",
        REWARD + " --config configs/reward/tiny_ranked.yaml",
        "--data.extra_dataset_dirs '[data/spatialworld-ranked-4800]'",
    ],
    "train-reward CRITIC=render": [SETUP, DATA, REWARD + " --data.dataset_dir"],
    'train-reward REWARD_EXTRA_DATA=data/spatialworld-generated REWARD_REPEATS={"ranked":2}': [
        "data_synthesis ranked-groups",
        "data_synthesis build --out data/spatialworld-generated",
        REWARD,
        "--data.extra_dataset_dirs '[data/spatialworld-ranked-4800,data/spatialworld-generated]'",
        "--data.train_repeats '{\"ranked\":2}'",
    ],
    "pretrain-reward": [SETUP, DATA, STAGE_A + "v3.yaml "]
    + [
        f"{STAGE_A}{phase}.yaml --init-from runs/stage_a/{previous}/backbone"
        for previous, phase in itertools.pairwise(PHASES)
    ],
    "pretrain-reward-generated": [
        SETUP,
        DATA,
        # the ranked pairs' draw first, then the same dir grown to every train prompt (each group drawn once)
        "--prompts 4800 --per-prompt 8 --out data/draw-train-x8",
        "data_synthesis ranked-groups",
        "--prompts 7200 --per-prompt 8 --out data/draw-train-x8",
        STAGE_A + "generated.yaml --init-from checkpoints/reward_tiny_stage_a --trainer.max_steps 600",
        "--init-from runs/stage_a/generated/g1/backbone --trainer.max_steps 1500",
        "--init-from runs/stage_a/generated/g2/backbone --trainer.max_steps 2400 --model.schedule_steps 2400 "
        "--data.seed 1",
        "--init-from runs/stage_a/generated/g3/backbone --trainer.max_steps 1200 --model.schedule_steps 1200 "
        "--data.seed 2 --data.generated_missing true --data.generated_dirs '[data/draw-train-x8]'",
    ],
    "train-rl": [SETUP, RL_DATA, DATA, REWARD, RL],
    "train-rl REWARD=oracle": [SETUP, RL_DATA, RL + " --config configs/rl/reward_oracle.yaml"],
    "train-rl REWARD=geneval": [SETUP, RL_DATA, RL + " --config configs/rl/reward_geneval.yaml"],
    "exp-rl": [SETUP, RL_DATA, DATA, REWARD, "exp_rl"],
    "eval-benchmarks": [SETUP, RL_DATA, DATA, REWARD, "benchmarks suite"],
    "demo": [SETUP, "benchmarks.demo"],
    "bench": [SETUP, "bench/"],
    "setup TORCH_CPU=1": [SETUP, "--index-url https://download.pytorch.org/whl/cpu"],
    "train-rl REWARD=oracle SEED=2": [RL + " --config configs/rl/reward_oracle.yaml", "--seed_everything 2"],
    "train-rl RL_RECIPE=topk REWARD=geneval": [
        RL + " --config configs/rl/recipe_topk.yaml --config configs/rl/reward_geneval.yaml",
        "--trainer.default_root_dir runs/rl/tiny-geneval-topk",
        "--trainer.callbacks.init_args.dirpath runs/rl/tiny-geneval-topk/checkpoints",
    ],
}


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory) -> Path:
    """The tracked files as they are in this working tree (so uncommitted edits are checked too), nothing else."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    clone = tmp_path_factory.mktemp("clone")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in tracked.decode().split("\0"):
        if name and (REPO / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, clone / name)
    return clone


@pytest.mark.parametrize("target", sorted(NEEDS))
def test_make_target_builds_what_it_reads_from_a_fresh_clone(fresh_clone, target):
    result = subprocess.run(["make", "-n", *target.split()], cwd=fresh_clone, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    position = 0
    for step in NEEDS[target]:
        found = result.stdout.find(step, position)
        assert found >= 0, f"`make -n {target}` does not run {step!r} (after position {position}):\n{result.stdout}"
        position = found + len(step)


def dry_run(clone: Path, *arguments: str) -> str:
    """`make -n` output with line continuations joined and whitespace collapsed."""
    result = subprocess.run(["make", "-n", *arguments], cwd=clone, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return " ".join(result.stdout.replace("\\\n", " ").split())


def test_demo_sizes_reach_every_stage_command_and_the_defaults_stay_full_size(fresh_clone):
    """What `make demo` runs (benchmarks/demo.py's stage commands, with sizes of its own) names those sizes and the
    demo's dirs in the commands the Makefile would run; the same targets without the variables keep the full size."""
    size = DemoSize(
        data_pairs=1300,
        ranked_prompts=7,
        agreement_prompts=5,
        reward_steps=11,
        rl_steps=3,
        rl_eval_prompts=9,
        eval_limit=4,
    )
    stages = default_stages(size, Path("reports/demo"))
    demo_reward = "reward_model fit --config configs/reward/tiny.yaml --config configs/reward/tiny_ranked.yaml"
    demo_reward += " --data.dataset_dir data/demo/spatialworld"
    demo_reward += " --export.agreement_set data/demo/agreement-test --trainer.default_root_dir runs/demo/reward/tiny"
    demo_reward += " --trainer.max_steps 11 --data.extra_dataset_dirs '[data/demo/spatialworld-ranked]'"
    rl_sizes = "--trainer.max_steps 3 --export.num_prompts 9"
    needs = {
        "data": ["data_synthesis build --out data/demo/spatialworld --num-pairs 1300 --seed 0 "],
        "data-rl": [RL_DATA + "--num-pairs 8000 "],
        "pretrain-generator": ["rl_policy pretrain"],
        "data-ranked": [
            "rl_policy draw",
            "--prompts 7 --per-prompt 8 --out data/demo/draw-train",
            "ranked-groups data/demo/draw-train --source-dir data/spatialworld-rl --out data/demo/spatialworld-ranked",
        ],
        "agreement-set": ["rl_policy draw", "--prompts 5 --per-prompt 24 --out data/demo/agreement-test"],
        "train-reward": ["--prompts 5 ", demo_reward],
        "train-rl-oracle": [
            RL + " --config configs/rl/reward_oracle.yaml",
            "--trainer.default_root_dir runs/demo/rl/tiny-oracle --trainer.callbacks.init_args.dirpath "
            "runs/demo/rl/tiny-oracle/checkpoints --export.base_cache runs/demo/rl/base_eval_cache " + rl_sizes,
        ],
        "train-rl": [
            demo_reward,
            RL,
            '"checkpoint_dir": "runs/demo/reward/tiny/export"',
            "--trainer.default_root_dir runs/demo/rl/tiny --trainer.callbacks.init_args.dirpath "
            "runs/demo/rl/tiny/checkpoints --export.base_cache runs/demo/rl/base_eval_cache " + rl_sizes,
        ],
        "eval-benchmarks": [
            demo_reward,
            "benchmarks suite --out reports/demo --reward-data data/demo/spatialworld --scorer "
            "runs/demo/reward/tiny/export",
            "--limit 4",
        ],
    }
    assert sorted(needs) == sorted(stage.name for stage in stages)
    for stage in stages:
        output, position = dry_run(fresh_clone, *stage.command[1:]), 0
        for step in needs[stage.name]:
            found = output.find(step, position)
            assert found >= 0, f"`make -n` of demo stage {stage.name} does not run {step!r}:\n{output}"
            position = found + len(step)

    # the targets' own defaults: the full size, the full-size dirs
    assert "--num-pairs 12000 " in dry_run(fresh_clone, "data")
    assert "--prompts 64 --per-prompt 24 --out data/agreement-test" in dry_run(fresh_clone, "agreement-set")
    assert "--num-pairs 2000 " in dry_run(fresh_clone, "data-generated")
    reward = dry_run(fresh_clone, "train-reward")
    assert "--trainer.default_root_dir runs/reward/tiny" in reward and "--trainer.max_steps" not in reward
    assert "--prompts 4800 --per-prompt 8 --out data/draw-train-x8" in reward
    # another size of ranked pairs builds its own dir from the same (growing or shrinking) draw; the critic reads it
    smaller = dry_run(fresh_clone, "train-reward", "RANKED_PROMPTS=800")
    assert "--prompts 800 --per-prompt 8 --out data/draw-train-x8" in smaller
    assert "--out data/spatialworld-ranked-800" in smaller and "'[data/spatialworld-ranked-800]'" in smaller
    render = dry_run(fresh_clone, "train-reward", "CRITIC=render")
    assert "--split train" not in render and "tiny_ranked" not in render and "--data.extra_dataset_dirs" not in render
    for rl in (dry_run(fresh_clone, "train-rl"), dry_run(fresh_clone, "train-rl", "REWARD=oracle")):
        assert all(flag not in rl for flag in ("--trainer.max_steps", "--export.num_prompts", "--model.reward", "demo"))
    benchmarks = dry_run(fresh_clone, "eval-benchmarks")
    assert "--out reports --reward-data data/spatialworld --scorer runs/reward/tiny/export" in benchmarks
    assert "--limit" not in benchmarks
