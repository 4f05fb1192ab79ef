"""Two-process CPU GRPO of the tiny Flux (Lightning DDP over gloo): each rank samples the groups of its own prompts
(so top-k filtering needs no gather), and the ranks stay in step: identical LoRA weights after every run, changed
from the initial ones. Also when the ranks have different numbers of (sample, step) pairs to train on, including
none at all on one rank (its groups' rewards all equal): that rank contributes a zero gradient to the same number
of optimizer steps instead of leaving the other rank waiting in a collective (the subprocess timeout turns a hang
into a failure). And with `std_scope: global` (the full-size configs'), whose all-gather of the rewards runs on every
rank at every step, a rank with nothing to train included.

The test launches this file once per rank (tests/ddp_launch.py)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import torch
from ddp_launch import launch_ranks, weights_in_step
from safetensors.torch import save_file

pytestmark = pytest.mark.slow  # two processes each import the stack and run GRPO: ~1-2 min on 2 busy cores

WORLD_SIZE = 2
MAX_STEPS = 3


class RankBrightness:
    """Brightness as the reward (see test_rl_grpo_module.Brightness); on rank `flat_rank` every reward is 0.5, so
    that rank's groups have zero variance and nothing to train."""

    def __init__(self, flat_rank: int | None) -> None:
        self.flat_rank = flat_rank

    def __call__(self, *, prompts, images, metadata=None) -> torch.Tensor:
        if int(os.environ["LOCAL_RANK"]) == self.flat_rank:
            return torch.full((len(images),), 0.5)
        return torch.stack([image.float().mean() for image in images])


def run_rank(
    dataset_dir: Path, out_dir: Path, flat_rank: int | None, keep_per_side: int, std_scope: str = "group"
) -> None:
    from lightning.pytorch import Trainer, seed_everything
    from lightning.pytorch.strategies import DDPStrategy
    from test_rl_grpo_module import make_module  # this file runs as a script from tests/

    from rl_policy import WeightedReward
    from rl_policy.data import PromptDataModule
    from rl_policy.policy import trainable_parameters

    torch.set_num_threads(1)
    seed_everything(0)
    rank = int(os.environ["LOCAL_RANK"])
    module = make_module(
        reward=WeightedReward([RankBrightness(flat_rank)], [1.0]),
        keep_per_side=keep_per_side,
        updates_per_rollout=2,
        std_scope=std_scope,
    )

    def save_lora(stage: str) -> None:
        lora = trainable_parameters(module.transformer)
        save_file({n: p.detach().contiguous() for n, p in lora.items()}, str(out_dir / f"{stage}_{rank}.safetensors"))

    save_lora("initial")
    trainer = Trainer(
        accelerator="cpu",
        devices=WORLD_SIZE,
        strategy=DDPStrategy(process_group_backend="gloo"),
        max_steps=MAX_STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out_dir,
    )
    trainer.fit(module, PromptDataModule(dataset_dir, prompts_per_step=2, num_eval_prompts=2))
    save_lora("final")
    summary = {
        "global_step": trainer.global_step,
        "world": trainer.world_size,
        "zero_variance_groups": module.counters["zero_variance_groups"],
    }
    (out_dir / f"summary_{rank}.json").write_text(json.dumps(summary))


def launch(
    dataset_dir: Path, out_dir: Path, flat_rank: int | None, keep_per_side: int, std_scope: str = "group"
) -> list[dict]:
    """WORLD_SIZE ranks of `run_rank`; -> each rank's summary (a crash or a 400 s hang fails the test)."""
    arguments = ["--dataset", str(dataset_dir), "--out", str(out_dir), "--keep-per-side", str(keep_per_side)]
    arguments += ["--std-scope", std_scope]
    arguments += [] if flat_rank is None else ["--flat-rank", str(flat_rank)]
    return launch_ranks(__file__, arguments, out_dir, WORLD_SIZE, timeout=400)


def assert_ranks_identical_and_trained(out_dir: Path) -> None:
    initial, final = weights_in_step(out_dir, WORLD_SIZE)
    assert any(not torch.equal(final[name], initial[name]) for name in final if "lora_B" in name)


def test_two_ranks_stay_in_step(small_dataset, tmp_path):
    """Ranks keep 1 of 4 per side vs. the whole group: here both ranks train, on different prompts' samples."""
    summaries = launch(small_dataset, tmp_path, flat_rank=None, keep_per_side=1)
    assert [s["world"] for s in summaries] == [WORLD_SIZE] * WORLD_SIZE
    assert [s["global_step"] for s in summaries] == [MAX_STEPS] * WORLD_SIZE
    assert_ranks_identical_and_trained(tmp_path)


def test_a_rank_with_nothing_to_train_still_steps_with_the_other(small_dataset, tmp_path):
    summaries = launch(small_dataset, tmp_path, flat_rank=1, keep_per_side=1)
    assert summaries[1]["zero_variance_groups"] == MAX_STEPS and summaries[0]["zero_variance_groups"] == 0
    assert [s["global_step"] for s in summaries] == [MAX_STEPS] * WORLD_SIZE
    assert_ranks_identical_and_trained(tmp_path)


def test_global_std_gathers_at_every_step_with_a_flat_rank(small_dataset, tmp_path):
    summaries = launch(small_dataset, tmp_path, flat_rank=1, keep_per_side=1, std_scope="global")
    assert summaries[1]["zero_variance_groups"] == MAX_STEPS and summaries[0]["zero_variance_groups"] == 0
    assert [s["global_step"] for s in summaries] == [MAX_STEPS] * WORLD_SIZE
    assert_ranks_identical_and_trained(tmp_path)


if __name__ == "__main__":
    arguments = argparse.ArgumentParser(description="one DDP rank of the distributed GRPO test")
    arguments.add_argument("--dataset", type=Path, required=True)
    arguments.add_argument("--out", type=Path, required=True)
    arguments.add_argument("--flat-rank", type=int, default=None)
    arguments.add_argument("--keep-per-side", type=int, default=1)
    arguments.add_argument("--std-scope", choices=("group", "global"), default="group")
    parsed = arguments.parse_args()
    run_rank(parsed.dataset, parsed.out, parsed.flat_rank, parsed.keep_per_side, parsed.std_scope)
