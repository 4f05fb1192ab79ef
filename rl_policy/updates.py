"""How a rollout's kept training pairs become optimizer steps (`GRPOModule.training_step`).

The pairs (sample, SDE step or noise draw) are split into `updates_per_rollout` chunks, each one optimizer step with
gradients accumulated over micro-batches of `micro_batch_size`. With several processes every rank must run the same
collectives: `update_plan` gives each rank the steps whose chunk has pairs on SOME rank, with as many micro-batches
as the rank with the most pairs (an empty micro-batch is a zero-weight pass: DDP reduces gradients at every
backward, so a rank that skipped one would leave the others waiting), and each chunk's pair count over all ranks,
so the loss can be weighted to the mean over every rank's pairs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class UpdateSettings:
    """updates_per_rollout: optimizer steps per rollout (the kept pairs split into that many chunks);
    micro_batch_size: pairs per forward/backward; max_grad_norm: gradient-norm clipping."""

    updates_per_rollout: int = 2
    micro_batch_size: int = 8
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        if self.updates_per_rollout < 1 or self.micro_batch_size < 1:
            raise ValueError("updates.updates_per_rollout and updates.micro_batch_size must be positive")


def update_plan(
    pairs: torch.Tensor,
    settings: UpdateSettings,
    reduce_sum: Callable[[torch.Tensor], torch.Tensor],
    world_size: int,
    device: torch.device,
) -> list[tuple[list[torch.Tensor], int]]:
    """This rank's pairs [n, 2] as optimizer steps, each (micro-batches, pairs in this chunk over all ranks); empty
    when no rank has anything to train (module docstring). reduce_sum: the strategy's sum over ranks."""
    chunks = list(pairs.tensor_split(settings.updates_per_rollout))
    lengths = torch.tensor([len(chunk) for chunk in chunks], dtype=torch.float64, device=device)
    totals = reduce_sum(lengths.clone()).long().tolist()
    most = lengths.clone()
    if world_size > 1:
        torch.distributed.all_reduce(most, op=torch.distributed.ReduceOp.MAX)
    plan = []
    for chunk, total, longest in zip(chunks, totals, most.long().tolist(), strict=True):
        if total == 0:
            continue
        micro_batches = list(chunk.split(settings.micro_batch_size))
        micro_batches += [chunk[:0]] * (math.ceil(longest / settings.micro_batch_size) - len(micro_batches))
        plan.append((micro_batches, total))
    return plan
