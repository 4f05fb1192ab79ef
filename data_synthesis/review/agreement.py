"""Agreement between reviewers: Cohen's kappa over the pairs two reviewers both decided.

Kappa compares the verdicts (perfect / perturbed / neither / both / flag), not the sides clicked, since each
reviewer saw the two images in their own order:

    p_o = fraction of shared pairs with the same verdict
    p_e = sum over verdicts v of p_a(v) * p_b(v)      (p_a(v): fraction of reviewer a's shared pairs judged v)
    kappa = (p_o - p_e) / (1 - p_e)

Kappa is undefined (NaN) when p_e = 1, that is when both reviewers gave one and the same verdict throughout.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import combinations
from typing import NamedTuple

import torch
from torchmetrics.functional.classification import multiclass_cohen_kappa

from data_synthesis.review.store import Decision


class Agreement(NamedTuple):
    reviewer_a: str
    reviewer_b: str
    num_pairs: int  # pairs both decided
    observed: float  # p_o
    kappa: float  # NaN when undefined


def cohen_kappa(labels_a: Sequence[str], labels_b: Sequence[str]) -> float:
    """Cohen's kappa of two raters' labels for the same items, in the same order (NaN if p_e = 1), by torchmetrics."""
    if len(labels_a) != len(labels_b) or not labels_a:
        raise ValueError(f"kappa needs two equally long, non-empty label lists, got {len(labels_a)}, {len(labels_b)}")
    classes = {label: index for index, label in enumerate(sorted(set(labels_a) | set(labels_b)))}
    if len(classes) == 1:  # one verdict throughout: p_e = 1
        return math.nan
    a = torch.tensor([classes[label] for label in labels_a])
    b = torch.tensor([classes[label] for label in labels_b])
    return float(multiclass_cohen_kappa(a, b, num_classes=len(classes)).double())


def pairwise_agreement(decisions: Iterable[Decision]) -> list[Agreement]:
    """Kappa for every two reviewers who decided at least one pair in common, sorted by reviewer names."""
    verdicts: dict[str, dict[str, str]] = {}
    for decision in decisions:
        assert decision.undone_at is None, "only counting decisions enter agreement"
        verdicts.setdefault(decision.reviewer, {})[decision.pair_id] = decision.verdict
    result = []
    for a, b in combinations(sorted(verdicts), 2):
        shared = sorted(verdicts[a].keys() & verdicts[b].keys())
        if not shared:
            continue
        labels_a, labels_b = [verdicts[a][p] for p in shared], [verdicts[b][p] for p in shared]
        observed = sum(x == y for x, y in zip(labels_a, labels_b, strict=True)) / len(shared)
        result.append(Agreement(a, b, len(shared), observed, cohen_kappa(labels_a, labels_b)))
    return result


def format_agreement(agreements: list[Agreement]) -> str:
    """One line per two reviewers, for the terminal."""
    if not agreements:
        return "no two reviewers have decided a pair in common yet: no agreement to report"
    lines = []
    for item in agreements:
        kappa = "undefined (one verdict throughout)" if math.isnan(item.kappa) else f"{item.kappa:.3f}"
        lines.append(
            f"{item.reviewer_a} vs {item.reviewer_b}: Cohen's kappa {kappa} over {item.num_pairs} shared pairs "
            f"(observed agreement {item.observed:.3f})"
        )
    return "\n".join(lines)
