"""Calibration maths of the reward: temperature scaling fitted by maximum likelihood, and the AUROC with which the
std flags misordered pairs, against hand-computed values and a sampled ground truth."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from reward_model.calibration import fit_temperature, std_error_auroc, win_probability
from reward_model.callbacks import PairScores, pair_metrics


def test_std_error_auroc_on_hand_computed_values():
    """Pairs (mean_w, mean_l, V): (1, 0, 2) right, (0, 1, 10) wrong, (2, 1, 2) right, (0, 0, 5) a tie, so wrong.
    Misordered V = {10, 5}, correct V = {2, 2}: every misordered pair has the larger V, AUROC 1.
    With V of the tie 2 instead: pairs (10 vs 2, 10 vs 2, 2 vs 2, 2 vs 2) -> (1 + 1 + 0.5 + 0.5) / 4 = 0.75."""
    mean_w, mean_l = torch.tensor([1.0, 0.0, 2.0, 0.0]), torch.tensor([0.0, 1.0, 1.0, 0.0])
    std = torch.sqrt(torch.tensor([1.0, 5.0, 1.0, 2.5]))  # V = 2 std^2 with std_w = std_l
    assert std_error_auroc(mean_w, std, mean_l, std) == (pytest.approx(1.0), 2)
    std[3] = 1.0
    assert std_error_auroc(mean_w, std, mean_l, std) == (pytest.approx(0.75), 2)
    auroc, errors = std_error_auroc(mean_w[[0, 2]], std[[0, 2]], mean_l[[0, 2]], std[[0, 2]])
    assert math.isnan(auroc) and errors == 0


def test_win_probability_temperature_divides_the_argument():
    """Bradley-Terry at T = 2: sigmoid(1 / 2); Gaussian BT with V = 8 / pi at T = 2: sigmoid(2 / 2 / sqrt(2))."""
    one, zero = torch.tensor([1.0]), torch.tensor([0.0])
    assert win_probability(one, zero, zero, zero, "bradley_terry", temperature=2.0).item() == pytest.approx(
        1 / (1 + math.exp(-0.5))
    )
    std = torch.tensor([math.sqrt(4 / math.pi)])  # V = 2 * 4 / pi = 8 / pi, so sqrt(1 + pi V / 8) = sqrt(2)
    probability = win_probability(2 * one, std, zero, std, "gaussian_bt", temperature=2.0).item()
    assert probability == pytest.approx(1 / (1 + math.exp(-1 / math.sqrt(2))))
    with pytest.raises(ValueError, match="temperature"):
        win_probability(one, zero, zero, zero, temperature=0.0)


def test_fit_temperature_recovers_the_temperature_that_generated_the_outcomes():
    """Outcomes drawn from sigmoid(margin / 2.5): the maximum-likelihood temperature is 2.5 up to sampling noise."""
    generator = torch.Generator().manual_seed(0)
    margin = (torch.rand(40_000, generator=generator) - 0.5) * 12  # [N]
    wins = torch.rand(40_000, generator=generator) < torch.sigmoid(margin / 2.5)  # [N]
    mean_w, mean_l = torch.where(wins, margin, 0.0), torch.where(wins, 0.0, margin)  # a loss swaps the pair
    zero = torch.zeros_like(margin)
    assert fit_temperature(mean_w, zero, mean_l, zero, "bradley_terry") == pytest.approx(2.5, rel=0.05)


def test_fit_temperature_limits():
    """A coin flip (margins +1 and -1 both observed winning) is best explained by the hottest temperature, and a
    split with no error by the coldest one: the fit returns the bounds."""
    zero = torch.zeros(2)
    coin = fit_temperature(torch.tensor([1.0, 0.0]), zero, torch.tensor([0.0, 1.0]), zero, "bradley_terry")
    assert coin == pytest.approx(100.0)
    perfect = fit_temperature(torch.tensor([1.0, 2.0]), zero, torch.tensor([0.0, 0.0]), zero, "bradley_terry")
    assert perfect == pytest.approx(0.01)


def test_pair_metrics_counts_accuracy_by_orientation_and_fits_on_the_calibration_split():
    """Two pairs in both orientations: forward (right, right), reversed (wrong, right) -> 1.0 and 0.5; the broken
    groups come from the forward rows; the temperature is fitted on the calibration scores only."""
    scores = PairScores(
        mean_w=torch.tensor([2.0, 0.0, 1.0, 3.0]),
        std_w=torch.full((4,), 0.1),
        mean_l=torch.tensor([1.0, 1.0, 0.0, 1.0]),
        std_l=torch.full((4,), 0.1),
        is_reversed=torch.tensor([False, True, False, True]),
        num_broken=torch.tensor([1, 1, 2, 2]),
        pair_ids=["a", "a", "b", "b"],
        kinds=["render"] * 4,
    )
    metrics = pair_metrics(scores, loss="bradley_terry", calibration_scores=scores)
    assert metrics["pairwise_accuracy"] == 1.0 and metrics["pairwise_accuracy_reversed"] == 0.5
    assert metrics["pairwise_accuracy_by_broken"] == {"1": 1.0, "2": 1.0, "3": None, "2-3": 1.0}
    assert metrics["num_test_pairs"] == 2
    chosen = scores.one_orientation(0)
    assert chosen.sum() == 2 and chosen[0] != chosen[1] and chosen[2] != chosen[3]
    expected = fit_temperature(*scores.select(chosen), "bradley_terry")
    assert metrics["temperature"] == expected
    assert "generated_pairwise_accuracy" not in metrics and metrics["pairwise_accuracy_by_kind"] == {"render": 1.0}


def test_pair_metrics_reports_each_kind_and_ranked_pairs_have_one_reading():
    """A render pair (both readings), a generated pair (both) and a ranked pair (forward only): accuracy per kind
    from the forward rows, generated_pairwise_accuracy over the non-render ones, accuracy by broken relations over the
    perturbation pairs only (the ranked pair's count would make "1" 2/3), and the ranked pair's one reading always
    chosen for calibration."""
    scores = PairScores(
        mean_w=torch.tensor([2.0, 1.0, 0.0, 1.0, 3.0]),
        std_w=torch.full((5,), 0.1),
        mean_l=torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0]),
        std_l=torch.full((5,), 0.1),
        is_reversed=torch.tensor([False, True, False, True, False]),
        num_broken=torch.tensor([1, 1, 1, 1, 1]),
        pair_ids=["r", "r", "g", "g", "k"],
        kinds=["render", "render", "generated", "generated", "ranked"],
    )
    metrics = pair_metrics(scores, loss="bradley_terry")
    assert metrics["pairwise_accuracy_by_kind"] == {"generated": 0.0, "ranked": 1.0, "render": 1.0}
    assert metrics["num_test_pairs_by_kind"] == {"generated": 1, "ranked": 1, "render": 1}
    assert metrics["generated_pairwise_accuracy"] == 0.5 and metrics["num_test_pairs"] == 3
    assert metrics["pairwise_accuracy"] == pytest.approx(2 / 3) and metrics["pairwise_accuracy_reversed"] == 1.0
    assert metrics["pairwise_accuracy_by_broken"] == {"1": 0.5, "2": None, "3": None, "2-3": None}
    for seed in range(8):
        chosen = scores.one_orientation(seed)
        assert chosen[4] and chosen[0] != chosen[1] and chosen[2] != chosen[3] and int(chosen.sum()) == 3


@pytest.mark.usefixtures("one_thread")
def test_validation_logs_ece_and_a_grid_of_scored_pairs_to_tensorboard(small_dataset, tmp_path):
    """Two training steps and one validation pass with TensorBoard: `val/ece` is logged, and `val/pairs` holds one
    row of thumbnails per drawn pair (3 rows of 32 px: 96 px high; winner, loser and text columns)."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from reward_model.callbacks import PairGridLogger
    from reward_model.data import PairwiseDataModule
    from reward_model.model import build_spatialscore, tiny_backbone_config
    from reward_model.module import RewardModule

    torch.manual_seed(0)
    network = build_spatialscore(
        tiny_backbone_config(text_hidden_size=64, text_layers=2, text_intermediate_size=128),
        lora_rank=4,
        head_hidden_size=32,
    )
    module = RewardModule(network, functools.partial(torch.optim.AdamW, lr=1e-3))
    datamodule = PairwiseDataModule(small_dataset, batch_size=2, orientation="both")
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = Trainer(
        accelerator="cpu",
        logger=logger,
        callbacks=[PairGridLogger(num_pairs=3, thumbnail=32)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        max_steps=2,
        val_check_interval=2,
        limit_val_batches=2,
    )
    trainer.fit(module, datamodule)
    ece = trainer.callback_metrics["val/ece"]
    assert 0 <= float(ece) <= 0.5
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0}).Reload()
    assert "val/pairs" in events.Tags()["images"]
    image = events.Images("val/pairs")[-1]
    assert (image.height, image.width) == (3 * 32, 6 * 32) and image.step == 2
