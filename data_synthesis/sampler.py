"""Layout sampler: random SpatialWorld scenes that realise a sampled set of relations, and the relations to state.

The sampler first draws which relation families the prompt should state, then *constructs* the ones that random
placement almost never produces (an object inside another, two objects overlapping in depth, two objects next to
each other, one object between two others), places the rest at random, and finally states a family-balanced
selection of relations that hold with the strict margin. Every placement obeys the same rules (border clearance,
no unplanned overlap, nothing straddling the horizon), which perturbations obey as well, so the perturbed images
are not recognisable by layout statistics alone.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from data_synthesis.hull import filled_hull
from data_synthesis.relations import FAMILIES, Relation, SceneLayout, Truth, box_gap, evaluate
from data_synthesis.scene import (
    COLOURS,
    CONTAINER_SHAPES,
    DEPTH_SHAPES,
    GEOMETRY_GRID,
    REGIONS,
    SHAPES,
    SIZES,
    Background,
    Scene,
    SceneError,
    SceneObject,
    object_scale,
)

BORDER = 0.02  # every box keeps this clearance from the image border
CLEARANCE = 0.015  # box gap between objects that are not meant to overlap
HORIZON_CLEARANCE = 0.03  # no box straddles the horizon; each keeps this distance from it
MAX_OBJECTS = 8


@dataclass(frozen=True)
class WorldConfig:
    """What scenes to sample. Validated on construction so a bad value fails before any work starts."""

    min_objects: int = 3
    max_objects: int = 6
    min_relations: int = 1
    max_relations: int = 8
    sky_ground_fraction: float = 0.5
    colours: tuple[str, ...] = tuple(COLOURS)  # the palette to draw from (a scene's colours are distinct)
    shapes: tuple[str, ...] = SHAPES

    def __post_init__(self) -> None:
        unknown_colours = [c for c in self.colours if c not in COLOURS]
        if unknown_colours:
            raise SceneError(f"unknown colours {unknown_colours}; known colours: {', '.join(COLOURS)}")
        unknown_shapes = [s for s in self.shapes if s not in SHAPES]
        if unknown_shapes:
            raise SceneError(f"unknown shapes {unknown_shapes}; known shapes: {', '.join(SHAPES)}")
        if not self.shapes:
            raise SceneError("at least one shape is needed")
        if len(set(self.colours)) < self.max_objects:
            raise SceneError(
                f"{len(set(self.colours))} distinct colours cannot colour {self.max_objects} objects "
                "(colours are unique within a scene)"
            )
        if self.min_objects < 2:
            raise SceneError(f"min_objects must be at least 2 (relations need two objects), got {self.min_objects}")
        if self.max_objects > MAX_OBJECTS:
            raise SceneError(f"max_objects must be at most {MAX_OBJECTS}, got {self.max_objects}")
        if self.max_objects < self.min_objects:
            raise SceneError(f"max_objects ({self.max_objects}) is below min_objects ({self.min_objects})")
        if not 1 <= self.min_relations <= self.max_relations <= 8:
            raise SceneError(
                f"need 1 <= min_relations <= max_relations <= 8, got {self.min_relations}..{self.max_relations}"
            )
        if not 0.0 <= self.sky_ground_fraction <= 1.0:
            raise SceneError(f"sky_ground_fraction must be in [0, 1], got {self.sky_ground_fraction}")


# --- placement rules, shared with the perturbations -------------------------------------------------------------
def within_border(obj: SceneObject) -> bool:
    x0, y0, x1, y1 = obj.box
    return x0 >= BORDER and y0 >= BORDER and x1 <= 1 - BORDER and y1 <= 1 - BORDER


def clear_of_horizon(obj: SceneObject, background: Background) -> bool:
    if background.horizon is None:
        return True
    _, y0, _, y1 = obj.box
    return y1 <= background.horizon - HORIZON_CLEARANCE or y0 >= background.horizon + HORIZON_CLEARANCE


def placement_ok(obj: SceneObject, others: list[SceneObject], background: Background) -> bool:
    """Inside the border, clear of the horizon and clear of every object in `others`."""
    return (
        within_border(obj)
        and clear_of_horizon(obj, background)
        and all(box_gap(obj.box, other.box) >= CLEARANCE for other in others)
    )


def overlapping_pairs(scene: Scene) -> set[frozenset[str]]:
    """Pairs whose boxes come closer than the clearance (the only pairs allowed to touch or overlap)."""
    if "overlapping_pairs" not in scene.memo:
        boxes = [(o.colour, o.box) for o in scene.objects]
        scene.memo["overlapping_pairs"] = {
            frozenset((a, b))
            for i, (a, box_a) in enumerate(boxes)
            for b, box_b in boxes[i + 1 :]
            if box_gap(box_a, box_b) < CLEARANCE
        }
    return set(scene.memo["overlapping_pairs"])


def depth_readable(scene: Scene, a: str, b: str, min_bite: float = 0.06, min_bite_area: float = 0.001) -> bool:
    """Whichever of the two is in front, it takes a visible bite out of the other.

    A straight edge that cuts across a convex shape leaves it convex, and then no one (and no detector) can tell
    from pixels which is in front; a corner or a curve poking into it leaves a notch. The bite is the part of the
    hidden object's convex hull that the front object covers (exact masks); it must reach `min_bite` of the smaller
    object and `min_bite_area` of the image (4 pixels at 64 px, so that it survives blur at that size)."""
    aligned = scene.aligned_masks(a, b, union=True)
    if aligned is None:
        return False
    mask_a, mask_b = aligned
    smaller = min(mask_a.sum(), mask_b.sum())
    needed = max(min_bite * smaller, min_bite_area * GEOMETRY_GRID**2)
    visible = []
    for front, back in ((mask_a, mask_b), (mask_b, mask_a)):
        # slivers thinner than about a pixel at 64 px would stretch the hull but vanish in any image
        visible_back = ndimage.binary_opening(back & ~front, np.ones((3, 3), bool))
        if not visible_back.any() or not _same_extent(visible_back, back):
            return False
        visible.append((front, visible_back))
    return all((filled_hull(visible_back) & front).sum() >= needed for front, visible_back in visible)


def _same_extent(part: np.ndarray, whole: np.ndarray) -> bool:
    """`part` still reaches every side of `whole`'s bounding box. A bite that cuts off an extreme of the hidden
    object would shrink its visible box, and "the object with the smaller box is behind" would then read depth
    from one object alone."""
    extents = []
    for mask in (part, whole):
        rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        extents.append((rows[0], rows[-1], cols[0], cols[-1]))
    return extents[0] == extents[1]


@functools.cache
def _ring_when_centred(outer_shape: str, inner_shape: str, scale: float) -> float:
    """Narrowest ring (fraction of the image side) a large `outer_shape` leaves round a small `inner_shape`."""
    outer = SceneObject("blue", outer_shape, "large", 0.5, 0.5, SIZES["large"] * scale, 0)
    inner = SceneObject("red", inner_shape, "small", 0.5, 0.5, SIZES["small"] * scale, 1)
    inner_mask, outer_mask = Scene((inner, outer), Background("plain")).aligned_masks("red", "blue", union=True)
    return float(ndimage.distance_transform_edt(outer_mask)[inner_mask].min()) / GEOMETRY_GRID


def ring_readable(scene: Scene, inner: str, outer: str, min_ring: float = 0.02) -> bool:
    """The container shows a ring at least `min_ring` of the image side wide all round its content (1.3 pixels
    at 64 px), so that blur does not swallow it and the content still reads as inside."""
    aligned = scene.aligned_masks(inner, outer, union=True)
    if aligned is None:
        return False
    inner_mask, outer_mask = aligned
    depth_inside_outer = ndimage.distance_transform_edt(outer_mask)  # cells to the nearest cell outside it
    return bool(inner_mask.any()) and float(depth_inside_outer[inner_mask].min()) >= min_ring * GEOMETRY_GRID


def random_position(rng: random.Random, radius: float) -> tuple[float, float]:
    low, high = BORDER + radius, 1 - BORDER - radius
    return rng.uniform(low, high), rng.uniform(low, high)


# --- scene sampling -----------------------------------------------------------------------------------------------
_CONSTRUCTED = {"depth": 2, "proximity": 2, "containment": 2, "between": 3}


@dataclass(frozen=True)
class SampledScene:
    scene: Scene
    planned: list[Relation]  # the constructed relations (inside, in front of, next to, between) that hold
    candidates: Candidates  # every relation that holds with margin, by family, one phrasing per fact (lazy)
    num_relations: int  # how many relations the prompt should state (fewer if fewer survive the perturbation)


def sample_scene(
    rng: random.Random, config: WorldConfig, require: tuple[str, ...] = (), max_attempts: int = 200
) -> SampledScene:
    """A random scene whose layout realises a sampled set of relation families (including those in `require`),
    with the relations that hold."""
    for _ in range(max_attempts):
        sampled = _try_sample(rng, config, require)
        if sampled is not None:
            return sampled
    raise SceneError(f"could not place a scene in {max_attempts} attempts")


def _try_sample(rng: random.Random, config: WorldConfig, require: tuple[str, ...] = ()) -> SampledScene | None:
    num_objects = rng.randint(config.min_objects, config.max_objects)
    scale = object_scale(num_objects)
    sky_ground = "background" in require or rng.random() < config.sky_ground_fraction
    background = Background("sky_ground", round(rng.uniform(0.4, 0.6), 4)) if sky_ground else Background("plain")
    families = [f for f in FAMILIES if sky_ground or f != "background"]
    # Few objects cannot carry many independent relations (most perturbations would break several at once).
    target = rng.randint(config.min_relations, max(min(config.max_relations, 2 * num_objects), config.min_relations))
    wanted = list(require) + [rng.choice(families) for _ in range(max(target - len(require), 0))]

    colours = rng.sample(sorted(set(config.colours), key=list(COLOURS).index), num_objects)
    shapes = {c: rng.choice(config.shapes) for c in colours}
    containers = [s for s in CONTAINER_SHAPES if s in config.shapes]
    overlappable = [s for s in DEPTH_SHAPES if s in config.shapes]
    sizes = {c: rng.choice(list(SIZES)) for c in colours}

    # Assign disjoint object groups to the families that must be constructed.
    free = list(colours)
    groups: list[tuple[str, list[str]]] = []
    for family in wanted:
        need = _CONSTRUCTED.get(family)
        if (
            need is None
            or len(free) < need
            or (family == "containment" and not containers)
            or (family == "depth" and not overlappable)
        ):
            continue
        members = [free.pop() for _ in range(need)]
        groups.append((family, members))
        if family == "containment":
            inner, outer = members
            fitting = [c for c in containers if _ring_when_centred(c, shapes[inner], scale) >= 0.025]
            if not fitting:
                continue
            shapes[outer], sizes[outer], sizes[inner] = rng.choice(fitting), "large", "small"
        elif family == "depth":
            for colour in members:  # smaller overlapping shapes leave too small a notch to read at 64 px
                shapes[colour], sizes[colour] = rng.choice(overlappable), "large"

    order = list(colours)
    rng.shuffle(order)
    depth = {c: i for i, c in enumerate(order)}
    for family, members in groups:
        if family in ("containment", "depth") and depth[members[0]] < depth[members[1]]:
            depth[members[0]], depth[members[1]] = depth[members[1]], depth[members[0]]

    def make(colour: str, x: float, y: float) -> SceneObject:
        return SceneObject(
            colour,
            shapes[colour],
            sizes[colour],
            round(x, 4),
            round(y, 4),
            round(SIZES[sizes[colour]] * scale, 4),
            depth[colour],
        )

    placed: list[SceneObject] = []
    planned: list[Relation] = []
    for family, members in groups:
        group = _place_group(rng, family, members, make, placed, background, shapes, overlappable)
        if group is None:
            return None
        placed.extend(group)
        planned.append(_planned_relation(rng, family, members))
    for colour in colours:
        if any(o.colour == colour for o in placed):
            continue
        obj = _place_free(rng, colour, make, placed, background)
        if obj is None:
            return None
        placed.append(obj)

    scene = Scene(tuple(sorted(placed, key=lambda o: colours.index(o.colour))), background)
    layout = SceneLayout(scene)
    planned = [r for r in planned if evaluate(r, layout) is Truth.HOLDS]
    return SampledScene(scene, planned, Candidates(rng, scene, layout), target)


def _place_free(rng, colour, make, placed, background, tries: int = 60) -> SceneObject | None:
    for _ in range(tries):
        obj = make(colour, 0.5, 0.5)
        obj = obj.moved(*(round(v, 4) for v in random_position(rng, obj.radius)))
        if placement_ok(obj, placed, background):
            return obj
    return None


def _place_group(
    rng, family, members, make, placed, background, shapes: dict[str, str], depth_shapes: list[str], tries: int = 60
) -> list[SceneObject] | None:
    """Place a group of objects that realises one constructed relation. Depth pairs also redraw their shapes on
    each try: which shapes can overlap readably depends on the offset (see depth_readable)."""
    for _ in range(tries):
        if family == "depth":
            for colour in members:
                shapes[colour] = rng.choice(depth_shapes)
        group = [o.moved(round(o.x, 4), round(o.y, 4)) for o in _propose_group(rng, family, members, make)]
        if not all(placement_ok(o, placed, background) for o in group):
            continue
        probe = Scene(tuple(group), background)
        if family == "containment" and not ring_readable(probe, members[0], members[1]):
            continue
        if family == "depth" and not (
            0.3 <= probe.overlap_fraction(*members) <= 0.5 and depth_readable(probe, *members)
        ):
            continue
        if family in ("proximity", "between") and overlapping_pairs(probe):
            continue
        return group
    return None


def _propose_group(rng, family, members, make) -> list[SceneObject]:
    if family == "containment":
        inner, outer = members
        outer_obj = make(outer, 0.5, 0.5)
        outer_obj = outer_obj.moved(*random_position(rng, outer_obj.radius))
        jitter = 0.05 * outer_obj.radius
        inner_obj = make(inner, outer_obj.x + rng.uniform(-jitter, jitter), outer_obj.y + rng.uniform(-jitter, jitter))
        return [inner_obj, outer_obj]
    if family == "depth":
        front, back = members
        back_obj = make(back, 0.5, 0.5)
        back_obj = back_obj.moved(*random_position(rng, back_obj.radius))
        front_obj = make(front, 0.5, 0.5)
        # diagonal offsets: the bite then takes a corner region and leaves both boxes whole (see depth_readable)
        angle = math.pi / 4 + rng.randrange(4) * math.pi / 2 + rng.uniform(-0.25, 0.25)
        distance = (front_obj.radius + back_obj.radius) * rng.uniform(0.38, 0.62)
        return [
            front_obj.moved(back_obj.x + distance * math.cos(angle), back_obj.y + distance * math.sin(angle)),
            back_obj,
        ]
    if family == "proximity":
        first, second = members
        first_obj = make(first, 0.5, 0.5)
        first_obj = first_obj.moved(*random_position(rng, first_obj.radius))
        second_obj = make(second, 0.5, 0.5)
        return [first_obj, place_next_to(rng, second_obj, first_obj)]
    if family == "between":
        middle, end_a, end_b = members
        a_obj, b_obj, m_obj = make(end_a, 0.5, 0.5), make(end_b, 0.5, 0.5), make(middle, 0.5, 0.5)
        a_obj = a_obj.moved(*random_position(rng, a_obj.radius))
        b_obj = b_obj.moved(*random_position(rng, b_obj.radius))
        t = rng.uniform(0.4, 0.6)
        return [
            m_obj.moved(
                a_obj.x + t * (b_obj.x - a_obj.x) + rng.uniform(-0.02, 0.02),
                a_obj.y + t * (b_obj.y - a_obj.y) + rng.uniform(-0.02, 0.02),
            ),
            a_obj,
            b_obj,
        ]
    raise AssertionError(family)


def place_next_to(rng: random.Random, mover: SceneObject, anchor: SceneObject) -> SceneObject:
    """`mover` placed beside `anchor` (left, right, above or below) with a small gap and some sideways slack."""
    gap = rng.uniform(0.02, 0.05)
    side = rng.choice(("left", "right", "above", "below"))
    reach = anchor.radius + mover.radius + gap
    slack = rng.uniform(-0.6, 0.6) * min(anchor.radius, mover.radius)
    dx, dy = {"left": (-reach, slack), "right": (reach, slack), "above": (slack, -reach), "below": (slack, reach)}[side]
    return mover.moved(anchor.x + dx, anchor.y + dy)


def _planned_relation(rng: random.Random, family: str, members: list[str]) -> Relation:
    if family == "containment":
        return Relation("inside", (members[0], members[1]))
    if family == "depth":
        return (
            Relation("in_front_of", (members[0], members[1]))
            if rng.random() < 0.5
            else Relation("behind", (members[1], members[0]))
        )
    if family == "proximity":
        return Relation("next_to", tuple(rng.sample(members, 2)))
    if family == "between":
        ends = rng.sample(members[1:], 2)
        return Relation("between", (members[0], *ends))
    raise AssertionError(family)


class Candidates(Mapping):
    """Every relation that holds with the strict margin in a scene, by family, one phrasing per fact.

    Each family is worked out on first access: most families of most scenes are never looked at (a pair states a
    handful of relations), and evaluating every relation of every family was a quarter of the builder's time."""

    def __init__(self, rng: random.Random, scene: Scene, layout: SceneLayout):
        self._rng, self._scene, self._layout = rng, scene, layout
        self._found: dict[str, list[Relation]] = {}

    def __getitem__(self, family: str) -> list[Relation]:
        if family not in self._found:
            self._found[family] = _FINDERS[family](self._rng, self._scene, self._layout)
        return self._found[family]

    def __iter__(self):
        return iter(FAMILIES)

    def __len__(self) -> int:
        return len(FAMILIES)


def _holding(layout: SceneLayout, kind: str, subjects: tuple[str, ...], region: str | None = None) -> bool:
    return evaluate(Relation(kind, subjects, region), layout) is Truth.HOLDS


def _pairs(scene: Scene) -> list[tuple[str, str]]:
    colours = [o.colour for o in scene.objects]
    return [(a, b) for i, a in enumerate(colours) for b in colours[i + 1 :]]


def _ordered(rng, scene, layout, forward: str, backward: str, touching_only: bool = False) -> list[Relation]:
    """`forward` facts over every ordered pair, each phrased forward or mirrored (A left of B / B right of A)."""
    found = []
    for a, b in _pairs(scene):
        if touching_only and box_gap(scene[a].box, scene[b].box) >= 0:
            continue  # depth needs overlapping boxes
        for first, second in ((a, b), (b, a)):
            if not _holding(layout, forward, (first, second)):
                continue
            if forward == "in_front_of" and scene.overlap_fraction(first, second) > 0.6:
                continue  # an object within another: containment, not a depth order a perturbation could reverse
            found.append(
                Relation(backward, (second, first)) if rng.random() < 0.5 else Relation(forward, (first, second))
            )
    return found


def _horizontal(rng, scene, layout) -> list[Relation]:
    return _ordered(rng, scene, layout, "left_of", "right_of")


def _vertical(rng, scene, layout) -> list[Relation]:
    return _ordered(rng, scene, layout, "above", "below")


def _depth(rng, scene, layout) -> list[Relation]:
    return _ordered(rng, scene, layout, "in_front_of", "behind", touching_only=True)


def _proximity(rng, scene, layout) -> list[Relation]:
    found = [Relation("next_to", pair) for pair in _pairs(scene) if _holding(layout, "next_to", pair)]
    # "far from" is true of most pairs: offer one so that it is not a word only perturbed prompts use
    far = [Relation("far_from", pair) for pair in _pairs(scene) if _holding(layout, "far_from", pair)]
    return found + rng.sample(far, min(len(far), 1))


def _containment(rng, scene, layout) -> list[Relation]:
    found = []
    for a, b in _pairs(scene):
        if box_gap(scene[a].box, scene[b].box) < 0:
            found += [Relation("inside", pair) for pair in ((a, b), (b, a)) if _holding(layout, "inside", pair)]
    return found


def _between(rng, scene, layout) -> list[Relation]:
    colours = [o.colour for o in scene.objects]
    centres = {o.colour: ((o.box[0] + o.box[2]) / 2, (o.box[1] + o.box[3]) / 2) for o in scene.objects}
    found = []
    for middle in colours:
        mx, my = centres[middle]
        for end_a, end_b in _pairs(scene):
            if middle in (end_a, end_b):
                continue
            (ax, ay), (bx, by) = centres[end_a], centres[end_b]
            # cheap necessary condition first: the middle lies near the box spanned by the two ends
            near = min(ax, bx) - 0.1 <= mx <= max(ax, bx) + 0.1 and min(ay, by) - 0.1 <= my <= max(ay, by) + 0.1
            ends = tuple(sorted((end_a, end_b)))
            if near and _holding(layout, "between", (middle, *ends)):
                found.append(Relation("between", (middle, *ends)))
    return found


def _background(rng, scene, layout) -> list[Relation]:
    if scene.background.kind != "sky_ground":
        return []
    return [
        Relation(kind, (o.colour,))
        for o in scene.objects
        for kind in ("in_sky", "on_ground")
        if _holding(layout, kind, (o.colour,))
    ]


def _absolute(rng, scene, layout) -> list[Relation]:
    found = []
    for obj in scene.objects:
        regions = [r for r in REGIONS if _holding(layout, "in_region", (obj.colour,), r)]
        if regions:
            found.append(Relation("in_region", (obj.colour,), rng.choice(regions)))
    return found


_FINDERS = {
    "horizontal": _horizontal,
    "vertical": _vertical,
    "depth": _depth,
    "proximity": _proximity,
    "containment": _containment,
    "between": _between,
    "background": _background,
    "absolute": _absolute,
}
assert set(_FINDERS) == set(FAMILIES)


def fact(relation: Relation) -> tuple:
    """A key that is equal for two phrasings of one fact (A left of B, B right of A)."""
    mirrored = {"right_of": "left_of", "below": "above", "behind": "in_front_of"}
    if relation.kind in mirrored:
        return (mirrored[relation.kind], tuple(reversed(relation.subjects)))
    if relation.kind in ("next_to", "far_from"):
        return (relation.kind, tuple(sorted(relation.subjects)))
    if relation.kind == "between":
        return ("between", relation.subjects[0], tuple(sorted(relation.subjects[1:])))
    if relation.kind in ("in_region", "in_sky", "on_ground"):
        return ("placement", relation.kind, relation.subjects)
    return (relation.kind, relation.subjects)


def choose_relations(
    rng: random.Random,
    candidates: Mapping[str, list[Relation]],
    count: int,
    taken: list[Relation] = (),
    prefer_disjoint: bool = False,
    families: tuple[str, ...] | None = None,
    accept: Callable[[Relation], bool] | None = None,
) -> list[Relation]:
    """Up to `count` candidates that state facts not in `taken`. Each comes from the next of `families` if given
    (none if that family has no candidate left), else from a uniformly chosen family among those with candidates
    left (family-balanced). With `prefer_disjoint`, a relation that shares no object with those already chosen is
    preferred within its family (relations broken together should not all push one object the same way, which
    would make that object's position alone tell the images apart). Candidates failing `accept` are dropped as
    they are drawn (checked lazily: most candidates are never drawn)."""
    facts = {fact(r) for r in taken}
    pools: dict[str, list[Relation]] = {}

    def pool_of(family: str) -> list[Relation]:
        if family not in pools:
            pools[family] = [r for r in candidates.get(family, ()) if fact(r) not in facts]
        return pools[family]

    chosen: list[Relation] = []
    open_families = list(candidates)
    while len(chosen) < count:
        if families is not None:
            family = families[len(chosen)]
            if not pool_of(family):
                break
        else:
            # uniform over the families that still have candidates (rejection: empty ones are found lazily)
            if not open_families:
                break
            family = rng.choice(open_families)
            if not pool_of(family):
                open_families.remove(family)
                continue
        pool = pool_of(family)
        used = {c for r in chosen for c in r.subjects}
        disjoint = [i for i, r in enumerate(pool) if not used & set(r.subjects)] if prefer_disjoint else []
        relation = pool.pop(rng.choice(disjoint) if disjoint else rng.randrange(len(pool)))
        if fact(relation) in facts or (accept is not None and not accept(relation)):
            continue
        facts.add(fact(relation))
        chosen.append(relation)
    return chosen
