"""SpatialScore reward model: Qwen2.5-VL + LoRA, a reward token and a Gaussian (mean, std) head trained with a
Bradley-Terry objective on (prompt, perfect image, perturbed image) triplets.

The network builder (`build_spatialscore`, from a tiny config or a local pretrained directory;
`build_tiny_spatialscore` for YAML), the image-only processor around the SpatialWorld tokenizer, the pairwise losses
(`loss.py`), `PairwiseDataModule`, `RewardModule`, the reward checkpoint export and `SpatialScorer`, stage-A
pretraining of the tiny backbone (`stage_a/`: `VerificationModule`, `VerificationDataModule`), and the command line
(`python -m reward_model fit|validate|test|score|export|pretrain|serve`)."""

from reward_model.calibration import expected_calibration_error, win_probability
from reward_model.callbacks import ExportRewardCheckpoint, evaluate_pairs
from reward_model.data import Degradation, Omission, PairBatch, PairCollator, PairwiseDataModule, PairwiseDataset
from reward_model.export import export_checkpoint
from reward_model.loss import LOSSES, bradley_terry_loss, gaussian_bt_loss, sampled_uncertainty_loss, thurstone_loss
from reward_model.model import SpatialScore, build_spatialscore, encode, reward_text, tiny_backbone_config
from reward_model.module import AccuracyByBroken, RewardModule, correct_pairs, counts_by_broken
from reward_model.recipes import build_tiny_spatialscore
from reward_model.remote import RemoteRewardError, RemoteSpatialScore
from reward_model.scorer import SpatialScorer, load_network, read_checkpoint_config
from reward_model.stage_a import VerificationDataModule, VerificationModule, build_verification_network
from reward_model.tokenizer import SpatialScoreProcessor, build_spatialworld_processor, load_processor

__all__ = [
    "ExportRewardCheckpoint",
    "RemoteRewardError",
    "RemoteSpatialScore",
    "SpatialScorer",
    "VerificationDataModule",
    "VerificationModule",
    "build_tiny_spatialscore",
    "build_verification_network",
    "evaluate_pairs",
    "expected_calibration_error",
    "export_checkpoint",
    "load_network",
    "read_checkpoint_config",
    "win_probability",
    "LOSSES",
    "AccuracyByBroken",
    "Degradation",
    "Omission",
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
