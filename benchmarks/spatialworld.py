"""SpatialWorld judges: the pixel detector of `data_synthesis` behind the `Detector`, `YesNoVQA` and `TestpointJudge`
protocols, and the fixed question/statement wording they read.

In SpatialWorld an object's colour is its identity (unique within a scene), so every judge here finds objects by
colour: a class or an object mention is read by its colour word ("red circle" -> the red object) and the shape word
is not checked. Questions and testpoints are written from relations with `relation_question` /
`relation_statement` and read back exactly by `parse_claim`; the answer is the detector's reading of that relation
(`data_synthesis.evaluate` on what `data_synthesis.detect` read): yes only when it HOLDS with the reading margin,
no when it is broken, unclear, or an object it names was not found. Text in any other wording is unreadable
(None), never guessed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from benchmarks.geneval import relative_position
from benchmarks.judges import Detection, Testpoint, TestpointScores, YesNoAnswers
from data_synthesis import COLOURS, KINDS, REGIONS, PixelLayout, Relation, Scene, Truth, detect, evaluate, load_pairs

DETECTOR_NAME = "spatialworld-pixel"
DETECTOR_VERSION = "1"

# What follows "the <A>" in a question ("Is the red circle to the left of the blue square?") or a statement ("The
# red circle is to the left of the blue square."); {B}, {C}: the other objects, {region}: a region name.
PHRASES: dict[str, str] = {
    "left_of": "to the left of {B}",
    "right_of": "to the right of {B}",
    "above": "above {B}",
    "below": "below {B}",
    "in_front_of": "in front of {B}",
    "behind": "behind {B}",
    "next_to": "next to {B}",
    "far_from": "far from {B}",
    "inside": "inside {B}",
    "outside": "outside {B}",
    "between": "between {B} and {C}",
    "not_between": "not between {B} and {C}",
    "in_sky": "in the sky",
    "on_ground": "on the ground",
    "in_region": "in the {region} of the image",
    "not_in_region": "not in the {region} of the image",
}
assert set(PHRASES) == set(KINDS)

_COLOUR = "|".join(map(re.escape, COLOURS))
_NOUN = r"[a-z]+(?:[ -](?!not )[a-z]+)*?"  # a shape word of one or more words ("circle", "plus sign"), never "not"
_OBJECT = rf"the (?P<{{slot}}>{_COLOUR}) {_NOUN}"
_REGION = "|".join(map(re.escape, REGIONS))


@dataclass(frozen=True)
class Claim:
    """What one question or statement asks: that `relation` holds, or (relation None) that an object of colour
    `colour` is in the image."""

    colour: str
    relation: Relation | None = None


def _mention(colour: str, shapes: Mapping[str, str]) -> str:
    if colour not in shapes:
        raise ValueError(f"no shape word given for the {colour} object (shapes: {dict(shapes)})")
    return f"the {colour} {shapes[colour]}"


def _phrase(relation: Relation, shapes: Mapping[str, str]) -> str:
    others = {slot: _mention(colour, shapes) for slot, colour in zip("BC", relation.subjects[1:], strict=False)}
    return PHRASES[relation.kind].format(region=relation.region, **others)


def relation_question(relation: Relation, shapes: Mapping[str, str]) -> str:
    """ "Is the red circle to the left of the blue square?"; `shapes` maps each colour to its shape word."""
    return f"Is {_mention(relation.subjects[0], shapes)} {_phrase(relation, shapes)}?"


def relation_statement(relation: Relation, shapes: Mapping[str, str]) -> str:
    """ "The red circle is to the left of the blue square."; the testpoint form of `relation_question`."""
    subject = _mention(relation.subjects[0], shapes)
    return f"{subject[0].upper()}{subject[1:]} is {_phrase(relation, shapes)}."


def existence_question(colour: str, shape: str) -> str:
    """ "Is there a red circle?"."""
    return f"Is there a {colour} {shape}?"


def existence_statement(colour: str, shape: str) -> str:
    """ "There is a red circle."."""
    return f"There is a {colour} {shape}."


def _compile() -> list[tuple[re.Pattern[str], str | None]]:
    patterns: list[tuple[re.Pattern[str], str | None]] = [
        (re.compile(rf"is there an? (?P<A>{_COLOUR}) {_NOUN}(?: in the image)?\?"), None),
        (re.compile(rf"there is an? (?P<A>{_COLOUR}) {_NOUN}(?: in the image)?\.?"), None),
    ]
    for kind, phrase in PHRASES.items():
        body = re.escape(phrase)
        for slot in "BC":
            body = body.replace(re.escape("{" + slot + "}"), _OBJECT.format(slot=slot))
        body = body.replace(re.escape("{region}"), f"(?P<region>{_REGION})")
        subject = _OBJECT.format(slot="A")
        patterns.append((re.compile(rf"is {subject} {body}\?"), kind))
        patterns.append((re.compile(rf"{subject} is {body}\.?"), kind))
    return patterns


_PATTERNS = _compile()


def parse_claim(text: str) -> Claim | None:
    """The claim of a question or statement written by the functions above, or by the format writers'
    (`benchmarks.formats.spatialworld`: the same phrases, "Is there a red square in the image?", statements without
    the full stop); case and spacing are ignored. None for any other text."""
    normalised = " ".join(text.split()).lower()
    for pattern, kind in _PATTERNS:
        match = pattern.fullmatch(normalised)
        if match is None:
            continue
        if kind is None:
            return Claim(match["A"])
        groups = match.groupdict()
        subjects = tuple(groups[slot] for slot in "ABC" if groups.get(slot))
        if len(set(subjects)) != len(subjects):
            return None
        return Claim(subjects[0], Relation(kind, subjects, groups.get("region")))
    return None


def _colours(claims: Sequence[Claim | None]) -> list[str]:
    named = [claim.relation.subjects if claim.relation else (claim.colour,) for claim in claims if claim is not None]
    return sorted({colour for colours in named for colour in colours})


def _holds(claim: Claim, layout: PixelLayout) -> bool:
    if claim.relation is None:
        return layout.found(claim.colour)
    return evaluate(claim.relation, layout) is Truth.HOLDS


class SpatialWorldDetector:
    """`Detector` over the pixel detector: a class is read by its colour word ("red", "red circle"); each found
    colour gives one detection (colours are unique in a scene) with score 1, its pixel box and mask, and its colour."""

    name = DETECTOR_NAME
    template_version = DETECTOR_VERSION

    def detect(self, image: Image.Image, classes: Sequence[str]) -> dict[str, list[Detection]]:
        colour_of = {}
        for name in classes:
            colour = name.split()[0].lower() if name.split() else ""
            if colour not in COLOURS:
                raise ValueError(
                    f"the SpatialWorld detector reads objects by colour; class {name!r} does not start with one of "
                    f"{', '.join(COLOURS)}"
                )
            colour_of[name] = colour
        layout = detect(image.convert("RGB"), sorted(set(colour_of.values())))
        detections: dict[str, list[Detection]] = {}
        for name, colour in colour_of.items():
            box = layout.box(colour)
            if box is None:
                continue
            pixel_box = (box[0] * layout.width, box[1] * layout.height, box[2] * layout.width, box[3] * layout.height)
            detections[name] = [Detection(pixel_box, 1.0, layout.masks[colour].copy(), colour)]
        return detections


class SpatialWorldVQA:
    """`YesNoVQA` for questions written by `relation_question` / `existence_question`: answered from one detector
    reading of the image; any other question is unreadable (None)."""

    name = DETECTOR_NAME
    template_version = DETECTOR_VERSION

    def answer(self, *, image: Image.Image, questions: Sequence[str]) -> YesNoAnswers:
        claims = [parse_claim(question) for question in questions]
        layout = detect(image.convert("RGB"), _colours(claims))
        answers = tuple(None if claim is None else _holds(claim, layout) for claim in claims)
        unreadable = sum(claim is None for claim in claims)
        return YesNoAnswers(answers, f"{unreadable} questions not in SpatialWorld wording" if unreadable else None)


class SpatialWorldTestpoints:
    """`TestpointJudge` for testpoints whose description is written by `relation_statement` /
    `existence_statement` (or the question forms): 1 when the detector reads it as holding, else 0."""

    name = DETECTOR_NAME
    template_version = DETECTOR_VERSION

    def judge(self, *, image: Image.Image, prompt: str, testpoints: Sequence[Testpoint]) -> TestpointScores:
        claims = [parse_claim(point.description) for point in testpoints]
        layout = detect(image.convert("RGB"), _colours(claims))
        scores = tuple(None if claim is None else int(_holds(claim, layout)) for claim in claims)
        unreadable = sum(claim is None for claim in claims)
        return TestpointScores(scores, f"{unreadable} testpoints not in SpatialWorld wording" if unreadable else None)


GENEVAL_RELATIONS = {"left_of": "left of", "right_of": "right of", "above": "above", "below": "below"}


def geneval_metadata(dataset_dir: str | os.PathLike, split: str = "test") -> list[dict[str, Any]]:
    """GenEval metadata for the perfect prompts of a dataset's `split` (sorted by pair id; prompt index i is the
    i-th pair), for the `geneval` task with the SpatialWorld detector.

    Every object is an include clause {"class": "<colour> <shape>", "count": 1, "color": <colour>}. A prompt that
    states a left/right/above/below relation "A rel B" which GenEval's position rule also reads on the scene's own
    boxes is tagged "position": B's clause comes first and A's carries "position": [rel, 0]; the other objects
    follow. Any other prompt is tagged "color_attr". (GenEval's rule, centre offsets beyond 0.1 of the summed box
    sides and mostly along one axis, rejects many diagonal or overlapping placements that SpatialWorld states.)"""
    meta, frame = load_pairs(dataset_dir)
    side = meta["arguments"]["resolution"]
    rows = frame[frame["split"] == split].sort_values("pair_id")
    if rows.empty:
        raise ValueError(f"{dataset_dir}/pairs.parquet has no {split} pairs")
    prompts = []
    for row in rows.itertuples():
        scene = Scene.from_json(row.perfect_scene)
        clauses = {o.colour: {"class": f"{o.colour} {o.shape}", "count": 1, "color": o.colour} for o in scene.objects}
        relations = [Relation.from_dict(r) for r in json.loads(row.stated_relations)]
        boxes = {o.colour: tuple(side * v for v in o.box) for o in scene.objects}
        planar = next(
            (
                r
                for r in relations
                if r.kind in GENEVAL_RELATIONS
                and GENEVAL_RELATIONS[r.kind] in relative_position(boxes[r.subjects[0]], boxes[r.subjects[1]])
            ),
            None,
        )
        if planar is None:
            prompts.append({"tag": "color_attr", "prompt": row.prompt, "include": list(clauses.values())})
            continue
        subject, target = planar.subjects
        include = [clauses[target], {**clauses[subject], "position": [GENEVAL_RELATIONS[planar.kind], 0]}]
        include += [clause for colour, clause in clauses.items() if colour not in planar.subjects]
        prompts.append({"tag": "position", "prompt": row.prompt, "include": include})
    return prompts
