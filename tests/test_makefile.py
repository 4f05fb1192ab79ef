"""Every make target works from a fresh clone: each builds what it reads. Checked without running any stage, with
`make -n` (print the commands, run nothing) in a copy of the tracked files, where no data, run or venv exists."""

from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path

import pytest

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
    "train-reward": [SETUP, DATA, REWARD],
    "pretrain-reward": [SETUP, DATA, STAGE_A + "v3.yaml "]
    + [
        f"{STAGE_A}{phase}.yaml --init-from runs/stage_a/{previous}/backbone"
        for previous, phase in itertools.pairwise(PHASES)
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
