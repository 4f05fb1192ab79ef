"""UniGenBench / UniGenBench++ (Wang et al. 2025): prompts with testpoints, each judged 0/1 per image.

Official files (https://github.com/CodeGoat24/UniGenBench, `data/`): `test_prompts_en.csv` (and
`test_prompts_en_long.csv`, ...) with columns index, prompt_en, sub_dims_en; sub_dims_en is a JSON object whose
"Testpoints" list names the sub-dimensions tested ("Entity Layout - Two-Dimensional Space") and whose "Testpoint
Description" list says, testpoint by testpoint, what in the prompt is tested. The judge gives one 0/1 per testpoint
for each of 4 images per prompt. Scoring, as the official `calculate_scores` (in `eval/src/eval_common.py` in
recent versions of the repository; earlier ones compute the same at the end of `eval/gemini_en_eval.py` and
`eval/qwenvl_72b_en_eval.py`):

    main(t) = the testpoint up to its first "-" ("Entity Layout"); a testpoint without "-" is its own main dimension
    acc(sub dimension s)  = 100 * #(score == 1) / #(testpoint s judged)         (pooled over prompts and images)
    acc(main dimension m) = 100 * #(score == 1) / #(testpoints of m judged)     (pooled, not a mean of subs)

`calculate_scores` keeps each accuracy as a fraction rounded to 4 decimals (`round(acc, 4)` in its JSON summary) and
prints it as a percent to 2 places (`{acc:.2%}`, the same digits; the earlier scripts only print): 1 of 3 is 0.3333,
33.33%. `official_compatible` reports that number, 100 * round(acc, 4) (33.33); `corrected` keeps full precision
(33.333...).

The official scripts report main and sub dimensions only; `overall`, the mean of acc(m) over the main dimensions
judged, is ours and not an official UniGenBench number (summary.json carries it under `corrected/` only).
Layout 2D and 3D are the sub-dimensions `LAYOUT_2D` and `LAYOUT_3D`.

When it cannot parse the judge's reply, the official script asks again (up to `max_retries`, 10, in recent versions;
without limit in the first ones) and then writes the image's row without scores, which its score computation skips:
that image's testpoints leave the denominator. Two variants (`score_unigenbench`): `official_compatible` leaves out
every image with an unparseable judgement (None), its parseable testpoints too, and counts them in
`skipped_images`; `corrected` scores each None 0 and keeps the image (counted in `num_unparseable`), so that an image
that breaks the judge cannot raise a score by leaving it.
A row that cannot be read (bad JSON, lists of different lengths, a testpoint the official judge
has no definition for, ...) is listed in `malformed` with its row number and reason and skipped.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.formats.errors import BenchmarkFormatError, require_path
from benchmarks.formats.spatialworld import SpatialWorldPrompt, is_depth, relation_statement
from shared.io import atomic_write_text

OFFICIAL_REPO = "https://github.com/CodeGoat24/UniGenBench"
CSV_NAME = "test_prompts_en.csv"
COLUMNS = ("index", "prompt_en", "sub_dims_en")
IMAGES_PER_PROMPT = 4
LAYOUT_2D = "Entity Layout - Two-Dimensional Space"
LAYOUT_3D = "Entity Layout - Three-Dimensional Space"
# The 27 testpoints the official judge defines (its explanation_dict); it stops on any other.
SUB_DIMENSIONS = (
    "Relationship - Comparison",
    "Relationship - Composition",
    "Relationship - Inclusion",
    "Relationship - Similarity",
    "Compound - Imagination",
    "Compound - Feature Matching",
    "Attribute - Size",
    "Attribute - Expression",
    "Attribute - Quantity",
    "Attribute - Material",
    "Attribute - Color",
    "Attribute - Shape",
    LAYOUT_2D,
    LAYOUT_3D,
    "Action - Full-body (Character/Anthropomorphic)",
    "Action - Hand (Character/Anthropomorphic)",
    "Action - Animal",
    "Action - Contact Interaction",
    "Action - Non-contact Interaction",
    "Action - State",
    "Grammar - Negation",
    "Grammar - Pronoun Reference",
    "Grammar - Consistency",
    "World Knowledge",
    "Style",
    "Text Generation",
    "Logical Reasoning",
)

VARIANTS = ("official_compatible", "corrected")
OVERALL_NOTE = "mean of the main dimensions: not an official UniGenBench number (the official scripts report none)"
UNOFFICIAL = ("overall", "overall_note")  # keys of UniGenScores.to_dict() left out of the official-compatible variant

Answers = Mapping[int, Mapping[int, Sequence[int | None]]]  # prompt index -> image -> one 0/1/None per testpoint


def main_dimension(testpoint: str) -> str:
    """'Entity Layout - Two-Dimensional Space' -> 'Entity Layout'; 'Style' -> 'Style'."""
    return testpoint.split("-", 1)[0].strip()


@dataclass(frozen=True)
class UniGenPrompt:
    index: int
    prompt: str
    testpoints: tuple[str, ...]  # sub-dimension names, as in SUB_DIMENSIONS
    descriptions: tuple[str, ...]  # one per testpoint
    row: int  # 1-based data row of the CSV (header not counted)


@dataclass(frozen=True)
class MalformedRow:
    row: int  # 1-based data row of the CSV (header not counted)
    line: int  # the file line the row starts on (a quoted field may span lines)
    index: str  # the row's index cell as written
    reason: str


@dataclass(frozen=True)
class UniGenBench:
    path: Path
    prompts: tuple[UniGenPrompt, ...]
    malformed: tuple[MalformedRow, ...]  # skipped rows, each with why


@dataclass(frozen=True)
class UniGenScores:
    """Every number is a percentage (official_compatible's rounded to 2 places as the official script rounds)."""

    overall: float | None  # mean of the main dimensions (not an official number); None when nothing was judged
    main: dict[str, float]
    sub: dict[str, float]
    layout_2d: float | None  # sub[LAYOUT_2D] if judged
    layout_3d: float | None
    num_testpoints: int  # testpoint judgements read, all images
    num_unparseable: int  # judgements the judge could not parse: scored 0
    unanswered: tuple[int, ...]  # prompt indices without any answer
    malformed: tuple[MalformedRow, ...]  # rows of the CSV that were skipped
    skipped_images: int = 0  # images left out for an unparseable judgement (official-compatible variant)

    def to_dict(self) -> dict:
        return {
            "overall": self.overall,
            "overall_note": OVERALL_NOTE,
            "layout_2d": self.layout_2d,
            "layout_3d": self.layout_3d,
            "main": self.main,
            "sub": self.sub,
            "num_testpoints": self.num_testpoints,
            "num_unparseable": self.num_unparseable,
            "skipped_images": self.skipped_images,
            "unanswered": list(self.unanswered),
            "malformed": [{"row": m.row, "line": m.line, "index": m.index, "reason": m.reason} for m in self.malformed],
        }


@dataclass(frozen=True)
class UniGenResult:
    official_compatible: UniGenScores
    corrected: UniGenScores

    def to_dict(self) -> dict:
        """Both variants; `overall` (not an official number) under `corrected` only."""
        official = self.official_compatible.to_dict()
        return {
            "official_compatible": {key: value for key, value in official.items() if key not in UNOFFICIAL},
            "corrected": self.corrected.to_dict(),
        }


# --- loading ----------------------------------------------------------------------------------------------------
def _parse_row(cells: dict[str, str], seen: set[int]) -> tuple[int, str, tuple[str, ...], tuple[str, ...]] | str:
    """(index, prompt, testpoints, descriptions), or the reason the row cannot be read."""
    try:
        index = int(cells["index"].strip())
    except ValueError:
        return f"index {cells['index']!r} is not an integer"
    if index in seen:
        return f"index {index} repeats an earlier row's"
    prompt = cells["prompt_en"].strip()
    if not prompt:
        return "prompt_en is empty"
    try:
        sub_dims = json.loads(cells["sub_dims_en"])
    except json.JSONDecodeError as error:
        return f"sub_dims_en is not valid JSON ({error})"
    if not isinstance(sub_dims, dict):
        return "sub_dims_en is not a JSON object"
    testpoints, descriptions = sub_dims.get("Testpoints"), sub_dims.get("Testpoint Description")
    for name, value in (("Testpoints", testpoints), ("Testpoint Description", descriptions)):
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            return f"sub_dims_en's {name!r} is not a non-empty list of strings"
    if len(testpoints) != len(descriptions):
        return f"{len(testpoints)} testpoints but {len(descriptions)} testpoint descriptions"
    unknown = [t for t in testpoints if t not in SUB_DIMENSIONS]
    if unknown:
        return f"testpoints {unknown} are not among the official judge's {len(SUB_DIMENSIONS)} definitions"
    return index, prompt, tuple(testpoints), tuple(descriptions)


def load_unigenbench(csv_path: str | os.PathLike) -> UniGenBench:
    """The readable prompts of a UniGenBench CSV, and the rows that are not (listed, never silently dropped)."""
    csv_path = require_path(
        csv_path,
        "a UniGenBench prompt CSV (columns index, prompt_en, sub_dims_en)",
        OFFICIAL_REPO,
        f"data/{CSV_NAME} (or data/test_prompts_en_long.csv)",
    )
    prompts, malformed, seen = [], [], set()
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or any(c not in header for c in COLUMNS):
            raise BenchmarkFormatError(f"{csv_path}: header {header} lacks columns {list(COLUMNS)}")
        position = {name: header.index(name) for name in COLUMNS}
        start_line = reader.line_num + 1
        for row_number, cells in enumerate(reader, start=1):
            if len(cells) != len(header):
                parsed = f"{len(cells)} cells for {len(header)} columns"
            else:
                parsed = _parse_row({name: cells[i] for name, i in position.items()}, seen)
            if isinstance(parsed, str):
                index_cell = cells[position["index"]] if len(cells) > position["index"] else ""
                malformed.append(MalformedRow(row_number, start_line, index_cell, parsed))
            else:
                seen.add(parsed[0])
                prompts.append(UniGenPrompt(*parsed, row=row_number))
            start_line = reader.line_num + 1
    return UniGenBench(csv_path, tuple(prompts), tuple(malformed))


# --- scoring ----------------------------------------------------------------------------------------------------
def _accuracy(passed: int, judged: int, variant: str) -> float:
    """Percent of `judged` testpoints passed; official_compatible rounded where calculate_scores rounds: the
    fraction to 4 decimals (module docstring)."""
    if variant == "official_compatible":
        return round(100.0 * round(passed / judged, 4), 2)  # round(, 2) only drops the float noise of * 100
    return 100.0 * passed / judged


def _score_variant(benchmark: UniGenBench, answers: Answers, variant: str) -> UniGenScores:
    by_index = {prompt.index: prompt for prompt in benchmark.prompts}
    passed = {"main": defaultdict(int), "sub": defaultdict(int)}  # level -> dimension -> testpoints scored 1
    judged = {"main": defaultdict(int), "sub": defaultdict(int)}  # level -> dimension -> testpoints judged
    unparseable = skipped = 0
    for index, images in answers.items():
        prompt = by_index[index]
        for scores in images.values():
            if variant == "official_compatible" and None in scores:
                skipped += 1  # the official script has no result row for this image
                continue
            for testpoint, score in zip(prompt.testpoints, scores, strict=True):
                for level, dimension in (("main", main_dimension(testpoint)), ("sub", testpoint)):
                    judged[level][dimension] += 1
                    passed[level][dimension] += score == 1
                unparseable += score is None
    main, sub = (
        {name: _accuracy(passed[level][name], count, variant) for name, count in sorted(judged[level].items())}
        for level in ("main", "sub")
    )
    return UniGenScores(
        sum(main.values()) / len(main) if main else None,
        main,
        sub,
        sub.get(LAYOUT_2D),
        sub.get(LAYOUT_3D),
        sum(judged["sub"].values()),
        unparseable,
        tuple(prompt.index for prompt in benchmark.prompts if prompt.index not in answers),
        benchmark.malformed,
        skipped,
    )


def score_unigenbench(benchmark: UniGenBench, answers: Answers) -> UniGenResult:
    """Accuracy per main and sub dimension, Layout 2D/3D and the (unofficial) overall score in both variants
    (module docstring)."""
    by_index = {prompt.index: prompt for prompt in benchmark.prompts}
    unknown = sorted(set(answers) - set(by_index))
    if unknown:
        raise ValueError(f"answers for prompt indices the benchmark does not have: {unknown[:5]}")
    for index, images in answers.items():
        for image, scores in images.items():
            if len(scores) != len(by_index[index].testpoints) or any(s not in (0, 1, None) for s in scores):
                raise ValueError(
                    f"prompt {index} image {image}: needs one 0/1/None per testpoint "
                    f"({len(by_index[index].testpoints)}), got {list(scores)}"
                )
    return UniGenResult(*(_score_variant(benchmark, answers, variant) for variant in VARIANTS))


# --- SpatialWorld in UniGenBench's format -----------------------------------------------------------------------
def spatialworld_sub_dims(prompt: SpatialWorldPrompt) -> dict:
    """sub_dims_en for one prompt: one testpoint per stated relation, Layout 3D for depth relations, else 2D."""
    return {
        "Primary Categories": "SpatialWorld",
        "Secondary Categories": "Shape Layout",
        "Subjects": "Other Entity",
        "Sentence Structure": "Descriptive",
        "Testpoints": [LAYOUT_3D if is_depth(r) else LAYOUT_2D for r in prompt.relations],
        "Testpoint Description": [relation_statement(r, prompt) for r in prompt.relations],
    }


def write_unigenbench(prompts: Sequence[SpatialWorldPrompt], out_path: str | os.PathLike) -> dict[str, int]:
    """Write SpatialWorld prompts as a UniGenBench CSV at `out_path` (index = position in `prompts`); returns
    {prompt_id: index}."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for index, prompt in enumerate(prompts):
        writer.writerow([index, prompt.prompt, json.dumps(spatialworld_sub_dims(prompt), ensure_ascii=False)])
    atomic_write_text(out_path, buffer.getvalue())
    return {prompt.prompt_id: index for index, prompt in enumerate(prompts)}
