"""Fresh SpatialWorld training scenes (data_synthesis.fresh): the dataset's world, train prompts only, exact
round trips, reuse on resume."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from data_synthesis import DatasetError, load_pairs
from data_synthesis.build import split_of
from data_synthesis.fresh import FreshScenes, dataset_config
from data_synthesis.scene import Scene


def test_fresh_scenes_follow_the_dataset_world_and_only_train_prompts(small_dataset):
    _, frame = load_pairs(small_dataset)
    scenes = FreshScenes.draw(small_dataset, 40, seed=99, resolution=32, progress=False)
    assert len(scenes) == 40 and scenes.images.shape == (40, 32, 32, 3) and scenes.images.dtype == np.uint8
    held_out = set(frame.loc[frame["split"] != "train", "prompt"])
    fractions = tuple(json.loads((small_dataset / "build_args.json").read_text())["split_fractions"])
    assert all(split_of(prompt, fractions) == "train" for prompt in scenes.prompts)
    assert not held_out & set(scenes.prompts)
    counts = [len(Scene.from_json(scene).objects) for scene in scenes.scenes]
    assert min(counts) >= 3 and max(counts) <= 6  # the fixture's BuildConfig defaults: 3-6 objects
    for scene, relations, prompt in zip(scenes.scenes, scenes.relations, scenes.prompts, strict=True):
        colours = {o.colour for o in Scene.from_json(scene).objects}
        assert all(set(r["subjects"]) <= colours for r in json.loads(relations))
        assert all(colour in prompt for colour in colours)
    assert scenes.images.std() > 10  # drawn, not blank


def test_fresh_scenes_are_the_same_with_workers_and_differ_by_seed(small_dataset):
    one = FreshScenes.draw(small_dataset, 24, seed=99, resolution=32, progress=False)
    two = FreshScenes.draw(small_dataset, 24, seed=99, resolution=32, workers=2, progress=False)
    other = FreshScenes.draw(small_dataset, 24, seed=98, resolution=32, progress=False)
    assert one.prompts == two.prompts and np.array_equal(one.images, two.images)
    assert one.prompts != other.prompts


def test_fresh_scenes_round_trip_and_are_reused_only_for_the_same_arguments(small_dataset, tmp_path):
    path = tmp_path / "fresh.safetensors"
    drawn = FreshScenes.load_or_draw(path, small_dataset, 12, seed=99, resolution=32, progress=False)
    loaded = FreshScenes.load(path)
    assert loaded.prompts == drawn.prompts and loaded.scenes == drawn.scenes and loaded.relations == drawn.relations
    assert np.array_equal(loaded.images, drawn.images)
    stamp = os.stat(path).st_mtime_ns
    again = FreshScenes.load_or_draw(path, small_dataset, 12, seed=99, resolution=32, progress=False)
    assert os.stat(path).st_mtime_ns == stamp and again.prompts == drawn.prompts
    more = FreshScenes.load_or_draw(path, small_dataset, 13, seed=99, resolution=32, progress=False)
    assert len(more) == 13 and more.prompts[:12] == drawn.prompts and len(FreshScenes.load(path)) == 13


def test_bad_fresh_scene_requests_say_what_is_wrong(small_dataset, tmp_path):
    seed = json.loads((small_dataset / "build_args.json").read_text())["seed"]
    with pytest.raises(DatasetError, match="seed other than the dataset's"):
        dataset_config(small_dataset, seed)
    with pytest.raises(DatasetError, match="build_args.json"):
        dataset_config(tmp_path, 5)
    with pytest.raises(ValueError, match="positive"):
        FreshScenes.draw(small_dataset, 0, seed=99, resolution=32)
    path = tmp_path / "fresh.safetensors"
    FreshScenes.load_or_draw(path, small_dataset, 4, seed=99, resolution=32, progress=False)
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(DatasetError, match="cannot read the fresh scenes"):
        FreshScenes.load(path)
