"""How far a critic's scores agree with a reference (the SpatialWorld oracle) inside groups of samples of one prompt:
the question RL asks of a reward, since GRPO only uses the order of a prompt's samples.

Both functions take scores and reference values as [P, G] (P prompts, G samples each):
- `within_group_spearman`: the mean over prompts of Spearman's rank correlation between the two (average ranks for
  ties); a group whose reference is constant has no order to agree with and is skipped (counted); a group whose
  scores are constant while the reference varies counts as 0 (the critic tells the samples nothing apart).
- `top_bottom_agreement`: per prompt, the k best and k worst samples by score (GRPO's top-k / bottom-k filter), and
  the share of (top, bottom) pairs that the reference orders the same way, over the pairs the reference does not
  tie (ties in the scores are broken by sample order, as a stable sort does).

`binary_auroc` takes one group's scores [G] and a binary reference [G]: how well the scores separate the samples where
the reference holds from those where it does not (what a per-relation reading asks).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torchmetrics.functional import spearman_corrcoef
from torchmetrics.functional.classification import binary_auroc as auroc


class GroupAgreement(NamedTuple):
    value: float  # the mean (Spearman) or share (top vs bottom); NaN when nothing could be compared
    used: int  # groups (Spearman) or pairs (top vs bottom) that entered `value`
    skipped: int  # groups with a constant reference (Spearman) or reference-tied pairs (top vs bottom)


def _check(scores: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if scores.shape != reference.shape or scores.dim() != 2:
        raise ValueError(
            f"scores and reference must both be [prompts, samples], got {tuple(scores.shape)} and "
            f"{tuple(reference.shape)}"
        )
    if not (torch.isfinite(scores).all() and torch.isfinite(reference).all()):
        raise ValueError("scores and reference must be finite")
    return scores.double(), reference.double()


def within_group_spearman(scores: torch.Tensor, reference: torch.Tensor) -> GroupAgreement:
    """Mean within-group Spearman correlation of scores [P, G] with reference [P, G] (module docstring)."""
    scores, reference = _check(scores, reference)
    varies = reference.amax(1) > reference.amin(1)  # [P]
    used = int(varies.sum())
    if used == 0 or scores.shape[1] < 2:
        return GroupAgreement(math.nan, 0, len(scores))
    rows_scores, rows_reference = scores[varies], reference[varies]  # [U, G]
    flat = rows_scores.amax(1) == rows_scores.amin(1)  # [U]: Spearman is undefined there; counts as 0
    correlation = torch.zeros(used, dtype=torch.float64)
    if (~flat).any():
        # torchmetrics correlates column by column: [G, U]
        values = spearman_corrcoef(rows_scores[~flat].T.contiguous(), rows_reference[~flat].T.contiguous())
        correlation[~flat] = values.reshape(-1).double()
    return GroupAgreement(float(correlation.mean()), used, len(scores) - used)


def top_bottom_agreement(scores: torch.Tensor, reference: torch.Tensor, k: int) -> GroupAgreement:
    """Share of (top-k, bottom-k) pairs by score that the reference orders the same way (module docstring)."""
    scores, reference = _check(scores, reference)
    if not 1 <= k <= scores.shape[1] // 2:
        raise ValueError(f"k must be between 1 and half the group size ({scores.shape[1]}), got {k}")
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # [P, G]
    top = reference.gather(1, order[:, :k])  # [P, k]
    bottom = reference.gather(1, order[:, -k:])  # [P, k]
    difference = top[:, :, None] - bottom[:, None, :]  # [P, k, k]
    decided = difference != 0
    agreeing = int((difference > 0).sum())
    used = int(decided.sum())
    return GroupAgreement(agreeing / used if used else math.nan, used, int((~decided).sum()))


def binary_auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """torchmetrics' AUROC of `scores` [G] for `labels` [G] (bool): the share of (positive, negative) pairs ordered
    positive first, ties counting one half; NaN (not torchmetrics' 0 and a warning) when only one class is present."""
    scores, labels = scores.double().reshape(-1), labels.bool().reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels must have the same length, got {len(scores)} and {len(labels)}")
    if labels.all() or not labels.any():
        return math.nan
    return float(auroc(scores, labels.long()))
