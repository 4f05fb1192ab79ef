"""The SpatialWorld oracle reward on real rendered pairs: every stated relation is confirmed on the perfect image,
exactly the broken ones fail on the perturbed one, blank images confirm nothing, and every image input form works."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from data_synthesis import Relation, Scene, SpatialWorldOracle, oracle_metadata


@pytest.fixture(scope="module")
def rows(small_dataset):
    return [row for _, row in pd.read_parquet(small_dataset / "pairs.parquet").head(12).iterrows()]


def test_perfect_images_score_one_and_perturbed_lose_exactly_the_broken_share(small_dataset, rows):
    oracle = SpatialWorldOracle()
    metadata = [oracle_metadata(row) for row in rows]
    perfect = [Image.open(small_dataset / row.perfect_image) for row in rows]
    perturbed = [Image.open(small_dataset / row.perturbed_image) for row in rows]
    prompts = [row.prompt for row in rows]
    assert torch.equal(oracle(prompts=prompts, images=perfect, metadata=metadata), torch.ones(len(rows)))
    expected = torch.tensor([1 - row.num_broken / row.num_relations for row in rows])
    assert torch.allclose(oracle(prompts=prompts, images=perturbed, metadata=metadata), expected)
    for row, image, meta in zip(rows, perturbed, metadata, strict=True):
        verdict = oracle.judge(image, meta)
        broken = set(json.loads(row.broken_relations))
        assert [index for index, ok in enumerate(verdict.confirmed) if not ok] == sorted(broken)
        assert verdict.all_found and len(verdict.kinds) == row.num_relations


def test_a_blank_image_confirms_nothing_and_finds_nothing(rows):
    verdict = SpatialWorldOracle().judge(Image.new("RGB", (128, 128), "white"), oracle_metadata(rows[0]))
    assert not any(verdict.confirmed) and not verdict.all_found and verdict.accuracy == 0.0


def test_every_image_form_gives_the_same_reward(small_dataset, rows):
    row = rows[0]
    image = Image.open(small_dataset / row.perfect_image).convert("RGB")
    array = np.array(image)
    as_uint8 = torch.from_numpy(array).permute(2, 0, 1)
    forms = [image, array, as_uint8, as_uint8.float() / 255]
    meta = [oracle_metadata(row)]
    rewards = [SpatialWorldOracle()(prompts=[row.prompt], images=[form], metadata=meta).item() for form in forms]
    assert rewards == [1.0] * 4


def test_metadata_from_a_scene_and_bad_metadata(rows):
    scene = Scene.from_json(rows[0].perfect_scene)
    relations = [Relation.from_dict(item) for item in json.loads(rows[0].stated_relations)]
    assert oracle_metadata(scene=scene, relations=relations) == oracle_metadata(rows[0])
    with pytest.raises(ValueError, match="one metadata entry"):
        SpatialWorldOracle()(prompts=["a"], images=[Image.new("RGB", (8, 8))], metadata=None)
    with pytest.raises(ValueError, match="'relations' and 'colours'"):
        SpatialWorldOracle().judge(Image.new("RGB", (8, 8)), {"relations": [{"kind": "nope"}]})
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        SpatialWorldOracle().judge(torch.zeros(4, 8, 8), oracle_metadata(rows[0]))
