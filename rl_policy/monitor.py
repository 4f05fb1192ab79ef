"""The reward-hacking monitor of GRPO: is the policy learning what the reward says, or what the oracle says?

A learnt critic (SpatialScore) can be exploited: its reward rises while the SpatialWorld oracle's relation accuracy
falls. `GRPOModule` shows the two side by side and measures how far the critic can be trusted where GRPO uses it:

- `rollout_agreement`: on a step's rollout groups (G samples per prompt), the oracle's relation accuracy of every
  sample, and the critic's agreement with it inside each group: `train/critic_oracle_agreement` (share of sample
  pairs the oracle tells apart that the reward orders the same way) and `train/critic_oracle_spearman` (mean
  within-group Spearman, shared.agreement). Measured at the first step, every evaluation step and the last step.
- `divergence_warning`: a held-out evaluation whose reward rose over the first one (step 0, before any update) while
  the oracle's relation accuracy fell by more than one standard error.
- `TENSORBOARD_LAYOUT`: one TensorBoard "custom scalars" page with the reward, the oracle's accuracies and the
  agreement in adjacent charts.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from rl_policy.grpo import within_group_agreement
from shared.agreement import within_group_spearman

TENSORBOARD_LAYOUT = {
    "reward hacking monitor": {
        "held-out reward (the training reward's scorer)": ["Multiline", ["eval/reward"]],
        "held-out oracle accuracy": [
            "Multiline",
            ["eval/oracle_accuracy", "eval/relation_accuracy_all_found", "eval/all_found"],
        ],
        "critic vs oracle within rollout groups": [
            "Multiline",
            ["train/critic_oracle_spearman", "train/critic_oracle_agreement"],
        ],
    }
}


def rollout_agreement(
    oracle, prompts: list[str], metadata: list[Any], images: torch.Tensor, rewards: torch.Tensor, group_size: int
) -> dict[str, torch.Tensor]:
    """Critic-oracle agreement on one rollout: prompts/metadata per sample [S], images [S, 3, H, W], rewards [S] in
    groups of `group_size` consecutive samples. NaN-valued metrics where nothing can be compared (every group's
    oracle values tied, or a non-finite reward)."""
    reference = oracle(prompts=prompts, images=list(images), metadata=metadata).float().cpu()  # [S]
    rewards = rewards.float().cpu()
    prompt_index = torch.arange(len(rewards)) // group_size
    metrics = {"train/critic_oracle_agreement": within_group_agreement(prompt_index, rewards, reference)}
    if torch.isfinite(rewards).all():
        spearman = within_group_spearman(rewards.view(-1, group_size), reference.view(-1, group_size)).value
    else:
        spearman = math.nan
    metrics["train/critic_oracle_spearman"] = torch.tensor(spearman)
    return metrics


def agreement_step(step: int, eval_every: int | None, max_steps: int) -> bool:
    """Whether step `step` measures the critic's agreement with the oracle: the first, the last (when `max_steps` is
    positive) and every evaluation step."""
    last = max_steps > 0 and step == max_steps - 1
    return step == 0 or last or bool(eval_every and step % eval_every == 0)


def rollout_metrics(
    rewards: torch.Tensor,
    advantages: torch.Tensor,
    kept: torch.Tensor,
    zero_variance: torch.Tensor,
    dropped: int,
    trained_pairs: int,
) -> dict[str, torch.Tensor]:
    """One rollout's scalars: rewards [S] (non-finite = dropped), advantages [S], kept [S] bool (trains),
    zero_variance [P] bool. An empty reward set gives NaN mean and std; no kept sample, advantage 0."""
    valid = rewards[torch.isfinite(rewards)]
    return {
        "train/reward_mean": valid.mean() if len(valid) else torch.tensor(math.nan),
        "train/reward_std": valid.std(correction=0) if len(valid) else torch.tensor(math.nan),
        "train/kept_advantage_abs": advantages[kept].abs().mean() if kept.any() else torch.tensor(0.0),
        "train/zero_variance_groups": zero_variance.float().mean(),
        "train/dropped_samples": torch.tensor(float(dropped)),
        "train/trained_pairs": torch.tensor(float(trained_pairs)),
    }


def divergence_warning(first: dict[str, float], now: dict[str, float], step: int) -> str | None:
    """A warning text when the held-out reward rose since `first` while the oracle's relation accuracy fell by more
    than one standard error (binomial, over the stated relations of both evaluations); None otherwise."""
    keys = ("reward", "oracle_accuracy", "num_relations")
    if not all(key in first and key in now for key in keys) or min(first["num_relations"], now["num_relations"]) < 1:
        return None
    p0, p1 = first["oracle_accuracy"], now["oracle_accuracy"]
    error = math.sqrt(p0 * (1 - p0) / first["num_relations"] + p1 * (1 - p1) / now["num_relations"])
    if now["reward"] > first["reward"] and p0 - p1 > error:
        return (
            f"reward hacking? at step {step} the held-out reward rose {first['reward']:.4f} -> {now['reward']:.4f} "
            f"while the oracle's relation accuracy fell {p0:.3f} -> {p1:.3f} (more than its standard error {error:.3f})"
        )
    return None
