"""benchmarks.formats: DPG-Bench, TIIF-Bench and UniGenBench loaders and scoring on small hand-written fixtures in
the official formats (every number computed by hand in the test's docstring), missing-file errors, and
SpatialWorld -> official format -> loader round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.formats import (
    BenchmarkFormatError,
    MissingBenchmarkFile,
    load_dpg,
    load_spatialworld_prompts,
    load_tiif,
    load_unigenbench,
    score_dpg,
    score_tiif,
    score_unigenbench,
    spatialworld_prompts,
    write_dpg,
    write_tiif,
    write_unigenbench,
)
from benchmarks.formats.spatialworld import PREDICATES, SpatialWorldPrompt, relation_question
from benchmarks.formats.unigenbench import LAYOUT_2D, LAYOUT_3D
from data_synthesis import KINDS, Background, Relation, Scene, SceneObject, describe

# --- DPG-Bench --------------------------------------------------------------------------------------------------
DPG_HEADER = (
    "item_id,text,keywords,proposition_id,dependency,category_broad,category_detailed,tuple,question_natural_language"
)
# Item a: the official script skips its first row (proposition 1), on which proposition 3 depends.
# Item b: proposition 3 (child of 2) is listed before its parent 2 (child of 1).
DPG_ROWS = [
    "a,A cat on a table.,cat,1,0,entity,whole,entity - whole (cat),Is there a cat?",
    "a,A cat on a table.,table,2,0,entity,whole,entity - whole (table),Is there a table?",
    'a,A cat on a table.,on,3,"1,2",relation,spatial,"relation - spatial (cat, table, on)",Is the cat on the table?',
    "b,A brown dog by a sofa.,dog,1,0,entity,whole,entity - whole (dog),Is there a dog?",
    'b,A brown dog by a sofa.,next to,3,2,relation,spatial,"relation - spatial (dog, sofa, next to)",Is it by a sofa?',
    'b,A brown dog by a sofa.,brown,2,1,attribute,color,"attribute - color (dog, brown)",Is the dog brown?',
    "c,A bird above a tree.,bird,1,0,entity,whole,entity - whole (bird),Is there a bird?",
    'c,A bird above a tree.,above,2,1,relation,spatial,"relation - spatial (bird, tree, above)",Is it above a tree?',
]
DPG_ANSWERS = {
    "a": {0: {1: "yes", 2: "yes", 3: "yes"}, 1: {1: "no", 2: "yes", 3: "yes"}},
    "b": {0: {1: "no", 2: "yes", 3: "yes"}, 1: {1: "yes", 2: None, 3: "yes"}},
    "c": {0: {1: "yes", 2: "no"}, 1: {1: "yes", 2: "yes"}},
}


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def test_dpg_loads_question_graphs(tmp_path):
    items = load_dpg(write_csv(tmp_path / "dpg_bench.csv", DPG_HEADER, DPG_ROWS))
    assert [i.item_id for i in items] == ["a", "b", "c"]
    a, b, _ = items
    assert a.prompt == "A cat on a table."
    assert [(q.proposition_id, q.parents) for q in a.questions] == [(1, ()), (2, ()), (3, (1, 2))]
    assert [(q.proposition_id, q.parents, q.row) for q in b.questions] == [(1, (), 4), (3, (2,), 5), (2, (1,), 6)]
    assert a.questions[2].tuple_text == "relation - spatial (cat, table, on)"
    assert (a.questions[2].category_broad, a.questions[2].category_detailed) == ("relation", "spatial")


def test_dpg_scores_both_variants_by_hand(tmp_path):
    """Two images per item (the official four only add terms). score(q) = 1 iff "yes" and no parent scores 0.

    corrected (every row; a question needs all its ancestors "yes"; categories from every image, after the rule):
      a: img0 yes,yes,yes -> 1;  img1 no,yes,yes -> q1 0, q2 1, q3 0 (parent 1) -> 1/3;   s(a) = 2/3
      b: img0 no,yes,yes  -> 0,0,0 -> 0;  img1 yes,None,yes -> q1 1, q2 0, q3 0 -> 1/3;  s(b) = 1/6
      c: img0 yes,no -> 1/2;  img1 yes,yes -> 1;                                         s(c) = 3/4
      DPG = 100 * (2/3 + 1/6 + 3/4) / 3 = 100 * 19/36 = 52.78
      entity - whole:     a.q1 1,0  a.q2 1,1  b.q1 0,1  c.q1 1,1   -> 6/8 = 75
      relation - spatial: a.q3 1,0  b.q3 0,0  c.q2 0,1             -> 2/6 = 33.33
      attribute - color:  b.q2 0,0                                 -> 0
    official_compatible (first data row skipped; rule in CSV order on in-place scores; last image, before rule):
      a: q3 depends on the skipped proposition 1: the script's KeyError drops item a.
      b (order 1, 3, 2): img0 raw 0,1,1 -> q3 reads parent 2 = 1 (not yet zeroed) -> keeps 1; q2 -> 0: 1/3
                         img1 raw 1,0(None),1 -> q3 reads parent 2 = 0 -> 0; q2 stays 0: 1/3;  s(b) = 1/3
      c: as corrected, 3/4.   DPG = 100 * (1/3 + 3/4) / 2 = 100 * 13/24 = 54.17
      last image (img1) raw: b.q1 1, b.q3 1, b.q2 0, c.q1 1, c.q2 1
      -> entity - whole 100, relation - spatial 100, attribute - color 0
    One unparseable answer (b img1 q2) in both.
    """
    items = load_dpg(write_csv(tmp_path / "dpg_bench.csv", DPG_HEADER, DPG_ROWS))
    result = score_dpg(items, DPG_ANSWERS)
    corrected, official = result.corrected, result.official_compatible

    assert corrected.variant == "corrected" and official.variant == "official_compatible"
    assert corrected.item_scores == pytest.approx({"a": 200 / 3, "b": 100 / 6, "c": 75.0})
    assert corrected.score == pytest.approx(100 * 19 / 36)
    assert corrected.detailed == pytest.approx(
        {"attribute - color": 0.0, "entity - whole": 75.0, "relation - spatial": 100 / 3}
    )
    assert corrected.broad == pytest.approx({"attribute": 0.0, "entity": 75.0, "relation": 100 / 3})
    assert corrected.relation_spatial == pytest.approx(100 / 3)
    assert corrected.num_unparseable == 1 and corrected.failed_items == {}

    assert set(official.failed_items) == {"a"}
    assert official.item_scores == pytest.approx({"b": 100 / 3, "c": 75.0})
    assert official.score == pytest.approx(100 * 13 / 24)
    assert official.detailed == pytest.approx(
        {"attribute - color": 0.0, "entity - whole": 100.0, "relation - spatial": 100.0}
    )
    assert official.broad == pytest.approx({"attribute": 0.0, "entity": 100.0, "relation": 100.0})
    assert official.num_unparseable == 1
    summary = result.to_dict()
    assert summary["official_compatible"]["variant"] == "official_compatible" and summary["unanswered_items"] == []


def test_dpg_official_keeps_first_item_without_dependents_on_row_one(tmp_path):
    """Item x: proposition 1 (row 1, no dependents) and 2. One image answers no, yes.
    official: row 1 skipped -> only q2 -> 1 -> 100.   corrected: (0 + 1) / 2 -> 50.
    Item y is left unanswered: listed, scored by neither variant."""
    rows = [
        "x,An oil painting of a boat.,oil,1,0,global,style,global - style (oil painting),Is it an oil painting?",
        "x,An oil painting of a boat.,boat,2,0,entity,whole,entity - whole (boat),Is there a boat?",
        "y,A cup.,cup,1,0,entity,whole,entity - whole (cup),Is there a cup?",
    ]
    items = load_dpg(write_csv(tmp_path / "dpg_bench.csv", DPG_HEADER, rows))
    result = score_dpg(items, {"x": {0: {1: "no", 2: "yes"}}})
    assert result.official_compatible.item_scores == {"x": 100.0}
    assert result.official_compatible.failed_items == {}
    assert result.official_compatible.detailed == {"entity - whole": 100.0}  # the style question is gone
    assert result.corrected.item_scores == {"x": 50.0}
    assert result.corrected.detailed == {"entity - whole": 100.0, "global - style": 0.0}
    assert result.unanswered_items == ("y",)
    nothing = score_dpg(items, {})
    assert nothing.corrected.score is None and nothing.official_compatible.score is None
    assert nothing.unanswered_items == ("x", "y")


def test_dpg_prompts_dir_and_bad_answers(tmp_path):
    csv_path = write_csv(tmp_path / "dpg_bench.csv", DPG_HEADER, DPG_ROWS)
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for item_id in "ab":
        (prompts / f"{item_id}.txt").write_text(f"prompt file of {item_id}\n")
    with pytest.raises(BenchmarkFormatError, match="no c.txt"):
        load_dpg(csv_path, prompts)
    (prompts / "c.txt").write_text("prompt file of c")
    items = load_dpg(csv_path, prompts)
    assert [i.prompt for i in items] == ["prompt file of a", "prompt file of b", "prompt file of c"]
    with pytest.raises(ValueError, match="no answer for item c image 0 proposition 2"):
        score_dpg(items, {"c": {0: {1: "yes"}}})
    with pytest.raises(ValueError, match="'maybe'"):
        score_dpg(items, {"c": {0: {1: "yes", 2: "maybe"}}})
    with pytest.raises(ValueError, match="does not have"):
        score_dpg(items, {"zzz": {0: {1: "yes"}}})


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["a,t,k,1,0,e,w,t,q?", "b,t,k,1,0,e,w,t,q?", "a,t,k,2,0,e,w,t,q?"], "not contiguous"),
        (["a,t,k,one,0,e,w,t,q?"], "proposition_id 'one'"),
    ],
)
def test_dpg_malformed_csv_raises_one_clear_error(tmp_path, rows, message):
    with pytest.raises(BenchmarkFormatError, match=message):
        load_dpg(write_csv(tmp_path / "dpg_bench.csv", DPG_HEADER, rows))


def test_dpg_missing_parent_drops_only_that_item(tmp_path):
    """Item m: proposition 2 depends on 3, which m does not have (the official parent lookup raises: m is dropped,
    "Failed filename"); item n is scored. Row 1 (m's proposition 1) is skipped by the official script anyway.
    One image each. n: q1 yes, q2 (child of 1) yes -> 1.
      corrected: m dropped (counted), n 100 -> score 100.   official_compatible: m dropped, n 100 -> 100."""
    rows = [
        "m,A cat.,cat,1,0,entity,whole,entity - whole (cat),Is there a cat?",
        "m,A cat.,on,2,3,relation,spatial,relation - spatial (cat on ?),Is the cat on it?",
        "n,A dog on a mat.,dog,1,0,entity,whole,entity - whole (dog),Is there a dog?",
        "n,A dog on a mat.,on,2,1,relation,spatial,relation - spatial (dog on mat),Is the dog on a mat?",
    ]
    items = load_dpg(write_csv(tmp_path / "dpg_bench.csv", DPG_HEADER, rows))  # no longer refuses the whole CSV
    result = score_dpg(items, {"m": {0: {1: "yes", 2: "yes"}}, "n": {0: {1: "yes", 2: "yes"}}})
    for scores in (result.corrected, result.official_compatible):
        assert scores.item_scores == {"n": 100.0} and scores.score == 100.0
        assert list(scores.failed_items) == ["m"] and "depends on [3]" in scores.failed_items["m"]
    assert result.to_dict()["corrected"]["failed_items"] == {"m": result.corrected.failed_items["m"]}


def test_dpg_official_category_keys_only_strip_the_ends(tmp_path):
    """compute_dpg_bench.py names a category by `tuple.split('(')[0].strip()`: an internal double space stays, so
    "relation -  spatial" is its own official category (100: the last image says yes); the corrected variant names
    categories by the category columns ("relation - spatial")."""
    rows = [
        "x,t,k,1,0,entity,whole,entity - whole (a),Is there a?",  # skipped by the official script (row 1)
        "x,t,k,2,0,relation,spatial,relation -  spatial (a on b),Is a on b?",
    ]
    items = load_dpg(write_csv(tmp_path / "dpg_bench.csv", DPG_HEADER, rows))
    result = score_dpg(items, {"x": {0: {1: "yes", 2: "yes"}}})
    assert result.official_compatible.detailed == {"relation -  spatial": 100.0}
    assert result.official_compatible.broad == {"relation": 100.0}
    assert result.corrected.detailed == {"entity - whole": 100.0, "relation - spatial": 100.0}


def test_dpg_missing_columns(tmp_path):
    with pytest.raises(BenchmarkFormatError, match="lacks columns \\['tuple'"):
        load_dpg(write_csv(tmp_path / "x.csv", DPG_HEADER.replace(",tuple", ""), []))


# --- TIIF-Bench -------------------------------------------------------------------------------------------------
TIIF_PROMPTS = {  # file name -> [(short, long)]
    "2d_spatial_relation.jsonl": [("A cat left of a dog.", "Long: a cat left of a dog."), ("S1", "L1")],
    "3d_spatial_relation.jsonl": [("A box behind a ball.", "Long: a box behind a ball.")],
    "color+2d.jsonl": [("A red cup left of a bowl.", "Long: a red cup left of a bowl.")],
    "negation+2d.jsonl": [("No cat left of the dog.", "Long: no cat left of the dog.")],
}
TIIF_EVAL = {  # type -> [(questions, expected)]; files named differently from the prompt files on purpose
    "2d_spatial_relation": [(["Cat?", "Cat left of dog?"], ["yes", "yes"]), (["X?", "Y?"], ["yes", "no"])],
    "3d_spatial_relation": [(["Box?", "Ball?", "Box behind ball?"], ["yes", "yes", "yes"])],
    "color+2d": [(["Red cup?", "Cup left of bowl?"], ["yes", "yes"])],
    "negation+2d": [(["Dog?", "Cat left of dog?"], ["yes", "no"])],
}
TIIF_ANSWERS = {
    "2d_spatial_relation/0": {"short": {0: ["yes", "yes"]}, "long": {0: ["yes", "no"]}},
    "2d_spatial_relation/1": {"short": {0: ["yes", "no"]}, "long": {0: [None, "no"]}},
    "3d_spatial_relation/0": {"short": {0: ["yes", "no", "no"]}, "long": {0: ["yes", "yes", "yes"]}},
    "color+2d/0": {"short": {0: ["yes", "no"]}, "long": {0: ["no", "no"]}},
    "negation+2d/0": {"short": {0: ["yes", "yes"]}, "long": {0: ["yes", "no"]}},
}


def write_tiif_fixture(root: Path) -> tuple[Path, Path]:
    prompts_dir, eval_dir = root / "testmini_prompts", root / "testmini_eval_prompts"
    prompts_dir.mkdir()
    eval_dir.mkdir()
    for name, pairs in TIIF_PROMPTS.items():
        lines = [{"type": name[: -len(".jsonl")], "short_description": s, "long_description": lo} for s, lo in pairs]
        (prompts_dir / name).write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    for dimension, cases in TIIF_EVAL.items():
        lines = [{"type": dimension, "yn_question_list": q, "yn_answer_list": a} for q, a in cases]
        (eval_dir / f"{dimension}_eval_prompts.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    return prompts_dir, eval_dir


def test_tiif_loads_prompts_paired_with_questions(tmp_path):
    prompts = load_tiif(*write_tiif_fixture(tmp_path))
    by_key = {p.key: p for p in prompts}
    assert sorted(by_key) == sorted(TIIF_ANSWERS)
    second = by_key["2d_spatial_relation/1"]
    assert (second.short_description, second.long_description) == ("S1", "L1")
    assert second.questions == ("X?", "Y?") and second.expected == ("yes", "no")


def flatten(nested: dict[str, dict[str, float]]) -> dict[tuple[str, str], float]:
    """pytest.approx compares flat mappings only."""
    return {(outer, inner): value for outer, values in nested.items() for inner, value in values.items()}


def test_tiif_scores_dimensions_groups_and_overall_by_hand(tmp_path):
    """acc = 100 * correct / questions per (dimension, length); a group is the mean of its dimensions; overall the
    mean of the groups.
      2d:       short 2/2 + 2/2 -> 100;        long 1/2 + 1/2 (one None) -> 50
      3d:       short yes,no,no vs yes x3 -> 33.33;                  long 100
      color+2d: short 50;  long 0.           negation+2d (expects yes, no): short yes,yes -> 50; long 100
      Relation (BR) = mean(2d, 3d):   short (100 + 33.33) / 2 = 66.67;   long (50 + 100) / 2 = 75
      Attribute+Relation (AR):        short 50;   long 0
      Relation+Reasoning (RR):        short 50;   long 100
      overall: short (66.67 + 50 + 50) / 3 = 55.56;   long (75 + 0 + 100) / 3 = 58.33
    22 answers read (2 lengths x (2+2+3+2+2)), one unparseable."""
    scores = score_tiif(load_tiif(*write_tiif_fixture(tmp_path)), TIIF_ANSWERS).corrected
    assert flatten(scores.dimensions) == pytest.approx(
        flatten(
            {
                "2d_spatial_relation": {"short": 100.0, "long": 50.0},
                "3d_spatial_relation": {"short": 100 / 3, "long": 100.0},
                "color+2d": {"short": 50.0, "long": 0.0},
                "negation+2d": {"short": 50.0, "long": 100.0},
            }
        )
    )
    assert flatten(scores.groups) == pytest.approx(
        flatten(
            {
                "Relation": {"short": 200 / 3, "long": 75.0},
                "Attribute+Relation": {"short": 50.0, "long": 0.0},
                "Relation+Reasoning": {"short": 50.0, "long": 100.0},
            }
        )
    )
    assert flatten(scores.paper_groups) == pytest.approx(
        flatten(
            {
                "BR": {"short": 200 / 3, "long": 75.0},
                "AR": {"short": 50.0, "long": 0.0},
                "RR": {"short": 50.0, "long": 100.0},
            }
        )
    )
    assert scores.overall == pytest.approx({"short": 500 / 9, "long": 175 / 3})
    assert (scores.num_questions, scores.num_unparseable) == (22, 1)
    assert scores.unanswered == () and scores.ungrouped == ()
    assert "temperature 1" in scores.to_dict()["judge_note"]


def test_tiif_partial_answers_skip_missing_lengths_and_list_unanswered(tmp_path):
    """Only 2d/0 short answered (2/2): 2d short 100, no long anywhere; Relation short = 100 (3d not evaluated)."""
    prompts = load_tiif(*write_tiif_fixture(tmp_path))
    for scores in vars(score_tiif(prompts, {"2d_spatial_relation/0": {"short": {0: ["yes", "yes"]}}})).values():
        assert scores.dimensions == {"2d_spatial_relation": {"short": 100.0}}
        assert scores.groups == {"Relation": {"short": 100.0}} and scores.overall == {"short": 100.0}
        assert len(scores.unanswered) == 4
    with pytest.raises(ValueError, match="unknown length"):
        score_tiif(prompts, {"2d_spatial_relation/0": {"medium": {0: ["yes", "yes"]}}})


def test_tiif_official_rounds_each_accuracy_to_4_decimals(tmp_path):
    """3d/0 short 1 of 3 right (yes, no, no vs yes x3); 2d/0 short 2 of 2.
    corrected: 3d 33.333...; Relation = (100 + 33.333...) / 2 = 66.666...
    official_compatible: 1/3 -> 0.3333 -> 33.33; Relation = (100 + 33.33) / 2 = 66.665 (not 66.67)."""
    prompts = load_tiif(*write_tiif_fixture(tmp_path))
    answers = {
        "3d_spatial_relation/0": {"short": {0: ["yes", "no", "no"]}},
        "2d_spatial_relation/0": {"short": {0: ["yes", "yes"]}},
    }
    result = score_tiif(prompts, answers)
    assert result.official_compatible.dimensions["3d_spatial_relation"] == {"short": 33.33}
    assert result.official_compatible.groups["Relation"]["short"] == pytest.approx(66.665, abs=1e-9)
    assert result.corrected.dimensions["3d_spatial_relation"]["short"] == pytest.approx(100 / 3, abs=1e-9)
    assert result.corrected.groups["Relation"]["short"] == pytest.approx(200 / 3, abs=1e-9)


def test_tiif_malformed_answer_list_is_skipped_with_a_warning_in_the_official_variant(tmp_path):
    """2d/0 short: image 0 answers yes, yes (2/2); image 1 gives one answer for two questions (malformed).
    official_compatible: image 1 skipped with a warning -> 2/2 = 100, 2 questions read.
    corrected: image 1's two questions count wrong -> 2/4 = 50, 4 questions. Both count 1 malformed list."""
    prompts = load_tiif(*write_tiif_fixture(tmp_path))
    answers = {"2d_spatial_relation/0": {"short": {0: ["yes", "yes"], 1: ["yes"]}}}
    with pytest.warns(UserWarning, match="2d_spatial_relation/0 short image 1.*skipped"):
        result = score_tiif(prompts, answers)
    official, corrected = result.official_compatible, result.corrected
    assert official.dimensions == {"2d_spatial_relation": {"short": 100.0}} and official.num_questions == 2
    assert corrected.dimensions == {"2d_spatial_relation": {"short": 50.0}} and corrected.num_questions == 4
    assert official.num_malformed == corrected.num_malformed == 1
    assert result.to_dict()["official_compatible"]["num_malformed"] == 1


def test_tiif_testmini_through_the_sample_index_keeps_test_line_numbers(tmp_path):
    """The test files hold 30 real_world prompts; testmini_sample_idx.json picks lines 27 and 3. The prompts keep
    those line numbers (keys real_world/27, real_world/3: the official judge outputs' line_idx and image names), so
    answers keyed real_world/27 score: 27 answered yes (expected yes) -> 100 in both variants."""
    test_prompts, test_eval = tmp_path / "test_prompts", tmp_path / "test_eval_prompts"
    test_prompts.mkdir()
    test_eval.mkdir()
    lines = [{"type": "real_world", "short_description": f"s{n}", "long_description": f"l{n}"} for n in range(30)]
    (test_prompts / "real_world.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    questions = [{"type": "real_world", "yn_question_list": [f"q{n}?"], "yn_answer_list": ["yes"]} for n in range(30)]
    (test_eval / "real_world_eval_prompts.jsonl").write_text("\n".join(json.dumps(q) for q in questions))
    (tmp_path / "testmini_sample_idx.json").write_text(json.dumps({"real_world": [27, 3]}))
    prompts = load_tiif(test_prompts, test_eval, sample_index=tmp_path / "testmini_sample_idx.json")
    assert [(p.key, p.short_description, p.questions) for p in prompts] == [
        ("real_world/3", "s3", ("q3?",)),
        ("real_world/27", "s27", ("q27?",)),
    ]
    result = score_tiif(prompts, {"real_world/27": {"short": {0: ["yes"]}}})
    assert result.official_compatible.dimensions == {"real_world": {"short": 100.0}}
    assert result.corrected.unanswered == ("real_world/3",)
    (tmp_path / "bad_idx.json").write_text(json.dumps({"real_world": [30]}))
    with pytest.raises(BenchmarkFormatError, match="lines \\[30\\] beyond its 30 prompts"):
        load_tiif(test_prompts, test_eval, sample_index=tmp_path / "bad_idx.json")


def test_tiif_format_errors(tmp_path):
    prompts_dir, eval_dir = write_tiif_fixture(tmp_path)
    (prompts_dir / "color+2d.jsonl").write_text("")
    with pytest.raises(BenchmarkFormatError, match="pair line for line"):
        load_tiif(prompts_dir, eval_dir)
    (eval_dir / "broken.jsonl").write_text('{"type": "style", "yn_question_list": []}\n')
    with pytest.raises(BenchmarkFormatError, match="broken.jsonl line 1 lacks \\['yn_answer_list'\\]"):
        load_tiif(prompts_dir, eval_dir)


# --- UniGenBench ------------------------------------------------------------------------------------------------
def official_row(index: str, prompt: str, sub_dims: dict | str) -> str:
    """One row quoted as the official CSV quotes it (JSON quotes doubled inside a quoted cell)."""
    cell = sub_dims if isinstance(sub_dims, str) else json.dumps(sub_dims)
    return f'{index},"{prompt}","{cell.replace(chr(34), chr(34) * 2)}"'


def sub_dims(testpoints: list[str], descriptions: list[str]) -> dict:
    return {
        "Primary Categories": "Art",
        "Secondary Categories": "Graphic Art",
        "Subjects": "Scene",
        "Sentence Structure": "Descriptive",
        "Testpoints": testpoints,
        "Testpoint Description": descriptions,
    }


UNIGEN_ROWS = [
    official_row(
        "0",
        "A red cup left of a bowl, watercolour.",
        sub_dims([LAYOUT_2D, "Attribute - Color", "Style"], ["left of", "red", "wc"]),
    ),
    official_row("1", "A box behind a ball, left of a cat.", sub_dims([LAYOUT_3D, LAYOUT_2D], ["behind", "left of"])),
    official_row("2", "Two lists of different lengths.", sub_dims([LAYOUT_2D, "Style"], ["only one"])),
    official_row("3", "Broken JSON.", '{"Testpoints": ['),
    official_row("4", "A prompt on\ntwo lines with a round plate.", sub_dims(["Attribute - Shape"], ["round plate"])),
    official_row("x", "A bad index.", sub_dims(["Style"], ["s"])),
    official_row("6", "An unknown testpoint.", sub_dims(["Entity Layout - Four-Dimensional Space"], ["?"])),
]
UNIGEN_ANSWERS = {
    0: {0: [1, 1, 1], 1: [0, 1, 1], 2: [1, 0, None], 3: [1, 1, 0]},
    1: {0: [1, 1], 1: [0, 1], 2: [0, 0], 3: [0, 1]},
    4: {0: [1], 1: [1], 2: [0], 3: [1]},
}


def test_unigenbench_lists_malformed_rows_and_keeps_the_rest(tmp_path):
    """Rows 3, 4, 6, 7 are malformed (row 5's prompt spans file lines 6-7, so rows 6 and 7 start on lines 8, 9)."""
    benchmark = load_unigenbench(
        write_csv(tmp_path / "test_prompts_en.csv", "index,prompt_en,sub_dims_en", UNIGEN_ROWS)
    )
    assert [p.index for p in benchmark.prompts] == [0, 1, 4]
    assert benchmark.prompts[2].prompt == "A prompt on\ntwo lines with a round plate."
    assert benchmark.prompts[1].testpoints == (LAYOUT_3D, LAYOUT_2D)
    assert benchmark.prompts[1].descriptions == ("behind", "left of")
    malformed = [(m.row, m.line, m.index) for m in benchmark.malformed]
    assert malformed == [(3, 4, "2"), (4, 5, "3"), (6, 8, "x"), (7, 9, "6")]
    reasons = [m.reason for m in benchmark.malformed]
    assert "2 testpoints but 1 testpoint descriptions" in reasons[0]
    assert "not valid JSON" in reasons[1]
    assert "not an integer" in reasons[2]
    assert "Four-Dimensional" in reasons[3] and "27" in reasons[3]


def test_unigenbench_scores_by_hand(tmp_path):
    """4 images per prompt; a testpoint counts when scored 1 (None: unparseable, scored 0).
    prompt 0 (Layout 2D, Color, Style): 2D 1,0,1,1 -> 3/4;  Color 1,1,0,1 -> 3/4;  Style 1,1,None,0 -> 2/4
    prompt 1 (Layout 3D, Layout 2D):    3D 1,0,0,0 -> 1/4;  2D 1,1,0,1 -> 3/4
    prompt 4 (Shape):                   1,1,0,1 -> 3/4
    sub:  Layout 2D (3+3)/8 = 75;  Layout 3D 25;  Color 75;  Style 50;  Shape 75
    main (pooled, not the mean of subs): Entity Layout (3+1+3)/12 = 58.33;  Attribute (3+3)/8 = 75;  Style 50
    overall = (58.33 + 75 + 50) / 3 = 61.11;   24 testpoints judged, 1 unparseable."""
    benchmark = load_unigenbench(
        write_csv(tmp_path / "test_prompts_en.csv", "index,prompt_en,sub_dims_en", UNIGEN_ROWS)
    )
    scores = score_unigenbench(benchmark, UNIGEN_ANSWERS).corrected
    assert scores.sub == pytest.approx(
        {LAYOUT_2D: 75.0, LAYOUT_3D: 25.0, "Attribute - Color": 75.0, "Style": 50.0, "Attribute - Shape": 75.0}
    )
    assert scores.main == pytest.approx({"Entity Layout": 700 / 12, "Attribute": 75.0, "Style": 50.0})
    assert scores.overall == pytest.approx((700 / 12 + 75 + 50) / 3)
    assert (scores.layout_2d, scores.layout_3d) == pytest.approx((75.0, 25.0))
    assert (scores.num_testpoints, scores.num_unparseable) == (24, 1)
    assert scores.unanswered == () and len(scores.malformed) == 4
    assert [m["row"] for m in scores.to_dict()["malformed"]] == [3, 4, 6, 7]
    with pytest.raises(ValueError, match="needs one 0/1/None per testpoint"):
        score_unigenbench(benchmark, {4: {0: [2]}})


def test_unigenbench_official_skips_images_with_a_failed_judgement(tmp_path):
    """Same answers; prompt 0 image 2 holds the one unparseable judgement (1, 0, None).
    official_compatible: that image has no result row -> left out whole (skipped_images 1):
      prompt 0 over images 0, 1, 3: 2D 1,0,1 -> 2/3; Color 1,1,1 -> 3/3; Style 1,1,0 -> 2/3
      Layout 2D (2 + 3) / (3 + 4) = 5/7 = 71.43 (corrected 75);  Layout 3D 25;  Attribute (3+3)/7 = 85.71
      Entity Layout (2 + 1 + 3) / (3 + 4 + 4) = 6/11 = 54.55;  Style 2/3 = 66.67
      each as the official fraction rounded to 4 decimals (5/7 = 0.714285... -> 0.7143 -> 71.43, not 71.4286);
      21 testpoints read, none unparseable.
    corrected: as test_unigenbench_scores_by_hand (None scores 0, stays in the denominator), skipped_images 0."""
    benchmark = load_unigenbench(
        write_csv(tmp_path / "test_prompts_en.csv", "index,prompt_en,sub_dims_en", UNIGEN_ROWS)
    )
    result = score_unigenbench(benchmark, UNIGEN_ANSWERS)
    official = result.official_compatible
    assert (official.layout_2d, official.layout_3d) == (71.43, 25.0)
    assert official.main == {"Entity Layout": 54.55, "Attribute": 85.71, "Style": 66.67}
    assert (official.num_testpoints, official.num_unparseable, official.skipped_images) == (21, 0, 1)
    assert result.corrected.layout_2d == pytest.approx(75.0) and result.corrected.skipped_images == 0
    summary = result.to_dict()
    assert summary["official_compatible"]["skipped_images"] == 1
    assert "not an official" in summary["corrected"]["overall_note"]


def test_unigenbench_missing_column(tmp_path):
    with pytest.raises(BenchmarkFormatError, match="lacks columns"):
        load_unigenbench(write_csv(tmp_path / "x.csv", "index,prompt_en", ["0,p"]))


# --- missing files ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("load", "expected", "url"),
    [
        (lambda p: load_dpg(p / "dpg_bench.csv"), "dpg_bench/dpg_bench.csv", "https://github.com/TencentQQGYLab/ELLA"),
        (lambda p: load_dpg(p / "x.csv", p / "prompts"), "dpg_bench/prompts/", "TencentQQGYLab/ELLA"),
        (lambda p: load_tiif(p / "a", p / "b"), "data/testmini_prompts/", "https://github.com/A113N-W3I/TIIF-Bench"),
        (
            lambda p: load_unigenbench(p / "u.csv"),
            "data/test_prompts_en.csv",
            "https://github.com/CodeGoat24/UniGenBench",
        ),
    ],
)
def test_missing_files_raise_one_line_naming_file_and_official_source(tmp_path, load, expected, url):
    write_csv(tmp_path / "x.csv", DPG_HEADER, DPG_ROWS)  # present, so that the DPG prompts dir is what is missing
    with pytest.raises(MissingBenchmarkFile) as error:
        load(tmp_path)
    message = str(error.value)
    assert expected in message and url in message and "\n" not in message


def test_tiif_missing_eval_dir_is_named(tmp_path):
    (tmp_path / "prompts").mkdir()
    with pytest.raises(MissingBenchmarkFile, match="data/testmini_eval_prompts/"):
        load_tiif(tmp_path / "prompts", tmp_path / "eval")


# --- SpatialWorld round trips -----------------------------------------------------------------------------------
def spatialworld_frame() -> pd.DataFrame:
    """Two hand-made pairs rows: a 2D scene, and a scene with a depth relation (overlapping squares)."""
    first = Scene(
        (
            SceneObject("red", "square", "medium", 0.3, 0.5, 0.08, 0),
            SceneObject("blue", "circle", "medium", 0.7, 0.5, 0.08, 1),
        ),
        Background("plain"),
    )
    second = Scene(
        (
            SceneObject("green", "square", "large", 0.45, 0.5, 0.105, 1),
            SceneObject("yellow", "square", "large", 0.55, 0.58, 0.105, 0),
            SceneObject("pink", "star", "small", 0.85, 0.2, 0.06, 2),
        ),
        Background("plain"),
    )
    stated = [
        [Relation("left_of", ("red", "blue")), Relation("in_region", ("blue",), "right half")],
        [Relation("in_front_of", ("green", "yellow")), Relation("right_of", ("pink", "yellow"))],
    ]
    rows = []
    for number, (scene, relations) in enumerate(zip((first, second), stated, strict=True)):
        rows.append(
            {
                "pair_id": f"sw-0-{number:07d}",
                "prompt": describe(scene, relations, style_seed=number),
                "stated_relations": json.dumps([r.to_dict() for r in relations]),
                "perfect_scene": scene.to_json(),
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture
def world_prompts() -> list[SpatialWorldPrompt]:
    return spatialworld_prompts(spatialworld_frame())


def test_spatialworld_prompts_and_question_text(world_prompts):
    first, second = world_prompts
    assert first.objects == (("red", "red square"), ("blue", "blue circle"))
    assert relation_question(first.relations[0], first) == "Is the red square to the left of the blue circle?"
    assert relation_question(first.relations[1], first) == "Is the blue circle in the right half of the image?"
    assert relation_question(second.relations[0], second) == "Is the green square in front of the yellow square?"
    assert set(PREDICATES) == set(KINDS)
    between = Relation("between", ("pink", "green", "yellow"))
    assert relation_question(between, second) == "Is the pink star between the green square and the yellow square?"


def test_dpg_round_trip_on_spatialworld(tmp_path, world_prompts):
    """Item 1: entities red (1), blue (2); left_of(red, blue) (3, parents 1,2); in_region(blue) (4, parent 2).
    A judge answering "no" only to "Is there a blue circle in the image?" zeroes 2, 3 and 4 -> 1/4 = 25 (corrected).
    Item 2 all "yes" -> 100. corrected = (25 + 100) / 2 = 62.5. The official script drops item 1 (its first row is
    proposition 1, parent of proposition 3) -> 100 from item 2 alone."""
    csv_path = write_dpg(world_prompts, tmp_path)
    items = load_dpg(csv_path, tmp_path / "prompts")
    assert [i.item_id for i in items] == [p.prompt_id for p in world_prompts]
    assert [i.prompt for i in items] == [p.prompt for p in world_prompts]
    first = items[0]
    assert [(q.proposition_id, q.parents, q.category_broad) for q in first.questions] == [
        (1, (), "entity"),
        (2, (), "entity"),
        (3, (1, 2), "relation"),
        (4, (2,), "relation"),
    ]
    assert first.questions[2].tuple_text == "relation - spatial (red square, blue circle, left of)"
    assert first.questions[3].tuple_text == "relation - spatial (blue circle, in region, right half)"
    assert len(items[1].questions) == 3 + 2

    def judge(item):
        blue = "Is there a blue circle in the image?"
        return {q.proposition_id: "no" if q.question == blue else "yes" for q in item.questions}

    answers = {item.item_id: {image: judge(item) for image in range(4)} for item in items}
    result = score_dpg(items, answers)
    assert result.corrected.item_scores == {items[0].item_id: 25.0, items[1].item_id: 100.0}
    assert result.corrected.score == 62.5
    assert result.corrected.relation_spatial == pytest.approx(100 * 2 / 4)  # item 1's two are zeroed
    assert list(result.official_compatible.failed_items) == [items[0].item_id]
    assert result.official_compatible.score == 100.0


def test_tiif_round_trip_on_spatialworld(tmp_path, world_prompts):
    """The 2D prompt goes to 2d_spatial_relation, the one with a depth relation to 3d_spatial_relation; a judge
    answering "yes" everywhere scores 100 on both lengths, BR = overall = 100 (AR, RR not evaluated)."""
    keys = write_tiif(world_prompts, tmp_path)
    first, second = world_prompts
    assert keys == {first.prompt_id: "2d_spatial_relation/0", second.prompt_id: "3d_spatial_relation/0"}
    prompts = {p.key: p for p in load_tiif(tmp_path / "prompts", tmp_path / "eval_prompts")}
    flat = prompts["2d_spatial_relation/0"]
    assert flat.long_description == first.prompt
    assert flat.short_description == (
        "A red square and a blue circle. The red square is to the left of the blue circle. "
        "The blue circle is in the right half of the image."
    )
    assert flat.questions == (
        "Is there a red square in the image?",
        "Is there a blue circle in the image?",
        "Is the red square to the left of the blue circle?",
        "Is the blue circle in the right half of the image?",
    )
    assert set(flat.expected) == {"yes"} and len(prompts["3d_spatial_relation/0"].questions) == 5
    answers = {
        key: {length: {0: ["yes"] * len(p.questions)} for length in ("short", "long")} for key, p in prompts.items()
    }
    scores = score_tiif(list(prompts.values()), answers).official_compatible
    assert scores.paper_groups == {"BR": {"short": 100.0, "long": 100.0}}
    assert scores.overall == {"short": 100.0, "long": 100.0}


def test_unigenbench_round_trip_on_spatialworld(tmp_path, world_prompts):
    """Testpoints: prompt 0 -> 2D, 2D; prompt 1 -> 3D (in front of), 2D. A judge failing only the depth testpoint
    on 2 of 4 images: Layout 3D 50, Layout 2D 100, Entity Layout (12 + 2) / 16 = 87.5 = overall."""
    ids = write_unigenbench(world_prompts, tmp_path / "test_prompts_en.csv")
    assert ids == {world_prompts[0].prompt_id: 0, world_prompts[1].prompt_id: 1}
    benchmark = load_unigenbench(tmp_path / "test_prompts_en.csv")
    assert benchmark.malformed == ()
    assert [p.testpoints for p in benchmark.prompts] == [(LAYOUT_2D, LAYOUT_2D), (LAYOUT_3D, LAYOUT_2D)]
    assert benchmark.prompts[1].descriptions == (
        "the green square is in front of the yellow square",
        "the pink star is to the right of the yellow square",
    )
    assert benchmark.prompts[0].prompt == world_prompts[0].prompt
    answers = {0: {i: [1, 1] for i in range(4)}, 1: {i: [int(i < 2), 1] for i in range(4)}}
    scores = score_unigenbench(benchmark, answers).official_compatible
    assert (scores.layout_2d, scores.layout_3d) == (100.0, 50.0)
    assert scores.main == {"Entity Layout": 87.5} and scores.overall == 87.5


def test_writers_and_loaders_end_to_end_on_a_built_dataset(tmp_path, small_dataset):
    """The held-out split of a real SpatialWorld build goes through every writer and loader without loss."""
    prompts = load_spatialworld_prompts(small_dataset, "test")
    test_rows = pd.read_parquet(small_dataset / "pairs.parquet").query("split == 'test'")
    assert [p.prompt_id for p in prompts] == list(test_rows["pair_id"]) and prompts
    items = load_dpg(write_dpg(prompts, tmp_path / "dpg"), tmp_path / "dpg" / "prompts")
    assert sum(len(i.questions) for i in items) == sum(len(p.objects) + len(p.relations) for p in prompts)
    keys = write_tiif(prompts, tmp_path / "tiif")
    loaded = load_tiif(tmp_path / "tiif" / "prompts", tmp_path / "tiif" / "eval_prompts")
    assert sorted(keys.values()) == sorted(p.key for p in loaded)
    write_unigenbench(prompts, tmp_path / "unigen.csv")
    benchmark = load_unigenbench(tmp_path / "unigen.csv")
    assert benchmark.malformed == () and len(benchmark.prompts) == len(prompts)
    with pytest.raises(ValueError, match="unknown split"):
        load_spatialworld_prompts(small_dataset, "holdout")
