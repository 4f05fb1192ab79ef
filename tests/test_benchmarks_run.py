"""End to end through `python -m benchmarks` on real rendered SpatialWorld images with the pixel detector: the oracle
numbers against the dataset's own ground truth, a rerun that asks no judge and writes byte-identical files, a run
killed midway that resumes without redoing finished samples, GenEval on SpatialWorld images, `compare`, and one
clear error per bad input."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from benchmarks import geneval
from benchmarks.__main__ import main
from benchmarks.cache import CachedJudges, JudgeCache, SampleLog
from benchmarks.images import ImageFolder
from benchmarks.runner import run_task
from benchmarks.spatialworld import SpatialWorldVQA
from benchmarks.tasks import RunInputs, get_task
from data_synthesis import Relation, Scene, load_pairs


@pytest.fixture(scope="module")
def images(small_dataset, tmp_path_factory):
    """The test pairs' images in the --images layout: seed 0 the perfect image, seed 1 the perturbed one."""
    root = tmp_path_factory.mktemp("generated")
    _, frame = load_pairs(small_dataset)
    test = frame[frame["split"] == "test"]
    for row in test.itertuples():
        (root / row.pair_id).mkdir()
        shutil.copy(small_dataset / row.perfect_image, root / row.pair_id / "0.png")
        shutil.copy(small_dataset / row.perturbed_image, root / row.pair_id / "1.png")
    return root, test


def _oracle(small_dataset, images, out, *extra):
    root, _ = images
    args = ["run", "--task", "spatialworld-oracle", "--data", str(small_dataset), "--images", str(root)]
    return main([*args, "--images-per-prompt", "2", "--out", str(out), *extra])


def _log(out):
    return json.loads((out / "run_log.json").read_text())


def test_oracle_numbers_rerun_and_shared_cache(small_dataset, images, tmp_path):
    """The detector reads every stated relation of a perfect image as holding and exactly the broken ones of a
    perturbed image as not (the dataset is verified that way), so with R stated relations and B broken ones over
    the test pairs: relation accuracy = (R + R - B) / 2R, image accuracy = 1/2 (every perfect image, no perturbed
    one), and every object is found."""
    _, test = images
    stated, broken = int(test["num_relations"].sum()), int(test["num_broken"].sum())
    out = tmp_path / "oracle"
    assert _oracle(small_dataset, images, out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_images"] == 2 * len(test) and summary["num_relations"] == 2 * stated
    assert summary["relation_accuracy"] == round((2 * stated - broken) / (2 * stated), 6)
    assert summary["relation_accuracy_all_found"] == summary["relation_accuracy"]
    assert summary["image_accuracy"] == 0.5 and summary["objects_found"] == 1.0 and summary["images_all_found"] == 1.0
    assert summary["missing_images"] == summary["unreadable_answers"] == summary["incomplete_samples"] == 0
    assert _log(out)["judge_calls"] == {"vqa": 2 * len(test)}
    summary_bytes, report_bytes = (out / "summary.json").read_bytes(), (out / "report.md").read_bytes()

    assert _oracle(small_dataset, images, out) == 0  # rerun: every sample is on disk
    assert _log(out)["skipped"] == 2 * len(test) and _log(out)["judge_calls"] == {}
    assert (out / "summary.json").read_bytes() == summary_bytes and (out / "report.md").read_bytes() == report_bytes

    fresh = tmp_path / "fresh"  # a new run dir sharing the cache: every answer comes from the judge cache
    assert _oracle(small_dataset, images, fresh, "--cache-dir", str(out / "cache")) == 0
    assert _log(fresh)["judge_calls"] == {} and _log(fresh)["cache_hits"] == {"vqa": 2 * len(test)}
    assert (fresh / "summary.json").read_bytes() == summary_bytes


class DyingVQA(SpatialWorldVQA):
    """The pixel-detector VQA, killed (an exception) on its call number `die_at`."""

    def __init__(self, die_at: int):
        self.calls, self.die_at = 0, die_at

    def answer(self, *, image, questions):
        self.calls += 1
        if self.calls == self.die_at:
            raise KeyboardInterrupt("killed")
        return super().answer(image=image, questions=questions)


def test_a_killed_run_resumes_without_redoing_finished_samples(small_dataset, images, tmp_path):
    root, test = images
    total = 2 * len(test)
    task, out = get_task("spatialworld-oracle"), tmp_path / "out"

    def inputs(vqa):
        judges = CachedJudges(JudgeCache(tmp_path / "cache.sqlite"), task.name, vqa=vqa)
        return RunInputs(judges, data=small_dataset, images=ImageFolder(root), images_per_prompt=2)

    with pytest.raises(KeyboardInterrupt):
        run_task(task, inputs(DyingVQA(die_at=6)), out)
    assert len(SampleLog(out / "samples.jsonl").load()) == 5 and not (out / "summary.json").exists()

    resumed = run_task(task, inputs(vqa := DyingVQA(die_at=0)), out)
    assert (resumed.skipped, resumed.evaluated, vqa.calls) == (5, total - 5, total - 5)
    uninterrupted = run_task(task, inputs(SpatialWorldVQA()), tmp_path / "whole")
    assert (out / "summary.json").read_bytes() == (tmp_path / "whole" / "summary.json").read_bytes()
    assert uninterrupted.judge_calls == {} and uninterrupted.cache_hits == {"vqa": total}


class BatchingFolder(ImageFolder):
    """A folder source that also takes prefetch calls (as `PipelineImages` does) and records them."""

    batch_size = 3

    def __init__(self, root):
        super().__init__(root)
        self.prefetched: list[list[tuple[str, str, int]]] = []

    def prefetch(self, requests):
        self.prefetched.append(list(requests))


def test_a_batching_source_is_asked_for_the_next_pending_images_once_each(small_dataset, images, tmp_path):
    """The runner hands a batching source the images of the next `batch_size` pending samples before evaluating
    them, each once; after a kill, the resumed run asks only for the samples not yet on disk."""
    root, test = images
    task, out = get_task("spatialworld-oracle"), tmp_path / "out"

    def inputs(vqa, source):
        judges = CachedJudges(JudgeCache(tmp_path / "cache.sqlite"), task.name, vqa=vqa)
        return RunInputs(judges, data=small_dataset, images=source, images_per_prompt=2)

    samples = task.samples(inputs(SpatialWorldVQA(), ImageFolder(root)))
    expected = [task.image_request(sample) for sample in samples]
    assert expected[:2] == [(samples[0].data["prompt_id"], samples[0].data["prompt"], s) for s in (0, 1)]
    with pytest.raises(KeyboardInterrupt):
        run_task(task, inputs(DyingVQA(die_at=5), source := BatchingFolder(root)), out)
    assert source.prefetched == [expected[0:3], expected[3:6]]  # killed while evaluating the 5th sample
    run_task(task, inputs(SpatialWorldVQA(), source := BatchingFolder(root)), out)
    rest = expected[4:]
    assert source.prefetched == [rest[start : start + 3] for start in range(0, len(rest), 3)]


def test_sample_log_drops_a_line_cut_short(tmp_path):
    log = SampleLog(tmp_path / "samples.jsonl")
    log.append({"sample_id": "a", "complete": True})
    with open(log.path, "a") as handle:
        handle.write('{"sample_id": "b", "comp')
    assert list(log.load()) == ["a"] and log.path.read_text().endswith("}\n")
    log.append({"sample_id": "b", "complete": False})
    assert log.load()["b"] == {"sample_id": "b", "complete": False}


def test_geneval_on_spatialworld_images_and_compare(small_dataset, images, tmp_path):
    """`export-prompts --format geneval` writes the test prompts as GenEval metadata (every object with its colour;
    a position clause for a stated left/right/above/below relation that GenEval's rule reads on the scene's boxes).
    The perfect images (seed 0, in GenEval's own folder layout) pass every prompt; the perturbed ones (seed 1) still
    show every object, so they pass every color_attr prompt, and they fail a position prompt exactly when GenEval's
    rule on the perturbed scene's own boxes no longer reads the relation."""
    root, test = images
    metadata = tmp_path / "evaluation_metadata.jsonl"
    assert main(["export-prompts", "--format", "geneval", "--data", str(small_dataset), "--out", str(metadata)]) == 0
    prompts = geneval.load_metadata(metadata)
    assert len(prompts) == len(test) and {p["tag"] for p in prompts} == {"color_attr", "position"}
    folder = tmp_path / "geneval_images"
    expected = {}
    for index, row in enumerate(test.sort_values("pair_id").itertuples()):
        assert prompts[index]["prompt"] == row.prompt
        (folder / f"{index:05d}" / "samples").mkdir(parents=True)
        for seed in (0, 1):
            shutil.copy(root / row.pair_id / f"{seed}.png", folder / f"{index:05d}" / "samples" / f"{seed:04d}.png")
        expected[(f"{index:05d}", 0)] = True
        expected[(f"{index:05d}", 1)] = True
        if prompts[index]["tag"] == "position":
            scene = Scene.from_json(row.perturbed_scene)
            side = Image.open(root / row.pair_id / "1.png").width
            boxes = {f"{o.colour} {o.shape}": tuple(side * v for v in o.box) for o in scene.objects}
            target, subject = prompts[index]["include"][:2]
            relation = subject["position"][0]
            expected[(f"{index:05d}", 1)] = relation in geneval.relative_position(
                boxes[subject["class"]], boxes[target["class"]]
            )
    out = tmp_path / "geneval"
    args = ["run", "--task", "geneval", "--data", str(metadata), "--images", str(folder), "--images-per-prompt", "2"]
    assert main([*args, "--out", str(out)]) == 0
    records = SampleLog(out / "samples.jsonl").load().values()
    assert {(r["prompt_id"], r["seed"]): r["correct"] for r in records} == expected
    assert False in expected.values()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accuracy_by_tag"]["color_attr"] == 1.0 and summary["correct_prompts"] == 1.0

    oracle = tmp_path / "oracle"
    assert _oracle(small_dataset, images, oracle) == 0
    assert main(["compare", str(out), str(oracle), "--out", str(tmp_path / "reports")]) == 0
    comparison = (tmp_path / "reports" / "comparison.md").read_text()
    assert "## geneval" in comparison and "## spatialworld-oracle" in comparison
    assert f"| overall | {summary['overall']:.4f} |" in comparison
    chart = Image.open(tmp_path / "reports" / "spatialworld-oracle.png")
    assert chart.width > 300 and chart.height > 200


def test_relation_questions_are_what_the_oracle_asks(small_dataset, images, tmp_path):
    """One record per image: the found flags per object and the answer per stated relation, in prompt order."""
    _, test = images
    out = tmp_path / "oracle"
    assert _oracle(small_dataset, images, out, "--limit", "1") == 0
    records = list(SampleLog(out / "samples.jsonl").load().values())
    row = test.sort_values("pair_id").iloc[0]
    relations = [Relation.from_dict(r) for r in json.loads(row.stated_relations)]
    assert [r["sample_id"] for r in records] == [f"{row.pair_id}/0", f"{row.pair_id}/1"]
    assert [a["kind"] for a in records[0]["relations"]] == [r.kind for r in relations]
    assert all(a["holds"] for a in records[0]["relations"])
    assert sum(not a["holds"] for a in records[1]["relations"]) == row.num_broken


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--task", "nope"],
            "unknown task 'nope'; known tasks: dpg-bench, geneval, spatialscore-pairs, spatialworld-oracle, "
            "tiif-bench, unigenbench",
        ),
        (["--task", "spatialworld-oracle", "--images", "IMAGES"], "task spatialworld-oracle needs --data"),
        (["--task", "spatialworld-oracle", "--data", "DATA"], "needs images: pass --images DIR or --pipeline DIR"),
        (["--task", "spatialscore-pairs", "--data", "DATA"], "needs --scorer DIR or a pairwise judge"),
        (["--task", "geneval", "--data", "DATA", "--images", "IMAGES"], "expected evaluation_metadata.jsonl"),
        (["--task", "geneval", "--policy", "IMAGES"], "is not an rl_policy run or lora dir: policy.json missing"),
        (["--task", "geneval", "--images", "IMAGES", "--limit", "0"], "--limit must be >= 1"),
        (["--task", "geneval", "--judge", "vlm"], "--judge vlm needs --vlm-url and --vlm-model"),
    ],
)
def test_bad_input_gives_one_clear_error(small_dataset, images, tmp_path, capsys, extra, message):
    root, _ = images
    values = {"DATA": str(small_dataset), "IMAGES": str(root)}
    argv = ["run", "--out", str(tmp_path / "out"), *[values.get(arg, arg) for arg in extra]]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_a_run_dir_belongs_to_one_run(small_dataset, images, tmp_path, capsys):
    out = tmp_path / "oracle"
    assert _oracle(small_dataset, images, out, "--limit", "1") == 0
    other = tmp_path / "other_images"
    shutil.copytree(images[0], other)
    argv = ["run", "--task", "spatialworld-oracle", "--data", str(small_dataset), "--images", str(other)]
    assert main([*argv, "--out", str(out)]) == 2
    assert "pass a fresh --out" in capsys.readouterr().err


def test_missing_and_unreadable_images_are_counted_not_fatal(small_dataset, images, tmp_path):
    """Of the first two prompts' four images, one is missing and one is not an image: both counted and left out."""
    root, test = images
    folder = tmp_path / "images"
    first, second = sorted(test["pair_id"])[:2]
    shutil.copytree(root / first, folder / first)
    shutil.copytree(root / second, folder / second)
    (folder / first / "1.png").unlink()
    (folder / second / "0.png").write_bytes(b"not a png")
    argv = ["run", "--task", "spatialworld-oracle", "--data", str(small_dataset), "--images", str(folder)]
    assert main([*argv, "--images-per-prompt", "2", "--limit", "2", "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["num_images"], summary["missing_images"], summary["unreadable_images"]) == (4, 1, 1)
    assert summary["image_accuracy"] == 0.5  # the perfect image of the first pair, the perturbed one of the second


def test_unigenbench_on_exported_spatialworld_prompts(small_dataset, images, tmp_path):
    """SpatialWorld test prompts exported as a UniGenBench CSV (plus one malformed row), judged by the detector on
    the perfect images (seed 0: every layout testpoint holds) and the perturbed ones (seed 1: some fail)."""
    root, test = images
    csv_path = tmp_path / "unigen.csv"
    assert (
        main(["export-prompts", "--format", "unigenbench", "--data", str(small_dataset), "--out", str(csv_path)]) == 0
    )
    with open(csv_path, "a") as handle:
        handle.write('999,"a broken row","not json"\n')
    folders = tmp_path / "unigen_images"
    for index, row in enumerate(test.itertuples()):  # export order = pairs.parquet order of the test split
        shutil.copytree(root / row.pair_id, folders / str(index))
    out = tmp_path / "unigen"
    args = ["run", "--task", "unigenbench", "--data", str(csv_path), "--images", str(folders), "--out", str(out)]
    assert main([*args, "--images-per-prompt", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layout_2d"] == 100.0 and summary["corrected"]["overall"] == 100.0
    assert summary["num_images"] == len(test)
    assert summary["malformed_rows"] == 1 and summary["malformed"][0]["index"] == "999"
    assert "Malformed rows (skipped)" in (out / "report.md").read_text()
    both = tmp_path / "unigen2"
    assert main([*args[:-1], str(both), "--images-per-prompt", "2"]) == 0
    assert json.loads((both / "summary.json").read_text())["corrected"]["overall"] < 100.0


def test_dpg_bench_on_exported_spatialworld_prompts(small_dataset, images, tmp_path):
    """SpatialWorld test prompts exported as DPG-Bench (existence questions as parents of relation questions),
    answered by the detector: the perfect images (seed 0) score 100 in the corrected variant, perturbed ones less;
    the official-compatible variant skips the CSV's first row (and drops its item only if a question depends on it)."""
    root, test = images
    dpg = tmp_path / "dpg"
    assert main(["export-prompts", "--format", "dpg", "--data", str(small_dataset), "--out", str(dpg)]) == 0
    out = tmp_path / "dpg_run"
    args = ["run", "--task", "dpg-bench", "--data", str(dpg), "--images", str(root), "--out", str(out)]
    assert main([*args, "--images-per-prompt", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["corrected"]["score"] == 100.0 and summary["corrected"]["relation_spatial"] == 100.0
    official, corrected = summary["official_compatible"], summary["corrected"]
    assert official["num_items"] + official["failed_items"] == corrected["num_items"] == len(test)
    assert summary["num_images"] == len(test)
    both = tmp_path / "dpg_both"
    assert main([*args[:-1], str(both), "--images-per-prompt", "2"]) == 0
    assert json.loads((both / "summary.json").read_text())["corrected"]["score"] < 100.0


def test_tiif_bench_on_exported_spatialworld_prompts(small_dataset, images, tmp_path):
    """SpatialWorld test prompts exported in TIIF-Bench's layout; each prompt's perfect image stands for both its
    short- and long-prompt images: every question is answered as expected (100 per length), and the perturbed image
    in the long slot lowers the long-prompt score only."""
    from benchmarks.formats import load_spatialworld_prompts, write_tiif

    root, test = images
    tiif = tmp_path / "tiif"
    assert main(["export-prompts", "--format", "tiif", "--data", str(small_dataset), "--out", str(tiif)]) == 0
    keys = write_tiif(load_spatialworld_prompts(small_dataset, "test"), tmp_path / "again")
    folders = tmp_path / "tiif_images"
    for pair_id, key in keys.items():
        for length, seed_file in (("short", "0.png"), ("long", "1.png")):
            (folders / key / length).mkdir(parents=True)
            shutil.copy(root / pair_id / seed_file, folders / key / length / "0.png")
    out = tmp_path / "tiif_run"
    assert main(["run", "--task", "tiif-bench", "--data", str(tiif), "--images", str(folders), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"]["short"] == 100.0 and summary["overall"]["long"] < 100.0
    assert summary["num_images"] == 2 * len(test) and "temperature 1" in (out / "report.md").read_text()
