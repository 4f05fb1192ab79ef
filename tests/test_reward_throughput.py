"""Faster scoring paths of the reward model give the scores of one-by-one scoring on the tiny SpatialScore: length
buckets under a token budget (`SpatialScorer(max_batch_tokens=...)`) and regional torch.compile of the backbone's
blocks; SDPA is the attention of both the vision tower and the language model."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

from reward_model.model import build_spatialscore, compile_blocks, tiny_backbone_config
from reward_model.scorer import SpatialScorer

pytestmark = pytest.mark.usefixtures("one_thread")
WORDS = ["a", "small", "red", "circle", "is", "left", "of", "a", "large", "blue", "square", "above", "the", "green",
         "triangle"]  # fmt: skip


def tiny_network():
    torch.manual_seed(0)
    network = build_spatialscore(tiny_backbone_config(), lora_rank=4, lora_alpha=8.0, lora_dropout=0.0)
    with torch.no_grad():  # a non-zero LoRA B, so that the adapter takes part
        for name, parameter in network.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return network.eval()


def rows(count: int = 10) -> tuple[list[str], list[Image.Image]]:
    """Prompts of 2 to 16 words and images of 56 or 112 px: lengths from about 20 to 90 tokens."""
    rng = np.random.default_rng(0)
    prompts = [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 17)))) for _ in range(count)]
    sides = [56 if index % 3 else 112 for index in range(count)]
    images = [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for side in sides]
    return prompts, images


def test_both_towers_attend_with_sdpa():
    config = tiny_network().backbone.get_base_model().config
    assert config.vision_config._attn_implementation == "sdpa"
    assert config.text_config._attn_implementation == "sdpa"


def test_token_budget_buckets_score_as_one_by_one():
    network = tiny_network()
    prompts, images = rows()
    one_by_one = SpatialScorer.from_network(network, batch_size=1).score(prompts=prompts, images=images)
    budget = 160
    scorer = SpatialScorer.from_network(network, batch_size=8, max_batch_tokens=budget)
    pictures = [image.convert("RGB") for image in images]
    costs = [scorer._cost(prompt, picture) for prompt, picture in zip(prompts, pictures, strict=True)]
    order = sorted(range(len(prompts)), key=costs.__getitem__)
    batches = scorer._batches(order, costs, 8)
    assert sorted(row for batch in batches for row in batch) == list(range(len(prompts)))
    assert all(len(batch) == 1 or len(batch) * max(costs[row] for row in batch) <= budget for batch in batches)
    sizes = [len(batch) for batch in batches]
    assert sizes[0] > sizes[-1] and len(set(sizes)) > 1  # short rows in larger batches than long ones
    for got, expected in zip(scorer.score(prompts=prompts, images=images), one_by_one, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="max_batch_tokens must be None or positive"):
        SpatialScorer.from_network(network, max_batch_tokens=0)


@pytest.mark.slow  # inductor compiles a decoder layer and a vision block (dynamic shapes)
def test_compiled_blocks_score_as_eager():
    network = tiny_network()
    prompts, images = rows(6)
    eager = SpatialScorer.from_network(network, batch_size=3).score(prompts=prompts, images=images)
    assert compile_blocks(network) == 4 + 2  # the tiny model's decoder layers and vision blocks
    start = time.perf_counter()
    compiled = SpatialScorer.from_network(network, batch_size=3).score(prompts=prompts, images=images)
    print(f"compiled scoring of 6 rows (compilation included): {time.perf_counter() - start:.1f} s")
    for got, expected in zip(compiled, eager, strict=True):  # fused float32 kernels: last-bit differences only
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
