"""TIIF-Bench and UniGenBench against their official scripts (issue 21): one quirk per test, on small sets whose
numbers are worked out by hand in the docstrings, in both variants (`official_compatible`, `corrected`) and in the
tasks' summary.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.formats import BenchmarkFormatError, load_tiif, load_unigenbench, score_tiif, score_unigenbench
from benchmarks.formats.unigenbench import LAYOUT_2D, LAYOUT_3D
from benchmarks.tasks.tiif import FIELDS as TIIF_FIELDS
from benchmarks.tasks.tiif import TiifBench
from benchmarks.tasks.unigenbench import UniGenBenchTask


# --- TIIF-Bench -------------------------------------------------------------------------------------------------
def write_jsonl(path: Path, lines: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def write_tiif_split(root: Path, split: str, lines: dict[str, list[int]]) -> tuple[Path, Path]:
    """`<split>_prompts/` and `<split>_eval_prompts/` as the official repo names them, holding for each type the test
    lines listed (in that order). Test line n reads "s<n>" / "l<n>" and asks "<n> a?" (yes) and "<n> b?" (no)."""
    prompts, evals = root / f"{split}_prompts", root / f"{split}_eval_prompts"
    for kind, numbers in lines.items():
        write_jsonl(
            prompts / f"{kind}_prompts.jsonl",
            [{"type": kind, "short_description": f"s{n}", "long_description": f"l{n}"} for n in numbers],
        )
        write_jsonl(
            evals / f"{kind}_eval_prompts.jsonl",
            [
                {"type": kind, "yn_question_list": [f"{n} a?", f"{n} b?"], "yn_answer_list": ["yes", "no"]}
                for n in numbers
            ],
        )
    return prompts, evals


TEST_LINES = {"real_world": list(range(30)), "2d_spatial_relation": list(range(10))}
SAMPLE_INDEX = {"real_world": [27, 3], "2d_spatial_relation": [9]}
# What the official judge outputs hold for the testmini images: keys are "<type>/<line_idx>", test-file lines.
TESTMINI_ANSWERS = {
    "real_world/27": {"short": {0: ["yes", "no"]}, "long": {0: ["no", "no"]}},
    "real_world/3": {"short": {0: ["yes", "yes"]}, "long": {0: ["no", "no"]}},
    "2d_spatial_relation/9": {"short": {0: ["yes", "no"]}, "long": {0: ["no", "yes"]}},
}


def test_tiif_testmini_folders_are_numbered_by_their_test_lines(tmp_path):
    """The testmini folders hold test lines 27 and 3 (real_world) and 9 (2d), in the sample index's order. Loaded
    with the index they give the prompts the official judge outputs name (real_world/27, real_world/3,
    2d_spatial_relation/9), the same prompts as the test folders filtered by the index. Scores (expected yes, no):
      real_world short: 27 yes,no 2/2 + 3 yes,yes 1/2 = 3/4 = 75;  long: 27 no,no 1/2 + 3 no,no 1/2 = 2/4 = 50
      2d short: yes,no 2/2 = 100;  long: no,yes 0/2 = 0
      groups: Complex (real_world) 75 / 50; Relation (2d; BR) 100 / 0
      overall: short (75 + 100) / 2 = 87.5;  long (50 + 0) / 2 = 25   (exact: both variants agree)
    Without the index the testmini folders number their lines 0 and 1, and the judge outputs' keys are refused with
    a message that names the sample index."""
    index_path = tmp_path / "testmini_sample_idx.json"
    index_path.write_text(json.dumps(SAMPLE_INDEX))
    test_dirs = write_tiif_split(tmp_path, "test", TEST_LINES)
    testmini_dirs = write_tiif_split(tmp_path, "testmini", SAMPLE_INDEX)

    from_testmini = load_tiif(*testmini_dirs, sample_index=index_path)
    from_test = load_tiif(*test_dirs, sample_index=index_path)
    assert [(p.key, p.short_description, p.long_description, p.questions) for p in from_testmini] == [
        ("2d_spatial_relation/9", "s9", "l9", ("9 a?", "9 b?")),
        ("real_world/27", "s27", "l27", ("27 a?", "27 b?")),
        ("real_world/3", "s3", "l3", ("3 a?", "3 b?")),
    ]
    assert sorted(from_testmini, key=lambda p: p.key) == sorted(from_test, key=lambda p: p.key)

    result = score_tiif(from_testmini, TESTMINI_ANSWERS)
    for scores in (result.official_compatible, result.corrected):
        assert scores.dimensions == {
            "real_world": {"short": 75.0, "long": 50.0},
            "2d_spatial_relation": {"short": 100.0, "long": 0.0},
        }
        assert scores.groups == {"Relation": {"short": 100.0, "long": 0.0}, "Complex": {"short": 75.0, "long": 50.0}}
        assert scores.paper_groups == {"BR": {"short": 100.0, "long": 0.0}}
        assert scores.overall == {"short": 87.5, "long": 25.0}
        assert scores.unanswered == ()
    assert score_tiif(from_test, TESTMINI_ANSWERS) == result

    unnumbered = load_tiif(*testmini_dirs)
    assert sorted(p.key for p in unnumbered) == ["2d_spatial_relation/0", "real_world/0", "real_world/1"]
    with pytest.raises(ValueError, match="real_world/27.*sample_index=testmini_sample_idx.json"):
        score_tiif(unnumbered, TESTMINI_ANSWERS)


def test_tiif_sample_index_that_fits_neither_folder_is_one_clear_error(tmp_path):
    """A sample index must number lines of the test file: a type whose file has neither more lines than the largest
    listed number (test) nor exactly one line per listed number (testmini) is refused, naming both counts; so is a
    line number listed twice (two testmini lines would take the same key)."""
    write_tiif_split(tmp_path, "testmini", SAMPLE_INDEX)
    testmini = (tmp_path / "testmini_prompts", tmp_path / "testmini_eval_prompts")
    bad = tmp_path / "bad_idx.json"
    bad.write_text(json.dumps({"real_world": [27, 3, 40], "2d_spatial_relation": [9]}))
    with pytest.raises(BenchmarkFormatError, match="'real_world' lists lines \\[3, 27, 40\\] beyond its 2 prompts.*"):
        load_tiif(*testmini, sample_index=bad)
    with pytest.raises(BenchmarkFormatError, match="neither the test file the index numbers nor its testmini subset"):
        load_tiif(*testmini, sample_index=bad)
    bad.write_text(json.dumps({"real_world": [27, 27], "2d_spatial_relation": [9]}))
    with pytest.raises(BenchmarkFormatError, match="\\['real_world'\\] list a line number twice"):
        load_tiif(*testmini, sample_index=bad)


def write_single_lines(root: Path, questions: dict[str, int]) -> list:
    """One prompt per type, whose n questions all expect "yes"."""
    for kind, count in questions.items():
        write_jsonl(
            root / "prompts" / f"{kind}.jsonl", [{"type": kind, "short_description": "s", "long_description": "l"}]
        )
        write_jsonl(
            root / "eval_prompts" / f"{kind}.jsonl",
            [{"type": kind, "yn_question_list": [f"q{i}?" for i in range(count)], "yn_answer_list": ["yes"] * count}],
        )
    return load_tiif(root / "prompts", root / "eval_prompts")


def test_tiif_official_rounds_each_accuracy_to_4_decimals_before_the_means(tmp_path):
    """Short prompts only: 2d 1 of 3 right, 3d 1 of 1, real_world 2 of 7.
    official_compatible (summary_results.py rounds each accuracy, a fraction, to 4 decimals):
      2d 1/3 -> 0.3333 -> 33.33;  3d 100;  real_world 2/7 -> 0.2857 -> 28.57
      Relation (BR) = (33.33 + 100) / 2 = 66.665;  Complex = 28.57;  overall = (66.665 + 28.57) / 2 = 47.6175
    corrected (full precision): 2d 100/3;  Relation 200/3 = 66.667;  real_world 200/7 = 28.571;
      overall = (200/3 + 200/7) / 2 = 1000/21 = 47.619
    (Rounding the final means instead would give 66.67 and 47.62: the rounding comes first.)"""
    prompts = write_single_lines(tmp_path, {"2d_spatial_relation": 3, "3d_spatial_relation": 1, "real_world": 7})
    answers = {
        "2d_spatial_relation/0": {"short": {0: ["yes", "no", "no"]}},
        "3d_spatial_relation/0": {"short": {0: ["yes"]}},
        "real_world/0": {"short": {0: ["yes", "yes", "no", "no", "no", "no", "no"]}},
    }
    result = score_tiif(prompts, answers)
    official, corrected = result.official_compatible, result.corrected
    assert official.dimensions == {
        "2d_spatial_relation": {"short": 33.33},
        "3d_spatial_relation": {"short": 100.0},
        "real_world": {"short": 28.57},
    }
    assert official.paper_groups["BR"]["short"] == pytest.approx(66.665, abs=1e-9)
    assert official.groups["Complex"]["short"] == pytest.approx(28.57, abs=1e-9)
    assert official.overall["short"] == pytest.approx(47.6175, abs=1e-9)
    assert corrected.dimensions["2d_spatial_relation"]["short"] == pytest.approx(100 / 3, abs=1e-9)
    assert corrected.dimensions["real_world"]["short"] == pytest.approx(200 / 7, abs=1e-9)
    assert corrected.paper_groups["BR"]["short"] == pytest.approx(200 / 3, abs=1e-9)
    assert corrected.overall["short"] == pytest.approx(1000 / 21, abs=1e-9)


def tiif_record(prompt, length: str, seed: int, answers: list) -> dict:
    """A per-image record as `TiifBench.evaluate` writes it."""
    data = {name: getattr(prompt, name) for name in TIIF_FIELDS}
    data |= {"questions": list(prompt.questions), "expected": list(prompt.expected)}
    return {**data, "length": length, "seed": seed, "image": "ok", "answers": answers}


def test_tiif_malformed_judge_line_is_skipped_and_counted_officially_and_counted_wrong_when_corrected(tmp_path):
    """One 2d prompt, two questions, expected yes and yes; four short images:
      0: yes, yes (2/2)   1: yes (one answer for two questions)   2: no, yes (1/2)   3: yes, maybe (not yes/no)
    official_compatible skips the malformed lists 1 and 3 with a warning (as summary_results.py skips a malformed
      judge line): (2 + 1) / 4 = 75, 4 questions read, 2 lists skipped.
    corrected counts every question of a malformed list wrong: (2 + 0 + 1 + 0) / 8 = 37.5, 8 questions, none skipped.
    Both count 2 malformed lists; summary.json says what each variant skipped, top level = official."""
    (prompt,) = write_single_lines(tmp_path, {"2d_spatial_relation": 2})
    given = {0: ["yes", "yes"], 1: ["yes"], 2: ["no", "yes"], 3: ["yes", "maybe"]}
    with pytest.warns(UserWarning, match="2d_spatial_relation/0 short image [13]: .* skipped") as caught:
        result = score_tiif([prompt], {prompt.key: {"short": given}})
    assert len(caught) == 2
    official, corrected = result.official_compatible, result.corrected
    assert official.dimensions == {"2d_spatial_relation": {"short": 75.0}}
    assert corrected.dimensions == {"2d_spatial_relation": {"short": 37.5}}
    assert (official.num_questions, official.num_malformed, official.skipped_answer_lists) == (4, 2, 2)
    assert (corrected.num_questions, corrected.num_malformed, corrected.skipped_answer_lists) == (8, 2, 0)

    records = [tiif_record(prompt, "short", seed, answers) for seed, answers in given.items()]
    with pytest.warns(UserWarning):
        summary = TiifBench().summarize(records)
    assert summary["dimensions"] == {"2d_spatial_relation": {"short": 75.0}}
    assert summary["corrected"]["dimensions"] == {"2d_spatial_relation": {"short": 37.5}}
    assert summary["skipped_answer_lists"] == summary["official_compatible"]["skipped_answer_lists"] == 2
    assert summary["corrected"]["skipped_answer_lists"] == 0
    assert "answer lists skipped (official-compatible) | 2" in TiifBench().report(summary)


# --- UniGenBench ------------------------------------------------------------------------------------------------
def unigen_csv(path: Path) -> Path:
    rows = [
        (0, "A cup left of a red bowl.", [LAYOUT_2D, "Attribute - Color"], ["cup left of bowl", "red bowl"]),
        (1, "A box behind a ball, left of it.", [LAYOUT_3D, LAYOUT_2D], ["box behind ball", "box left of ball"]),
    ]
    lines = ["index,prompt_en,sub_dims_en"]
    for index, prompt, testpoints, descriptions in rows:
        sub_dims = json.dumps({"Testpoints": testpoints, "Testpoint Description": descriptions}).replace('"', '""')
        lines.append(f'{index},"{prompt}","{sub_dims}"')
    path.write_text("\n".join(lines) + "\n")
    return path


# image -> one score per testpoint; None where the judge's reply could not be read
UNIGEN_ANSWERS = {
    0: {0: [1, 1], 1: [0, 1], 2: [None, None], 3: [1, 0]},  # 2D, Color; image 2's judgement failed
    1: {0: [1, 1], 1: [1, None], 2: [0, 1], 3: [0, 0]},  # 3D, 2D; image 1's judgement failed in part
}


def test_unigenbench_failed_judgements_leave_the_official_denominator_and_score_0_when_corrected(tmp_path):
    """official_compatible (the official script has no scores for an image whose judgement failed): prompt 0 image 2
    and prompt 1 image 1 are left out whole (skipped_images 2), the latter's readable 3D score 1 with them:
      Layout 2D: prompt 0 images 0, 1, 3: 1, 0, 1; prompt 1 images 0, 2, 3: 1, 1, 0 -> 4/6 = 66.67
      Layout 3D: prompt 1 images 0, 2, 3: 1, 0, 0 -> 1/3 = 33.33;  Color: 1, 1, 0 -> 2/3 = 66.67
      Entity Layout (pooled) (4 + 1) / 9 = 55.56;  Attribute 66.67;  12 testpoints read, none unparseable;
      each rounded as the official fraction to 4 decimals (4/6 = 0.6667 -> 66.67, not 66.666...).
    corrected (None scores 0 and stays): Layout 2D (1+0+0+1) + (1+0+1+0) = 4/8 = 50;  Layout 3D 1,1,0,0 = 2/4 = 50;
      Color 1,1,0,0 = 2/4 = 50;  Entity Layout 6/12 = 50;  Attribute 50;  16 testpoints, 3 unparseable, 0 skipped;
      overall (mean of main dimensions, not an official number) (50 + 50) / 2 = 50.
    The variants differ by 16.7 points on Layout 2D, and in either direction (3D: 33.33 official, 50 corrected)."""
    benchmark = load_unigenbench(unigen_csv(tmp_path / "test_prompts_en.csv"))
    result = score_unigenbench(benchmark, UNIGEN_ANSWERS)
    official, corrected = result.official_compatible, result.corrected
    assert official.sub == {LAYOUT_2D: 66.67, LAYOUT_3D: 33.33, "Attribute - Color": 66.67}
    assert official.main == {"Entity Layout": 55.56, "Attribute": 66.67}
    assert (official.layout_2d, official.layout_3d) == (66.67, 33.33)
    assert (official.num_testpoints, official.num_unparseable, official.skipped_images) == (12, 0, 2)
    assert corrected.sub == {LAYOUT_2D: 50.0, LAYOUT_3D: 50.0, "Attribute - Color": 50.0}
    assert corrected.main == {"Entity Layout": 50.0, "Attribute": 50.0} and corrected.overall == 50.0
    assert (corrected.num_testpoints, corrected.num_unparseable, corrected.skipped_images) == (16, 3, 0)

    variants = result.to_dict()
    assert "overall" not in variants["official_compatible"] and variants["official_compatible"]["skipped_images"] == 2
    assert variants["corrected"]["overall"] == 50.0 and "not an official" in variants["corrected"]["overall_note"]


def test_unigenbench_official_rounds_each_fraction_to_4_decimals_as_calculate_scores(tmp_path):
    """8 prompts x 4 images, each prompt testing Layout 2D, Layout 3D and Color; image k (0-31, prompt k // 4)
    passes 2D only for k = 0, 3D for k = 1..5, Color for k < 21. The official calculate_scores keeps round(acc, 4)
    of each fraction (Python's round: an exact binary tie goes to the even digit) and prints {acc:.2%}:
      Layout 2D 1/32 = 0.03125 -> 0.0312 -> 3.12 (corrected 3.125);  Layout 3D 5/32 = 0.15625 -> 0.1562 -> 15.62
      Color 21/32 = 0.65625 -> 0.6562 -> 65.62;  Entity Layout (1 + 5) / 64 = 0.09375 -> 0.0938 -> 9.38 (up: 8 even)
      Attribute 65.62 (corrected 65.625).  No judgement failed, so only the rounding separates the variants."""
    lines = ["index,prompt_en,sub_dims_en"]
    sub_dims = {"Testpoints": [LAYOUT_2D, LAYOUT_3D, "Attribute - Color"], "Testpoint Description": ["a", "b", "c"]}
    for index in range(8):
        lines.append(f'{index},"Prompt {index}.","{json.dumps(sub_dims).replace(chr(34), chr(34) * 2)}"')
    (tmp_path / "test_prompts_en.csv").write_text("\n".join(lines) + "\n")
    benchmark = load_unigenbench(tmp_path / "test_prompts_en.csv")
    answers = {
        index: {
            image: [int(k == 0), int(1 <= k <= 5), int(k < 21)]
            for image, k in enumerate(range(4 * index, 4 * index + 4))
        }
        for index in range(8)
    }
    result = score_unigenbench(benchmark, answers)
    official, corrected = result.official_compatible, result.corrected
    assert official.sub == {LAYOUT_2D: 3.12, LAYOUT_3D: 15.62, "Attribute - Color": 65.62}
    assert official.main == {"Entity Layout": 9.38, "Attribute": 65.62}
    assert (official.layout_2d, official.layout_3d, official.skipped_images) == (3.12, 15.62, 0)
    assert corrected.sub == {LAYOUT_2D: 3.125, LAYOUT_3D: 15.625, "Attribute - Color": 65.625}
    assert corrected.main == {"Entity Layout": 9.375, "Attribute": 65.625}
    assert [f"{fraction:.2%}" for fraction in (1 / 32, 5 / 32, 21 / 32, 6 / 64)] == [
        "3.12%",
        "15.62%",
        "65.62%",
        "9.38%",
    ]
    assert result.to_dict()["official_compatible"]["sub"][LAYOUT_2D] == 3.12


def test_unigenbench_summary_keeps_overall_out_of_the_official_numbers(tmp_path):
    """The task's summary.json for the answers above: the top level repeats official_compatible (Layout 2D 66.67,
    skipped_images 2); `overall` appears only as corrected/overall (50), labelled not official in summary.json and
    in the report; the three unreadable answers are counted."""
    task = UniGenBenchTask()
    records = [
        {
            "index": prompt.index,
            "prompt": prompt.prompt,
            "testpoints": list(prompt.testpoints),
            "descriptions": list(prompt.descriptions),
            "row": prompt.row,
            "seed": seed,
            "image": "ok",
            "scores": scores,
        }
        for prompt in load_unigenbench(unigen_csv(tmp_path / "test_prompts_en.csv")).prompts
        for seed, scores in UNIGEN_ANSWERS[prompt.index].items()
    ]
    summary = task.summarize([*records, {"malformed": []}])
    assert (summary["layout_2d"], summary["layout_3d"]) == (66.67, 33.33)
    assert summary["skipped_images"] == summary["official_compatible"]["skipped_images"] == 2
    assert summary["corrected"]["skipped_images"] == 0 and summary["unreadable_answers"] == 3
    assert "overall" not in summary and "overall" not in summary["official_compatible"]
    assert summary["corrected"]["overall"] == 50.0 and "not an official" in summary["corrected"]["overall_note"]
    report = task.report(summary)
    assert "overall, corrected (mean of main dimensions; not an official UniGenBench number) | 50.0" in report
