"""Diffusers generator backends with tiny FluxPipelines built from configs (rl_policy's `build_tiny_flux_pipeline`,
saved with `save_pretrained`): `python -m data_synthesis build --generator tiny=DIR` end to end (every image drawn by
the pipeline from its prompt and seed, pairs `unreviewed`, a killed build resumes), two generators mixed by weight
with both names recorded, and a directory that is not a pipeline named with what it lacks before any work."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from data_synthesis.__main__ import main
from data_synthesis.build import BuildConfig, build, choose_generator
from data_synthesis.generators import (
    GeneratorError,
    check_pipeline_dir,
    diffusers_generators,
    parse_generator_spec,
)
from data_synthesis.review.app import load_review_pairs
from rl_policy import build_tiny_flux_pipeline


@pytest.fixture(scope="module")
def pipeline_dirs(tmp_path_factory):
    """Two tiny FluxPipelines that differ in their random weights."""
    dirs = []
    for seed in (0, 1):
        directory = tmp_path_factory.mktemp(f"tiny_flux_{seed}")
        build_tiny_flux_pipeline(max_prompt_tokens=32, seed=seed).save_pretrained(directory)
        dirs.append(directory)
    return dirs


def test_build_cli_draws_every_image_with_the_pipeline_and_resumes(pipeline_dirs, tmp_path, one_thread, capsys):
    out = tmp_path / "ds"
    args = ["build", "--out", str(out), "--num-pairs", "3", "--resolution", "64", "--generator"]
    args += [f"tiny={pipeline_dirs[0]}", "--generator-steps", "2", "--generator-batch-size", "4", "--quiet"]
    assert main(args) == 0
    frame = pd.read_parquet(out / "pairs.parquet")
    assert len(frame) == 3 and set(frame["generator"]) == {"tiny"} and set(frame["review_status"]) == {"unreviewed"}
    meta = json.loads((out / "meta.json").read_text())
    assert meta["generator"] == "tiny" and meta["arguments"]["generators"][0]["pipeline"] == "FluxPipeline"
    assert len(load_review_pairs(out)) == 3  # reviewable as it is

    # the image is the pipeline's for that prompt and seed (batched with others, so equal up to rounding)
    row = frame.iloc[1]
    pipeline = DiffusionPipeline.from_pretrained(str(pipeline_dirs[0]))
    pipeline.set_progress_bar_config(disable=True)
    expected = pipeline(
        prompt=[row["perturbed_prompt"]],
        height=64,
        width=64,
        num_inference_steps=2,
        generator=[torch.Generator("cpu").manual_seed(int(row["render_seed"]))],
        output_type="np",
        max_sequence_length=33,  # the tiny generator's own text length (32 prompt tokens + end), not Flux's 512
    ).images[0]
    drawn = np.asarray(Image.open(out / row["perturbed_image"]), dtype=np.float32) / 255
    assert drawn.shape == (64, 64, 3) and np.abs(drawn - expected).max() < 3 / 255

    # a killed build: one image missing; the rerun draws exactly that one again
    before = (out / row["perturbed_image"]).read_bytes()
    (out / row["perturbed_image"]).unlink()
    (out / "meta.json").unlink()
    assert main(args) == 0
    after = np.asarray(Image.open(out / row["perturbed_image"]), dtype=np.int16)
    assert np.abs(after - np.asarray(Image.open(io.BytesIO(before)), dtype=np.int16)).max() <= 2
    assert pd.read_parquet(out / "pairs.parquet").equals(frame)
    capsys.readouterr()


def test_two_generators_mixed_by_weight_record_both_names(pipeline_dirs, tmp_path, one_thread):
    specs = [parse_generator_spec(f"alpha={pipeline_dirs[0]}:1"), parse_generator_spec(f"beta={pipeline_dirs[1]}:3")]
    generators = diffusers_generators(specs, steps=1, batch_size=8)
    config = BuildConfig(num_pairs=6, seed=2, resolution=64)
    build(config, tmp_path / "ds", progress=False, generators=generators)
    frame = pd.read_parquet(tmp_path / "ds" / "pairs.parquet")
    assert set(frame["generator"]) == {"alpha", "beta"}
    expected = [choose_generator(generators, config.seed, index).name for index in frame["index"]]
    assert list(frame["generator"]) == expected
    recorded = json.loads((tmp_path / "ds" / "meta.json").read_text())["arguments"]["generators"]
    assert [(g["name"], g["weight"]) for g in recorded] == [("alpha", 1.0), ("beta", 3.0)]
    shares = [choose_generator(generators, 0, index).name for index in range(4000)]
    assert abs(shares.count("alpha") / 4000 - 0.25) < 0.03


def test_generator_specs_and_directories_that_are_not_pipelines(pipeline_dirs, tmp_path, capsys):
    assert parse_generator_spec("flux=/models/flux:2.5") == ("flux", Path("/models/flux"), 2.5)
    assert parse_generator_spec("qwen=/models/qwen").weight == 1.0
    for bad, message in [("flux", "NAME=DIR"), ("fl ux=/m", "name must be"), ("flux=/m:0", "must be positive")]:
        with pytest.raises(GeneratorError, match=message):
            parse_generator_spec(bad)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(GeneratorError, match="not a diffusers pipeline directory: model_index.json is missing"):
        check_pipeline_dir(empty)
    partial = tmp_path / "partial"
    partial.mkdir()
    index = json.loads((pipeline_dirs[0] / "model_index.json").read_text())
    (partial / "model_index.json").write_text(json.dumps(index))
    for name in ("scheduler", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "vae"):
        (partial / name).mkdir()
    with pytest.raises(GeneratorError, match=r"\(FluxPipeline\) lacks the component folder\(s\) transformer"):
        check_pipeline_dir(partial)

    out = tmp_path / "ds"
    assert main(["build", "--out", str(out), "--num-pairs", "2", "--generator", f"x={partial}", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "lacks the component folder(s) transformer" in err and err.count("\n") == 1
    assert not out.exists()  # refused before any work
