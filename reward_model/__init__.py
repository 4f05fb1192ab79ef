"""SpatialScore reward model: Qwen2.5-VL + LoRA, a reward token and a Gaussian (mean, std) head trained with a
Bradley-Terry objective on (prompt, perfect image, perturbed image) triplets.

Built so far: the network builder (`build_spatialscore`, from a tiny config or a local pretrained directory), the
offline SpatialWorld tokenizer/processor for the tiny model, the pairwise losses (`loss.py`), the pairwise data
module (`PairwiseDataModule`, `data.py`) and the training module (`RewardModule`, `module.py`). The scorer, export
and CLI come next (see the reward-model issue)."""

from reward_model.data import Degradation, PairBatch, PairCollator, PairwiseDataModule, PairwiseDataset
from reward_model.loss import LOSSES, bradley_terry_loss, gaussian_bt_loss, sampled_uncertainty_loss, thurstone_loss
from reward_model.model import SpatialScore, build_spatialscore, encode, reward_text, tiny_backbone_config
from reward_model.module import AccuracyByBroken, RewardModule, correct_pairs, counts_by_broken
from reward_model.tokenizer import SpatialScoreProcessor, build_spatialworld_processor, load_processor

__all__ = [
    "LOSSES",
    "AccuracyByBroken",
    "Degradation",
    "PairBatch",
    "PairCollator",
    "PairwiseDataModule",
    "PairwiseDataset",
    "RewardModule",
    "SpatialScore",
    "SpatialScoreProcessor",
    "bradley_terry_loss",
    "build_spatialscore",
    "build_spatialworld_processor",
    "correct_pairs",
    "counts_by_broken",
    "encode",
    "gaussian_bt_loss",
    "load_processor",
    "reward_text",
    "sampled_uncertainty_loss",
    "thurstone_loss",
    "tiny_backbone_config",
]
