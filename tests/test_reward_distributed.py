"""Two-process CPU training of the tiny SpatialScore (Lightning DDP over gloo): both ranks end with identical
trainable weights that differ from the initial ones; and a non-finite loss on ONE rank makes BOTH skip that step
(`RewardModule.training_step` all-reduces the decision; were it not, the other rank would wait forever in DDP's
gradient all-reduce, which the subprocess timeout turns into a failure), with identical weights still.

The test launches this file once per rank (tests/ddp_launch.py). Each rank writes its trainable weights before and
after the fit and its skip count."""

from __future__ import annotations

import argparse
import functools
import json
import os
from pathlib import Path

import pytest
import torch
from ddp_launch import launch_ranks, weights_in_step
from safetensors.torch import save_file

pytestmark = pytest.mark.slow  # about 40 s idle, 100 s on 2 busy cores: two processes each import the stack

WORLD_SIZE = 2
MAX_STEPS = 4
NAN_STEP = 1  # the optimizer step at which one rank's loss is made NaN


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone().contiguous() for name, p in module.named_parameters() if p.requires_grad}


def run_rank(dataset_dir: Path, out_dir: Path, nan_rank: int | None) -> None:
    """One DDP rank (its rank comes from LOCAL_RANK): MAX_STEPS steps of stage B on the tiny model; the training loss
    of rank `nan_rank` is NaN at optimizer step NAN_STEP."""
    from lightning.pytorch import Trainer, seed_everything
    from lightning.pytorch.strategies import DDPStrategy

    from reward_model.data import PairwiseDataModule
    from reward_model.module import RewardModule
    from reward_model.recipes import build_tiny_spatialscore

    class NaNOnOneRank(RewardModule):
        def pair_loss(self, *scores: torch.Tensor) -> torch.Tensor:
            loss = super().pair_loss(*scores)
            if self.training and self.global_rank == nan_rank and self.trainer.global_step == NAN_STEP:
                return loss * float("nan")
            return loss

    torch.set_num_threads(1)
    seed_everything(0)
    rank = int(os.environ["LOCAL_RANK"])
    module = NaNOnOneRank(build_tiny_spatialscore(seed=0), functools.partial(torch.optim.AdamW, lr=1e-2))
    save_file(trainable_state(module), str(out_dir / f"initial_{rank}.safetensors"))
    trainer = Trainer(
        accelerator="cpu",
        devices=WORLD_SIZE,
        strategy=DDPStrategy(process_group_backend="gloo"),
        max_steps=MAX_STEPS,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out_dir,
    )
    trainer.fit(module, PairwiseDataModule(dataset_dir, batch_size=2, orientation="both"))
    save_file(trainable_state(module), str(out_dir / f"final_{rank}.safetensors"))
    summary = {"skipped_steps": module.skipped_steps, "global_step": trainer.global_step, "world": trainer.world_size}
    (out_dir / f"summary_{rank}.json").write_text(json.dumps(summary))


def launch(dataset_dir: Path, out_dir: Path, nan_rank: int | None) -> list[dict]:
    """WORLD_SIZE ranks of `run_rank`; -> each rank's summary (a crash or a 240 s hang fails the test)."""
    arguments = ["--dataset", str(dataset_dir), "--out", str(out_dir)]
    arguments += [] if nan_rank is None else ["--nan-rank", str(nan_rank)]
    return launch_ranks(__file__, arguments, out_dir, WORLD_SIZE, timeout=240)


def assert_ranks_identical_and_trained(out_dir: Path) -> None:
    initial, final = weights_in_step(out_dir, WORLD_SIZE)
    assert all(torch.isfinite(final[name]).all() for name in final)
    changed = {name for name in final if not torch.equal(final[name], initial[name])}
    assert any("lora_B" in name for name in changed) and any(name.startswith("network.head.") for name in changed)
    assert any("trainable_tokens_delta" in name for name in changed)


def test_two_ddp_ranks_end_with_identical_trained_weights(small_dataset, tmp_path):
    summaries = launch(small_dataset, tmp_path, nan_rank=None)
    assert [summary["world"] for summary in summaries] == [WORLD_SIZE] * WORLD_SIZE
    assert [summary["global_step"] for summary in summaries] == [MAX_STEPS] * WORLD_SIZE
    assert [summary["skipped_steps"] for summary in summaries] == [0] * WORLD_SIZE
    assert_ranks_identical_and_trained(tmp_path)


def test_a_nan_loss_on_one_rank_makes_both_skip_that_step(small_dataset, tmp_path):
    summaries = launch(small_dataset, tmp_path, nan_rank=1)
    assert [summary["skipped_steps"] for summary in summaries] == [1, 1]  # rank 0's loss was finite: it skipped too
    assert summaries[0]["global_step"] == summaries[1]["global_step"]
    assert_ranks_identical_and_trained(tmp_path)


if __name__ == "__main__":
    arguments = argparse.ArgumentParser(description="one DDP rank of the distributed test")
    arguments.add_argument("--dataset", type=Path, required=True)
    arguments.add_argument("--out", type=Path, required=True)
    arguments.add_argument("--nan-rank", type=int, default=None)
    parsed = arguments.parse_args()
    run_rank(parsed.dataset, parsed.out, parsed.nan_rank)
