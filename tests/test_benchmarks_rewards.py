"""The GenEval-rule RL reward (benchmarks/rewards.py) on rendered SpatialWorld scenes, against hand-counted clauses."""

from __future__ import annotations

import pytest
import torch

from benchmarks.rewards import GenEvalReward, clauses_from_spatialworld
from data_synthesis.render import render
from data_synthesis.scene import Background, Scene, SceneObject

RELATIONS = [
    {"kind": "left_of", "subjects": ["red", "blue"]},  # GenEval has a rule: a position clause
    {"kind": "in_front_of", "subjects": ["blue", "red"]},  # no GenEval rule: not rewarded
]
META = {"relations": RELATIONS, "colours": ["red", "blue"]}


def scene(red_x: float, blue_x: float, other: str = "blue") -> Scene:
    objects = (
        SceneObject("red", "square", "medium", red_x, 0.5, 0.12, 0),
        SceneObject(other, "circle", "medium", blue_x, 0.5, 0.12, 1),
    )
    return Scene(objects, Background("plain"))


def test_spatialworld_metadata_becomes_geneval_clauses():
    assert clauses_from_spatialworld(META) == {
        "tag": "position",
        "include": [
            {"class": "red", "count": 1, "color": "red"},
            {"class": "blue", "count": 1, "color": "blue"},
            {"class": "red", "count": 1, "color": "red", "position": ["left of", 1]},
        ],
    }
    only_depth = {"relations": RELATIONS[1:], "colours": ["red", "blue"]}
    assert clauses_from_spatialworld(only_depth)["tag"] == "color_attr"
    with pytest.raises(ValueError, match="must hold 'relations' and 'colours'"):
        clauses_from_spatialworld({"colours": ["red"]})


def test_reward_counts_the_clauses_each_image_passes():
    images = [render(scene(0.25, 0.75)), render(scene(0.75, 0.25)), render(scene(0.25, 0.75, other="green"))]
    prompts = ["the red square is left of the blue circle ."] * 3
    soft = GenEvalReward()(prompts=prompts, images=images, metadata=[META] * 3)
    # right order: 3 of 3; swapped: both objects found, the position fails (2 of 3); blue missing: red only (1 of 3),
    # the position has no target.
    assert torch.allclose(soft, torch.tensor([1.0, 2 / 3, 1 / 3]))
    strict = GenEvalReward(strict=True)(prompts=prompts, images=images, metadata=[META] * 3)
    assert strict.tolist() == [1.0, 0.0, 0.0]
    geneval = {
        "tag": "two_object",
        "include": [{"class": "red square", "count": 1}],
        "exclude": [{"class": "blue", "count": 1}],
    }
    assert GenEvalReward().score(images[0], geneval) == 0.5 and GenEvalReward().score(images[2], geneval) == 1.0


def test_bad_metadata_and_arguments():
    reward = GenEvalReward()
    with pytest.raises(ValueError, match="one metadata entry per image: got 1 prompts, 1 images, None metadata"):
        reward(prompts=["p"], images=[render(scene(0.25, 0.75))], metadata=None)
    with pytest.raises(ValueError, match="needs a metadata dict per prompt, got str"):
        reward.score(render(scene(0.25, 0.75)), "red left of blue")
    with pytest.raises(ValueError, match="give both"):
        GenEvalReward(colour_model_dir="clip")


def test_the_geneval_overlay_selects_this_reward():
    """`make train-rl REWARD=geneval`: configs/rl/tiny.yaml + reward_geneval.yaml parse with the RL CLI (nothing
    built) and name this class, its reward source and its run dir."""
    from pathlib import Path

    from rl_policy.data import PromptDataModule
    from rl_policy.training import GRPOCLI, GRPOTraining

    class ParseOnlyCLI(GRPOCLI):
        def instantiate_classes(self) -> None:
            pass

    configs = Path(__file__).resolve().parents[1] / "configs" / "rl"
    args = ["--config", str(configs / "tiny.yaml"), "--config", str(configs / "reward_geneval.yaml")]
    config = ParseOnlyCLI(GRPOTraining, PromptDataModule, args=args, run=False).config
    assert config.model.reward.class_path == "benchmarks.GenEvalReward"
    assert config.model.reward_source == "geneval" and config.trainer.default_root_dir == "runs/rl/tiny-geneval"
