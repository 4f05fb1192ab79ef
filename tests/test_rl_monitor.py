"""rl_policy.monitor: the divergence warning against hand-computed standard errors, and the rollout agreement of a
critic with the real SpatialWorld oracle on SpatialWorld renders (a perfect image and a perturbed one per prompt)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from data_synthesis import SpatialWorldOracle, load_pairs, oracle_metadata
from rl_policy.monitor import agreement_step, divergence_warning, rollout_agreement, rollout_metrics


def test_divergence_warning_needs_reward_up_and_oracle_down_beyond_its_standard_error():
    first = {"reward": 0.5, "oracle_accuracy": 0.6, "num_relations": 100.0}
    # standard error sqrt(.24 / 100 + .24 / 100) = .0693 for .6 -> .4
    warning = divergence_warning(first, {"reward": 0.7, "oracle_accuracy": 0.4, "num_relations": 100.0}, 40)
    assert warning is not None and "step 40" in warning and "0.600 -> 0.400" in warning and "0.069" in warning
    # .6 -> .55 over 100 relations each: se = sqrt(.0024 + .2475 / 100) = .0698 > .05
    assert divergence_warning(first, {"reward": 0.7, "oracle_accuracy": 0.55, "num_relations": 100.0}, 40) is None
    assert divergence_warning(first, {"reward": 0.4, "oracle_accuracy": 0.1, "num_relations": 100.0}, 40) is None
    assert divergence_warning({}, {"reward": 0.7, "oracle_accuracy": 0.1, "num_relations": 100.0}, 40) is None


def test_rollout_agreement_reads_the_oracle_inside_each_group(small_dataset):
    _, frame = load_pairs(small_dataset)
    oracle = SpatialWorldOracle()
    rows = []
    for _, row in frame.iterrows():  # prompts whose perturbed image the oracle scores strictly lower
        meta = oracle_metadata(row)
        images = [small_dataset / row["perfect_image"], small_dataset / row["perturbed_image"]]
        pictures = [Image.open(path).convert("RGB") for path in images]
        values = oracle(prompts=[row["prompt"]] * 2, images=pictures, metadata=[meta] * 2)
        if values[0] > values[1]:
            rows.append((row["prompt"], meta, images))
        if len(rows) == 2:
            break
    assert len(rows) == 2

    prompts, metadata, images = [], [], []
    for prompt, meta, (perfect, perturbed) in rows:
        for path in (perfect, perturbed, perfect, perturbed):
            prompts.append(prompt)
            metadata.append(meta)
            with Image.open(path) as image:
                images.append(torch.from_numpy(np.asarray(image.convert("RGB"))).permute(2, 0, 1).float() / 255)
    images = torch.stack(images)  # [8, 3, H, W]: two groups of 4
    agree = rollout_agreement(oracle, prompts, metadata, images, torch.tensor([1.0, 0, 2, -1] * 2), 4)
    # each group: perfect > perturbed by the oracle (4 decided pairs), the reward agrees on all; Spearman of
    # (1, 0, 2, -1) with (a, b, a, b), a > b: ranks (3, 2, 4, 1) vs (3.5, 1.5, 3.5, 1.5) -> 4 / sqrt(5 * 4) = .894
    assert agree["train/critic_oracle_agreement"].item() == 1.0
    assert agree["train/critic_oracle_spearman"].item() == pytest.approx(4 / math.sqrt(20), abs=1e-5)
    against = rollout_agreement(oracle, prompts, metadata, images, torch.tensor([0.0, 1, 0, 1] * 2), 4)
    assert against["train/critic_oracle_agreement"].item() == 0.0
    assert against["train/critic_oracle_spearman"].item() == pytest.approx(-1.0, abs=1e-5)
    broken = rollout_agreement(oracle, prompts, metadata, images, torch.tensor([math.nan, 1, 0, 1] * 2), 4)
    assert math.isnan(broken["train/critic_oracle_spearman"].item())


def test_rollout_metrics_by_hand():
    rewards = torch.tensor([1.0, 3.0, math.nan, 2.0])  # sample 2 dropped
    advantages = torch.tensor([-1.5, 0.5, 0.0, 2.0])
    kept = torch.tensor([True, False, False, True])
    metrics = rollout_metrics(rewards, advantages, kept, torch.tensor([False, True]), dropped=1, trained_pairs=6)
    assert metrics["train/reward_mean"].item() == pytest.approx(2.0)
    assert metrics["train/reward_std"].item() == pytest.approx(math.sqrt(2 / 3))  # population std of 1, 3, 2
    assert metrics["train/kept_advantage_abs"].item() == pytest.approx(1.75)  # |-1.5| and |2.0|
    assert metrics["train/zero_variance_groups"].item() == 0.5
    assert metrics["train/dropped_samples"].item() == 1 and metrics["train/trained_pairs"].item() == 6
    empty = rollout_metrics(
        torch.full((2,), math.nan),
        torch.zeros(2),
        torch.zeros(2, dtype=torch.bool),
        torch.tensor([True]),
        dropped=2,
        trained_pairs=0,
    )
    assert math.isnan(empty["train/reward_mean"]) and empty["train/kept_advantage_abs"].item() == 0.0


def test_agreement_is_measured_at_the_first_last_and_evaluation_steps():
    measured = [step for step in range(12) if agreement_step(step, eval_every=5, max_steps=12)]
    assert measured == [0, 5, 10, 11]
    assert [step for step in range(4) if agreement_step(step, eval_every=0, max_steps=-1)] == [0]
