"""Best-of-N drawing and on-policy ranked pairs (data_synthesis.best_of), and the samplers they draw with.

Most tests draw with `FlakyRenderer`, a generator backend whose outcome per seed is known by hand: it renders the
requested scene exactly, but leaves one object out unless seed % 3 == 0, so the oracle accepts exactly the tries
whose seed is a multiple of 3. The tiny random FluxPipeline checks what only a real pipeline can: the SDE and ODE
samplers equal rl_policy's rollout and evaluation samplers, prompts too long for its text encoder, a directory that
is not a pipeline, and a build where nothing is accepted."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from data_synthesis.__main__ import main
from data_synthesis.best_of import BestOf, pair_kind, try_seed
from data_synthesis.build import BuildConfig, BuildError, ImageRequest, WeightedGenerator, build, split_of
from data_synthesis.dataset_source import DatasetPromptSource
from data_synthesis.generators import DiffusersGenerator, SamplerSpec
from data_synthesis.oracle_review import oracle_review, pair_graph, prefers, read_image
from data_synthesis.render import render
from data_synthesis.verify import DatasetError, load_pairs
from reward_model.data import PairCollator, PairRecord, PairwiseDataModule, PairwiseDataset
from rl_policy import build_tiny_flux_pipeline
from rl_policy.policy import FluxPolicy
from rl_policy.rollout import initial_noise, sample_ode, sample_trajectories
from shared.flow_sde import FlowSDEScheduler

CONFIG = BuildConfig(num_pairs=10, seed=2, min_objects=3, max_objects=3, max_broken=1, split_fractions=(0.6, 0.2, 0.2))


class Killed(RuntimeError):
    pass


class FlakyRenderer:
    """Renders the request's scene, leaving its first object out unless seed % `every` == 0 (module docstring);
    with `kill_in`, raises Killed on the first call after a block's record is in that dataset dir (a build killed in
    the middle of its second block)."""

    name, exact, batch_size, samplers = "flaky", False, 4, ("ode", "sde")

    def __init__(self, every: int = 3, kill_in: Path | None = None):
        self.every, self.kill_in, self.calls, self.requests = every, kill_in, 0, []

    def arguments(self) -> dict:
        return {"name": self.name, "every": self.every}

    def prompt_too_long(self, prompts: Sequence[str]) -> list[bool]:
        return [False] * len(prompts)

    def generate(self, requests: Sequence[ImageRequest]) -> list[Image.Image]:
        if self.kill_in is not None and any(self.kill_in.glob("best_of/*.json")):
            raise Killed
        self.calls += 1
        self.requests += requests
        return [
            render(
                r.scene,
                r.resolution,
                seed=r.seed,
                omit=() if r.seed % self.every == 0 else (r.scene.objects[0].colour,),
            )
            for r in requests
        ]

    def close(self) -> None:
        pass


BEST_OF_4 = BestOf(max_tries=4)


def _build(out: Path, generator=None, best_of: BestOf = BEST_OF_4, config: BuildConfig = CONFIG):
    generator = generator or FlakyRenderer()
    return build(config, out, generators=[WeightedGenerator(generator)], best_of=best_of, progress=False)


def _first_good_try(render_seed: int, max_tries: int) -> int | None:
    """Hand rule of FlakyRenderer: the first try whose seed is a multiple of 3, 1-based; None if there is none."""
    return next((t + 1 for t in range(max_tries) if try_seed(render_seed, t) % 3 == 0), None)


def _files(directory: Path) -> dict[str, bytes]:
    names = ("pairs.parquet", "meta.json", "build_args.json")
    files = (
        [directory / n for n in names] + sorted(directory.glob("images/*/*.png")) + sorted(directory.glob("best_of/*"))
    )
    return {path.relative_to(directory).as_posix(): path.read_bytes() for path in files}


def test_best_of_keeps_pairs_the_oracle_accepts_with_their_tries(tmp_path, one_thread):
    out = tmp_path / "ds"
    result = _build(out)
    _, frame = load_pairs(out)
    expected_kept, expected_skipped = [], 0
    for index, render_seed in _described(CONFIG):
        tries = _first_good_try(render_seed, 4)
        if tries is None:
            expected_skipped += 1
        else:
            expected_kept.append((index, tries))
    assert [(r["index"], r["perfect_tries"]) for r in frame.to_dict("records")] == expected_kept
    assert (frame["perfect_tries"] == frame["perturbed_tries"]).all()  # both sides share each try's seed
    assert set(frame["kind"]) == {"generated"} and set(frame["review_status"]) == {"oracle"}
    assert set(frame["sampler"]) <= {"ode", "sde"}
    assert result.counts["skipped"] == ({"no_accepted_image": expected_skipped} if expected_skipped else {})
    log = json.loads((out / "build_log.json").read_text())["best_of"]
    assert log["pairs_tried"] == {"generated": CONFIG.num_pairs} and log["pairs_kept"] == {"generated": len(frame)}
    assert log["rejections"]["perfect"] == {"perfect_object_missing": log["images_drawn"]["perfect"] - len(frame)}
    # the oracle, reviewing the finished dataset, accepts every kept pair
    review = oracle_review(out, progress=False)
    assert review.accepted == len(frame) and sum(review.rejected.values()) == 0


def _described(config: BuildConfig) -> list[tuple[int, int]]:
    """(index, render seed) of the pairs the builder describes: the first num_pairs indices that give a verified
    perturbation with a new prompt."""
    from data_synthesis.build import make_pair

    described, prompts, index = [], set(), 0
    while len(described) < config.num_pairs:
        row = make_pair(config, index)
        if row is not None and row["prompt"] not in prompts:
            described.append((index, row["render_seed"]))
            prompts.add(row["prompt"])
        index += 1
    return described


def test_same_arguments_same_bytes_and_a_killed_build_finishes_the_same(tmp_path, one_thread):
    reference, again, killed = tmp_path / "a", tmp_path / "b", tmp_path / "killed"
    _build(reference)
    _build(again)
    assert _files(reference) == _files(again)

    with pytest.raises(Killed):
        _build(killed, FlakyRenderer(kill_in=killed))
    assert not (killed / "pairs.parquet").exists() and len(list(killed.glob("best_of/*.json"))) == 1
    resumed = FlakyRenderer()
    _build(killed, resumed)
    assert _files(killed) == _files(reference)
    recorded = json.loads(next(killed.glob("best_of/*00000.json")).read_text())["pairs"]
    assert all(r.scene is not None for r in resumed.requests)
    assert json.loads((killed / "build_log.json").read_text())["best_of"]["blocks_reused"] == 1
    assert len(recorded) == FlakyRenderer.batch_size


def test_ranked_pairs_put_the_preferred_sample_first(tmp_path, one_thread):
    out = tmp_path / "ranked"
    _build(out, best_of=BestOf(max_tries=4, ranked_fraction=1.0))
    _, frame = load_pairs(out)
    assert len(frame) > 0 and set(frame["kind"]) == {"ranked"}
    for row in frame.to_dict("records"):
        assert row["perturbed_prompt"] == row["prompt"] and row["perturbed_scene"] == row["perfect_scene"]
        # hand rule: the first sample is whole or not; the first later try of the other class makes the pair
        seeds = [try_seed(row["render_seed"], t) for t in range(4)]
        whole = [seed % 3 == 0 for seed in seeds]
        assert row["perfect_tries"] == whole.index(not whole[0]) + 1
        graph = pair_graph(row)
        preferred = read_image(Image.open(out / row["perfect_image"]), graph.relations, graph.colours)
        other = read_image(Image.open(out / row["perturbed_image"]), graph.relations, graph.colours)
        assert preferred.all_found and not other.all_found and prefers(preferred, other)
        broken = json.loads(row["broken_relations"])
        assert broken and row["num_broken"] == len(broken) and all(other.truths[i].value != "holds" for i in broken)
    # the critic's loader reads them forward only (no reversed reading under one prompt)
    records = [
        PairRecord(r["pair_id"], r["prompt"], r["perturbed_prompt"], out / r["perfect_image"],
                   out / r["perturbed_image"], r["num_broken"], r["broken_families"], kind=r["kind"])
        for r in frame.to_dict("records")
    ]  # fmt: skip
    both = PairwiseDataset(records, "both")
    assert len(both) == len(records) and not any(both[i].is_reversed for i in range(len(both)))
    assert {both[i].kind for i in range(len(both))} == {"ranked"} and len(PairwiseDataset(records, "reversed")) == 0
    skipped = json.loads((out / "meta.json").read_text())["counts"]["skipped"]
    assert len(frame) + skipped.get("no_ordered_samples", 0) == CONFIG.num_pairs


def test_the_critics_loader_reads_renders_and_generated_pairs_with_their_kind(
    small_dataset, processor, tmp_path, one_thread
):
    generated = tmp_path / "generated"
    all_train = BuildConfig(num_pairs=12, seed=2, min_objects=3, max_objects=3, max_broken=1, split_fractions=(1, 0, 0))
    _build(generated, best_of=BestOf(max_tries=4, ranked_fraction=0.5), config=all_train)
    _, renders = load_pairs(small_dataset)
    _, drawn = load_pairs(generated)
    assert set(drawn["kind"]) == {"generated", "ranked"}  # review_status "oracle": loaded by default
    module = PairwiseDataModule(small_dataset, processor, orientation="both", extra_dataset_dirs=[generated])
    module.setup("fit")
    train = module.records["train"]
    expected = Counter(renders.loc[renders["split"] == "train", "kind"])
    expected.update(drawn.loc[drawn["split"] == "train", "kind"])
    assert Counter(record.kind for record in train) == expected and expected["ranked"] > 0
    assert all(r.perfect_image.parent.parent.parent == generated for r in train if r.kind != "render")
    assert all(r.perfect_scene is None for r in train if r.kind != "render")  # omission re-renders renders only
    dataset = module.dataset("train")
    assert len(dataset) == 2 * len(train) - expected["ranked"]  # ranked pairs: forward only
    examples = [dataset[i] for i in range(len(dataset))]
    assert not any(e.is_reversed for e in examples if e.kind == "ranked")
    batch = PairCollator(processor)(examples[-6:])
    assert batch.kinds == [e.kind for e in examples[-6:]] and batch.num_pairs == 6
    with pytest.raises(DatasetError, match="appears in more than one of the dataset dirs"):
        PairwiseDataModule(small_dataset, processor, extra_dataset_dirs=[small_dataset]).setup("fit")

    repeats = {"generated": 3, "ranked": 2}  # oversampled kinds, in the train split only
    repeated = PairwiseDataModule(
        small_dataset, processor, orientation="both", extra_dataset_dirs=[generated], train_repeats=repeats
    )
    repeated.setup("fit")
    oversampled = repeated.dataset("train")
    counts = Counter(oversampled[i].kind for i in range(len(oversampled)))
    assert counts == {
        "render": 2 * expected["render"],
        "generated": 6 * expected["generated"],
        "ranked": 2 * expected["ranked"],
    }
    assert len(repeated.dataset("val")) == len(module.dataset("val"))
    for wrong in ({"drawn": 2}, {"generated": 0}, {"ranked": 1.5}):
        with pytest.raises(ValueError, match="train_repeats maps kinds"):
            PairwiseDataModule(small_dataset, processor, train_repeats=wrong)


def test_a_redrawn_split_spreads_the_source_train_prompts_over_every_split():
    prompts = [f"a red circle left of a blue square, number {i}" for i in range(3000)]
    train = [prompt for prompt in prompts if split_of(prompt, (0.9, 0.05, 0.05)) == "train"]
    assert not any(split_of(prompt, (0.8, 0.1, 0.1)) == "test" for prompt in train)  # the unsalted hash: never
    salted = Counter(split_of(prompt, (0.8, 0.1, 0.1), salt="dataset-0") for prompt in train)
    assert abs(salted["test"] / len(train) - 0.1) < 0.03 and abs(salted["val"] / len(train) - 0.1) < 0.03


def test_kinds_are_drawn_by_hash_at_the_requested_fraction():
    kinds = [pair_kind(0, index, 0.25) for index in range(4000)]
    assert abs(kinds.count("ranked") / 4000 - 0.25) < 0.03
    assert pair_kind(0, 7, 0.0) == "generated" and pair_kind(0, 7, 1.0) == "ranked"


def test_a_detector_failure_and_a_pair_with_nothing_accepted_are_skipped_and_counted(tmp_path, monkeypatch, one_thread):
    calls = {"n": 0}
    real = read_image

    def first_call_fails(image, relations, colours):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("the detector broke on this image")
        return real(image, relations, colours)

    monkeypatch.setattr("data_synthesis.best_of.read_image", first_call_fails)
    out = tmp_path / "failing"
    _build(out)
    log = json.loads((out / "build_log.json").read_text())["best_of"]
    assert log["rejections"]["perfect"]["detector_failed"] == 1

    nothing = tmp_path / "nothing"
    result = _build(nothing, FlakyRenderer(every=10**9 + 7))  # (almost) no seed is a multiple: nothing is accepted
    assert result.counts["pairs"] == 0 and result.counts["skipped"] == {"no_accepted_image": CONFIG.num_pairs}
    assert pd.read_parquet(nothing / "pairs.parquet").empty and not list(nothing.glob("images/*/*.png"))


def test_dataset_prompt_source_draws_another_datasets_split(tmp_path, one_thread):
    source_dir = tmp_path / "source"
    build(CONFIG, source_dir, progress=False)
    _, source = load_pairs(source_dir)
    train = source[source["split"] == "train"].reset_index(drop=True)
    config = BuildConfig(num_pairs=len(train), seed=9, min_objects=3, max_objects=3, max_broken=1)
    out = tmp_path / "drawn"
    build(
        config, out, prompt_source=DatasetPromptSource(source_dir, "train"),
        generators=[WeightedGenerator(FlakyRenderer())], best_of=BestOf(max_tries=4), progress=False,
    )  # fmt: skip
    _, frame = load_pairs(out)
    assert set(frame["prompt"]) <= set(train["prompt"]) and len(frame) > 0
    for row in frame.to_dict("records"):
        assert row["stated_relations"] == train.loc[row["index"], "stated_relations"]
    too_many = BuildConfig(num_pairs=len(train) + 1, seed=9, min_objects=3, max_objects=3, max_broken=1)
    with pytest.raises(BuildError, match=f"more than the {len(train)} train pairs"):
        build(too_many, tmp_path / "x", prompt_source=DatasetPromptSource(source_dir, "train"),
              generators=[WeightedGenerator(FlakyRenderer())], best_of=BestOf(), progress=False)  # fmt: skip
    assert not (tmp_path / "x").exists()


# --- a real (tiny, random) FluxPipeline ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_flux")
    build_tiny_flux_pipeline(seed=0).save_pretrained(directory)
    return directory


def test_the_samplers_are_the_rl_rollouts_and_the_evaluations(pipeline_dir, one_thread):
    """FluxPipeline with FlowSDEScheduler = rl_policy's sample_trajectories (6 SDE steps, the last Euler; true CFG
    3) from the same noise; with its own scheduler = sample_ode (20 Euler steps)."""
    from shared.pipelines import load_pipeline_dir

    pipeline = load_pipeline_dir(pipeline_dir)
    policy = FluxPolicy(pipeline, max_sequence_length=pipeline.tokenizer_2.model_max_length)
    prompt, size = "a red circle to the left of a blue square", dict(height=32, width=32)
    options = dict(negative_prompt=[""], true_cfg_scale=3.0, output_type="pt", **size)
    options["max_sequence_length"] = pipeline.tokenizer_2.model_max_length

    noise = initial_noise(policy, 1, 32, 32, torch.Generator().manual_seed(3))
    expected = sample_ode(policy, [prompt], num_steps=20, cfg_scale=3.0, noise=noise.clone(), **size)
    drawn = pipeline(prompt=[prompt], num_inference_steps=20, latents=noise.clone(), **options).images
    assert (drawn - expected).abs().max() < 1e-5

    trajectory = sample_trajectories(
        policy, [prompt], 1, num_steps=6, noise_level=0.8, cfg_scale=3.0, generator=torch.Generator().manual_seed(5),
        **size,
    )  # fmt: skip
    expected = policy.decode(trajectory.latents[:, -1], 32, 32)
    generator = torch.Generator().manual_seed(5)  # the same stream: initial noise first, then each step's noise
    noise = initial_noise(policy, 1, 32, 32, generator)
    scheduler = FlowSDEScheduler.from_config(pipeline.scheduler.config)
    scheduler.set_sde(0.8, [generator])
    pipeline.scheduler = scheduler
    drawn = pipeline(prompt=[prompt], num_inference_steps=6, latents=noise, **options).images
    assert (drawn - expected).abs().max() < 1e-4
    assert (drawn - policy.decode(trajectory.latents[:, -2], 32, 32)).abs().max() > 1e-3  # the steps did something


def test_sde_images_depend_on_their_seed_alone(pipeline_dir, one_thread):
    generator = DiffusersGenerator(
        "tiny", pipeline_dir, sampler_specs=(SamplerSpec("sde", 4, 0.8), SamplerSpec("ode", 4)), true_cfg_scale=3.0
    )
    request = ImageRequest("a red circle to the left of a blue square", None, 11, 32, "sde")
    alone = generator.generate([request])[0]
    batched = generator.generate([request._replace(seed=12), request, request._replace(sampler="ode")])
    difference = torch.tensor(list(alone.getdata())) - torch.tensor(list(batched[1].getdata()))
    assert difference.abs().max() <= 1  # batched with others: equal up to rounding
    assert list(batched[0].getdata()) != list(alone.getdata()) and list(batched[2].getdata()) != list(alone.getdata())


def test_generated_build_bad_inputs(pipeline_dir, tmp_path, capsys, one_thread):
    base = ["build", "--num-pairs", "2", "--resolution", "32", "--min-objects", "2", "--max-objects", "2", "--quiet"]
    base += ["--best-of", "2", "--sampler", "sde:2:0.8", "--generator-batch-size", "4"]
    # a generator dir that is not a pipeline: one error before any work
    not_pipeline = tmp_path / "not_pipeline"
    not_pipeline.mkdir()
    assert main([*base, "--out", str(tmp_path / "a"), "--generator", f"x={not_pipeline}"]) == 2
    error = capsys.readouterr().err
    assert "model_index.json is missing" in error and "Traceback" not in error and not (tmp_path / "a").exists()

    # nothing accepted (random weights draw noise): every pair skipped and counted, same bytes twice
    for name in ("b", "c"):
        assert main([*base, "--out", str(tmp_path / name), "--generator", f"tiny={pipeline_dir}"]) == 0
    assert "skipped {'no_accepted_image': 2}" in capsys.readouterr().out
    assert _files(tmp_path / "b") == _files(tmp_path / "c")

    # prompts longer than the text encoder takes: skipped and counted before drawing
    short = tmp_path / "short_text"
    build_tiny_flux_pipeline(max_prompt_tokens=6, seed=0).save_pretrained(short)
    assert main([*base, "--out", str(tmp_path / "d"), "--generator", f"tiny={short}"]) == 0
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert meta["counts"]["skipped"]["prompt_too_long"] == 2 and meta["counts"]["pairs"] == 0
    log = json.loads((tmp_path / "d" / "build_log.json").read_text())["best_of"]
    assert log["images_drawn"] == {}
