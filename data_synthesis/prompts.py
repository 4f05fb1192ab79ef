"""Prompts: long descriptions of a scene's objects and background, then its stated relations.

Variety comes from several phrasings per relation, synonyms for sizes and shapes, three ways to introduce the
objects, and a shuffled sentence order. All choices are drawn from `style_seed` in a way that does not depend on
which relations are stated, so the perturbed scene's prompt (same seed, broken relations replaced by their
opposites) differs from the original only in the sentences of the broken relations.
"""

from __future__ import annotations

import random
from typing import NamedTuple

from data_synthesis.relations import Relation
from data_synthesis.scene import Scene

SIZE_WORDS = {"small": ("small", "little"), "medium": ("medium-sized", "mid-sized"), "large": ("large", "big")}
SHAPE_WORDS = {
    "circle": ("circle", "disc"),
    "square": ("square",),
    "triangle": ("triangle",),
    "diamond": ("diamond", "rhombus"),
    "pentagon": ("pentagon",),
    "hexagon": ("hexagon",),
    "star": ("star", "five-pointed star"),
    "cross": ("cross", "plus sign"),
}
BACKGROUND_WORDS = {
    "plain": ("a plain light background", "an empty pale backdrop", "a flat cream-coloured background"),
    "sky_ground": (
        "a landscape of blue sky over green ground",
        "an open field under a blue sky",
        "a simple landscape where the sky meets the ground at the horizon",
    ),
}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")

# Placeholders: {a}, {b}, {c} are "the red star"-style references; a sentence may start with one.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "left_of": (
        "{a} is to the left of {b}.",
        "{a} sits left of {b}.",
        "to the left of {b} is {a}.",
        "{a} is placed on the left side of {b}.",
    ),
    "right_of": (
        "{a} is to the right of {b}.",
        "{a} sits right of {b}.",
        "to the right of {b} is {a}.",
        "{a} is placed on the right side of {b}.",
    ),
    "above": (
        "{a} is above {b}.",
        "{a} is positioned higher than {b}.",
        "above {b} is {a}.",
        "{a} sits higher up than {b}.",
    ),
    "below": (
        "{a} is below {b}.",
        "{a} is positioned lower than {b}.",
        "below {b} is {a}.",
        "{a} sits further down than {b}.",
    ),
    "in_front_of": (
        "{a} is in front of {b}, partly covering it.",
        "{a} overlaps and hides part of {b}.",
        "{a} is in front of {b}.",
    ),
    "behind": ("{a} is behind {b}, partly hidden by it.", "{a} is partly covered by {b}.", "{a} is behind {b}."),
    "next_to": (
        "{a} is next to {b}.",
        "{a} is right beside {b}.",
        "{a} and {b} are close together.",
        "{a} sits close to {b}.",
    ),
    "far_from": (
        "{a} is far from {b}.",
        "{a} and {b} are far apart.",
        "{a} is a long way from {b}.",
        "{a} sits far away from {b}.",
    ),
    "inside": ("{a} is inside {b}.", "{a} sits within {b}.", "{b} contains {a}."),
    "outside": ("{a} is outside {b}.", "{a} is not inside {b}.", "{b} does not contain {a}."),
    "between": (
        "{a} is between {b} and {c}.",
        "{a} sits in the middle between {b} and {c}.",
        "between {b} and {c} is {a}.",
    ),
    "not_between": (
        "{a} is not between {b} and {c}.",
        "{a} does not lie between {b} and {c}.",
        "{a} is not in the middle between {b} and {c}.",
    ),
    "in_sky": ("{a} floats in the sky.", "{a} is up in the sky.", "{a} is in the sky, above the horizon."),
    "on_ground": ("{a} rests on the ground.", "{a} is on the ground.", "{a} is on the ground, below the horizon."),
    "in_region": (
        "{a} is in the {region} of the image.",
        "{a} is placed in the {region}.",
        "in the {region} of the picture is {a}.",
    ),
    "not_in_region": (
        "{a} is not in the {region} of the image.",
        "{a} is away from the {region}.",
        "{a} is not placed in the {region}.",
    ),
}


def _capitalise(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class PromptPieces(NamedTuple):
    """A prompt cut into sentences: `describe` joins `intro + sentences` with single spaces."""

    intro: list[str]  # the sentences that introduce the background and the objects, each ending in "."
    sentences: list[str]  # one sentence per stated relation, each ending in its only ".", in prompt order
    slots: list[int]  # slots[j]: the index (in the `relations` given) of the relation that sentences[j] states


def describe_sentences(scene: Scene, relations: list[Relation], style_seed: int) -> PromptPieces:
    """The sentences of `describe(scene, relations, style_seed)`, with the relation each relation sentence states."""
    rng = random.Random(style_seed)
    words = {}
    for obj in scene.objects:  # two draws per object, whatever its attributes
        size_pick, shape_pick = rng.randrange(1000), rng.randrange(1000)
        size_options, shape_options = SIZE_WORDS[obj.size], SHAPE_WORDS[obj.shape]
        words[obj.colour] = (
            size_options[size_pick % len(size_options)],
            shape_options[shape_pick % len(shape_options)],
        )
    reference = {c: f"the {c} {shape}" for c, (_, shape) in words.items()}
    mentions = [f"a {size} {c} {shape}" for c, (size, shape) in words.items()]
    object_order = list(range(len(mentions)))
    rng.shuffle(object_order)
    mentions = [mentions[i] for i in object_order]
    background = BACKGROUND_WORDS[scene.background.kind]
    background_text = background[rng.randrange(1000) % len(background)]
    count = NUMBER_WORDS[len(mentions)]
    intro_style = rng.randrange(3)
    if intro_style == 0:
        intro = [f"An image of {count} shapes on {background_text}: {_join(mentions)}."]
    elif intro_style == 1:
        intro = [f"The picture shows {_join(mentions)}, set against {background_text}."]
    else:
        intro = [f"The scene is {background_text} with {count} objects in it."]
        intro += [f"There is {mention}." for mention in mentions]

    phrasing = [rng.randrange(1000) for _ in range(8)]
    sentence_order = list(range(8))
    rng.shuffle(sentence_order)
    sentences = []
    slots = sorted(range(len(relations)), key=lambda i: sentence_order[i % 8] + 8 * (i // 8))
    for slot in slots:
        relation = relations[slot]
        options = TEMPLATES[relation.kind]
        template = options[phrasing[slot % 8] % len(options)]
        refs = dict(zip("abc", (reference[c] for c in relation.subjects), strict=False))
        sentences.append(_capitalise(template.format(region=relation.region, **refs)))
    return PromptPieces(intro, sentences, slots)


def describe(scene: Scene, relations: list[Relation], style_seed: int) -> str:
    """The prompt for `scene` stating `relations`. Equal seeds make equal choices for equal slots."""
    pieces = describe_sentences(scene, relations, style_seed)
    return " ".join(pieces.intro + pieces.sentences)
