"""`spatialscore-pairs`: the scorer and pairwise aggregations against hand-computed numbers, and the task end to end
with a tiny random SpatialScore exported as a real reward checkpoint (cached scores equal fresh ones; a rerun asks
nothing), plus the oracle's mean SpatialScore."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.__main__ import main
from benchmarks.cache import SampleLog
from benchmarks.tasks.spatialscore_pairs import (
    pairwise_outcome,
    scorer_outcome,
    summarize_pairwise,
    summarize_scorer,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_outcomes():
    assert [scorer_outcome(2.0, 1.0), scorer_outcome(1.0, 1.0), scorer_outcome(0.0, 1.0)] == ["correct", "tie", "wrong"]
    assert pairwise_outcome("first", "second") == (1.0, True)  # the winner both times
    assert pairwise_outcome("second", "first") == (0.0, True)  # the loser both times: consistent, wrong
    assert pairwise_outcome("first", "first") == (0.5, False)  # always the first image
    assert pairwise_outcome("tie", "second") == (0.5, False)
    assert pairwise_outcome(None, None) == (0.0, False)


RECORDS = [
    {
        "num_broken": 1,
        "scorer": {"forward": {"means": [2.0, 1.0]}, "reversed": {"means": [0.5, 0.5]}},
        "pairwise": {"forward": {"choices": ["first", "second"]}, "reversed": {"choices": ["first", "first"]}},
    },
    {
        "num_broken": 2,
        "scorer": {"forward": {"means": [1.0, 1.0]}, "reversed": {"means": [3.0, 1.0]}},
        "pairwise": {"forward": {"choices": ["second", "first"]}, "reversed": {"choices": [None, "second"]}},
    },
    {
        "num_broken": 3,
        "scorer": {"forward": {"means": [0.0, 1.0]}, "reversed": {"means": [2.0, 1.0]}},
        "pairwise": {"forward": {"choices": ["tie", "second"]}, "reversed": {"choices": ["first", "second"]}},
    },
    {
        "num_broken": 1,
        "scorer": {"forward": {"means": [5.0, 4.0]}, "reversed": {"means": [1.0, 2.0]}},
        "pairwise": {"forward": {"choices": ["first", "second"]}, "reversed": {"choices": ["second", "first"]}},
    },
]


def test_scorer_summary_by_hand():
    """Forward: correct, tie, wrong, correct -> 2/4 = 0.5 (the tie counts wrong), 1 tie; by broken: "1" 2/2,
    "2" 0/1 (tie), "3" 0/1, "2-3" 0/2. Reversed: tie, correct, correct, wrong -> 0.5, 1 tie; by broken: "1" 0/2,
    "2" 1/1, "3" 1/1, "2-3" 2/2."""
    assert summarize_scorer(RECORDS) == {
        "num_pairs": 4,
        "pairwise_accuracy": 0.5,
        "pairwise_accuracy_by_broken": {"1": 1.0, "2": 0.0, "3": 0.0, "2-3": 0.0},
        "ties": 1,
        "tie_rate": 0.25,
        "pairwise_accuracy_reversed": 0.5,
        "pairwise_accuracy_reversed_by_broken": {"1": 0.0, "2": 1.0, "3": 1.0, "2-3": 1.0},
        "ties_reversed": 1,
        "tie_rate_reversed": 0.25,
    }


def test_pairwise_summary_by_hand():
    """Forward scores 1, 0, 0.5, 1 -> 0.625; consistent: pairs 1, 2, 4 -> 0.75; by broken: "1" (1 + 1) / 2,
    "2" 0, "3" 0.5, "2-3" 0.5 / 2 = 0.25. Reversed scores 0.5, 0.5, 1, 0 -> 0.5 (by broken: "1" (0.5 + 0) / 2,
    "2" 0.5, "3" 1, "2-3" 1.5 / 2); consistent: pairs 3, 4 -> 0.5; one unreadable verdict."""
    assert summarize_pairwise(RECORDS) == {
        "num_pairs": 4,
        "pairwise_accuracy": 0.625,
        "order_consistency": 0.75,
        "pairwise_accuracy_by_broken": {"1": 1.0, "2": 0.0, "3": 0.5, "2-3": 0.25},
        "ties": 1,
        "unreadable": 0,
        "pairwise_accuracy_reversed": 0.5,
        "order_consistency_reversed": 0.5,
        "pairwise_accuracy_reversed_by_broken": {"1": 0.25, "2": 0.5, "3": 1.0, "2-3": 0.75},
        "ties_reversed": 0,
        "unreadable_reversed": 1,
    }


@pytest.fixture(scope="module")
def reward_checkpoint(tmp_path_factory):
    """A tiny random SpatialScore exported as a reward checkpoint dir."""
    from reward_model import build_tiny_spatialscore, export_checkpoint

    torch.set_num_threads(1)
    torch.manual_seed(0)
    return export_checkpoint(
        build_tiny_spatialscore(), tmp_path_factory.mktemp("reward") / "export", metrics={}, system_prompt="Judge."
    )


def test_pairs_end_to_end_with_a_tiny_spatialscore(small_dataset, reward_checkpoint, tmp_path):
    from PIL import Image

    from reward_model import SpatialScorer

    out = tmp_path / "pairs"
    argv = ["run", "--task", "spatialscore-pairs", "--data", str(small_dataset), "--scorer", str(reward_checkpoint)]
    assert main([*argv, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    records = list(SampleLog(out / "samples.jsonl").load().values())
    assert summary["scorer"]["num_pairs"] == len(records) == 8 and "pairwise" not in summary
    correct = sum(r["scorer"]["forward"]["means"][0] > r["scorer"]["forward"]["means"][1] for r in records)
    assert summary["scorer"]["pairwise_accuracy"] == round(correct / 8, 6)
    # the cached numbers are the scorer's own
    from pandas import read_parquet

    frame = read_parquet(small_dataset / "pairs.parquet").set_index("pair_id")
    row = frame.loc[records[0]["sample_id"]]
    images = [Image.open(small_dataset / row[c]).convert("RGB") for c in ("perfect_image", "perturbed_image")]
    mean, _ = SpatialScorer.from_pretrained(reward_checkpoint).score(prompts=[row.prompt] * 2, images=images)
    assert records[0]["scorer"]["forward"]["means"] == pytest.approx(mean.tolist(), abs=1e-5)
    summary_bytes = (out / "summary.json").read_bytes()

    fresh = tmp_path / "fresh"
    assert main([*argv, "--out", str(fresh), "--cache-dir", str(out / "cache")]) == 0
    log = json.loads((fresh / "run_log.json").read_text())
    assert log["judge_calls"] == {} and log["cache_hits"] == {"scorer": 4 * 8}
    assert (fresh / "summary.json").read_bytes() == summary_bytes


def test_oracle_reports_the_mean_spatialscore(small_dataset, reward_checkpoint, tmp_path):
    _, frame = __import__("data_synthesis").load_pairs(small_dataset)
    root = tmp_path / "images"
    for row in frame[frame["split"] == "test"].itertuples():
        (root / row.pair_id).mkdir(parents=True)
        (root / row.pair_id / "0.png").write_bytes((small_dataset / row.perfect_image).read_bytes())
    out = tmp_path / "oracle"
    argv = ["run", "--task", "spatialworld-oracle", "--data", str(small_dataset), "--images", str(root)]
    assert main([*argv, "--scorer", str(reward_checkpoint), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    scores = [r["spatialscore"] for r in SampleLog(out / "samples.jsonl").load().values()]
    assert len(scores) == 8 and summary["mean_spatialscore"] == round(sum(scores) / 8, 6)
