"""shared.agreement against hand-computed values: within-group Spearman (average ranks for ties, constant reference
skipped and counted, constant scores count 0), the top-k vs bottom-k share (reference ties left out) and the binary
AUROC; reward_model.agreement's per-relation AUROC among the samples with every object found."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from reward_model.agreement import auroc_by_relation
from shared.agreement import binary_auroc, top_bottom_agreement, within_group_spearman


def test_spearman_per_group_mean_skips_constant_reference():
    scores = torch.tensor([[1.0, 2, 3, 4], [4, 3, 2, 1], [1, 2, 3, 4]])
    reference = torch.tensor([[1.0, 2, 3, 4], [1, 2, 3, 4], [5, 5, 5, 5]])
    result = within_group_spearman(scores, reference)
    assert result.value == pytest.approx(0.0) and (result.used, result.skipped) == (2, 1)
    assert within_group_spearman(scores[:1], reference[:1]).value == pytest.approx(1.0)


def test_spearman_uses_average_ranks_for_ties():
    # ranks 1, 2.5, 2.5, 4 and 1.5, 1.5, 3.5, 3.5; centred: (-1.5, 0, 0, 1.5), (-1, -1, 1, 1): 3 / (sqrt(4.5) * 2)
    result = within_group_spearman(torch.tensor([[1.0, 2, 2, 3]]), torch.tensor([[1.0, 1, 2, 2]]))
    assert result.value == pytest.approx(3 / (math.sqrt(4.5) * 2), abs=1e-6)
    # a flat critic on a varying reference: 0; averaged with a perfect group: 0.5
    flat = within_group_spearman(torch.tensor([[7.0, 7, 7], [1, 2, 3]]), torch.tensor([[0.0, 1, 1], [0, 1, 2]]))
    assert flat.value == pytest.approx(0.5, abs=1e-5) and flat.used == 2  # torchmetrics: float32 with an eps
    nothing = within_group_spearman(torch.ones(2, 3), torch.ones(2, 3))
    assert math.isnan(nothing.value) and (nothing.used, nothing.skipped) == (0, 2)


def test_top_bottom_share_leaves_reference_ties_out():
    # top-2 by score: samples 0, 1 (reference 1, 0); bottom-2: samples 2, 3 (reference 1, 0).
    # pairs (1,1) tie, (1,0) agree, (0,1) disagree, (0,0) tie -> 1 of 2 decided
    result = top_bottom_agreement(torch.tensor([[4.0, 3, 2, 1]]), torch.tensor([[1.0, 0, 1, 0]]), k=2)
    assert (result.value, result.used, result.skipped) == (0.5, 2, 2)
    # equal scores keep sample order (stable): top-1 is sample 0, bottom-1 sample 3
    stable = top_bottom_agreement(torch.ones(1, 4), torch.tensor([[3.0, 2, 1, 0]]), k=1)
    assert (stable.value, stable.used) == (1.0, 1)
    two_groups = top_bottom_agreement(
        torch.tensor([[1.0, 2, 3, 4], [1, 2, 3, 4]]), torch.tensor([[0.0, 0, 1, 1], [1, 1, 0, 0]]), k=2
    )
    assert (two_groups.value, two_groups.used) == (0.5, 8)


def test_bad_shapes_and_values_are_one_clear_error():
    with pytest.raises(ValueError, match="prompts, samples"):
        within_group_spearman(torch.ones(4), torch.ones(4))
    with pytest.raises(ValueError, match="finite"):
        within_group_spearman(torch.tensor([[1.0, math.nan]]), torch.ones(1, 2))
    with pytest.raises(ValueError, match="k must be"):
        top_bottom_agreement(torch.ones(1, 4), torch.ones(1, 4), k=3)


def test_binary_auroc_counts_ties_as_half():
    # positives 3, 2; negatives 1, 2: (3 > 1), (3 > 2), (2 > 1) and the tie (2, 2) -> 3.5 of 4
    assert binary_auroc(torch.tensor([3.0, 1, 2, 2]), torch.tensor([True, False, True, False])) == 0.875
    assert binary_auroc(torch.tensor([1.0, 2]), torch.tensor([False, True])) == 1.0
    assert math.isnan(binary_auroc(torch.tensor([1.0, 2]), torch.tensor([True, True])))
    with pytest.raises(ValueError, match="same length"):
        binary_auroc(torch.ones(3), torch.ones(2, dtype=torch.bool))


def test_auroc_by_relation_reads_only_samples_with_every_object_found():
    """Two groups of 4. Group 0 states (left_of, behind); sample 3 lost an object and is left out. left_of holds in
    samples 0, 1 (scores 4, 3) and not in 2 (score 1): 1.0; behind holds in sample 2 only (score 1, below 4 and 3): 0.0.
    Group 1 states (left_of, inside): left_of holds in 1 (score 2) and not in 0, 2, 3 (scores 1, 3, 2): one win, one
    tie, one loss -> 0.5; inside holds in every found sample: left out."""
    frame = pd.DataFrame(
        {
            "group": [0] * 4 + [1] * 4,
            "all_found": [True, True, True, False] + [True] * 4,
            "relation_kinds": [["left_of", "behind"]] * 4 + [["left_of", "inside"]] * 4,
            "relations_confirmed": [[True, False], [True, False], [False, True], [False, False]]
            + [[False, True], [True, True], [False, True], [False, True]],
        }
    )
    scores = torch.tensor([[4.0, 3, 1, 9], [1, 2, 3, 2]])
    auroc, used = auroc_by_relation(frame, scores)
    assert auroc == {"behind": 0.0, "left_of": 0.75} and used == {"behind": 1, "left_of": 2}
