"""The `Reward` protocol: what rl_policy asks of a reward, and nothing more. Implementations live with their owners
(the SpatialScore critic in reward_model, the SpatialWorld oracle in data_synthesis, the GenEval rules in benchmarks)
and a config picks one by `class_path`, so rl_policy imports none of them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch


class Reward(Protocol):
    """A reward for generated images: keyword-only, one float per (prompt, image). A Gaussian reward (the SpatialScore
    critic, in process or served) also has `mean_and_std(prompts=, images=) -> (mean, std)`: `reward_and_std`
    uses it."""

    def __call__(
        self, *, prompts: Sequence[str], images: Sequence[Any], metadata: Sequence[Any] | None
    ) -> torch.Tensor: ...


class WeightedReward:
    """sum_i weight_i * reward_i(...), for mixing rewards by config (e.g. the critic and the oracle)."""

    def __init__(self, rewards: Sequence[Reward], weights: Sequence[float]) -> None:
        if len(rewards) != len(weights) or not rewards:
            raise ValueError(f"WeightedReward needs one weight per reward, got {len(rewards)} and {len(weights)}")
        self.rewards, self.weights = list(rewards), [float(w) for w in weights]

    def __call__(
        self, *, prompts: Sequence[str], images: Sequence[Any], metadata: Sequence[Any] | None
    ) -> torch.Tensor:
        total = torch.zeros(len(prompts))
        for reward, weight in zip(self.rewards, self.weights, strict=True):
            if weight:
                total += weight * reward(prompts=prompts, images=images, metadata=metadata).float().cpu()
        return total


def reward_and_std(
    reward: Reward, *, prompts: Sequence[str], images: Sequence[Any], metadata: Sequence[Any] | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The reward [N] and, for a Gaussian reward (one with `mean_and_std`), its std [N]; else None. The mean is what
    the reward's own `__call__` gives."""
    mean_and_std = getattr(reward, "mean_and_std", None)
    if callable(mean_and_std):
        return mean_and_std(prompts=prompts, images=images)
    return reward(prompts=prompts, images=images, metadata=metadata), None
