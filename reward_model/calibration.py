"""Calibration of the reward's pairwise probability: P(winner beats loser) under each loss's model, and the ECE.

Notation as in `loss.py`: D = mean_w - mean_l, V = std_w^2 + std_l^2.

- `win_probability`: the probability the trained loss itself assigns to "w beats l": sigmoid(D) for Bradley-Terry;
  sigmoid(D / sqrt(1 + pi V / 8)) for the Gaussian Bradley-Terry (and the sampled-uncertainty loss, whose expected
  likelihood that probit approximation also describes); Phi(D / sqrt(V)) for Thurstone.
- `expected_calibration_error`: the confidence of a pairwise verdict is P(the higher-scored image is right) =
  max(p, 1 - p), the verdict is correct when the image the model prefers is the true winner; ECE = sum over equal-
  width confidence bins of (bin share) * |mean confidence - accuracy| (Guo et al. 2017), here over [0.5, 1].
"""

from __future__ import annotations

import math

import torch

PROBABILITY_MODELS = ("bradley_terry", "gaussian_bt", "thurstone", "sampled_uncertainty")


def win_probability(
    mean_w: torch.Tensor, std_w: torch.Tensor, mean_l: torch.Tensor, std_l: torch.Tensor, loss: str = "gaussian_bt"
) -> torch.Tensor:
    """P(w beats l) under the model of `loss` (a key of `reward_model.loss.LOSSES`).  All inputs: [B] -> [B]"""
    margin = mean_w - mean_l  # [B]
    variance = std_w.square() + std_l.square()  # [B]
    if loss == "bradley_terry":
        return torch.sigmoid(margin)
    if loss in ("gaussian_bt", "sampled_uncertainty"):
        return torch.sigmoid(margin / torch.sqrt(1 + math.pi * variance / 8))
    if loss == "thurstone":
        return torch.special.ndtr(margin / torch.sqrt(variance + 1e-6))
    raise ValueError(f"loss must be one of {PROBABILITY_MODELS}, got {loss!r}")


def expected_calibration_error(probability_w: torch.Tensor, num_bins: int = 10) -> float:
    """ECE of the verdict "the higher-scored image is the winner", given P(winner beats loser) per pair.

    probability_w: [B], the model's probability that the true winner wins. The verdict is correct when p > 1/2
    (a tie, p = 1/2, counts as wrong, as in `correct_pairs`); its confidence is max(p, 1 - p) in [0.5, 1].
    """
    if num_bins < 1:
        raise ValueError(f"num_bins must be positive, got {num_bins}")
    if probability_w.numel() == 0:
        return float("nan")
    probability_w = probability_w.double()
    confidence = torch.maximum(probability_w, 1 - probability_w)  # [B] in [0.5, 1]
    correct = (probability_w > 0.5).double()  # [B]
    bins = ((confidence - 0.5) * 2 * num_bins).long().clamp(0, num_bins - 1)  # [B]: equal widths over [0.5, 1]
    confidence_sum = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, bins, confidence)
    correct_sum = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, bins, correct)
    gap = (confidence_sum - correct_sum).abs()  # [bins]: count * |mean confidence - accuracy|
    return float(gap.sum() / confidence.numel())
