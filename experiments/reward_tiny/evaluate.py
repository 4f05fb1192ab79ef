"""Pairwise accuracy on the SpatialWorld test split for any scoring function (prompts, images) -> scores [B].

Forward orientation: under `prompt` the perfect image must score higher; reversed: under `perturbed_prompt` the
perturbed image must. Reported overall, by number of broken relations (1, 2-3) and reversed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch
from PIL import Image


class TestPair(NamedTuple):
    prompt: str
    perturbed_prompt: str
    perfect_image: Image.Image
    perturbed_image: Image.Image
    num_broken: int


def load_test_pairs(dataset_dir: Path, limit: int | None = None) -> list[TestPair]:
    """The first `limit` pairs (all: None) of the test split, images loaded as RGB."""
    frame = pd.read_parquet(dataset_dir / "pairs.parquet")
    frame = frame[frame["split"] == "test"].sort_values("index")
    if limit is not None:
        frame = frame.head(limit)
    return [
        TestPair(
            row.prompt,
            row.perturbed_prompt,
            Image.open(dataset_dir / row.perfect_image).convert("RGB"),
            Image.open(dataset_dir / row.perturbed_image).convert("RGB"),
            int(row.num_broken),
        )
        for row in frame.itertuples()
    ]


@torch.no_grad()
def pairwise_accuracy(
    score: Callable[[list[str], list[Image.Image]], torch.Tensor], pairs: list[TestPair], batch_size: int = 32
) -> dict[str, float]:
    """acc (forward), acc_1 / acc_23 (forward, by broken count), acc_rev (reversed), acc_both (mean of the two)."""
    forward, reverse = [], []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        prompts = [p.prompt for p in chunk] * 2 + [p.perturbed_prompt for p in chunk] * 2
        images = [p.perfect_image for p in chunk] + [p.perturbed_image for p in chunk]
        images = images + images
        scores = score(prompts, images).float().reshape(4, len(chunk))
        forward += (scores[0] > scores[1]).tolist()
        reverse += (scores[3] > scores[2]).tolist()
    broken = [p.num_broken for p in pairs]
    ones = [f for f, b in zip(forward, broken, strict=True) if b == 1]
    more = [f for f, b in zip(forward, broken, strict=True) if b > 1]
    mean = lambda values: round(sum(values) / max(len(values), 1), 4)  # noqa: E731
    return {
        "acc": mean(forward),
        "acc_1": mean(ones),
        "acc_23": mean(more),
        "acc_rev": mean(reverse),
        "acc_both": mean(forward + reverse),
    }
