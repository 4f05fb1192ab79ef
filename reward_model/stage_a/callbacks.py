"""`SaveGroundedBackbone`: writes stage A's backbone directory at every evaluation and at the end of training, with
the learning curve so far (`pretrain_metrics.json`: one record per evaluation, the training metrics averaged since
the previous one and the held-out metrics)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from reward_model.stage_a.model import save_grounded_backbone


class SaveGroundedBackbone(Callback):
    """directory: where the backbone goes; None: `<trainer.default_root_dir>/backbone`."""

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory
        self.history: list[dict[str, Any]] = []
        self._running: list[dict[str, float]] = []
        self._saved_step = -1

    def out(self, trainer: Trainer) -> Path:
        return Path(self.directory) if self.directory is not None else Path(trainer.default_root_dir) / "backbone"

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._running.append({k: float(v) for k, v in outputs.items()})

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        record: dict[str, Any] = {"step": trainer.global_step}
        if self._running:
            record |= {f"train/{k}": _mean([r[k] for r in self._running if k in r]) for k in self._running[-1]}
            self._running = []
        held_out = {k: _finite(float(v)) for k, v in trainer.callback_metrics.items() if not k.startswith("train/")}
        self.history.append(record | held_out)
        self._save(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._saved_step != trainer.global_step:
            self._save(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        """The learning curve so far, kept in Lightning checkpoints so that a resumed run continues it."""
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])

    def _save(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        network = pl_module.network
        metrics = {"history": self.history, "global_step": trainer.global_step}
        save_grounded_backbone(network, network.processor, self.out(trainer), metrics=metrics)
        self._saved_step = trainer.global_step


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 6)


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if not math.isnan(v)]
    return round(sum(finite) / len(finite), 6) if finite else None
