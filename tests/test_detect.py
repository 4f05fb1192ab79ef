"""The pixel detector: agreement with the scene graph on clean and degraded renders, and "not found" over
guessing."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image, ImageFilter

from data_synthesis.detect import detect, read_relations
from data_synthesis.perturb import sample_pair
from data_synthesis.relations import Relation, Truth
from data_synthesis.render import render
from data_synthesis.sampler import WorldConfig
from data_synthesis.scene import COLOURS, Background, Scene, SceneObject


def degrade(image: Image.Image, seed: int) -> Image.Image:
    """What a small generator's output looks like: blur, pixel noise and JPEG compression."""
    blurred = image.filter(ImageFilter.GaussianBlur(0.5))
    noisy = np.asarray(blurred, dtype=np.float32) + np.random.default_rng(seed).normal(0, 4, (*image.size[::-1], 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=85)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def agreement(resolution: int, degraded: bool, num_pairs: int) -> float:
    """Fraction of renders (perfect and perturbed) whose every stated relation reads as the scene graph says."""
    correct = total = 0
    for seed in range(num_pairs):
        rng = random.Random(seed)
        sample = sample_pair(rng, WorldConfig(3, 6), rng.randint(1, 3))
        if sample is None:
            continue
        colours = [o.colour for o in sample.scene.objects]
        broken = set(sample.perturbation.broken)
        for scene, expected in (
            (sample.scene, [Truth.HOLDS] * len(sample.stated)),
            (
                sample.perturbation.scene,
                [Truth.BROKEN if i in broken else Truth.HOLDS for i in range(len(sample.stated))],
            ),
        ):
            image = render(scene, resolution, seed=seed)
            if degraded:
                image = degrade(image, seed)
            correct += read_relations(image, sample.stated, colours) == expected
            total += 1
    return correct / total


def test_agrees_with_the_scene_graph_on_degraded_64px_renders():
    assert agreement(64, degraded=True, num_pairs=150) >= 0.95


def test_agrees_with_the_scene_graph_on_clean_128px_renders():
    assert agreement(128, degraded=False, num_pairs=100) >= 0.995


def test_says_not_found_on_noise_and_on_an_empty_image():
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8))
    assert not detect(noise, list(COLOURS)).masks
    assert not detect(Image.new("RGB", (96, 96), (228, 226, 212)), list(COLOURS)).masks
    scene = Scene(
        (
            SceneObject("red", "circle", "large", 0.3, 0.3, 0.1, 0),
            SceneObject("blue", "square", "large", 0.7, 0.7, 0.1, 1),
        ),
        Background("plain"),
    )
    layout = detect(render(scene, 96), ["red", "blue", "green"])
    assert layout.found("red") and layout.found("blue") and not layout.found("green")
    assert read_relations(render(scene, 96), [Relation("left_of", ("green", "blue"))], ["green", "blue"]) == [
        Truth.MISSING
    ]


def test_boxes_match_the_geometry_within_a_pixel():
    scene = Scene(
        (
            SceneObject("red", "square", "large", 0.3, 0.4, 0.1, 0),
            SceneObject("cyan", "circle", "medium", 0.7, 0.6, 0.08, 1),
        ),
        Background("sky_ground", 0.5),
    )
    layout = detect(render(scene, 128), ["red", "cyan"])
    for colour in ("red", "cyan"):
        assert layout.box(colour) == pytest.approx(scene[colour].box, abs=1.5 / 128)
    assert layout.horizon() == pytest.approx(0.5, abs=1.5 / 128)


def test_reads_occlusion_and_containment_from_pixels():
    front = SceneObject("red", "circle", "large", 0.42, 0.5, 0.12, 2)
    back = SceneObject("blue", "square", "large", 0.58, 0.5, 0.12, 1)
    layout = detect(render(Scene((front, back), Background("plain")), 128), ["red", "blue"])
    assert layout.occlusion("red", "blue") > 0.02 > -0.02 > layout.occlusion("blue", "red")
    outer = SceneObject("green", "circle", "large", 0.5, 0.5, 0.15, 0)
    inner = SceneObject("pink", "star", "small", 0.5, 0.5, 0.06, 1)
    layout = detect(render(Scene((outer, inner), Background("plain")), 128), ["green", "pink"])
    assert layout.containment("pink", "green") > 0.95 and layout.containment("green", "pink") < 0.1
