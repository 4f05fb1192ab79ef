"""Spatial relations as predicates on a layout, each with a margin.

A relation is evaluated to one of four truths. HOLDS and BROKEN both need a margin: a relation is *stated* only
when it holds with margin, and counts as *broken* only when its negation holds with margin; in between it is
UNCLEAR, and a perturbation that leaves a stated relation unclear is rejected. MISSING means an object it names
was not found (only the pixel detector can say that).

Two margin sets: `strict` for scene graphs (what the dataset states and breaks) and a looser reading margin for
the pixel detector, whose positions come from small, blurred images (a relation stated with the strict margin
still reads as holding after a few pixels of error).

Every relation kind has an opposite that holds exactly when it is broken (left of <-> right of, inside <->
outside, ...), which is how a perturbed scene's own prompt states its broken relations.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Protocol

from data_synthesis.scene import REGIONS, Scene, SceneError


class Truth(enum.Enum):
    HOLDS = "holds"
    BROKEN = "broken"
    UNCLEAR = "unclear"
    MISSING = "missing"


Box = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the image side


class Layout(Protocol):
    """What relations read: boxes, occlusion, containment and the horizon. Scene graphs and pixels provide it."""

    strict: bool

    def box(self, colour: str) -> Box | None: ...

    def occlusion(self, front: str, back: str) -> float:
        """> 0 when `front` hides part of `back`, < 0 when `back` hides part of `front`, 0 without overlap.
        The magnitude is the hidden part relative to the smaller object."""
        ...

    def containment(self, inner: str, outer: str) -> float:
        """Fraction of `inner` that lies within `outer`'s outline while `inner` is nearer the viewer."""
        ...

    def horizon(self) -> float | None: ...


# (arity, opposite kind, family). Families are what "every relation type" counts.
KINDS: dict[str, tuple[int, str, str]] = {
    "left_of": (2, "right_of", "horizontal"),
    "right_of": (2, "left_of", "horizontal"),
    "above": (2, "below", "vertical"),
    "below": (2, "above", "vertical"),
    "in_front_of": (2, "behind", "depth"),
    "behind": (2, "in_front_of", "depth"),
    "next_to": (2, "far_from", "proximity"),
    "far_from": (2, "next_to", "proximity"),
    "inside": (2, "outside", "containment"),
    "outside": (2, "inside", "containment"),
    "between": (3, "not_between", "between"),
    "not_between": (3, "between", "between"),
    "in_sky": (1, "on_ground", "background"),
    "on_ground": (1, "in_sky", "background"),
    "in_region": (1, "not_in_region", "absolute"),
    "not_in_region": (1, "in_region", "absolute"),
}
FAMILIES = ("horizontal", "vertical", "depth", "proximity", "containment", "between", "background", "absolute")
_HALF_OPPOSITES = {
    "left half": "right half",
    "right half": "left half",
    "top half": "bottom half",
    "bottom half": "top half",
}


@dataclass(frozen=True, order=True)
class Relation:
    kind: str
    subjects: tuple[str, ...]  # object colours, in the order the relation reads ("A left of B": (A, B))
    region: str | None = None  # only for in_region / not_in_region

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SceneError(f"unknown relation kind {self.kind!r}; known: {', '.join(KINDS)}")
        arity = KINDS[self.kind][0]
        if len(self.subjects) != arity or len(set(self.subjects)) != arity:
            raise SceneError(f"relation {self.kind} needs {arity} distinct objects, got {self.subjects}")
        if (self.region is not None) != (self.kind in ("in_region", "not_in_region")):
            raise SceneError(f"relation {self.kind} takes a region only if it is an absolute placement")
        if self.region is not None and self.region not in REGIONS:
            raise SceneError(f"unknown region {self.region!r}; known: {', '.join(REGIONS)}")

    @property
    def family(self) -> str:
        return KINDS[self.kind][2]

    def opposite(self) -> Relation:
        """The relation that holds (with margin) exactly when this one is broken (with margin)."""
        cached = self.__dict__.get("_opposite")
        if cached is None:
            cached = self._make_opposite()
            self.__dict__["_opposite"] = cached  # frozen: bypass __setattr__; not a field, so eq/hash ignore it
        return cached

    def _make_opposite(self) -> Relation:
        if self.kind == "in_region" and self.region in _HALF_OPPOSITES:
            return Relation("in_region", self.subjects, _HALF_OPPOSITES[self.region])
        if self.kind == "not_in_region" and self.region in _HALF_OPPOSITES:
            return Relation("in_region", self.subjects, self.region)
        return Relation(KINDS[self.kind][1], self.subjects, self.region)

    def to_dict(self) -> dict:
        out = {"kind": self.kind, "subjects": list(self.subjects)}
        if self.region is not None:
            out["region"] = self.region
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Relation:
        try:
            return cls(data["kind"], tuple(data["subjects"]), data.get("region"))
        except (KeyError, TypeError) as error:
            raise SceneError(f"malformed relation {data!r}: {error}") from error


# --- margins -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Margins:
    order: float  # centre difference for left/right/above/below
    occlusion: float  # hidden fraction for in front / behind
    near: float  # box gap up to which objects are next to each other
    near_min: float  # and from which (overlapping objects are not "next to" each other)
    far: float  # box gap from which they are far apart
    inside: float  # containment fraction that counts as inside
    outside: float  # containment fraction below which an object is outside
    outside_gap: float  # and the gap it must keep (strict only)
    between_t: tuple[float, float]  # projection range on the segment that counts as between
    between_out: float  # projection overshoot beyond an end that counts as not between
    between_perp: float  # distance from the segment that still counts as between
    between_perp_out: float  # distance from the segment that counts as not between
    between_span: float  # shortest segment between the two outer objects
    horizon: float  # clearance of the whole box from the horizon
    half: float  # centre distance from the image midline
    corner_in: float  # centre within this distance of both corner edges' side
    corner_out: float  # centre beyond this coordinate on either axis: not in the corner
    centre_in: float
    centre_out: float


STRICT = Margins(
    order=0.08,
    occlusion=0.10,
    near=0.06,
    near_min=0.005,
    far=0.22,
    inside=0.999,
    outside=0.0,
    outside_gap=0.02,
    between_t=(0.3, 0.7),
    between_out=0.15,
    between_perp=0.06,
    between_perp_out=0.22,
    between_span=0.3,
    horizon=0.02,
    half=0.08,
    corner_in=0.33,
    corner_out=0.55,
    centre_in=0.1,
    centre_out=0.25,
)
READING = Margins(
    order=0.03,
    occlusion=0.02,
    near=0.10,
    near_min=-1.0,
    far=0.17,
    inside=0.85,
    outside=0.15,
    outside_gap=-1.0,
    between_t=(0.18, 0.82),
    between_out=0.05,
    between_perp=0.11,
    between_perp_out=0.16,
    between_span=0.2,
    horizon=-0.02,
    half=0.03,
    corner_in=0.4,
    corner_out=0.5,
    centre_in=0.15,
    centre_out=0.2,
)


def _centre(box: Box) -> tuple[float, float]:
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def box_gap(a: Box, b: Box) -> float:
    """Chebyshev gap between two boxes: the larger of the horizontal and vertical gaps (negative when they
    overlap on both axes)."""
    gap_x = max(a[0], b[0]) - min(a[2], b[2])
    gap_y = max(a[1], b[1]) - min(a[3], b[3])
    return max(gap_x, gap_y)


def _signed(value: float, margin: float) -> Truth:
    if value >= margin:
        return Truth.HOLDS
    if value <= -margin:
        return Truth.BROKEN
    return Truth.UNCLEAR


def _flip(truth: Truth) -> Truth:
    return {Truth.HOLDS: Truth.BROKEN, Truth.BROKEN: Truth.HOLDS}.get(truth, truth)


# the second kind of each pair in KINDS: evaluated as the negation of its opposite
_EVALUATED_AS_OPPOSITE = {
    "right_of",
    "below",
    "behind",
    "far_from",
    "outside",
    "not_between",
    "on_ground",
    "not_in_region",
}


def evaluate(relation: Relation, layout: Layout) -> Truth:
    """The truth of one relation on a layout (a scene graph or what the detector read from pixels)."""
    boxes = [layout.box(c) for c in relation.subjects]
    if any(b is None for b in boxes):
        return Truth.MISSING
    if relation.kind in _EVALUATED_AS_OPPOSITE:
        return _flip(evaluate(relation.opposite(), layout))
    m = STRICT if layout.strict else READING
    kind = relation.kind
    if kind == "left_of":
        return _signed(_centre(boxes[1])[0] - _centre(boxes[0])[0], m.order)
    if kind == "above":
        return _signed(_centre(boxes[1])[1] - _centre(boxes[0])[1], m.order)
    if kind == "in_front_of":
        return _signed(layout.occlusion(*relation.subjects), m.occlusion)
    if kind == "next_to":
        # close but apart: objects that overlap are not "next to" each other (in a scene graph)
        gap = box_gap(boxes[0], boxes[1])
        if gap >= m.far:
            return Truth.BROKEN
        return Truth.HOLDS if m.near_min <= gap <= m.near else Truth.UNCLEAR
    if kind == "inside":
        contained = layout.containment(*relation.subjects)
        if contained >= m.inside:
            return Truth.HOLDS
        if contained <= m.outside and box_gap(boxes[0], boxes[1]) >= m.outside_gap:
            return Truth.BROKEN
        return Truth.UNCLEAR
    if kind == "between":
        return _between(*[_centre(b) for b in boxes], m)
    if kind == "in_sky":
        horizon = layout.horizon()
        if horizon is None:
            return Truth.UNCLEAR
        if boxes[0][3] <= horizon - m.horizon:
            return Truth.HOLDS
        if boxes[0][1] >= horizon + m.horizon:
            return Truth.BROKEN
        return Truth.UNCLEAR
    if kind == "in_region":
        return _in_region(_centre(boxes[0]), relation.region, m)
    raise AssertionError(f"unhandled relation kind {kind}")


def _segment_position(middle, end_a, end_b) -> tuple[float, float, float] | None:
    """(span, t, perp): the length of the segment between the two ends, the middle's projection on it (0 at end_a,
    1 at end_b) and its distance from the line; None when the ends coincide."""
    vx, vy = end_b[0] - end_a[0], end_b[1] - end_a[1]
    span = math.hypot(vx, vy)
    if span < 1e-6:
        return None
    t = ((middle[0] - end_a[0]) * vx + (middle[1] - end_a[1]) * vy) / span**2
    perp = abs((middle[0] - end_a[0]) * vy - (middle[1] - end_a[1]) * vx) / span
    return span, t, perp


def _between(middle, end_a, end_b, m: Margins) -> Truth:
    position = _segment_position(middle, end_a, end_b)
    if position is None:
        return Truth.UNCLEAR
    span, t, perp = position
    if span >= m.between_span and m.between_t[0] <= t <= m.between_t[1] and perp <= m.between_perp:
        return Truth.HOLDS
    if t <= -m.between_out or t >= 1 + m.between_out or perp >= m.between_perp_out:
        return Truth.BROKEN
    return Truth.UNCLEAR


def _in_region(centre: tuple[float, float], region: str, m: Margins) -> Truth:
    x, y = centre
    if region in _HALF_OPPOSITES:
        # signed distance from the midline towards the named half
        towards = {"left half": 0.5 - x, "right half": x - 0.5, "top half": 0.5 - y, "bottom half": y - 0.5}
        return _signed(towards[region], m.half)
    if region == "centre":
        distance = max(abs(x - 0.5), abs(y - 0.5))
        return Truth.HOLDS if distance <= m.centre_in else Truth.BROKEN if distance >= m.centre_out else Truth.UNCLEAR
    # corners: distances measured from the corner's own edges
    dx = x if "left" in region else 1 - x
    dy = y if "top" in region else 1 - y
    if dx <= m.corner_in and dy <= m.corner_in:
        return Truth.HOLDS
    if dx >= m.corner_out or dy >= m.corner_out:
        return Truth.BROKEN
    return Truth.UNCLEAR


# --- graded margins ----------------------------------------------------------------------------------------------
def relation_margin(relation: Relation, layout: Layout) -> float | None:
    """How far a relation is from holding on a layout, signed: the distance (in the quantity `evaluate`
    thresholds) past the HOLDS threshold, positive where `evaluate` says HOLDS and negative where it does not (so
    negative where it says BROKEN); zero only on a threshold.

    What for: a graded reward (`SpatialWorldOracle(graded=True)`). The 0/1 verdicts give most same-prompt samples
    the same reward, so a GRPO group carries little information; the margin also orders samples that all fail (a
    square slightly left of its target beats one far right of it) or all pass. Being zero at the HOLDS threshold,
    a sigmoid of it crosses 1/2 exactly where the binary oracle flips, so it rewards what accuracy measures.

    Units are those `evaluate` reads: image fractions for positions and gaps (centre offsets, box gaps, distances
    to the horizon and to a region's edges; between's position along its segment is scaled by the segment's
    length), hidden and contained fractions for in front of / inside. A condition made of several (between, next
    to, a corner) takes the min of its terms (all must hold), a negation the max (any suffices).

    None when it cannot be read: an object it names is missing, there is no horizon (in sky / on ground), or the
    two ends of a between coincide (`evaluate`: MISSING, or UNCLEAR)."""
    boxes = [layout.box(c) for c in relation.subjects]
    if any(b is None for b in boxes):
        return None
    m = STRICT if layout.strict else READING
    kind, negated = relation.kind, relation.kind in _EVALUATED_AS_OPPOSITE
    base = relation.opposite().kind if negated else kind  # the kind evaluate reads; negated: HOLDS = its BROKEN
    if base == "in_region":
        region = relation.region
        if negated and region in _HALF_OPPOSITES:  # not in the left half = in the right half, with the margin
            region, negated = _HALF_OPPOSITES[region], False
        return _region_margin(_centre(boxes[0]), region, m, negated)
    if base == "left_of":
        value = _centre(boxes[1])[0] - _centre(boxes[0])[0]
        return -value - m.order if negated else value - m.order
    if base == "above":
        value = _centre(boxes[1])[1] - _centre(boxes[0])[1]
        return -value - m.order if negated else value - m.order
    if base == "in_front_of":
        value = layout.occlusion(*relation.subjects)
        return -value - m.occlusion if negated else value - m.occlusion
    if base == "next_to":
        gap = box_gap(boxes[0], boxes[1])
        return gap - m.far if negated else min(gap - m.near_min, m.near - gap)
    if base == "inside":
        contained = layout.containment(*relation.subjects)
        if negated:
            return min(m.outside - contained, box_gap(boxes[0], boxes[1]) - m.outside_gap)
        return contained - m.inside
    if base == "between":
        position = _segment_position(*[_centre(b) for b in boxes])
        if position is None:
            return None
        span, t, perp = position
        if negated:
            return max((-m.between_out - t) * span, (t - (1 + m.between_out)) * span, perp - m.between_perp_out)
        return min(
            span - m.between_span, (t - m.between_t[0]) * span, (m.between_t[1] - t) * span, m.between_perp - perp
        )
    if base == "in_sky":
        horizon = layout.horizon()
        if horizon is None:
            return None
        if negated:  # on the ground: below the horizon, and (reading margins overlap for a thin box) not in the sky
            return min(boxes[0][1] - (horizon + m.horizon), boxes[0][3] - (horizon - m.horizon))
        return (horizon - m.horizon) - boxes[0][3]
    raise AssertionError(f"unhandled relation kind {kind}")


def _region_margin(centre: tuple[float, float], region: str, m: Margins, negated: bool) -> float:
    """`relation_margin` of in_region (negated: not_in_region) for a centre; halves are never negated here."""
    x, y = centre
    if region in _HALF_OPPOSITES:
        towards = {"left half": 0.5 - x, "right half": x - 0.5, "top half": 0.5 - y, "bottom half": y - 0.5}
        return towards[region] - m.half
    if region == "centre":
        distance = max(abs(x - 0.5), abs(y - 0.5))
        return distance - m.centre_out if negated else m.centre_in - distance
    dx = x if "left" in region else 1 - x
    dy = y if "top" in region else 1 - y
    if negated:
        return max(dx - m.corner_out, dy - m.corner_out)
    return min(m.corner_in - dx, m.corner_in - dy)


# --- the exact layout of a scene graph --------------------------------------------------------------------------
class SceneLayout:
    """Exact layout of a scene graph: true boxes, depth order and silhouette overlaps (strict margins)."""

    strict = True

    def __init__(self, scene: Scene):
        self.scene = scene

    def box(self, colour: str) -> Box | None:
        obj = self.scene.by_colour.get(colour)
        return None if obj is None else obj.box

    def occlusion(self, front: str, back: str) -> float:
        overlap = self.scene.overlap_fraction(front, back)
        if overlap == 0:
            return 0.0
        return overlap if self.scene[front].depth > self.scene[back].depth else -overlap

    def containment(self, inner: str, outer: str) -> float:
        if self.scene[inner].depth < self.scene[outer].depth:
            return 0.0  # hidden behind it, not visibly inside
        return self.scene.covered_fraction(inner, outer)

    def horizon(self) -> float | None:
        return self.scene.background.horizon


def scene_truths(scene: Scene, relations: list[Relation]) -> list[Truth]:
    layout = SceneLayout(scene)
    return [evaluate(r, layout) for r in relations]
