"""Stage A's zero-shot rewards on SpatialWorld test pairs: how often the matching logit and the verifier score
(the sum of log-sigmoid verdicts over a prompt's relation sentences) order a pair right before stage B trains.

Forward orientation: under `prompt` the perfect image must score higher; reversed: under `perturbed_prompt` the
perturbed image must. The phases of the shipped recipe were stopped where these and the held-out verdict peaked.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from reward_model.model import encode
from reward_model.tokenizer import SpatialScoreProcessor

INTRO_STARTS = ("an image of", "the picture shows", "the scene is", "there is")  # SpatialWorld's scene introductions


class TestPair(NamedTuple):
    prompt: str
    perturbed_prompt: str
    perfect_image: Image.Image
    perturbed_image: Image.Image
    num_broken: int


class TestPairBatch(NamedTuple):
    """n test pairs as 4n sequences: (prompt, perfect), (prompt, perturbed), (perturbed prompt, perfect),
    (perturbed prompt, perturbed), each block n rows in pair order."""

    inputs: dict[str, torch.Tensor]  # encode(...) of the 4n sequences
    sentence_ends: torch.Tensor  # [S, 2] int64: (row, token index) of each relation sentence's final "."
    num_broken: torch.Tensor  # [n] int64

    @property
    def batch_size(self) -> int:
        return len(self.num_broken)


def load_test_pairs(dataset_dir: str | Path, limit: int | None = None) -> list[TestPair]:
    """The first `limit` pairs (all: None) of a dataset dir's test split in index order, images loaded as RGB."""
    dataset_dir = Path(dataset_dir)
    if not (dataset_dir / "pairs.parquet").is_file():
        raise FileNotFoundError(f"{dataset_dir} holds no SpatialWorld dataset: pairs.parquet is missing")
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


def relation_sentence_count(prompt: str) -> int:
    """Sentences of a SpatialWorld prompt that state relations (those not introducing the scene or an object)."""
    sentences = [s.strip().lower() for s in prompt.split(".") if s.strip()]
    return sum(not s.startswith(INTRO_STARTS) for s in sentences)


class PairCollator:
    """Encodes test pairs as `TestPairBatch`es; a relation sentence ends at one of the last '.' tokens of its row."""

    def __init__(self, processor: SpatialScoreProcessor) -> None:
        self.processor = processor
        self.period_id = processor.tokenizer.convert_tokens_to_ids(".")

    def __call__(self, pairs: list[TestPair]) -> TestPairBatch:
        prompts = [p.prompt for p in pairs] * 2 + [p.perturbed_prompt for p in pairs] * 2
        images = [p.perfect_image for p in pairs] + [p.perturbed_image for p in pairs]
        inputs = dict(encode(self.processor, prompts, images + images))
        ends = []
        for row, prompt in enumerate(prompts):
            periods = (inputs["input_ids"][row] == self.period_id).nonzero().flatten().tolist()
            ends += [(row, position) for position in periods[len(periods) - relation_sentence_count(prompt) :]]
        return TestPairBatch(
            inputs, torch.tensor(ends, dtype=torch.long), torch.tensor([p.num_broken for p in pairs], dtype=torch.long)
        )


def pair_scores(
    sentence_logits: torch.Tensor, match_logits: torch.Tensor, batch: TestPairBatch
) -> dict[str, torch.Tensor]:
    """Both zero-shot rewards of the 4n sequences: "match" (the matching logit) and "ver" (the verifier score, sum
    of log-sigmoid verdicts of the row's relation sentences).  -> name: [4, n] in `TestPairBatch`'s block order."""
    verifier = torch.zeros(len(match_logits)).index_add_(
        0, batch.sentence_ends[:, 0], F.logsigmoid(sentence_logits.float())
    )
    return {"match": match_logits.float().reshape(4, -1), "ver": verifier.reshape(4, -1)}


def pair_accuracies(scores: torch.Tensor, num_broken: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per pair (scores [4, n], num_broken [n]), whether it is ordered right: "acc" (forward), "acc_1" / "acc_23"
    (forward, pairs with 1 / more broken relations), "acc_rev" (reversed), "acc_both" (forward then reversed)."""
    forward, reverse = scores[0] > scores[1], scores[3] > scores[2]  # [n] each
    return {
        "acc": forward,
        "acc_1": forward[num_broken == 1],
        "acc_23": forward[num_broken > 1],
        "acc_rev": reverse,
        "acc_both": torch.cat([forward, reverse]),
    }
