"""SpatialWorld held-out prompts as the input of the format writers, and the plain question text they share.

Each prompt keeps its stated relations (`data_synthesis.Relation`) and names its objects by colour and canonical
shape word ("red square"; the prompt itself may say "disc" for a circle: the names are for questions, which must not
vary). Text generation is deliberately simple and deterministic: one fixed phrasing per relation kind, so the
same relation always gives the same question and a cached judge answer stays valid.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import pandas as pd

from data_synthesis import KINDS, SHAPE_WORDS, Relation, Scene, load_pairs

SPLITS = ("train", "val", "test")

# What follows "<subject> is" for each relation kind; {b}, {c}: the other objects ("the blue circle").
PREDICATES: dict[str, str] = {
    "left_of": "to the left of {b}",
    "right_of": "to the right of {b}",
    "above": "above {b}",
    "below": "below {b}",
    "in_front_of": "in front of {b}",
    "behind": "behind {b}",
    "next_to": "next to {b}",
    "far_from": "far from {b}",
    "inside": "inside {b}",
    "outside": "outside {b}",
    "between": "between {b} and {c}",
    "not_between": "not between {b} and {c}",
    "in_sky": "in the sky",
    "on_ground": "on the ground",
    "in_region": "in the {region} of the image",
    "not_in_region": "not in the {region} of the image",
}
assert set(PREDICATES) == set(KINDS), "every relation kind needs a predicate"


@dataclass(frozen=True)
class SpatialWorldPrompt:
    """One held-out SpatialWorld prompt with the relations it states (all hold in its perfect scene)."""

    prompt_id: str  # the dataset's pair_id
    prompt: str
    objects: tuple[tuple[str, str], ...]  # (colour, name) in scene order, name = "red square"
    relations: tuple[Relation, ...]  # in the order of the dataset's stated_relations

    def name(self, colour: str) -> str:
        return dict(self.objects)[colour]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for _, name in self.objects)


def object_name(colour: str, shape: str) -> str:
    """'red square': the colour and the first (canonical) word of the shape."""
    return f"{colour} {SHAPE_WORDS[shape][0]}"


def is_depth(relation: Relation) -> bool:
    """3D relations are the depth family (in front of / behind); every other kind reads in the image plane."""
    return relation.family == "depth"


def relation_predicate(relation: Relation, prompt: SpatialWorldPrompt) -> str:
    """'to the left of the blue circle'."""
    others = {key: f"the {prompt.name(colour)}" for key, colour in zip("bc", relation.subjects[1:], strict=False)}
    return PREDICATES[relation.kind].format(region=relation.region, **others)


def relation_statement(relation: Relation, prompt: SpatialWorldPrompt) -> str:
    """'the red square is to the left of the blue circle'."""
    return f"the {prompt.name(relation.subjects[0])} is {relation_predicate(relation, prompt)}"


def relation_question(relation: Relation, prompt: SpatialWorldPrompt) -> str:
    """'Is the red square to the left of the blue circle?'."""
    return f"Is the {prompt.name(relation.subjects[0])} {relation_predicate(relation, prompt)}?"


def existence_question(name: str) -> str:
    """'Is there a red square in the image?'."""
    return f"Is there a {name} in the image?"


def short_description(prompt: SpatialWorldPrompt) -> str:
    """A terse prompt with the same content: the objects, then one plain sentence per stated relation."""
    mentions = [f"a {name}" for name in prompt.names]
    listing = mentions[0] if len(mentions) == 1 else ", ".join(mentions[:-1]) + " and " + mentions[-1]
    sentences = [listing] + [relation_statement(r, prompt) for r in prompt.relations]
    return " ".join(s[:1].upper() + s[1:] + "." for s in sentences)


def spatialworld_prompts(frame: pd.DataFrame) -> list[SpatialWorldPrompt]:
    """The prompts of a pairs table (columns pair_id, prompt, stated_relations, perfect_scene), in row order."""
    prompts = []
    for row in frame.itertuples(index=False):
        scene = Scene.from_json(row.perfect_scene)
        relations = tuple(Relation.from_dict(r) for r in json.loads(row.stated_relations))
        objects = tuple((o.colour, object_name(o.colour, o.shape)) for o in scene.objects)
        prompts.append(SpatialWorldPrompt(str(row.pair_id), str(row.prompt), objects, relations))
    return prompts


def load_spatialworld_prompts(dataset_dir: str | os.PathLike, split: str = "test") -> list[SpatialWorldPrompt]:
    """The prompts of one split of a SpatialWorld dataset dir (held out: `test`), in pairs.parquet order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    _, frame = load_pairs(dataset_dir)
    return spatialworld_prompts(frame[frame["split"] == split])
