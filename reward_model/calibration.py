"""Calibration of the reward's pairwise probability: P(winner beats loser) under each loss's model, and the ECE.

Notation as in `loss.py`: D = mean_w - mean_l, V = std_w^2 + std_l^2.

- `win_probability`: the probability the trained loss itself assigns to "w beats l": sigmoid(D) for Bradley-Terry;
  sigmoid(D / sqrt(1 + pi V / 8)) for the Gaussian Bradley-Terry (and the sampled-uncertainty loss, whose expected
  likelihood that probit approximation also describes); Phi(D / sqrt(V)) for Thurstone.
- `expected_calibration_error`: the confidence of a pairwise verdict is P(the higher-scored image is right) =
  max(p, 1 - p), the verdict is correct when the image the model prefers is the true winner; ECE = sum over equal-
  width confidence bins of (bin share) * |mean confidence - accuracy| (Guo et al. 2017), here over [0.5, 1].
  `calibration_bins` gives the per-bin sums, which add across batches and processes.
- `fit_temperature`: temperature scaling (Guo et al. 2017) of that probability: the argument of the sigmoid (or of
  Phi) is divided by T, the one number fitted by maximum likelihood on held-out (validation) pairs, never on test.
- `std_error_auroc`: does the std flag the pairs the means order wrongly? The AUROC of V as a score for "this pair
  is misordered" (0.5: the std says nothing; 1: every misordered pair has a larger V than every correct one).
"""

from __future__ import annotations

import math

import torch
from torchmetrics.functional.classification import binary_auroc

PROBABILITY_MODELS = ("bradley_terry", "gaussian_bt", "thurstone", "sampled_uncertainty")


def win_probability(
    mean_w: torch.Tensor,
    std_w: torch.Tensor,
    mean_l: torch.Tensor,
    std_l: torch.Tensor,
    loss: str = "gaussian_bt",
    temperature: float = 1.0,
) -> torch.Tensor:
    """P(w beats l) under the model of `loss` (a key of `reward_model.loss.LOSSES`), with the sigmoid's (Phi's)
    argument divided by `temperature`.  All inputs: [B] (or broadcastable) -> [B]"""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    margin = (mean_w - mean_l) / temperature  # [B]
    variance = std_w.square() + std_l.square()  # [B]
    if loss == "bradley_terry":
        return torch.sigmoid(margin)
    if loss in ("gaussian_bt", "sampled_uncertainty"):
        return torch.sigmoid(margin / torch.sqrt(1 + math.pi * variance / 8))
    if loss == "thurstone":
        return torch.special.ndtr(margin / torch.sqrt(variance + 1e-6))
    raise ValueError(f"loss must be one of {PROBABILITY_MODELS}, got {loss!r}")


def calibration_bins(probability_w: torch.Tensor, num_bins: int = 10) -> torch.Tensor:
    """Per equal-width confidence bin over [0.5, 1]: the sum of confidences, the number of correct verdicts and the
    number of pairs, stacked as [3, num_bins] (float64), from P(winner beats loser) per pair [B]."""
    if num_bins < 1:
        raise ValueError(f"num_bins must be positive, got {num_bins}")
    probability_w = probability_w.detach().double().flatten()
    confidence = torch.maximum(probability_w, 1 - probability_w)  # [B] in [0.5, 1]
    correct = (probability_w > 0.5).double()  # [B]: a tie (p = 1/2) is wrong, as in `correct_pairs`
    bins = ((confidence - 0.5) * 2 * num_bins).long().clamp(0, num_bins - 1)  # [B]: equal widths over [0.5, 1]
    sums = torch.zeros(3, num_bins, dtype=torch.float64, device=probability_w.device)
    sums[0].index_add_(0, bins, confidence)
    sums[1].index_add_(0, bins, correct)
    sums[2].index_add_(0, bins, torch.ones_like(confidence))
    return sums


def ece_from_bins(sums: torch.Tensor) -> float:
    """ECE = sum over bins of |confidence sum - correct count| / number of pairs; NaN without pairs.  sums: [3, bins]"""
    total = float(sums[2].sum())
    return float((sums[0] - sums[1]).abs().sum() / total) if total else float("nan")


def expected_calibration_error(probability_w: torch.Tensor, num_bins: int = 10) -> float:
    """ECE of the verdict "the higher-scored image is the winner", given P(winner beats loser) per pair.

    probability_w: [B], the model's probability that the true winner wins. The verdict is correct when p > 1/2
    (a tie, p = 1/2, counts as wrong, as in `correct_pairs`); its confidence is max(p, 1 - p) in [0.5, 1].
    """
    return ece_from_bins(calibration_bins(probability_w, num_bins))


def fit_temperature(
    mean_w: torch.Tensor,
    std_w: torch.Tensor,
    mean_l: torch.Tensor,
    std_l: torch.Tensor,
    loss: str = "gaussian_bt",
    *,
    bounds: tuple[float, float] = (1e-2, 1e2),
    num_points: int = 801,
) -> float:
    """The temperature T that maximises the likelihood of "w beats l" over these (held-out) pairs: the best of a
    log-spaced grid over `bounds` (the negative log-likelihood is one-dimensional and cheap; a grid cannot diverge).
    All inputs: [B]. When every pair is ordered right the likelihood keeps rising as T -> 0, so the lower bound
    is returned: fit on a split with errors."""
    if mean_w.numel() == 0:
        raise ValueError("fit_temperature needs at least one pair")
    low, high = bounds
    if not 0 < low < high:
        raise ValueError(f"bounds must satisfy 0 < low < high, got {bounds}")
    temperatures = torch.logspace(math.log10(low), math.log10(high), num_points, dtype=torch.float64)  # [K]
    mean_w, std_w, mean_l, std_l = (value.double()[None, :] for value in (mean_w, std_w, mean_l, std_l))  # [1, B]
    margin = (mean_w - mean_l) / temperatures[:, None]  # [K, B]
    probability = win_probability(margin, std_w, torch.zeros_like(margin), std_l, loss)  # [K, B]
    nll = -torch.log(probability.clamp_min(1e-300)).mean(dim=1)  # [K]
    return float(temperatures[int(nll.argmin())])


def std_error_auroc(
    mean_w: torch.Tensor, std_w: torch.Tensor, mean_l: torch.Tensor, std_l: torch.Tensor
) -> tuple[float, int]:
    """AUROC of V = std_w^2 + std_l^2 as a detector of misordered pairs (mean_w <= mean_l; a tie is wrong), and the
    number of misordered pairs. NaN when every pair, or none, is misordered.  All inputs: [B]"""
    misordered = mean_w <= mean_l  # [B]
    errors = int(misordered.sum())
    if errors in (0, misordered.numel()):
        return float("nan"), errors
    variance = (std_w.square() + std_l.square()).double()  # [B]
    return float(binary_auroc(variance, misordered.long())), errors
