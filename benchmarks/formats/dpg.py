"""DPG-Bench (ELLA, Hu et al. 2024): dense prompts, each with a question graph answered yes/no by a VQA judge.

Official files (https://github.com/TencentQQGYLab/ELLA, `dpg_bench/`): `dpg_bench.csv`, one row per question with
columns item_id, text, keywords, proposition_id, dependency, category_broad, category_detailed, tuple,
question_natural_language (`dependency`: comma-separated parent proposition ids, "0" for none; an item's rows are
contiguous), and `prompts/<item_id>.txt` with each prompt. The official script asks every question of every one
of 4 images per prompt (tiled 2 x 2) and scores:

    score(q)   = 1 if the answer to q is "yes" and no parent of q scores 0, else 0
    s(image)   = mean_q score(q)
    s(item)    = mean over the item's images of s(image)
    DPG score  = 100 * mean over items of s(item)
    category c = 100 * mean of score(q) over every question of category c

`compute_dpg_bench.py` departs from that in three ways, all reproduced by the `official_compatible` variant:
  1. it skips the CSV's first data row (`if i == 0: continue`): the first item loses that proposition, and when
     another of its questions depends on it the parent lookup raises and the script drops the whole item
     ("Failed filename"), from the score and the categories;
  2. it applies the parent rule in CSV order to scores it zeroes in place, so zeroing only passes down a chain
     when parents come before their children;
  3. its categories use the *last* image's answers *before* the parent rule, named by the `tuple` column up to
     "(" with only its ends stripped ("relation - spatial"; internal spaces kept as written), the broad category
     up to the first "-".
An item whose question graph is malformed is dropped by itself, never the whole CSV; each variant lists what it
dropped in `failed_items` (counted in summary.json) and scores the rest:
  - a question depends on a proposition its item does not have: the script's parent lookup raises (when it gets
    that far: an earlier parent scoring 0 stops the lookup) and it drops that item ("Failed filename"); the
    official-compatible variant does the same, the corrected one always drops it;
  - a proposition id is repeated, or the dependencies form a cycle: the script scores the item as its dicts hold it
    (a repeated id keeps the first row's place and the last row's question and parents; the in-place rule never
    loops), and so does the official-compatible variant; the corrected one drops it (no well-defined ancestors);
  - the first item has no question besides the skipped first row: the script finds no questions for it and drops
    it; so does the official-compatible variant.
The `corrected` variant uses every row, the parent rule to any depth (a question scores 1 only if it and all its
ancestors are answered "yes", whatever the row order), every image's post-rule scores, and the category_broad /
category_detailed columns (detailed keys read "relation - spatial", as the official ones).

Answers come from the judge: {item_id: {image_index: {proposition_id: "yes" | "no" | None}}}, None for an answer
the judge could not parse; it scores 0 (as any non-"yes" answer does in the official script) and is counted.
"""

from __future__ import annotations

import csv
import io
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.formats.errors import BenchmarkFormatError, require_path
from benchmarks.formats.spatialworld import SpatialWorldPrompt, existence_question, relation_question
from shared.io import atomic_write_text

OFFICIAL_REPO = "https://github.com/TencentQQGYLab/ELLA"
CSV_NAME = "dpg_bench.csv"
PROMPTS_DIR_NAME = "prompts"
COLUMNS = (
    "item_id",
    "text",
    "keywords",
    "proposition_id",
    "dependency",
    "category_broad",
    "category_detailed",
    "tuple",
    "question_natural_language",
)
IMAGES_PER_PROMPT = 4
ANSWERS = ("yes", "no", None)

Answers = Mapping[str, Mapping[int, Mapping[int, str | None]]]  # item_id -> image -> proposition_id -> answer


@dataclass(frozen=True)
class DpgQuestion:
    proposition_id: int
    parents: tuple[int, ...]  # proposition ids; () where the CSV says "0"
    category_broad: str  # "relation"
    category_detailed: str  # "spatial"
    tuple_text: str  # "relation - spatial (cat, table, on)"
    question: str
    row: int  # 1-based data row in the CSV (the official script skips row 1)


@dataclass(frozen=True)
class DpgItem:
    item_id: str
    prompt: str
    questions: tuple[DpgQuestion, ...]  # in CSV order


@dataclass(frozen=True)
class DpgScores:
    """One scoring variant; every number is a percentage."""

    variant: str  # "official_compatible" | "corrected"
    score: float | None  # 100 * mean over scored items of s(item); None when no item was scored
    item_scores: dict[str, float]  # 100 * s(item)
    broad: dict[str, float]  # "relation" -> 100 * mean question score
    detailed: dict[str, float]  # "relation - spatial" -> 100 * mean question score
    num_unparseable: int  # answers the judge could not parse, among those this variant reads; scored 0
    failed_items: dict[str, str] = field(default_factory=dict)  # item -> why this variant drops it

    @property
    def relation_spatial(self) -> float | None:
        return self.detailed.get("relation - spatial")

    def to_dict(self) -> dict:
        return {
            "variant": self.variant,
            "score": self.score,
            "relation_spatial": self.relation_spatial,
            "broad": self.broad,
            "detailed": self.detailed,
            "num_items": len(self.item_scores),
            "num_unparseable": self.num_unparseable,
            "failed_items": self.failed_items,
            "item_scores": self.item_scores,
        }


@dataclass(frozen=True)
class DpgResult:
    official_compatible: DpgScores
    corrected: DpgScores
    unanswered_items: tuple[str, ...]  # items with no answers at all: not scored by either variant

    def to_dict(self) -> dict:
        return {
            "official_compatible": self.official_compatible.to_dict(),
            "corrected": self.corrected.to_dict(),
            "unanswered_items": list(self.unanswered_items),
            "note": "unparseable judge answers score 0 and are counted in num_unparseable",
        }


# --- loading ----------------------------------------------------------------------------------------------------
def load_dpg_prompts(prompts_dir: str | os.PathLike) -> dict[str, str]:
    """{item_id: prompt} from `prompts/<item_id>.txt`."""
    prompts_dir = require_path(
        prompts_dir,
        "the DPG-Bench prompts directory (<item_id>.txt files)",
        OFFICIAL_REPO,
        "dpg_bench/prompts/",
        directory=True,
    )
    return {path.stem: path.read_text(encoding="utf-8").strip() for path in sorted(prompts_dir.glob("*.txt"))}


def _parse_ids(text: str, what: str, where: str) -> tuple[int, ...]:
    try:
        return tuple(int(part.strip()) for part in text.split(","))
    except ValueError as error:
        raise BenchmarkFormatError(f"{where}: {what} {text!r} is not a comma-separated list of integers") from error


def load_dpg(csv_path: str | os.PathLike, prompts_dir: str | os.PathLike | None = None) -> list[DpgItem]:
    """The items of `dpg_bench.csv` in file order. Prompts come from `prompts_dir/<item_id>.txt` when given (each
    item needs its file), else from the CSV's `text` column."""
    csv_path = require_path(csv_path, f"DPG-Bench's {CSV_NAME}", OFFICIAL_REPO, f"dpg_bench/{CSV_NAME}")
    prompt_files = load_dpg_prompts(prompts_dir) if prompts_dir is not None else None
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        absent = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
        if absent:
            raise BenchmarkFormatError(f"{csv_path} lacks columns {absent}; DPG-Bench's CSV has {list(COLUMNS)}")
        rows = list(reader)
    grouped: dict[str, list[DpgQuestion]] = {}
    texts: dict[str, str] = {}
    previous = None
    for number, row in enumerate(rows, start=1):
        where = f"{csv_path} row {number}"
        item_id = row["item_id"].strip()
        if item_id != previous and item_id in grouped:
            raise BenchmarkFormatError(f"{where}: the rows of item {item_id} are not contiguous")
        previous = item_id
        (proposition_id,) = _parse_ids(row["proposition_id"], "proposition_id", where)
        parents = tuple(p for p in _parse_ids(row["dependency"], "dependency", where) if p != 0)
        question = DpgQuestion(
            proposition_id,
            parents,
            row["category_broad"].strip(),
            row["category_detailed"].strip(),
            row["tuple"].strip(),
            row["question_natural_language"].strip(),
            number,
        )
        grouped.setdefault(item_id, []).append(question)
        texts.setdefault(item_id, row["text"])
    items = []
    for item_id, questions in grouped.items():
        if prompt_files is None:
            prompt = texts[item_id].strip()
        elif item_id in prompt_files:
            prompt = prompt_files[item_id]
        else:
            raise BenchmarkFormatError(f"{prompts_dir} has no {item_id}.txt for item {item_id} of {csv_path}")
        items.append(DpgItem(item_id, prompt, tuple(questions)))
    return items


def missing_parents(item: DpgItem) -> str | None:
    """Why the item cannot be scored when a question depends on a proposition the item does not have, else None."""
    ids = {q.proposition_id for q in item.questions}
    for question in item.questions:
        dangling = [p for p in question.parents if p not in ids]
        if dangling:
            return (
                f"proposition {question.proposition_id} (CSV row {question.row}) depends on {dangling}, which the "
                "item does not have"
            )
    return None


def graph_problem(item: DpgItem) -> str | None:
    """Why the corrected variant cannot score the item's question graph, else None: a parent the item lacks
    (`missing_parents`), a repeated proposition id, or a dependency cycle (module docstring)."""
    if (reason := missing_parents(item)) is not None:
        return reason
    ids = [q.proposition_id for q in item.questions]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        rows = [q.row for q in item.questions if q.proposition_id in repeated]
        return f"proposition ids {repeated} are repeated (CSV rows {rows})"
    parents = {q.proposition_id: q.parents for q in item.questions}
    state: dict[int, str] = {}  # "open" while on the DFS stack, "done" after

    def cycle_through(node: int) -> int | None:
        state[node] = "open"
        for parent in parents[node]:
            if state.get(parent) == "open":
                return parent
            if parent not in state and (found := cycle_through(parent)) is not None:
                return found
        state[node] = "done"
        return None

    for node in parents:
        if node not in state and (found := cycle_through(node)) is not None:
            return f"its dependencies form a cycle through proposition {found}"
    return None


# --- scoring ----------------------------------------------------------------------------------------------------
def _image_answers(answers: Answers, item: DpgItem) -> dict[int, Mapping[int, str | None]]:
    """The item's answers per image, checked: every question answered (None allowed), only yes/no/None."""
    images = dict(sorted(answers[item.item_id].items()))
    known = {q.proposition_id for q in item.questions}
    for image, per_question in images.items():
        extra = sorted(set(per_question) - known)
        if extra:
            raise ValueError(f"answers for item {item.item_id} image {image} name propositions it lacks: {extra}")
        for question in item.questions:
            if question.proposition_id not in per_question:
                raise ValueError(
                    f"no answer for item {item.item_id} image {image} proposition {question.proposition_id}"
                )
            if per_question[question.proposition_id] not in ANSWERS:
                raise ValueError(
                    f"answer {per_question[question.proposition_id]!r} for item {item.item_id} image {image} "
                    f"proposition {question.proposition_id}: the judge must give 'yes', 'no' or None"
                )
    return images


def _broad_of_tuple(category: str) -> str:
    return category.split("-")[0].strip()


def _detailed_of_tuple(tuple_text: str) -> str:
    return tuple_text.split("(")[0].strip()


def _percent_means(values: Mapping[str, list[float]]) -> dict[str, float]:
    return {key: 100.0 * sum(v) / len(v) for key, v in sorted(values.items())}


def _official_image(questions: Sequence[DpgQuestion], per_question: Mapping[int, str | None]) -> float | None:
    """One image as compute_dpg_bench.py scores it: the parent rule in CSV order on scores zeroed in place, each
    parent list read in order up to the first parent scoring 0. None where it looks up a parent the item lacks
    (a KeyError there, which makes the script drop the whole item)."""
    scores = {q.proposition_id: float(per_question[q.proposition_id] == "yes") for q in questions}
    for question in questions:
        for parent in question.parents:
            if parent not in scores:
                return None
            if scores[parent] == 0:
                scores[question.proposition_id] = 0.0
                break
    return sum(scores.values()) / len(scores)


def _score_official(items: Sequence[DpgItem], answers: Answers) -> DpgScores:
    """compute_dpg_bench.py's numbers (see the module docstring for its three departures)."""
    item_scores, failed, unparseable = {}, {}, 0
    detailed: dict[str, list[float]] = defaultdict(list)
    for item in items:
        if item.item_id not in answers:
            continue
        # the script skips the CSV's first data row; its dicts keep a repeated id's first place and last row
        questions = list({q.proposition_id: q for q in item.questions if q.row != 1}.values())
        images = _image_answers(answers, item)
        if not questions:
            failed[item.item_id] = "its only question is the CSV's first data row, which the official script skips"
            continue
        image_scores = [_official_image(questions, per_question) for per_question in images.values()]
        if None in image_scores:
            failed[item.item_id] = missing_parents(item) or (
                "a question depends on the CSV's first data row, which the official script skips"
            )
            continue
        unparseable += sum(
            per_question[q.proposition_id] is None for per_question in images.values() for q in questions
        )
        item_scores[item.item_id] = 100.0 * sum(image_scores) / len(image_scores)
        last_image = images[max(images)]
        for question in questions:  # the last image's answers, before the parent rule
            detailed[_detailed_of_tuple(question.tuple_text)].append(
                float(last_image[question.proposition_id] == "yes")
            )
    broad: dict[str, list[float]] = defaultdict(list)
    for category, values in detailed.items():
        broad[_broad_of_tuple(category)].extend(values)
    return DpgScores(
        "official_compatible",
        sum(item_scores.values()) / len(item_scores) if item_scores else None,
        item_scores,
        _percent_means(broad),
        _percent_means(detailed),
        unparseable,
        failed,
    )


def _parent_rule(item: DpgItem, per_question: Mapping[int, str | None]) -> dict[int, float]:
    """score(q) = 1 iff q and every ancestor of q are answered "yes" (for an item without a `graph_problem`)."""
    parents = {q.proposition_id: q.parents for q in item.questions}
    scores: dict[int, float] = {}

    def score(node: int) -> float:
        if node not in scores:
            scores[node] = float(per_question[node] == "yes" and all(score(p) == 1.0 for p in parents[node]))
        return scores[node]

    return {q.proposition_id: score(q.proposition_id) for q in item.questions}


def _score_corrected(items: Sequence[DpgItem], answers: Answers) -> DpgScores:
    item_scores, failed, unparseable = {}, {}, 0
    broad: dict[str, list[float]] = defaultdict(list)
    detailed: dict[str, list[float]] = defaultdict(list)
    for item in items:
        if item.item_id not in answers:
            continue
        if (reason := graph_problem(item)) is not None:
            failed[item.item_id] = reason
            continue
        image_scores = []
        for per_question in _image_answers(answers, item).values():
            scores = _parent_rule(item, per_question)
            unparseable += sum(per_question[q.proposition_id] is None for q in item.questions)
            image_scores.append(sum(scores.values()) / len(scores))
            for question in item.questions:
                broad[question.category_broad].append(scores[question.proposition_id])
                detailed[f"{question.category_broad} - {question.category_detailed}"].append(
                    scores[question.proposition_id]
                )
        item_scores[item.item_id] = 100.0 * sum(image_scores) / len(image_scores)
    return DpgScores(
        "corrected",
        sum(item_scores.values()) / len(item_scores) if item_scores else None,
        item_scores,
        _percent_means(broad),
        _percent_means(detailed),
        unparseable,
        failed,
    )


def score_dpg(items: Sequence[DpgItem], answers: Answers) -> DpgResult:
    """Both variants. Items without answers are listed as unanswered; answers for unknown items are an error, and
    so is an image that does not answer every question of its item."""
    unknown = sorted(set(answers) - {item.item_id for item in items})
    if unknown:
        raise ValueError(f"answers for items the benchmark does not have: {unknown[:5]}")
    for item_id, images in answers.items():
        if not images:
            raise ValueError(f"item {item_id} has an empty answer set; leave it out to mark it unanswered")
    unanswered = tuple(item.item_id for item in items if item.item_id not in answers)
    return DpgResult(_score_official(items, answers), _score_corrected(items, answers), unanswered)


# --- SpatialWorld in DPG-Bench's format -------------------------------------------------------------------------
def spatialworld_rows(prompt: SpatialWorldPrompt) -> list[dict[str, str]]:
    """One item's rows: propositions 1..n ask whether each object exists (no parent), then one question per stated
    relation, whose parents are the existence questions of the objects it names."""
    entity_id = {colour: number for number, (colour, _) in enumerate(prompt.objects, start=1)}
    common = {"item_id": prompt.prompt_id, "text": prompt.prompt, "keywords": ", ".join(prompt.names)}
    rows = [
        {
            **common,
            "proposition_id": str(entity_id[colour]),
            "dependency": "0",
            "category_broad": "entity",
            "category_detailed": "whole",
            "tuple": f"entity - whole ({name})",
            "question_natural_language": existence_question(name),
        }
        for colour, name in prompt.objects
    ]
    for number, relation in enumerate(prompt.relations, start=len(prompt.objects) + 1):
        arguments = [prompt.name(c) for c in relation.subjects] + [relation.kind.replace("_", " ")]
        if relation.region is not None:
            arguments.append(relation.region)
        rows.append(
            {
                **common,
                "proposition_id": str(number),
                "dependency": ",".join(str(entity_id[c]) for c in relation.subjects),
                "category_broad": "relation",
                "category_detailed": "spatial",
                "tuple": f"relation - spatial ({', '.join(arguments)})",
                "question_natural_language": relation_question(relation, prompt),
            }
        )
    return rows


def write_dpg(prompts: Sequence[SpatialWorldPrompt], out_dir: str | os.PathLike) -> Path:
    """Write `out_dir/dpg_bench.csv` and `out_dir/prompts/<item_id>.txt` (item_id = the prompt's pair_id) for
    SpatialWorld prompts; returns the CSV's path. Note that the official-compatible score drops the first item, as
    the official script would: its first row is an existence question that its relation questions depend on."""
    out_dir = Path(out_dir)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for prompt in prompts:
        writer.writerows(spatialworld_rows(prompt))
        atomic_write_text(out_dir / PROMPTS_DIR_NAME / f"{prompt.prompt_id}.txt", prompt.prompt + "\n")
    atomic_write_text(out_dir / CSV_NAME, buffer.getvalue())
    return out_dir / CSV_NAME
