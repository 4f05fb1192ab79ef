"""`make exp-rl` (experiments/exp_rl.py) without training: the run plan, each run's overlay parsed by the RL CLI,
the paired aggregation against hand values, curves read back from real TensorBoard event files, the chart."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("exp_rl", REPO / "experiments" / "exp_rl.py")
exp_rl = importlib.util.module_from_spec(spec)
sys.modules["exp_rl"] = exp_rl  # dataclasses look their module up
spec.loader.exec_module(exp_rl)


def test_plan_and_overlays_parse_with_the_rl_cli(tmp_path):
    from rl_policy.data import PromptDataModule
    from rl_policy.training import GRPOCLI, GRPOTraining

    class ParseOnlyCLI(GRPOCLI):
        def instantiate_classes(self) -> None:
            pass

    runs = exp_rl.plan("spatialscore", [0, 1, 2])
    assert [r.name for r in runs[::3]] == [
        "spatialscore-layout-s0",
        "oracle-layout-s0",
        "geneval-layout-s0",
        "spatialscore-topk-s0",
        "oracle-topk-s0",
        "geneval-topk-s0",
    ]
    assert len(runs) == 18 and [r.name for r in exp_rl.plan("oracle", [4])] == [
        "oracle-layout-s4",
        "geneval-layout-s4",
        "oracle-topk-s4",
        "geneval-topk-s4",
    ]

    def parse(run):
        argv = exp_rl.command(run, tmp_path / run.name)
        return ParseOnlyCLI(GRPOTraining, PromptDataModule, args=argv[argv.index("fit") + 1 :], run=False).config

    run = runs[10]  # spatialscore-topk-s1
    argv = exp_rl.command(run, tmp_path / run.name)
    assert argv[argv.index("fit") + 1 :][-2:] == ["--config", str(tmp_path / run.name / "overlay.yaml")]
    assert "configs/rl/recipe_topk.yaml" in argv and "configs/rl/reward_oracle.yaml" not in argv
    config = parse(run)
    assert config.model.groups.keep_per_side == 6 and config.model.sampler.sde_steps is None
    assert config.seed_everything == 1 and config.data.seed == 1 and config.trainer.max_steps == 120
    assert config.trainer.default_root_dir == str(tmp_path / run.name)
    assert config.trainer.callbacks[0].init_args.dirpath == str(tmp_path / run.name / "checkpoints")
    (tmp_path / run.name / "checkpoints").mkdir()
    (tmp_path / run.name / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert exp_rl.command(run, tmp_path / run.name)[-2:] == [
        "--ckpt_path",
        str(tmp_path / run.name / "checkpoints" / "last.ckpt"),
    ]
    assert "configs/rl/reward_geneval.yaml" in exp_rl.command(runs[6], tmp_path / runs[6].name)
    # within a recipe the rewards differ in the reward alone: the same budget
    for first, second in ((runs[1], runs[4]), (runs[4], runs[7]), (runs[11], runs[14])):
        one, other = parse(first), parse(second)
        assert one.model.reward.class_path != other.model.reward.class_path
        for part in ("sampler", "groups", "updates", "optimizer", "objective", "policy"):
            assert one.model[part] == other.model[part], (first.name, second.name, part)
        assert (one.trainer.max_steps, one.trainer.max_time) == (other.trainer.max_steps, other.trainer.max_time)
    layout, oracle = parse(runs[1]), parse(runs[4])  # spatialscore-layout-s1, oracle-layout-s1
    assert layout.model.reward.class_path == "reward_model.SpatialScorer"
    assert layout.model.reward_source == "spatialscore"
    assert oracle.model.reward.class_path == "data_synthesis.SpatialWorldOracle"
    assert oracle.model.reward_source == "oracle"
    assert layout.model.sampler.sde_steps == [0] and layout.model.groups.keep_per_side == 12
    assert (layout.trainer.max_steps, layout.trainer.max_time) == (115, "00:00:19:00")


def test_only_runs_the_named_configurations_and_names_unknown_ones(tmp_path, monkeypatch, capsys):
    started = []
    monkeypatch.setattr(exp_rl.subprocess, "call", lambda argv, cwd: started.append(Path(argv[-1]).parent.name) or 1)
    assert exp_rl.main(["--out", str(tmp_path), "--seeds", "0", "1", "--only", "oracle-topk", "geneval-layout"]) == 1
    assert started == ["geneval-layout-s0", "geneval-layout-s1", "oracle-topk-s0", "oracle-topk-s1"]
    assert "failed runs" in capsys.readouterr().err  # no metrics.json written: each counted as failed
    with pytest.raises(SystemExit):
        exp_rl.main(["--out", str(tmp_path), "--only", "oracle-al"])
    assert "--only: no configuration oracle-al in this plan" in capsys.readouterr().err


def test_gains_are_paired_per_seed_then_averaged():
    results = {
        "oracle-topk-s0": {"oracle_accuracy_base": 0.25, "oracle_accuracy_final": 0.50, "reward_base": 0.1},
        "oracle-topk-s1": {"oracle_accuracy_base": 0.35, "oracle_accuracy_final": 0.50, "reward_base": 0.3},
        "oracle-all-s0": {"oracle_accuracy_base": 0.25, "oracle_accuracy_final": 0.30},
        # null where nothing was measured (no sample with every object found): left out of the mean, not a crash
        "oracle-all-s1": {"oracle_accuracy_base": 0.25, "oracle_accuracy_final": 0.30},
    }
    results["oracle-topk-s1"] |= {"relation_accuracy_all_found_base": None, "relation_accuracy_all_found_final": 0.4}
    results["oracle-topk-s0"] |= {"relation_accuracy_all_found_base": 0.3, "relation_accuracy_all_found_final": 0.5}
    table = exp_rl.summarize(results)
    assert table["oracle-topk"]["relation_accuracy_all_found"]["base"] == pytest.approx((0.3, 0.0))
    assert table["oracle-topk"]["relation_accuracy_all_found"]["gain"] == pytest.approx((0.2, 0.0))
    topk = table["oracle-topk"]
    assert topk["seeds"] == 2
    assert topk["oracle_accuracy"]["base"] == pytest.approx((0.30, math.sqrt(0.005)))
    assert topk["oracle_accuracy"]["gain"] == pytest.approx((0.20, math.sqrt(0.005)))  # gains 0.25 and 0.15
    assert table["oracle-all"]["oracle_accuracy"]["gain"] == pytest.approx((0.05, 0.0))
    assert table["oracle-all"]["seeds"] == 2
    assert math.isnan(topk["all_found"]["final"][0])
    markdown = exp_rl.comparison_markdown(table, results)
    assert table["oracle-topk"]["families"] == {}  # no per-family numbers in these metrics
    assert "| oracle-topk | 2 | 30.0 ± 7.1 -> 50.0 ± 0.0 (20.0 ± 7.1) |" in markdown
    assert "| oracle-all-s0 |  | 0 | 25.0 -> 30.0 |" in markdown


def test_curves_come_back_from_tensorboard_and_are_drawn(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(tmp_path / "run-s0" / "lightning_logs" / "version_0")
    for step, value in ((0, 0.25), (20, 0.4), (40, 0.55)):
        writer.add_scalar(exp_rl.CURVE_TAG, value, step)
    writer.add_scalar("train/reward_mean", 1.0, 0)
    writer.close()
    curve = exp_rl.read_curve(tmp_path / "run-s0")
    assert [step for step, _ in curve] == [0, 20, 40]
    assert [value for _, value in curve] == pytest.approx([0.25, 0.4, 0.55])
    import io

    import numpy as np
    from PIL import Image

    def orange_pixels(png: bytes) -> int:  # matplotlib's second colour, C1 = #ff7f0e: the "run" configuration
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
        return int((np.abs(pixels - [255, 127, 14]).sum(-1) < 30).sum())

    drawn = exp_rl.line_chart(
        {"run-s0": curve, "other-s0": []}, "title", colour_of={"run-s0": "run", "other-s0": "other"}
    )
    empty = exp_rl.line_chart({"run-s0": [], "other-s0": []}, "title", colour_of={"run-s0": "run", "other-s0": "other"})
    assert Image.open(io.BytesIO(drawn)).format == "PNG"
    # the legend's swatch alone (an empty curve) is about 60 pixels; the line and markers add hundreds
    assert orange_pixels(drawn) > 5 * orange_pixels(empty) > 0


def test_placement_per_family_is_paired_per_seed_and_keeps_the_counts():
    """Two seeds: horizontal .40 -> .60 and .50 -> .60 (gains .20 and .10), on 30 / 40 and 50 / 60 relations;
    vertical has no relation among all-found samples in the base of seed 1 (null): its gain is seed 0's alone;
    depth never has one and is left out."""
    results = {
        "oracle-topk-s0": {
            "relation_accuracy_all_found_by_family_base": {"horizontal": 0.4, "vertical": 0.5, "depth": None},
            "relation_accuracy_all_found_by_family_final": {"horizontal": 0.6, "vertical": 0.75, "depth": None},
            "num_relations_all_found_by_family_base": {"horizontal": 30, "vertical": 10, "depth": 0},
            "num_relations_all_found_by_family_final": {"horizontal": 40, "vertical": 8, "depth": 0},
        },
        "oracle-topk-s1": {
            "relation_accuracy_all_found_by_family_base": {"horizontal": 0.5, "vertical": None, "depth": None},
            "relation_accuracy_all_found_by_family_final": {"horizontal": 0.6, "vertical": 1.0, "depth": None},
            "num_relations_all_found_by_family_base": {"horizontal": 50, "vertical": 0, "depth": 0},
            "num_relations_all_found_by_family_final": {"horizontal": 60, "vertical": 2, "depth": 0},
        },
    }
    families = exp_rl.summarize(results)["oracle-topk"]["families"]
    assert set(families) == {"horizontal", "vertical"}
    horizontal = families["horizontal"]
    assert horizontal["base"] == pytest.approx((0.45, math.sqrt(0.005)))
    assert horizontal["gain"] == pytest.approx((0.15, math.sqrt(0.005)))
    assert (horizontal["count_base"], horizontal["count_final"]) == (40, 50)
    assert families["vertical"]["gain"] == pytest.approx((0.25, 0.0))
    markdown = exp_rl.comparison_markdown(exp_rl.summarize(results), results)
    assert "| oracle-topk | horizontal | 45.0 ± 7.1 -> 60.0 ± 0.0 (15.0 ± 7.1) | 40 / 50 |" in markdown


def _gains(configuration: str, gains: list[float], placement: float = 0.01) -> dict[str, dict[str, float]]:
    """metrics.json of one run per seed with these paired oracle-accuracy gains (base .5) and placement gain."""
    return {
        f"{configuration}-s{seed}": {
            "oracle_accuracy_base": 0.5,
            "oracle_accuracy_final": 0.5 + gain,
            "relation_accuracy_all_found_base": 0.6,
            "relation_accuracy_all_found_final": 0.6 + placement,
        }
        for seed, gain in enumerate(gains)
    }


def test_the_critic_verdict_follows_the_issue_rule_on_hand_values():
    results = _gains("spatialscore-layout", [0.04, 0.02]) | _gains("oracle-layout", [0.03, 0.01])
    assert exp_rl.critic_verdict(exp_rl.summarize(results), "layout") is None  # no GenEval runs yet
    verdict = exp_rl.critic_verdict(exp_rl.summarize(results | _gains("geneval-layout", [0.0, 0.0, 0.0])), "layout")
    # critic +.03 (std .01414), oracle +.02, GenEval 0 (std 0): ratio 1.5, difference .03 > spread .01414
    assert verdict["seeds"] == {"spatialscore": 2, "oracle": 2, "geneval": 3}
    assert verdict["ratio_to_oracle"] == pytest.approx(1.5)
    assert verdict["difference_to_geneval"] == pytest.approx(0.03)
    assert verdict["spread"] == pytest.approx(math.sqrt(2) / 100)
    assert verdict["welch_standard_error"] == pytest.approx(0.01)  # sqrt(.0002 / 2 + 0 / 3)
    assert verdict["win"] and all(verdict["checks"].values())
    # GenEval +.03 / -.03: std .0424 > the difference .03: not a win, and only that check fails
    wide = exp_rl.summarize(results | _gains("geneval-layout", [0.03, -0.03]))
    verdict = exp_rl.critic_verdict(wide, "layout")
    assert verdict["spread"] == pytest.approx(0.06 / math.sqrt(2))
    assert not verdict["win"]
    assert [ok for ok in verdict["checks"].values()] == [True, True, False]
    # placement among all-found falling, or a critic below 0.7x the oracle, fails those checks
    falling = results | _gains("spatialscore-layout", [0.04, 0.02], placement=-0.01) | _gains("geneval-layout", [0, 0])
    assert [ok for ok in exp_rl.critic_verdict(exp_rl.summarize(falling), "layout")["checks"].values()] == [
        True,
        False,
        True,
    ]
    weak = results | _gains("spatialscore-layout", [0.013, 0.013]) | _gains("geneval-layout", [0, 0])
    assert not exp_rl.critic_verdict(exp_rl.summarize(weak), "layout")["checks"]["at least 0.7x the oracle's gain"]
    markdown = exp_rl.comparison_markdown(wide, results)
    assert "| layout | 2 / 2 / 2 | 1.50 | +3.0 | 4.2 | 3.2 |" in markdown  # Welch sqrt(.0002/2 + .0018/2) = .0316
    assert markdown.count("| no |") == 1
