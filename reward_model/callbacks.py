"""End-of-fit export: a held-out evaluation pass, then the reward checkpoint dir with its `metrics.json`.

`ExportRewardCheckpoint` (a Lightning Callback) times the fit, and when it ends scores every pair of the data
module's test split in both orientations (forward: the prompt, the perfect image must win; reversed: the perturbed
scene's prompt, the perturbed image must win) and writes `export_checkpoint(...)` into `<default_root_dir>/export`
(or `dirpath`) with the metrics of ../shared/DESIGN.md, "Default locations":

- `pairwise_accuracy`: forward pairs ordered right (mean_w > mean_l; a tie is wrong);
- `pairwise_accuracy_by_broken`: the same per number of broken relations, `{"1", "2", "3", "2-3"}` (null where the
  split has no such pair);
- `pairwise_accuracy_reversed`: reversed pairs ordered right;
- `ece`: expected calibration error (10 bins) of P(the higher-scored image is right) under the trained loss's own
  probability model (`reward_model.calibration`), over the pairs each in one orientation drawn from its id;
- `train_seconds` (fit start to fit end, before this pass), `num_test_pairs`.

No temperature is fitted here, so `ece` is the raw model's. The pass runs on rank 0 with the plain network, so it
suits single-process and DDP training; an FSDP-sharded network would need its full weights gathered first.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from reward_model.calibration import expected_calibration_error, win_probability
from reward_model.data import PairCollator, PairRecord, PairwiseDataModule, PairwiseDataset
from reward_model.export import export_checkpoint
from reward_model.model import SpatialScore
from reward_model.module import BROKEN_GROUPS, correct_pairs, counts_by_broken
from reward_model.tokenizer import SpatialScoreProcessor
from shared import stable_seed


@torch.no_grad()
def evaluate_pairs(
    network: SpatialScore,
    records: Sequence[PairRecord],
    processor: SpatialScoreProcessor,
    *,
    system_prompt: str | None = None,
    loss: str = "gaussian_bt",
    batch_size: int = 16,
    num_bins: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """Pairwise accuracy (forward, reversed, by number broken) and ECE of `network` on `records` (see the module
    docstring). The network is put in eval mode for the pass and back in its previous mode after it."""
    if not records:
        raise ValueError("no pairs to evaluate: the split is empty")
    loader = DataLoader(
        PairwiseDataset(records, "both"),  # index 2i forward, 2i + 1 reversed
        batch_size=2 * batch_size,
        collate_fn=PairCollator(processor, system_prompt),
    )
    device = next(network.parameters()).device
    was_training = network.training
    network.eval()
    scores, reversed_flags, num_broken, pair_ids = [], [], [], []
    try:
        for batch in loader:
            mean, std = network(**{name: tensor.to(device) for name, tensor in batch.inputs.items()})  # [2B], [2B]
            mean_w, mean_l = mean.float().cpu().chunk(2)  # winners come first
            std_w, std_l = std.float().cpu().chunk(2)
            scores.append(torch.stack([mean_w, std_w, mean_l, std_l]))  # [4, B]
            reversed_flags.append(batch.is_reversed)
            num_broken.append(batch.num_broken)
            pair_ids += batch.pair_ids
    finally:
        network.train(was_training)
    mean_w, std_w, mean_l, std_l = torch.cat(scores, dim=1)  # each [2P]
    is_reversed = torch.cat(reversed_flags)  # [2P]
    broken = torch.cat(num_broken)  # [2P]
    correct = correct_pairs(mean_w, mean_l)  # [2P]

    forward = ~is_reversed
    correct_by_group, total_by_group = counts_by_broken(correct[forward], broken[forward])  # [G], [G]
    by_broken = {
        group.replace("_", "-"): (right / total if total else None)
        for group, right, total in zip(BROKEN_GROUPS, correct_by_group.tolist(), total_by_group.tolist(), strict=True)
    }
    # One orientation per pair, drawn from its id, so calibration sees both readings without counting a pair twice.
    drawn = torch.tensor([stable_seed("ece", seed, pair_id) % 2 == 1 for pair_id in pair_ids])  # [2P]
    chosen = drawn == is_reversed
    probability = win_probability(mean_w[chosen], std_w[chosen], mean_l[chosen], std_l[chosen], loss)  # [P]
    return {
        "pairwise_accuracy": correct[forward].float().mean().item(),
        "pairwise_accuracy_by_broken": by_broken,
        "pairwise_accuracy_reversed": correct[is_reversed].float().mean().item(),
        "ece": expected_calibration_error(probability, num_bins),
        "ece_bins": num_bins,
        "probability_model": loss,
        "num_test_pairs": len(records),
    }


class ExportRewardCheckpoint(Callback):
    """At the end of `fit`: evaluate on a held-out split and export the reward checkpoint dir with metrics.json.

    dirpath: where to export; None: `<trainer.default_root_dir>/export`.
    split: the data module's split to evaluate ("test" for the numbers of ../shared/DESIGN.md).
    batch_size: pairs per forward pass of the evaluation (2 x batch_size sequences).
    max_pairs: evaluate only the first max_pairs pairs of the split; None: all.
    ece_bins: confidence bins of the ECE.
    seed: draws each pair's orientation for the ECE.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        split: str = "test",
        batch_size: int = 16,
        max_pairs: int | None = None,
        ece_bins: int = 10,
        seed: int = 0,
    ) -> None:
        if max_pairs is not None and max_pairs < 1:
            raise ValueError(f"max_pairs must be positive or None, got {max_pairs}")
        self.dirpath = dirpath
        self.split = split
        self.batch_size = batch_size
        self.max_pairs = max_pairs
        self.ece_bins = ece_bins
        self.seed = seed
        self.resolved_config: dict[str, Any] | None = None  # set by the CLI: kept in the export's config.json
        self.exported_to: Path | None = None
        self._fit_started: float | None = None

    def export_dir(self, trainer: Trainer) -> Path:
        return Path(self.dirpath) if self.dirpath is not None else Path(trainer.default_root_dir) / "export"

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_started = time.perf_counter()

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        train_seconds = time.perf_counter() - self._fit_started
        if trainer.is_global_zero:
            datamodule = trainer.datamodule
            if not isinstance(datamodule, PairwiseDataModule):
                raise TypeError(
                    f"ExportRewardCheckpoint needs a PairwiseDataModule to evaluate on, got {type(datamodule).__name__}"
                )
            datamodule.setup("test" if self.split == "test" else "validate" if self.split == "val" else "fit")
            records = datamodule.records[self.split][: self.max_pairs]
            metrics = evaluate_pairs(
                pl_module.network,
                records,
                datamodule.processor,
                system_prompt=datamodule.system_prompt,
                loss=getattr(pl_module, "loss_name", "gaussian_bt"),
                batch_size=self.batch_size,
                num_bins=self.ece_bins,
                seed=self.seed,
            )
            metrics |= {"train_seconds": train_seconds, "split": self.split, "global_step": trainer.global_step}
            self.exported_to = export_checkpoint(
                pl_module.network,
                self.export_dir(trainer),
                metrics=json_safe(metrics),
                resolved_config=self.resolved_config,
                system_prompt=datamodule.system_prompt,
            )
            rank_zero_info(
                f"exported {self.exported_to}: pairwise accuracy {metrics['pairwise_accuracy']:.3f} (reversed "
                f"{metrics['pairwise_accuracy_reversed']:.3f}, by number broken "
                f"{json_safe(metrics['pairwise_accuracy_by_broken'])}), ECE {metrics['ece']:.3f} on "
                f"{metrics['num_test_pairs']} {self.split} pairs"
            )
        trainer.strategy.barrier("export_reward_checkpoint")


def json_safe(value: Any) -> Any:
    """NaN and infinities (not JSON) as null."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
