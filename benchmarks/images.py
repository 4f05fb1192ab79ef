"""Where a generator task gets its images: a folder of images, or a diffusers pipeline dir (through the image cache).

Folder layout (`--images DIR`): one sub-folder per prompt, named by the task's prompt id, holding one image per seed:

    DIR/<prompt_id>/<seed>.png                 e.g. DIR/sw-3-0000001/0.png, DIR/00012/3.png
    DIR/<prompt_id>/samples/<seed:04d>.png     GenEval's own output layout (DIR/00012/samples/0003.png)

Seeds are 0 .. images_per_prompt - 1; .png, .jpg, .jpeg and .webp are read. Prompt ids: the pair id for SpatialWorld
prompts, the zero-padded 0-based line number (`00012`) for GenEval metadata. A missing or unreadable image is
reported by the task, never a crash.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image, UnidentifiedImageError

from benchmarks.cache import ImageCache
from shared.io import directory_sha256
from shared.pipelines import text_length

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


class ImageUnreadable(ValueError):
    """An image file exists but cannot be decoded."""


ImageRequest = tuple[str, str, int]  # (prompt_id, prompt, seed): one image a task asks for


class ImageSource(Protocol):
    """Where images come from. A source that can draw several images at once also has `batch_size` and
    `prefetch(requests)`, which the runner calls with the next `batch_size` images before evaluating them."""

    name: str  # what made the images (a folder path, a pipeline's weights hash)

    def get(self, prompt_id: str, prompt: str, seed: int) -> Image.Image | None:
        """The image for (prompt, seed), or None when there is none; `ImageUnreadable` for a corrupt file."""
        ...


def image_paths(root: Path, prompt_id: str, seed: int) -> list[Path]:
    """The candidate files of one image in the folder layout, in the order they are tried."""
    stems = [root / prompt_id / str(seed), root / prompt_id / "samples" / f"{seed:04d}"]
    return [stem.with_name(stem.name + extension) for stem in stems for extension in EXTENSIONS]


class ImageFolder:
    """Images already generated, in the folder layout of the module docstring."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"--images {self.root}: no such directory")
        self.name = f"folder:{self.root.resolve()}"

    def get(self, prompt_id: str, prompt: str, seed: int) -> Image.Image | None:
        for path in image_paths(self.root, prompt_id, seed):
            if path.is_file():
                try:
                    with Image.open(path) as handle:
                        return handle.convert("RGB")
                except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
                    raise ImageUnreadable(f"{path}: {error}") from None
        return None


@dataclass(frozen=True)
class SamplerSettings:
    """Everything besides the prompt and seed that decides a generated image (part of the image cache key)."""

    num_inference_steps: int = 28
    guidance_scale: float = 3.5
    height: int = 512
    width: int = 512
    true_cfg_scale: float = 1.0  # > 1: true classifier-free guidance against the empty prompt (the tiny generator)

    def __post_init__(self) -> None:
        if self.num_inference_steps < 1 or self.height < 8 or self.width < 8:
            raise ValueError(f"sampler settings need steps >= 1 and sides >= 8, got {self}")


class PipelineImages:
    """Images from a diffusers pipeline, cached: the key is (weights hash, prompt, seed, settings), so a rerun with
    the same weights generates nothing. `generated` counts the images made by this object.

    `pipeline` is called as `pipeline(prompt=[...], generator=[torch.Generator(device).manual_seed(seed), ...],
    **settings)` and must return an object with `.images` (PIL images in prompt order), as every diffusers
    text-to-image pipeline does. `prefetch` draws up to `batch_size` uncached images per call (one seeded generator
    per image, so each image's noise is its own seed's); `get` draws one. The batch only changes an image by float
    rounding (measured on the tiny generator: 1 of 16 images differed, by one 8-bit level in some pixels)."""

    def __init__(
        self,
        pipeline: Any,
        weights_sha256: str,
        settings: SamplerSettings,
        cache: ImageCache,
        device: str = "cpu",
        batch_size: int = 8,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
        self.pipeline, self.weights_sha256, self.settings, self.cache = pipeline, weights_sha256, settings, cache
        self.device, self.batch_size = device, batch_size
        self.text_length = text_length(pipeline)  # part of the key: images drawn at another text length differ
        self.name = f"pipeline:{weights_sha256[:16]}:{asdict(settings)}"
        self.generated = 0

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, settings: SamplerSettings, cache: ImageCache, batch_size: int = 8
    ):
        """Load a diffusers pipeline dir (`model_index.json` and its component folders) on CUDA when there is one."""
        directory = Path(directory)
        if not (directory / "model_index.json").is_file():
            raise FileNotFoundError(f"--pipeline {directory} is not a diffusers pipeline dir: model_index.json missing")
        import torch

        from shared.pipelines import load_pipeline_dir  # imports diffusers: only when generating, it takes seconds

        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        pipeline = load_pipeline_dir(directory, dtype=dtype, device=device)
        return cls(pipeline, directory_sha256(directory), settings, cache, device, batch_size)

    @classmethod
    def from_policy(
        cls, directory: str | os.PathLike, settings: SamplerSettings, cache: ImageCache, batch_size: int = 8
    ):
        """An rl_policy output: a `lora/` dir (or the run dir holding one) with `policy.json` naming its base
        pipeline dir; the base is loaded and the LoRA applied. The cache key hashes both."""
        directory = Path(directory)
        lora = directory / "lora" if (directory / "lora" / "policy.json").is_file() else directory
        if not (lora / "policy.json").is_file():
            raise FileNotFoundError(f"--policy {directory} is not an rl_policy run or lora dir: policy.json missing")
        base = json.loads((lora / "policy.json").read_text()).get("base_pipeline")
        if not base or not (Path(base) / "model_index.json").is_file():
            raise FileNotFoundError(f"--policy {directory}: its base pipeline {base!r} is not a diffusers pipeline dir")
        images = cls.from_pretrained(base, settings, cache, batch_size)
        images.pipeline.load_lora_weights(lora)
        images.weights_sha256 = hashlib.sha256((images.weights_sha256 + directory_sha256(lora)).encode()).hexdigest()
        images.name = f"policy:{images.weights_sha256[:16]}:{asdict(settings)}"
        return images

    def key(self, prompt: str, seed: int) -> str:
        return ImageCache.key(self.weights_sha256, prompt, seed, asdict(self.settings) | self.text_length)

    def prefetch(self, requests: list[ImageRequest]) -> None:
        """Draw every requested image not in the cache, `batch_size` per pipeline call."""
        todo: dict[str, tuple[str, int]] = {}
        for _, prompt, seed in requests:
            key = self.key(prompt, seed)
            if key not in todo and not self.cache.contains(key):
                todo[key] = (prompt, seed)
        items = list(todo.items())
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            images = self._draw([prompt for _, (prompt, _) in chunk], [seed for _, (_, seed) in chunk])
            for (key, _), image in zip(chunk, images, strict=True):
                self.cache.put(key, image)

    def get(self, prompt_id: str, prompt: str, seed: int) -> Image.Image:
        key = self.key(prompt, seed)
        image = self.cache.get(key)
        if image is None:
            image = self._draw([prompt], [seed])[0]
            self.cache.put(key, image)
        return image

    def _draw(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        import torch

        generators = [torch.Generator(self.device).manual_seed(seed) for seed in seeds]
        settings = asdict(self.settings)
        if settings["true_cfg_scale"] > 1:
            settings["negative_prompt"] = [""] * len(prompts)
        else:
            del settings["true_cfg_scale"]  # not every pipeline takes it
        images = self.pipeline(prompt=prompts, generator=generators, **settings, **self.text_length).images
        if len(images) != len(prompts):
            raise RuntimeError(f"{self.name}: the pipeline returned {len(images)} images for {len(prompts)} prompts")
        self.generated += len(images)
        return images
