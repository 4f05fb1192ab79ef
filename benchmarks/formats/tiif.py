"""TIIF-Bench (Wei et al. 2025, "TIIF-Bench: How Does Your T2I Model Follow Your Instructions?").

Official files (https://github.com/A113N-W3I/TIIF-Bench, `data/`): a prompts directory (`testmini_prompts/`, or
`test_prompts/`) of `.jsonl` files, one per dimension, each line {"type", "short_description",
"long_description"}; and an evaluation-prompts directory (`testmini_eval_prompts/`) of `.jsonl` files whose lines
{"type", "yn_question_list", "yn_answer_list"} hold the yes/no questions and their expected answers, line for line
with the prompts of the same type. Each prompt is drawn from its short and its long description; the judge answers
the same questions for both images.

Scoring, as `eval/summary_results.py` and `eval/summary_dimension_results.py`:

    acc(dimension, length) = 100 * #(answer == expected) / #questions      (pooled over prompts and images)
    group(g, length)       = mean of acc(d, length) over g's dimensions that were evaluated
    overall(length)        = mean of group(g, length) over the nine groups that were evaluated

with the official groups in `GROUPS`; the paper's Basic Relation (BR), Attribute+Relation (AR) and
Relation+Reasoning (RR) are the groups "Relation", "Attribute+Relation" and "Relation+Reasoning" (`PAPER_GROUPS`).
An unparseable judge answer (None) counts as wrong and is counted. Our judge is deterministic (temperature 0, one
fixed template); the official `eval/eval_with_vlm.py` samples one of three templates at random for every call, at
temperature 1, so its numbers vary from run to run.
"""

from __future__ import annotations

import json
import os
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
LENGTHS = ("short", "long")
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
    index: int  # line number (from 0) within its dimension's file: the official image name is <index>.png
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
    unanswered: tuple[str, ...] = ()  # prompt keys with no answers at all
    ungrouped: tuple[str, ...] = ()  # evaluated dimensions that no official group lists
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
            "unanswered": list(self.unanswered),
            "ungrouped": list(self.ungrouped),
            "judge_note": self.judge_note,
        }


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


def load_tiif(prompts_dir: str | os.PathLike, eval_prompts_dir: str | os.PathLike) -> list[TiifPrompt]:
    """The prompts of every dimension in `eval_prompts_dir`, each with its descriptions from `prompts_dir`."""
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
    prompts = []
    for dimension, lines in evaluations.items():
        if len(descriptions.get(dimension, ())) != len(lines):
            raise BenchmarkFormatError(
                f"type {dimension!r}: {len(lines)} evaluation lines in {eval_prompts_dir} but "
                f"{len(descriptions.get(dimension, ()))} prompts in {prompts_dir}; they pair line for line"
            )
        for index, (line, description) in enumerate(zip(lines, descriptions[dimension], strict=True)):
            questions = tuple(str(q).strip() for q in line["yn_question_list"])
            expected = tuple(str(a).strip().lower() for a in line["yn_answer_list"])
            if len(questions) != len(expected) or not set(expected) <= {"yes", "no"}:
                raise BenchmarkFormatError(
                    f"type {dimension!r} line {index + 1}: needs one 'yes'/'no' answer per question, got "
                    f"{len(questions)} questions and answers {list(expected)}"
                )
            prompts.append(
                TiifPrompt(
                    dimension,
                    index,
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


def score_tiif(prompts: Sequence[TiifPrompt], answers: Answers) -> TiifScores:
    """Accuracy per dimension and length, the official groups and the overall score (module docstring)."""
    by_key = {prompt.key: prompt for prompt in prompts}
    unknown = sorted(set(answers) - set(by_key))
    if unknown:
        raise ValueError(f"answers for prompts the benchmark does not have: {unknown[:5]}")
    correct: dict[tuple[str, str], int] = defaultdict(int)
    total: dict[tuple[str, str], int] = defaultdict(int)
    unparseable = 0
    for key, per_length in answers.items():
        prompt = by_key[key]
        for length, images in per_length.items():
            if length not in LENGTHS:
                raise ValueError(f"prompt {key}: unknown length {length!r}; known: {LENGTHS}")
            for image, given in images.items():
                if len(given) != len(prompt.questions) or any(a not in ANSWERS for a in given):
                    raise ValueError(
                        f"prompt {key} {length} image {image}: needs one 'yes'/'no'/None per question "
                        f"({len(prompt.questions)}), got {list(given)}"
                    )
                total[prompt.dimension, length] += len(given)
                correct[prompt.dimension, length] += sum(a == e for a, e in zip(given, prompt.expected, strict=True))
                unparseable += sum(a is None for a in given)
    dimensions: dict[str, dict[str, float]] = defaultdict(dict)
    for (dimension, length), count in sorted(total.items()):
        dimensions[dimension][length] = 100.0 * correct[dimension, length] / count
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
    grouped = {d for members in GROUPS.values() for d in members}
    return TiifScores(
        dict(dimensions),
        groups,
        overall,
        sum(total.values()),
        unparseable,
        tuple(prompt.key for prompt in prompts if prompt.key not in answers),
        tuple(d for d in dimensions if d not in grouped),
    )


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
