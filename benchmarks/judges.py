"""The judge interfaces every benchmark task is written against, and their small result types.

A judge is anything that answers one kind of question about generated images. Each has a `name` (which model,
which weights: two judges with the same name must give the same answers) and a `template_version` (bumped when
its prompt template or reading rules change); both are part of every cache key (`benchmarks.cache`).

| protocol | question | answer |
|---|---|---|
| `ImageScorer` | how well do N images fit their prompts | (mean [N], std [N]) |
| `PairwiseJudge` | which of two images fits the prompt better | `PairwiseVerdict` |
| `YesNoVQA` | yes/no for each of a list of questions about one image | `YesNoAnswers` |
| `TestpointJudge` | 0/1 for each testpoint of a prompt, one call per image (UniGenBench) | `TestpointScores` |
| `Detector` | for each class: boxes, scores, masks, and a colour per detection | `{class: [Detection]}` |

Judges never raise for a bad answer: an answer that cannot be read is `None` and counted by the tasks. A judge that
could not be asked at all (a request that failed after its retries) sets `retryable`, so the result is not cached
and a rerun asks again.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels, image y downwards
PAIRWISE_CHOICES = ("first", "second", "tie")


def image_sha256(image: Image.Image) -> str:
    """SHA-256 of an image's RGB pixels and size (the file format and metadata do not change it)."""
    rgb = image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Detection:
    """One detected instance. `mask` is [H, W] bool (None when the detector gives none); `colour` is the colour name
    the detector reads from the instance's pixels (None when it reads none)."""

    box: Box
    score: float
    mask: np.ndarray | None = None
    colour: str | None = None

    def to_json(self) -> dict[str, Any]:
        mask = None
        if self.mask is not None:
            packed = np.packbits(self.mask.astype(bool), axis=None)
            mask = {"shape": list(self.mask.shape), "bits": base64.b64encode(packed.tobytes()).decode("ascii")}
        return {"box": [float(v) for v in self.box], "score": float(self.score), "mask": mask, "colour": self.colour}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Detection:
        mask = None
        if data["mask"] is not None:
            height, width = data["mask"]["shape"]
            bits = np.frombuffer(base64.b64decode(data["mask"]["bits"]), dtype=np.uint8)
            mask = np.unpackbits(bits, count=height * width).reshape(height, width).astype(bool)
        return cls(tuple(data["box"]), data["score"], mask, data["colour"])


@dataclass(frozen=True)
class PairwiseVerdict:
    """`choice`: "first", "second" or "tie"; None when the judge's answer could not be read (`error` says why)."""

    choice: str | None
    error: str | None = None
    retryable: bool = False

    def __post_init__(self) -> None:
        assert self.choice is None or self.choice in PAIRWISE_CHOICES, self.choice


@dataclass(frozen=True)
class YesNoAnswers:
    """One answer per question: True (yes), False (no) or None (unreadable)."""

    answers: tuple[bool | None, ...]
    error: str | None = None
    retryable: bool = False


@dataclass(frozen=True)
class TestpointScores:
    """One score per testpoint: 1 (satisfied), 0 (not) or None (unreadable)."""

    __test__ = False  # not a pytest test class despite the name

    scores: tuple[int | None, ...]
    error: str | None = None
    retryable: bool = False


@dataclass(frozen=True)
class Testpoint:
    """One checkable point of a prompt (UniGenBench: a sub-dimension such as "Layout-2D" and what to check)."""

    __test__ = False

    name: str
    description: str


@runtime_checkable
class ImageScorer(Protocol):
    name: str
    template_version: str

    def score(
        self, *, prompts: Sequence[str], images: Sequence[Image.Image]
    ) -> tuple[Sequence[float], Sequence[float]]:
        """(mean [N], std [N]) of the reward of each (prompt, image); higher mean fits better."""
        ...


@runtime_checkable
class PairwiseJudge(Protocol):
    name: str
    template_version: str

    def compare(self, *, prompt: str, first: Image.Image, second: Image.Image) -> PairwiseVerdict: ...


@runtime_checkable
class YesNoVQA(Protocol):
    name: str
    template_version: str

    def answer(self, *, image: Image.Image, questions: Sequence[str]) -> YesNoAnswers: ...


@runtime_checkable
class TestpointJudge(Protocol):
    name: str
    template_version: str

    def judge(self, *, image: Image.Image, prompt: str, testpoints: Sequence[Testpoint]) -> TestpointScores: ...


@runtime_checkable
class Detector(Protocol):
    name: str
    template_version: str

    def detect(self, image: Image.Image, classes: Sequence[str]) -> dict[str, list[Detection]]:
        """Every detection of each class (any order, any confidence); classes with none may be absent."""
        ...
