"""Relation predicates on hand-made scenes: margins, ties, opposites, and the exact geometry behind them."""

from __future__ import annotations

import pytest

from data_synthesis.relations import KINDS, Relation, SceneLayout, Truth, box_gap, evaluate
from data_synthesis.scene import Background, Scene, SceneError, SceneObject

PLAIN = Background("plain")


def obj(colour, x, y, radius=0.05, shape="square", depth=0, size="medium"):
    return SceneObject(colour, shape, size, x, y, radius, depth)


def truth(relation, *objects, background=PLAIN):
    return evaluate(relation, SceneLayout(Scene(tuple(objects), background)))


@pytest.mark.parametrize(
    ("dx", "expected"),
    [
        (0.30, Truth.HOLDS),  # clearly left
        (0.0801, Truth.HOLDS),  # just beyond the 0.08 margin
        (0.079, Truth.UNCLEAR),  # just within the margin
        (0.0, Truth.UNCLEAR),  # a tie is neither
        (-0.079, Truth.UNCLEAR),
        (-0.0801, Truth.BROKEN),  # the negation holds with margin
    ],
)
def test_left_of_margin_and_ties(dx, expected):
    red, blue = obj("red", 0.5 - dx, 0.5), obj("blue", 0.5, 0.2)
    assert truth(Relation("left_of", ("red", "blue")), red, blue) is expected
    # right_of is the opposite relation: HOLDS and BROKEN swap, UNCLEAR stays
    swapped = {Truth.HOLDS: Truth.BROKEN, Truth.BROKEN: Truth.HOLDS}.get(expected, expected)
    assert truth(Relation("right_of", ("red", "blue")), red, blue) is swapped


def test_above_uses_image_coordinates_downwards():
    high, low = obj("red", 0.5, 0.2), obj("blue", 0.5, 0.7)
    assert truth(Relation("above", ("red", "blue")), high, low) is Truth.HOLDS
    assert truth(Relation("below", ("blue", "red")), high, low) is Truth.HOLDS
    assert truth(Relation("below", ("red", "blue")), high, low) is Truth.BROKEN


def test_box_gap_hand_computed():
    # boxes [0.1, 0.3] and [0.4, 0.6] on x, overlapping on y: gap 0.1
    assert box_gap((0.1, 0.1, 0.3, 0.3), (0.4, 0.2, 0.6, 0.4)) == pytest.approx(0.1)
    # overlapping on both axes: negative (the smaller overlap, -0.1 on x here)
    assert box_gap((0.1, 0.1, 0.3, 0.3), (0.2, 0.0, 0.4, 0.5)) == pytest.approx(-0.1)


@pytest.mark.parametrize(
    ("gap", "expected"),
    [
        (0.03, Truth.HOLDS),
        (0.059, Truth.HOLDS),
        (0.1, Truth.UNCLEAR),
        (0.221, Truth.BROKEN),
        (0.4, Truth.BROKEN),
        (-0.02, Truth.UNCLEAR),  # overlapping objects are not "next to" each other
    ],
)
def test_next_to_and_far_from(gap, expected):
    # two squares of half side 0.05*0.9 = 0.045 side by side: box gap = distance between centres - 0.09
    red, blue = obj("red", 0.3, 0.5), obj("blue", 0.3 + 0.09 + gap, 0.5)
    assert truth(Relation("next_to", ("red", "blue")), red, blue) is expected
    flipped = {Truth.HOLDS: Truth.BROKEN, Truth.BROKEN: Truth.HOLDS}.get(expected, expected)
    assert truth(Relation("far_from", ("red", "blue")), red, blue) is flipped


def test_depth_needs_visible_overlap():
    front, back = obj("red", 0.45, 0.5, 0.08, "circle", 2), obj("blue", 0.55, 0.5, 0.08, "circle", 1)
    assert truth(Relation("in_front_of", ("red", "blue")), front, back) is Truth.HOLDS
    assert truth(Relation("behind", ("blue", "red")), front, back) is Truth.HOLDS
    assert truth(Relation("behind", ("red", "blue")), front, back) is Truth.BROKEN
    # the same depth order without overlap is not "in front of": neither holds nor is broken
    apart = obj("blue", 0.85, 0.5, 0.08, "circle", 1)
    assert truth(Relation("in_front_of", ("red", "blue")), front, apart) is Truth.UNCLEAR


def test_inside_requires_containment_in_front_and_outside_needs_a_gap():
    outer = obj("blue", 0.5, 0.5, 0.15, "circle", 1)
    inner = obj("red", 0.52, 0.5, 0.04, "square", 2)
    assert truth(Relation("inside", ("red", "blue")), inner, outer) is Truth.HOLDS
    assert truth(Relation("outside", ("red", "blue")), inner, outer) is Truth.BROKEN
    hidden = obj("red", 0.52, 0.5, 0.04, "square", 0)  # behind the container: not visibly inside
    assert truth(Relation("inside", ("red", "blue")), hidden, outer) is not Truth.HOLDS
    straddling = obj("red", 0.64, 0.5, 0.04, "square", 2)  # partly out: unclear, not broken
    assert truth(Relation("inside", ("red", "blue")), straddling, outer) is Truth.UNCLEAR
    far = obj("red", 0.85, 0.5, 0.04, "square", 2)
    assert truth(Relation("inside", ("red", "blue")), far, outer) is Truth.BROKEN


def test_between_on_the_segment_and_beyond_an_end():
    left, right = obj("blue", 0.2, 0.5), obj("green", 0.8, 0.5)
    middle = obj("red", 0.5, 0.52)
    assert truth(Relation("between", ("red", "blue", "green")), middle, left, right) is Truth.HOLDS
    beyond = obj("red", 0.95, 0.5)  # projection t = 1.25 >= 1.15
    assert truth(Relation("between", ("red", "blue", "green")), beyond, left, right) is Truth.BROKEN
    off_line = obj("red", 0.5, 0.8)  # 0.3 from the segment >= 0.22
    assert truth(Relation("not_between", ("red", "blue", "green")), off_line, left, right) is Truth.HOLDS
    near_end = obj("red", 0.75, 0.5)  # t = 0.917: neither in the middle nor beyond
    assert truth(Relation("between", ("red", "blue", "green")), near_end, left, right) is Truth.UNCLEAR


def test_sky_and_ground_against_the_horizon():
    sky_ground = Background("sky_ground", 0.5)
    up, down = obj("red", 0.5, 0.3), obj("blue", 0.5, 0.75)
    straddling = obj("green", 0.5, 0.5)
    assert truth(Relation("in_sky", ("red",)), up, down, straddling, background=sky_ground) is Truth.HOLDS
    assert truth(Relation("on_ground", ("blue",)), up, down, straddling, background=sky_ground) is Truth.HOLDS
    assert truth(Relation("in_sky", ("blue",)), up, down, straddling, background=sky_ground) is Truth.BROKEN
    assert truth(Relation("in_sky", ("green",)), up, down, straddling, background=sky_ground) is Truth.UNCLEAR
    assert truth(Relation("in_sky", ("red",)), up, down) is Truth.UNCLEAR  # a plain background has no sky


@pytest.mark.parametrize(
    ("x", "y", "region", "expected"),
    [
        (0.2, 0.5, "left half", Truth.HOLDS),
        (0.8, 0.5, "left half", Truth.BROKEN),
        (0.45, 0.5, "left half", Truth.UNCLEAR),
        (0.2, 0.2, "top-left corner", Truth.HOLDS),
        (0.2, 0.7, "top-left corner", Truth.BROKEN),
        (0.4, 0.2, "top-left corner", Truth.UNCLEAR),
        (0.85, 0.85, "bottom-right corner", Truth.HOLDS),
        (0.52, 0.46, "centre", Truth.HOLDS),
        (0.9, 0.5, "centre", Truth.BROKEN),
    ],
)
def test_absolute_placements(x, y, region, expected):
    assert truth(Relation("in_region", ("red",), region), obj("red", x, y), obj("blue", 0.1, 0.9)) is expected


def test_opposites_are_involutions_and_halves_map_to_halves():
    for kind in KINDS:
        arity = KINDS[kind][0]
        subjects = ("red", "blue", "green")[:arity]
        region = "top-left corner" if kind in ("in_region", "not_in_region") else None
        relation = Relation(kind, subjects, region)
        assert relation.opposite().opposite() == relation
        assert relation.opposite().family == relation.family
    # "not in the left half" is said as "in the right half" (the margins make them the same statement)
    assert Relation("in_region", ("red",), "left half").opposite() == Relation("in_region", ("red",), "right half")


def test_relation_validation():
    with pytest.raises(SceneError, match="unknown relation kind"):
        Relation("near", ("red", "blue"))
    with pytest.raises(SceneError, match="needs 3 distinct objects"):
        Relation("between", ("red", "blue"))
    with pytest.raises(SceneError, match="unknown region"):
        Relation("in_region", ("red",), "upper half")
    assert Relation.from_dict(Relation("in_region", ("red",), "centre").to_dict()) == Relation(
        "in_region", ("red",), "centre"
    )
