"""TIIF-Bench (Wei et al. 2025, "TIIF-Bench: How Does Your T2I Model Follow Your Instructions?").

Official files (https://github.com/A113N-W3I/TIIF-Bench, `data/`): prompts directories (`test_prompts/`,
`testmini_prompts/`) of `.jsonl` files, one per dimension, each line {"type", "short_description",
"long_description"}; evaluation-prompts directories (`test_eval_prompts/`, `testmini_eval_prompts/`) whose lines
{"type", "yn_question_list", "yn_answer_list"} hold the yes/no questions and their expected answers, line for line
with the prompts of the same type; and `testmini_sample_idx.json`, {type: line numbers of the test files}, the
testmini subset. A prompt's key is "<type>/<line>", its images `<line>.png`, and the official judge outputs'
`line_idx` is that line.

testmini: the official evaluation runs it as the *test* files filtered by `sample_idx_file`, so its line numbers
(image names, judge outputs' `line_idx`: "real_world/27") count lines of the test files. `load_tiif(..., sample_index=
testmini_sample_idx.json)` numbers prompts that way from either pair of folders: from the test folders it keeps the
lines the index lists; from the testmini folders (a type's file then holds exactly as many lines as the index lists
for it) line i is test line `index[type][i]`. That pairing assumes the testmini files list their prompts in the
index's order (not checked against the official data). Without the index, prompts are numbered by their
line in the files read, which for the testmini folders matches no official image name or judge output.

Scoring, as `eval/summary_results.py` and `eval/summary_dimension_results.py`:

    acc(dimension, length) = 100 * #(answer == expected) / #questions      (pooled over prompts and images)
    group(g, length)       = mean of acc(d, length) over g's dimensions that were evaluated
    overall(length)        = mean of group(g, length) over the nine groups that were evaluated

with the official groups in `GROUPS`; the paper's Basic Relation (BR), Attribute+Relation (AR) and
Relation+Reasoning (RR) are the groups "Relation", "Attribute+Relation" and "Relation+Reasoning" (`PAPER_GROUPS`).
Two variants (`score_tiif`): `official_compatible` rounds each accuracy, as a fraction, to 4 decimals before the
means (as summary_results.py) and skips an answer list that does not give one yes/no per question, with a warning (a
malformed judge output line there); `corrected` keeps full precision and counts every question of a malformed
answer list wrong, the rule it applies to an unparseable answer (None) too: every question asked stays in the
denominator, so an image that breaks the judge cannot raise a score by leaving it. Both count malformed lists
(`num_malformed`) and what they skipped (`skipped_answer_lists`). Our judge is deterministic (temperature 0, one
fixed template); the official `eval/eval_with_vlm.py` samples one of three templates at random for every call, at
temperature 1, so its numbers vary from run to run.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.formats.errors import BenchmarkFormatError, require_path
from benchmarks.formats.spatialworld import (
    SpatialWorldPrompt,
    existence_question,
    is_depth,
    relation_question,
    short_description,
)
from shared.io import atomic_write_text

OFFICIAL_REPO = "https://github.com/A113N-W3I/TIIF-Bench"
PROMPTS_DIR_NAME = "prompts"
EVAL_PROMPTS_DIR_NAME = "eval_prompts"
SAMPLE_INDEX_NAME = "testmini_sample_idx.json"
LENGTHS = ("short", "long")
VARIANTS = ("official_compatible", "corrected")
ANSWERS = ("yes", "no", None)

# eval/summary_dimension_results.py: the nine groups and their dimensions ("texture+color" is listed there too;
# a dimension that was not evaluated is skipped, as there).
GROUPS: dict[str, tuple[str, ...]] = {
    "Attribute": ("shape+color", "color+texture", "texture+color", "shape+texture"),
    "Relation": ("2d_spatial_relation", "3d_spatial_relation", "action+2d", "action+3d"),
    "Reasoning": ("numeracy", "negation", "differentiation", "comparison"),
    "Attribute+Relation": (
        "action+color",
        "action+texture",
        "color+2d",
        "color+3d",
        "shape+2d",
        "shape+3d",
        "texture+2d",
        "texture+3d",
    ),
    "Attribute+Reasoning": (
        "numeracy+color",
        "numeracy+texture",
        "comparison+color",
        "comparison+texture",
        "differentiation+color",
        "differentiation+texture",
        "negation+color",
        "negation+texture",
    ),
    "Relation+Reasoning": (
        "numeracy+2d",
        "numeracy+3d",
        "comparison+2d",
        "comparison+3d",
        "differentiation+2d",
        "differentiation+3d",
        "negation+2d",
        "negation+3d",
    ),
    "Text Generation": ("text",),
    "Style Control": ("style",),
    "Complex": ("real_world",),
}
PAPER_GROUPS = {"BR": "Relation", "AR": "Attribute+Relation", "RR": "Relation+Reasoning"}
JUDGE_NOTE = (
    "deterministic judge (temperature 0, one fixed template); the official eval_with_vlm.py samples one of three "
    "templates at random per call at temperature 1.0"
)

Answers = Mapping[str, Mapping[str, Mapping[int, Sequence[str | None]]]]  # key -> length -> image -> answers


@dataclass(frozen=True)
class TiifPrompt:
    dimension: str  # the line's "type", e.g. "2d_spatial_relation"
    index: int  # line number (from 0) within its dimension's test file: the image name <index>.png, the line_idx
    short_description: str
    long_description: str
    questions: tuple[str, ...]
    expected: tuple[str, ...]  # "yes" | "no", one per question

    @property
    def key(self) -> str:
        return f"{self.dimension}/{self.index}"


@dataclass(frozen=True)
class TiifScores:
    """Every number is a percentage; lengths without any answer are absent."""

    dimensions: dict[str, dict[str, float]]  # dimension -> length -> accuracy
    groups: dict[str, dict[str, float]]  # official group -> length -> mean of its dimensions
    overall: dict[str, float]  # length -> mean of the groups
    num_questions: int  # answers read, all images and lengths
    num_unparseable: int  # answers the judge could not parse: counted wrong
    num_malformed: int = 0  # answer lists without one yes/no/None per question
    unanswered: tuple[str, ...] = ()  # prompt keys with no answers at all
    ungrouped: tuple[str, ...] = ()  # evaluated dimensions that no official group lists
    skipped_answer_lists: int = 0  # malformed lists left out (official-compatible); corrected counts them wrong
    judge_note: str = JUDGE_NOTE
    paper_groups: dict[str, dict[str, float]] = field(init=False)  # "BR" | "AR" | "RR" -> length -> group score

    def __post_init__(self) -> None:
        paper = {short: self.groups[name] for short, name in PAPER_GROUPS.items() if name in self.groups}
        object.__setattr__(self, "paper_groups", paper)

    def to_dict(self) -> dict:
        return {
            "overall": self.overall,
            "paper_groups": self.paper_groups,
            "groups": self.groups,
            "dimensions": self.dimensions,
            "num_questions": self.num_questions,
            "num_unparseable": self.num_unparseable,
            "num_malformed": self.num_malformed,
            "skipped_answer_lists": self.skipped_answer_lists,
            "unanswered": list(self.unanswered),
            "ungrouped": list(self.ungrouped),
            "judge_note": self.judge_note,
        }


@dataclass(frozen=True)
class TiifResult:
    official_compatible: TiifScores
    corrected: TiifScores

    def to_dict(self) -> dict:
        return {variant: getattr(self, variant).to_dict() for variant in VARIANTS}


# --- loading ----------------------------------------------------------------------------------------------------
def _read_jsonl_dir(directory: Path, fields: tuple[str, ...]) -> dict[str, list[dict]]:
    """{type: lines in file order} for every *.jsonl file of `directory`; one type per file, as the official
    evaluation assumes (it reads the type from a file's first line and names images by line number)."""
    by_type: dict[str, list[dict]] = {}
    for path in sorted(directory.glob("*.jsonl")):
        lines = []
        for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except json.JSONDecodeError as error:
                raise BenchmarkFormatError(f"{path} line {number} is not JSON: {error}") from error
            absent = [f for f in fields if not isinstance(line, dict) or f not in line]
            if absent:
                raise BenchmarkFormatError(f"{path} line {number} lacks {absent}")
            lines.append(line)
        types = sorted({line["type"] for line in lines})
        if len(types) > 1:
            raise BenchmarkFormatError(f"{path} mixes types {types}; TIIF-Bench has one type per file")
        if types and types[0] in by_type:
            raise BenchmarkFormatError(f"{directory} has two files of type {types[0]!r}")
        if types:
            by_type[types[0]] = lines
    if not by_type:
        raise BenchmarkFormatError(f"{directory} has no TIIF-Bench .jsonl lines")
    return by_type


def load_sample_index(path: str | os.PathLike) -> dict[str, list[int]]:
    """{type: line numbers} of a sample index file (`testmini_sample_idx.json`): a JSON object from a dimension
    (its type, or its file name with or without `.jsonl`) to a list of distinct 0-based line numbers of its test
    file."""
    path = require_path(path, "a TIIF-Bench sample index (JSON: type -> line numbers)", OFFICIAL_REPO, "data/")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise BenchmarkFormatError(f"{path} is not JSON: {error}") from error
    if not isinstance(index, dict) or not all(
        isinstance(lines, list) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in lines)
        for lines in index.values()
    ):
        raise BenchmarkFormatError(f"{path}: expected a JSON object of type -> list of line numbers (0 or more)")
    repeated = [key for key, lines in index.items() if len(set(lines)) != len(lines)]
    if repeated:
        raise BenchmarkFormatError(f"{path}: {repeated[:5]} list a line number twice")
    return {Path(str(key)).name.removesuffix(".jsonl"): lines for key, lines in index.items()}


def _subset_type(name: str, types: set[str], where: Path) -> str:
    """The dimension a sample-index key names: the type itself, or a file stem that starts with it."""
    if name in types:
        return name
    matches = [t for t in types if name.startswith(t)]
    if len(matches) != 1:
        raise BenchmarkFormatError(f"{where}: key {name!r} names no single dimension of {sorted(types)}")
    return matches[0]


def _test_line_numbers(dimension: str, num_lines: int, listed: list[int], where: str) -> dict[int, int]:
    """{line of the file read: its line number in the test file} for the lines a sample index keeps: the test file
    keeps the listed lines under their own numbers; the testmini file, which holds exactly the listed lines, gives
    its line i the number listed[i]. (When the test file holds exactly the listed lines, in order, both agree.)"""
    if num_lines == len(listed):
        return dict(enumerate(listed))
    beyond = sorted(n for n in listed if n >= num_lines)
    if beyond:
        raise BenchmarkFormatError(
            f"{where}: type {dimension!r} lists lines {beyond[:5]} beyond its {num_lines} prompts, and its "
            f"{len(listed)} line numbers are not one per prompt either: these prompts are neither the test file "
            "the index numbers nor its testmini subset"
        )
    return {number: number for number in sorted(listed)}


def load_tiif(
    prompts_dir: str | os.PathLike,
    eval_prompts_dir: str | os.PathLike,
    sample_index: str | os.PathLike | None = None,
) -> list[TiifPrompt]:
    """The prompts of every dimension in `eval_prompts_dir`, each with its descriptions from `prompts_dir`. With
    `sample_index` (`testmini_sample_idx.json`), only the dimensions and lines it lists, numbered by their line in
    the test files whether the dirs are the test or the testmini ones (module docstring)."""
    prompts_dir = require_path(
        prompts_dir,
        "TIIF-Bench's prompts directory (<dimension>.jsonl with short_description and long_description)",
        OFFICIAL_REPO,
        "data/testmini_prompts/",
        directory=True,
    )
    eval_prompts_dir = require_path(
        eval_prompts_dir,
        "TIIF-Bench's evaluation prompts directory (<dimension>.jsonl with yn_question_list and yn_answer_list)",
        OFFICIAL_REPO,
        "data/testmini_eval_prompts/",
        directory=True,
    )
    descriptions = _read_jsonl_dir(prompts_dir, ("type", "short_description", "long_description"))
    evaluations = _read_jsonl_dir(eval_prompts_dir, ("type", "yn_question_list", "yn_answer_list"))
    subset = None
    if sample_index is not None:
        by_key = load_sample_index(sample_index)
        subset = {_subset_type(key, set(evaluations), Path(sample_index)): lines for key, lines in by_key.items()}
    prompts = []
    for dimension, lines in evaluations.items():
        if subset is not None and dimension not in subset:
            continue
        if len(descriptions.get(dimension, ())) != len(lines):
            raise BenchmarkFormatError(
                f"type {dimension!r}: {len(lines)} evaluation lines in {eval_prompts_dir} but "
                f"{len(descriptions.get(dimension, ()))} prompts in {prompts_dir}; they pair line for line"
            )
        if subset is None:
            numbers = {line: line for line in range(len(lines))}
        else:
            numbers = _test_line_numbers(dimension, len(lines), subset[dimension], str(sample_index))
        for line, number in numbers.items():
            evaluation, description = lines[line], descriptions[dimension][line]
            questions = tuple(str(q).strip() for q in evaluation["yn_question_list"])
            expected = tuple(str(a).strip().lower() for a in evaluation["yn_answer_list"])
            if len(questions) != len(expected) or not set(expected) <= {"yes", "no"}:
                raise BenchmarkFormatError(
                    f"type {dimension!r} line {line + 1} of {eval_prompts_dir}: needs one 'yes'/'no' answer per "
                    f"question, got {len(questions)} questions and answers {list(expected)}"
                )
            prompts.append(
                TiifPrompt(
                    dimension,
                    number,
                    str(description["short_description"]),
                    str(description["long_description"]),
                    questions,
                    expected,
                )
            )
    return prompts


# --- scoring ----------------------------------------------------------------------------------------------------
def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _malformed(given: Sequence, prompt: TiifPrompt) -> bool:
    return len(given) != len(prompt.questions) or any(a not in ANSWERS for a in given)


def _aggregate(dimensions: dict[str, dict[str, float]]) -> tuple[dict, dict]:
    """(groups, overall) from per-dimension accuracies: means over what was evaluated (module docstring)."""
    groups: dict[str, dict[str, float]] = {}
    for group, members in GROUPS.items():
        scores = {
            length: _mean(values)
            for length in LENGTHS
            if (values := [dimensions[d][length] for d in members if length in dimensions.get(d, {})])
        }
        if scores:
            groups[group] = scores
    overall = {
        length: _mean(values)
        for length in LENGTHS
        if (values := [scores[length] for scores in groups.values() if length in scores])
    }
    return groups, overall


def _score_variant(prompts: Sequence[TiifPrompt], answers: Answers, variant: str) -> TiifScores:
    by_key = {prompt.key: prompt for prompt in prompts}
    correct: dict[tuple[str, str], int] = defaultdict(int)
    total: dict[tuple[str, str], int] = defaultdict(int)
    unparseable = malformed = skipped = 0
    for key, per_length in answers.items():
        prompt = by_key[key]
        for length, images in per_length.items():
            for image, given in images.items():
                if _malformed(given, prompt):
                    malformed += 1
                    if variant == "official_compatible":
                        skipped += 1
                        warnings.warn(
                            f"TIIF-Bench prompt {key} {length} image {image}: {list(given)} is not one 'yes'/'no' "
                            f"per question ({len(prompt.questions)}); skipped, as the official summary does",
                            stacklevel=3,
                        )
                    else:
                        total[prompt.dimension, length] += len(prompt.questions)  # every question wrong
                    continue
                total[prompt.dimension, length] += len(given)
                correct[prompt.dimension, length] += sum(a == e for a, e in zip(given, prompt.expected, strict=True))
                unparseable += sum(a is None for a in given)
    dimensions: dict[str, dict[str, float]] = defaultdict(dict)
    for (dimension, length), count in sorted(total.items()):
        accuracy = 100.0 * correct[dimension, length] / count
        if variant == "official_compatible":  # summary_results.py rounds each accuracy (a fraction) to 4 decimals
            accuracy = round(100.0 * round(correct[dimension, length] / count, 4), 2)
        dimensions[dimension][length] = accuracy
    groups, overall = _aggregate(dimensions)
    grouped = {d for members in GROUPS.values() for d in members}
    return TiifScores(
        dict(dimensions),
        groups,
        overall,
        sum(total.values()),
        unparseable,
        malformed,
        tuple(prompt.key for prompt in prompts if prompt.key not in answers),
        tuple(d for d in dimensions if d not in grouped),
        skipped_answer_lists=skipped,
    )


def score_tiif(prompts: Sequence[TiifPrompt], answers: Answers) -> TiifResult:
    """Accuracy per dimension and length, the official groups and the overall score, in both variants (module
    docstring). Answers for unknown prompts or lengths are an error; malformed answer lists are not (counted)."""
    known = {prompt.key for prompt in prompts}
    unknown = sorted(set(answers) - known)
    if unknown:
        raise ValueError(
            f"answers for prompts the benchmark does not have: {unknown[:5]} (testmini keys count lines of the test "
            "files: load the test or testmini dirs with sample_index=testmini_sample_idx.json)"
        )
    for key, per_length in answers.items():
        for length in per_length:
            if length not in LENGTHS:
                raise ValueError(f"prompt {key}: unknown length {length!r}; known: {LENGTHS}")
    return TiifResult(*(_score_variant(prompts, answers, variant) for variant in VARIANTS))


# --- SpatialWorld in TIIF-Bench's format ------------------------------------------------------------------------
def spatialworld_dimension(prompt: SpatialWorldPrompt) -> str:
    """'3d_spatial_relation' when the prompt states a depth relation, else '2d_spatial_relation'."""
    return "3d_spatial_relation" if any(is_depth(r) for r in prompt.relations) else "2d_spatial_relation"


def write_tiif(prompts: Sequence[SpatialWorldPrompt], out_dir: str | os.PathLike) -> dict[str, str]:
    """Write `out_dir/prompts/<dimension>.jsonl` and `out_dir/eval_prompts/<dimension>.jsonl` for SpatialWorld
    prompts: long description = the SpatialWorld prompt, short = `short_description`; questions = one existence
    question per object, then one per stated relation, all expected "yes". Returns {prompt_id: TIIF key}."""
    out_dir = Path(out_dir)
    descriptions: dict[str, list[str]] = defaultdict(list)
    evaluations: dict[str, list[str]] = defaultdict(list)
    keys = {}
    for prompt in prompts:
        dimension = spatialworld_dimension(prompt)
        keys[prompt.prompt_id] = f"{dimension}/{len(descriptions[dimension])}"
        questions = [existence_question(name) for name in prompt.names]
        questions += [relation_question(relation, prompt) for relation in prompt.relations]
        description = {"type": dimension, "short_description": short_description(prompt)}
        descriptions[dimension].append(json.dumps({**description, "long_description": prompt.prompt}))
        evaluation = {"type": dimension, "yn_question_list": questions, "yn_answer_list": ["yes"] * len(questions)}
        evaluations[dimension].append(json.dumps(evaluation))
    for dimension in descriptions:
        atomic_write_text(out_dir / PROMPTS_DIR_NAME / f"{dimension}.jsonl", "\n".join(descriptions[dimension]) + "\n")
        atomic_write_text(
            out_dir / EVAL_PROMPTS_DIR_NAME / f"{dimension}.jsonl", "\n".join(evaluations[dimension]) + "\n"
        )
    return keys
