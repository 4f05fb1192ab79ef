"""The SpatialScore reward checkpoint as an `ImageScorer` (reward_model's `SpatialScorer`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from reward_model import SpatialScorer
from shared.io import directory_sha256


class SpatialScoreJudge:
    """`ImageScorer` over a loaded `SpatialScorer`. Its name carries the checkpoint dir's content hash, so cached
    scores are never reused for other weights."""

    template_version = "1"

    def __init__(self, scorer: SpatialScorer, name: str) -> None:
        self.scorer, self.name = scorer, name

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> SpatialScoreJudge:
        """Load a reward checkpoint dir (see `reward_model.export`); one clear error if it is not one."""
        directory = Path(directory)
        scorer = SpatialScorer.from_pretrained(directory)
        return cls(scorer, f"spatialscore:{directory_sha256(directory)[:16]}")

    def score(self, *, prompts: Sequence[str], images: Sequence[Image.Image]) -> tuple[list[float], list[float]]:
        """(mean [N], std [N]) of the reward, as floats."""
        mean, std = self.scorer.score(prompts=list(prompts), images=list(images))
        return [float(v) for v in mean], [float(v) for v in std]
