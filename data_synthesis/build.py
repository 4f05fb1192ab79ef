"""Dataset builder: (prompt, perfect image, perturbed image) triplets written as the dataset dir of docs/DESIGN.md.

Determinism: pair `i` depends only on (seed, i), so the same arguments give the same pairs whatever the number of
workers; the dataset is the first `num_pairs` indices whose perturbation verified and whose prompt is new.
Resumable: images are written atomically as soon as they are rendered, and a rerun with the same arguments
regenerates the (cheap) pair descriptions and renders only the images that are missing; `pairs.parquet` and
`meta.json` are written last, atomically. Splits are drawn from a hash of the prompt, so they are disjoint by
prompt.

Backends: pairs are described by a `PromptSource` (the SpatialWorld sampler by default; an LLM in
`llm_source.py`) and drawn by `ImageGenerator`s (the Pillow renderer by default; local diffusers pipelines in
`generators.py`, several mixed by weight, the generator chosen per pair from (seed, index)). SpatialWorld pairs
drawn by the Pillow renderer match their scene graphs exactly and are `verified`; every other pair is
`unreviewed` (for review with `python -m data_synthesis review`). The default backends run pair by pair in worker
processes; other backends describe every pair first (an LLM source answers them concurrently), then draw the
images generator by generator (one pipeline in memory at a time), in batches.

Best-of-N (`best_of.py`): a generator backend draws each image of a pair until the SpatialWorld oracle accepts it,
or on-policy ranked pairs (two samples of one prompt that the oracle orders); such pairs are `oracle`-reviewed.
Every row says how its images were made in `kind`: "render" (the Pillow renderer, exact), "generated" (a generator
drew the perfect and the perturbed prompt), "ranked" (a generator drew the one prompt twice; the oracle prefers
the `perfect_image` to the `perturbed_image`).
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
import random
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

import pandas as pd
from PIL import Image
from tqdm import tqdm

from data_synthesis.perturb import sample_pair
from data_synthesis.prompts import describe
from data_synthesis.relations import Relation
from data_synthesis.render import MAX_RESOLUTION, MIN_RESOLUTION, render
from data_synthesis.sampler import WorldConfig
from data_synthesis.scene import COLOURS, SHAPES, Scene, SceneError, min_resolution
from shared.io import atomic_write_bytes, atomic_write_json, stable_seed

if TYPE_CHECKING:
    from data_synthesis.best_of import BestOf

SCHEMA_VERSION = 1
MIN_DRAWN_RESOLUTION = 16  # images drawn by a generator backend (the renderer needs MIN_RESOLUTION)
GENERATOR = "spatialworld-pillow"
SPLITS = ("train", "val", "test")
KINDS = ("render", "generated", "ranked")  # the `kind` column: how a pair's two images were made (module docstring)
# Columns added after the first datasets of schema 1 were built; `verify.load_pairs` fills them in for those.
OPTIONAL_COLUMNS = ("kind", "sampler", "perfect_tries", "perturbed_tries")
COLUMNS = (
    "pair_id",
    "index",
    "split",
    "prompt",
    "perturbed_prompt",
    "perfect_image",
    "perturbed_image",
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
    "generator",
    "seed",
    "render_seed",
    "review_status",
    *OPTIONAL_COLUMNS,
)


BEST_OF_DIR = "best_of"  # the best-of-N drawing's per-block records (resume), in the dataset dir


class BuildError(ValueError):
    """A build request that cannot be carried out (bad argument, output dir holding another dataset)."""


@dataclass(frozen=True)
class BuildConfig:
    """Everything that determines the dataset's bytes (the number of workers does not)."""

    num_pairs: int
    seed: int = 0
    resolution: int = 128
    min_objects: int = 3
    max_objects: int = 6
    max_broken: int = 3
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    jitter: int = 8
    noise: float = 0.0
    colours: tuple[str, ...] = tuple(COLOURS)
    shapes: tuple[str, ...] = SHAPES
    world: WorldConfig = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.num_pairs < 1:
            raise BuildError(f"--num-pairs must be at least 1, got {self.num_pairs}")
        try:
            world = WorldConfig(
                min_objects=self.min_objects,
                max_objects=self.max_objects,
                colours=tuple(self.colours),
                shapes=tuple(self.shapes),
            )
        except SceneError as error:
            raise BuildError(str(error)) from error
        object.__setattr__(self, "world", world)
        if not MIN_DRAWN_RESOLUTION <= self.resolution <= MAX_RESOLUTION:
            raise BuildError(
                f"--resolution must be in [{MIN_DRAWN_RESOLUTION}, {MAX_RESOLUTION}] (at least {MIN_RESOLUTION} where "
                f"the Pillow renderer draws), got {self.resolution}"
            )
        if not 1 <= self.max_broken <= 3:
            raise BuildError(f"--max-broken must be 1, 2 or 3, got {self.max_broken}")
        if (
            len(self.split_fractions) != 3
            or any(f < 0 for f in self.split_fractions)
            or not math.isclose(sum(self.split_fractions), 1.0, abs_tol=1e-6)
        ):
            raise BuildError(
                f"--split-fractions needs three non-negative numbers (train val test) summing to 1, "
                f"got {list(self.split_fractions)}"
            )
        if not 0 <= self.jitter <= 64:
            raise BuildError(f"--jitter must be in [0, 64] colour levels, got {self.jitter}")
        if not 0 <= self.noise <= 64:
            raise BuildError(f"--noise must be in [0, 64] colour levels, got {self.noise}")

    def check_renderable(self) -> None:
        """The Pillow renderer draws the images: the resolution must suit it and the detector (BuildError)."""
        if not MIN_RESOLUTION <= self.resolution <= MAX_RESOLUTION:
            raise BuildError(f"--resolution must be in [{MIN_RESOLUTION}, {MAX_RESOLUTION}], got {self.resolution}")
        needed = min_resolution(self.max_objects)
        if self.resolution < needed:
            raise BuildError(
                f"--resolution {self.resolution} is too small for {self.max_objects} objects: the "
                f"smallest object would span under the detector's minimum; use at least {needed}"
            )

    def arguments(self) -> dict:
        args = asdict(self)
        args.pop("world")
        args["split_fractions"] = list(self.split_fractions)
        args["colours"], args["shapes"] = list(self.colours), list(self.shapes)
        args["schema_version"] = SCHEMA_VERSION
        return args


# --- backends ------------------------------------------------------------------------------------------------------
class PairDescription(NamedTuple):
    """A pair as its prompt source describes it: every column but `generator` and `review_status` (the builder
    sets those), and the two exact scenes when the source has geometry."""

    row: dict
    scenes: tuple[Scene, Scene] | None  # (perfect, perturbed), or None (an LLM scene has no coordinates)


class PromptSource(Protocol):
    """Where the pairs' prompts, scenes and relations come from. Pair `index` depends only on (config.seed, index)."""

    name: str
    has_geometry: bool  # its scenes have exact coordinates (the Pillow renderer can draw them)

    def arguments(self) -> dict:
        """What, beyond the BuildConfig, determines its pairs (recorded in build_args.json and meta.json)."""
        ...

    def preflight(self, config: BuildConfig) -> None:
        """Fail with one clear error before any work if the source cannot be used (e.g. an unreachable endpoint)."""
        ...

    def describe(self, config: BuildConfig, indices: Sequence[int]) -> list[PairDescription | str]:
        """One entry per index: its description, or why it was skipped (a short name, counted in meta.json)."""
        ...

    def usage(self) -> dict:
        """What describing cost so far (requests, tokens, ...), for build_log.json; empty when free."""
        ...


class ImageRequest(NamedTuple):
    prompt: str
    scene: Scene | None  # the exact scene, when the source has one
    seed: int  # the pair's render_seed: both images of a pair share it (best-of-N: the try's seed)
    resolution: int
    sampler: str | None = None  # one of the generator's `samplers` by name; None: its default


class ImageGenerator(Protocol):
    """Draws images for prompts (or scenes). `generate` returns one RGB image of the requested resolution each."""

    name: str  # stored per pair in the `generator` column
    exact: bool  # draws the scene graph itself, so its images match the scenes exactly
    batch_size: int
    samplers: tuple[str, ...]  # names of the samplers it can draw with (a pair's is chosen by hash); () : one

    def arguments(self) -> dict: ...

    def prompt_too_long(self, prompts: Sequence[str]) -> list[bool]:
        """Per prompt: longer than the generator's text encoder takes (such pairs are skipped and counted)."""
        ...

    def generate(self, requests: Sequence[ImageRequest]) -> list[Image.Image]: ...

    def close(self) -> None:
        """Free what it loaded (a pipeline on the GPU) before the next generator runs."""
        ...


class SpatialWorldSource:
    """The default prompt source: procedural SpatialWorld scenes with verified perturbations."""

    name = "spatialworld"
    has_geometry = True

    def arguments(self) -> dict:
        return {"name": self.name}

    def preflight(self, config: BuildConfig) -> None:
        pass

    def describe(self, config: BuildConfig, indices: Sequence[int]) -> list[PairDescription | str]:
        return [_describe_spatialworld(config, index) or "perturbation_failed" for index in indices]

    def usage(self) -> dict:
        return {}


@dataclass
class PillowRenderer:
    """The default generator: draws the exact scene with Pillow (`render.render`)."""

    jitter: int = 8
    noise: float = 0.0
    name: str = GENERATOR
    exact: bool = True
    batch_size: int = 64
    samplers: tuple[str, ...] = ()

    def arguments(self) -> dict:
        return {"name": self.name}  # jitter and noise are BuildConfig fields

    def prompt_too_long(self, prompts: Sequence[str]) -> list[bool]:
        return [False] * len(prompts)

    def generate(self, requests: Sequence[ImageRequest]) -> list[Image.Image]:
        if any(request.scene is None for request in requests):
            raise BuildError("the Pillow renderer draws a scene's coordinates, and this prompt source has none")
        return [
            render(request.scene, request.resolution, jitter=self.jitter, noise=self.noise, seed=request.seed)
            for request in requests
        ]

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class WeightedGenerator:
    generator: ImageGenerator
    weight: float = 1.0


def choose_generator(generators: Sequence[WeightedGenerator], seed: int, index: int) -> ImageGenerator:
    """The generator of pair `index`, drawn by weight from a hash of (seed, index): the same whatever the batches."""
    total = sum(g.weight for g in generators)
    u = stable_seed(seed, "generator", index) / 2**63 * total
    for weighted in generators:
        u -= weighted.weight
        if u < 0:
            return weighted.generator
    return generators[-1].generator


# --- one pair ------------------------------------------------------------------------------------------------------
def image_paths(index: int) -> tuple[str, str]:
    """Relative paths of a pair's two images (a folder per thousand pairs keeps directories small)."""
    stem = f"images/{index // 1000:04d}/{index:07d}"
    return f"{stem}_perfect.png", f"{stem}_perturbed.png"


def split_of(prompt: str, fractions: tuple[float, float, float], salt: str | None = None) -> str:
    """The split of a prompt, from a hash of it (with `salt`, a hash independent of the unsalted one: prompts that
    one split put in "train" are spread over every split again)."""
    u = (stable_seed("split", prompt) if salt is None else stable_seed("split", salt, prompt)) / 2**63
    if u < fractions[0]:
        return "train"
    return "val" if u < fractions[0] + fractions[1] else "test"


def make_pair(config: BuildConfig, index: int) -> dict | None:
    """The row of pair `index`, or None when no perturbation verified (skipped and counted)."""
    made = _make_pair(config, index)
    return None if made is None else made[0]


def _describe_spatialworld(config: BuildConfig, index: int) -> PairDescription | None:
    made = _make_pair(config, index)
    if made is None:
        return None
    row, scene, perturbed_scene = made
    return PairDescription(
        {k: v for k, v in row.items() if k not in ("generator", "review_status")}, (scene, perturbed_scene)
    )


def _make_pair(config: BuildConfig, index: int) -> tuple[dict, Scene, Scene] | None:
    """The row of pair `index` with its two scenes (SpatialWorld, drawn by the Pillow renderer)."""
    pair_seed = stable_seed(config.seed, "pair", index)
    rng = random.Random(pair_seed)
    k = rng.randint(1, config.max_broken)
    sample = sample_pair(rng, config.world, k)
    if sample is None:
        return None
    scene, stated, perturbation = sample.scene, sample.stated, sample.perturbation
    broken = list(perturbation.broken)
    perturbed_relations = [r.opposite() if i in broken else r for i, r in enumerate(stated)]
    style_seed, render_seed = rng.randrange(2**31), rng.randrange(2**31)
    prompt = describe(scene, stated, style_seed)
    perfect_image, perturbed_image = image_paths(index)
    return (
        {
            "pair_id": f"sw-{config.seed}-{index:07d}",
            "index": index,
            "split": split_of(prompt, config.split_fractions),
            "prompt": prompt,
            "perturbed_prompt": describe(perturbation.scene, perturbed_relations, style_seed),
            "perfect_image": perfect_image,
            "perturbed_image": perturbed_image,
            "perfect_scene": scene.to_json(),
            "perturbed_scene": perturbation.scene.to_json(),
            "stated_relations": relations_json(stated),
            "broken_relations": json.dumps(broken),
            "perturbed_relations": relations_json(perturbed_relations),
            "broken_families": ",".join(sorted({stated[i].family for i in broken})),
            "operations": json.dumps(list(perturbation.operations)),
            "num_broken": k,
            "num_relations": len(stated),
            "num_objects": len(scene.objects),
            "generator": GENERATOR,
            "seed": pair_seed,
            "render_seed": render_seed,
            "review_status": "verified",  # the perturbation was checked against the exact scene graph
            "kind": "render",
            "sampler": "",
            "perfect_tries": 1,
            "perturbed_tries": 1,
        },
        scene,
        perturbation.scene,
    )


def relations_json(relations: list[Relation]) -> str:
    return json.dumps([r.to_dict() for r in relations], sort_keys=True, separators=(",", ":"))


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def render_pair(config: BuildConfig, row: dict, out_dir: Path, scenes: tuple[Scene, Scene]) -> None:
    """Render and write a pair's two images (perfect, perturbed scene) unless they are already there (resume)."""
    for scene, path_column in zip(scenes, ("perfect_image", "perturbed_image"), strict=True):
        path = out_dir / row[path_column]
        if path.exists():
            continue
        image = render(scene, config.resolution, jitter=config.jitter, noise=config.noise, seed=row["render_seed"])
        atomic_write_bytes(path, png_bytes(image), durable=False)


_WORKER: dict = {}


def _init_worker(config: BuildConfig, out_dir: Path) -> None:
    _WORKER["config"], _WORKER["out_dir"] = config, out_dir


def _work(index: int) -> tuple[int, dict | None]:
    config, out_dir = _WORKER["config"], _WORKER["out_dir"]
    made = _make_pair(config, index)
    if made is None:
        return index, None
    row, scene, perturbed_scene = made
    render_pair(config, row, out_dir, (scene, perturbed_scene))
    return index, row


# --- the whole dataset ---------------------------------------------------------------------------------------------
@dataclass
class BuildResult:
    out_dir: Path
    counts: dict
    seconds: float
    resumed_images: int = 0
    usage: dict = field(default_factory=dict)  # what the prompt source spent (LLM requests and tokens)


def build(
    config: BuildConfig,
    out_dir: str | os.PathLike,
    *,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    prompt_source: PromptSource | None = None,
    generators: Sequence[WeightedGenerator] | None = None,
    best_of: BestOf | None = None,
) -> BuildResult:
    """Build (or finish building) the dataset dir. Raises BuildError before any work if `out_dir` holds a dataset
    built with other arguments, unless `overwrite`, or if a backend cannot be used (`PromptSource.preflight`).

    `prompt_source` defaults to SpatialWorld, `generators` to the Pillow renderer alone; `workers` only applies to
    that default (other backends bring their own concurrency). `best_of` (generator backends with a SpatialWorld
    scene graph only) draws each image until the oracle accepts it (`data_synthesis.best_of`): `num_pairs` pairs
    are then described and tried, and those without an accepted image are skipped and counted."""
    out_dir = Path(out_dir)
    if workers < 1:
        raise BuildError(f"--workers must be at least 1, got {workers}")
    source = prompt_source or SpatialWorldSource()
    generators = list(generators or [WeightedGenerator(PillowRenderer(config.jitter, config.noise))])
    default_backends = isinstance(source, SpatialWorldSource) and [type(g.generator) for g in generators] == [
        PillowRenderer
    ]
    _check_backends(source, generators)
    if any(g.generator.exact for g in generators):
        config.check_renderable()
    arguments = config.arguments()
    if not default_backends:
        arguments["prompt_source"] = source.arguments()
        arguments["generators"] = [{**g.generator.arguments(), "weight": g.weight} for g in generators]
    if best_of is not None:
        if any(g.generator.exact for g in generators) or not source.has_geometry:
            raise BuildError(
                "best-of-N drawing needs generator backends (--generator) and a prompt source with SpatialWorld scene "
                "graphs for the oracle to check against"
            )
        arguments["best_of"] = best_of.arguments()
    source.preflight(config)
    _claim_output_dir(out_dir, arguments, overwrite)
    if _complete(out_dir):
        meta = json.loads((out_dir / "meta.json").read_text())
        return BuildResult(out_dir, meta["counts"], 0.0)

    start = time.perf_counter()
    for stale in [*out_dir.glob(".*.tmp"), *out_dir.glob("images/*/.*.tmp"), *out_dir.glob(f"{BEST_OF_DIR}/.*.tmp")]:
        stale.unlink()
    existing = sum(1 for _ in out_dir.glob("images/*/*.png"))
    log_extra: dict = {}
    if default_backends:
        rows, skipped = _collect(config, out_dir, workers, progress)
        _remove_unreferenced_images(out_dir, rows)
    elif best_of is not None:
        from data_synthesis.best_of import draw_best_of

        rows, scenes, skipped = _describe_all(config, source, generators, progress)
        rows, drawn = draw_best_of(config, best_of, out_dir, rows, generators, progress)
        skipped.update(drawn.skipped)
        _remove_unreferenced_images(out_dir, rows)
        log_extra["best_of"] = drawn.log()
    else:
        rows, scenes, skipped = _describe_all(config, source, generators, progress)
        _remove_unreferenced_images(out_dir, rows)
        _draw_all(config, out_dir, rows, scenes, generators, progress)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, engine="pyarrow")
    atomic_write_bytes(out_dir / "pairs.parquet", buffer.getvalue())
    counts = dataset_counts(frame, skipped)
    seconds = time.perf_counter() - start
    usage = source.usage()
    atomic_write_json(
        out_dir / "build_log.json",
        {
            "seconds": round(seconds, 3),
            "pairs_per_second": round(len(rows) / max(seconds, 1e-9), 2),
            "workers": workers,
            "images_found_on_start": existing,
            **({"prompt_source_usage": usage} if usage else {}),
            **log_extra,
        },
    )
    generator_names = GENERATOR if default_backends else ",".join(g.generator.name for g in generators)
    atomic_write_json(
        out_dir / "meta.json",
        {"schema_version": SCHEMA_VERSION, "arguments": arguments, "generator": generator_names, "counts": counts},
    )
    return BuildResult(out_dir, counts, seconds, existing, usage)


def _check_backends(source: PromptSource, generators: list[WeightedGenerator]) -> None:
    if not generators:
        raise BuildError("at least one generator is needed")
    names = [g.generator.name for g in generators]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise BuildError(f"generator names must be unique (they are stored per pair); repeated: {repeated}")
    for weighted in generators:
        if not (weighted.weight > 0 and math.isfinite(weighted.weight)):
            raise BuildError(f"generator {weighted.generator.name!r}: weight must be positive, got {weighted.weight}")
        if weighted.generator.exact and not source.has_geometry:
            raise BuildError(
                f"generator {weighted.generator.name!r} draws scene coordinates, which the {source.name} prompt "
                "source does not have; pass --generator NAME=DIR (a diffusers pipeline) instead"
            )


def _describe_all(
    config: BuildConfig, source: PromptSource, generators: list[WeightedGenerator], progress: bool
) -> tuple[list[dict], dict[int, tuple[Scene, Scene]], Counter]:
    """Rows of the first `num_pairs` indices the source describes with a new prompt, in index order, with their
    generator and review status set, and the exact scenes of those that have them. Gives up with a BuildError
    when too few indices succeed (an endpoint that fails every request must not loop for ever)."""
    rows: list[dict] = []
    scenes: dict[int, tuple[Scene, Scene]] = {}
    seen_prompts: set[str] = set()
    skipped: Counter = Counter()
    next_index, tried = 0, 0
    max_tries = 4 * config.num_pairs + 16
    bar = tqdm(total=config.num_pairs, desc="pairs", unit="pair", disable=not progress, dynamic_ncols=True)
    while len(rows) < config.num_pairs:
        if tried >= max_tries:
            bar.close()
            raise BuildError(
                f"only {len(rows)} of {config.num_pairs} pairs after trying {tried} (skipped: {dict(skipped)}); "
                "fix the cause and rerun (answers so far are cached)"
            )
        # no margin beyond the success rate seen so far: a description may cost LLM requests
        success_rate = len(rows) / tried if tried else 1.0
        batch = range(
            next_index, next_index + min(256, math.ceil((config.num_pairs - len(rows)) / max(success_rate, 0.2)))
        )
        for index, described in zip(batch, source.describe(config, batch), strict=True):
            tried += 1
            if len(rows) == config.num_pairs:
                continue
            if isinstance(described, str):
                skipped[described] += 1
            elif described.row["prompt"] in seen_prompts:
                skipped["duplicate_prompt"] += 1
            else:
                generator = choose_generator(generators, config.seed, index)
                exact = generator.exact and described.scenes is not None
                row = {
                    **described.row,
                    "generator": generator.name,
                    "review_status": "verified" if exact else "unreviewed",
                    "kind": "render" if exact else "generated",
                    "sampler": "",
                    "perfect_tries": 1,
                    "perturbed_tries": 1,
                }
                seen_prompts.add(row["prompt"])
                rows.append(row)
                if described.scenes is not None:
                    scenes[index] = described.scenes
                bar.update(1)
        next_index = batch.stop
    bar.close()
    return rows, scenes, skipped


def _draw_all(
    config: BuildConfig,
    out_dir: Path,
    rows: list[dict],
    scenes: dict[int, tuple[Scene, Scene]],
    generators: list[WeightedGenerator],
    progress: bool,
) -> None:
    """Draw every image that is not on disk yet, generator by generator (one pipeline loaded at a time), in
    batches; each image is written atomically as soon as it is drawn, so a killed build resumes here."""
    for weighted in generators:
        generator = weighted.generator
        todo = []
        for row in rows:
            if row["generator"] != generator.name:
                continue
            pair_scenes = scenes.get(row["index"], (None, None))
            for prompt_column, path_column, scene in zip(
                ("prompt", "perturbed_prompt"), ("perfect_image", "perturbed_image"), pair_scenes, strict=True
            ):
                if not (out_dir / row[path_column]).exists():
                    request = ImageRequest(row[prompt_column], scene, row["render_seed"], config.resolution)
                    todo.append((request, out_dir / row[path_column]))
        if not todo:
            continue
        bar = tqdm(total=len(todo), desc=generator.name, unit="img", disable=not progress, dynamic_ncols=True)
        try:
            for start in range(0, len(todo), generator.batch_size):
                chunk = todo[start : start + generator.batch_size]
                images = generator.generate([request for request, _ in chunk])
                assert len(images) == len(chunk), f"{generator.name} returned {len(images)} of {len(chunk)} images"
                for image, (_, path) in zip(images, chunk, strict=True):
                    atomic_write_bytes(path, png_bytes(image.convert("RGB")), durable=False)
                bar.update(len(chunk))
        finally:
            bar.close()
            generator.close()


def _complete(out_dir: Path) -> bool:
    """A finished build whose images are all still there (a rerun then changes nothing)."""
    if not ((out_dir / "meta.json").exists() and (out_dir / "pairs.parquet").exists()):
        return False
    try:
        frame = pd.read_parquet(out_dir / "pairs.parquet", columns=["perfect_image", "perturbed_image"])
    except (OSError, ValueError):
        return False
    return all((out_dir / p).exists() for column in frame.columns for p in frame[column])


def _claim_output_dir(out_dir: Path, arguments: dict, overwrite: bool) -> None:
    args_path = out_dir / "build_args.json"
    if out_dir.exists() and any(out_dir.iterdir()):
        previous = json.loads(args_path.read_text()) if args_path.exists() else None
        if previous != arguments:
            if not overwrite:
                what = "a dataset built with other arguments" if previous is not None else "files of another kind"
                raise BuildError(
                    f"{out_dir} already holds {what}; choose another --out or pass --overwrite"
                    + (f" (differs in: {_differences(previous, arguments)})" if previous else "")
                )
            if previous is None and not (out_dir / "images").exists():
                raise BuildError(f"{out_dir} is not a dataset dir; refusing to overwrite it")
            for name in ("images", BEST_OF_DIR, "pairs.parquet", "meta.json", "build_log.json", "build_args.json"):
                target = out_dir / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args_path, arguments)


def _differences(previous: dict, arguments: dict) -> str:
    keys = sorted(set(previous) | set(arguments))
    return ", ".join(
        f"{k}: {previous.get(k)!r} -> {arguments.get(k)!r}" for k in keys if previous.get(k) != arguments.get(k)
    )


def _index_batches(config: BuildConfig, accepted: int, next_index: int, success_rate: float) -> range:
    """The next indices to try: enough for the pairs still missing at the success rate seen so far, plus a few,
    in batches of at most 1,024 (everything a batch renders beyond `num_pairs` is wasted and deleted)."""
    remaining = config.num_pairs - accepted
    size = min(1024, math.ceil(remaining / max(success_rate, 0.2) * 1.01) + 4)
    return range(next_index, next_index + size)


def _collect(config: BuildConfig, out_dir: Path, workers: int, progress: bool) -> tuple[list[dict], Counter]:
    """Rows of the first `num_pairs` indices that give a verified pair with a new prompt, in index order."""
    rows: list[dict] = []
    seen_prompts: set[str] = set()
    skipped: Counter = Counter()
    next_index, tried = 0, 0
    bar = tqdm(total=config.num_pairs, desc="pairs", unit="pair", disable=not progress, dynamic_ncols=True)
    with _pool(config, out_dir, workers) as run:
        while len(rows) < config.num_pairs:
            success_rate = len(rows) / tried if tried else 0.985
            batch = _index_batches(config, len(rows), next_index, success_rate)
            for _, row in run(batch):
                tried += 1
                if len(rows) == config.num_pairs:
                    continue  # over-generated in this batch: its images are removed afterwards
                if row is None:
                    skipped["perturbation_failed"] += 1
                elif row["prompt"] in seen_prompts:
                    skipped["duplicate_prompt"] += 1
                else:
                    seen_prompts.add(row["prompt"])
                    rows.append(row)
                    bar.update(1)
            next_index = batch.stop
    bar.close()
    return rows, skipped


class _pool:
    """`run(indices)` yields (index, row) in index order, in this process or in a pool of worker processes."""

    def __init__(self, config: BuildConfig, out_dir: Path, workers: int):
        self.config, self.out_dir, self.workers = config, out_dir, workers
        self.pool = None

    def __enter__(self):
        _init_worker(self.config, self.out_dir)
        if self.workers > 1:
            context = multiprocessing.get_context("fork")
            self.pool = context.Pool(self.workers, initializer=_init_worker, initargs=(self.config, self.out_dir))
        return self.run

    def run(self, indices: range) -> Iterator[tuple[int, dict | None]]:
        if self.pool is None:
            return map(_work, indices)
        return self.pool.imap(_work, indices, chunksize=16)

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def _remove_unreferenced_images(out_dir: Path, rows: list[dict]) -> None:
    referenced = {row[c] for row in rows for c in ("perfect_image", "perturbed_image")}
    for path in out_dir.glob("images/*/*.png"):
        if path.relative_to(out_dir).as_posix() not in referenced:
            path.unlink()
    for folder in out_dir.glob("images/*"):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def dataset_counts(frame: pd.DataFrame, skipped: Counter) -> dict:
    families: Counter = Counter()
    for value in frame["broken_families"]:
        families.update(value.split(","))
    stated: Counter = Counter()
    for value in frame["stated_relations"]:
        stated.update(Relation.from_dict(r).family for r in json.loads(value))
    return {
        "pairs": len(frame),
        "by_split": {s: int((frame["split"] == s).sum()) for s in SPLITS},
        "by_num_broken": {str(k): int((frame["num_broken"] == k).sum()) for k in sorted(frame["num_broken"].unique())},
        "pairs_by_broken_family": dict(sorted(families.items())),
        "stated_by_family": dict(sorted(stated.items())),
        "by_kind": {kind: int((frame["kind"] == kind).sum()) for kind in KINDS if (frame["kind"] == kind).any()},
        "skipped": dict(sorted(skipped.items())),
    }
