"""`RewardModule`: the paper's Bradley-Terry training of SpatialScore on (prompt, winner, loser) pairs.

Implements stage B of "Enhancing Spatial Understanding in Image Generation via Reward Modeling" (arXiv 2602.24233):
the network (a `SpatialScore`, built by `build_spatialscore`) scores the B winners and the B losers of a
`PairBatch` in ONE forward pass of 2B sequences, the scores are `chunk(2)`ed into winners and losers (as TRL's
RewardTrainer does), and a pairwise loss of `reward_model.loss.LOSSES` (default `gaussian_bt`) is minimised. The
network and the optimizer factory are passed in, not built here; only trainable parameters (LoRA, the reward
token's row, the head) reach the optimizer.

Metrics (torchmetrics, so they reduce correctly across processes), per stage `train`, `val`, `test`:
`{stage}/loss`, `{stage}/acc` (pairwise accuracy: mean_w > mean_l; an exact tie counts as wrong), `{stage}/margin`
(mean of mean_w - mean_l), `{stage}/std` (mean predicted std over all 2B images); for val and test also
`{stage}/acc_broken_1`, `_2`, `_3` and `_2_3` (accuracy by number of broken relations; a group with no pairs in the
epoch is not logged) and `{stage}/ece` (expected calibration error of P(the higher-scored image is right) under the
loss's own probability model, over every pair of the epoch as oriented; no temperature; see `calibration.py`).
`validation_step` returns the batch's scores, which `callbacks.PairGridLogger` draws as an image grid.

A non-finite loss skips the step: a zero loss is back-propagated (every rank runs its backward, as DDP needs) and
the gradients are dropped before the optimizer step, so no weight (nor optimizer moment) changes; the step still
counts in `global_step`. The decision is all-reduced (any rank non-finite: every rank skips), so distributed ranks
stay in step; `skipped_steps` counts them, logged as `train/skipped_steps` and kept in checkpoints.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import nn
from torchmetrics import MeanMetric, Metric

from reward_model.calibration import PROBABILITY_MODELS, calibration_bins, ece_from_bins, win_probability
from reward_model.data import PairBatch
from reward_model.loss import LOSSES

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
# name -> numbers of broken relations it pools; logged as `{stage}/acc_broken_{name}`
BROKEN_GROUPS = {"1": (1,), "2": (2,), "3": (3,), "2_3": (2, 3)}


def correct_pairs(mean_w: torch.Tensor, mean_l: torch.Tensor) -> torch.Tensor:
    """Whether each pair is ordered right: mean_w > mean_l strictly (a tie is wrong).  mean_*: [B] -> bool [B]"""
    return mean_w > mean_l


def counts_by_broken(correct: torch.Tensor, num_broken: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Correct pairs and all pairs in each of `BROKEN_GROUPS`, in its order.  correct, num_broken: [B] -> [G], [G]"""
    members = torch.stack(
        [torch.isin(num_broken, torch.tensor(numbers, device=num_broken.device)) for numbers in BROKEN_GROUPS.values()]
    )  # [G, B]
    return (members & correct).sum(dim=1), members.sum(dim=1)


def perturbation_pairs(kinds: Sequence[str], device: torch.device | str | None = None) -> torch.Tensor:
    """Which pairs were made by perturbing a scene (render, generated), the ones whose `num_broken` counts broken
    relations: a ranked pair's count is what the oracle confirmed in one sample and not the other.  -> bool [B]"""
    return torch.tensor([kind != "ranked" for kind in kinds], dtype=torch.bool, device=device)


class AccuracyByBroken(Metric):
    """Pairwise accuracy per number of broken relations (`BROKEN_GROUPS`); compute() -> {group: accuracy}, NaN for a
    group without pairs."""

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.zeros(len(BROKEN_GROUPS), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(len(BROKEN_GROUPS), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, mean_w: torch.Tensor, mean_l: torch.Tensor, num_broken: torch.Tensor) -> None:
        """mean_w, mean_l, num_broken: [B]"""
        correct, total = counts_by_broken(correct_pairs(mean_w, mean_l), num_broken)  # [G], [G]
        self.correct += correct
        self.total += total

    def compute(self) -> dict[str, torch.Tensor]:
        accuracy = self.correct.float() / self.total.float()  # [G]; 0 / 0 = NaN for an empty group
        return dict(zip(BROKEN_GROUPS, accuracy.unbind(), strict=True))


class PairwiseECE(Metric):
    """Expected calibration error of pairwise verdicts, accumulated as per-bin sums (summed across processes)."""

    full_state_update = False

    def __init__(self, num_bins: int = 10, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_bins = num_bins
        self.add_state("sums", default=torch.zeros(3, num_bins, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, probability_w: torch.Tensor) -> None:
        """probability_w: [B], P(the true winner beats the loser)."""
        self.sums += calibration_bins(probability_w, self.num_bins).to(self.sums.device)

    def compute(self) -> torch.Tensor:
        return torch.tensor(ece_from_bins(self.sums))


def _stage_metrics(by_broken: bool) -> nn.ModuleDict:
    metrics = {name: MeanMetric() for name in ("loss", "acc", "margin", "std")}
    if by_broken:
        metrics["acc_broken"] = AccuracyByBroken()
        metrics["ece"] = PairwiseECE()
    return nn.ModuleDict(metrics)


class RewardModule(LightningModule):
    """Bradley-Terry training of a reward network on `PairBatch`es.

    network: `SpatialScore` (or any module with `forward(**inputs) -> (mean [N], std [N])`).
    optimizer: a factory `params -> Optimizer` (e.g. `functools.partial(torch.optim.AdamW, lr=1e-4)`); it receives
        the trainable parameters only.
    loss: a key of `reward_model.loss.LOSSES`; loss_kwargs: extra keyword arguments for it (e.g. the Thurstone
        loss's `std_prior_weight`).
    """

    def __init__(
        self,
        network: nn.Module,
        optimizer: OptimizerFactory,
        loss: str = "gaussian_bt",
        loss_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if loss not in LOSSES or loss not in PROBABILITY_MODELS:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
        self.save_hyperparameters(ignore=["network", "optimizer"])
        self.network = network
        self.optimizer_factory = optimizer
        self.loss_name = loss
        self.loss_fn = LOSSES[loss]
        self.loss_kwargs = dict(loss_kwargs or {})
        parameters = inspect.signature(self.loss_fn).parameters
        unknown = sorted(set(self.loss_kwargs) - set(parameters))
        if unknown:
            raise ValueError(f"loss_kwargs {unknown} are not arguments of {loss}; it takes {list(parameters)}")
        self.loss_uses_std = "std_w" in parameters  # bradley_terry_loss takes the means alone
        self.train_metrics = _stage_metrics(by_broken=False)
        self.val_metrics = _stage_metrics(by_broken=True)
        self.test_metrics = _stage_metrics(by_broken=True)
        self.skipped_steps = 0
        self._skip_optimizer_step = False

    def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoded inputs of N sequences -> mean [N], std [N]."""
        return self.network(**inputs)

    def pair_scores(self, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One forward pass over the 2B sequences -> mean_w, std_w, mean_l, std_l, each [B]."""
        mean, std = self(batch.inputs)  # [2B], [2B]
        assert mean.shape == (2 * batch.num_pairs,), (mean.shape, batch.num_pairs)
        mean_w, mean_l = mean.chunk(2)  # winners come first
        std_w, std_l = std.chunk(2)
        return mean_w, std_w, mean_l, std_l

    def pair_loss(
        self, mean_w: torch.Tensor, std_w: torch.Tensor, mean_l: torch.Tensor, std_l: torch.Tensor
    ) -> torch.Tensor:
        """The configured loss of [B] scores -> scalar."""
        if self.loss_uses_std:
            return self.loss_fn(mean_w, std_w, mean_l, std_l, **self.loss_kwargs)
        return self.loss_fn(mean_w, mean_l, **self.loss_kwargs)

    def _update_metrics(
        self, stage: str, batch: PairBatch, loss: torch.Tensor, scores: tuple[torch.Tensor, ...]
    ) -> None:
        mean_w, std_w, mean_l, std_l = (score.detach() for score in scores)
        metrics = getattr(self, f"{stage}_metrics")
        values = {
            "loss": loss.detach(),
            "acc": correct_pairs(mean_w, mean_l).float(),  # [B]
            "margin": mean_w - mean_l,  # [B]
            "std": torch.cat([std_w, std_l]),  # [2B]
        }
        training = stage == "train"
        for name, value in values.items():
            metrics[name](value)  # forward: the batch value (logged per training step), accumulated for the epoch
            self.log(
                f"{stage}/{name}",
                metrics[name],
                on_step=training,  # training: per-step curves; val/test: one value per epoch; never both (no suffix)
                on_epoch=not training,
                prog_bar=name in ("loss", "acc"),
                batch_size=batch.num_pairs,
            )
        if "acc_broken" in metrics:
            perturbed = perturbation_pairs(batch.kinds, mean_w.device)  # [B], as the export's by-broken accuracy
            metrics["acc_broken"].update(mean_w[perturbed], mean_l[perturbed], batch.num_broken[perturbed])
            metrics["ece"].update(win_probability(mean_w, std_w, mean_l, std_l, self.loss_name))

    def training_step(self, batch: PairBatch, batch_idx: int) -> torch.Tensor | None:
        scores = self.pair_scores(batch)
        loss = self.pair_loss(*scores)
        # Any rank with a non-finite loss makes every rank skip, so that DDP/FSDP ranks never diverge.
        if self.trainer.strategy.reduce_boolean_decision(not bool(torch.isfinite(loss)), all=False):
            self.skipped_steps += 1
            self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, batch_size=batch.num_pairs)
            # Lightning refuses `return None` in distributed training, and DDP needs every rank's backward: return
            # a zero that keeps the graph, and drop the gradients before the optimizer step (AdamW leaves a
            # parameter without a gradient untouched, moments included).
            self._skip_optimizer_step = True
            return torch.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0) * 0.0
        self._update_metrics("train", batch, loss, scores)
        return loss

    def _evaluation_step(self, stage: str, batch: PairBatch) -> dict[str, torch.Tensor]:
        scores = self.pair_scores(batch)
        self._update_metrics(stage, batch, self.pair_loss(*scores), scores)
        return dict(zip(("mean_w", "std_w", "mean_l", "std_l"), (score.detach() for score in scores), strict=True))

    def validation_step(self, batch: PairBatch, batch_idx: int) -> dict[str, torch.Tensor]:
        """-> the batch's scores {mean_w, std_w, mean_l, std_l}, each [B] (for callbacks such as PairGridLogger)."""
        return self._evaluation_step("val", batch)

    def test_step(self, batch: PairBatch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._evaluation_step("test", batch)

    def _log_accuracy_by_broken(self, stage: str) -> None:
        metrics = getattr(self, f"{stage}_metrics")
        accuracies = metrics["acc_broken"].compute()
        values = {f"{stage}/acc_broken_{group}": accuracy for group, accuracy in accuracies.items()}
        values[f"{stage}/ece"] = metrics["ece"].compute()
        for name in ("acc_broken", "ece"):
            metrics[name].reset()
        self.log_dict({name: value for name, value in values.items() if not math.isnan(value.item())})

    def on_validation_epoch_end(self) -> None:
        self._log_accuracy_by_broken("val")

    def on_test_epoch_end(self) -> None:
        self._log_accuracy_by_broken("test")

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._skip_optimizer_step:
            optimizer.zero_grad(set_to_none=True)
            self._skip_optimizer_step = False

    def configure_optimizers(self) -> torch.optim.Optimizer:
        trainable = [parameter for parameter in self.network.parameters() if parameter.requires_grad]
        if not trainable:
            raise ValueError("the network has no trainable parameters: nothing for the optimizer to train")
        return self.optimizer_factory(trainable)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["skipped_steps"] = self.skipped_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.skipped_steps = checkpoint.get("skipped_steps", 0)
