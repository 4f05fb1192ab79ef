"""Stage A's labelled examples: a SpatialWorld scene, a prompt whose relation sentences hold or are falsified, and
the oracle's verdict per sentence, plus the dense targets read off the exact layout (the colours under each image
token, each relation's stated margin).

Example `seed` draws a scene pair from `sample_pair` with a `random.Random(seed)` of its own; one of its two scenes
is shown, and each stated relation is written either as it holds there or as its opposite. Half the examples state
only true relations (as a dataset prompt with its own image); the others falsify 1 to 3 sentences, preferring the
relations the perturbation moved (the hard negatives of the test). `simple_verification_example` is the prompt
curriculum's easy start: a scene without a perturbation stating 1 to a few relations of a few families.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from PIL import Image

from data_synthesis import COLOURS, Relation, Scene, SceneLayout, Truth, WorldConfig, evaluate, render
from data_synthesis.detect import detect
from data_synthesis.perturb import sample_pair
from data_synthesis.prompts import describe_sentences
from data_synthesis.relations import box_gap
from data_synthesis.sampler import choose_relations, sample_scene


class VerificationExample(NamedTuple):
    image: Image.Image  # RGB, resolution x resolution
    prompt: str  # intro sentences, then one sentence per relation
    sentence_truth: list[bool]  # per relation sentence, in prompt order: does it hold in the image?
    relations: list[Relation]  # the relation each sentence states, in prompt order
    scene: Scene  # the scene shown in the image (a generated image's: its objects at the detected centres)
    layout: Any = None  # what the stated margins are read from: None for the scene's exact layout, a generated
    # image's `PixelLayout` (the detector's reading, as the oracle judges it)
    all_found: bool = True  # every object the prompt names is in the image (a generated one may lose one)

    @property
    def matches(self) -> bool:
        """Image-text match: every named object is there and every stated relation holds."""
        return self.all_found and all(self.sentence_truth)


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


def generated_verification_example(
    seed: int,
    image: Image.Image,
    scene: Scene,
    relations: Sequence[Relation],
    *,
    resolution: int = 128,
    match_fraction: float = 0.5,
    max_false: int = 3,
    allow_missing: bool = False,
) -> VerificationExample | None:
    """A labelled example from a generator's own image of a prompt stating `relations` about `scene`: the verdicts
    are the oracle's reading of the image (the detector's layout), not the prompt's intent. Each stated relation the
    oracle reads clearly (holds or broken) is stated as read and, as in `verification_example`, some are then
    written as their opposite; a relation naming an object the oracle did not find is stated as the prompt states it
    and does not hold (with `allow_missing`; else such an image gives None). The sentences are described afresh
    (their order and wording from `seed`); the image is resized to `resolution` (bicubic) as the renders are drawn;
    the example's scene has its found objects at the detected boxes' centres. None where no relation reads."""
    rng, image = random.Random(seed), image.convert("RGB")
    layout = detect(image, [obj.colour for obj in scene.objects])
    missing = {obj.colour for obj in scene.objects if not layout.found(obj.colour)}
    if missing and not allow_missing:
        return None
    lost = [relation for relation in relations if missing & set(relation.subjects)]
    read = [(relation, holds(relation, layout)) for relation in relations if relation not in lost]
    true_relations = [relation if truth else relation.opposite() for relation, truth in read if truth is not None]
    if not true_relations and not lost:
        return None
    moved = []
    for obj in scene.objects:
        if obj.colour in missing:
            continue
        x0, y0, x1, y1 = layout.box(obj.colour)
        u0, v0, u1, v1 = obj.box
        moved.append(obj.moved(float(obj.x + (x0 + x1 - u0 - u1) / 2), float(obj.y + (y0 + y1 - v0 - v1) / 2)))
    stated = list(true_relations)
    if true_relations and rng.random() >= match_fraction:
        for i in rng.sample(range(len(stated)), rng.randint(1, min(max_false, len(stated)))):
            stated[i] = stated[i].opposite()
    stated, truth = _as_read(stated, true_relations, layout)
    stated, truth = stated + lost, truth + [False] * len(lost)
    shown = scene.replace_objects(*moved)
    pieces = describe_sentences(shown, stated, style_seed=rng.randrange(2**31))
    return VerificationExample(
        image=image.resize((resolution, resolution), Image.Resampling.BICUBIC),
        prompt=" ".join(pieces.intro + pieces.sentences),
        sentence_truth=[bool(truth[slot]) for slot in pieces.slots],
        relations=[stated[slot] for slot in pieces.slots],
        scene=shown,
        layout=layout,
        all_found=not missing,
    )


def _as_read(
    stated: list[Relation], true_relations: list[Relation], layout
) -> tuple[list[Relation], list[bool | None]]:
    """The stated relations (each a true relation or its opposite) with the oracle's verdict on `layout`; one whose
    verdict is unclear (the opposite is not clearly broken either) is replaced by its true relation, which holds."""
    stated, truth = list(stated), [holds(relation, layout) for relation in stated]
    for i, value in enumerate(truth):
        if value is None:
            stated[i], truth[i] = true_relations[i], True
    return stated, truth


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
    relations, truth = _as_read(relations, true_relations, SceneLayout(scene))
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
    return _per_token(fine, rows, cols, merge_size)


def layout_colour_targets(layout: Any, rows: int, cols: int, merge_size: int = 2) -> torch.Tensor:
    """`token_colour_targets` read off a detected layout: which found objects' pixels fall in each merged patch (an
    object the detector did not find marks none).  -> [rows * cols, merge_size^2 * len(COLOURS)]"""
    fine_rows, fine_cols, palette = rows * merge_size, cols * merge_size, list(COLOURS)
    fine = torch.zeros(fine_rows, fine_cols, len(palette))
    for colour, mask in layout.masks.items():
        pixels = torch.from_numpy(mask).float()[None, None]  # [1, 1, H, W]
        cells = torch.nn.functional.adaptive_max_pool2d(pixels, (fine_rows, fine_cols))[0, 0]
        fine[..., palette.index(colour)] = cells
    return _per_token(fine, rows, cols, merge_size)


def _per_token(fine: torch.Tensor, rows: int, cols: int, merge_size: int) -> torch.Tensor:
    """A [rows * m, cols * m, C] patch grid as [rows * cols, m * m * C]: per image token, its m x m patches in
    raster order."""
    blocks = fine.reshape(rows, merge_size, cols, merge_size, fine.shape[-1]).permute(0, 2, 1, 3, 4)
    return blocks.reshape(rows * cols, merge_size * merge_size * fine.shape[-1])


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


def stated_margin(relation: Relation, scene: Scene, layout: Any = None) -> float:
    """A signed margin of any relation on the exact layout, positive where it holds and negative where it is broken
    (image fractions or overlap fractions, measured from the middle of the oracle's strict UNCLEAR band): the centre
    offset in the stated direction (left/right/above/below, as `stated_offset` but between box centres), the signed
    overlap (in front), the box gap below 0.14 (next to), the covered fraction above 0.5 (inside), the slack of the
    "between" test, the clearance from the horizon (in the sky), the distance into a region; a negated kind
    (right of, behind, far from, ...) is minus its opposite's. NaN where it is undefined (no horizon, a degenerate
    "between"). `layout`: read them there instead (a generated image's `PixelLayout`)."""
    if relation.kind not in _CANONICAL_KINDS:
        return -stated_margin(relation.opposite(), scene, layout)
    layout = SceneLayout(scene) if layout is None else layout
    boxes = [layout.box(colour) for colour in relation.subjects]
    if None in boxes:
        return float("nan")  # an object the detector did not find
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
