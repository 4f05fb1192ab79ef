"""Fresh training scenes: SpatialWorld pairs drawn on demand with a finished dataset's settings and another seed.

A dataset dir holds a few thousand training prompts; a tiny model trained on them for many epochs learns those
prompts, not the rule that maps "A left of B" to a layout (docs/research/generator.md, 2026-12-06). `draw_fresh`
draws as many new (prompt, scene, perfect image) triples as asked, with the dataset's world (objects, colours,
shapes, relation families, perturbation filter, renderer), so their distribution is the dataset's. A fresh prompt is
kept only when the dataset's split hash puts it in "train": a prompt of the val or test split (or any prompt that
would have been one) never reaches training.

`FreshScenes.load_or_draw(path, ...)` keeps them in a safetensors file (the images) and a JSON file beside it (the
prompts, scenes, stated relations and the arguments that made them), written atomically, so a resumed run reuses them
and a run with other arguments draws new ones.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.numpy import load_file, save_file
from tqdm import tqdm

from data_synthesis.build import BuildConfig, BuildError, _make_pair, split_of
from data_synthesis.render import render
from data_synthesis.verify import DatasetError
from shared.io import atomic_write_json

SCHEMA = 1
_WORKER: dict = {}


def dataset_config(dataset_dir: str | os.PathLike, seed: int) -> BuildConfig:
    """The BuildConfig of a SpatialWorld dataset dir (its build_args.json) with another `seed` (DatasetError)."""
    path = Path(dataset_dir) / "build_args.json"
    try:
        arguments = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DatasetError(f"cannot read {path}: {error}") from None
    if "prompt_source" in arguments or "generators" in arguments or "best_of" in arguments:
        raise DatasetError(f"{dataset_dir} was not built by SpatialWorld with the Pillow renderer: no fresh scenes")
    if seed == arguments.get("seed"):
        raise DatasetError(f"fresh scenes need a seed other than the dataset's ({seed}): they would repeat its pairs")
    numbers = ("resolution", "min_objects", "max_objects", "max_broken", "jitter", "noise")
    try:
        config = BuildConfig(
            num_pairs=1,
            seed=seed,
            **{k: arguments[k] for k in numbers},
            **{k: tuple(arguments[k]) for k in ("split_fractions", "colours", "shapes")},
        )
        config.check_renderable()
    except (KeyError, TypeError, BuildError) as error:
        raise DatasetError(f"{path} does not describe a SpatialWorld build: {error}") from None
    return config


def _init(config: BuildConfig, resolution: int) -> None:
    _WORKER["config"], _WORKER["resolution"] = config, resolution


def _draw(index: int) -> tuple[str, str, str, np.ndarray] | None:
    """(prompt, perfect scene JSON, stated relations JSON, image [R, R, 3] uint8) of pair `index`, or None when it
    is skipped (no verified perturbation, as the builder skips it, or its prompt is not a train prompt)."""
    config, resolution = _WORKER["config"], _WORKER["resolution"]
    made = _make_pair(config, index)
    if made is None:
        return None
    row, scene, _ = made
    if split_of(row["prompt"], config.split_fractions) != "train":
        return None
    image = render(scene, config.resolution, jitter=config.jitter, noise=config.noise, seed=row["render_seed"])
    if resolution != config.resolution:
        image = image.resize((resolution, resolution), Image.Resampling.BOX)
    return row["prompt"], row["perfect_scene"], row["stated_relations"], np.asarray(image, dtype=np.uint8)


def _results(config: BuildConfig, resolution: int, workers: int) -> Iterator[tuple | None]:
    _init(config, resolution)
    if workers <= 1:
        index = 0
        while True:
            yield _draw(index)
            index += 1
    pool = multiprocessing.get_context("fork").Pool(workers, initializer=_init, initargs=(config, resolution))
    try:
        start = 0
        while True:
            yield from pool.imap(_draw, range(start, start + 4096), chunksize=64)
            start += 4096
    finally:
        pool.terminate()
        pool.join()


@dataclass
class FreshScenes:
    """`count` fresh train pairs: prompts, perfect scenes and stated relations (JSON strings as in pairs.parquet),
    and the perfect images as uint8 [count, R, R, 3]."""

    prompts: list[str]
    scenes: list[str]
    relations: list[str]
    images: np.ndarray
    arguments: dict

    def __len__(self) -> int:
        return len(self.prompts)

    @classmethod
    def draw(
        cls,
        dataset_dir: str | os.PathLike,
        count: int,
        *,
        seed: int,
        resolution: int,
        workers: int = 1,
        progress: bool = True,
    ) -> FreshScenes:
        """Draw `count` fresh train pairs like `dataset_dir`'s, images resized (box filter) to `resolution`."""
        if count < 1:
            raise ValueError(f"the number of fresh scenes must be positive, got {count}")
        config = dataset_config(dataset_dir, seed)
        prompts, scenes, relations = [], [], []
        images = np.empty((count, resolution, resolution, 3), dtype=np.uint8)
        results = _results(config, resolution, workers)
        with tqdm(total=count, desc="fresh scenes", unit="scene", disable=not progress) as bar:
            for result in results:
                if result is None:
                    continue
                images[len(prompts)] = result[3]
                prompts.append(result[0])
                scenes.append(result[1])
                relations.append(result[2])
                bar.update()
                if len(prompts) == count:
                    break
        results.close()
        arguments = cls.arguments_for(dataset_dir, count, seed=seed, resolution=resolution)
        return cls(prompts, scenes, relations, images, arguments)

    @staticmethod
    def arguments_for(dataset_dir: str | os.PathLike, count: int, *, seed: int, resolution: int) -> dict:
        build_args = json.loads((Path(dataset_dir) / "build_args.json").read_text())
        return {"schema": SCHEMA, "dataset": build_args, "count": count, "seed": seed, "resolution": resolution}

    def subset(self, keep: Sequence[bool]) -> FreshScenes:
        """The pairs where `keep` is true, in order (same arguments: a subset is not saved)."""
        rows = [i for i, kept in enumerate(keep) if kept]
        pick = lambda items: [items[i] for i in rows]  # noqa: E731
        return FreshScenes(
            pick(self.prompts), pick(self.scenes), pick(self.relations), self.images[rows], self.arguments
        )

    def save(self, path: str | os.PathLike) -> None:
        """`path` (.safetensors: the images) and `path` with .json (the text and arguments), each written atomically;
        the JSON last, so a JSON that names these arguments always has its images."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        save_file({"images": np.ascontiguousarray(self.images)}, str(temporary))
        os.replace(temporary, path)
        text = {"arguments": self.arguments, "prompts": self.prompts, "scenes": self.scenes}
        atomic_write_json(path.with_suffix(".json"), text | {"relations": self.relations})

    @classmethod
    def load(cls, path: str | os.PathLike) -> FreshScenes:
        path = Path(path)
        try:
            text = json.loads(path.with_suffix(".json").read_text())
            images = load_file(str(path))["images"]
            scenes = cls(text["prompts"], text["scenes"], text["relations"], images, text["arguments"])
        except (OSError, KeyError, TypeError, ValueError) as error:
            raise DatasetError(f"cannot read the fresh scenes {path}: {error}") from None
        if not len(scenes.scenes) == len(scenes.relations) == len(scenes) == scenes.images.shape[0]:
            raise DatasetError(
                f"the fresh scenes {path} are inconsistent: {len(scenes)} prompts, {images.shape} images"
            )
        return scenes

    @classmethod
    def load_or_draw(
        cls,
        path: str | os.PathLike,
        dataset_dir: str | os.PathLike,
        count: int,
        *,
        seed: int,
        resolution: int,
        workers: int = 1,
        progress: bool = True,
    ) -> FreshScenes:
        """The scenes saved at `path` when they were drawn with these arguments, else newly drawn and saved there."""
        path = Path(path)
        wanted = cls.arguments_for(dataset_dir, count, seed=seed, resolution=resolution)
        if path.is_file() and path.with_suffix(".json").is_file():
            saved = cls.load(path)
            if saved.arguments == wanted:
                return saved
        scenes = cls.draw(dataset_dir, count, seed=seed, resolution=resolution, workers=workers, progress=progress)
        scenes.save(path)
        return scenes
