"""GenEval (Ghosh et al., NeurIPS 2023): object-focused prompts checked by rules on detections. Pure functions that
follow the official `evaluation/evaluate_images.py` and `summary_scores.py`:

- metadata: one JSON object per line of `evaluation_metadata.jsonl` (553 prompts): `prompt`, `tag` (single_object,
  two_object, counting, colors, position, color_attr), `include` clauses ({class, count, optional color, optional
  position: [relation, index of an earlier include clause]}) and optional `exclude` clauses ({class, count}).
- detections kept: score > 0.3 (> 0.9 for the counting tag), sorted by score, at most 16 per class.
- include clause: the `count` most confident detections of its class must exist; with a colour, all of those must
  have that colour; with a position, every one of them must stand in the relation to every object of the target
  clause, which must itself have been met. Exclude clause: fails when >= count detections of its class are kept.
- position of A relative to B (pixel boxes, image y down):
      offset  = centre_A - centre_B                                        # [2]
      revised = max(|offset| - 0.1 * (dim_A + dim_B), 0) * sign(offset)     # [2], dim = (width, height)
      no relation if every |revised| < 1e-3, else (dx, dy) = revised / |offset|
      left of: dx < -0.5, right of: dx > 0.5, above: dy < -0.5, below: dy > 0.5 (several can hold)
- summary (`summary_scores.py`): accuracy per tag over images; overall = mean of the (unrounded) tag accuracies;
  also the fraction of correct images and of prompts with at least one correct image. The official script groups
  images into prompts by their metadata (`df.groupby('metadata')`), so prompts whose metadata are identical count
  as one: their images are pooled, one correct image makes them all count, and the prompt count shrinks. The
  `official_compatible` variant does the same (the number to report beside published scores); the `corrected` one
  counts prompts by their index, each with its own images, which is what "% correct prompts" means
  (`summarize_variants`; `merged_prompts` counts the prompts the official grouping folds into another). The
  official 553 prompts are all distinct, so there the two agree; the tag accuracies and overall always agree.
- class names: GenEval's 80 (`CLASS_NAMES`, its `object_names.txt`, in order) are COCO's, except three it spells
  out ("computer mouse", "tv remote", "computer keyboard" for COCO's "mouse", "remote", "keyboard"; 33 of the 553
  prompts name one of them). mmdetection's detector is indexed by position, so the official script never sees the
  difference; a detector that names its classes (`config.id2label` of a transformers COCO checkpoint) is asked for
  `coco_label(name)`, and the CLIP colour prompts use `geneval_name(label)`, as the official ones say the class.

The official colour check classifies each detection's masked crop with CLIP; here the `Detector` gives a colour per
detection: the SpatialWorld detector reads it from the pixels, and a transformers detector gets GenEval's CLIP
reading through `benchmarks.detectors.ColourReadingDetector` (`--colour-model DIR`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.judges import Box, Detection

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")
THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
POSITION_THRESHOLD = 0.1
METADATA_FILE = "evaluation_metadata.jsonl"
OFFICIAL_METADATA = "prompts/evaluation_metadata.jsonl in https://github.com/djghosh13/geneval"
# evaluation/object_names.txt, in order: COCO's 80 categories as GenEval names them
CLASS_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "computer mouse", "tv remote", "computer keyboard", "cell phone", "microwave", "oven", "toaster",
    "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
# the GenEval names that are not COCO label names -> the COCO label name
COCO_LABELS = {"computer mouse": "mouse", "tv remote": "remote", "computer keyboard": "keyboard"}
GENEVAL_NAMES = {label: name for name, label in COCO_LABELS.items()}
VARIANTS = ("official_compatible", "corrected")


class GenEvalFormatError(ValueError):
    """The metadata file is missing or a line is not GenEval metadata."""


def _check_clause(clause: Any, where: str, *, include: bool, index: int) -> None:
    if not isinstance(clause, dict) or not isinstance(clause.get("class"), str):
        raise GenEvalFormatError(f"{where}: a clause must be an object with a string 'class', got {clause!r}")
    count = clause.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise GenEvalFormatError(f"{where}: clause {clause['class']!r} needs an integer 'count' >= 1, got {count!r}")
    if include and "color" in clause and not isinstance(clause["color"], str):
        raise GenEvalFormatError(f"{where}: 'color' must be a string, got {clause['color']!r}")
    if include and "position" in clause:
        position = clause["position"]
        if (
            not isinstance(position, list)
            or len(position) != 2
            or position[0] not in RELATIONS
            or not isinstance(position[1], int)
            or not 0 <= position[1] < index
        ):
            raise GenEvalFormatError(
                f"{where}: 'position' must be [one of {list(RELATIONS)}, index of an earlier include clause], got "
                f"{position!r}"
            )


def load_metadata(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The prompts of a GenEval metadata JSONL, checked line by line (one clear error naming the line)."""
    path = Path(path)
    if path.is_dir():
        path = path / METADATA_FILE
    if not path.is_file():
        raise GenEvalFormatError(f"GenEval metadata {path} not found: expected {METADATA_FILE} ({OFFICIAL_METADATA})")
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            metadata = json.loads(line)
        except json.JSONDecodeError as error:
            raise GenEvalFormatError(f"{where} is not JSON: {error}") from None
        if not isinstance(metadata, dict) or not isinstance(metadata.get("tag"), str):
            raise GenEvalFormatError(f"{where}: needs a string 'tag'")
        if not isinstance(metadata.get("prompt"), str):
            raise GenEvalFormatError(f"{where}: needs a string 'prompt'")
        for key in ("include", "exclude"):
            if not isinstance(metadata.get(key, []), list):
                raise GenEvalFormatError(f"{where}: '{key}' must be a list")
        if not metadata.get("include"):
            raise GenEvalFormatError(f"{where}: needs at least one 'include' clause")
        for index, clause in enumerate(metadata["include"]):
            _check_clause(clause, where, include=True, index=index)
        for clause in metadata.get("exclude", []):
            _check_clause(clause, where, include=False, index=0)
        prompts.append(metadata)
    if not prompts:
        raise GenEvalFormatError(f"{path} holds no prompts")
    return prompts


def relative_position(box_a: Box, box_b: Box, threshold: float = POSITION_THRESHOLD) -> set[str]:
    """The relations ("left of", "right of", "above", "below") of box A relative to box B (module docstring)."""
    centre_a = ((box_a[0] + box_a[2]) / 2, (box_a[1] + box_a[3]) / 2)
    centre_b = ((box_b[0] + box_b[2]) / 2, (box_b[1] + box_b[3]) / 2)
    dim_a = (abs(box_a[2] - box_a[0]), abs(box_a[3] - box_a[1]))
    dim_b = (abs(box_b[2] - box_b[0]), abs(box_b[3] - box_b[1]))
    offset = [centre_a[i] - centre_b[i] for i in range(2)]
    revised = [max(abs(offset[i]) - threshold * (dim_a[i] + dim_b[i]), 0.0) * _sign(offset[i]) for i in range(2)]
    if all(abs(value) < 1e-3 for value in revised):
        return set()
    norm = math.hypot(*offset)
    dx, dy = revised[0] / norm, revised[1] / norm
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def geneval_name(label: str) -> str:
    """The GenEval class name of a COCO label name (`coco_label`'s inverse): what GenEval's colour prompts say."""
    return GENEVAL_NAMES.get(label, label)


def coco_label(name: str) -> str:
    """The COCO label name (a COCO detector's `id2label`) of a GenEval class name; other names are returned as is
    (the SpatialWorld detector's "red square")."""
    return COCO_LABELS.get(name, name)


def _sign(value: float) -> float:
    return math.copysign(1.0, value) if value != 0 else 0.0


def keep_detections(detections: Mapping[str, list[Detection]], tag: str) -> dict[str, list[Detection]]:
    """Detections above the confidence threshold (COUNTING_THRESHOLD for the counting tag), most confident first,
    at most MAX_OBJECTS per class; classes left with none are dropped."""
    threshold = COUNTING_THRESHOLD if tag == "counting" else THRESHOLD
    kept = {}
    for name, found in detections.items():
        confident = sorted((d for d in found if d.score > threshold), key=lambda d: -d.score)[:MAX_OBJECTS]
        if confident:
            kept[name] = confident
    return kept


def clause_results(
    detections: Mapping[str, list[Detection]], metadata: Mapping[str, Any]
) -> list[tuple[bool, str | None]]:
    """(passed, the reason it did not) for each clause of one prompt's metadata, include clauses first, then exclude
    clauses, on one image's kept detections (`keep_detections`)."""
    results: list[tuple[bool, str | None]] = []
    matched_groups: list[list[Detection] | None] = []
    for clause in metadata["include"]:
        name, count = clause["class"], clause["count"]
        found = detections.get(name, [])[:count]
        reason = None if len(found) >= count else f"expected {name}>={count}, found {len(found)}"
        if reason is None and "color" in clause:
            colours = [d.colour for d in found]
            if colours.count(clause["color"]) < count:
                reason = f"expected {clause['color']} {name}>={count}, found colours {colours}"
        if reason is None and "position" in clause:
            relation, target = clause["position"]
            targets = matched_groups[target]
            if targets is None:
                reason = f"no target for {name} to be {relation}"
            else:
                for obj in found:
                    wrong = [sorted(relative_position(obj.box, t.box)) for t in targets]
                    wrong = [rels for rels in wrong if relation not in rels]
                    if wrong:
                        reason = f"expected {name} {relation} target, found {' and '.join(wrong[0])} target"
                        break
        results.append((reason is None, reason))
        matched_groups.append(found if reason is None else None)
    for clause in metadata.get("exclude", []):
        found = detections.get(clause["class"], [])
        if len(found) >= clause["count"]:
            results.append((False, f"expected {clause['class']}<{clause['count']}, found {len(found)}"))
        else:
            results.append((True, None))
    return results


def evaluate_image(detections: Mapping[str, list[Detection]], metadata: Mapping[str, Any]) -> tuple[bool, list[str]]:
    """(correct, reasons it is not) for one image's kept detections (`keep_detections`) and one prompt's metadata:
    correct when every clause passes (`clause_results`)."""
    results = clause_results(detections, metadata)
    return all(passed for passed, _ in results), [reason for passed, reason in results if not passed]


def summarize(records: list[dict[str, Any]], *, group_prompts_by: str = "prompt_id") -> dict[str, Any]:
    """GenEval's summary from per-image records ({"prompt_id", "tag", "correct"}, and "metadata" when grouping by
    it): accuracy per tag (over images), overall = mean of the tag accuracies, fraction of correct images and of
    prompts with a correct image, prompts being the distinct values of `group_prompts_by` ("prompt_id", or
    "metadata" as the official `summary_scores.py` groups them)."""
    tags = sorted({r["tag"] for r in records})
    by_tag = {}  # unrounded: the official overall is the mean of the exact tag accuracies
    for tag in tags:
        scored = [r["correct"] for r in records if r["tag"] == tag]
        by_tag[tag] = sum(scored) / len(scored)
    correct_by_prompt: dict[str, bool] = {}
    for record in records:
        key = record[group_prompts_by]
        correct_by_prompt[key] = correct_by_prompt.get(key, False) or bool(record["correct"])
    return {
        "overall": round(sum(by_tag.values()) / len(by_tag), 6) if by_tag else None,
        "accuracy_by_tag": {tag: round(accuracy, 6) for tag, accuracy in by_tag.items()},
        "correct_images": round(sum(r["correct"] for r in records) / len(records), 6) if records else None,
        "correct_prompts": (
            round(sum(correct_by_prompt.values()) / len(correct_by_prompt), 6) if correct_by_prompt else None
        ),
        "num_images": len(records),
        "num_prompts": len(correct_by_prompt),
    }


def summarize_variants(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Both variants (module docstring): `official_compatible` groups prompts by identical metadata as
    `summary_scores.py` does, `corrected` by prompt index; `merged_prompts` counts the prompts the official grouping
    folds into another. Records without "metadata" (written before it was recorded) fall back to their prompt id."""
    with_metadata = [{**r, "metadata": r.get("metadata", r["prompt_id"])} for r in records]
    official = summarize(with_metadata, group_prompts_by="metadata")
    corrected = summarize(records, group_prompts_by="prompt_id")
    return {
        "official_compatible": official,
        "corrected": corrected,
        "merged_prompts": corrected["num_prompts"] - official["num_prompts"],
    }
