"""Layout pretraining of the tiny generator's T5 text encoder: the first stage of `make pretrain-generator`.

Flux gives text tokens no position in joint attention (txt_ids are 0), so who is left of whom reaches the transformer
only through the T5 features. The tiny T5 at random weights mixes word order into its features far too weakly: the
generator then sees "red left of yellow" and "yellow left of red" as nearly the same input and places the two
objects by chance whatever its training (docs/research/generator.md, 2026-12-05). Here the T5 learns to say where
each object goes: a linear head reads the mean T5 feature of each object's colour word (colours are unique within a
SpatialWorld scene) and predicts the object's centre (x, y) in [0, 1]^2 by squared error. Trained on fresh prompts
(`data_synthesis.fresh`; one new prompt per example, since on the dataset's few thousand prompts it memorises them),
checked on the dataset's val prompts: the share of stated left/right and above/below relations whose predicted
centres are ordered as stated (chance .5).

Prompts are tokenised as the generator's FluxPipeline does (padded to the policy's max_sequence_length, no attention
mask), so the features the head reads are the features the transformer gets. The head is dropped afterwards; the
pipeline is saved with the trained T5 (frozen from then on) and the other components as they were.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from data_synthesis import DatasetError, load_pairs
from data_synthesis.fresh import FreshScenes
from data_synthesis.scene import Scene
from shared.schedules import lr_factor

ORDERED_KINDS = {"left_of": "horizontal", "right_of": "horizontal", "above": "vertical", "below": "vertical"}


def layout_targets(
    tokenizer: Any, prompts: Sequence[str], scenes: Sequence[str], relations: Sequence[str], *, length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[list[tuple[str, int, int]]]]:
    """Token ids [N, length], colour-word occurrences [N, K, length] (K = most objects in a scene; 0 rows for absent
    objects), object centres [N, K, 2], object mask [N, K], and per prompt its stated (kind, a, b) left/right and
    above/below relations between objects a and b. A ValueError names a prompt longer than `length` tokens or a colour
    that is not one token of the tokenizer."""
    longest = max(len(tokens) for tokens in tokenizer(list(prompts)).input_ids)
    if longest > length:
        raise ValueError(f"a prompt is longer than the text encoder's {length} tokens ({longest})")
    ids = tokenizer(list(prompts), padding="max_length", max_length=length, return_tensors="pt").input_ids
    objects = [Scene.from_json(scene).objects for scene in scenes]
    most = max(len(items) for items in objects)
    occurrences = torch.zeros(len(prompts), most, length)
    centres, mask = torch.zeros(len(prompts), most, 2), torch.zeros(len(prompts), most, dtype=torch.bool)
    ordered: list[list[tuple[str, int, int]]] = []
    for row, (items, stated) in enumerate(zip(objects, relations, strict=True)):
        colours = [item.colour for item in items]
        for k, item in enumerate(items):
            token = tokenizer.convert_tokens_to_ids(item.colour)
            if token is None or token == tokenizer.unk_token_id:
                raise ValueError(f"the colour {item.colour!r} is not one token of the text tokenizer")
            occurrences[row, k] = (ids[row] == token).float()
            centres[row, k] = torch.tensor([item.x, item.y])
            mask[row, k] = bool(occurrences[row, k].any())
        ordered.append(
            [
                (r["kind"], colours.index(r["subjects"][0]), colours.index(r["subjects"][1]))
                for r in json.loads(stated)
                if r["kind"] in ORDERED_KINDS
            ]
        )
    return ids, occurrences, centres, mask, ordered


def ordering_shares(predicted: torch.Tensor, ordered: list[list[tuple[str, int, int]]]) -> dict[str, float]:
    """Share of stated relations whose predicted centres [N, K, 2] are ordered as stated, per family (NaN if none);
    y grows downwards, as in SpatialWorld scenes."""
    hits: dict[str, list[bool]] = {"horizontal": [], "vertical": []}
    for row, stated in enumerate(ordered):
        for kind, a, b in stated:
            (ax, ay), (bx, by) = predicted[row, a].tolist(), predicted[row, b].tolist()
            holds = {"left_of": ax < bx, "right_of": ax > bx, "above": ay < by, "below": ay > by}[kind]
            hits[ORDERED_KINDS[kind]].append(holds)
    return {family: sum(h) / len(h) if h else float("nan") for family, h in hits.items()}


class TextLayoutDataModule(LightningDataModule):
    """Fresh train prompts with their scenes (`FreshScenes` at `fresh_path`) and the dataset dir's val prompts."""

    def __init__(
        self,
        dataset_dir: str | os.PathLike,
        tokenizer: Any,
        *,
        length: int,
        fresh_scenes: int,
        fresh_path: str | os.PathLike,
        fresh_seed: int = 1000,
        resolution: int = 32,
        batch_size: int = 64,
        workers: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if fresh_scenes < 1 or batch_size < 1:
            raise ValueError(f"need positive fresh_scenes and batch_size, got {fresh_scenes}, {batch_size}")
        self.dataset_dir, self.tokenizer, self.length = dataset_dir, tokenizer, length
        self.fresh_scenes, self.fresh_path, self.fresh_seed = fresh_scenes, fresh_path, fresh_seed
        self.resolution, self.batch_size, self.workers, self.seed = resolution, batch_size, workers, seed
        self.train: Dataset | None = None
        self.val: tuple | None = None
        self.skipped = 0  # fresh prompts longer than `length` tokens

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        _, frame = load_pairs(self.dataset_dir)
        val = frame[frame["split"] == "val"]
        if val.empty:
            raise DatasetError(f"{self.dataset_dir} has no val pairs to check the text layout on")
        fresh = FreshScenes.load_or_draw(
            self.fresh_path,
            self.dataset_dir,
            self.fresh_scenes,
            seed=self.fresh_seed,
            resolution=self.resolution,
            workers=self.workers,
        )
        lengths = [len(tokens) for tokens in self.tokenizer(fresh.prompts).input_ids]
        fresh, total = fresh.subset([length <= self.length for length in lengths]), len(fresh)
        self.skipped = total - len(fresh)
        print(f"fresh scenes: {self.skipped} of {total} prompts over {self.length} tokens skipped")
        ids, occurrences, centres, mask, _ = layout_targets(
            self.tokenizer, fresh.prompts, fresh.scenes, fresh.relations, length=self.length
        )
        self.train = TensorDataset(ids, occurrences.bool(), centres, mask)
        self.val = layout_targets(
            self.tokenizer,
            list(val["prompt"]),
            list(val["perfect_scene"]),
            list(val["stated_relations"]),
            length=self.length,
        )

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True, drop_last=True, generator=generator)


class TextLayoutModule(LightningModule):
    """The T5 encoder (trained) and a linear head from a colour word's mean feature to its object's centre."""

    def __init__(
        self,
        encoder: nn.Module,
        *,
        lr: float = 1e-3,
        warmup_steps: int = 100,
        decay_steps: int = 0,
        total_steps: int | None = None,
        eval_every: int = 250,
    ) -> None:
        super().__init__()
        self.encoder = encoder.requires_grad_(True).train()
        self.head = nn.Linear(encoder.config.d_model, 2)
        self.lr, self.warmup_steps, self.decay_steps, self.total_steps = lr, warmup_steps, decay_steps, total_steps
        self.eval_every = eval_every
        self.val: tuple | None = None
        self.history: list[dict[str, float]] = []  # every evaluation of this process, for the command's log

    def predict_centres(self, ids: torch.Tensor, occurrences: torch.Tensor) -> torch.Tensor:
        """[B, T] ids, [B, K, T] occurrences (bool or float) -> [B, K, 2] predicted centres."""
        features = self.encoder(input_ids=ids).last_hidden_state  # [B, T, D], no mask: as FluxPipeline encodes
        occurrences = occurrences.to(features.dtype)
        pooled = (occurrences @ features) / occurrences.sum(-1, keepdim=True).clamp(min=1)
        return self.head(pooled)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        ids, occurrences, centres, mask = batch
        error = (self.predict_centres(ids, occurrences) - centres).square().sum(-1)
        loss = error[mask].mean()
        self.log("text_layout/loss", loss, prog_bar=True)
        return loss

    def on_train_start(self) -> None:  # after a resumed run's step count is restored
        self.val = getattr(self.trainer.datamodule, "val", None)
        if self.global_step == 0:
            self._evaluate_and_log()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.global_step % self.eval_every == 0 or self.global_step == self.total_steps:
            self._evaluate_and_log()

    def _evaluate_and_log(self) -> None:
        if self.val is None:
            return
        metrics = self.evaluate()
        if self.logger is not None:
            for name, value in metrics.items():
                self.logger.experiment.add_scalar(f"text_layout/val_{name}", value, self.global_step)
        self.history.append({"step": self.global_step, **metrics})

    @torch.no_grad()
    def evaluate(self, batch_size: int = 128) -> dict[str, float]:
        """Val ordering shares (horizontal, vertical) and squared error of the predicted centres."""
        ids, occurrences, centres, mask, ordered = self.val
        was_training = self.training
        self.eval()
        device = self.device
        predicted = torch.cat(
            [
                self.predict_centres(ids[i : i + batch_size].to(device), occurrences[i : i + batch_size].to(device))
                for i in range(0, len(ids), batch_size)
            ]
        ).cpu()
        self.train(was_training)
        shares = ordering_shares(predicted, ordered)
        error = (predicted - centres).square().sum(-1)[mask].mean().item()
        return {"horizontal": shares["horizontal"], "vertical": shares["vertical"], "squared_error": error}

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: lr_factor(
                step, warmup_steps=self.warmup_steps, decay_steps=self.decay_steps, total_steps=self.total_steps
            ),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
