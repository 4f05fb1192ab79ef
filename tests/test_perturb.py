"""Perturbations break exactly what they record and keep everything else (over many seeds)."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from data_synthesis.perturb import cluster, perturb, sample_pair
from data_synthesis.relations import Relation, SceneLayout, Truth, evaluate
from data_synthesis.sampler import WorldConfig, clear_of_horizon, overlapping_pairs, within_border
from data_synthesis.scene import Background, Scene, SceneObject


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), k=st.integers(1, 3))
def test_exactly_k_stated_relations_break_and_the_rest_hold(seed, k):
    sample = sample_pair(random.Random(seed), WorldConfig(3, 6), k)
    assume(sample is not None)  # about 2% of seeds find no verified perturbation: skipped and counted by build
    original, perturbed = sample.scene, sample.perturbation.scene
    assert len(sample.perturbation.broken) == k == len(sample.perturbation.operations)
    for index, relation in enumerate(sample.stated):
        assert evaluate(relation, SceneLayout(original)) is Truth.HOLDS
        expected = Truth.BROKEN if index in sample.perturbation.broken else Truth.HOLDS
        assert evaluate(relation, SceneLayout(perturbed)) is expected
        # the perturbed scene's own statement of a broken relation (its opposite) holds there
        if index in sample.perturbation.broken:
            assert evaluate(relation.opposite(), SceneLayout(perturbed)) is Truth.HOLDS
    # attributes never change; placement rules hold; no overlap appears that was not there
    for before, after in zip(original.objects, perturbed.objects, strict=True):
        assert (before.colour, before.shape, before.size, before.radius) == (
            after.colour,
            after.shape,
            after.size,
            after.radius,
        )
    assert all(within_border(o) and clear_of_horizon(o, perturbed.background) for o in perturbed.objects)
    assert overlapping_pairs(perturbed) <= overlapping_pairs(original)


def test_move_across_jumps_towards_the_centre_and_shifts_the_other_object_the_same_way():
    """Honest difficulty: one object jumps across the other, which shifts a little the same way; the jump goes
    towards the image centre, so a pair left of the centre moves right and its mirror image moves left (which
    object moves is balanced by mirror symmetry, and pairs do not drift outwards)."""
    for red_x, blue_x, red_moves in ((0.3, 0.55, True), (0.45, 0.7, False)):
        scene = Scene(
            (
                SceneObject("red", "circle", "medium", red_x, 0.5, 0.06, 0),
                SceneObject("blue", "square", "medium", blue_x, 0.5, 0.06, 1),
            ),
            Background("plain"),
        )
        jumps = 0
        for seed in range(40):
            result = perturb(scene, [Relation("left_of", ("red", "blue"))], 1, rng=random.Random(seed))
            assert result is not None
            assert evaluate(Relation("right_of", ("red", "blue")), SceneLayout(result.scene)) is Truth.HOLDS
            if result.operations != ("move_across",):
                continue
            jumps += 1
            shift_red, shift_blue = result.scene["red"].x - red_x, result.scene["blue"].x - blue_x
            assert shift_red * shift_blue > 0  # both went the same way
            assert (
                (shift_red > 0) == red_moves and abs(shift_red) > abs(shift_blue)
                if red_moves
                else (shift_blue < 0 and abs(shift_blue) > abs(shift_red))
            )
        assert jumps >= 30  # swaps are rare


def test_depth_reversal_swaps_depths_only():
    front = SceneObject("red", "circle", "large", 0.45, 0.5, 0.1, 3)
    back = SceneObject("blue", "circle", "large", 0.58, 0.5, 0.1, 1)
    scene = Scene((front, back), Background("plain"))
    result = perturb(scene, [Relation("in_front_of", ("red", "blue"))], 1, rng=random.Random(0))
    assert result.operations == ("reverse_depth",)
    assert (result.scene["red"].depth, result.scene["blue"].depth) == (1, 3)
    assert (result.scene["red"].x, result.scene["blue"].x) == (0.45, 0.58)


def test_a_contained_object_travels_with_its_container():
    outer = SceneObject("blue", "circle", "large", 0.3, 0.5, 0.1, 0)
    inner = SceneObject("red", "square", "small", 0.3, 0.5, 0.03, 1)
    other = SceneObject("green", "star", "medium", 0.7, 0.5, 0.06, 2)
    scene = Scene((outer, inner, other), Background("plain"))
    assert cluster(scene, "blue") == ["blue", "red"] and cluster(scene, "green") == ["green"]
    relations = [Relation("left_of", ("blue", "green")), Relation("inside", ("red", "blue"))]
    result = perturb(scene, relations, 1, rng=random.Random(1))
    assert result is not None and result.broken in ((0,), (1,))
    if result.broken == (0,):
        assert evaluate(relations[1], SceneLayout(result.scene)) is Truth.HOLDS  # still inside after the move


def test_families_and_k_are_balanced_in_sampled_pairs():
    """The families to break are drawn uniformly; the sampler must not tilt them towards easy ones."""
    families, failures = Counter(), 0
    for seed in range(240):
        rng = random.Random(seed)
        sample = sample_pair(rng, WorldConfig(3, 6), rng.randint(1, 3))
        if sample is None:
            failures += 1
            continue
        families.update(sample.stated[i].family for i in sample.perturbation.broken)
    assert failures <= 5
    # 480 broken relations over 8 families: 60 each in expectation
    assert len(families) == 8 and min(families.values()) >= 40 and max(families.values()) <= 85
