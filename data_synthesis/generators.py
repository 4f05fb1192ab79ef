"""Image generators for the builder (`build.ImageGenerator`): local diffusers text-to-image pipelines.

Any directory that `DiffusionPipeline.from_pretrained` loads (Qwen-Image, HunyuanImage-2.1, FLUX.1-dev, SD3.5, or a
tiny pipeline saved with `save_pretrained`) becomes a generator: the pipeline is loaded on first use, images are
drawn in batches, each from its own `torch.Generator` seeded with the pair's render seed (both images of a pair
share it, so they differ by their prompts, not by their noise). `--generator NAME=DIR[:WEIGHT]`, repeatable, mixes
several by weight; the builder picks one per pair and stores its name in the `generator` column. A directory that
is not a pipeline fails before any work, with an error naming what is missing (model_index.json, or a component
folder it lists).
"""

from __future__ import annotations

import gc
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from PIL import Image

from data_synthesis.build import ImageRequest, WeightedGenerator
from shared.dtypes import DTYPE_NAMES, torch_dtype
from shared.pipelines import PipelineDirError, load_pipeline_dir, read_pipeline_index, text_length

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class GeneratorError(ValueError):
    """A generator that cannot be used: a bad --generator value or a directory that is not a diffusers pipeline."""


class GeneratorSpec(NamedTuple):
    name: str
    path: Path
    weight: float


def parse_generator_spec(text: str) -> GeneratorSpec:
    """`NAME=DIR` or `NAME=DIR:WEIGHT` (weight 1 when not given)."""
    name, sep, rest = text.partition("=")
    if not sep or not rest:
        raise GeneratorError(f"--generator must be NAME=DIR[:WEIGHT], got {text!r}")
    if not NAME_PATTERN.fullmatch(name):
        raise GeneratorError(f"--generator name must be 1 to 64 letters, digits or _.- ; got {name!r}")
    path, weight = rest, 1.0
    head, colon, tail = rest.rpartition(":")
    if colon:
        try:
            path, weight = head, float(tail)
        except ValueError:
            path = rest  # a colon inside the path
    if not weight > 0:
        raise GeneratorError(f"--generator {name}: weight must be positive, got {weight}")
    return GeneratorSpec(name, Path(path), weight)


def check_pipeline_dir(path: str | Path) -> dict:
    """The model_index.json of a diffusers pipeline directory, after checking that every component folder it lists
    is there; one GeneratorError naming what is missing otherwise."""
    try:
        return read_pipeline_index(path)
    except PipelineDirError as error:
        raise GeneratorError(str(error)) from None


@dataclass
class DiffusersGenerator:
    """`ImageGenerator` drawing with the diffusers pipeline in `path` (module docstring). `guidance_scale` None
    keeps the pipeline's default; `device` None picks CUDA when there is one; `dtype` None means bfloat16 on CUDA,
    float32 on the CPU."""

    name: str
    path: Path
    steps: int = 28
    guidance_scale: float | None = None
    batch_size: int = 4
    device: str | None = None
    dtype: str | None = None
    exact: bool = False  # draws from the prompt: its images may not follow it, hence review

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not NAME_PATTERN.fullmatch(self.name):
            raise GeneratorError(f"generator name must be 1 to 64 letters, digits or _.- ; got {self.name!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise GeneratorError(f"generator {self.name}: steps and batch size must be at least 1")
        if self.dtype is not None and self.dtype not in DTYPE_NAMES:
            raise GeneratorError(
                f"generator {self.name}: dtype must be one of {', '.join(DTYPE_NAMES)}, got {self.dtype}"
            )
        self.pipeline_class = check_pipeline_dir(self.path)["_class_name"]
        self._pipeline = None

    def arguments(self) -> dict:
        return {
            "name": self.name,
            "path": str(self.path),
            "pipeline": self.pipeline_class,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
        }

    def _load(self):
        if self._pipeline is None:
            import torch

            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            dtype = self.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
            try:
                self._pipeline = load_pipeline_dir(self.path, dtype=torch_dtype(dtype), device=device)
            except PipelineDirError as error:
                raise GeneratorError(str(error)) from None
        return self._pipeline

    def generate(self, requests: Sequence[ImageRequest]) -> list[Image.Image]:
        import torch

        (resolution,) = {request.resolution for request in requests}
        pipeline = self._load()
        options = {"guidance_scale": self.guidance_scale} if self.guidance_scale is not None else {}
        with torch.inference_mode():
            images = pipeline(
                prompt=[request.prompt for request in requests],
                height=resolution,
                width=resolution,
                num_inference_steps=self.steps,
                # one generator per image, on the CPU: an image's noise depends on its seed alone, not on the batch
                # or the device
                generator=[torch.Generator("cpu").manual_seed(request.seed) for request in requests],
                output_type="pil",
                **text_length(pipeline),
                **options,
            ).images
        wrong = [image.size for image in images if image.size != (resolution, resolution)]
        if wrong:
            raise GeneratorError(
                f"generator {self.name} drew {wrong[0][0]} x {wrong[0][1]} images, {resolution} x {resolution} asked "
                "(choose a --resolution the pipeline supports)"
            )
        return [image.convert("RGB") for image in images]

    def close(self) -> None:
        if self._pipeline is not None:
            self._pipeline = None
            gc.collect()
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def diffusers_generators(specs: Sequence[GeneratorSpec], **options) -> list[WeightedGenerator]:
    """One weighted `DiffusersGenerator` per spec, every directory checked before any is loaded."""
    return [WeightedGenerator(DiffusersGenerator(spec.name, spec.path, **options), spec.weight) for spec in specs]
