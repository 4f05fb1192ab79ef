"""A generator's own samples as stage-A examples: the images of a draw (`rl_policy draw` / `make data-ranked`'s draw
dir: samples.parquet and images/) with their prompts' scene graphs (the SpatialWorld dataset dir the draw read), so
that the sentence verdicts, the matching logit and the stated margins are also learnt on the generator's 32 px
samples, labelled by the oracle's reading of each image (`generated_verification_example`).

The samples are split by prompt: every `VAL_EVERY`-th prompt of a draw (its group index) is held out for the
`generated` validation set, so the verdicts are measured on prompts the phase did not train on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import pandas as pd
from PIL import Image, UnidentifiedImageError

from data_synthesis import Relation, Scene
from reward_model.stage_a.examples import VerificationExample, generated_verification_example
from shared import stable_seed

VAL_EVERY = 25  # groups 0, 25, 50, ... of each draw are held out


class GeneratedSample(NamedTuple):
    image: str  # the image file
    scene: Scene  # the prompt's scene graph (the perfect scene of its pair)
    relations: tuple[Relation, ...]  # the relations its prompt states
    held_out: bool  # its prompt belongs to the validation split
    allow_missing: bool = False  # loaded with include_missing: where the oracle lost an object, the example states it
    # (`generated_verification_example`'s allow_missing) instead of being skipped


def load_generated_samples(
    draw_dirs: Sequence[str | os.PathLike], source_dir: str | os.PathLike, *, include_missing: bool = False
) -> list[GeneratedSample]:
    """The samples of `draw_dirs` in which the oracle found every named object (with `include_missing`, every
    sample, each marked `allow_missing`), with their prompts' scene graphs from `source_dir`'s pairs.parquet. One
    clear error for a draw without samples.parquet or images, or a prompt the source does not hold."""
    pairs_path = Path(source_dir) / "pairs.parquet"
    if not pairs_path.is_file():
        raise FileNotFoundError(f"generated samples: the source dataset {source_dir} has no pairs.parquet")
    pairs = pd.read_parquet(pairs_path, columns=["pair_id", "perfect_scene", "stated_relations"])
    graphs = {row.pair_id: (row.perfect_scene, row.stated_relations) for row in pairs.itertuples(index=False)}
    samples: list[GeneratedSample] = []
    for directory in map(Path, draw_dirs):
        table = directory / "samples.parquet"
        if not table.is_file():
            raise FileNotFoundError(
                f"generated samples: {directory} has no samples.parquet (`rl_policy draw` writes one)"
            )
        frame = pd.read_parquet(table, columns=["group", "pair_id", "image", "all_found"])
        unknown = sorted(set(frame["pair_id"]) - graphs.keys())
        if unknown:
            raise ValueError(f"generated samples: {directory}'s prompts {unknown[:3]} are not in {pairs_path}")
        parsed: dict[str, tuple[Scene, tuple[Relation, ...]]] = {}
        for row in (frame if include_missing else frame[frame["all_found"]]).itertuples(index=False):
            if row.pair_id not in parsed:
                scene_json, relations_json = graphs[row.pair_id]
                relations = tuple(Relation.from_dict(item) for item in json.loads(relations_json))
                parsed[row.pair_id] = (Scene.from_json(scene_json), relations)
            scene, relations = parsed[row.pair_id]
            path = directory / row.image
            if not path.is_file():
                raise FileNotFoundError(f"generated samples: {path} is missing (listed in {table})")
            samples.append(GeneratedSample(str(path), scene, relations, row.group % VAL_EVERY == 0, include_missing))
    return samples


def sample_example(
    pool: Sequence[GeneratedSample], seed: int, *, resolution: int = 128, tries: int = 20
) -> VerificationExample | None:
    """The example of `seed`: a sample drawn from `pool` by the seed, the next draw where the oracle reads no
    relation of it clearly (None after `tries`; a corrupt image counts as such a try). A sample marked
    `allow_missing` that lost an object gives an example too (`generated_verification_example`)."""
    for attempt in range(tries):
        draw = stable_seed("stage-a-generated", seed, attempt)
        sample = pool[draw % len(pool)]
        try:
            with Image.open(sample.image) as image:
                picture = image.convert("RGB")
        except (OSError, UnidentifiedImageError):
            continue
        example = generated_verification_example(
            draw, picture, sample.scene, sample.relations, resolution=resolution, allow_missing=sample.allow_missing
        )
        if example is not None:
            return example
    return None
