"""Reward losses against hand-computed values (formulas in reward_model/loss.py)."""

from __future__ import annotations

import math

import pytest
import torch

from reward_model.loss import bradley_terry_loss, gaussian_bt_loss, sampled_uncertainty_loss, thurstone_loss


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_bradley_terry_hand_values():
    # D = 0: log 2; D = 2: log(1 + e^-2) = 0.126928; D = -1: log(1 + e) = 1.313262
    assert bradley_terry_loss(t(0.0), t(0.0)).item() == pytest.approx(math.log(2))
    assert bradley_terry_loss(t(3.0), t(1.0)).item() == pytest.approx(0.126928, abs=1e-6)
    assert bradley_terry_loss(t(3.0, 0.0), t(1.0, 1.0)).item() == pytest.approx((0.126928 + 1.313262) / 2, abs=1e-6)


def test_gaussian_bt_hand_values_and_limit():
    # V = 8 / pi makes the denominator sqrt(2): D = 2 -> -log sigmoid(sqrt 2) = log(1 + e^-1.414214) = 0.217622
    std = math.sqrt(4 / math.pi)  # std_w^2 + std_l^2 = 8 / pi
    assert gaussian_bt_loss(t(2.0), t(std), t(0.0), t(std)).item() == pytest.approx(0.217622, abs=1e-6)
    # std -> 0 gives Bradley-Terry
    assert gaussian_bt_loss(t(2.0), t(0.0), t(0.0), t(0.0)).item() == pytest.approx(
        bradley_terry_loss(t(2.0), t(0.0)).item()
    )


def test_gaussian_bt_lets_std_grow_on_a_misordered_pair():
    std = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    gaussian_bt_loss(t(-2.0), std, t(0.0), std.detach()).backward()
    assert std.grad.item() < 0  # raising std lowers the loss of a misordered pair
    std = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    gaussian_bt_loss(t(2.0), std, t(0.0), std.detach()).backward()
    assert std.grad.item() > 0  # and raises it for a correctly ordered one


def test_thurstone_hand_values():
    # D = 1, V = 1 (std_w^2 = std_l^2 = 1/2): -log Phi(1) = -log 0.841345 = 0.172753; prior log(sqrt .5)^2 * 2
    std = math.sqrt(0.5)
    expected = 0.172753 + 0.1 * 2 * math.log(std) ** 2
    value = thurstone_loss(t(1.0), t(std), t(0.0), t(std), std_prior_weight=0.1, eps=0.0).item()
    assert value == pytest.approx(expected, abs=1e-6)


def test_sampled_uncertainty_matches_a_manual_monte_carlo_and_pushes_std_down():
    generator = torch.Generator().manual_seed(0)
    value = sampled_uncertainty_loss(t(1.0), t(0.5), t(0.0), t(0.3), num_samples=4, generator=generator)
    generator = torch.Generator().manual_seed(0)
    noise_w = torch.randn((4, 1), generator=generator, dtype=torch.float64)
    noise_l = torch.randn((4, 1), generator=generator, dtype=torch.float64)
    manual = torch.log1p(torch.exp(-((1.0 + 0.5 * noise_w) - (0.0 + 0.3 * noise_l)))).mean()
    assert value.item() == pytest.approx(manual.item())
    assert sampled_uncertainty_loss(t(1.0), t(0.0), t(0.0), t(0.0)).item() == pytest.approx(
        bradley_terry_loss(t(1.0), t(0.0)).item()
    )
    std = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    generator = torch.Generator().manual_seed(1)
    sampled_uncertainty_loss(t(-2.0), std, t(0.0), std.detach(), num_samples=4096, generator=generator).backward()
    assert std.grad.item() > 0  # even on a misordered pair: std only ever shrinks under this loss
