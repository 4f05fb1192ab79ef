"""Stage A in stage B's own input format: sentence verification and image-text matching on SpatialWorld scenes.

The caption stage A (`reward_model.pretrain`) teaches the tiny backbone what is where, but the reward model then
has to compare a long prompt with the image and carry the verdict to `<|reward|>`, which Bradley-Terry alone never
taught a 2-layer model (see the reward-model issue). This stage trains exactly that, with dense exact labels, on
the input stage B sees (`reward_text`: image, SpatialWorld prompt, `<|reward|>`):

- data: a scene pair from `sample_pair` drawn from a seed stream of its own (`stable_seed("stage-a-verify", seed,
  split, index)`, never the pair builder's); one of its two scenes is shown, and each stated relation is written
  either as it holds there or as its opposite; the oracle (`evaluate` on the shown scene's exact layout) labels
  every sentence. Half the examples state only true relations (as a dataset prompt with its own image); the others
  falsify 1 to 3 sentences, preferring the relations the perturbation moved (the hard negatives of the test).
- objectives (as BLIP's image-text matching, plus a dense per-sentence one):
  1. per-sentence verification: a linear verdict head reads the hidden state of each relation sentence's final
     "." at the output of decoder layer `verdict_layer` (by default the second-to-last, so the last layer is free
     to gather the verdicts), BCE against the oracle label;
  2. image-text matching: a linear head on the final hidden state of `<|reward|>` says whether every sentence
     holds, BCE;
  3. dense vision grounding: a linear head on each image token as the language model receives it (the vision
     tower's output) says which colours' boxes overlap each of the patches it merges, multi-label BCE. Unlike
     captions, it supervises the vision tower directly, so it needs no text model that can already read.
  4. mention binding (optional, `binding_weight`): at each object mention's noun token ("star" of "the red star",
     "sign" of "the red plus sign"), a linear head on the output of decoder layer `binding_layer` predicts that
     object's grid cell (column and row bin of its centre), two cross-entropies. A dense, easy gradient for the
     mention -> image-token attention that verification needs first and the verdict BCE supplies only indirectly.
     Optionally (`bind_colour_words`) the mention's colour word is supervised too (a one-step lookup by colour).
  5. image-token cells (optional, `image_cell_weight`): the same binding head, at the same layer, reads each image
     token's own cell, so image tokens keep their position where a mention can copy it and the head reads it.
  6. sentence slots (optional, `slot_weight`): at each relation sentence's final "." (the verdict head's layer), a
     linear head predicts the cells of the relation's first two objects ("a" and "b" of its template, whatever
     their order in the sentence), so the sentence end learns to gather what the verdict compares.
  7. coordinates (optional, `coord_weight`): linear regressions of each mention's object centre (x, y) at the
     binding layer and of each sentence's offset (x_a - x_b, y_a - y_b) at its "." (verdict layer), MSE on
     `COORD_SCALE` times the image fractions. Cells (items 4-6) are one-hot, and comparing two one-hot positions
     is a quadratic function; a coordinate held linearly makes "a left of b" one ReLU of the offset, gated by the
     relation word.
  8. stated direction (optional, `stated_weight`): at each relation sentence's ".", the relation's kind (a
     16-way cross-entropy: the sentence end must know its own relation word) and, for left/right/above/below, the
     stated offset (x_b - x_a for "a left of b", x_a - x_b for "right of", y_b - y_a for "above", y_a - y_b for
     "below"; MSE), positive exactly when the sentence holds. The verdict is XOR-like in (relation word, sign of
     the offset): neither alone tells whether the sentence holds, so a verdict BCE alone gives no first-order
     signal; the stated offset is the product, supervised directly.
- prompt curriculum (optional): early phases may state only 1-2 relations of a few families (left/right,
  above/below) on scenes without a perturbation (`simple_verification_example`), before the full distribution.
- network: `Qwen2_5_VLModel` (no LM head, as stage B) from `tiny_backbone_config`, every parameter trained, with the
  `PatchPositionEmbedding` of the caption stage on the vision patches.
- output: `save_grounded_backbone` writes a directory that `build_spatialscore(dir)` loads, with the position
  embedding and the two heads beside it.

Simplified: one prompt generator (SpatialWorld's `describe_sentences`); the caption loss is not mixed in (the
token-colour loss takes its place as the vision-grounding task).
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import IterableDataset, get_worker_info
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel

from data_synthesis import COLOURS, SHAPE_WORDS, Relation, Scene, SceneLayout, Truth, WorldConfig, evaluate, render
from data_synthesis.perturb import sample_pair
from data_synthesis.prompts import describe_sentences
from data_synthesis.relations import FAMILIES, KINDS, box_gap
from data_synthesis.sampler import choose_relations, sample_scene
from reward_model.model import encode, reward_token_positions
from reward_model.pretrain import (
    POSITION_EMBEDDING_FILE,
    OptimizerFactory,
    PatchPositionEmbedding,
    SchedulerFactory,
    save_position_embedding,
)
from reward_model.tokenizer import SpatialScoreProcessor
from shared import stable_seed
from shared.io import atomic_directory

HEADS_FILE = "grounding_heads.safetensors"
POSITION_BINS = 8  # column and row bins of an object's centre for the binding head
COORD_SCALE = 4.0  # coordinate regressions predict this times the image fraction (offsets span -4 .. 4)


# --- examples ----------------------------------------------------------------------------------------------------
class VerificationExample(NamedTuple):
    image: Image.Image  # RGB, resolution x resolution
    prompt: str  # intro sentences, then one sentence per relation
    sentence_truth: list[bool]  # per relation sentence, in prompt order: does it hold in the image?
    relations: list[Relation]  # the relation each sentence states, in prompt order
    scene: Scene  # the scene shown in the image

    @property
    def matches(self) -> bool:
        """Image-text match: every stated relation holds."""
        return all(self.sentence_truth)


def holds(relation: Relation, layout: SceneLayout) -> bool | None:
    """True / False where the oracle is sure (HOLDS / BROKEN), None otherwise (UNCLEAR, MISSING)."""
    truth = evaluate(relation, layout)
    return True if truth is Truth.HOLDS else False if truth is Truth.BROKEN else None


def verification_example(
    seed: int,
    world: WorldConfig,
    *,
    resolution: int = 128,
    jitter: int = 8,
    match_fraction: float = 0.5,
    hard_fraction: float = 0.5,
    max_false: int = 3,
) -> VerificationExample:
    """One labelled (image, prompt) drawn from `seed`: see the module docstring.

    match_fraction: share of examples whose sentences all hold. hard_fraction: chance that a falsified sentence is
    one the perturbation broke (the two scenes differ there) rather than any. max_false: most falsified sentences.
    """
    rng = random.Random(seed)
    while True:  # a pair without a verified perturbation is skipped, as the builder does
        sample = sample_pair(rng, world, rng.randint(1, 3))
        if sample is not None:
            break
    broken = set(sample.perturbation.broken)
    show_perturbed = rng.random() < 0.5
    scene: Scene = sample.perturbation.scene if show_perturbed else sample.scene
    # What holds in the shown scene: the stated relations in the perfect one, the broken ones flipped otherwise.
    true_relations = [r.opposite() if show_perturbed and i in broken else r for i, r in enumerate(sample.stated)]
    return _stated_example(
        rng, scene, true_relations, broken, resolution, jitter, match_fraction, hard_fraction, max_false
    )


def simple_verification_example(
    seed: int,
    world: WorldConfig,
    *,
    families: Sequence[str] = ("horizontal", "vertical"),
    max_relations: int = 2,
    resolution: int = 128,
    jitter: int = 8,
    match_fraction: float = 0.5,
    max_false: int = 3,
) -> VerificationExample:
    """An easy example for a prompt curriculum: a scene without a perturbation that states 1 to `max_relations`
    relations of `families` that hold, then falsifies some as `verification_example` does (any sentence)."""
    rng = random.Random(seed)
    while True:
        sampled = sample_scene(rng, world, require=(rng.choice(list(families)),))
        candidates = {family: list(sampled.candidates[family]) for family in families}
        true_relations = choose_relations(rng, candidates, rng.randint(1, max_relations))
        if true_relations:
            break
    return _stated_example(
        rng, sampled.scene, true_relations, set(), resolution, jitter, match_fraction, 0.0, max_false
    )


def _stated_example(
    rng: random.Random,
    scene: Scene,
    true_relations: list[Relation],
    broken: set[int],
    resolution: int,
    jitter: int,
    match_fraction: float,
    hard_fraction: float,
    max_false: int,
) -> VerificationExample:
    """`true_relations` (all hold in `scene`) with some replaced by their opposites, described and rendered."""
    relations = list(true_relations)
    if rng.random() >= match_fraction:
        count = rng.randint(1, min(max_false, len(relations)))
        hard = [i for i in range(len(relations)) if i in broken]
        chosen: set[int] = set()
        while len(chosen) < count:
            pool = [i for i in hard if i not in chosen] if rng.random() < hard_fraction else []
            pool = pool or [i for i in range(len(relations)) if i not in chosen]
            chosen.add(rng.choice(pool))
        for i in chosen:
            relations[i] = relations[i].opposite()
    layout = SceneLayout(scene)
    truth = [holds(relation, layout) for relation in relations]
    for i, value in enumerate(truth):
        if value is None:  # the opposite is not clearly broken either: state the true relation instead
            relations[i], truth[i] = true_relations[i], True
    pieces = describe_sentences(scene, relations, style_seed=rng.randrange(2**31))
    image = render(scene, resolution, jitter=jitter, seed=rng.randrange(2**31))
    return VerificationExample(
        image=image,
        prompt=" ".join(pieces.intro + pieces.sentences),
        sentence_truth=[bool(truth[slot]) for slot in pieces.slots],
        relations=[relations[slot] for slot in pieces.slots],
        scene=scene,
    )


def token_colour_targets(scene: Scene, rows: int, cols: int, merge_size: int = 2) -> torch.Tensor:
    """Per image token (a rows x cols grid in raster order), which colours' drawn boxes overlap each of its
    merge_size x merge_size sub-cells (the patches it merges), so that the token also says where in its cell an
    object is.  -> [rows * cols, merge_size^2 * len(COLOURS)] float multi-hot, sub-cells in raster order."""
    fine_rows, fine_cols, palette = rows * merge_size, cols * merge_size, list(COLOURS)
    fine = torch.zeros(fine_rows, fine_cols, len(palette))
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box
        top, bottom = max(int(y0 * fine_rows), 0), min(int(y1 * fine_rows), fine_rows - 1)
        left, right = max(int(x0 * fine_cols), 0), min(int(x1 * fine_cols), fine_cols - 1)
        fine[top : bottom + 1, left : right + 1, palette.index(obj.colour)] = 1.0
    blocks = fine.reshape(rows, merge_size, cols, merge_size, len(palette)).permute(0, 2, 1, 3, 4)
    return blocks.reshape(rows * cols, merge_size * merge_size * len(palette))


STATED_AXES = {"left_of": (0, -1.0), "right_of": (0, 1.0), "above": (1, -1.0), "below": (1, 1.0)}


def stated_offset(relation: Relation, scene: Scene) -> float:
    """How far object a lies from b in the direction the relation states (image fractions; centre to centre): x_b -
    x_a for "a left of b", x_a - x_b for "right of", y_b - y_a for "above", y_a - y_b for "below"; NaN otherwise."""
    if relation.kind not in STATED_AXES:
        return float("nan")
    axis, sign = STATED_AXES[relation.kind]
    a, b = scene[relation.subjects[0]], scene[relation.subjects[1]]
    return sign * ((a.x - b.x) if axis == 0 else (a.y - b.y))


# For the relation kinds evaluated directly (the others are the negation of their opposite, as in the oracle).
_CANONICAL_KINDS = {"left_of", "above", "in_front_of", "next_to", "inside", "between", "in_sky", "in_region"}


def stated_margin(relation: Relation, scene: Scene) -> float:
    """A signed margin of any relation on the exact layout, positive where it holds and negative where it is broken
    (image fractions or overlap fractions, measured from the middle of the oracle's strict UNCLEAR band): the centre
    offset in the stated direction (left/right/above/below, as `stated_offset` but between box centres), the signed
    overlap (in front), the box gap below 0.14 (next to), the covered fraction above 0.5 (inside), the slack of the
    "between" test, the clearance from the horizon (in the sky), the distance into a region; a negated kind
    (right of, behind, far from, ...) is minus its opposite's. NaN where it is undefined (no horizon, a degenerate
    "between")."""
    if relation.kind not in _CANONICAL_KINDS:
        return -stated_margin(relation.opposite(), scene)
    layout = SceneLayout(scene)
    boxes = [layout.box(colour) for colour in relation.subjects]
    centres = [((box[0] + box[2]) / 2, (box[1] + box[3]) / 2) for box in boxes]
    kind = relation.kind
    if kind == "left_of":
        return centres[1][0] - centres[0][0]
    if kind == "above":
        return centres[1][1] - centres[0][1]
    if kind == "in_front_of":
        return layout.occlusion(*relation.subjects)
    if kind == "next_to":
        return 0.14 - box_gap(boxes[0], boxes[1])
    if kind == "inside":
        return layout.containment(*relation.subjects) - 0.5
    if kind == "between":
        (mx, my), (ax, ay), (bx, by) = centres
        vx, vy = bx - ax, by - ay
        span = math.hypot(vx, vy)
        if span < 1e-6:
            return float("nan")
        t = ((mx - ax) * vx + (my - ay) * vy) / span**2
        perp = abs((mx - ax) * vy - (my - ay) * vx) / span
        return min(t - 0.3, 0.7 - t, 0.14 - perp)
    if kind == "in_sky":
        horizon = layout.horizon()
        return float("nan") if horizon is None else horizon - centres[0][1]
    x, y = centres[0]  # in_region
    towards = {"left half": 0.5 - x, "right half": x - 0.5, "top half": 0.5 - y, "bottom half": y - 0.5}
    if relation.region in towards:
        return towards[relation.region]
    if relation.region == "centre":
        return 0.175 - max(abs(x - 0.5), abs(y - 0.5))
    dx = x if "left" in relation.region else 1 - x
    dy = y if "top" in relation.region else 1 - y
    return 0.44 - max(dx, dy)


def image_token_cells(rows: int, cols: int, bins: int) -> torch.Tensor:
    """(column bin, row bin) of each image token centre of a rows x cols grid, raster order: [rows * cols, 2]."""
    row, col = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    cells = torch.stack([((col + 0.5) / cols * bins).long(), ((row + 0.5) / rows * bins).long()], dim=-1)
    return cells.reshape(-1, 2)


class VerificationBatch(NamedTuple):
    inputs: dict[str, torch.Tensor]  # encode(...): input_ids, attention_mask, mm_token_type_ids [B, T], pixels
    sentence_ends: torch.Tensor  # [S, 2] int64: (row, token index) of each relation sentence's final "."
    sentence_truth: torch.Tensor  # [S] float: 1 where that sentence holds
    matches: torch.Tensor  # [B] float: 1 where every sentence of the row holds
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
        self.stated = stated_margin if stated_all_kinds else stated_offset
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
        stated = [self.stated(r, e.scene) for e in examples for r in e.relations]
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
    ) -> None:
        super().__init__()
        self.seed, self.batch_size, self.start_step = seed, batch_size, start_step
        self.curriculum, self.min_objects, self.resolution = tuple(curriculum), min_objects, resolution
        self.prompt_curriculum = tuple(prompt_curriculum)

    def __iter__(self) -> Iterator[VerificationExample]:
        worker = get_worker_info()
        offset, stride = (0, 1) if worker is None else (worker.id, worker.num_workers)
        index = self.start_step * self.batch_size + offset
        while True:
            step = index // self.batch_size
            world, phase = world_at(step, self.curriculum, self.min_objects), phase_at(step, self.prompt_curriculum)
            seed = stable_seed("stage-a-verify", self.seed, "train", index)
            if phase.full:
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


# --- the network -------------------------------------------------------------------------------------------------
class GroundingOutput(NamedTuple):
    sentence_logits: torch.Tensor  # [S]: the verdict logit of each relation sentence (order of sentence_ends)
    match_logits: torch.Tensor  # [B]: the image-text matching logit at `<|reward|>`
    reward_hidden: torch.Tensor  # [B, H]: the final hidden state of `<|reward|>`
    token_colour_logits: torch.Tensor  # [N, m * m * C]: per image token and merged patch, which colours it shows
    binding_logits: torch.Tensor  # [M, 2, bins]: per object mention, its object's column and row bin
    image_cell_logits: torch.Tensor | None = None  # [N, 2, bins]: per image token, its own column and row bin
    slot_logits: torch.Tensor | None = None  # [S, 2, 2, bins]: per relation sentence, objects a, b: column, row bin
    mention_xy: torch.Tensor | None = None  # [M, 2]: per mention, COORD_SCALE * its object's (x, y)
    slot_offsets: torch.Tensor | None = None  # [S, 2]: per relation sentence, COORD_SCALE * (centre a - centre b)
    kind_logits: torch.Tensor | None = None  # [S, len(KINDS)]: per relation sentence, its relation kind
    stated_offsets: torch.Tensor | None = None  # [S]: per relation sentence, COORD_SCALE * the stated offset


class GroundingNetwork(nn.Module):
    """A `Qwen2_5_VLModel` with a verdict head (reading layer `verdict_layer`'s output at sentence ends) and an
    image-text matching head (reading the final hidden state of `<|reward|>`)."""

    def __init__(
        self,
        backbone: Qwen2_5_VLModel,
        reward_token_id: int,
        verdict_layer: int | None = None,
        binding_layer: int | None = None,
        position_bins: int = POSITION_BINS,
    ) -> None:
        super().__init__()
        layers = backbone.config.text_config.num_hidden_layers
        self.verdict_layer = layers - 1 if verdict_layer is None else verdict_layer
        if not 1 <= self.verdict_layer <= layers:
            raise ValueError(f"verdict_layer must be in [1, {layers}], got {self.verdict_layer}")
        self.binding_layer = max(layers // 2, 1) if binding_layer is None else binding_layer
        if not 1 <= self.binding_layer <= layers:
            raise ValueError(f"binding_layer must be in [1, {layers}], got {self.binding_layer}")
        self.position_bins = position_bins
        hidden = backbone.config.text_config.hidden_size
        self.backbone = backbone
        self.reward_token_id = reward_token_id
        self.verdict_head = nn.Linear(hidden, 1)
        self.match_head = nn.Linear(hidden, 1)
        merge_size = backbone.config.vision_config.spatial_merge_size
        self.colour_head = nn.Linear(hidden, merge_size * merge_size * len(COLOURS))
        self.binding_head = nn.Linear(hidden, 2 * position_bins)
        self.slot_head = nn.Linear(hidden, 4 * position_bins)
        self.mention_xy_head = nn.Linear(hidden, 2)
        self.offset_head = nn.Linear(hidden, 2)
        self.kind_head = nn.Linear(hidden, len(KINDS))
        self.stated_head = nn.Linear(hidden, 1)
        self.image_token_id = backbone.config.image_token_id

    def forward(
        self, inputs: dict[str, torch.Tensor], sentence_ends: torch.Tensor, mentions: torch.Tensor | None = None
    ) -> GroundingOutput:
        """inputs: `encode(...)` of B rows; sentence_ends: [S, 2] and mentions: [M, 2] (row, token index)."""
        output = self.backbone(**inputs, output_hidden_states=True, use_cache=False)
        # hidden_states[i] is the output of decoder layer i (0: the embeddings; the last one is after the norm).
        verdict_states = output.hidden_states[self.verdict_layer]  # [B, T, H]
        sentence_hidden = verdict_states[sentence_ends[:, 0], sentence_ends[:, 1]]  # [S, H]
        positions = reward_token_positions(inputs["input_ids"], inputs["attention_mask"], self.reward_token_id)
        final = output.last_hidden_state  # [B, T, H]
        reward_hidden = final[torch.arange(final.shape[0], device=final.device), positions]  # [B, H]
        if mentions is None:
            mentions = torch.zeros(0, 2, dtype=torch.long, device=final.device)
        binding_states = output.hidden_states[self.binding_layer]  # [B, T, H]
        mention_hidden = binding_states[mentions[:, 0], mentions[:, 1]]  # [M, H]
        image_hidden = binding_states[inputs["input_ids"] == self.image_token_id]  # [N, H]
        return GroundingOutput(
            sentence_logits=self.verdict_head(sentence_hidden).squeeze(-1),
            match_logits=self.match_head(reward_hidden).squeeze(-1),
            reward_hidden=reward_hidden,
            # The language model's input at image tokens is the vision tower's output: this supervises the tower.
            token_colour_logits=self.colour_head(output.hidden_states[0][inputs["input_ids"] == self.image_token_id]),
            binding_logits=self.binding_head(mention_hidden).reshape(-1, 2, self.position_bins),
            image_cell_logits=self.binding_head(image_hidden).reshape(-1, 2, self.position_bins),
            slot_logits=self.slot_head(sentence_hidden).reshape(-1, 2, 2, self.position_bins),
            mention_xy=self.mention_xy_head(mention_hidden),
            slot_offsets=self.offset_head(sentence_hidden),
            kind_logits=self.kind_head(sentence_hidden),
            stated_offsets=self.stated_head(sentence_hidden).squeeze(-1),
        )


def build_grounding_network(
    config: Qwen2_5_VLConfig,
    reward_token_id: int,
    *,
    verdict_layer: int | None = None,
    binding_layer: int | None = None,
    position_grid_size: int = 10,
    attn_implementation: str = "sdpa",
) -> GroundingNetwork:
    """Random-weight `Qwen2_5_VLModel` from `config` with a `PatchPositionEmbedding` for images of up to
    `position_grid_size` patches per side, and the two heads; every parameter trainable."""
    backbone = Qwen2_5_VLModel._from_config(config, attn_implementation=attn_implementation)
    vision = config.vision_config
    PatchPositionEmbedding(position_grid_size, vision.hidden_size, vision.spatial_merge_size).attach(backbone.visual)
    network = GroundingNetwork(backbone, reward_token_id, verdict_layer, binding_layer)
    network.requires_grad_(True)
    return network


def grounding_losses(output: GroundingOutput, batch: VerificationBatch) -> dict[str, torch.Tensor]:
    """BCE of the verdicts against the oracle ([S]), of the matching logits against all-true ([B]), of the image
    tokens' colour logits against the colours whose boxes overlap their cells ([N, C]), and the cross-entropy of
    each mention's column and row bins ([M, 2, bins]; mean over both, 0 without mentions)."""
    losses = {
        "verdict": F.binary_cross_entropy_with_logits(output.sentence_logits.float(), batch.sentence_truth),
        "match": F.binary_cross_entropy_with_logits(output.match_logits.float(), batch.matches),
        "colour": F.binary_cross_entropy_with_logits(output.token_colour_logits.float(), batch.token_colours),
    }
    logits = output.binding_logits.float()
    if batch.mention_cells is None or len(batch.mention_cells) == 0:
        losses["binding"] = logits.sum() * 0.0
    else:
        losses["binding"] = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.mention_cells.reshape(-1))
    if output.image_cell_logits is not None and batch.image_cells is not None:
        logits = output.image_cell_logits.float()
        losses["image_cell"] = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.image_cells.reshape(-1))
    if output.slot_logits is not None and batch.slot_cells is not None:
        logits = output.slot_logits.float()
        losses["slot"] = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch.slot_cells.reshape(-1), ignore_index=-100
        )
    if output.mention_xy is not None and batch.mention_xy is not None and batch.slot_offsets is not None:
        known = ~batch.slot_offsets.isnan()
        offsets = output.slot_offsets.float()[known]
        losses["coord"] = 0.5 * F.mse_loss(output.mention_xy.float(), COORD_SCALE * batch.mention_xy) + 0.5 * (
            F.mse_loss(offsets, COORD_SCALE * batch.slot_offsets[known]) if known.any() else offsets.sum() * 0.0
        )
    if output.kind_logits is not None and batch.relation_kinds is not None and batch.stated_offsets is not None:
        known = ~batch.stated_offsets.isnan()
        stated = output.stated_offsets.float()[known]
        losses["stated"] = F.cross_entropy(output.kind_logits.float(), batch.relation_kinds) + (
            F.mse_loss(stated, COORD_SCALE * batch.stated_offsets[known]) if known.any() else stated.sum() * 0.0
        )
    return losses


class GroundingPretrainModule(LightningModule):
    """Stage A (verification): `loss = verdict BCE + match_weight * matching BCE + colour_weight * token colour BCE
    + binding_weight * mention-cell CE + image_cell_weight * image-token-cell CE + slot_weight * sentence-slot CE`,
    every parameter trained.

    Logs `train/loss`, `{train,val}/acc_verdict` (sentence accuracy), `{train,val}/acc_match`, `{train,val}/acc_colour`
    (per image token and colour), `{train,val}/acc_binding` (mentions whose column and row bins are both right).
    """

    def __init__(
        self,
        network: GroundingNetwork,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        *,
        match_weight: float = 1.0,
        colour_weight: float = 1.0,
        binding_weight: float = 0.0,
        image_cell_weight: float = 0.0,
        slot_weight: float = 0.0,
        coord_weight: float = 0.0,
        stated_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.network = network
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.match_weight, self.colour_weight, self.binding_weight = match_weight, colour_weight, binding_weight
        self.image_cell_weight, self.slot_weight, self.coord_weight = image_cell_weight, slot_weight, coord_weight
        self.stated_weight = stated_weight

    def step(self, batch: VerificationBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss and detached metrics of one batch."""
        output = self.network(batch.inputs, batch.sentence_ends, batch.mentions)
        losses = grounding_losses(output, batch)
        loss = losses["verdict"] + self.match_weight * losses["match"] + self.colour_weight * losses["colour"]
        loss = loss + self.binding_weight * losses["binding"]
        if self.image_cell_weight:
            loss = loss + self.image_cell_weight * losses["image_cell"]
        if self.slot_weight:
            loss = loss + self.slot_weight * losses["slot"]
        if self.coord_weight:
            loss = loss + self.coord_weight * losses["coord"]
        if self.stated_weight:
            loss = loss + self.stated_weight * losses["stated"]
        metrics = {
            "loss": loss.detach(),
            "acc_verdict": ((output.sentence_logits > 0).float() == batch.sentence_truth).float().mean(),
            "acc_match": ((output.match_logits > 0).float() == batch.matches).float().mean(),
            "acc_colour": ((output.token_colour_logits > 0).float() == batch.token_colours).float().mean(),
        }
        if batch.mention_cells is not None and len(batch.mention_cells):
            right = output.binding_logits.argmax(-1) == batch.mention_cells  # [M, 2]
            metrics["acc_binding"] = right.all(-1).float().mean()
        if output.image_cell_logits is not None and batch.image_cells is not None:
            metrics["acc_image_cell"] = (
                (output.image_cell_logits.argmax(-1) == batch.image_cells).all(-1).float().mean()
            )
        if output.slot_logits is not None and batch.slot_cells is not None:
            known = batch.slot_cells[..., 0] >= 0  # [S, 2]
            right = (output.slot_logits.argmax(-1) == batch.slot_cells).all(-1)  # [S, 2]
            metrics["acc_slot"] = right[known].float().mean()
        if output.slot_offsets is not None and batch.slot_offsets is not None:
            clear = batch.slot_offsets.abs() > 0.05  # NaN compares False
            agree = (output.slot_offsets > 0) == (batch.slot_offsets > 0)
            metrics["acc_offset_sign"] = agree[clear].float().mean()
        if output.stated_offsets is not None and batch.stated_offsets is not None:
            known = ~batch.stated_offsets.isnan()
            if known.any():
                right = (output.stated_offsets[known] > 0) == (batch.stated_offsets[known] > 0)
                metrics["acc_stated_sign"] = right.float().mean()
        return loss, metrics

    def training_step(self, batch: VerificationBatch, batch_idx: int) -> torch.Tensor:
        loss, metrics = self.step(batch)
        for name, value in metrics.items():
            self.log(f"train/{name}", value, on_step=True, prog_bar=name != "loss", batch_size=batch.batch_size)
        return loss

    def validation_step(self, batch: VerificationBatch, batch_idx: int) -> None:
        _, metrics = self.step(batch)
        for name, value in metrics.items():
            self.log(f"val/{name}", value, on_epoch=True, batch_size=batch.batch_size)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory([p for p in self.network.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


# --- saving ------------------------------------------------------------------------------------------------------
# The heads saved beside the stage-A backbone, in HEADS_FILE as "<head>.<parameter>"; checkpoints written before the
# later ones existed hold only the required three.
HEAD_NAMES = (
    "verdict_head",
    "match_head",
    "colour_head",
    "binding_head",
    "slot_head",
    "mention_xy_head",
    "offset_head",
    "kind_head",
    "stated_head",
)
REQUIRED_HEADS = ("verdict_head", "match_head", "colour_head")


def save_grounded_backbone(
    network: GroundingNetwork,
    processor: SpatialScoreProcessor,
    directory: str | os.PathLike,
    *,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write the stage-A backbone where `build_spatialscore(directory)` loads it (config.json, model.safetensors,
    processor files), its position embedding (`POSITION_EMBEDDING_FILE`), the verdict and matching heads
    (`HEADS_FILE`, with the verdict layer in its metadata) and `metrics` in `pretrain_metrics.json`. Atomic."""
    directory = Path(directory)
    with atomic_directory(directory) as staging:
        backbone = network.backbone
        state = {k: v for k, v in backbone.state_dict().items() if "patch_position_embedding" not in k}
        backbone.save_pretrained(staging, state_dict=state, safe_serialization=True)
        processor.save_pretrained(staging)
        embedding = backbone.visual.patch_position_embedding
        save_position_embedding(embedding, staging / POSITION_EMBEDDING_FILE)
        heads = {f"{name}.{k}": v for name in HEAD_NAMES for k, v in getattr(network, name).state_dict().items()}
        save_file(
            {k: v.detach().contiguous() for k, v in heads.items()},
            staging / HEADS_FILE,
            metadata={"verdict_layer": str(network.verdict_layer), "binding_layer": str(network.binding_layer)},
        )
        if metrics is not None:
            (staging / "pretrain_metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return directory


def read_grounding_heads(directory: str | os.PathLike) -> dict[str, dict[str, torch.Tensor]]:
    """The heads saved by `save_grounded_backbone` in `directory`: head name -> its state dict ("weight", "bias").
    Heads added after a checkpoint was written are absent from it."""
    path = Path(directory) / HEADS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} holds no grounding heads: {HEADS_FILE} is missing")
    heads: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in load_file(str(path)).items():
        name, parameter = key.split(".", 1)
        heads.setdefault(name, {})[parameter] = value
    return heads


def load_grounding_heads(network: GroundingNetwork, directory: str | os.PathLike) -> None:
    """Put the heads saved by `save_grounded_backbone` back on `network` (a binding head only where one was saved:
    checkpoints written before it existed have none)."""
    heads = read_grounding_heads(directory)
    for name in HEAD_NAMES:
        if name in heads or name in REQUIRED_HEADS:  # the others are absent from older checkpoints
            getattr(network, name).load_state_dict(heads.get(name, {}))
