"""GenEval's rules: the position rule on hand-made boxes, the detection filter, the include/colour/position/exclude
clauses, the summary, the metadata loader's errors, and the whole task on a hand-written 6-prompt fixture with a
test-double detector (numbers computed by hand in the docstrings)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from benchmarks import geneval
from benchmarks.cache import CachedJudges, JudgeCache
from benchmarks.images import ImageFolder
from benchmarks.judges import Detection
from benchmarks.runner import run_task
from benchmarks.tasks import RunInputs, get_task


@pytest.mark.parametrize(
    ("box_a", "box_b", "expected"),
    [
        # offset (-30, 0); revised x = -(30 - 0.1 * 20) = -28; dx = -28 / 30 = -0.93
        ((0, 0, 10, 10), (30, 0, 40, 10), {"left of"}),
        ((30, 0, 40, 10), (0, 0, 10, 10), {"right of"}),
        # offset (0, 40); revised y = 38; dy = 0.95
        ((0, 40, 10, 50), (0, 0, 10, 10), {"below"}),
        ((0, 0, 10, 10), (0, 40, 10, 50), {"above"}),
        # offset (-1, 0): |offset| - 0.1 * (10 + 10) < 0 on both axes -> revised (0, 0): no relation
        ((0, 0, 10, 10), (1, 0, 11, 10), set()),
        # offset (-20, -20); revised (-18, -18); dx = dy = -18 / 28.28 = -0.64: both hold
        ((0, 0, 10, 10), (20, 20, 30, 30), {"left of", "above"}),
        # offset (-30, -8); revised (-28, -6); |offset| = 31.05; dx = -0.90, dy = -0.19: only left of
        ((0, 0, 10, 10), (30, 8, 40, 18), {"left of"}),
        # wide boxes: offset -20, 0.1 * (100 + 20) = 12 -> revised -8, dx = -0.4: no relation though revised != 0
        ((0, 0, 100, 10), (60, 0, 80, 10), set()),
    ],
)
def test_relative_position_on_hand_made_boxes(box_a, box_b, expected):
    assert geneval.relative_position(box_a, box_b) == expected


def _det(score, box=(0, 0, 10, 10), colour=None):
    return Detection(box, score, None, colour)


def test_keep_detections_thresholds_sorts_and_caps():
    found = {"cup": [_det(0.3), _det(0.5), _det(0.95), _det(0.31)], "dog": [_det(0.2)]}
    kept = geneval.keep_detections(found, "two_object")
    assert [d.score for d in kept["cup"]] == [0.95, 0.5, 0.31]  # > 0.3, most confident first
    assert "dog" not in kept
    assert [d.score for d in geneval.keep_detections(found, "counting")["cup"]] == [0.95]  # > 0.9 for counting
    many = {"cup": [_det(0.5 + i / 100) for i in range(20)]}
    assert len(geneval.keep_detections(many, "single_object")["cup"]) == 16


def test_clauses_colour_position_and_exclude():
    metadata = {
        "include": [
            {"class": "cat", "count": 1},
            {"class": "dog", "count": 2, "color": "red", "position": ["left of", 0]},
        ],
        "exclude": [{"class": "dog", "count": 3}],
    }
    cat = _det(0.9, (100, 0, 120, 20))
    red_left = [_det(0.9, (0, 0, 20, 20), "red"), _det(0.8, (0, 30, 20, 50), "red")]
    assert geneval.evaluate_image({"cat": [cat], "dog": red_left}, metadata) == (True, [])
    # the two most confident dogs must both be red; a third, red one, does not help
    wrong_colour = [red_left[0], _det(0.85, (0, 30, 20, 50), "blue"), red_left[1]]
    correct, reasons = geneval.evaluate_image({"cat": [cat], "dog": wrong_colour}, metadata)
    assert not correct and "expected red dog>=2" in reasons[0]
    # three dogs meet the exclude clause (count 3) even though the include clauses hold
    assert not geneval.evaluate_image({"cat": [cat], "dog": [*red_left, _det(0.7, (0, 60, 20, 80), "red")]}, metadata)[
        0
    ]
    # a dog right of the cat breaks the position; no cat: no target for the position
    right = [_det(0.9, (200, 0, 220, 20), "red"), red_left[1]]
    assert geneval.evaluate_image({"cat": [cat], "dog": right}, metadata)[1] == [
        "expected dog left of target, found right of target"
    ]
    assert "no target for dog" in geneval.evaluate_image({"dog": red_left}, metadata)[1][1]


def test_summary_is_the_mean_of_tag_accuracies():
    """position: 1 of 3 images correct, colors: 1 of 1 -> overall (1/3 + 1) / 2 = 0.666667 while the image mean is
    2/4 = 0.5; prompts with a correct image: p1 and p2 of 3."""
    records = [
        {"prompt_id": "p0", "tag": "position", "correct": False},
        {"prompt_id": "p0", "tag": "position", "correct": False},
        {"prompt_id": "p1", "tag": "position", "correct": True},
        {"prompt_id": "p2", "tag": "colors", "correct": True},
    ]
    summary = geneval.summarize(records)
    assert summary["accuracy_by_tag"] == {"colors": 1.0, "position": 0.333333}
    assert (
        summary["overall"] == 0.666667 and summary["correct_images"] == 0.5 and summary["correct_prompts"] == 0.666667
    )


def test_metadata_errors_name_the_file(tmp_path):
    with pytest.raises(geneval.GenEvalFormatError, match="evaluation_metadata.jsonl.*djghosh13/geneval"):
        geneval.load_metadata(tmp_path)
    bad = tmp_path / "evaluation_metadata.jsonl"
    bad.write_text(
        json.dumps({"tag": "position", "prompt": "p", "include": [{"class": "a", "count": 1}]}) + "\n{oops\n"
    )
    with pytest.raises(geneval.GenEvalFormatError, match="line 2 is not JSON"):
        geneval.load_metadata(bad)
    bad.write_text(
        json.dumps(
            {"tag": "position", "prompt": "p", "include": [{"class": "a", "count": 1, "position": ["left of", 0]}]}
        )
    )
    with pytest.raises(geneval.GenEvalFormatError, match="line 1: 'position' must be"):
        geneval.load_metadata(bad)


# --- the whole task on a 6-prompt fixture --------------------------------------------------------------------------
PROMPTS = [
    {"tag": "single_object", "prompt": "a photo of a cup", "include": [{"class": "cup", "count": 1}]},
    {
        "tag": "two_object",
        "prompt": "a cup and a dog",
        "include": [{"class": "cup", "count": 1}, {"class": "dog", "count": 1}],
    },
    {
        "tag": "counting",
        "prompt": "three apples",
        "include": [{"class": "apple", "count": 3}],
        "exclude": [{"class": "apple", "count": 4}],
    },
    {"tag": "colors", "prompt": "a red car", "include": [{"class": "car", "count": 1, "color": "red"}]},
    {
        "tag": "position",
        "prompt": "a dog left of a cat",
        "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["left of", 0]}],
    },
    {
        "tag": "color_attr",
        "prompt": "a yellow bench and a green vase",
        "include": [{"class": "bench", "count": 1, "color": "yellow"}, {"class": "vase", "count": 1, "color": "green"}],
    },
]
LEFT, RIGHT = (0, 0, 20, 20), (60, 0, 80, 20)
# (prompt index, seed) -> detections; the comment says whether GenEval counts the image correct
DETECTIONS = {
    (0, 0): {"cup": [_det(0.95)]},  # correct
    (0, 1): {"cup": [_det(0.25)]},  # below 0.3: wrong
    (1, 0): {"cup": [_det(0.8)], "dog": [_det(0.2)]},  # dog below 0.3: wrong
    (1, 1): {"cup": [_det(0.8)]},  # no dog: wrong
    (2, 0): {"apple": [_det(0.95), _det(0.92), _det(0.91), _det(0.5)]},  # 3 above 0.9: correct
    (2, 1): {"apple": [_det(0.95), _det(0.95), _det(0.95), _det(0.93)]},  # 4 apples meet the exclude clause: wrong
    (3, 0): {"car": [_det(0.9, colour="red")]},  # correct
    (3, 1): {"car": [_det(0.9, colour="red"), _det(0.8, colour="blue")]},  # the most confident is red: correct
    (4, 0): {"cat": [_det(0.9, RIGHT)], "dog": [_det(0.9, LEFT)]},  # correct
    (4, 1): {"cat": [_det(0.9, LEFT)], "dog": [_det(0.9, RIGHT)]},  # dog right of the cat: wrong
    (5, 0): {"bench": [_det(0.9, colour="yellow")], "vase": [_det(0.9, colour="green")]},  # correct
    (5, 1): {"bench": [_det(0.9, colour="yellow")], "vase": [_det(0.9, colour="yellow")]},  # vase not green: wrong
}


class TableDetector:
    """Test double: an image is a solid colour (10 * prompt index, 10 * seed, 0); detections come from DETECTIONS."""

    name, template_version = "table", "1"

    def __init__(self):
        self.calls = 0

    def detect(self, image, classes):
        self.calls += 1
        red, green, _ = image.getpixel((0, 0))
        return DETECTIONS[(red // 10, green // 10)]


def test_geneval_task_on_a_six_prompt_fixture(tmp_path):
    """Per tag (2 images each): single_object 1/2, two_object 0/2, counting 1/2, colors 2/2, position 1/2,
    color_attr 1/2; overall = (0.5 + 0 + 0.5 + 1 + 0.5 + 0.5) / 6 = 0.5; correct images 6/12; prompts with a
    correct image 5/6 = 0.833333; seed 2 of every prompt is missing from the folder and counted."""
    metadata = tmp_path / "evaluation_metadata.jsonl"
    metadata.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    for index, seed in DETECTIONS:
        (tmp_path / "images" / f"{index:05d}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (10 * index, 10 * seed, 0)).save(tmp_path / "images" / f"{index:05d}" / f"{seed}.png")
    detector = TableDetector()
    judges = CachedJudges(JudgeCache(tmp_path / "cache.sqlite"), "geneval", detector=detector)
    inputs = RunInputs(judges, data=metadata, images=ImageFolder(tmp_path / "images"), images_per_prompt=3)
    result = run_task(get_task("geneval"), inputs, tmp_path / "out")
    assert result.summary["accuracy_by_tag"] == {
        "single_object": 0.5,
        "two_object": 0.0,
        "counting": 0.5,
        "colors": 1.0,
        "position": 0.5,
        "color_attr": 0.5,
    }
    assert result.summary["overall"] == 0.5 and result.summary["correct_images"] == 0.5
    assert result.summary["correct_prompts"] == 0.833333
    assert (result.summary["num_images"], result.summary["num_prompts"], result.summary["missing_images"]) == (12, 6, 6)
    assert detector.calls == 12 and result.summary["colour_unread_images"] == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| **overall** (mean of tags) | 0.5000 |" in report and "6 missing" in report


class ColourBlindDetector:
    """Test double: one confident car without a colour reading."""

    name, template_version = "colour-blind", "1"

    def detect(self, image, classes):
        return {"car": [_det(0.9)]}


def test_colour_clauses_without_a_colour_reading_are_counted(tmp_path):
    metadata = tmp_path / "evaluation_metadata.jsonl"
    metadata.write_text(
        json.dumps(PROMPTS[3]) + "\n" + json.dumps({**PROMPTS[0], "include": [{"class": "car", "count": 1}]})
    )
    for index in range(2):
        (tmp_path / "images" / f"{index:05d}").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / f"{index:05d}" / "0.png")
    judges = CachedJudges(JudgeCache(tmp_path / "cache.sqlite"), "geneval", detector=ColourBlindDetector())
    inputs = RunInputs(judges, data=metadata, images=ImageFolder(tmp_path / "images"), images_per_prompt=1)
    summary = run_task(get_task("geneval"), inputs, tmp_path / "out").summary
    assert summary["accuracy_by_tag"] == {"colors": 0.0, "single_object": 1.0} and summary["colour_unread_images"] == 1


# --- class names and the two summary variants ----------------------------------------------------------------------
# COCO's 80 category names (instances_val2017.json "categories", as in a COCO checkpoint's id2label), in id order
COCO_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip


def test_every_geneval_class_maps_to_a_coco_label():
    """All 80 GenEval class names, in order, map onto COCO's 80 label names; only the three GenEval spells out
    differ ("computer mouse" -> "mouse", "tv remote" -> "remote", "computer keyboard" -> "keyboard")."""
    coco = list(COCO_NAMES)
    assert len(coco) == len(set(coco)) == len(geneval.CLASS_NAMES) == 80
    assert [geneval.coco_label(name) for name in geneval.CLASS_NAMES] == coco
    changed = {name: geneval.coco_label(name) for name in geneval.CLASS_NAMES if geneval.coco_label(name) != name}
    assert changed == {"computer mouse": "mouse", "tv remote": "remote", "computer keyboard": "keyboard"}
    assert geneval.coco_label("red square") == "red square"  # SpatialWorld names pass through


class CocoDetector:
    """Test double with a COCO checkpoint's label names: refuses any other name (as `Mask2FormerDetector` does) and
    finds one confident object of every class it is asked for."""

    name, template_version = "coco", "1"

    def detect(self, image, classes):
        unknown = sorted(set(classes) - set(COCO_NAMES))
        if unknown:
            raise ValueError(f"detector coco has no classes {unknown}")
        return {name: [_det(0.95)] for name in classes}


def test_all_80_classes_run_with_a_coco_named_detector(tmp_path):
    """One single_object prompt per GenEval class: none is refused, every image is correct (accuracy 1.0)."""
    metadata = tmp_path / "evaluation_metadata.jsonl"
    prompts = [
        {"tag": "single_object", "prompt": f"a photo of a {name}", "include": [{"class": name, "count": 1}]}
        for name in geneval.CLASS_NAMES
    ]
    metadata.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    for index in range(len(prompts)):
        (tmp_path / "images" / f"{index:05d}").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / f"{index:05d}" / "0.png")
    judges = CachedJudges(JudgeCache(tmp_path / "cache.sqlite"), "geneval", detector=CocoDetector())
    inputs = RunInputs(judges, data=metadata, images=ImageFolder(tmp_path / "images"), images_per_prompt=1)
    summary = run_task(get_task("geneval"), inputs, tmp_path / "out").summary
    assert summary["accuracy_by_tag"] == {"single_object": 1.0} and summary["num_images"] == 80


def test_official_grouping_merges_prompts_with_identical_metadata(tmp_path):
    """Prompts 0 and 1 have identical metadata ("a photo of a cup"); prompt 0's image finds no cup, prompt 1's does;
    prompt 2 ("a dog") finds no dog. Images: 1 of 3 correct; single_object accuracy 1/3 in both variants.
    official_compatible (summary_scores.py groups by metadata): prompts {cup, dog} -> 1 of 2 with a correct image
    = 0.5, 2 prompts.  corrected (by index): prompts {0, 1, 2} -> 1 of 3 = 0.333333, 3 prompts; merged_prompts 1."""
    cup = {"tag": "single_object", "prompt": "a photo of a cup", "include": [{"class": "cup", "count": 1}]}
    dog = {"tag": "single_object", "prompt": "a photo of a dog", "include": [{"class": "dog", "count": 1}]}
    metadata = tmp_path / "evaluation_metadata.jsonl"
    metadata.write_text("".join(json.dumps(p) + "\n" for p in (cup, cup, dog)))
    for index in range(3):
        (tmp_path / "images" / f"{index:05d}").mkdir(parents=True)
        Image.new("RGB", (8, 8), (10 * index, 0, 0)).save(tmp_path / "images" / f"{index:05d}" / "0.png")

    class FoundOnlyInImageOne:
        name, template_version = "one", "1"

        def detect(self, image, classes):
            return {"cup": [_det(0.9)]} if image.getpixel((0, 0))[0] == 10 else {}

    judges = CachedJudges(JudgeCache(tmp_path / "cache.sqlite"), "geneval", detector=FoundOnlyInImageOne())
    inputs = RunInputs(judges, data=metadata, images=ImageFolder(tmp_path / "images"), images_per_prompt=1)
    summary = run_task(get_task("geneval"), inputs, tmp_path / "out").summary
    official, corrected = summary["official_compatible"], summary["corrected"]
    assert official["accuracy_by_tag"] == corrected["accuracy_by_tag"] == {"single_object": 0.333333}
    assert (official["correct_prompts"], official["num_prompts"]) == (0.5, 2)
    assert (corrected["correct_prompts"], corrected["num_prompts"]) == (0.333333, 3)
    assert summary["merged_prompts"] == 1 and summary["correct_prompts"] == 0.5
