"""`make demo` (benchmarks/demo.py): stage bookkeeping with real subprocesses, the report, the sample grid."""

from __future__ import annotations

import json
import sys

import pytest
from PIL import Image

from benchmarks.cache import ImageCache
from benchmarks.demo import Stage, draw_samples, run_stages, sample_grid, write_report
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


def test_report_holds_the_stage_table_and_the_measured_numbers(tmp_path):
    (tmp_path / "runs/reward/tiny/export").mkdir(parents=True)
    (tmp_path / "runs/reward/tiny/export/metrics.json").write_text(
        json.dumps(
            {
                "pairwise_accuracy": 0.589,
                "pairwise_accuracy_by_broken": {"1": 0.577, "2-3": 0.595},
                "pairwise_accuracy_reversed": 0.5834,
                "num_test_pairs": 2397,
                "ece": 0.0281,
                "ece_calibrated": 0.0226,
                "std_error_auroc": 0.491,
            }
        )
    )
    (tmp_path / "runs/rl/tiny-oracle").mkdir(parents=True)
    (tmp_path / "runs/rl/tiny-oracle/metrics.json").write_text(
        json.dumps(
            {
                "reward_source": "oracle",
                "oracle_accuracy_base": 0.25,
                "oracle_accuracy_final": 0.4375,
                "all_found_base": 0.5,
                "all_found_final": 0.625,
                "global_step": 120,
                "grpo_seconds": 1130.4,
            }
        )
    )
    out = tmp_path / "reports"
    out.mkdir()
    (out / "benchmarks.md").write_text("| task | base |\n|---|---|\n| geneval | 0.5 |\n![geneval](geneval.png)\n")
    records = [
        {"name": "data", "what": "pairs", "command": "make data", "status": "present", "seconds": 361.0},
        {"name": "train-rl", "what": "GRPO", "command": "make train-rl", "status": "ran", "seconds": 1200.0},
        {"name": "eval", "what": "b", "command": "make eval-benchmarks", "status": "ran", "seconds": 60.0},
    ]
    samples = ("demo_samples.png", ["the red star .", "a cat ."])
    text = write_report(out, records, root=tmp_path, samples=samples).read_text()
    assert "| data | pairs | `make data` | present | 361 |" in text
    assert "Wall time of the stages run this time: 21.0 min." in text  # (1200 + 60) / 60; present stages not counted
    assert "| overall | 58.9% | 95.8% |" in text and "| 1 broken relation | 57.7% | 93.9% |" in text
    assert "| reversed pairs | 58.3% |" in text and "2397 test pairs" in text
    assert "| tiny-oracle | oracle | 25.0% -> 43.8% | n/a -> n/a | 50.0% -> 62.5% | 120 | 1130 |" in text
    assert "| geneval | 0.5 |" in text and "![geneval](./geneval.png)" in text
    assert "1. the red star .\n2. a cat ." in text


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
