"""`VerificationModule`: stage A of the tiny reward backbone as one LightningModule.

Every parameter of the `GroundingNetwork` is trained on `VerificationBatch`es with `loss = verdict BCE +
sum_k weight_k * loss_k` (`losses.total_loss`), AdamW (the config's optimizer factory), gradients clipped by the
trainer, and a warm-up + cosine learning-rate schedule over `schedule_steps`, which a phase may stop before
(`trainer.max_steps`): the shipped recipe's phases were cut where the held-out verdict peaked.

Metrics: `train/loss`, `train/<loss name>` and `train/acc_*` per step; per held-out set (`val`, and `easy` and
`generated` when the data module has them) the batch means of the same and `<set>/auroc_verdict`,
`<set>/auroc_match` (torchmetrics' exact AUROC over the whole set), and `generated/auroc_verdict_<kind>` per relation
kind; with test pairs, `pairs/{match,ver}_{acc,acc_1,acc_23,acc_rev,
acc_both}`, the zero-shot pairwise accuracies of the matching logit and the verifier score (`pairs.py`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAUROC

from data_synthesis.relations import KINDS
from reward_model.module import OptimizerFactory
from reward_model.stage_a.data import VerificationBatch
from reward_model.stage_a.losses import grounding_accuracies, grounding_losses, total_loss
from reward_model.stage_a.model import GroundingNetwork, GroundingOutput
from reward_model.stage_a.pairs import TestPairBatch, pair_accuracies, pair_scores
from shared.agreement import binary_auroc

HELD_OUT = ("val", "easy", "generated")  # log prefixes of the held-out sets (the data module's `held_out_names`)
PAIR_METRICS = [
    f"{score}_{name}" for score in ("match", "ver") for name in ("acc", "acc_1", "acc_23", "acc_rev", "acc_both")
]


def warmup_cosine(optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int, floor: float = 0.1):
    """Linear warm-up over `warmup_steps`, then a cosine from the base learning rate down to `floor` times it at
    `total_steps` (held there after)."""
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"need 0 <= warmup_steps < total_steps, got {warmup_steps} and {total_steps}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min((step - warmup_steps) / (total_steps - warmup_steps), 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class VerificationModule(LightningModule):
    """network: `build_verification_network(...)`; optimizer: a factory `params -> Optimizer`.
    warmup_steps / schedule_steps / lr_floor: `warmup_cosine`'s warm-up, length and final fraction.
    *_weight: each loss's weight in the total (the verdict's is 1); 0 leaves image_cell, slot, coord and stated out.
    """

    def __init__(
        self,
        network: GroundingNetwork,
        optimizer: OptimizerFactory,
        *,
        warmup_steps: int = 100,
        schedule_steps: int = 1500,
        lr_floor: float = 0.1,
        match_weight: float = 1.0,
        colour_weight: float = 1.0,
        binding_weight: float = 0.0,
        image_cell_weight: float = 0.0,
        slot_weight: float = 0.0,
        coord_weight: float = 0.0,
        stated_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0 <= warmup_steps < schedule_steps:
            raise ValueError(f"need 0 <= warmup_steps < schedule_steps, got {warmup_steps} and {schedule_steps}")
        self.save_hyperparameters(ignore=["network", "optimizer"])
        self.network = network
        self.optimizer_factory = optimizer
        self.weights = {
            "match": match_weight,
            "colour": colour_weight,
            "binding": binding_weight,
            "image_cell": image_cell_weight,
            "slot": slot_weight,
            "coord": coord_weight,
            "stated": stated_weight,
        }
        self.auroc = nn.ModuleDict(
            {f"{prefix}_{head}": BinaryAUROC() for prefix in HELD_OUT for head in ("verdict", "match")}
        )
        self.pair_metrics = nn.ModuleDict({name: MeanMetric() for name in PAIR_METRICS})
        self.generated_verdicts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # kinds, logits, truth

    def forward(self, batch: VerificationBatch) -> GroundingOutput:
        return self.network(batch.inputs, batch.sentence_ends, batch.mentions)

    def step(self, batch: VerificationBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor], GroundingOutput]:
        """The loss, the detached losses and accuracies, and the network's output of one batch."""
        output = self(batch)
        losses = grounding_losses(output, batch)
        loss = total_loss(losses, self.weights)
        metrics = {"loss": loss.detach()} | {k: v.detach() for k, v in losses.items()}
        return loss, metrics | grounding_accuracies(output, batch), output

    def training_step(self, batch: VerificationBatch, batch_idx: int) -> dict[str, torch.Tensor]:
        loss, metrics, _ = self.step(batch)
        for name, value in metrics.items():
            self.log(f"train/{name}", value, on_step=True, prog_bar=name == "loss", batch_size=batch.batch_size)
        return metrics | {"loss": loss}  # the metrics too: `SaveGroundedBackbone` averages them between evaluations

    def validation_step(
        self, batch: VerificationBatch | TestPairBatch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if isinstance(batch, TestPairBatch):
            self.pair_step(batch)
            return
        names = getattr(self.trainer.datamodule, "held_out_names", None) if self._trainer is not None else None
        prefix = (names or HELD_OUT)[dataloader_idx]
        _, metrics, output = self.step(batch)
        if prefix == "generated" and batch.relation_kinds is not None:
            self.generated_verdicts.append(
                (batch.relation_kinds.cpu(), output.sentence_logits.detach().float().cpu(), batch.sentence_truth.cpu())
            )
        for name, value in metrics.items():
            self.log(f"{prefix}/{name}", value, on_epoch=True, batch_size=batch.batch_size, add_dataloader_idx=False)
        for head, logits, truth in (
            ("verdict", output.sentence_logits, batch.sentence_truth),
            ("match", output.match_logits, batch.matches),
        ):
            metric = self.auroc[f"{prefix}_{head}"]
            metric.update(logits.float(), truth.long())
            self.log(f"{prefix}/auroc_{head}", metric, on_epoch=True, add_dataloader_idx=False)

    def on_validation_epoch_end(self) -> None:
        """`generated/auroc_verdict_<kind>`: the verdict's AUROC per relation kind on the generator's held-out
        samples (kinds with both verdicts among them)."""
        if not self.generated_verdicts:
            return
        kinds, logits, truth = (torch.cat(parts) for parts in zip(*self.generated_verdicts, strict=True))
        self.generated_verdicts.clear()
        for index, kind in enumerate(KINDS):
            chosen = kinds == index
            value = binary_auroc(logits[chosen], truth[chosen])
            if not math.isnan(value):
                self.log(f"generated/auroc_verdict_{kind}", value)

    def pair_step(self, batch: TestPairBatch) -> None:
        """Accumulate the zero-shot pairwise accuracies of a batch of test pairs."""
        output = self.network(batch.inputs, batch.sentence_ends)
        for score, values in pair_scores(output.sentence_logits, output.match_logits, batch).items():
            for name, correct in pair_accuracies(values, batch.num_broken).items():
                if len(correct):  # a batch may hold no pair of a broken-count group
                    metric = self.pair_metrics[f"{score}_{name}"]
                    metric.update(correct.float())
                    self.log(f"pairs/{score}_{name}", metric, on_epoch=True, add_dataloader_idx=False)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory([p for p in self.network.parameters() if p.requires_grad])
        scheduler = warmup_cosine(
            optimizer,
            warmup_steps=self.hparams.warmup_steps,
            total_steps=self.hparams.schedule_steps,
            floor=self.hparams.lr_floor,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
