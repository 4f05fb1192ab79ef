"""Pairwise reward losses on Gaussian rewards (mean, std) of a preferred (w) and a rejected (l) sample.

Notation, per pair: D = mean_w - mean_l, V = std_w^2 + std_l^2. Every loss returns the mean over the batch.

- `bradley_terry_loss`: -log sigmoid(D). The means alone (Bradley-Terry 1952; TRL's RewardTrainer).
- `gaussian_bt_loss`: -log sigmoid(D / sqrt(1 + pi V / 8)). The Bradley-Terry likelihood averaged over both
  Gaussians, with the probit approximation E[sigmoid(x)] ~ sigmoid(mu / sqrt(1 + pi s^2 / 8)) for x ~ N(mu, s^2)
  (MacKay 1992). It equals Bradley-Terry when std -> 0, and a misordered pair can lower its loss by raising V, so
  std grows where the model is unsure instead of collapsing. The default.
- `thurstone_loss`: -log Phi(D / sqrt(V)) (Thurstone case V). Unchanged when means and stds are scaled together,
  so it needs a prior on std: a log-normal prior centred at std = 1, weight `std_prior_weight`, adds
  weight * mean(log(std_w)^2 + log(std_l)^2).
- `sampled_uncertainty_loss`: HPSv3's Monte-Carlo form, -log sigmoid(r_w - r_l) with r = mean + std * eps,
  averaged over samples. Since -log sigmoid is convex, noise only raises the expected loss (Jensen), so this loss
  drives std to 0: kept for comparison.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def bradley_terry_loss(mean_w: torch.Tensor, mean_l: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(mean_w - mean_l), averaged.  mean_*: [B]"""
    return F.softplus(mean_l - mean_w).mean()


def gaussian_bt_loss(
    mean_w: torch.Tensor, std_w: torch.Tensor, mean_l: torch.Tensor, std_l: torch.Tensor
) -> torch.Tensor:
    """-log sigmoid(D / sqrt(1 + pi V / 8)), averaged.  All inputs: [B]"""
    variance = std_w.square() + std_l.square()  # [B]
    margin = (mean_w - mean_l) / torch.sqrt(1 + math.pi * variance / 8)  # [B]
    return F.softplus(-margin).mean()


def thurstone_loss(
    mean_w: torch.Tensor,
    std_w: torch.Tensor,
    mean_l: torch.Tensor,
    std_l: torch.Tensor,
    std_prior_weight: float = 0.01,
    eps: float = 1e-6,
) -> torch.Tensor:
    """-log Phi(D / sqrt(V)) + std_prior_weight * (log(std_w)^2 + log(std_l)^2), averaged.  All inputs: [B]"""
    variance = std_w.square() + std_l.square() + eps  # [B]
    nll = -torch.special.log_ndtr((mean_w - mean_l) / torch.sqrt(variance))  # [B]
    prior = torch.log(std_w + eps).square() + torch.log(std_l + eps).square()  # [B]
    return (nll + std_prior_weight * prior).mean()


def sampled_uncertainty_loss(
    mean_w: torch.Tensor,
    std_w: torch.Tensor,
    mean_l: torch.Tensor,
    std_l: torch.Tensor,
    num_samples: int = 16,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """-log sigmoid(r_w - r_l) with r = mean + std * eps, eps ~ N(0, 1), averaged over samples and pairs.
    All inputs: [B]. Reparameterised, so gradients reach both mean and std."""
    shape = (num_samples, *mean_w.shape)  # [S, B]
    noise_w = torch.randn(shape, generator=generator, dtype=mean_w.dtype, device=mean_w.device)
    noise_l = torch.randn(shape, generator=generator, dtype=mean_l.dtype, device=mean_l.device)
    reward_w = mean_w + std_w * noise_w  # [S, B]
    reward_l = mean_l + std_l * noise_l
    return F.softplus(reward_l - reward_w).mean()


LOSSES = {
    "bradley_terry": bradley_terry_loss,
    "gaussian_bt": gaussian_bt_loss,
    "thurstone": thurstone_loss,
    "sampled_uncertainty": sampled_uncertainty_loss,
}
