"""Stage A's data: the endless training stream of labelled examples (with its object-count and prompt curricula),
the fixed held-out sets, the collator that encodes them as stage B does and marks every token the losses read, and
the `VerificationDataModule` that LightningCLI builds.

Example i of the training stream depends only on (seed, i): `stable_seed("stage-a-verify", seed, "train", i)`,
never the pair builder's seeds, and its scene and prompt distributions on the step i // batch_size. The held-out
sets come from the "val" (test distribution: 3 to 6 objects) and "val-easy" (left/right/above/below only) streams.
With a pool of the generator's own samples (`generated.py`), example i is one of them where
`stable_seed("stage-a-mix", seed, i)` falls below `generated_fraction` (the render it replaces is skipped, so the
other examples keep their places), and the `generated` held-out set is drawn from the pool's held-out prompts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_synthesis import COLOURS, SHAPE_WORDS, Scene, WorldConfig
from data_synthesis.relations import FAMILIES, KINDS
from reward_model.model import encode
from reward_model.stage_a.examples import (
    VerificationExample,
    image_token_cells,
    layout_colour_targets,
    simple_verification_example,
    stated_margin,
    stated_offset,
    token_colour_targets,
    verification_example,
)
from reward_model.stage_a.generated import GeneratedSample, load_generated_samples, sample_example
from reward_model.stage_a.pairs import PairCollator, TestPair, load_test_pairs
from reward_model.tokenizer import SpatialScoreProcessor, load_processor
from shared import stable_seed

POSITION_BINS = 8  # column and row bins of an object's centre for the binding head


class VerificationBatch(NamedTuple):
    inputs: dict[str, torch.Tensor]  # encode(...): input_ids, attention_mask, mm_token_type_ids [B, T], pixels
    sentence_ends: torch.Tensor  # [S, 2] int64: (row, token index) of each relation sentence's final "."
    sentence_truth: torch.Tensor  # [S] float: 1 where that sentence holds
    matches: torch.Tensor  # [B] float: 1 where every sentence of the row holds and every named object is there
    token_colours: torch.Tensor  # [N, m * m * C] float: per image token (N in all rows) and merged patch (m * m),
    # which of the C colours' boxes overlap that patch
    num_objects: torch.Tensor  # [B] int64
    mentions: torch.Tensor | None = None  # [M, 2] int64: (row, token index) of each object mention's noun token
    mention_cells: torch.Tensor | None = None  # [M, 2] int64: (column bin, row bin) of the mentioned object's centre
    image_cells: torch.Tensor | None = None  # [N, 2] int64: (column bin, row bin) of each image token's centre
    slot_cells: torch.Tensor | None = None  # [S, 2, 2] int64: per relation sentence, (column, row) bins of its
    # objects a and b (-100 where the relation has no b)
    mention_xy: torch.Tensor | None = None  # [M, 2] float: the mentioned object's centre (x, y), image fractions
    slot_offsets: torch.Tensor | None = None  # [S, 2] float: per relation sentence, centre of a minus centre of b
    # (image fractions; NaN where the relation has no b)
    relation_kinds: torch.Tensor | None = None  # [S] int64: index in `KINDS` of each sentence's relation
    stated_offsets: torch.Tensor | None = None  # [S] float: the offset in the stated direction (left/right/above/
    # below; positive exactly where the sentence holds), NaN for other relations

    @property
    def batch_size(self) -> int:
        return len(self.matches)


class VerificationCollator:
    """Encodes examples as stage B does (`encode`, right padding) and finds each relation sentence's last token.

    The k-th "." of a prompt ends its k-th sentence (no SpatialWorld sentence holds another "."), so relation
    sentence j ends at the (num_intro + j)-th "." of the row, counted from the end.
    """

    def __init__(
        self,
        processor: SpatialScoreProcessor,
        position_bins: int = POSITION_BINS,
        bind_colour_words: bool = False,
        stated_all_kinds: bool = False,
    ) -> None:
        self.processor = processor
        self.bind_colour_words = bind_colour_words
        self.stated_all_kinds = stated_all_kinds
        self.period_id = processor.tokenizer.convert_tokens_to_ids(".")
        self.merge_size = processor.image_processor.merge_size
        self.position_bins = position_bins
        tokenizer = processor.tokenizer
        self.colour_ids = {tokenizer.convert_tokens_to_ids(colour): colour for colour in COLOURS}
        self.shape_ids = {
            shape: [tokenizer(word, add_special_tokens=False)["input_ids"] for word in words]
            for shape, words in SHAPE_WORDS.items()
        }

    def mention_nouns(self, ids: list[int], scene: Scene) -> list[tuple[int, str]]:
        """(token index, colour) of the last token of every "<colour> <shape words>" mention of a scene object in
        `ids` (colour words elsewhere, as in "blue sky", are not followed by the object's shape words)."""
        objects, found = scene.by_colour, []
        for index, token in enumerate(ids):
            colour = self.colour_ids.get(token)
            if colour not in objects:
                continue
            for words in self.shape_ids[objects[colour].shape]:
                if ids[index + 1 : index + 1 + len(words)] == words:
                    if self.bind_colour_words:
                        found.append((index, colour))
                    found.append((index + len(words), colour))
                    break
        return found

    def __call__(self, examples: Sequence[VerificationExample]) -> VerificationBatch:
        inputs = encode(self.processor, [e.prompt for e in examples], [e.image for e in examples])
        ends: list[tuple[int, int]] = []
        for row, example in enumerate(examples):
            periods = (inputs["input_ids"][row] == self.period_id).nonzero().flatten().tolist()
            count = len(example.sentence_truth)
            if len(periods) < count:
                raise ValueError(f"prompt has {len(periods)} '.' tokens but {count} relation sentences: {example}")
            ends += [(row, position) for position in periods[len(periods) - count :]]
        mentions: list[tuple[int, int]] = []
        cells: list[tuple[int, int]] = []
        bins = self.position_bins

        def cell(obj) -> list[int]:
            return [min(int(obj.x * bins), bins - 1), min(int(obj.y * bins), bins - 1)]

        slots = [
            [cell(e.scene[r.subjects[0]]), cell(e.scene[r.subjects[1]]) if len(r.subjects) > 1 else [-100, -100]]
            for e in examples
            for r in e.relations
        ]
        nan = float("nan")
        offsets = [
            [e.scene[r.subjects[0]].x - e.scene[r.subjects[1]].x, e.scene[r.subjects[0]].y - e.scene[r.subjects[1]].y]
            if len(r.subjects) > 1
            else [nan, nan]
            for e in examples
            for r in e.relations
        ]
        mention_xy: list[tuple[float, float]] = []
        kinds = [list(KINDS).index(r.kind) for e in examples for r in e.relations]
        stated = [
            stated_margin(r, e.scene, e.layout) if self.stated_all_kinds else stated_offset(r, e.scene)
            for e in examples
            for r in e.relations
        ]
        for row, example in enumerate(examples):
            for position, colour in self.mention_nouns(inputs["input_ids"][row].tolist(), example.scene):
                obj = example.scene[colour]
                mentions.append((row, position))
                mention_xy.append((obj.x, obj.y))
                cells.append((min(int(obj.x * bins), bins - 1), min(int(obj.y * bins), bins - 1)))
        grids = inputs["image_grid_thw"][:, 1:] // self.merge_size  # [B, 2]: image tokens per column, per row
        image_cells = [image_token_cells(int(h), int(w), bins) for h, w in grids]
        colours = [
            token_colour_targets(e.scene, int(h), int(w), self.merge_size)
            if e.layout is None
            else layout_colour_targets(e.layout, int(h), int(w), self.merge_size)
            for e, (h, w) in zip(examples, grids, strict=True)
        ]
        return VerificationBatch(
            inputs=dict(inputs),
            sentence_ends=torch.tensor(ends, dtype=torch.long).reshape(-1, 2),
            sentence_truth=torch.tensor([t for e in examples for t in e.sentence_truth], dtype=torch.float),
            matches=torch.tensor([e.matches for e in examples], dtype=torch.float),
            token_colours=torch.cat(colours),
            num_objects=torch.tensor([len(e.scene.objects) for e in examples], dtype=torch.long),
            mentions=torch.tensor(mentions, dtype=torch.long).reshape(-1, 2),
            mention_cells=torch.tensor(cells, dtype=torch.long).reshape(-1, 2),
            image_cells=torch.cat(image_cells),
            slot_cells=torch.tensor(slots, dtype=torch.long).reshape(-1, 2, 2),
            mention_xy=torch.tensor(mention_xy, dtype=torch.float).reshape(-1, 2),
            slot_offsets=torch.tensor(offsets, dtype=torch.float).reshape(-1, 2),
            relation_kinds=torch.tensor(kinds, dtype=torch.long),
            stated_offsets=torch.tensor(stated, dtype=torch.float),
        )


def world_at(step: int, curriculum: Sequence[tuple[int, int]], min_objects: int) -> WorldConfig:
    """The scene distribution at a training step: `curriculum` ((first_step, max_objects), sorted, from step 0)."""
    current = curriculum[0][1]
    for first_step, max_objects in curriculum:
        if step >= first_step:
            current = max_objects
    return WorldConfig(min_objects=min(min_objects, current), max_objects=current)


class PromptPhase(NamedTuple):
    """From `first_step` on: prompts state at most `max_relations` relations of `families` (all families and up to
    8 relations: the full distribution, with the perturbation's hard negatives)."""

    first_step: int
    max_relations: int = 8
    families: tuple[str, ...] = FAMILIES

    @property
    def full(self) -> bool:
        return self.max_relations >= 8 and set(self.families) == set(FAMILIES)


FAMILY_GROUPS = {"hv": ("horizontal", "vertical"), "all": FAMILIES}


def parse_prompt_curriculum(text: str) -> tuple[PromptPhase, ...]:
    """Parse "0:2:hv,400:4:hv,800:8:all" into phases (first step, most relations, family group of `FAMILY_GROUPS` or
    families joined by "+")."""
    phases = []
    for item in text.split(","):
        first_step, max_relations, families = item.split(":")
        group = FAMILY_GROUPS.get(families) or tuple(families.split("+"))
        unknown = [family for family in group if family not in FAMILIES]
        if unknown:
            raise ValueError(f"unknown relation families {unknown} in prompt curriculum {text!r}; known: {FAMILIES}")
        phases.append(PromptPhase(int(first_step), int(max_relations), tuple(group)))
    if phases[0].first_step != 0 or [p.first_step for p in phases] != sorted(p.first_step for p in phases):
        raise ValueError(f"prompt curriculum {text!r} must start at step 0 and be sorted by step")
    return tuple(phases)


def phase_at(step: int, phases: Sequence[PromptPhase]) -> PromptPhase:
    return [phase for phase in phases if step >= phase.first_step][-1]


class VerificationStream(IterableDataset):
    """Endless examples; example i depends only on (seed, i) and its object count on the step i // batch_size."""

    def __init__(
        self,
        *,
        seed: int,
        batch_size: int,
        start_step: int = 0,
        curriculum: Sequence[tuple[int, int]] = ((0, 6),),
        min_objects: int = 3,
        resolution: int = 128,
        prompt_curriculum: Sequence[PromptPhase] = (PromptPhase(0),),
        generated: Sequence[GeneratedSample] = (),
        generated_fraction: float = 0.0,
    ) -> None:
        super().__init__()
        self.seed, self.batch_size, self.start_step = seed, batch_size, start_step
        self.curriculum, self.min_objects, self.resolution = tuple(curriculum), min_objects, resolution
        self.prompt_curriculum = tuple(prompt_curriculum)
        self.generated, self.generated_fraction = generated, generated_fraction

    def __iter__(self) -> Iterator[VerificationExample]:
        worker = get_worker_info()
        offset, stride = (0, 1) if worker is None else (worker.id, worker.num_workers)
        index = self.start_step * self.batch_size + offset
        while True:
            step = index // self.batch_size
            world, phase = world_at(step, self.curriculum, self.min_objects), phase_at(step, self.prompt_curriculum)
            seed = stable_seed("stage-a-verify", self.seed, "train", index)
            mix = stable_seed("stage-a-mix", self.seed, index) % 1_000_000 / 1_000_000
            example = (
                sample_example(self.generated, seed, resolution=self.resolution)
                if self.generated and mix < self.generated_fraction
                else None
            )
            if example is not None:
                yield example
            elif phase.full:
                yield verification_example(seed, world, resolution=self.resolution)
            else:
                yield simple_verification_example(
                    seed,
                    world,
                    families=phase.families,
                    max_relations=phase.max_relations,
                    resolution=self.resolution,
                )
            index += stride


def validation_examples(seed: int, size: int, *, resolution: int = 128) -> list[VerificationExample]:
    """A fixed held-out set with the test's scene distribution (3-6 objects), from its own seed stream."""
    world = WorldConfig(min_objects=3, max_objects=6)
    return [
        verification_example(stable_seed("stage-a-verify", seed, "val", i), world, resolution=resolution)
        for i in range(size)
    ]


def easy_validation_examples(seed: int, size: int, *, resolution: int = 128) -> list[VerificationExample]:
    """A fixed held-out set of the prompt curriculum's easy start (1-2 left/right/above/below relations, 3-6
    objects), from its own seed stream."""
    world = WorldConfig(min_objects=3, max_objects=6)
    return [
        simple_verification_example(stable_seed("stage-a-verify", seed, "val-easy", i), world, resolution=resolution)
        for i in range(size)
    ]


def generated_validation_examples(
    pool: Sequence[GeneratedSample], seed: int, size: int, *, resolution: int = 128
) -> list[VerificationExample]:
    """Up to `size` examples of the held-out prompts' samples in `pool`, from their own seed stream."""
    held_out = [sample for sample in pool if sample.held_out]
    if not held_out:
        return []
    examples = (
        sample_example(held_out, stable_seed("stage-a-verify", seed, "val-generated", i), resolution=resolution)
        for i in range(size)
    )
    return [example for example in examples if example is not None]


class VerificationDataModule(LightningDataModule):
    """Stage A's examples, generated on the fly (training) and once (the held-out sets).

    processor: the network's processor (or its directory); None takes `network.processor` from the LightningModule
        of the trainer this data module is attached to, so a config names the processor once, with the network.
    batch_size: examples per training step; eval_batch_size: per held-out batch.
    curriculum: (first_step, max_objects) entries, sorted, the first at step 0: the most objects per scene.
    min_objects: fewest objects per scene (capped by the curriculum's most).
    prompt_curriculum: "first_step:max_relations:families,..." (families: hv, all, or names joined by "+"), e.g.
        "0:2:hv,450:4:all,900:8:all"; None: the full distribution from step 0.
    bind_colour_words: also mark each mention's colour word for the binding loss.
    stated_all_kinds: stated margins of every relation kind (`stated_margin`), not only left/right/above/below.
    val_size / easy_val_size: the held-out sets (`validation_examples`, `easy_validation_examples`; 0: none).
    dataset_dir / eval_pairs: a SpatialWorld dataset dir whose first `eval_pairs` test pairs are scored zero-shot at
        every evaluation (`pairs.py`; None: none), in batches of `pair_batch_size` pairs.
    generated_dirs / generated_source_dir: draw dirs of the generator's own samples (`rl_policy draw`) and the
        SpatialWorld dataset dir whose prompts they drew (`generated.py`); generated_fraction: the share of training
        examples taken from them (the rest are renders); generated_val_size: the `generated` held-out set, from the
        draws' held-out prompts (0: none); generated_missing: samples in which the oracle lost an object too
        (their sentences naming it do not hold, so the matching logit learns presence).
    num_workers: DataLoader workers of the training stream; 0 and 1 give the same order (more interleave it).
    seed: every example stream (training, held-out).
    """

    def __init__(
        self,
        processor: SpatialScoreProcessor | str | os.PathLike | None = None,
        *,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        curriculum: Sequence[tuple[int, int]] = ((0, 6),),
        min_objects: int = 3,
        prompt_curriculum: str | None = None,
        bind_colour_words: bool = False,
        stated_all_kinds: bool = False,
        resolution: int = 128,
        val_size: int = 256,
        easy_val_size: int = 0,
        dataset_dir: str | None = None,
        eval_pairs: int = 200,
        pair_batch_size: int = 32,
        generated_dirs: Sequence[str] = (),
        generated_source_dir: str | None = None,
        generated_fraction: float = 0.0,
        generated_val_size: int = 256,
        generated_missing: bool = False,
        num_workers: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0 <= generated_fraction <= 1 or generated_val_size < 0:
            raise ValueError(
                f"generated_fraction must lie in [0, 1] and generated_val_size not be negative, got "
                f"{generated_fraction}, {generated_val_size}"
            )
        if (generated_fraction > 0) != bool(generated_dirs) or (generated_dirs and generated_source_dir is None):
            raise ValueError(
                "generated_dirs, generated_source_dir and a positive generated_fraction go together, got "
                f"{list(generated_dirs)}, {generated_source_dir}, {generated_fraction}"
            )
        curriculum = tuple((int(first_step), int(max_objects)) for first_step, max_objects in curriculum)
        if not curriculum or curriculum[0][0] != 0 or [s for s, _ in curriculum] != sorted(s for s, _ in curriculum):
            raise ValueError(f"curriculum must start at step 0 and be sorted by step, got {list(curriculum)}")
        if batch_size < 1 or eval_batch_size < 1 or val_size < 1 or easy_val_size < 0:
            raise ValueError(
                f"batch sizes and val_size must be positive and easy_val_size not negative, got {batch_size}, "
                f"{eval_batch_size}, {val_size}, {easy_val_size}"
            )
        self.phases = parse_prompt_curriculum(prompt_curriculum) if prompt_curriculum else (PromptPhase(0),)
        self.processor = load_processor(processor) if isinstance(processor, str | os.PathLike) else processor
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.curriculum, self.min_objects = curriculum, min_objects
        self.bind_colour_words, self.stated_all_kinds = bind_colour_words, stated_all_kinds
        self.resolution, self.val_size, self.easy_val_size = resolution, val_size, easy_val_size
        self.dataset_dir, self.eval_pairs, self.pair_batch_size = dataset_dir, eval_pairs, pair_batch_size
        self.generated_dirs, self.generated_source_dir = list(generated_dirs), generated_source_dir
        self.generated_fraction, self.generated_val_size = generated_fraction, generated_val_size
        self.generated_missing = generated_missing
        self.generated: list[GeneratedSample] = []
        self.num_workers, self.seed = num_workers, seed
        self.held_out: list[list[VerificationExample]] | None = None
        self.held_out_names: list[str] = []
        self.test_pairs: list[TestPair] = []

    def setup(self, stage: str | None = None) -> None:
        if self.processor is None:
            network = getattr(self.trainer.lightning_module, "network", None) if self.trainer is not None else None
            if network is None or not hasattr(network, "processor"):
                raise ValueError(
                    "VerificationDataModule has no processor: pass one (or its directory), or attach the data module "
                    "to a Trainer whose LightningModule has a `network` with a `processor`"
                )
            self.processor = network.processor
        if self.generated_dirs and not self.generated:
            self.generated = load_generated_samples(
                self.generated_dirs, self.generated_source_dir, include_missing=self.generated_missing
            )
        if self.held_out is None:
            self.held_out = [validation_examples(self.seed, self.val_size, resolution=self.resolution)]
            self.held_out_names = ["val"]
            if self.easy_val_size:
                easy = easy_validation_examples(self.seed, self.easy_val_size, resolution=self.resolution)
                self.held_out.append(easy)
                self.held_out_names.append("easy")
            if self.generated and self.generated_val_size:
                self.held_out.append(generated_validation_examples(self.generated, self.seed, self.generated_val_size))
                self.held_out_names.append("generated")
        if self.dataset_dir is not None and not self.test_pairs:
            self.test_pairs = load_test_pairs(self.dataset_dir, self.eval_pairs)

    def collator(self) -> VerificationCollator:
        return VerificationCollator(
            self.processor, bind_colour_words=self.bind_colour_words, stated_all_kinds=self.stated_all_kinds
        )

    def train_dataloader(self) -> DataLoader:
        stream = VerificationStream(
            seed=self.seed,
            batch_size=self.batch_size,
            start_step=self.trainer.global_step if self.trainer is not None else 0,
            curriculum=self.curriculum,
            min_objects=self.min_objects,
            resolution=self.resolution,
            prompt_curriculum=self.phases,
            generated=[sample for sample in self.generated if not sample.held_out],
            generated_fraction=self.generated_fraction,
        )
        return DataLoader(stream, batch_size=self.batch_size, collate_fn=self.collator(), num_workers=self.num_workers)

    def val_dataloader(self) -> list[DataLoader]:
        """The held-out sets (`held_out_names`: val, then easy and generated where asked), then (with dataset_dir)
        the test pairs."""
        if self.held_out is None:
            raise RuntimeError("call setup() before asking for the held-out sets")
        collate = self.collator()
        loaders = [
            DataLoader(examples, batch_size=self.eval_batch_size, collate_fn=collate) for examples in self.held_out
        ]
        if self.test_pairs:
            pairs = PairCollator(self.processor)
            loaders.append(DataLoader(self.test_pairs, batch_size=self.pair_batch_size, collate_fn=pairs))
        return loaders
