"""Pixel detector: finds each described object again in any RGB image by its colour, and reads the relations.

It is the oracle for generated images, which are small and blurry, so it says "not found" rather than guess.

- Segmentation: every pixel is explained as one palette colour (all object colours and one background: plain, or
  sky and ground, whichever covers more) or as a blend of two colours seen clearly within a few pixels, in a
  luma/chroma space where chroma counts less (blur and JPEG smear it most). A blend goes to the colour it has more
  of, so borders fall where they were drawn and thin parts (a container's ring) survive; pixels far from every
  colour and blend stay unassigned. A described object's mask is its colour's pixels, keeping the connected parts
  of at least a quarter of the largest one (an occluder can cut an object in two). Fewer than `min_pixels`
  pixels: not found.
- Positions and extents: the box of the mask; relations use box centres and box gaps, like the scene graph.
- Occlusion (in front of / behind): the one in front keeps its convex outline, so the one behind shows a bite.
  Two readings are added, each (evidence that A is in front - evidence that B is) / smaller area, positive when
  A is in front. Hulls: the convex hull of the hidden one's visible pixels reaches over the one that hides it,
  while the front one's hull covers nothing of the other; reliable once the bite is a few pixels deep. Chord: the
  border between the two touching masks has two ends (where it meets a third colour); the front one bulges past
  the straight chord between them into the other; this still reads a bite of a pixel or two at 64 px, where the
  hulls (through pixel centres, half a pixel inside the outline) see nothing. Without exactly two ends (one
  object cut in two, a fringe of a third colour) only the hulls count. Both assume convex shapes: depth relations
  are stated only between squares (see `scene.DEPTH_SHAPES`).
- Solidity: a found object fills at least MIN_SOLIDITY of its convex hull (a ring round its content, or a
  bitten shape, does); colour specks scattered over noise or texture do not, and count as not found.
- Containment (inside): the fraction of A's pixels that lie within the convex hull of B's visible pixels (an
  object drawn inside B leaves B's outline whole, so B's hull covers it).
- Horizon: the row that best splits sky-coloured background pixels (above) from ground-coloured ones (below).
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
from PIL import Image
from scipy import ndimage

from data_synthesis.hull import filled_hull
from data_synthesis.relations import Box, Relation, Truth, evaluate
from data_synthesis.scene import BACKGROUND_COLOURS, COLOURS, SceneError

_NAMES = list(COLOURS) + ["bg:" + name for name in BACKGROUND_COLOURS]
_PALETTE = np.array(list(COLOURS.values()) + list(BACKGROUND_COLOURS.values()), dtype=np.float32)  # [P, 3]
_PLAIN, _SKY, _GROUND = (_NAMES.index("bg:" + name) for name in ("plain", "sky", "ground"))
# Luma and chroma (JPEG's YCbCr); chroma counts less because blur and chroma subsampling smear it most.
CHROMA_WEIGHT = 0.3
_YCC = np.array([[0.299, 0.587, 0.114], [-0.1687, -0.3313, 0.5], [0.5, -0.4187, -0.0813]], np.float32)  # [3, 3]
_SPACE = _YCC.T * np.sqrt([1.0, CHROMA_WEIGHT, CHROMA_WEIGHT]).astype(np.float32)  # [3, 3] RGB -> weighted YCbCr
_POINTS = _PALETTE @ _SPACE  # [P, 3]
MIX_COST = 250.0  # squared distance a two-colour blend pays over a pure colour
CLEAR_COST = 400.0  # squared distance within which a pixel is clearly that colour
NEIGHBOURHOOD = 3  # blends use colours seen clearly within this many pixels
MAX_COLOUR_DISTANCE = 80.0  # farther than this from every palette colour and blend: unassigned
MIN_SOLIDITY = 0.3  # found objects fill at least this fraction of their convex hull
_CROSS = ndimage.generate_binary_structure(2, 1)


def segment(image: Image.Image) -> np.ndarray:
    """Palette index of every pixel (-1: unassigned).  # [H, W]

    A pixel is explained either as one palette colour or as a blend of two (anti-aliasing, blur and JPEG mix
    colours along every border), whichever fits better in luma/chroma space; a blend pays `MIX_COST` so that a
    pure colour is not explained away as a mix of two others, and goes to the colour it has more of, so the
    border falls where it was drawn and thin parts (a container's ring) survive. Blends may only use colours seen
    clearly nearby: the mid colour of green and purple is closer to a dark grey than to either, and without the
    neighbourhood it would become a black fringe that parts the two. Only one background is used: plain, or sky
    and ground, whichever covers more pixels."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) @ _SPACE  # [H, W, 3]
    height, width = pixels.shape[:2]
    flat = pixels.reshape(-1, 3)  # [N, 3]
    pure = ((flat[:, None] - _POINTS[None]) ** 2).sum(-1)  # [N, P]
    nearest = pure.argmin(1)
    allowed = np.ones(len(_NAMES), dtype=bool)
    if (nearest == _PLAIN).sum() > np.isin(nearest, (_SKY, _GROUND)).sum():
        allowed[[_SKY, _GROUND]] = False
    else:
        allowed[_PLAIN] = False
    pure[:, ~allowed] = np.inf
    labels = pure.argmin(1)
    rows = np.arange(len(flat))
    cost = pure[rows, labels]
    clear = cost <= CLEAR_COST
    # colours seen clearly within NEIGHBOURHOOD pixels of each pixel  # [N, P]
    seen = np.zeros((height, width, len(_NAMES)), dtype=bool)
    seen.reshape(-1, len(_NAMES))[rows[clear], labels[clear]] = True
    seen = ndimage.maximum_filter(seen, size=(2 * NEIGHBOURHOOD + 1, 2 * NEIGHBOURHOOD + 1, 1)).reshape(-1, len(_NAMES))
    # where nothing but background is seen clearly (a small, washed-out object), keep the best colour overall
    lone = seen[:, : len(COLOURS)].sum(1) == 0
    seen[lone, labels[lone]] = True
    unsure = np.nonzero(cost > MIX_COST)[0]  # only these can be explained better by a blend
    if len(unsure):
        index = np.nonzero(allowed)[0]
        first, second = np.triu_indices(len(index), 1)
        first, second = index[first], index[second]  # [K] pairs of palette colours
        span = _POINTS[first] - _POINTS[second]  # [K, 3]
        offset = flat[unsure, None] - _POINTS[second][None]  # [U, K, 3]
        share = np.clip((offset * span).sum(-1) / (span**2).sum(-1), 0.0, 1.0)  # [U, K] of the first colour
        residual = ((offset - share[..., None] * span) ** 2).sum(-1) + MIX_COST  # [U, K]
        near = seen[unsure]  # [U, P]
        residual[~(near[:, first] & near[:, second])] = np.inf
        pure_near = np.where(near, pure[unsure], np.inf)  # [U, P]
        best = residual.argmin(1)
        at = np.arange(len(unsure))
        blend_cost, pure_cost = residual[at, best], pure_near.min(1)
        blended = np.where(share[at, best] >= 0.5, first[best], second[best])
        choice = np.where(blend_cost < pure_cost, blended, pure_near.argmin(1))
        supported = np.minimum(blend_cost, pure_cost) < np.inf
        labels[unsure] = np.where(supported, choice, labels[unsure])
        cost[unsure] = np.where(supported, np.minimum(blend_cost, pure_cost), cost[unsure])
    labels[cost > MAX_COLOUR_DISTANCE**2] = -1
    return labels.reshape(height, width)


class PixelLayout:
    """What the detector read from one image; relations evaluated on it use the reading margins."""

    strict = False

    def __init__(self, labels: np.ndarray, colours: list[str], min_pixels: int):
        self.height, self.width = labels.shape
        self.labels = labels
        self.masks: dict[str, np.ndarray] = {}
        self._hulls: dict[str, np.ndarray] = {}
        for colour in colours:
            if colour not in COLOURS:
                raise SceneError(f"unknown colour {colour!r}; known colours: {', '.join(COLOURS)}")
            mask = _clean(labels == _NAMES.index(colour))
            if mask.sum() < min_pixels:
                continue
            hull = filled_hull(mask)
            # a shape (even a ring round its content, or a bitten one) fills a good part of its hull; specks of a
            # colour scattered over noise or texture do not, and are "not found" rather than a guess
            if mask.sum() >= MIN_SOLIDITY * hull.sum():
                self.masks[colour], self._hulls[colour] = mask, hull

    def found(self, colour: str) -> bool:
        return colour in self.masks

    def box(self, colour: str) -> Box | None:
        mask = self.masks.get(colour)
        if mask is None:
            return None
        rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        return (cols[0] / self.width, rows[0] / self.height, (cols[-1] + 1) / self.width, (rows[-1] + 1) / self.height)

    def hull(self, colour: str) -> np.ndarray:
        if colour not in self._hulls:
            self._hulls[colour] = filled_hull(self.masks[colour])
        return self._hulls[colour]

    def occlusion(self, front: str, back: str) -> float:
        mask_front, mask_back = self.masks[front], self.masks[back]
        if not (ndimage.binary_dilation(mask_front, _CROSS, iterations=2) & mask_back).any():
            return 0.0
        smaller = min(mask_front.sum(), mask_back.sum())
        # the hulls read a bite reliably once it is a few pixels deep; the chord reads the shallow ones
        front_in_back = (self.hull(back) & mask_front).sum()
        back_in_front = (self.hull(front) & mask_back).sum()
        hull_reading = float((front_in_back - back_in_front) / smaller)
        chord = _contact_chord(mask_front, mask_back)
        if chord is None:  # no single contact with two ends (one object cut in two, or a fringe in between)
            return hull_reading
        start, end = chord  # [2] (row, col) each
        rows, cols = np.mgrid[: self.height, : self.width]
        along, across = end - start, np.array([start[1] - end[1], end[0] - start[0]], dtype=float)
        length = np.hypot(*along)
        t = ((rows - start[0]) * along[0] + (cols - start[1]) * along[1]) / length**2  # [H, W] position on the chord
        side = ((rows - start[0]) * across[0] + (cols - start[1]) * across[1]) / length  # [H, W] signed distance
        if side[mask_front].mean() < side[mask_back].mean():
            side = -side  # positive towards the front candidate
        band = (t > 0) & (t < 1) & (np.abs(side) <= length / 2)
        # the one in front bulges across the chord into the other (it keeps its convex outline)
        front_over = (mask_front & band & (side < 0)).sum()
        back_over = (mask_back & band & (side > 0)).sum()
        return hull_reading + float((front_over - back_over) / smaller)

    def containment(self, inner: str, outer: str) -> float:
        mask_inner = self.masks[inner]
        return float((self.hull(outer) & mask_inner).sum() / mask_inner.sum())

    @cached_property
    def _horizon(self) -> float | None:
        sky = (self.labels == _NAMES.index("bg:sky")).sum(1)  # [H]
        ground = (self.labels == _NAMES.index("bg:ground")).sum(1)
        if sky.sum() + ground.sum() < 0.2 * self.labels.size or min(sky.sum(), ground.sum()) == 0:
            return None
        # rows 0..split-1 are sky, split..H-1 ground: maximise agreeing pixels
        agreement = np.concatenate([[0], np.cumsum(sky)]) + np.concatenate([np.cumsum(ground[::-1])[::-1], [0]])
        return float(agreement.argmax() / self.height)

    def horizon(self) -> float | None:
        return self._horizon


def _contact_chord(mask_a: np.ndarray, mask_b: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The two ends (row, col) of the border between two touching masks: where it meets a third colour. None
    unless there are exactly two ends.

    The chord between the ends is what a straight cut would leave; measuring from it (not from one mask's hull,
    whose pixel centres lie half a pixel inside its outline) keeps a bite of a pixel or two readable at 64 px."""
    eight = np.ones((3, 3), dtype=bool)
    near_a, near_b = ndimage.binary_dilation(mask_a, eight), ndimage.binary_dilation(mask_b, eight)
    other = ~(mask_a | mask_b)
    ends = near_a & near_b & ndimage.binary_dilation(other, eight) & ~other  # [H, W]
    parts, count = ndimage.label(ends, eight)
    if count != 2:
        return None
    centres = ndimage.center_of_mass(ends, parts, [1, 2])
    return np.array(centres[0]), np.array(centres[1])


def _clean(mask: np.ndarray) -> np.ndarray:
    parts, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(parts.ravel())[1:]
    keep = np.nonzero(sizes >= 0.25 * sizes.max())[0] + 1
    return np.isin(parts, keep)


def detect(image: Image.Image, colours: list[str], *, min_pixels: int | None = None) -> PixelLayout:
    """Read the objects of the given colours from `image`. Objects with fewer than `min_pixels` visible pixels
    (default: 0.15% of the image, at least 4) count as not found."""
    labels = segment(image)
    if min_pixels is None:
        min_pixels = max(4, round(0.0015 * labels.size))
    return PixelLayout(labels, colours, min_pixels)


def read_relations(image: Image.Image, relations: list[Relation], colours: list[str]) -> list[Truth]:
    """The detector's truth for each relation (MISSING where an object it names was not found)."""
    layout = detect(image, colours)
    return [evaluate(r, layout) for r in relations]
