"""GRPO maths for flow-matching policies: group advantages, top-k/bottom-k filtering, the clipped policy loss and the
KL penalty to the reference policy. Pure tensor functions; P = prompts, G = samples per prompt (the group).

The paper (SpatialScore, arXiv 2602.24233): G = 24; only the top-k and bottom-k rewards of each group form the
advantages, k = 6 per side best (7.81 vs 7.73 unfiltered, 7.71 with k = 4); KL weight beta = 0.01.

- `group_advantages`: A = (r - mean_p) / (std + eps), mean per prompt over the entries it is given (`keep`), std per
  prompt ("group") or over all given rewards about their global mean ("global"), population std (ddof 0), as in
  Flow-GRPO's per-prompt stat tracker (eps = 1e-4 there). "global" is Flow-GRPO's `global_std`: with several
  processes the kept rewards of every rank are all-gathered first (`all_ranks`), so every rank divides by the std of
  the whole step's rewards (the mean stays per prompt: a prompt's group lives on one rank here); in one process the
  gather is a no-op. A group whose rewards are all equal (or that has fewer than two) has zero variance: its
  advantages are exactly 0 and it is flagged, so the caller can count it.
- `uncertain_groups` (beyond the paper): with a Gaussian reward (the SpatialScore critic's mean and std), the groups
  whose rewards spread less than `min_spread_to_std` times the reward's own std (population std of the group's
  finite means < ratio x root-mean-square of their stds): there the critic cannot tell the samples apart, and its
  order is mostly noise (measured on the tiny critic: within-group Spearman with the oracle .05 in the quarter of
  groups with the lowest ratio, .59 in the highest). GRPO trains nothing on them. A reward without a std (the
  oracle, the GenEval rules) is never gated.
- `topk_bottomk`: the keep mask of the k highest and k lowest rewards of each group (k per side).
- `filtered_advantages`: both orders. "normalise_then_select": advantages over all G, then keep the top/bottom k
  (DanceGRPO: z-scored over all 24, best and worst 4 kept). "select_then_normalise": keep the top/bottom k, then
  mean and std over the 2k kept only (the kept advantages are then centred and unit-scale).
- `grpo_clip_loss`: PPO's clipped surrogate with ratio = exp(logp - logp_old) of one denoising step, advantages
  clipped to +-advantage_clip (Flow-GRPO: 5, clip range 1e-4 .. 1e-5 with mean-reduced log-probs).
- KL to the reference (the same network with the LoRA adapter off), per sample from the two steps' means, which
  share one std: `gaussian_kl` is the exact KL(N(m, s^2) || N(m_ref, s^2)) = |m - m_ref|^2 / (2 s^2) with the
  step std s = std_t * sqrt(-dt); `flow_grpo_kl` is Flow-GRPO's |m - m_ref|^2 / (2 std_t^2), without the |dt|:
  the exact KL times -dt, so the same beta is weaker by that factor (about 1/6 with 6 steps). Both reduced over
  dimensions like the log-prob (mean by default, see rl_policy.sde); `kl_to_reference` picks one by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

from rl_policy.sde import Reduction, SDEStep, reduce_per_sample

StdScope = Literal["group", "global"]
FilterOrder = Literal["normalise_then_select", "select_then_normalise"]
KLForm = Literal["gaussian", "flow_grpo"]


@dataclass(frozen=True)
class GroupSettings:
    """The groups and their advantages. group_size: G samples per prompt (paper: 24); keep_per_side: the top-k and
    bottom-k kept (paper: 6; None: every sample); filter_order and std_scope: see `filtered_advantages` and
    `group_advantages`."""

    group_size: int = 24
    keep_per_side: int | None = 6
    filter_order: FilterOrder = "normalise_then_select"
    std_scope: StdScope = "group"
    min_spread_to_std: float | None = None  # `uncertain_groups`; None: every group trains

    def __post_init__(self) -> None:
        if self.group_size < 1:
            raise ValueError(f"groups.group_size must be positive, got {self.group_size}")
        if self.min_spread_to_std is not None and not self.min_spread_to_std > 0:
            raise ValueError(f"groups.min_spread_to_std must be positive or null, got {self.min_spread_to_std}")
        if self.keep_per_side is not None and not 0 < 2 * self.keep_per_side <= self.group_size:
            raise ValueError(
                f"groups.keep_per_side ({self.keep_per_side}) per side must be positive and at most half the group "
                f"({self.group_size})"
            )


class GroupAdvantages(NamedTuple):
    advantages: torch.Tensor  # [P, G] float32, 0 where not kept and in zero-variance groups
    keep: torch.Tensor  # [P, G] bool, the kept entries the statistics were taken over (zero-variance groups too)
    zero_variance: torch.Tensor  # [P] bool, groups whose kept rewards are all equal (or fewer than two)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def all_ranks(values: torch.Tensor) -> torch.Tensor:
    """This rank's values [n] and every other rank's, concatenated in rank order: [n_0 + n_1 + ...] (ranks may hold
    different counts); the values themselves in one process. Every rank of the default process group must call it
    (a collective). With NCCL the exchange runs on this rank's CUDA device; the result is on the input's device."""
    if not _distributed() or torch.distributed.get_world_size() == 1:
        return values
    world_size = torch.distributed.get_world_size()
    on_cuda = torch.distributed.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if on_cuda else values.device
    local = values.reshape(-1).to(device)
    count = torch.tensor([len(local)], device=device)
    counts = [torch.zeros_like(count) for _ in range(world_size)]
    torch.distributed.all_gather(counts, count)
    counts = [int(c) for c in counts]
    padded = torch.zeros(max(counts), dtype=local.dtype, device=device)  # all_gather needs equal shapes
    padded[: len(local)] = local
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    torch.distributed.all_gather(gathered, padded)
    return torch.cat([part[:n] for part, n in zip(gathered, counts, strict=True)]).to(values.device)


def group_advantages(
    rewards: torch.Tensor, keep: torch.Tensor | None = None, std_scope: StdScope = "group", eps: float = 1e-4
) -> GroupAdvantages:
    """(r - per-prompt mean) / (std + eps) over the kept entries.  rewards: [P, G]; keep: [P, G] bool, default
    every finite reward (a non-finite reward is never kept, so it never reaches an update). std_scope "global"
    under torch.distributed: the std of every rank's kept rewards (a collective: every rank must call it)."""
    if std_scope not in ("group", "global"):
        raise ValueError(f"std_scope must be 'group' or 'global', got {std_scope!r}")
    rewards = rewards.float()
    keep = torch.isfinite(rewards) if keep is None else keep & torch.isfinite(rewards)
    kept_rewards = torch.where(keep, rewards, 0.0)  # [P, G], no NaN left to leak through sums
    count = keep.sum(dim=1, keepdim=True)  # [P, 1]
    mean = kept_rewards.sum(dim=1, keepdim=True) / count.clamp(min=1)  # [P, 1]
    if std_scope == "group":
        centred = torch.where(keep, rewards - mean, 0.0)
        std = (centred.square().sum(dim=1, keepdim=True) / count.clamp(min=1)).sqrt()  # [P, 1]
    elif _distributed() and torch.distributed.get_world_size() > 1:  # Flow-GRPO's global_std over all ranks
        every = all_ranks(rewards[keep]).double()  # [sum over ranks of the kept counts]
        std = every.std(correction=0).float() if len(every) else torch.zeros(())  # []
    else:
        global_mean = kept_rewards.sum() / count.sum().clamp(min=1)
        centred = torch.where(keep, rewards - global_mean, 0.0)
        std = (centred.square().sum() / count.sum().clamp(min=1)).sqrt()  # []
    highest = torch.where(keep, rewards, -torch.inf).amax(dim=1)
    lowest = torch.where(keep, rewards, torch.inf).amin(dim=1)
    zero_variance = (count.squeeze(1) < 2) | (highest == lowest)  # [P]
    # Equal rewards can leave r - mean at a rounding error, which eps would blow up: zero them explicitly.
    trains = keep & ~zero_variance[:, None]
    advantages = torch.where(trains, (rewards - mean) / (std + eps), 0.0)
    return GroupAdvantages(advantages, keep, zero_variance)


def uncertain_groups(rewards: torch.Tensor, reward_std: torch.Tensor | None, min_ratio: float | None) -> torch.Tensor:
    """[P] bool: the groups of rewards [P, G] (means; non-finite = dropped) whose population std over the finite
    entries is below `min_ratio` x the root-mean-square of `reward_std` [P, G] over the same entries (module
    docstring). All False without a std or a ratio; a group with fewer than two finite rewards is not flagged here
    (it has zero variance already)."""
    flagged = torch.zeros(rewards.shape[0], dtype=torch.bool)
    if reward_std is None or min_ratio is None:
        return flagged
    if reward_std.shape != rewards.shape:
        raise ValueError(f"reward std of shape {list(reward_std.shape)} for rewards of shape {list(rewards.shape)}")
    finite = torch.isfinite(rewards) & torch.isfinite(reward_std)  # [P, G]
    count = finite.sum(dim=1)  # [P]
    values = torch.where(finite, rewards.double(), 0.0)
    mean = values.sum(dim=1) / count.clamp(min=1)  # [P]
    spread = (torch.where(finite, values - mean[:, None], 0.0).square().sum(dim=1) / count.clamp(min=1)).sqrt()
    noise = (torch.where(finite, reward_std.double(), 0.0).square().sum(dim=1) / count.clamp(min=1)).sqrt()
    return (count >= 2) & (spread < min_ratio * noise)


def topk_bottomk(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """Keep mask [P, G] bool of the k highest and the k lowest finite rewards of each group (rewards: [P, G]).

    Both sides come from one ranking (highest first, ties by position, non-finite last), so they overlap only when
    a group has fewer than 2k finite rewards, and then it keeps them all, tied rewards included.
    """
    if k < 1:
        raise ValueError(f"k (kept per side) must be at least 1, got {k}")
    valid = torch.isfinite(rewards)
    highest_first = torch.where(valid, rewards, -torch.inf).argsort(dim=1, descending=True, stable=True)
    rank = highest_first.argsort(dim=1)  # [P, G] each reward's place in the ranking
    finite = valid.sum(dim=1, keepdim=True)  # [P, 1]
    return valid & ((rank < k) | (rank >= finite - k))


def filtered_advantages(
    rewards: torch.Tensor,
    k: int | None,
    order: FilterOrder = "normalise_then_select",
    std_scope: StdScope = "group",
    eps: float = 1e-4,
) -> GroupAdvantages:
    """Group advantages of rewards [P, G] with top-k/bottom-k filtering in the given order (module docstring);
    k = None keeps every finite reward (no filtering)."""
    if k is None:
        return group_advantages(rewards, std_scope=std_scope, eps=eps)
    keep = topk_bottomk(rewards, k)
    if order == "normalise_then_select":
        over_all = group_advantages(rewards, std_scope=std_scope, eps=eps)
        return GroupAdvantages(torch.where(keep, over_all.advantages, 0.0), keep, over_all.zero_variance)
    if order == "select_then_normalise":
        return group_advantages(rewards, keep=keep, std_scope=std_scope, eps=eps)
    raise ValueError(f"order must be 'normalise_then_select' or 'select_then_normalise', got {order!r}")


class PolicyLoss(NamedTuple):
    loss: torch.Tensor  # [] mean clipped surrogate loss (to minimise)
    clip_fraction: torch.Tensor  # [] share of entries with |ratio - 1| > clip_range
    ratio_deviation: torch.Tensor  # [] mean |ratio - 1| (exactly 0 on the first inner step)
    approx_kl: torch.Tensor  # [] 0.5 * mean (logp - logp_old)^2, policy drift since the rollout


def grpo_clip_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float = 1e-4,
    advantage_clip: float = 5.0,
) -> PolicyLoss:
    """PPO's clipped surrogate, per denoising step of each kept sample; all inputs the same shape, e.g. [N].

    ratio = exp(logp - logp_old); A = clamp(advantages, -advantage_clip, advantage_clip);
    loss = mean(max(-A * ratio, -A * clamp(ratio, 1 - clip_range, 1 + clip_range))).
    """
    advantages = advantages.clamp(-advantage_clip, advantage_clip)
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    deviation = (ratio - 1).abs().detach()
    return PolicyLoss(
        loss=torch.maximum(unclipped, clipped).mean(),
        clip_fraction=(deviation > clip_range).float().mean(),
        ratio_deviation=deviation.mean(),
        approx_kl=0.5 * log_ratio.detach().square().mean(),
    )


def gaussian_kl(
    mean: torch.Tensor, reference_mean: torch.Tensor, step_std: torch.Tensor, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Exact KL between the policy's and the reference's step Gaussians, [B]: |m - m_ref|^2 / (2 s^2) reduced over
    all but the batch dim.  mean, reference_mean: [B, ...]; step_std: std_t * sqrt(-dt), broadcastable ([B, 1, ...])."""
    return reduce_per_sample((mean - reference_mean).square() / (2 * step_std.square()), reduction)


def flow_grpo_kl(
    mean: torch.Tensor, reference_mean: torch.Tensor, std_t: torch.Tensor, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Flow-GRPO's KL term, [B]: |m - m_ref|^2 / (2 std_t^2) reduced over all but the batch dim (no |dt|).
    mean, reference_mean: [B, ...]; std_t: broadcastable ([B, 1, ...])."""
    return reduce_per_sample((mean - reference_mean).square() / (2 * std_t.square()), reduction)


def kl_to_reference(
    step: SDEStep, reference_mean: torch.Tensor, form: KLForm = "gaussian", reduction: Reduction = "mean"
) -> torch.Tensor:
    """The KL penalty [B] of a policy step against the reference's mean [B, ...] at the same (x, sigma): `form`
    "gaussian" (exact) or "flow_grpo"; use the reduction of the log-prob."""
    if form == "gaussian":
        return gaussian_kl(step.mean, reference_mean, step.step_std, reduction)
    if form == "flow_grpo":
        return flow_grpo_kl(step.mean, reference_mean, step.std_t, reduction)
    raise ValueError(f"KL form must be 'gaussian' or 'flow_grpo', got {form!r}")


def within_group_agreement(prompt_index: torch.Tensor, rewards: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Share of same-prompt sample pairs that `reference` (the oracle) tells apart and `rewards` orders the same way:
    how far a critic can be trusted on the policy's own samples. prompt_index, rewards, reference: [S]. NaN when
    the reference ties every pair."""
    same = prompt_index[:, None] == prompt_index[None, :]  # [S, S]
    reference_order = torch.sign(reference[:, None] - reference[None, :])
    reward_order = torch.sign(rewards[:, None] - rewards[None, :])
    decided = same & (reference_order != 0) & torch.isfinite(reward_order)
    if not decided.any():
        return torch.tensor(float("nan"))
    return (reference_order == reward_order)[decided].float().mean()
