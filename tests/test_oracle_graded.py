"""The graded oracle reward: `relation_margin` by hand on hand-built layouts, its sign against `evaluate` on random
SpatialWorld scenes (scene graphs and renders read by the detector) and random layouts, and
`SpatialWorldOracle(graded=True)`: in [0, 1], monotone in a relation's offset, 0 for missing objects, selectable
from YAML, while `judge` (what accuracy measures) stays binary."""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field

import pytest
import yaml
from PIL import Image

from data_synthesis import (
    REGIONS,
    Background,
    Relation,
    Scene,
    SceneLayout,
    SceneObject,
    SpatialWorldOracle,
    Truth,
    WorldConfig,
    detect,
    evaluate,
    oracle_metadata,
    relation_margin,
    render,
    sample_scene,
)
from data_synthesis.relations import KINDS, READING, STRICT


@dataclass
class FakeLayout:
    """A hand-built layout: boxes by colour, and fixed occlusion / containment / horizon readings."""

    boxes: dict[str, tuple[float, float, float, float]]
    occluded: dict[tuple[str, str], float] = field(default_factory=dict)
    contained: dict[tuple[str, str], float] = field(default_factory=dict)
    horizon_at: float | None = None
    strict: bool = False

    def box(self, colour):
        return self.boxes.get(colour)

    def occlusion(self, front, back):
        if (front, back) in self.occluded:
            return self.occluded[front, back]
        return -self.occluded.get((back, front), 0.0)

    def containment(self, inner, outer):
        return self.contained.get((inner, outer), 0.0)

    def horizon(self):
        return self.horizon_at


def square(x, y, half=0.05):
    return (x - half, y - half, x + half, y + half)


def render32(scene: Scene, seed: int) -> Image.Image:
    """A render at the generator's 32 px (render's smallest size is 64: downsampled, so borders blur)."""
    return render(scene, 64, seed=seed).resize((32, 32), Image.Resampling.BOX)


def rel(kind, *subjects, region=None):
    return Relation(kind, subjects, region)


# --- hand-computed margins (reading margins) -----------------------------------------------------------------------
def test_order_margins_by_hand():
    layout = FakeLayout({"red": square(0.2, 0.7), "blue": square(0.6, 0.3)})
    # centre x offset 0.4, reading margin 0.03: left of holds by 0.37, right of misses by 0.43
    assert relation_margin(rel("left_of", "red", "blue"), layout) == pytest.approx(0.4 - 0.03)
    assert relation_margin(rel("right_of", "red", "blue"), layout) == pytest.approx(-0.4 - 0.03)
    # centre y offset: red is 0.4 lower (image y grows downwards)
    assert relation_margin(rel("above", "red", "blue"), layout) == pytest.approx(-0.4 - 0.03)
    assert relation_margin(rel("below", "red", "blue"), layout) == pytest.approx(0.4 - 0.03)


def test_depth_proximity_and_containment_margins_by_hand():
    layout = FakeLayout(
        {"red": (0.1, 0.1, 0.3, 0.3), "blue": (0.35, 0.1, 0.6, 0.3), "green": (0.8, 0.8, 0.9, 0.9)},
        occluded={("red", "blue"): 0.12},
        contained={("green", "blue"): 0.5},
    )
    assert relation_margin(rel("in_front_of", "red", "blue"), layout) == pytest.approx(0.12 - 0.02)
    assert relation_margin(rel("behind", "red", "blue"), layout) == pytest.approx(-0.12 - 0.02)
    assert relation_margin(rel("behind", "blue", "red"), layout) == pytest.approx(0.12 - 0.02)
    # box gap red-blue 0.05: within the 0.10 "near" window by 0.05; far from needs a gap of 0.17
    assert relation_margin(rel("next_to", "red", "blue"), layout) == pytest.approx(0.10 - 0.05)
    assert relation_margin(rel("far_from", "red", "blue"), layout) == pytest.approx(0.05 - 0.17)
    # green is half inside blue's hull: inside needs 0.85, outside at most 0.15
    assert relation_margin(rel("inside", "green", "blue"), layout) == pytest.approx(0.5 - 0.85)
    assert relation_margin(rel("outside", "green", "blue"), layout) == pytest.approx(0.15 - 0.5)


def test_between_margin_by_hand():
    # ends at x = 0.2 and 0.8 (span 0.6) on y = 0.5; middle at x = 0.35, 0.04 off the line
    layout = FakeLayout({"red": square(0.35, 0.54), "blue": square(0.2, 0.5), "green": square(0.8, 0.5)})
    t, span, perp = 0.25, 0.6, 0.04
    expected = min(span - 0.2, (t - 0.18) * span, (0.82 - t) * span, 0.11 - perp)
    assert expected == pytest.approx(0.07 * 0.6)  # the nearer end of the allowed range binds
    assert relation_margin(rel("between", "red", "blue", "green"), layout) == pytest.approx(expected)
    expected_not = max((-0.05 - t) * span, (t - 1.05) * span, perp - 0.16)
    assert relation_margin(rel("not_between", "red", "blue", "green"), layout) == pytest.approx(expected_not)


def test_background_and_region_margins_by_hand():
    layout = FakeLayout({"red": (0.3, 0.1, 0.4, 0.3)}, horizon_at=0.5)
    # reading horizon margin -0.02: in the sky while the bottom is above 0.52; bottom 0.3 clears it by 0.22
    assert relation_margin(rel("in_sky", "red"), layout) == pytest.approx(0.22)
    assert relation_margin(rel("on_ground", "red"), layout) == pytest.approx(0.1 - 0.48)
    centre = (0.35, 0.2)
    halves = {"left half": 0.15 - 0.03, "right half": -0.15 - 0.03, "top half": 0.3 - 0.03, "bottom half": -0.33}
    for region, margin in halves.items():
        assert relation_margin(rel("in_region", "red", region=region), layout) == pytest.approx(margin)
    assert relation_margin(rel("not_in_region", "red", region="left half"), layout) == pytest.approx(-0.18)
    # corner: distances from its own edges 0.35 and 0.2, within 0.4 on both axes
    assert relation_margin(rel("in_region", "red", region="top-left corner"), layout) == pytest.approx(0.05)
    assert relation_margin(rel("not_in_region", "red", region="top-left corner"), layout) == pytest.approx(-0.15)
    assert relation_margin(rel("in_region", "red", region="bottom-right corner"), layout) == pytest.approx(0.4 - 0.8)
    # centre: Chebyshev distance 0.3 from the middle; in within 0.15, out from 0.2
    assert relation_margin(rel("in_region", "red", region="centre"), layout) == pytest.approx(0.15 - 0.3)
    assert relation_margin(rel("not_in_region", "red", region="centre"), layout) == pytest.approx(0.3 - 0.2)
    assert centre == (0.35, 0.2)


def test_unreadable_relations_have_no_margin():
    layout = FakeLayout({"red": square(0.3, 0.3), "blue": square(0.3, 0.3), "green": square(0.6, 0.6)})
    assert relation_margin(rel("left_of", "red", "yellow"), layout) is None  # yellow missing
    assert relation_margin(rel("in_sky", "red"), layout) is None  # no horizon read
    assert relation_margin(rel("between", "green", "red", "blue"), layout) is None  # the ends coincide


def test_strict_margins_on_a_scene_graph():
    scene = Scene(
        (
            SceneObject("red", "square", "medium", 0.3, 0.5, 0.05, 0),
            SceneObject("blue", "square", "medium", 0.5, 0.5, 0.05, 0),
        ),
        Background("plain"),
    )
    margin = relation_margin(rel("left_of", "red", "blue"), SceneLayout(scene))
    assert margin == pytest.approx(0.2 - STRICT.order)
    assert STRICT.order != READING.order


# --- sign agreement with evaluate ----------------------------------------------------------------------------------
def all_relations(colours: list[str]) -> list[Relation]:
    """Every relation of every kind over the given objects (every region for absolute placements)."""
    out = []
    for kind, (arity, _, _) in KINDS.items():
        for subjects in itertools.permutations(colours, arity):
            regions = REGIONS if kind in ("in_region", "not_in_region") else (None,)
            out.extend(Relation(kind, subjects, region) for region in regions)
    return out


def check_sign(relation, layout, counts):
    truth = evaluate(relation, layout)
    margin = relation_margin(relation, layout)
    if truth is Truth.MISSING:
        assert margin is None
        return
    counts[truth] = counts.get(truth, 0) + 1
    if margin is None:  # unreadable geometry: evaluate cannot decide either
        assert truth is Truth.UNCLEAR, relation
        return
    if truth is Truth.HOLDS:
        assert margin >= 0, (relation, margin)
    else:
        assert margin <= 0, (relation, truth, margin)
    if margin > 0:
        assert truth is Truth.HOLDS, (relation, margin)
    if truth is Truth.BROKEN:
        assert margin < 0 or math.isclose(margin, 0.0, abs_tol=1e-12), (relation, margin)


def test_sign_agrees_with_evaluate_on_random_scene_graphs_and_their_renders():
    counts_scene, counts_pixels = {}, {}
    for seed in range(40):
        rng = random.Random(seed)
        scene = sample_scene(rng, WorldConfig(2, 4)).scene
        colours = [o.colour for o in scene.objects]
        relations = all_relations(colours)
        scene_layout = SceneLayout(scene)
        pixel_layout = detect(render32(scene, seed), colours)
        for relation in relations:
            check_sign(relation, scene_layout, counts_scene)
            check_sign(relation, pixel_layout, counts_pixels)
    for counts in (counts_scene, counts_pixels):  # every verdict was exercised, many times
        assert min(counts.get(truth, 0) for truth in (Truth.HOLDS, Truth.BROKEN, Truth.UNCLEAR)) >= 50, counts


def test_sign_agrees_with_evaluate_on_random_layouts():
    """Random boxes and readings, both margin sets, including thin boxes across the horizon (where the reading
    margins of in the sky and on the ground overlap)."""
    rng = random.Random(0)
    colours = ["red", "blue", "green"]
    relations = all_relations(colours)
    counts = {}
    for trial in range(300):
        boxes = {}
        for colour in colours:
            x0, y0 = rng.uniform(0, 0.9), rng.uniform(0, 0.9)
            boxes[colour] = (x0, y0, x0 + rng.uniform(0.01, 0.4), y0 + rng.uniform(0.01, 0.4))
        horizon = None if trial % 7 == 0 else rng.uniform(0.2, 0.8)
        if trial % 5 == 0 and horizon is not None:  # a thin box straddling the horizon
            boxes["red"] = (0.4, horizon - 0.01, 0.5, horizon + 0.01)
        layout = FakeLayout(
            boxes,
            occluded={pair: rng.uniform(-0.3, 0.3) for pair in itertools.combinations(colours, 2)},
            contained={pair: rng.choice([0.0, 1.0, rng.random()]) for pair in itertools.permutations(colours, 2)},
            horizon_at=horizon,
            strict=trial % 2 == 0,
        )
        for relation in relations:
            check_sign(relation, layout, counts)
    assert min(counts.get(truth, 0) for truth in (Truth.HOLDS, Truth.BROKEN, Truth.UNCLEAR)) >= 500, counts


# --- the graded reward ---------------------------------------------------------------------------------------------
def two_squares(dx: float):
    """A render of a red square dx (image fractions) left of a blue one, and its 'red left of blue' metadata."""
    scene = Scene(
        (
            SceneObject("red", "square", "large", 0.5 - dx / 2, 0.5, 0.12, 0),
            SceneObject("blue", "square", "large", 0.5 + dx / 2, 0.5, 0.12, 0),
        ),
        Background("plain"),
    )
    return render32(scene, 0), oracle_metadata(scene=scene, relations=[rel("left_of", "red", "blue")])


def test_graded_reward_is_in_unit_interval_monotone_and_crosses_half_where_the_verdict_flips():
    graded, binary = SpatialWorldOracle(graded=True, temperature=0.05), SpatialWorldOracle()
    offsets = [-0.6, -0.4, -0.2, -0.05, 0.05, 0.2, 0.4, 0.6]
    images, metadata = zip(*(two_squares(dx) for dx in offsets), strict=True)
    scores = graded(prompts=["p"] * len(images), images=list(images), metadata=list(metadata))
    verdicts = binary(prompts=["p"] * len(images), images=list(images), metadata=list(metadata))
    assert ((scores >= 0) & (scores <= 1)).all()
    assert (scores[1:] > scores[:-1]).all(), scores  # strictly rising with the offset
    assert ((scores > 0.5) == (verdicts == 1)).all(), (scores, verdicts)
    assert scores[0] < 0.01 and scores[-1] > 0.99
    # the verdict (what accuracy measures) is binary in either mode
    assert graded.judge(images[-1], metadata[-1]).confirmed == (True,)


def test_graded_reward_is_monotone_in_temperature_scaled_margin_on_a_layout():
    oracle = SpatialWorldOracle(graded=True, temperature=0.1)
    image, metadata = two_squares(0.3)
    layout = detect(image, metadata["colours"])
    margin = relation_margin(rel("left_of", "red", "blue"), layout)
    assert oracle.graded_score(image, metadata) == pytest.approx(1 / (1 + math.exp(-margin / 0.1)))
    colder = SpatialWorldOracle(graded=True, temperature=0.02).graded_score(image, metadata)
    assert colder > oracle.graded_score(image, metadata)  # a holding relation: a colder sigmoid is nearer 1


def test_missing_objects_score_zero_and_no_relations_score_one():
    oracle = SpatialWorldOracle(graded=True)
    image, metadata = two_squares(0.3)
    missing = {"relations": [rel("left_of", "red", "yellow").to_dict()], "colours": ["red", "yellow"]}
    assert oracle.graded_score(image, missing) == 0.0
    assert oracle.graded_score(image, {"relations": [], "colours": ["red"]}) == 1.0
    half = {"relations": metadata["relations"] + missing["relations"], "colours": ["red", "blue", "yellow"]}
    assert oracle.graded_score(image, half) == pytest.approx(oracle.graded_score(image, metadata) / 2)


def test_unreadable_relations_score_the_set_value_or_are_left_out():
    image, metadata = two_squares(0.3)
    readable = SpatialWorldOracle(graded=True).graded_score(image, metadata)
    missing = {"relations": [rel("left_of", "red", "yellow").to_dict()], "colours": ["red", "yellow"]}
    half = {"relations": metadata["relations"] + missing["relations"], "colours": ["red", "blue", "yellow"]}
    assert SpatialWorldOracle(graded=True, unreadable=0.25).graded_score(image, half) == pytest.approx(
        (readable + 0.25) / 2
    )
    placement = SpatialWorldOracle(graded=True, unreadable=None)
    assert placement.graded_score(image, half) == pytest.approx(readable)  # the missing relation is left out
    assert math.isnan(placement.graded_score(image, missing))  # nothing readable: NaN, a dropped GRPO sample
    with pytest.raises(ValueError, match="unreadable must lie"):
        SpatialWorldOracle(graded=True, unreadable=1.5)
    with pytest.raises(ValueError, match="set graded too"):
        SpatialWorldOracle(unreadable=None)


def test_graded_mode_from_yaml_init_args_and_bad_temperature():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--reward", type=SpatialWorldOracle)
    config = yaml.safe_load(
        "reward:\n  class_path: data_synthesis.SpatialWorldOracle\n"
        "  init_args:\n    graded: true\n    temperature: 0.1\n"
    )
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in 4.49
    reward = instantiate(parser.parse_object(config)).reward
    assert isinstance(reward, SpatialWorldOracle) and reward.graded and reward.temperature == 0.1
    assert not SpatialWorldOracle().graded
    with pytest.raises(ValueError, match="temperature"):
        SpatialWorldOracle(graded=True, temperature=0.0)
