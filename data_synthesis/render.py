"""Pillow renderer: anti-aliased shapes (drawn at `supersample` x the size, then box-filtered down), occlusion by
depth order, plain or sky/ground backgrounds, and optional light colour jitter and pixel noise."""

from __future__ import annotations

import random
from collections.abc import Collection

import numpy as np
from PIL import Image, ImageDraw

from data_synthesis.scene import BACKGROUND_COLOURS, COLOURS, Scene, SceneError, draw_shape

MIN_RESOLUTION, MAX_RESOLUTION = 64, 1024


def _jittered(colour: tuple[int, int, int], rng: random.Random, amount: int) -> tuple[int, int, int]:
    if amount == 0:
        return colour
    return tuple(min(255, max(0, c + rng.randint(-amount, amount))) for c in colour)


def render(
    scene: Scene,
    resolution: int = 128,
    *,
    jitter: int = 8,
    noise: float = 0.0,
    seed: int = 0,
    supersample: int = 3,
    omit: Collection[str] = (),
) -> Image.Image:
    """Render `scene` as a `resolution` x `resolution` RGB image.

    `jitter` shifts each colour channel of the background and of every object by up to that many levels and
    `noise` adds Gaussian pixel noise of that standard deviation (in levels); both are drawn from `seed`, so the
    perfect and perturbed images of a pair, rendered with one seed, differ only where the layout differs.
    `omit` names objects (by colour) left out of the picture; every colour is still drawn from `seed`, so the rest of
    the image is exactly the full render's.
    """
    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise SceneError(f"resolution must be in [{MIN_RESOLUTION}, {MAX_RESOLUTION}], got {resolution}")
    unknown = sorted(set(omit) - {o.colour for o in scene.objects})
    if unknown:
        raise SceneError(f"cannot omit {unknown}: the scene has no object of that colour")
    rng = random.Random(seed)
    side = resolution * supersample
    background = scene.background
    if background.kind == "plain":
        canvas = Image.new("RGB", (side, side), _jittered(BACKGROUND_COLOURS["plain"], rng, jitter))
    else:
        canvas = Image.new("RGB", (side, side), _jittered(BACKGROUND_COLOURS["ground"], rng, jitter))
        ImageDraw.Draw(canvas).rectangle(
            (0, 0, side, round(background.horizon * side) - 1), fill=_jittered(BACKGROUND_COLOURS["sky"], rng, jitter)
        )
    object_colours = {o.colour: _jittered(COLOURS[o.colour], rng, jitter) for o in scene.objects}
    draw = ImageDraw.Draw(canvas)
    for obj in sorted(scene.objects, key=lambda o: o.depth):
        if obj.colour in omit:
            continue
        draw_shape(draw, obj, side, object_colours[obj.colour])
    image = canvas.resize((resolution, resolution), Image.Resampling.BOX) if supersample > 1 else canvas
    if noise > 0:
        pixels = np.asarray(image, dtype=np.float32)
        pixels = pixels + np.random.default_rng(seed).normal(0.0, noise, pixels.shape)
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    return image
