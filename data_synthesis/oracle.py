"""The SpatialWorld oracle as a reward: the fraction of a prompt's stated relations that the pixel detector confirms
on an image. It is exact where no real benchmark is: SpatialWorld knows what every prompt states.

`SpatialWorldOracle` satisfies rl_policy's keyword-only `Reward` protocol,
`__call__(*, prompts, images, metadata) -> tensor [N]`, where each metadata entry says what the prompt states:
`{"relations": [relation dicts or Relation], "colours": [object colours]}` (`oracle_metadata` makes one from a
`pairs.parquet` row or a scene and its relations). A relation counts as confirmed when `detect` finds every object
it names and it holds on the reading margins (`evaluate` on the `PixelLayout`); a missing object confirms nothing.
`judge` gives the per-relation verdicts and whether every object was found, for metrics such as "relation accuracy
among images where every object was found" (placement, as opposed to drawing objects at all).

Graded mode (`SpatialWorldOracle(graded=True, temperature=...)`, for training only): each stated relation scores
sigmoid(margin / temperature) instead of 0/1, where margin is `relation_margin`, the signed distance past the
reading threshold that `evaluate` applies (a centre offset, a gap, a hidden or contained fraction, ...), and a
relation that cannot be read (an object missing, no horizon) scores 0 as it does in the binary reward. It crosses
1/2 exactly where the binary verdict flips, so it rewards what accuracy measures, but it also orders images that
the binary reward ties (all wrong, or all right), which is most of a GRPO group's samples. `judge`, and with it
every accuracy metric, stays binary in both modes.

Images: PIL images, uint8 arrays [H, W, 3], or tensors [3, H, W] (uint8, or float in [0, 1]).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

from data_synthesis.detect import detect
from data_synthesis.relations import Relation, Truth, evaluate, relation_margin
from data_synthesis.scene import Scene, SceneError


@dataclass(frozen=True)
class OracleVerdict:
    """The detector's reading of one (image, stated relations): per relation, confirmed or not, and whether every
    object the prompt names was found."""

    confirmed: tuple[bool, ...]
    kinds: tuple[str, ...]
    all_found: bool

    @property
    def accuracy(self) -> float:
        """Share of stated relations confirmed (1.0 when the prompt states none)."""
        return sum(self.confirmed) / len(self.confirmed) if self.confirmed else 1.0


def oracle_metadata(
    row: Mapping[str, Any] | None = None, *, scene: Scene | None = None, relations: Sequence[Relation] = ()
) -> dict[str, Any]:
    """The metadata entry for one prompt: from a `pairs.parquet` row (its `stated_relations` and `perfect_scene`
    JSON), or from a scene and the relations its prompt states."""
    if row is not None:
        scene = Scene.from_json(row["perfect_scene"])
        relations = [Relation.from_dict(item) for item in json.loads(row["stated_relations"])]
    if scene is None:
        raise ValueError("oracle_metadata needs a pairs.parquet row or a scene")
    return {"relations": [relation.to_dict() for relation in relations], "colours": [o.colour for o in scene.objects]}


def to_pil(image: Any) -> Image.Image:
    """A PIL image (RGB) from a PIL image, a uint8 array [H, W, 3] or a tensor [3, H, W] (uint8 or float in [0, 1])."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    torch = sys.modules.get("torch")  # a tensor can only exist if torch is imported; importing it here costs seconds
    if torch is not None and isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"an image tensor must be [3, H, W] (or [1, H, W]), got {list(image.shape)}")
        if image.is_floating_point():
            image = (image.detach().float().clamp(0, 1) * 255).round()
        image = image.detach().to(torch.uint8).expand(3, -1, -1).permute(1, 2, 0).cpu().numpy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"an image array must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
        return Image.fromarray(image, "RGB")
    raise TypeError(f"cannot read an image from {type(image).__name__}")


class SpatialWorldOracle:
    """Reward = the fraction of stated relations the pixel detector confirms (see the module docstring); with
    `graded`, the mean over stated relations of sigmoid(relation_margin / temperature), missing ones scoring
    `unreadable`.

    temperature: in the units of the margins (image fractions for positions and gaps, hidden or contained
    fractions for depth and containment); 0.05 takes a relation 0.1 of the image past its reading threshold to
    0.88 and one 0.1 short of it to 0.12.
    unreadable (graded only): the score of a relation that cannot be read (an object missing, no horizon), 0 by
    default; None leaves such relations out of the mean, so the reward measures placement alone, and an image with
    no readable relation scores NaN (a GRPO run drops that sample and counts it)."""

    def __init__(self, graded: bool = False, temperature: float = 0.05, unreadable: float | None = 0.0):
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if unreadable is not None and not 0 <= unreadable <= 1:
            raise ValueError(f"unreadable must lie in [0, 1] or be None, got {unreadable}")
        if not graded and unreadable != 0:
            raise ValueError("unreadable sets the graded reward's score of an unreadable relation: set graded too")
        self.graded, self.temperature = graded, float(temperature)
        self.unreadable = None if unreadable is None else float(unreadable)

    @staticmethod
    def _read(image: Any, metadata: Mapping[str, Any]) -> tuple[list[Relation], list[str], Any]:
        try:
            relations = [r if isinstance(r, Relation) else Relation.from_dict(r) for r in metadata["relations"]]
            colours = list(metadata["colours"])
        except (KeyError, TypeError, SceneError) as error:
            raise ValueError(f"oracle metadata must hold 'relations' and 'colours' of SpatialWorld: {error}") from None
        return relations, colours, detect(to_pil(image), colours)

    def judge(self, image: Any, metadata: Mapping[str, Any]) -> OracleVerdict:
        """The detector's verdicts for one image and its prompt's metadata (binary in either mode)."""
        relations, colours, layout = self._read(image, metadata)
        truths = [evaluate(relation, layout) for relation in relations]
        all_found = all(layout.box(colour) is not None for colour in colours)
        return OracleVerdict(
            tuple(truth is Truth.HOLDS for truth in truths), tuple(r.kind for r in relations), all_found
        )

    def graded_score(self, image: Any, metadata: Mapping[str, Any]) -> float:
        """Mean over the stated relations of sigmoid(relation_margin / temperature), `unreadable` for a relation
        that cannot be read (an object missing, no horizon; None: left out, NaN when none can be read); 1.0 when the
        prompt states none, like `OracleVerdict.accuracy`."""
        relations, _, layout = self._read(image, metadata)
        if not relations:
            return 1.0
        scores = []
        for relation in relations:
            margin = relation_margin(relation, layout)
            if margin is not None:
                scores.append(_sigmoid(margin / self.temperature))
            elif self.unreadable is not None:
                scores.append(self.unreadable)
        return sum(scores) / len(scores) if scores else math.nan

    def __call__(
        self, *, prompts: Sequence[str], images: Sequence[Any], metadata: Sequence[Mapping[str, Any]] | None = None
    ) -> torch.Tensor:
        """Reward [N] in [0, 1] for each (prompt, image); `metadata[i]` says what prompt i states."""
        import torch

        if metadata is None or len(metadata) != len(images) or len(prompts) != len(images):
            raise ValueError(
                "SpatialWorldOracle needs one metadata entry (relations and colours) per image: got "
                f"{len(prompts)} prompts, {len(images)} images, {None if metadata is None else len(metadata)} metadata"
            )
        if self.graded:
            scores = [self.graded_score(image, meta) for image, meta in zip(images, metadata, strict=True)]
        else:
            scores = [self.judge(image, meta).accuracy for image, meta in zip(images, metadata, strict=True)]
        return torch.tensor(scores)


def _sigmoid(value: float) -> float:
    """The logistic function, without overflow for large |value|."""
    if value >= 0:
        return 1.0 / (1.0 + math.exp(-value))
    exp = math.exp(value)
    return exp / (1.0 + exp)
