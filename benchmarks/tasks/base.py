"""The `Task` protocol every benchmark implements, and what a run hands it.

A task lists its samples (each with an id that is stable across runs), evaluates one sample into a JSON record
(asking its judges through `RunInputs.judges`, which caches every answer), and turns the records of all samples
into a summary of numbers and a Markdown section. `benchmarks.runner.run_task` does the rest: skipping samples
already on disk, appending records as they finish, writing `summary.json` and `report.md`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from benchmarks.cache import CachedJudges
from benchmarks.images import ImageRequest, ImageSource, ImageUnreadable


@dataclass(frozen=True)
class Sample:
    """One unit of work: an id unique within the task and stable across runs, and what `evaluate` needs (JSON)."""

    sample_id: str
    data: dict[str, Any]


@dataclass
class RunInputs:
    """Everything a run was given. `data`: the task's input file or dir (see each task's `data_help`); `images`:
    where generated images come from (generator tasks); `images_per_prompt`: seeds 0..N-1 per prompt (None: the
    task's default); `limit`: only the first N prompts (quick runs)."""

    judges: CachedJudges
    data: Path | None = None
    images: ImageSource | None = None
    images_per_prompt: int | None = None
    limit: int | None = None


class Task(Protocol):
    name: str
    description: str  # one line, for `python -m benchmarks list`
    data_help: str  # what --data must point to

    def samples(self, inputs: RunInputs) -> list[Sample]:
        """All samples, in a fixed order; raises one clear error for a bad input or a missing judge."""
        ...

    def evaluate(self, sample: Sample, inputs: RunInputs) -> dict[str, Any]:
        """The JSON record of one sample (the runner adds "sample_id" and "complete")."""
        ...

    def summarize(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Numbers only (nested dicts of ints and floats), a pure function of the records."""
        ...

    def report(self, summary: dict[str, Any]) -> str:
        """A Markdown section for report.md."""
        ...


class GeneratorTask(Task, Protocol):
    """A task that judges one generated image per sample."""

    def image_request(self, sample: Sample) -> ImageRequest | None:
        """(prompt_id, prompt, seed) of the sample's image (None: the sample has none): what `evaluate` fetches,
        and what a batching image source draws ahead (`benchmarks.runner.prefetch_images`)."""
        ...


def require(path: Path | None, task: str, expected: str) -> Path:
    """--data, or one clear error saying what the task expects there."""
    if path is None:
        raise ValueError(f"task {task} needs --data: {expected}")
    if not path.exists():
        raise FileNotFoundError(f"--data {path} does not exist; task {task} expects {expected}")
    return path


def require_images(inputs: RunInputs, task: str) -> None:
    if inputs.images is None:
        raise ValueError(f"task {task} needs images: pass --images DIR or --pipeline DIR")


def image_status_counts(records: list[dict[str, Any]]) -> dict[str, int]:
    """How many per-image records had no image file or an unreadable one (`fetch_image`'s statuses)."""
    return {
        "missing_images": sum(record["image"] == "missing" for record in records),
        "unreadable_images": sum(record["image"] == "unreadable" for record in records),
    }


def fetch_image(inputs: RunInputs, request: ImageRequest) -> tuple[Image.Image | None, str]:
    """(image, status) with status "ok", "missing" or "unreadable"; a task records the status and moves on."""
    assert inputs.images is not None, "checked by require_images in the task's samples()"
    try:
        image = inputs.images.get(*request)
    except ImageUnreadable:
        return None, "unreadable"
    return (None, "missing") if image is None else (image, "ok")


def rate(numerator: float, denominator: float) -> float | None:
    """numerator / denominator rounded to 6 places, None when there is nothing to divide by."""
    return None if denominator == 0 else round(numerator / denominator, 6)


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; floats printed with 4 decimals, None as "-"."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)
