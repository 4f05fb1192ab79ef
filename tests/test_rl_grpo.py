"""rl_policy.grpo against hand-computed values (the maths in each docstring)."""

from __future__ import annotations

import math

import pytest
import torch

from rl_policy.grpo import (
    GroupSettings,
    filtered_advantages,
    flow_grpo_kl,
    gaussian_kl,
    group_advantages,
    grpo_clip_loss,
    kl_to_reference,
    topk_bottomk,
    uncertain_groups,
)
from rl_policy.sde import sde_step_with_logprob

EPS = 1e-4


def test_group_advantages_per_group_std_and_zero_variance_group():
    """Group 0: mean 2.5, population std sqrt(1.25); group 1: all equal -> advantages 0, flagged."""
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]])
    result = group_advantages(rewards, eps=EPS)
    expected = (torch.tensor([1.0, 2.0, 3.0, 4.0]) - 2.5) / (math.sqrt(1.25) + EPS)
    torch.testing.assert_close(result.advantages[0], expected)
    assert torch.equal(result.advantages[1], torch.zeros(4))
    assert result.zero_variance.tolist() == [False, True]
    assert result.keep.all()


def test_group_advantages_global_std():
    """Mean per prompt (2.5), std over all 8 rewards about their mean 3.75: sqrt(17.5 / 8)."""
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]])
    result = group_advantages(rewards, std_scope="global", eps=EPS)
    expected = (torch.tensor([1.0, 2.0, 3.0, 4.0]) - 2.5) / (math.sqrt(17.5 / 8) + EPS)
    torch.testing.assert_close(result.advantages[0], expected)
    assert torch.equal(result.advantages[1], torch.zeros(4))


def test_equal_rewards_with_rounding_give_exact_zero():
    """The mean of 24 copies of 0.1 is not exactly 0.1 in float32; the advantages must still be exactly 0."""
    result = group_advantages(torch.full((1, 24), 0.1))
    assert torch.equal(result.advantages, torch.zeros(1, 24)) and result.zero_variance.item()


def test_non_finite_rewards_are_dropped_never_nan():
    """NaN and inf are not kept; the rest of the group: (1, 3) -> mean 2, std 1 -> -1, +1."""
    rewards = torch.tensor([[1.0, float("nan"), 3.0, float("inf")]])
    result = group_advantages(rewards, eps=0.0)
    assert result.keep.tolist() == [[True, False, True, False]]
    torch.testing.assert_close(result.advantages, torch.tensor([[-1.0, 0.0, 1.0, 0.0]]))
    assert not result.zero_variance.item()
    assert group_advantages(torch.tensor([[1.0, float("nan")]])).zero_variance.item()  # one valid reward


def test_topk_bottomk_hand_mask():
    rewards = torch.tensor([[0.1, 0.9, 0.5, 0.3, 0.7, 0.2], [0.1, float("nan"), 0.5, 0.3, 0.7, 0.2]])
    keep = topk_bottomk(rewards, k=2)
    assert keep.tolist() == [[True, True, False, False, True, True], [True, False, True, False, True, True]]
    assert topk_bottomk(rewards[:1], k=3).all()  # 2k = G keeps everything
    with pytest.raises(ValueError, match="k"):
        topk_bottomk(rewards, k=0)


def test_tied_rewards_keep_2k_samples():
    """Binary rewards tie: ten 0s and fourteen 1s with k = 12 keep all 24 (the two sides once overlapped on the
    first 1s and dropped the last two); with k = 3 the top side takes the first three 1s, the bottom side the last
    three 0s (ties broken by position along one ranking)."""
    rewards = torch.tensor([[0.0] * 10 + [1.0] * 14])
    assert topk_bottomk(rewards, k=12).sum().item() == 24
    keep = topk_bottomk(rewards, k=3)[0]
    assert keep.nonzero().flatten().tolist() == [7, 8, 9, 10, 11, 12]
    with_nan = torch.tensor([[1.0, float("nan"), 1.0, 0.0, 0.0]])
    assert topk_bottomk(with_nan, k=2).tolist() == [[True, False, True, True, True]]


def test_paper_group_keeps_six_per_side():
    rewards = torch.randn(3, 24, generator=torch.Generator().manual_seed(0))
    keep = topk_bottomk(rewards, k=6)
    assert keep.sum(dim=1).tolist() == [12, 12, 12]
    kept_sorted = rewards.sort(dim=1).values
    for row in range(3):
        kept = rewards[row][keep[row]].sort().values
        assert torch.equal(kept, torch.cat([kept_sorted[row, :6], kept_sorted[row, -6:]]))


def test_filter_orders():
    """Rewards 0..5, k = 1 keeps 0 and 5. Normalise then select (DanceGRPO): mean 2.5 and std sqrt(35 / 12) over
    all six, so +-2.5 / 1.7078; select then normalise: mean 2.5, std 2.5 over the two kept, so +-1."""
    rewards = torch.arange(6.0).unsqueeze(0)
    first = filtered_advantages(rewards, k=1, order="normalise_then_select", eps=0.0)
    scale = 2.5 / math.sqrt(35 / 12)
    torch.testing.assert_close(first.advantages, torch.tensor([[-scale, 0, 0, 0, 0, scale]]))
    second = filtered_advantages(rewards, k=1, order="select_then_normalise", eps=0.0)
    torch.testing.assert_close(second.advantages, torch.tensor([[-1.0, 0, 0, 0, 0, 1.0]]))
    assert first.keep.tolist() == second.keep.tolist() == [[True, False, False, False, False, True]]
    unfiltered = filtered_advantages(rewards, k=None, eps=0.0)
    assert unfiltered.keep.all()
    with pytest.raises(ValueError, match="order"):
        filtered_advantages(rewards, k=1, order="select")


def test_grpo_clip_loss_hand_values():
    """clip 0.05. Ratios e^0.1 = 1.10517, e^-0.1 = 0.90484, 1; advantages 1, 1, -2.
    Entry 0: max(-1.10517, -1.05) = -1.05 (clipped, no gradient); entry 1: max(-0.90484, -0.95) = -0.90484;
    entry 2: 2. Loss = (-1.05 - 0.90484 + 2) / 3 = 0.015054; clip fraction 2/3;
    mean |ratio - 1| = (0.10517 + 0.09516) / 3 = 0.066778; approx KL = 0.5 * (0.01 + 0.01 + 0) / 3."""
    log_prob = torch.tensor([0.1, -0.1, 0.0], requires_grad=True)
    result = grpo_clip_loss(log_prob, torch.zeros(3), torch.tensor([1.0, 1.0, -2.0]), clip_range=0.05)
    torch.testing.assert_close(result.loss, torch.tensor((-1.05 - math.exp(-0.1) + 2) / 3))
    torch.testing.assert_close(result.clip_fraction, torch.tensor(2 / 3))
    torch.testing.assert_close(result.ratio_deviation, torch.tensor((math.exp(0.1) - math.exp(-0.1)) / 3))
    torch.testing.assert_close(result.approx_kl, torch.tensor(0.01 / 3))
    result.loss.backward()
    torch.testing.assert_close(log_prob.grad, torch.tensor([0.0, -math.exp(-0.1) / 3, 2 / 3]))


def test_grpo_clip_loss_clips_advantages_and_is_neutral_at_ratio_one():
    """Ratio 1 everywhere: loss = -mean(clamp(A, -5, 5)) = -(5 - 5 + 1) / 3; nothing clipped, |ratio - 1| = 0."""
    result = grpo_clip_loss(torch.zeros(3), torch.zeros(3), torch.tensor([10.0, -7.0, 1.0]))
    torch.testing.assert_close(result.loss, torch.tensor(-1 / 3))
    assert result.clip_fraction == 0 and result.ratio_deviation == 0 and result.approx_kl == 0


def test_kl_forms_hand_values():
    """Means differ by 1 in one of two elements; std_t = 0.5, dt = -0.25, step std 0.25.
    Exact: 1 / (2 * 0.0625) = 8 per element -> mean 4, sum 8; Flow-GRPO: 1 / (2 * 0.25) = 2 -> mean 1 (x -dt)."""
    mean, reference = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 2.0]])
    std_t = torch.tensor([[0.5]])
    step_std = std_t * math.sqrt(0.25)
    torch.testing.assert_close(gaussian_kl(mean, reference, step_std), torch.tensor([4.0]))
    torch.testing.assert_close(gaussian_kl(mean, reference, step_std, reduction="sum"), torch.tensor([8.0]))
    torch.testing.assert_close(flow_grpo_kl(mean, reference, std_t), torch.tensor([1.0]))


def test_gaussian_kl_is_torch_kl_of_the_step_distributions():
    generator = torch.Generator().manual_seed(4)
    sample, velocity, reference_velocity = torch.randn(3, 2, 8, 4, generator=generator)
    step = sde_step_with_logprob(velocity, sample, 0.7, 0.5, 0.9, generator=generator)
    reference = sde_step_with_logprob(reference_velocity, sample, 0.7, 0.5, 0.9, prev_sample=step.prev_sample)
    scale = step.step_std.expand_as(step.mean)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(step.mean, scale), torch.distributions.Normal(reference.mean, scale)
    ).sum(dim=(1, 2))
    torch.testing.assert_close(kl_to_reference(step, reference.mean, "gaussian", reduction="sum"), expected)
    torch.testing.assert_close(
        kl_to_reference(step, reference.mean, "flow_grpo"), kl_to_reference(step, reference.mean) * 0.2
    )
    with pytest.raises(ValueError, match="KL form"):
        kl_to_reference(step, reference.mean, "exact")


def test_uncertain_groups_hand_values():
    """Group 0: means spread 1.0 (population std of 0, 2), stds all 1 -> ratio 1. Group 1: spread 0.5 of stds
    0.1 -> 5. Group 2: one finite reward -> never flagged here. Group 3: the non-finite mean is left out of both."""
    rewards = torch.tensor([[0.0, 2.0], [1.0, 2.0], [1.0, math.nan], [3.0, math.nan]])
    std = torch.tensor([[1.0, 1.0], [0.1, 0.1], [5.0, 5.0], [9.0, 9.0]])
    assert uncertain_groups(rewards, std, 2.0).tolist() == [True, False, False, False]
    assert uncertain_groups(rewards, std, 0.5).tolist() == [False, False, False, False]
    assert uncertain_groups(rewards, std, 5.01).tolist() == [True, True, False, False]
    # the ratio compares with the root-mean-square std: stds 1 and 7 -> 5; spread 4.9 (means -4.9, 4.9) is below
    assert uncertain_groups(torch.tensor([[-4.9, 4.9]]), torch.tensor([[1.0, 7.0]]), 1.0).tolist() == [True]
    assert uncertain_groups(torch.tensor([[-5.1, 5.1]]), torch.tensor([[1.0, 7.0]]), 1.0).tolist() == [False]
    assert not uncertain_groups(rewards, None, 2.0).any() and not uncertain_groups(rewards, std, None).any()
    with pytest.raises(ValueError, match="reward std of shape"):
        uncertain_groups(rewards, std[:, :1], 2.0)
    with pytest.raises(ValueError, match="min_spread_to_std must be positive"):
        GroupSettings(group_size=4, keep_per_side=1, min_spread_to_std=0.0)
