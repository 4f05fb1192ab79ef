"""SpatialWorld scene model: objects, backgrounds and their exact geometry. Pure: no file or image I/O.

Coordinates are fractions of the image side, x to the right and y downwards, so one scene renders at any
resolution. Every object has a colour that is unique within its scene: the colour is the object's identity, which
is what lets the pixel detector find each described object again in any image.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from functools import cached_property

import numpy as np
from PIL import Image, ImageDraw

# Named colours, chosen far apart in RGB and far from the background colours below (the detector relies on it).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "orange": (245, 135, 10),
    "yellow": (240, 215, 20),
    "green": (35, 150, 45),
    "blue": (35, 65, 215),
    "purple": (125, 40, 170),
    "pink": (240, 105, 185),
    "brown": (115, 70, 25),
    "black": (20, 20, 20),
    "cyan": (0, 185, 200),
}

# Background colours: light, so that no blend of two object colours along a shared edge (complementary colours
# average to a mid grey) looks like background, which would part touching objects.
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "plain": (228, 226, 212),
    "sky": (186, 216, 246),
    "ground": (196, 214, 160),
}
BACKGROUND_KINDS = ("plain", "sky_ground")


def _regular_polygon(num_vertices: int, start_angle: float, radius: float = 1.0) -> tuple[tuple[float, float], ...]:
    return tuple(
        (
            radius * math.cos(start_angle + 2 * math.pi * i / num_vertices),
            radius * math.sin(start_angle + 2 * math.pi * i / num_vertices),
        )
        for i in range(num_vertices)
    )


def _star(points: int = 5, inner: float = 0.45) -> tuple[tuple[float, float], ...]:
    vertices = []
    for i in range(2 * points):
        radius = 1.0 if i % 2 == 0 else inner
        angle = -math.pi / 2 + math.pi * i / points
        vertices.append((radius * math.cos(angle), radius * math.sin(angle)))
    return tuple(vertices)


_ARM = 0.36
# Unit outlines inside [-1, 1]^2 (y down); None means a circle. `CONTAINER_SHAPES` are roomy enough to hold a small
# object.
SHAPE_OUTLINES: dict[str, tuple[tuple[float, float], ...] | None] = {
    "circle": None,
    "square": ((-0.9, -0.9), (0.9, -0.9), (0.9, 0.9), (-0.9, 0.9)),
    "triangle": ((0.0, -1.0), (1.0, 0.85), (-1.0, 0.85)),
    "diamond": ((0.0, -1.0), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0)),
    "pentagon": _regular_polygon(5, -math.pi / 2),
    "hexagon": _regular_polygon(6, 0.0),
    "star": _star(),
    "cross": (
        (-_ARM, -1.0),
        (_ARM, -1.0),
        (_ARM, -_ARM),
        (1.0, -_ARM),
        (1.0, _ARM),
        (_ARM, _ARM),
        (_ARM, 1.0),
        (-_ARM, 1.0),
        (-_ARM, _ARM),
        (-1.0, _ARM),
        (-1.0, -_ARM),
        (-_ARM, -_ARM),
    ),
}
SHAPES = tuple(SHAPE_OUTLINES)
_UNIT_EXTENTS = {
    name: (-1.0, -1.0, 1.0, 1.0)
    if outline is None
    else (
        min(u for u, _ in outline),
        min(v for _, v in outline),
        max(u for u, _ in outline),
        max(v for _, v in outline),
    )
    for name, outline in SHAPE_OUTLINES.items()
}
CONTAINER_SHAPES = ("circle", "square", "hexagon")
# Shapes that take part in depth relations. A depth pair must be readable from pixels at 64 px whichever is in
# front (the front one takes a visible bite out of the other: no straight cut) and must not give itself away by
# one object's box (the bite must not cut off an extreme of the hidden object, or "the smaller box is behind"
# reads depth from one object). Of circle, square, diamond, pentagon and hexagon pairs overlapping by 30-50%,
# only two squares offset diagonally met both (84% of such layouts; every other pair under 2%, measured over
# 1,500 layouts), so depth relations are between squares.
DEPTH_SHAPES = ("square",)

# Half-extent of each size, as a fraction of the image side, for scenes of up to 4 objects; larger scenes scale
# every object down by sqrt(4 / n) so that 8 objects still fit without crowding.
SIZES: dict[str, float] = {"small": 0.06, "medium": 0.08, "large": 0.105}

# Absolute placements ("in the top-left corner").
REGIONS = (
    "left half",
    "right half",
    "top half",
    "bottom half",
    "top-left corner",
    "top-right corner",
    "bottom-left corner",
    "bottom-right corner",
    "centre",
)

# The smallest object must span at least this many pixels for the detector to find it after blur.
MIN_OBJECT_PIXELS = 6.0
# Geometry (overlap, containment) is computed on masks of this many cells per side.
GEOMETRY_GRID = 256


class SceneError(ValueError):
    """A scene or scene request that cannot exist (unknown colour or shape, too few objects, ...)."""


def object_scale(num_objects: int) -> float:
    return min(1.0, math.sqrt(4.0 / max(num_objects, 1)))


def min_resolution(num_objects: int) -> int:
    """The smallest image side at which every object of an `num_objects` scene is still detectable."""
    smallest_span = 2 * SIZES["small"] * object_scale(num_objects)
    return math.ceil(MIN_OBJECT_PIXELS / smallest_span)


@dataclass(frozen=True)
class SceneObject:
    colour: str  # unique within a scene: the object's identity
    shape: str
    size: str  # small | medium | large
    x: float  # centre of the object's bounding square, fraction of the image width
    y: float  # centre, fraction of the image height (downwards)
    radius: float  # half side of the bounding square, fraction of the image side
    depth: int  # drawing order: larger is nearer the viewer and occludes smaller

    def outline(self) -> list[tuple[float, float]] | None:
        unit = SHAPE_OUTLINES[self.shape]
        if unit is None:
            return None
        return [(self.x + self.radius * u, self.y + self.radius * v) for u, v in unit]

    @cached_property
    def box(self) -> tuple[float, float, float, float]:
        """Exact bounding box (x0, y0, x1, y1) of the drawn shape."""
        u0, v0, u1, v1 = _UNIT_EXTENTS[self.shape]
        r = self.radius
        return (self.x + r * u0, self.y + r * v0, self.x + r * u1, self.y + r * v1)

    def moved(self, x: float, y: float) -> SceneObject:
        return SceneObject(self.colour, self.shape, self.size, x, y, self.radius, self.depth)


_OBJECT_FIELDS = tuple(f.name for f in fields(SceneObject))


@dataclass(frozen=True)
class Background:
    kind: str  # plain | sky_ground
    horizon: float | None = None  # y of the horizon for sky_ground


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: Background
    _masks: dict = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)
    memo: dict = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)  # derived values

    def __post_init__(self) -> None:
        validate_objects([(o.colour, o.shape, o.size) for o in self.objects])
        if self.background.kind not in BACKGROUND_KINDS:
            raise SceneError(f"unknown background kind {self.background.kind!r}; known: {BACKGROUND_KINDS}")
        if (self.background.kind == "sky_ground") != (self.background.horizon is not None):
            raise SceneError("a sky_ground background needs a horizon, and only it has one")

    # -- lookup ---------------------------------------------------------------------------------------------
    @cached_property
    def by_colour(self) -> dict[str, SceneObject]:
        return {o.colour: o for o in self.objects}

    def __getitem__(self, colour: str) -> SceneObject:
        return self.by_colour[colour]

    def replace_objects(self, *changed: SceneObject) -> Scene:
        """The same scene with some objects moved or re-layered (attributes are not re-validated)."""
        updates = {o.colour: o for o in changed}
        scene = object.__new__(Scene)
        object.__setattr__(scene, "objects", tuple(updates.get(o.colour, o) for o in self.objects))
        object.__setattr__(scene, "background", self.background)
        object.__setattr__(scene, "_masks", {c: m for c, m in self._masks.items() if c not in updates})
        object.__setattr__(scene, "memo", {})
        return scene

    # -- exact geometry (masks on a fixed grid, each drawn in a window around its object) ---------------------
    def window(self, colour: str) -> tuple[np.ndarray, int, int]:
        """Silhouette of one object in a window of the GEOMETRY_GRID^2 grid: (mask, x0, y0) of the window."""
        if colour not in self._masks:
            obj = self[colour]
            box = obj.box
            x0, y0 = math.floor(box[0] * GEOMETRY_GRID) - 1, math.floor(box[1] * GEOMETRY_GRID) - 1
            x1, y1 = math.ceil(box[2] * GEOMETRY_GRID) + 1, math.ceil(box[3] * GEOMETRY_GRID) + 1
            canvas = Image.new("L", (x1 - x0, y1 - y0), 0)
            draw_shape(ImageDraw.Draw(canvas), obj, GEOMETRY_GRID, 255, offset=(x0, y0))
            self._masks[colour] = (np.asarray(canvas) > 127, x0, y0)
        return self._masks[colour]

    def area(self, colour: str) -> int:
        return int(self.window(colour)[0].sum())

    def aligned_masks(self, a: str, b: str, union: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
        """The two silhouettes cropped to the intersection of their windows (or drawn on the union), None if the
        windows do not meet."""
        mask_a, ax, ay = self.window(a)
        mask_b, bx, by = self.window(b)
        pick = (min, max) if union else (max, min)
        x0, y0 = pick[0](ax, bx), pick[0](ay, by)
        x1 = pick[1](ax + mask_a.shape[1], bx + mask_b.shape[1])
        y1 = pick[1](ay + mask_a.shape[0], by + mask_b.shape[0])
        if x1 <= x0 or y1 <= y0:
            return None
        if not union:
            return (mask_a[y0 - ay : y1 - ay, x0 - ax : x1 - ax], mask_b[y0 - by : y1 - by, x0 - bx : x1 - bx])
        out_a, out_b = np.zeros((y1 - y0, x1 - x0), bool), np.zeros((y1 - y0, x1 - x0), bool)
        out_a[ay - y0 : ay - y0 + mask_a.shape[0], ax - x0 : ax - x0 + mask_a.shape[1]] = mask_a
        out_b[by - y0 : by - y0 + mask_b.shape[0], bx - x0 : bx - x0 + mask_b.shape[1]] = mask_b
        return out_a, out_b

    def shared_area(self, a: str, b: str) -> int:
        """Grid cells covered by both silhouettes."""
        box_a, box_b = self[a].box, self[b].box
        if box_a[2] <= box_b[0] or box_b[2] <= box_a[0] or box_a[3] <= box_b[1] or box_b[3] <= box_a[1]:
            return 0
        aligned = self.aligned_masks(a, b)
        return 0 if aligned is None else int((aligned[0] & aligned[1]).sum())

    def overlap_fraction(self, a: str, b: str) -> float:
        """Area shared by the two silhouettes over the smaller silhouette's area (0: disjoint)."""
        shared = self.shared_area(a, b)
        return 0.0 if shared == 0 else shared / max(min(self.area(a), self.area(b)), 1)

    def covered_fraction(self, a: str, b: str) -> float:
        """Fraction of a's silhouette that lies within b's silhouette."""
        shared = self.shared_area(a, b)
        return 0.0 if shared == 0 else shared / max(self.area(a), 1)

    # -- serialisation ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "background": {"kind": self.background.kind, "horizon": self.background.horizon},
            "objects": [{name: getattr(o, name) for name in _OBJECT_FIELDS} for o in self.objects],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        try:
            objects = tuple(SceneObject(**o) for o in data["objects"])
            background = Background(**data["background"])
        except (KeyError, TypeError) as error:
            raise SceneError(f"malformed scene description: {error}") from error
        return cls(objects, background)

    @classmethod
    def from_json(cls, text: str) -> Scene:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as error:
            raise SceneError(f"scene JSON does not parse: {error}") from error


def validate_objects(specs: list[tuple[str, str, str]]) -> None:
    """Raise SceneError for unknown colours/shapes/sizes, repeated colours or fewer than two objects."""
    if len(specs) < 2:
        raise SceneError(f"a scene needs at least 2 objects, got {len(specs)}")
    colours = [c for c, _, _ in specs]
    for colour, shape, size in specs:
        if colour not in COLOURS:
            raise SceneError(f"unknown colour {colour!r}; known colours: {', '.join(COLOURS)}")
        if shape not in SHAPE_OUTLINES:
            raise SceneError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")
        if size not in SIZES:
            raise SceneError(f"unknown size {size!r}; known sizes: {', '.join(SIZES)}")
    repeated = sorted({c for c in colours if colours.count(c) > 1})
    if repeated:
        raise SceneError(f"colours must be unique within a scene (they identify objects); repeated: {repeated}")


def draw_shape(draw: ImageDraw.ImageDraw, obj: SceneObject, side: int, fill, offset: tuple[int, int] = (0, 0)) -> None:
    """Draw one object's silhouette for an image of `side` pixels (coordinates scale with the side), on a canvas
    whose top-left pixel is `offset` of that image."""
    outline = obj.outline()
    ox, oy = offset
    if outline is None:
        r = obj.radius * side
        cx, cy = obj.x * side - ox, obj.y * side - oy
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon([(u * side - ox, v * side - oy) for u, v in outline], fill=fill)
