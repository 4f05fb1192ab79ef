"""Image generators for the builder (`build.ImageGenerator`): local diffusers text-to-image pipelines.

Any directory that `DiffusionPipeline.from_pretrained` loads (Qwen-Image, HunyuanImage-2.1, FLUX.1-dev, SD3.5, or a
tiny pipeline saved with `save_pretrained`) becomes a generator: the pipeline is loaded on first use, images are
drawn in batches, each from its own `torch.Generator` seeded with the pair's render seed (both images of a pair
share it, so they differ by their prompts, not by their noise). `--generator NAME=DIR[:WEIGHT]`, repeatable, mixes
several by weight; the builder picks one per pair and stores its name in the `generator` column. A directory that
is not a pipeline fails before any work, with an error naming what is missing (model_index.json, or a component
folder it lists).

Samplers (`--sampler`, repeatable; each pair's drawn by hash and stored in the `sampler` column): `ode:STEPS`, the
pipeline's own scheduler (for flow-matching pipelines the Euler ODE the evaluation samples with), and
`sde:STEPS:NOISE`, the RL rollouts' sampler: Flow-GRPO's SDE (`shared.flow_sde.FlowSDEScheduler`, the step maths that
`rl_policy.sde` uses) with that noise level on every step but the last, its noise drawn per image from the image's
seed. Without `--sampler` the pipeline's own scheduler draws with `--generator-steps`. `true_cfg_scale` turns on
true classifier-free guidance against the empty prompt (the tiny generator has no guidance distillation; RL and its
evaluation use 3).
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


class SamplerSpec(NamedTuple):
    """How a generator draws: `kind` "ode" (the pipeline's own scheduler) or "sde" (Flow-GRPO's SDE)."""

    kind: str
    steps: int
    noise_level: float = 0.0

    @property
    def name(self) -> str:
        return self.kind


def parse_sampler_spec(text: str) -> SamplerSpec:
    """`ode:STEPS` or `sde:STEPS:NOISE_LEVEL`."""
    parts = text.split(":")
    try:
        if parts[0] == "ode" and len(parts) == 2:
            spec = SamplerSpec("ode", int(parts[1]))
        elif parts[0] == "sde" and len(parts) == 3:
            spec = SamplerSpec("sde", int(parts[1]), float(parts[2]))
        else:
            raise ValueError
    except ValueError:
        raise GeneratorError(f"--sampler must be ode:STEPS or sde:STEPS:NOISE_LEVEL, got {text!r}") from None
    if spec.steps < 2 or not 0 < spec.noise_level <= 2 and spec.kind == "sde":
        raise GeneratorError(f"--sampler {text}: at least 2 steps, and an SDE noise level in (0, 2]")
    return spec


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
    sampler_specs: tuple[SamplerSpec, ...] = ()  # () : the pipeline's own scheduler with `steps`
    true_cfg_scale: float | None = None
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
        names = [spec.name for spec in self.sampler_specs]
        if len(set(names)) != len(names):
            raise GeneratorError(f"generator {self.name}: one --sampler of each kind, got {names}")
        if self.true_cfg_scale is not None and not self.true_cfg_scale >= 1:
            raise GeneratorError(f"generator {self.name}: true CFG scale must be >= 1, got {self.true_cfg_scale}")
        self.pipeline_class = check_pipeline_dir(self.path)["_class_name"]
        self._pipeline = None

    @property
    def samplers(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.sampler_specs)

    def arguments(self) -> dict:
        arguments = {
            "name": self.name,
            "path": str(self.path),
            "pipeline": self.pipeline_class,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
        }
        if self.sampler_specs:  # only then: the arguments of builds made before samplers existed stay as they were
            arguments["samplers"] = [spec._asdict() for spec in self.sampler_specs]
        if self.true_cfg_scale is not None:
            arguments["true_cfg_scale"] = self.true_cfg_scale
        return arguments

    def prompt_too_long(self, prompts: Sequence[str]) -> list[bool]:
        """Per prompt: more tokens than the pipeline's text encoder reads (its second tokenizer's length for Flux
        and SD3, `text_length`; the first tokenizer's for others, whose CLIP-style truncation is not checked)."""
        pipeline = self._load()
        limit = text_length(pipeline).get("max_sequence_length")
        tokenizer = getattr(pipeline, "tokenizer_2", None)
        if limit is None or tokenizer is None:
            return [False] * len(prompts)
        return [len(ids) > limit for ids in tokenizer(list(prompts))["input_ids"]]

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
        """One image per request, in order; requests of different samplers are drawn in separate calls."""
        by_sampler: dict[str | None, list[int]] = {}
        for position, request in enumerate(requests):
            by_sampler.setdefault(request.sampler, []).append(position)
        images: list[Image.Image | None] = [None] * len(requests)
        for sampler, positions in by_sampler.items():
            drawn = self._draw([requests[p] for p in positions], self._sampler_spec(sampler))
            for position, image in zip(positions, drawn, strict=True):
                images[position] = image
        return images

    def _sampler_spec(self, name: str | None) -> SamplerSpec | None:
        if name is None:
            return None
        for spec in self.sampler_specs:
            if spec.name == name:
                return spec
        raise GeneratorError(f"generator {self.name} has no sampler {name!r} (it has {list(self.samplers)})")

    def _draw(self, requests: Sequence[ImageRequest], sampler: SamplerSpec | None) -> list[Image.Image]:
        import torch

        from shared.flow_sde import FlowSDEScheduler
        from shared.io import stable_seed

        (resolution,) = {request.resolution for request in requests}
        pipeline = self._load()
        options = {"guidance_scale": self.guidance_scale} if self.guidance_scale is not None else {}
        if self.true_cfg_scale is not None and self.true_cfg_scale > 1:
            options |= {"true_cfg_scale": self.true_cfg_scale, "negative_prompt": [""] * len(requests)}
        own_scheduler = pipeline.scheduler
        if sampler is not None and sampler.kind == "sde":
            scheduler = FlowSDEScheduler.from_config(own_scheduler.config)
            # the SDE noise of an image, like its initial noise, depends on its seed alone
            scheduler.set_sde(
                sampler.noise_level,
                [torch.Generator("cpu").manual_seed(stable_seed("sde-noise", r.seed) % 2**63) for r in requests],
            )
            pipeline.scheduler = scheduler
        try:
            with torch.inference_mode():
                images = pipeline(
                    prompt=[request.prompt for request in requests],
                    height=resolution,
                    width=resolution,
                    num_inference_steps=self.steps if sampler is None else sampler.steps,
                    # one generator per image, on the CPU: an image's noise depends on its seed alone, not on the
                    # batch or the device
                    generator=[torch.Generator("cpu").manual_seed(request.seed) for request in requests],
                    output_type="pil",
                    **text_length(pipeline),
                    **options,
                ).images
        finally:
            pipeline.scheduler = own_scheduler
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
