"""The SpatialWorld judges: every relation kind's question and statement read back exactly, other wording unreadable
(counted, not guessed), and the detector-backed VQA, testpoint judge and Detector agreeing with the pixel detector's
own reading on real rendered dataset images."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from benchmarks.judges import Testpoint
from benchmarks.spatialworld import (
    Claim,
    SpatialWorldDetector,
    SpatialWorldTestpoints,
    SpatialWorldVQA,
    existence_question,
    existence_statement,
    parse_claim,
    relation_question,
    relation_statement,
)
from data_synthesis import KINDS, Relation, Scene, Truth, detect, load_pairs, read_relations

SHAPES = {"red": "circle", "blue": "plus sign", "green": "five-pointed star"}


def _relation(kind: str) -> Relation:
    arity = KINDS[kind][0]
    region = "top-left corner" if kind in ("in_region", "not_in_region") else None
    return Relation(kind, ("red", "blue", "green")[:arity], region)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_relation_reads_back_from_its_question_and_statement(kind):
    relation = _relation(kind)
    question, statement = relation_question(relation, SHAPES), relation_statement(relation, SHAPES)
    assert question.startswith("Is the red circle ") and question.endswith("?")
    assert statement.startswith("The red circle is ") and statement.endswith(".")
    assert parse_claim(question) == parse_claim(statement) == Claim("red", relation)
    assert parse_claim("  " + question.upper() + " ") == Claim("red", relation)  # case and spacing ignored


def test_the_format_writers_wording_reads_back():
    """The DPG/TIIF/UniGenBench writers phrase questions and testpoints with `benchmarks.formats.spatialworld`; the
    detector-backed judges must read every one of them."""
    from benchmarks.formats.spatialworld import SpatialWorldPrompt
    from benchmarks.formats.spatialworld import existence_question as format_existence
    from benchmarks.formats.spatialworld import relation_question as format_question
    from benchmarks.formats.spatialworld import relation_statement as format_statement

    prompt = SpatialWorldPrompt("p", "", (("red", "red circle"), ("blue", "blue square"), ("green", "green star")), ())
    for kind in KINDS:
        relation = _relation(kind)
        assert parse_claim(format_question(relation, prompt)) == Claim("red", relation)
        assert parse_claim(format_statement(relation, prompt)) == Claim("red", relation)
    assert parse_claim(format_existence("blue square")) == Claim("blue")


def test_existence_and_other_wording():
    assert parse_claim(existence_question("blue", "plus sign")) == Claim("blue")
    assert parse_claim(existence_statement("red", "circle")) == Claim("red")
    assert relation_question(_relation("between"), SHAPES) == (
        "Is the red circle between the blue plus sign and the green five-pointed star?"
    )
    for text in ("Is the red circle happy?", "Is the white circle above the blue square?", "Are there two dogs?", ""):
        assert parse_claim(text) is None
    with pytest.raises(ValueError, match="no shape word given for the blue object"):
        relation_question(_relation("left_of"), {"red": "circle"})


@pytest.fixture(scope="module")
def test_pairs(small_dataset):
    _, frame = load_pairs(small_dataset)
    return [
        (
            Image.open(small_dataset / row.perturbed_image).convert("RGB"),
            Scene.from_json(row.perturbed_scene),
            [Relation.from_dict(r) for r in json.loads(row.stated_relations)],
        )
        for row in frame[frame["split"] == "test"].head(4).itertuples()
    ]


def test_vqa_and_testpoints_answer_as_the_pixel_detector_reads(test_pairs):
    """Perturbed images, so some stated relations read as broken (answer no) and others as holding (yes)."""
    vqa, testpoints = SpatialWorldVQA(), SpatialWorldTestpoints()
    seen = set()
    for image, scene, relations in test_pairs:
        shapes = {obj.colour: obj.shape for obj in scene.objects}
        truths = read_relations(image, relations, sorted(shapes))
        expected = [truth is Truth.HOLDS for truth in truths]
        questions = [relation_question(r, shapes) for r in relations] + ["Is it sunny?"]
        answers = vqa.answer(image=image, questions=questions)
        assert list(answers.answers) == [*expected, None]
        assert answers.error == "1 questions not in SpatialWorld wording" and not answers.retryable
        points = [Testpoint("Layout-2D", relation_statement(r, shapes)) for r in relations]
        assert list(testpoints.judge(image=image, prompt="", testpoints=points).scores) == [int(e) for e in expected]
        seen.update(expected)
    assert seen == {True, False}


def test_detector_gives_pixel_boxes_masks_and_colours(test_pairs):
    image, scene, _ = test_pairs[0]
    colours = [obj.colour for obj in scene.objects]
    found = SpatialWorldDetector().detect(image, [f"{colours[0]} {scene.objects[0].shape}", colours[1]])
    layout = detect(image, colours[:2])
    x0, y0, x1, y1 = layout.box(colours[0])
    [detection] = found[f"{colours[0]} {scene.objects[0].shape}"]
    assert detection.box == (x0 * image.width, y0 * image.height, x1 * image.width, y1 * image.height)
    assert detection.colour == colours[0] and detection.score == 1.0
    assert (
        detection.mask.shape == (image.height, image.width) and detection.mask.sum() == layout.masks[colours[0]].sum()
    )
    assert found[colours[1]][0].colour == colours[1]
    with pytest.raises(ValueError, match="reads objects by colour; class 'dog'"):
        SpatialWorldDetector().detect(image, ["dog"])


def test_oracle_summary_reads_relations_by_family_among_all_found_images():
    """Three readable images and one missing file. Image 1 (both found): horizontal holds, vertical fails; image 2
    (both found): horizontal fails; image 3 (one object missing): horizontal and vertical fail and count only in the
    all-images rates. Among all-found images: horizontal 1 of 2 = .5, vertical 0 of 1 = 0, the other families have no
    relation (None, count 0); over all images horizontal is 1 of 3."""
    from benchmarks.tasks.spatialworld_oracle import summarize_oracle

    def relation(family: str, holds: bool) -> dict:
        return {"kind": {"horizontal": "left_of", "vertical": "above"}[family], "family": family, "holds": holds}

    records = [
        {
            "image": "ok",
            "found": [True, True],
            "relations": [relation("horizontal", True), relation("vertical", False)],
        },
        {"image": "ok", "found": [True, True], "relations": [relation("horizontal", False)]},
        {
            "image": "ok",
            "found": [True, False],
            "relations": [relation("horizontal", False), relation("vertical", False)],
        },
        {"image": "missing"},
    ]
    summary = summarize_oracle(records)
    assert summary["relation_accuracy_all_found"] == pytest.approx(1 / 3, abs=1e-6)
    assert summary["relation_accuracy_by_family"]["horizontal"] == pytest.approx(1 / 3, abs=1e-6)
    by_family = summary["relation_accuracy_all_found_by_family"]
    assert by_family["horizontal"] == 0.5 and by_family["vertical"] == 0.0 and by_family["depth"] is None
    counts = summary["num_relations_all_found_by_family"]
    assert counts["horizontal"] == 2 and counts["vertical"] == 1 and counts["depth"] == 0
