"""Pairwise data for the SpatialScore reward model: (prompt, winner image, loser image) from a SpatialWorld dataset dir.

A dataset dir (`python -m data_synthesis build`, see docs/DESIGN.md) holds one row per triplet in
`pairs.parquet`: the prompt, the perturbed scene's own prompt (`perturbed_prompt`), the perfect and the perturbed
image (paths relative to the dir), the number and families of broken relations, and the split. Each pair is read in
one of two orientations, as the paper's Bradley-Terry objective needs a winner and a loser under one prompt:

- forward: under `prompt` the perfect image wins;
- reversed: under `perturbed_prompt` the perturbed image wins (a model that ignores the prompt cannot get both).

`orientation="both"` yields every pair twice, forward then reversed.

Every row has a `kind` (data_synthesis.build.KINDS), exposed per example and per batch (`PairBatch.kinds`) so
accuracy can be reported per kind: "render" (SpatialWorld drawn exactly by the Pillow renderer), "generated" (a
generator drew the perfect and the perturbed prompt; the oracle or people accepted both images), "ranked" (an
on-policy ranked pair: two samples of ONE prompt, `perfect_image` the one the oracle prefers, `perturbed_image` the
other, `perturbed_prompt` = `prompt`). A ranked pair has no reversed reading (under its one prompt the rejected
sample never wins), so "reversed" leaves it out and "both" yields it once, forward.

`PairCollator` encodes the B winners and the B losers of a batch as 2B sequences of ONE forward pass (winners
first), so the module `chunk(2)`s the scores as TRL's RewardTrainer does.

Bad input: `setup` opens every image of a split once (PIL `verify`, a CRC check of every chunk without decoding the
pixels); a pair with a missing or corrupt image is skipped and counted (`skipped`, and a log warning), and if more
than `max_bad_fraction` (1%) of a split is bad, `setup` raises one `DatasetError` naming the dir and the counts.
Images over the processor's pixel budget (its `max_pixels`, 200,704 for the 7B config) are resized by the
processor itself.

Optional degradations (downscale and back, Gaussian blur, pixel noise) make the critic robust to a small
generator's samples. They are drawn per pair from a seed and the pair id, so a pair is degraded the same way in
every epoch, in every worker and in both orientations, and both of its images get the same kind of degradation
(never a cue that tells winner from loser).

Optional omission pairs (`Omission`) add training pairs that SpatialWorld's perturbations never make: a pair's
winning image against the same scene re-rendered (same seed, so nothing else changes) with one object left out,
under the winner's prompt, which names that object.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import pandas as pd
import torch
from lightning.pytorch import LightningDataModule
from PIL import Image, ImageFilter
from torch.utils.data import DataLoader, Dataset

from data_synthesis import DatasetError, load_pairs
from data_synthesis.build import GENERATOR as SPATIALWORLD_GENERATOR
from data_synthesis.build import KINDS
from data_synthesis.render import render
from data_synthesis.scene import Scene, SceneError
from reward_model.model import encode
from reward_model.tokenizer import SpatialScoreProcessor, load_processor
from shared import stable_seed

log = logging.getLogger(__name__)

Orientation = Literal["forward", "reversed", "both"]
ORIENTATIONS = ("forward", "reversed", "both")
SPLITS = ("train", "val", "test")
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}


@dataclass(frozen=True)
class Degradation:
    """Image degradations, applied in this order to both images of a chosen pair; all off by default.

    downscale_to: longer side (pixels) to shrink to with bilinear filtering before resizing back; None keeps it.
    blur_radius: Gaussian blur radius in pixels (0: none).
    noise_std: std of additive Gaussian pixel noise on the 0-255 scale (0: none).
    probability: chance that a pair is degraded at all.
    seed: with the pair id, picks which pairs are degraded and their noise.
    """

    downscale_to: int | None = None
    blur_radius: float = 0.0
    noise_std: float = 0.0
    probability: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.downscale_to is not None and self.downscale_to < 1:
            raise ValueError(
                f"Degradation.downscale_to must be a positive pixel count or None, got {self.downscale_to}"
            )
        if self.blur_radius < 0 or self.noise_std < 0:
            raise ValueError(
                f"Degradation.blur_radius and noise_std must be >= 0, got {self.blur_radius} and {self.noise_std}"
            )
        if not 0 <= self.probability <= 1:
            raise ValueError(f"Degradation.probability must lie in [0, 1], got {self.probability}")

    @property
    def active(self) -> bool:
        return self.probability > 0 and (self.downscale_to is not None or self.blur_radius > 0 or self.noise_std > 0)


def degrade(image: Image.Image, degradation: Degradation, rng: np.random.Generator) -> Image.Image:
    """`image` (RGB) downscaled and back, blurred and noised as `degradation` says; `rng` draws the noise."""
    width, height = image.size
    if degradation.downscale_to is not None and max(width, height) > degradation.downscale_to:
        scale = degradation.downscale_to / max(width, height)
        small = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(small, Image.Resampling.BILINEAR).resize((width, height), Image.Resampling.BILINEAR)
    if degradation.blur_radius > 0:
        image = image.filter(ImageFilter.GaussianBlur(degradation.blur_radius))
    if degradation.noise_std > 0:
        pixels = np.asarray(image, dtype=np.float32)  # [H, W, 3]
        noisy = pixels + rng.normal(0.0, degradation.noise_std, size=pixels.shape)
        image = Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))
    return image


@dataclass(frozen=True)
class Omission:
    """Extra training pairs in which the loser misses an object the prompt names.

    SpatialWorld's perturbations only move, swap and re-layer objects, so a critic trained on its pairs alone is
    never shown an image that lacks an object, the most common failure of a small generator. Each extra pair takes
    a pair of the split and an orientation, and sets its winner (the perfect image under `prompt`, or the perturbed
    one under `perturbed_prompt`) against that scene re-rendered with the same seed and one object left out.

    fraction: extra pairs per oriented pair of the split (0.25 adds a quarter; 0: none).
    min_changed_pixels: an object whose removal changes fewer pixels (hidden behind others) is not chosen.
    seed: with the extra pair's index, picks the pair, the orientation and the object.
    """

    fraction: float = 0.0
    min_changed_pixels: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.fraction <= 4:
            raise ValueError(f"Omission.fraction must lie in [0, 4], got {self.fraction}")
        if self.min_changed_pixels < 1:
            raise ValueError(f"Omission.min_changed_pixels must be positive, got {self.min_changed_pixels}")

    @property
    def active(self) -> bool:
        return self.fraction > 0


@dataclass(frozen=True)
class RenderSettings:
    """How a SpatialWorld dataset rendered its images (its meta.json `arguments`), to re-render a scene."""

    resolution: int
    jitter: int
    noise: float


class PairRecord(NamedTuple):
    """One usable row of pairs.parquet, image paths made absolute."""

    pair_id: str
    prompt: str
    perturbed_prompt: str
    perfect_image: Path
    perturbed_image: Path
    num_broken: int
    broken_families: str  # comma-separated, sorted, e.g. "depth,proximity"
    perfect_scene: str | None = None  # Scene JSON, for omission pairs; None where the row has no renderable scene
    perturbed_scene: str | None = None
    render_seed: int | None = None
    kind: str = "render"  # render | generated | ranked (module docstring)


OMISSION_FAMILY = "omission"  # broken_families of an omission pair; its num_broken is 0 (no broken-count group)


class PairExample(NamedTuple):
    """One oriented pair: under `prompt`, `winner` must score higher than `loser`."""

    pair_id: str
    prompt: str
    winner: Image.Image
    loser: Image.Image
    num_broken: int
    broken_families: str
    is_reversed: bool  # True: perturbed prompt, the perturbed image wins
    kind: str = "render"  # the row's kind; omission pairs keep their source row's


class PairBatch(NamedTuple):
    """B oriented pairs, encoded as 2B sequences for one forward pass: rows 0..B-1 winners, B..2B-1 losers."""

    inputs: dict[str, torch.Tensor]  # `encode(...)`: input_ids, attention_mask, mm_token_type_ids [2B, T];
    # pixel_values [patches of the 2B images, C * t * p * p]; image_grid_thw [2B, 3]
    prompts: list[str]  # B: the prompt both images of a pair are scored against
    pair_ids: list[str]  # B
    num_broken: torch.Tensor  # [B] int64
    broken_families: list[str]  # B, comma-separated families
    is_reversed: torch.Tensor  # [B] bool: True where the perturbed prompt is used and the perturbed image wins
    kinds: list[str]  # B: each pair's kind (render | generated | ranked)

    @property
    def num_pairs(self) -> int:
        return len(self.pair_ids)


class BadImage(NamedTuple):
    pair_id: str
    path: Path
    problem: str  # "missing" or "corrupt"


def _open_image(path: Path) -> Image.Image:
    """An RGB copy of the image at `path`; `DatasetError` naming the file if it cannot be read."""
    try:
        with Image.open(path) as handle:
            return handle.convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"cannot read image {path}: {error}") from error


def _image_problem(path: Path) -> str | None:
    """None if `path` holds a readable image, else "missing" or "corrupt"."""
    if not path.is_file():
        return "missing"
    try:
        with Image.open(path) as handle:
            handle.verify()
    except (OSError, SyntaxError, ValueError):  # UnidentifiedImageError is an OSError
        return "corrupt"
    return None


def _scene_fields(row: NamedTuple) -> dict:
    """A pairs.parquet row's scenes and render seed where SpatialWorld's renderer drew its images, else Nones."""
    if getattr(row, "generator", SPATIALWORLD_GENERATOR) != SPATIALWORLD_GENERATOR:
        return {}
    perfect, perturbed, seed = (
        getattr(row, name, None) for name in ("perfect_scene", "perturbed_scene", "render_seed")
    )
    if not isinstance(perfect, str) or not isinstance(perturbed, str) or seed is None or pd.isna(seed):
        return {}
    return {"perfect_scene": perfect, "perturbed_scene": perturbed, "render_seed": int(seed)}


def render_settings(meta: dict | None) -> RenderSettings | None:
    """The render settings in a dataset's meta.json `arguments`, None if it does not record them."""
    arguments = (meta or {}).get("arguments", {})
    try:
        return RenderSettings(int(arguments["resolution"]), int(arguments["jitter"]), float(arguments["noise"]))
    except (KeyError, TypeError, ValueError):
        return None


class PairwiseDataset(Dataset):
    """Oriented pairs of `records`: "both" interleaves them, each record forward then reversed (ranked records
    forward only: without them, index 2i is forward and 2i + 1 reversed); then, with `omission`, round(fraction x
    that many) omission pairs (`Omission`), which need `render_settings` and records with scenes."""

    def __init__(
        self,
        records: Sequence[PairRecord],
        orientation: Orientation = "forward",
        degradation: Degradation | None = None,
        omission: Omission | None = None,
        render_settings: RenderSettings | None = None,
    ) -> None:
        if orientation not in ORIENTATIONS:
            raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
        self.records = list(records)
        self.orientation = orientation
        self.degradation = degradation if degradation is not None and degradation.active else None
        self.omission = omission if omission is not None and omission.active else None
        self.render_settings = render_settings
        readings = {"forward": (False,), "reversed": (True,), "both": (False, True)}[orientation]
        self.readings = [
            (i, is_reversed)
            for i, record in enumerate(self.records)
            for is_reversed in readings
            if not (is_reversed and record.kind == "ranked")
        ]
        self.num_pairs = len(self.readings)
        self.renderable = [
            i for i, r in enumerate(self.records) if r.perfect_scene and r.perturbed_scene and r.render_seed is not None
        ]
        self.num_omission = 0
        if self.omission is not None:
            if render_settings is None or not self.renderable:
                raise DatasetError(
                    f"omission pairs need SpatialWorld scenes to re-render: {len(self.renderable)} of "
                    f"{len(self.records)} pairs have perfect_scene, perturbed_scene and render_seed"
                    + ("" if render_settings is not None else ", and the dataset's render settings are unknown")
                )
            self.num_omission = round(self.omission.fraction * self.num_pairs)

    def __len__(self) -> int:
        return self.num_pairs + self.num_omission

    def __getitem__(self, index: int) -> PairExample:
        if index >= self.num_pairs:
            return self._omission_pair(index - self.num_pairs)
        position, is_reversed = self.readings[index]
        record = self.records[position]
        perfect, perturbed = _open_image(record.perfect_image), _open_image(record.perturbed_image)
        perfect, perturbed = self._degraded(record.pair_id, perfect, perturbed)
        if is_reversed:
            prompt, winner, loser = record.perturbed_prompt, perturbed, perfect
        else:
            prompt, winner, loser = record.prompt, perfect, perturbed
        return PairExample(
            record.pair_id, prompt, winner, loser, record.num_broken, record.broken_families, is_reversed, record.kind
        )

    def _degraded(self, key: str, first: Image.Image, second: Image.Image) -> tuple[Image.Image, Image.Image]:
        if self.degradation is not None:
            rng = np.random.default_rng(stable_seed("degradation", self.degradation.seed, key))
            if rng.random() < self.degradation.probability:
                return degrade(first, self.degradation, rng), degrade(second, self.degradation, rng)
        return first, second

    def _omission_pair(self, number: int) -> PairExample:
        """The `number`-th omission pair: drawn from the seed alone, the same in every epoch and worker."""
        rng = np.random.default_rng(stable_seed("omission", self.omission.seed, number))
        record = self.records[self.renderable[int(rng.integers(len(self.renderable)))]]
        is_reversed = bool(rng.integers(2)) if self.orientation == "both" else self.orientation == "reversed"
        path, scene_json = (
            (record.perturbed_image, record.perturbed_scene)
            if is_reversed
            else (record.perfect_image, record.perfect_scene)
        )
        winner = _open_image(path)
        try:
            scene = Scene.from_json(scene_json)
        except SceneError as error:
            raise DatasetError(f"pair {record.pair_id}: its scene does not load ({error})") from error
        settings = self.render_settings
        full = np.asarray(winner, dtype=np.int16)
        loser = None
        for position in rng.permutation(len(scene.objects)):
            candidate = render(
                scene,
                settings.resolution,
                jitter=settings.jitter,
                noise=settings.noise,
                seed=record.render_seed,
                omit=(scene.objects[position].colour,),
            )
            changed = int(np.any(np.asarray(candidate, dtype=np.int16) != full, axis=-1).sum())
            if changed >= self.omission.min_changed_pixels:
                loser = candidate
                break
        if loser is None:  # every object hidden: not possible in SpatialWorld, but never an empty pair
            raise DatasetError(
                f"pair {record.pair_id}: no object's removal changes {self.omission.min_changed_pixels} pixels"
            )
        winner, loser = self._degraded(f"omission-{number}", winner, loser)
        prompt = record.perturbed_prompt if is_reversed else record.prompt
        return PairExample(
            f"{record.pair_id}-omission-{number}", prompt, winner, loser, 0, OMISSION_FAMILY, is_reversed, record.kind
        )


class PairCollator:
    """Encodes B examples as one `PairBatch` of 2B sequences (winners, then losers) with `reward_model.model.encode`.
    A plain class (not a closure) so that DataLoader workers can pickle it."""

    def __init__(
        self,
        processor: SpatialScoreProcessor,
        system_prompt: str | None = None,
        max_prompt_tokens: int | None = None,
    ) -> None:
        self.processor = processor
        self.system_prompt = system_prompt
        self.max_prompt_tokens = max_prompt_tokens

    def __call__(self, examples: Sequence[PairExample]) -> PairBatch:
        prompts = [example.prompt for example in examples]
        images = [example.winner for example in examples] + [example.loser for example in examples]
        inputs = encode(
            self.processor,
            prompts + prompts,
            images,
            system_prompt=self.system_prompt,
            max_prompt_tokens=self.max_prompt_tokens,
        )
        return PairBatch(
            inputs=dict(inputs),
            prompts=prompts,
            pair_ids=[example.pair_id for example in examples],
            num_broken=torch.tensor([example.num_broken for example in examples], dtype=torch.long),
            broken_families=[example.broken_families for example in examples],
            is_reversed=torch.tensor([example.is_reversed for example in examples], dtype=torch.bool),
            kinds=[example.kind for example in examples],
        )


class PairwiseDataModule(LightningDataModule):
    """Train/val/test `PairBatch`es from a SpatialWorld dataset dir.

    dataset_dir: a dataset dir with meta.json, pairs.parquet and images/.
    processor: the network's processor (or its directory). None takes `network.processor` from the LightningModule
        of the trainer this data module is attached to, so a config names the processor once, with the network.
    batch_size: pairs per training batch (2 x batch_size sequences per forward pass); eval_batch_size for val/test
        (default: batch_size).
    orientation: "forward", "reversed" or "both" (every pair twice).
    degradation: optional image degradations, applied to the splits in `degrade_splits` (training only by default).
    omission: optional extra training pairs whose loser misses an object (`Omission`; the train split only). They
        re-render SpatialWorld scenes with the render settings of the dataset's meta.json.
    max_bad_fraction: the largest share of a split's pairs that may have a missing or corrupt image (skipped).
    review_statuses: keep only rows with one of these `review_status` values ("verified": SpatialWorld's exact
        renders; "oracle": generated pairs the oracle accepted while drawing them, best-of-N; "reviewed": accepted by
        the reviewers, `python -m data_synthesis export`); None keeps every row.
    max_prompt_tokens: prompts longer than this are truncated, keeping the reward token last (`encode`), with a
        warning counting them per split; None takes the network's `max_prompt_tokens` (no limit if it has none).
    seed: shuffling of the training pairs.
    extra_dataset_dirs: more dataset dirs whose pairs join each split of `dataset_dir`'s (e.g. the generated pairs
        of `make data-generated` beside the renders), each row keeping its `kind`. Omission pairs re-render only
        `dataset_dir`'s rows, with its meta.json's render settings. Pair ids must be unique across the dirs.
    train_repeats: kind -> how many times each training pair of that kind is read per epoch (default 1), e.g.
        {"generated": 8, "ranked": 8} so that a few hundred generated pairs are not lost among thousands of renders.
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike,
        processor: SpatialScoreProcessor | str | os.PathLike | None = None,
        *,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        orientation: Orientation = "forward",
        degradation: Degradation | None = None,
        degrade_splits: tuple[str, ...] = ("train",),
        omission: Omission | None = None,
        max_bad_fraction: float = 0.01,
        review_statuses: tuple[str, ...] | None = ("verified", "oracle", "reviewed"),
        system_prompt: str | None = None,
        max_prompt_tokens: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        extra_dataset_dirs: Sequence[str | os.PathLike] = (),
        train_repeats: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.train_repeats = dict(train_repeats or {})
        repeats = self.train_repeats
        if set(repeats) - set(KINDS) or any(not isinstance(n, int) or n < 1 for n in repeats.values()):
            raise ValueError(f"train_repeats maps kinds {list(KINDS)} to whole numbers >= 1, got {train_repeats!r}")
        if orientation not in ORIENTATIONS:
            raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"batch sizes must be positive, got {batch_size} and {eval_batch_size}")
        if not 0 <= max_bad_fraction < 1:
            raise ValueError(f"max_bad_fraction must lie in [0, 1), got {max_bad_fraction}")
        unknown = sorted(set(degrade_splits) - set(SPLITS))
        if unknown:
            raise ValueError(f"degrade_splits {unknown} are not splits; splits are {SPLITS}")
        self.dataset_dir = Path(dataset_dir)
        self.extra_dataset_dirs = tuple(Path(directory) for directory in extra_dataset_dirs)
        self.processor = load_processor(processor) if isinstance(processor, str | os.PathLike) else processor
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.orientation = orientation
        self.degradation = degradation
        self.degrade_splits = tuple(degrade_splits)
        self.omission = omission
        self.max_bad_fraction = max_bad_fraction
        self.review_statuses = None if review_statuses is None else tuple(review_statuses)
        self.system_prompt = system_prompt
        self.max_prompt_tokens = max_prompt_tokens
        self.num_workers = num_workers
        self.seed = seed
        self.meta: dict | None = None
        self.records: dict[str, list[PairRecord]] = {}  # split -> usable pairs
        self.bad_images: dict[str, list[BadImage]] = {}  # split -> what was skipped
        self._frame: pd.DataFrame | None = None

    @property
    def skipped(self) -> dict[str, int]:
        """Pairs skipped per split (split set up so far -> count)."""
        return {split: len({bad.pair_id for bad in bads}) for split, bads in self.bad_images.items()}

    def setup(self, stage: str | None = None) -> None:
        if self._frame is None:
            self.meta, frame = load_pairs(self.dataset_dir)
            frame = frame.assign(source_dir=str(self.dataset_dir))
            if self.extra_dataset_dirs:
                frames = [frame] + [load_pairs(d)[1].assign(source_dir=str(d)) for d in self.extra_dataset_dirs]
                frame = pd.concat(frames, ignore_index=True)
                repeated = frame["pair_id"][frame["pair_id"].duplicated()]
                if not repeated.empty:
                    raise DatasetError(
                        f"pair id {repeated.iloc[0]!r} appears in more than one of the dataset dirs "
                        f"{[str(self.dataset_dir), *map(str, self.extra_dataset_dirs)]}"
                    )
            if self.review_statuses is not None:
                frame = frame[frame["review_status"].isin(self.review_statuses)]
            self._frame = frame
        if self.processor is None:
            network = getattr(self.trainer.lightning_module, "network", None) if self.trainer is not None else None
            if network is None or not hasattr(network, "processor"):
                raise ValueError(
                    "PairwiseDataModule has no processor: pass one (or its directory), or attach the data module to "
                    "a Trainer whose LightningModule has a `network` with a `processor`"
                )
            self.processor = network.processor
            if self.max_prompt_tokens is None:
                self.max_prompt_tokens = getattr(network, "max_prompt_tokens", None)
        for split in STAGE_SPLITS.get(stage, SPLITS) if stage is not None else SPLITS:
            if split not in self.records:
                self.records[split], self.bad_images[split] = self._load_split(split)
                self._warn_long_prompts(split)

    def _warn_long_prompts(self, split: str) -> None:
        """One warning per split with the number of prompts `encode` will truncate (it also warns per prompt)."""
        if self.max_prompt_tokens is None:
            return
        prompts = [text for record in self.records[split] for text in (record.prompt, record.perturbed_prompt)]
        lengths = [len(ids) for ids in self.processor.tokenizer(prompts, add_special_tokens=False)["input_ids"]]
        long = sum(length > self.max_prompt_tokens for length in lengths)
        if long:
            log.warning(
                "%d of %d %s prompts are longer than max_prompt_tokens=%d and will be truncated (longest: %d tokens)",
                long,
                len(prompts),
                split,
                self.max_prompt_tokens,
                max(lengths),
            )

    def _load_split(self, split: str) -> tuple[list[PairRecord], list[BadImage]]:
        rows = self._frame[self._frame["split"] == split]
        if rows.empty:
            counts = dict(Counter(self._frame["split"]))
            raise DatasetError(f"{self.dataset_dir} has no usable {split!r} pairs (pairs per split: {counts})")
        records = [
            PairRecord(
                pair_id=str(row.pair_id),
                prompt=str(row.prompt),
                perturbed_prompt=str(row.perturbed_prompt),
                perfect_image=Path(row.source_dir) / row.perfect_image,
                perturbed_image=Path(row.source_dir) / row.perturbed_image,
                num_broken=int(row.num_broken),
                broken_families=str(row.broken_families),
                kind=str(row.kind),
                **(_scene_fields(row) if row.source_dir == str(self.dataset_dir) else {}),
            )
            for row in rows.itertuples(index=False)
        ]
        paths = [(record, path) for record in records for path in (record.perfect_image, record.perturbed_image)]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # file reads release the GIL
            problems = list(pool.map(_image_problem, [path for _, path in paths]))
        bad = [
            BadImage(record.pair_id, path, problem)
            for (record, path), problem in zip(paths, problems, strict=True)
            if problem is not None
        ]
        bad_ids = {image.pair_id for image in bad}
        if bad_ids:
            kinds = Counter(image.problem for image in bad)
            fraction = len(bad_ids) / len(records)
            summary = (
                f"{len(bad_ids)} of {len(records)} {split} pairs ({fraction:.1%}) in {self.dataset_dir} have a missing "
                f"or corrupt image ({dict(kinds)}; first: {bad[0].path} is {bad[0].problem})"
            )
            if fraction > self.max_bad_fraction:
                raise DatasetError(f"{summary}: more than the {self.max_bad_fraction:.0%} allowed, refusing to train")
            log.warning("skipping %s", summary)
        return [record for record in records if record.pair_id not in bad_ids], bad

    def dataset(self, split: str) -> PairwiseDataset:
        """The oriented (and, for `degrade_splits`, degraded) pairs of a split that `setup` has loaded."""
        if split not in self.records:
            raise RuntimeError(f"split {split!r} is not set up: call setup() with a stage that needs it first")
        degradation = self.degradation if split in self.degrade_splits else None
        omission = self.omission if split == "train" else None
        records = self.records[split]
        if split == "train" and self.train_repeats:
            records = [record for record in records for _ in range(self.train_repeats.get(record.kind, 1))]
        return PairwiseDataset(records, self.orientation, degradation, omission, render_settings(self.meta))

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            self.dataset(split),
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            collate_fn=PairCollator(self.processor, self.system_prompt, self.max_prompt_tokens),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)
