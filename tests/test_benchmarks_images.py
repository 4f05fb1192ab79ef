"""Image sources: the folder layout (ours and GenEval's), unreadable files reported per sample, and generated images
cached by (weights hash, prompt, seed, settings) so a rerun generates nothing (a test-double pipeline that draws
its seed)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from PIL import Image

from benchmarks.cache import ImageCache
from benchmarks.images import ImageFolder, ImageUnreadable, PipelineImages, SamplerSettings
from benchmarks.judges import image_sha256
from shared.io import directory_sha256


def test_folder_layouts_and_bad_files(tmp_path):
    (tmp_path / "sw-1").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "sw-1" / "0.png")
    (tmp_path / "00003" / "samples").mkdir(parents=True)
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "00003" / "samples" / "0002.jpg")
    (tmp_path / "sw-1" / "1.png").write_bytes(b"not a png")
    folder = ImageFolder(tmp_path)
    assert folder.get("sw-1", "", 0).getpixel((0, 0)) == (255, 0, 0)
    assert folder.get("00003", "", 2).getpixel((0, 0))[2] > 200
    assert folder.get("sw-1", "", 5) is None
    with pytest.raises(ImageUnreadable, match="1.png"):
        folder.get("sw-1", "", 1)
    with pytest.raises(FileNotFoundError, match="--images .*nowhere: no such directory"):
        ImageFolder(tmp_path / "nowhere")


def test_image_hash_ignores_the_file_format(tmp_path):
    image = Image.new("RGB", (8, 8), (1, 2, 3))
    image.save(tmp_path / "a.png")
    image.convert("RGBA").save(tmp_path / "b.png")
    assert image_sha256(Image.open(tmp_path / "a.png")) == image_sha256(Image.open(tmp_path / "b.png"))
    assert image_sha256(image) != image_sha256(Image.new("RGB", (8, 8), (1, 2, 4)))


class SeedPipeline:
    """Test double of a diffusers text-to-image pipeline called with lists of prompts and generators: per prompt a
    solid image whose red channel is its generator's first random byte, so equal seeds give equal images."""

    def __init__(self):
        self.calls = []

    def __call__(self, *, prompt, generator, num_inference_steps, guidance_scale, height, width):
        import torch

        assert isinstance(prompt, list) and len(generator) == len(prompt)
        self.calls.append((prompt, num_inference_steps))
        reds = [int(torch.randint(0, 256, (1,), generator=g)) for g in generator]
        return SimpleNamespace(images=[Image.new("RGB", (width, height), (red, 0, 0)) for red in reds])


def test_generated_images_are_cached_by_weights_prompt_seed_and_settings(tmp_path):
    cache, settings = ImageCache(tmp_path / "images"), SamplerSettings(num_inference_steps=2, height=16, width=16)
    pipeline = SeedPipeline()
    source = PipelineImages(pipeline, "a" * 64, settings, cache)
    first = source.get("p0", "a red circle", 3)
    assert first.size == (16, 16) and source.generated == 1
    assert source.get("p0", "a red circle", 3).tobytes() == first.tobytes() and len(pipeline.calls) == 1
    source.get("p0", "a red circle", 4)
    source.get("p0", "a blue circle", 3)
    assert len(pipeline.calls) == 3
    rerun = PipelineImages(SeedPipeline(), "a" * 64, settings, cache)  # a new process: everything from disk
    assert rerun.get("p0", "a red circle", 3).tobytes() == first.tobytes() and rerun.pipeline.calls == []
    other_weights = PipelineImages(SeedPipeline(), "b" * 64, settings, cache)
    other_weights.get("p0", "a red circle", 3)
    other_settings = PipelineImages(SeedPipeline(), "a" * 64, SamplerSettings(3, 3.5, 16, 16), cache)
    other_settings.get("p0", "a red circle", 3)
    assert len(other_weights.pipeline.calls) == len(other_settings.pipeline.calls) == 1


def test_prefetch_draws_uncached_images_in_batches(tmp_path):
    cache, settings = ImageCache(tmp_path / "images"), SamplerSettings(num_inference_steps=2, height=16, width=16)
    one_by_one = PipelineImages(SeedPipeline(), "a" * 64, settings, ImageCache(tmp_path / "single"))
    expected = {seed: one_by_one.get("p", "a red circle", seed).tobytes() for seed in range(7)}
    source = PipelineImages(SeedPipeline(), "a" * 64, settings, cache, batch_size=3)
    source.get("p", "a red circle", 2)
    requests = [("p", "a red circle", seed) for seed in [0, 1, 2, 3, 3, 4, 5, 6]]  # seed 2 cached, 3 asked twice
    source.prefetch(requests)
    assert [len(prompts) for prompts, _ in source.pipeline.calls] == [1, 3, 3] and source.generated == 7
    assert {seed: source.get("p", "a red circle", seed).tobytes() for seed in range(7)} == expected
    assert len(source.pipeline.calls) == 3  # every get after the prefetch came from the cache
    source.prefetch(requests)
    assert len(source.pipeline.calls) == 3
    with pytest.raises(ValueError, match="--batch-size must be >= 1"):
        PipelineImages(SeedPipeline(), "a" * 64, settings, cache, batch_size=0)


def test_pipeline_dir_errors_and_weights_hash(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a diffusers pipeline dir: model_index.json missing"):
        PipelineImages.from_pretrained(tmp_path, SamplerSettings(), ImageCache(tmp_path / "cache"))
    (tmp_path / "unet").mkdir()
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    (tmp_path / "unet" / "weights.bin").write_bytes(b"\x00" * 10)
    before = directory_sha256(tmp_path)
    (tmp_path / "unet" / "weights.bin").write_bytes(b"\x00" * 9 + b"\x01")
    assert directory_sha256(tmp_path) != before
    with pytest.raises(ValueError, match="steps >= 1"):
        SamplerSettings(num_inference_steps=0)


def test_oracle_on_images_generated_by_a_pipeline_dir(small_dataset, tiny_flux_dir, tmp_path):
    """`--pipeline DIR`: 2 prompts x 2 seeds generated once into the image cache; a second run into a fresh out dir
    with the same cache generates nothing (the cached files are not rewritten) and gives the same summary bytes."""
    from benchmarks.__main__ import main

    argv = ["run", "--task", "spatialworld-oracle", "--data", str(small_dataset), "--pipeline", str(tiny_flux_dir)]
    argv += ["--steps", "2", "--height", "32", "--width", "32", "--images-per-prompt", "2", "--limit", "2"]
    cache = tmp_path / "cache"
    assert main([*argv, "--cache-dir", str(cache), "--out", str(tmp_path / "first")]) == 0
    images = sorted((cache / "images").rglob("*.png"))
    assert len(images) == 4 and all(Image.open(path).size == (32, 32) for path in images)
    written = {path: path.stat().st_mtime_ns for path in images}
    assert main([*argv, "--cache-dir", str(cache), "--out", str(tmp_path / "second")]) == 0
    assert {path: path.stat().st_mtime_ns for path in (cache / "images").rglob("*.png")} == written
    second_log = json.loads((tmp_path / "second" / "run_log.json").read_text())
    assert second_log["judge_calls"] == {} and second_log["cache_hits"] == {"vqa": 4}
    first_summary = (tmp_path / "first" / "summary.json").read_bytes()
    assert (tmp_path / "second" / "summary.json").read_bytes() == first_summary
    assert json.loads(first_summary)["num_images"] == 4


def test_policy_dir_applies_its_lora_to_the_base_pipeline(tiny_flux_dir, tmp_path):
    """An rl_policy-style lora/ dir (diffusers LoRA + policy.json naming the base): images differ from the base's,
    are cached under another key, and true CFG runs."""
    import torch
    from diffusers import FluxPipeline
    from peft.utils import get_peft_model_state_dict

    from rl_policy import add_lora, load_pipeline

    base = load_pipeline(tiny_flux_dir)
    add_lora(base.transformer, rank=4, target_modules=("attn.to_q", "attn.to_k"))
    with torch.no_grad():
        for name, parameter in base.transformer.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    lora = tmp_path / "run" / "lora"
    FluxPipeline.save_lora_weights(lora, transformer_lora_layers=get_peft_model_state_dict(base.transformer))
    (lora / "policy.json").write_text(json.dumps({"base_pipeline": str(tiny_flux_dir)}))

    settings = SamplerSettings(num_inference_steps=2, height=32, width=32, true_cfg_scale=2.0)
    cache = ImageCache(tmp_path / "cache")
    plain = PipelineImages.from_pretrained(tiny_flux_dir, settings, cache)
    tuned = PipelineImages.from_policy(tmp_path / "run", settings, cache)
    assert tuned.weights_sha256 != plain.weights_sha256
    assert image_sha256(tuned.get("p", "the red star .", 0)) != image_sha256(plain.get("p", "the red star .", 0))
    assert tuned.generated == plain.generated == 1
    (lora / "policy.json").write_text(json.dumps({"base_pipeline": str(tmp_path / "nowhere")}))
    with pytest.raises(FileNotFoundError, match="is not a diffusers pipeline dir"):
        PipelineImages.from_policy(lora, settings, cache)


def test_batched_images_of_a_real_pipeline_match_its_one_by_one_images(tiny_flux_dir, tmp_path):
    """Four prompts drawn in one call with true CFG (a list of seeded generators and negative prompts) equal the
    images drawn one per call, up to float rounding in the batch (at most one 8-bit level)."""
    import numpy as np

    settings = SamplerSettings(num_inference_steps=3, height=32, width=32, true_cfg_scale=3.0)
    requests = [
        (f"p{i}", f"the {colour} star is left of the blue square .", i)
        for i, colour in enumerate(["red", "green", "yellow", "red"])
    ]
    batched = PipelineImages.from_pretrained(tiny_flux_dir, settings, ImageCache(tmp_path / "batched"), batch_size=4)
    batched.prefetch(requests)
    assert batched.generated == 4
    single = PipelineImages.from_pretrained(tiny_flux_dir, settings, ImageCache(tmp_path / "single"), batch_size=1)
    for request in requests:
        a, b = (np.asarray(source.get(*request), dtype=int) for source in (batched, single))
        assert np.abs(a - b).max() <= 1
    assert batched.generated == 4 and single.generated == 4
    drawn = [np.asarray(batched.get(*request)) for request in requests]
    assert not np.array_equal(drawn[0], drawn[3])  # same prompt, other seed


def test_the_tiny_generator_dir_loads_without_rl_policy_imported_and_at_its_own_text_length(tmp_path):
    """The embedded generator's pipeline dir names its pixel-space autoencoder's library (rl_policy.policy): a fresh
    process that never imported rl_policy loads it, and draws at the text length the generator was built with (97
    tokens), not Flux's default 512: the image equals the pipeline's own call with that length and differs from 512."""
    import subprocess
    import sys

    import numpy as np
    import torch

    from rl_policy.policy import build_tiny_flux_pipeline

    pipeline = build_tiny_flux_pipeline(max_prompt_tokens=96, seed=0)
    pipeline.save_pretrained(tmp_path / "generator")
    code = f"""
import sys
from benchmarks.cache import ImageCache
from benchmarks.images import PipelineImages, SamplerSettings
assert "rl_policy" not in sys.modules
settings = SamplerSettings(num_inference_steps=3, height=32, width=32, true_cfg_scale=3.0)
cache = ImageCache({str(tmp_path / "cache")!r})
images = PipelineImages.from_pretrained({str(tmp_path / "generator")!r}, settings, cache)
assert images.text_length == {{"max_sequence_length": 97}}, images.text_length
images.get("p", "the red star is left of the blue square .", 5).save({str(tmp_path / "drawn.png")!r})
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    drawn = np.asarray(Image.open(tmp_path / "drawn.png"))

    def own(length: int) -> np.ndarray:
        image = pipeline(
            prompt="the red star is left of the blue square .",
            negative_prompt="",
            true_cfg_scale=3.0,
            num_inference_steps=3,
            guidance_scale=3.5,
            height=32,
            width=32,
            generator=torch.Generator("cpu").manual_seed(5),
            max_sequence_length=length,
        ).images[0]
        return np.asarray(image.convert("RGB"))

    assert (own(97) == drawn).all()
    assert not (own(512) == drawn).all()
