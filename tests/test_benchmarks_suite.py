"""The benchmark suite of `make eval-benchmarks`, end to end on CPU: a tiny reward checkpoint on a small SpatialWorld
dataset, and a tiny pixel-space generator drawing that dataset's test prompts for every generator task. A second run
makes no judge call, generates no image, and writes a byte-identical summary.json."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.__main__ import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory):
    from rl_policy import build_tiny_flux_pipeline

    directory = tmp_path_factory.mktemp("generator") / "pipeline"
    build_tiny_flux_pipeline(max_prompt_tokens=160).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    from reward_model import build_tiny_spatialscore, export_checkpoint

    torch.manual_seed(0)
    return export_checkpoint(build_tiny_spatialscore(), tmp_path_factory.mktemp("reward") / "export", metrics={})


def test_suite_runs_every_task_and_a_rerun_is_free(small_dataset, generator_dir, reward_dir, tmp_path, capsys):
    out = tmp_path / "reports"
    args = ["suite", "--out", str(out), "--reward-data", str(small_dataset), "--scorer", str(reward_dir)]
    args += ["--prompt-data", str(small_dataset), "--generator", f"base={generator_dir}", "--limit", "2"]
    args += ["--images-per-prompt", "1", "--steps", "2", "--height", "32", "--width", "32", "--true-cfg", "2"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {
        "spatialscore-pairs",
        "spatialworld-oracle",
        "geneval",
        "dpg-bench",
        "tiif-bench",
        "unigenbench",
    }
    assert set(summary["geneval"]) == {"base"} and "mean_spatialscore" in summary["spatialworld-oracle"]["base"]
    assert (out / "benchmarks.md").read_text() in capsys.readouterr().out
    assert (out / "spatialworld-oracle.png").is_file()
    first = (out / "summary.json").read_bytes()
    images = sorted(path.name for path in (out / "cache" / "images").rglob("*.png"))
    assert main(args) == 0
    assert (out / "summary.json").read_bytes() == first
    assert sorted(path.name for path in (out / "cache" / "images").rglob("*.png")) == images
    logs = [json.loads(path.read_text()) for path in (out / "runs").rglob("run_log.json")]
    assert len(logs) == 6 and all(sum(log["judge_calls"].values()) == 0 for log in logs)


def test_suite_needs_something_to_run(tmp_path, capsys):
    assert main(["suite", "--out", str(tmp_path / "r")]) == 2
    assert "nothing to run" in capsys.readouterr().err
    assert main(["suite", "--out", str(tmp_path / "r"), "--generator", "nolabel"]) == 2
    assert "LABEL=DIR" in capsys.readouterr().err
