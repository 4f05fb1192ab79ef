"""`make demo` (benchmarks/demo.py): stage bookkeeping with real subprocesses, the report, the sample grid."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
from PIL import Image

from benchmarks.cache import ImageCache
from benchmarks.demo import (
    DEMO_AGREEMENT,
    DEMO_DATA,
    DEMO_RANKED,
    DEMO_REWARD,
    DEMO_RL,
    DemoSize,
    Stage,
    default_stages,
    draw_samples,
    main,
    run_stages,
    sample_grid,
    write_report,
)
from benchmarks.images import SamplerSettings


def touch(path: str) -> tuple[str, ...]:
    """A real stage command that writes `path` (relative to the stage's working dir)."""
    code = f"import pathlib; p = pathlib.Path({path!r}); p.parent.mkdir(parents=True, exist_ok=True); p.write_text('x')"
    return (sys.executable, "-c", code)


def test_stages_run_once_record_times_and_stop_at_a_failure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "reports"
    stages = [
        Stage("first", "writes a", touch("a/done"), "a/done"),
        Stage("lazy", "exits 0 without its file", (sys.executable, "-c", "pass"), "b/done"),
        Stage("after", "never reached", touch("c/done"), "c/done"),
    ]
    records = run_stages(stages, out)
    assert [r["status"] for r in records] == ["ran", "failed", "not run"]
    assert records[1]["error"] == "finished without writing b/done"
    assert not (tmp_path / "c/done").exists()
    ledger = json.loads((out / "demo" / "stages.json").read_text())
    assert set(ledger) == {"first"} and ledger["first"]["seconds"] == records[0]["seconds"] >= 0

    # Resume: the finished stage is not run again (its command would now fail) and keeps its measured time.
    stages[0] = Stage("first", "writes a", (sys.executable, "-c", "raise SystemExit(3)"), "a/done")
    stages[1] = Stage("lazy", "now writes b", touch("b/done"), "b/done")
    records = run_stages(stages, out)
    assert [r["status"] for r in records] == ["present", "ran", "ran"]
    assert records[0]["seconds"] == ledger["first"]["seconds"]
    assert set(json.loads((out / "demo" / "stages.json").read_text())) == {"first", "lazy", "after"}

    failing = [Stage("broken", "exits 3", (sys.executable, "-c", "raise SystemExit(3)"), None)]
    assert run_stages(failing, out)[0]["error"] == "exit status 3"


SMALL = DemoSize(
    data_pairs=1300,
    ranked_prompts=7,
    agreement_prompts=5,
    reward_steps=11,
    rl_steps=3,
    rl_eval_prompts=9,
    eval_limit=4,
)
SMALL_VARIABLES = {
    "DATA_DIR=data/demo/spatialworld",
    "DATA_PAIRS=1300",
    "RANKED_DRAW_DIR=data/demo/draw-train",
    "RANKED_DIR=data/demo/spatialworld-ranked",
    "RANKED_PROMPTS=7",
    "AGREEMENT_DIR=data/demo/agreement-test",
    "AGREEMENT_PROMPTS=5",
    "REWARD_RUN_DIR=runs/demo/reward/tiny",
    "REWARD_STEPS=11",
    "RL_RUNS_DIR=runs/demo/rl",
    "RL_STEPS=3",
    "RL_EVAL_PROMPTS=9",
    "EVAL_OUT=reports/demo",
    "EVAL_LIMIT=4",
}


def test_every_stage_is_its_make_target_with_the_demo_sizes_and_dirs():
    stages = default_stages(SMALL, Path("reports/demo"), "gmake", "gen/pipeline")
    names = ["data", "data-rl", "pretrain-generator", "data-ranked", "agreement-set", "train-reward"]
    assert [stage.name for stage in stages] == names + ["train-rl-oracle", "train-rl", "eval-benchmarks"]
    for stage in stages:
        assert set(stage.command[-len(SMALL_VARIABLES) :]) == SMALL_VARIABLES, stage.name
    targets = {stage.name: stage.command[1 : -len(SMALL_VARIABLES)] for stage in stages}
    assert targets["train-rl-oracle"] == ("train-rl", "REWARD=oracle") and targets["train-rl"] == ("train-rl",)
    assert all(stage.command[0] == "gmake" for stage in stages)
    done = {stage.name: stage.done for stage in stages}
    assert (
        done["data"] == f"{DEMO_DATA}/verify_report.json"
        and done["data-rl"] == "data/spatialworld-rl/verify_report.json"
    )
    assert done["pretrain-generator"] == "gen/pipeline/model_index.json"
    assert done["data-ranked"] == f"{DEMO_RANKED}/meta.json"
    assert done["agreement-set"] == f"{DEMO_AGREEMENT}/samples.parquet"
    assert done["train-reward"] == f"{DEMO_REWARD}/export/metrics.json"
    assert done["train-rl-oracle"] == f"{DEMO_RL}/tiny-oracle/metrics.json" and done["eval-benchmarks"] is None


def test_dry_run_prints_the_commands_with_the_sizes_given(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sizes = ["--data-pairs", "1300", "--ranked-prompts", "7", "--agreement-prompts", "5", "--reward-steps", "11"]
    sizes += ["--rl-steps", "3", "--rl-eval-prompts", "9", "--eval-limit", "4"]
    assert main(["--dry-run", "--make", "mk", "--out", "reports", *sizes]) == 0
    commands = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    assert [command[1] for command in commands] == [
        "data", "data-rl", "pretrain-generator", "data-ranked", "agreement-set", "train-reward", "train-rl",
        "train-rl", "eval-benchmarks",
    ]  # fmt: skip
    assert all(set(command) >= SMALL_VARIABLES for command in commands)
    assert not (tmp_path / "reports").exists()  # nothing ran
    with pytest.raises(SystemExit):
        main(["--dry-run", "--rl-steps", "0"])
    assert "every size must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--dry-run", "--data-pairs", "999"])
    assert "--data-pairs 999: at least 1000" in capsys.readouterr().err


def write_json(path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def fake_finished_demo(root) -> None:
    """The files the demo's stages write, with hand-picked numbers."""
    write_json(
        root / DEMO_REWARD / "export/metrics.json",
        {
            "pairwise_accuracy": 0.93,  # with the ranked pairs; the headline is the renders'
            "pairwise_accuracy_by_kind": {"ranked": 0.734, "render": 0.971},
            "num_test_pairs_by_kind": {"ranked": 88, "render": 401},
            "pairwise_accuracy_by_broken": {"1": 0.944, "2-3": 0.985},
            "pairwise_accuracy_reversed": 0.969,
            "num_test_pairs": 401,
            "ece": 0.0281,
            "ece_calibrated": 0.0226,
            "std_error_auroc": 0.791,
            "agreement_spearman": 0.2125,
            "agreement_spearman_found": 0.245,
            "agreement_top6_bottom6": 0.861,
            "agreement_prompts": 16,
            "agreement_samples_per_prompt": 24,
        },
    )
    rl = {"global_step": 24, "num_eval_samples": 128, "grpo_seconds": 300.4}
    write_json(
        root / DEMO_RL / "tiny-oracle/metrics.json",
        rl | {"reward_source": "oracle", "oracle_accuracy_base": 0.38, "oracle_accuracy_final": 0.43},
    )
    write_json(
        root / DEMO_RL / "tiny/metrics.json",
        rl | {"reward_source": "spatialscore", "oracle_accuracy_base": 0.38, "oracle_accuracy_final": 0.355},
    )
    write_json(
        root / "reports/demo/summary.json",
        {
            "spatialworld-oracle": {
                "base": {"relation_accuracy": 0.48},
                "tiny": {"relation_accuracy": 0.4},
                "tiny-oracle": {"relation_accuracy": 0.52},
            },
            "geneval": {"base": {"overall": 0.25, "corrected": {"overall": 0.3}}, "tiny-oracle": {"overall": 0.3125}},
            "spatialscore-pairs": {"spatialscore": {"scorer": {"pairwise_accuracy": 0.97}}},
        },
    )


def test_report_opens_with_the_three_numbers_and_the_grid_marked_demo_size(tmp_path):
    fake_finished_demo(tmp_path)
    out = tmp_path / "reports"
    data_command = shlex.join(("make", "data", *DemoSize().make_variables(out / "demo")))
    records = [
        {"name": "data", "what": "pairs", "command": data_command, "status": "present", "seconds": 361.0},
        {"name": "train-rl", "what": "GRPO", "command": "make train-rl", "status": "ran", "seconds": 1200.0},
        {"name": "eval", "what": "b", "command": "make eval-benchmarks", "status": "ran", "seconds": 60.0},
    ]
    samples = ("demo_samples.png", ["the red star .", "a cat ."])
    text = write_report(out, records, DemoSize(), root=tmp_path, samples=samples).read_text()
    lines = text.splitlines()
    assert lines[0] == "# SpatialScore demo (DEMO SIZE)"
    assert lines[2].startswith("**Demo size: every number here comes from the small runs of `make demo`")
    assert lines[4] == "## The three numbers"
    # 1. the critic; 2. the RL gain with each reward, in points of oracle relation accuracy; 3. the benchmark table
    assert lines[6].startswith(
        "1. **Critic pairwise accuracy** (tiny SpatialScore, 401 held-out test pairs of renders): **97.1%**"
    )
    assert "one broken relation 94.4%, 2-3 broken 98.5%" in lines[6]
    assert lines[6].endswith("; 73.4% of 88 ranked pairs of the generator's own samples (the oracle's order).")
    assert "| ranked pairs | 73.4% |  |" in lines and "| overall | 93.0% | 95.8% |" in lines
    assert "| oracle | 38.0% | 43.0% | **+5.0 points** | 24 | 128 |" in lines
    assert "| critic (tiny SpatialScore) | 38.0% | 35.5% | **-2.5 points** | 24 | 128 |" in lines
    benchmarks = lines.index("| task | metric | base | RL: oracle | RL: critic |")
    assert "the first 16 prompts of each task" in lines[benchmarks - 2]
    assert (
        lines[benchmarks + 2] == "| spatialworld-oracle | relation accuracy (pixel detector) | 0.480 | 0.520 | 0.400 |"
    )
    assert lines[benchmarks + 3] == "| geneval | overall | 0.250 | 0.312 |  |"
    grid = lines.index("![samples](demo_samples.png)")
    assert benchmarks < grid < lines.index("## Stage times") < lines.index("## Sizes")
    assert lines[grid + 2 : grid + 4] == ["1. the red star .", "2. a cat ."]
    # then the stage times, the sizes (demo against full) and the details
    assert "| data | pairs | present | 361 | `make data $SIZES` |" in lines  # the sizes written once:
    sizes = data_command.removeprefix("make data ")
    assert sizes.startswith("DATA_DIR=data/demo/spatialworld DATA_PAIRS=2000 ") and f"`$SIZES`: `{sizes}`" in lines
    assert "Wall time of the stages run this time: 21.0 min;" in text  # (1200 + 60) / 60: present stages not counted
    assert "of the whole chain, as measured by this run and earlier ones: 27.0 min." in text  # (361 + 1200 + 60) / 60
    assert "| SpatialWorld pairs for the critic | `DATA_PAIRS` | 2000 | 12,000 |" in lines
    assert "| GRPO iterations per RL run | `RL_STEPS` | 24 | 115 |" in lines
    assert "| reversed pairs | 96.9% |" in text and "critic's within-group Spearman" in text
    assert (
        "relation accuracy is 0.212, with every object found 0.245; its top 6 beat its bottom 6 by the oracle in 86.1%"
        in text
    )
    assert "| tiny-oracle | oracle | 38.0% -> 43.0% | n/a -> n/a | n/a -> n/a | 24 | 300 |" in lines


def test_report_of_an_unfinished_demo_says_what_is_missing(tmp_path):
    records = [{"name": "data", "what": "p", "command": "make data", "status": "failed", "seconds": 3.0, "error": "x"}]
    text = write_report(tmp_path / "reports", records, DemoSize(), root=tmp_path).read_text()
    assert text.startswith("# SpatialScore demo (DEMO SIZE)\n")
    assert "1. **Critic**: no reward checkpoint yet." in text and "| oracle | not run |" in text
    assert "No benchmark summary yet" in text and "Not drawn (the chain did not finish)." in text
    assert "| data | p | failed (x) | 3 | `make data` |" in text


def test_sample_grid_places_each_image_in_its_cell():
    red, blue = Image.new("RGB", (32, 32), (255, 0, 0)), Image.new("RGB", (32, 32), (0, 0, 255))
    grid = sample_grid([[red, blue], [blue, red]], ["base", "rl"], cell=64)
    assert grid.size == (28 + 2 * 64, 20 + 2 * 64)
    assert grid.getpixel((28 + 10, 20 + 10)) == (255, 0, 0) and grid.getpixel((28 + 64 + 10, 20 + 10)) == (0, 0, 255)
    assert grid.getpixel((28 + 10, 20 + 64 + 63)) == (0, 0, 255)
    with pytest.raises(ValueError, match="row 0 has 1 images for 2 columns"):
        sample_grid([[red]], ["base", "rl"])


def test_samples_are_drawn_through_the_benchmark_image_cache(small_dataset, tiny_flux_dir, tmp_path, one_thread):
    """The grid's images are the suite's cached images: a second call generates nothing and gives the same grid."""
    settings = SamplerSettings(num_inference_steps=2, height=32, width=32)
    cache = tmp_path / "cache"
    out = tmp_path / "samples.png"
    prompts = draw_samples([("base", tiny_flux_dir)], small_dataset, cache, settings, num_prompts=2, seed=0, out=out)
    assert len(prompts) == 2 and all(prompts)
    cached = sorted(cache.rglob("*.png"))
    assert len(cached) == 2
    first = out.read_bytes()
    written = {path: path.stat().st_mtime_ns for path in cached}
    draw_samples([("base", tiny_flux_dir)], small_dataset, cache, settings, num_prompts=2, seed=0, out=out)
    assert {path: path.stat().st_mtime_ns for path in cache.rglob("*.png")} == written
    assert out.read_bytes() == first
    grid = Image.open(out)
    assert grid.size == (28 + 128, 20 + 2 * 128)
    tile = ImageCache(cache).get(cached[0].stem).resize((128, 128), Image.Resampling.NEAREST)
    cells = [grid.crop((28, 20 + row * 128, 28 + 128, 20 + (row + 1) * 128)) for row in range(2)]
    assert any(cell.tobytes() == tile.tobytes() for cell in cells)
