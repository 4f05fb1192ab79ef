"""Negative-aware fine-tuning (DiffusionNFT, arXiv 2509.16117): online RL of a flow-matching policy on the forward
process, an alternative objective to GRPO's for the same rollouts, groups and rewards. Pure tensor functions.

GRPO credits a sample through the log-prob of its recorded SDE transitions: one Gaussian draw per trained step, so
each group's gradient is a random-search estimate over the latent's dimensions. NFT instead re-noises each sample's
clean final latents x0 with fresh noise eps at a sigma of the sampler's schedule, x_sigma = (1 - sigma) x0 +
sigma eps, and regresses the velocity there onto the flow-matching target v* = eps - x0, contrasting two implicit
policies built from the trained velocity v and the rollout policy's v_old (same inputs, no gradient):

    v+ = beta v + (1 - beta) v_old          (the policy moved towards the good samples)
    v- = (1 + beta) v_old - beta v          (its mirror image about v_old, towards the bad ones)
    loss = [r |v+ - v*|_w^2 + (1 - r) |v- - v*|_w^2] / beta

with r in [0, 1] the sample's optimality probability, r = 1/2 + 1/2 clamp(A, -c, c) / c from its group advantage A
and the advantage clip c. The errors are taken in x0 space, sigma (v - v*) (= the x0 prediction x_sigma - sigma v
minus x0), and each is divided by its own detached mean absolute value over the sample's dimensions (the paper's
adaptive weighting, so every sigma and sample contributes on one scale). At v = v_old the gradient with respect to v
is (2r - 1) = clamp(A, -c, c) / c times the weighted flow-matching gradient: advantage-weighted regression onto the
group's own samples, with the good ones pulled towards and the bad ones pushed away; away from v_old the two terms
pull v back (a trust region of width ~ 1 / beta). `GRPOModule(objective="nft")` scales the loss by c, so the
on-policy gradient is the clipped advantage times the flow-matching gradient, whatever c is.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


def optimality_probability(advantages: torch.Tensor, advantage_clip: float) -> torch.Tensor:
    """r = 1/2 + 1/2 * clamp(A, -c, c) / c, in [0, 1]; A = 0 (a zero-variance group, or a sample not kept) gives
    1/2, which pulls only towards v_old."""
    if advantage_clip <= 0:
        raise ValueError(f"advantage_clip must be positive, got {advantage_clip}")
    return 0.5 + 0.5 * advantages.float().clamp(-advantage_clip, advantage_clip) / advantage_clip


class NFTLoss(NamedTuple):
    loss: torch.Tensor  # [B] per-sample loss (to minimise)
    drift: torch.Tensor  # [B] mean (v - v_old)^2 over dimensions, detached: how far the update moved the policy


def _weighted_square(error: torch.Tensor) -> torch.Tensor:
    """mean(error^2) / detached mean|error| over all but the batch dim, [B]."""
    dims = tuple(range(1, error.ndim))
    scale = error.detach().abs().mean(dim=dims).clamp(min=1e-5)
    return error.square().mean(dim=dims) / scale


def nft_loss(
    velocity: torch.Tensor,
    old_velocity: torch.Tensor,
    target: torch.Tensor,
    sigma: torch.Tensor,
    r: torch.Tensor,
    beta: float = 1.0,
) -> NFTLoss:
    """The NFT loss per sample (module docstring).  velocity (with gradient), old_velocity, target: [B, ...] at the
    same noised inputs; sigma: [B] the noise level of each input; r: [B] optimality probabilities; beta > 0."""
    if beta <= 0:
        raise ValueError(f"the NFT beta must be positive, got {beta}")
    old_velocity = old_velocity.detach()
    scale = sigma.reshape(-1, *([1] * (velocity.ndim - 1))).to(velocity.dtype)  # [B, 1, ...]
    positive = beta * velocity + (1 - beta) * old_velocity
    negative = (1 + beta) * old_velocity - beta * velocity
    loss = r * _weighted_square(scale * (positive - target)) + (1 - r) * _weighted_square(scale * (negative - target))
    drift = (velocity.detach() - old_velocity).square().mean(dim=tuple(range(1, velocity.ndim)))
    return NFTLoss(loss / beta, drift)
