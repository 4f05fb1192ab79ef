"""Prompt source from an existing dataset dir: the pairs of one of its splits, drawn again by a generator backend.

`make data-generated` draws the RL prompt set's *train* split (data/spatialworld-rl) with the tiny generator, so the
critic learns from the generator's own images of prompts RL trains on while the RL test prompts stay unseen. Pair
`index` of the new dataset is row `index` of the source split (in the source's order); it keeps the source row's
prompts, scenes and relations, and gets its own pair id, render seed (from the new dataset's seed) and image paths.
Its split is drawn again from a salted hash of its prompt (`split_fractions`; the unsalted hash drew the source's
splits, so it would put every source train prompt in train again), so the new dataset has its own train/val/test,
all of the source's split.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

from data_synthesis.build import BuildConfig, BuildError, PairDescription, image_paths, split_of
from data_synthesis.scene import Scene, SceneError
from data_synthesis.verify import DatasetError, load_pairs
from shared.io import canonical_sha256, stable_seed

SOURCE_COLUMNS = (
    "prompt",
    "perturbed_prompt",
    "perfect_scene",
    "perturbed_scene",
    "stated_relations",
    "broken_relations",
    "perturbed_relations",
    "broken_families",
    "operations",
    "num_broken",
    "num_relations",
    "num_objects",
)


class DatasetPromptSource:
    """`PromptSource` over the `split` rows of the dataset dir `path` (module docstring)."""

    name = "dataset"
    has_geometry = True

    def __init__(self, path: str | os.PathLike, split: str = "train") -> None:
        self.path, self.split = Path(path), split
        try:
            meta, frame = load_pairs(self.path)
        except DatasetError as error:
            raise BuildError(f"--source-dir: {error}") from None
        self.rows = frame[frame["split"] == split].reset_index(drop=True)
        if self.rows.empty:
            raise BuildError(f"--source-dir {self.path} has no {split!r} pairs")
        self.fingerprint = canonical_sha256(meta.get("arguments", {}))

    def arguments(self) -> dict:
        return {"name": self.name, "dir": str(self.path), "split": self.split, "source_arguments": self.fingerprint}

    def preflight(self, config: BuildConfig) -> None:
        if config.num_pairs > len(self.rows):
            raise BuildError(
                f"--num-pairs {config.num_pairs} is more than the {len(self.rows)} {self.split} pairs of {self.path}"
            )

    def describe(self, config: BuildConfig, indices: Sequence[int]) -> list[PairDescription | str]:
        return [self._describe(config, index) for index in indices]

    def _describe(self, config: BuildConfig, index: int) -> PairDescription | str:
        if index >= len(self.rows):
            return "source_exhausted"
        source = self.rows.iloc[index]
        try:
            scenes = (Scene.from_json(source["perfect_scene"]), Scene.from_json(source["perturbed_scene"]))
        except (SceneError, ValueError, TypeError):
            return "source_scene_malformed"
        row = {column: _plain(source[column]) for column in SOURCE_COLUMNS}
        perfect_image, perturbed_image = image_paths(index)
        pair_seed = stable_seed(config.seed, "pair", index)
        row |= {
            "pair_id": f"{self.name}-{config.seed}-{index:07d}",
            "index": index,
            # salted: the source's own split came from the unsalted hash, so all its train prompts have low values
            "split": split_of(row["prompt"], config.split_fractions, salt=f"{self.name}-{config.seed}"),
            "perfect_image": perfect_image,
            "perturbed_image": perturbed_image,
            "seed": pair_seed,
            "render_seed": random.Random(pair_seed).randrange(2**31),
        }
        return PairDescription(row, scenes)

    def usage(self) -> dict:
        return {}


def _plain(value):
    """A parquet cell as a plain Python value (numpy integers become int)."""
    return value.item() if hasattr(value, "item") and not isinstance(value, str | bytes) else value
