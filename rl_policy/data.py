"""Prompts for online RL: `PromptDataModule` serves batches of prompts (with the metadata a reward may need, such as
what a SpatialWorld prompt states for the oracle); the GRPO module draws G samples of each.

Sources (`load_prompts`):
- a SpatialWorld dataset dir (`pairs.parquet`): the prompts of one split, each with `oracle_metadata` (stated
  relations and object colours) so the SpatialWorld oracle can score them;
- a text file: one prompt per line (blank lines and lines starting with '#' skipped);
- a CSV file with a `prompt` column (and an optional `metadata` column of JSON objects).

Order and resumption: the training stream is an endless sequence of batches; batch b of epoch e is a slice of a
permutation of the prompts drawn from (seed, e), so a batch is a pure function of (seed, batch index). The data
module's `state_dict` is the number of batches served; a resumed run (Lightning stores it in checkpoints)
continues with the next batch, bit for bit as an uninterrupted run would. With several processes each rank takes a
disjoint stride of every batch's prompts, and a prompt's G samples are all drawn on the rank that got it, so
top-k/bottom-k filtering never needs a cross-rank gather.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset

from data_synthesis import DatasetError, load_pairs, oracle_metadata


@dataclass(frozen=True)
class PromptRecord:
    prompt_id: str
    prompt: str
    metadata: dict[str, Any] | None = None


@dataclass
class PromptBatch:
    """B prompts (each to be sampled G times by the policy), with their ids and metadata (None where absent), and
    the global index of the batch in the training stream."""

    prompt_ids: list[str]
    prompts: list[str]
    metadata: list[dict[str, Any] | None] = field(default_factory=list)
    index: int = 0

    def __len__(self) -> int:
        return len(self.prompts)


def load_prompts(source: str | os.PathLike, split: str = "train") -> list[PromptRecord]:
    """Prompts from a SpatialWorld dataset dir (rows of `split`), a text file or a CSV file (see module docstring)."""
    path = Path(source)
    if path.is_dir():
        _, frame = load_pairs(path)
        rows = frame[frame["split"] == split]
        if rows.empty:
            raise DatasetError(f"{path} has no {split!r} pairs to take prompts from")
        return [
            PromptRecord(str(row["pair_id"]), str(row["prompt"]), oracle_metadata(row)) for _, row in rows.iterrows()
        ]
    if not path.is_file():
        raise FileNotFoundError(f"prompt source {path} does not exist (a dataset dir, a .txt or a .csv file)")
    if path.suffix.lower() == ".csv":
        return _prompts_from_csv(path)
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    records = [
        PromptRecord(f"{path.stem}-{number}", line)
        for number, line in enumerate(lines, start=1)
        if line and not line.startswith("#")
    ]
    if not records:
        raise ValueError(f"{path} holds no prompts (one per line; '#' starts a comment)")
    return records


def _prompts_from_csv(path: Path) -> list[PromptRecord]:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "prompt" not in frame.columns:
        raise ValueError(f"{path} has no 'prompt' column (columns: {list(frame.columns)})")
    records = []
    for number, row in enumerate(frame.itertuples(index=False), start=2):  # line 1 is the header
        metadata = None
        if "metadata" in frame.columns and row.metadata:
            try:
                metadata = json.loads(row.metadata)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} line {number}: the metadata column is not JSON ({error.msg})") from None
            if not isinstance(metadata, dict):
                raise ValueError(f"{path} line {number}: the metadata column must hold a JSON object")
        prompt_id = getattr(row, "prompt_id", "") or f"{path.stem}-{number}"
        if not row.prompt.strip():
            raise ValueError(f"{path} line {number}: empty prompt")
        records.append(PromptRecord(str(prompt_id), row.prompt, metadata))
    if not records:
        raise ValueError(f"{path} holds no prompts")
    return records


def write_prompts_csv(records: Sequence[PromptRecord], path: str | os.PathLike) -> None:
    """Write prompts in the CSV form `load_prompts` reads (prompt_id, prompt, metadata JSON)."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt_id", "prompt", "metadata"])
        for record in records:
            metadata = "" if record.metadata is None else json.dumps(record.metadata, sort_keys=True)
            writer.writerow([record.prompt_id, record.prompt, metadata])


def batch_indices(num_prompts: int, batch_size: int, batch: int, seed: int) -> list[int]:
    """Prompt indices of global batch `batch`: consecutive slices of a per-epoch permutation drawn from (seed, epoch);
    an epoch has floor(num_prompts / batch_size) batches (the remainder of each permutation is not used)."""
    per_epoch = num_prompts // batch_size
    if per_epoch < 1:
        raise ValueError(f"batch_size {batch_size} exceeds the {num_prompts} prompts available")
    epoch, within = divmod(batch, per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_prompts, generator=generator)
    return order[within * batch_size : (within + 1) * batch_size].tolist()


class PromptStream(IterableDataset):
    """Endless batches from batch `start` on; this rank's share: every `world_size`-th prompt of each batch."""

    def __init__(
        self, records: Sequence[PromptRecord], batch_size: int, seed: int, start: int, rank: int, world_size: int
    ) -> None:
        self.records, self.batch_size, self.seed, self.start = list(records), batch_size, seed, start
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[PromptBatch]:
        batch = self.start
        while True:
            chosen = batch_indices(len(self.records), self.batch_size, batch, self.seed)[self.rank :: self.world_size]
            records = [self.records[index] for index in chosen]
            yield PromptBatch(
                [r.prompt_id for r in records], [r.prompt for r in records], [r.metadata for r in records], batch
            )
            batch += 1


def _identity(batch: PromptBatch) -> PromptBatch:
    return batch


class PromptDataModule(LightningDataModule):
    """Batches of training prompts (endless, resumable) and a fixed list of held-out evaluation prompts.

    source: a dataset dir, .txt or .csv (see `load_prompts`); train_split / eval_split: splits of a dataset dir.
    eval_source: where held-out prompts come from (default: `source`, split `eval_split`).
    prompts_per_step: prompts per optimisation step over all processes (each rank samples G images of its share).
    num_eval_prompts: held-out prompts evaluated (the first ones of the eval split, in file order).
    """

    def __init__(
        self,
        source: str | os.PathLike,
        *,
        prompts_per_step: int = 2,
        train_split: str = "train",
        eval_source: str | os.PathLike | None = None,
        eval_split: str = "test",
        num_eval_prompts: int = 32,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if prompts_per_step < 1 or num_eval_prompts < 1:
            raise ValueError(
                f"prompts_per_step and num_eval_prompts must be positive, got {prompts_per_step}, {num_eval_prompts}"
            )
        self.source = Path(source)
        self.eval_source = Path(eval_source) if eval_source is not None else self.source
        self.prompts_per_step = prompts_per_step
        self.train_split, self.eval_split = train_split, eval_split
        self.num_eval_prompts = num_eval_prompts
        self.seed = seed
        self.train_records: list[PromptRecord] = []
        self.eval_records: list[PromptRecord] = []
        self.batches_served = 0  # global batches handed out; the resume position

    def setup(self, stage: str | None = None) -> None:
        if not self.train_records:
            self.train_records = load_prompts(self.source, self.train_split)
            world_size = self.trainer.world_size if self.trainer is not None else 1
            if self.prompts_per_step % world_size:
                raise ValueError(
                    f"prompts_per_step ({self.prompts_per_step}) must be a multiple of the {world_size} processes"
                )
            batch_indices(len(self.train_records), self.prompts_per_step, 0, self.seed)  # fails early if too few
        if not self.eval_records:
            split = self.eval_split if self.eval_source.is_dir() else self.train_split
            self.eval_records = load_prompts(self.eval_source, split)[: self.num_eval_prompts]

    def train_dataloader(self) -> DataLoader:
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        stream = PromptStream(
            self.train_records, self.prompts_per_step, self.seed, self.batches_served, rank, world_size
        )
        return DataLoader(stream, batch_size=None, collate_fn=_identity)

    def mark_served(self, batch: PromptBatch) -> None:
        """The module calls this when it has trained on `batch`, so that `state_dict` knows where to resume."""
        self.batches_served = batch.index + 1

    def state_dict(self) -> dict[str, Any]:
        return {"batches_served": self.batches_served, "seed": self.seed, "num_prompts": len(self.train_records)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.batches_served = int(state_dict["batches_served"])
