"""What makes a rerun free and a killed run resumable: the judge cache, the image cache and the per-sample log.

- `JudgeCache`: SQLite (WAL) of judge answers keyed by SHA-256 of (task, sample id, image SHA-256, judge name,
  template version, request), where the request is what was asked beyond the image (the prompt, the questions,
  the classes). `CachedJudges` puts it in front of the judges of one run and counts calls and cache hits. Answers
  a judge marks `retryable` (the request failed after its retries) are not stored, so a rerun asks again.
- `ImageCache`: generated images as PNG files keyed by SHA-256 of (weights hash, prompt, seed, sampler settings).
- `SampleLog`: the run's per-sample JSONL, one record appended (and fsynced) as each sample finishes; a rerun
  reads it and skips every sample whose record is complete. A line cut short by a kill is dropped on reading.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

from PIL import Image

from benchmarks.judges import (
    Detection,
    Detector,
    ImageScorer,
    PairwiseJudge,
    PairwiseVerdict,
    Testpoint,
    TestpointJudge,
    TestpointScores,
    YesNoAnswers,
    YesNoVQA,
    image_sha256,
)
from shared.io import atomic_write_bytes, atomic_write_text, canonical_sha256
from shared.sqlite_table import SQLiteTable


class JudgeCache:
    """SQLite store of judge answers (JSON) by key; one connection shared under a lock."""

    COLUMNS = ("task", "sample_id", "image_sha256", "judge", "template_version", "request_sha256")  # then the answer

    def __init__(self, path: str | os.PathLike) -> None:
        columns = [f"{name} TEXT" for name in self.COLUMNS] + ["answer TEXT NOT NULL"]
        self.table = SQLiteTable(path, "answers", columns, what="judge cache")
        self.path = self.table.path

    @staticmethod
    def key(task: str, sample_id: str, image: str, judge: str, template_version: str, request: str) -> str:
        return canonical_sha256([task, sample_id, image, judge, template_version, request])

    def get(self, key: str) -> Any | None:
        answer = self.table.get(key, "answer")
        return None if answer is None else json.loads(answer)

    def put(self, key: str, fields: Sequence[str], answer: Any) -> None:
        self.table.put(key, (*fields, json.dumps(answer, sort_keys=True)))

    def __len__(self) -> int:
        return len(self.table)

    def close(self) -> None:
        self.table.close()


class MissingJudgeError(ValueError):
    """A task needs a kind of judge the run was not given."""


class CachedJudges:
    """The judges of one run behind the judge cache. Each method asks its judge only on a cache miss; `calls` and
    `hits` count both per judge kind (`calls` counts one batched scorer call once). Tasks check the kinds they need
    with `has` / `require` before their first sample."""

    def __init__(
        self,
        cache: JudgeCache,
        task: str,
        *,
        scorer: ImageScorer | None = None,
        pairwise: PairwiseJudge | None = None,
        vqa: YesNoVQA | None = None,
        testpoints: TestpointJudge | None = None,
        detector: Detector | None = None,
    ) -> None:
        self.cache, self.task = cache, task
        self.judges: dict[str, Any] = {
            "scorer": scorer,
            "pairwise": pairwise,
            "vqa": vqa,
            "testpoints": testpoints,
            "detector": detector,
        }
        self.calls: Counter[str] = Counter()
        self.hits: Counter[str] = Counter()
        self.retryable = 0  # answers not cached because the judge could not be asked

    def has(self, kind: str) -> bool:
        return self.judges[kind] is not None

    def require(self, kind: str, flag: str) -> Any:
        """The judge of this kind, or one clear error naming the command-line flag that provides it."""
        judge = self.judges[kind]
        if judge is None:
            raise MissingJudgeError(f"task {self.task} needs a {kind} judge: pass {flag}")
        return judge

    def _cached(
        self,
        kind: str,
        sample_id: str,
        image_key: str,
        request: Any,
        ask: Callable[[], Any],
        encode: Callable[[Any], Any],
        decode: Callable[[Any], Any],
    ) -> Any:
        judge = self.judges[kind]
        assert judge is not None, kind
        fields = (self.task, sample_id, image_key, judge.name, judge.template_version, canonical_sha256(request))
        key = JudgeCache.key(*fields)
        stored = self.cache.get(key)
        if stored is not None:
            self.hits[kind] += 1
            return decode(stored)
        self.calls[kind] += 1
        answer = ask()
        if getattr(answer, "retryable", False):
            self.retryable += 1
        else:
            self.cache.put(key, fields, encode(answer))
        return answer

    def score(self, items: Sequence[tuple[str, str, Image.Image]]) -> list[tuple[float, float]]:
        """(mean, std) for each (sample id, prompt, image); the misses go to the scorer in one batch."""
        scorer = self.judges["scorer"]
        assert scorer is not None
        keys, fields, results = [], [], []
        for sample_id, prompt, image in items:
            row = (self.task, sample_id, image_sha256(image), scorer.name, scorer.template_version)
            row = (*row, canonical_sha256(prompt))
            fields.append(row)
            keys.append(JudgeCache.key(*row))
            results.append(self.cache.get(keys[-1]))
        missing = [i for i, result in enumerate(results) if result is None]
        self.hits["scorer"] += len(items) - len(missing)
        if missing:
            self.calls["scorer"] += 1
            means, stds = scorer.score(prompts=[items[i][1] for i in missing], images=[items[i][2] for i in missing])
            for i, mean, std in zip(missing, list(means), list(stds), strict=True):
                results[i] = [float(mean), float(std)]
                self.cache.put(keys[i], fields[i], results[i])
        return [(mean, std) for mean, std in results]

    def compare(self, sample_id: str, prompt: str, first: Image.Image, second: Image.Image) -> PairwiseVerdict:
        judge = self.judges["pairwise"]
        return self._cached(
            "pairwise",
            sample_id,
            f"{image_sha256(first)}+{image_sha256(second)}",
            prompt,
            lambda: judge.compare(prompt=prompt, first=first, second=second),
            lambda verdict: {"choice": verdict.choice, "error": verdict.error},
            lambda stored: PairwiseVerdict(stored["choice"], stored["error"]),
        )

    def answer(self, sample_id: str, image: Image.Image, questions: Sequence[str]) -> YesNoAnswers:
        judge = self.judges["vqa"]
        return self._cached(
            "vqa",
            sample_id,
            image_sha256(image),
            list(questions),
            lambda: judge.answer(image=image, questions=list(questions)),
            lambda result: {"answers": list(result.answers), "error": result.error},
            lambda stored: YesNoAnswers(tuple(stored["answers"]), stored["error"]),
        )

    def judge_testpoints(
        self, sample_id: str, image: Image.Image, prompt: str, testpoints: Sequence[Testpoint]
    ) -> TestpointScores:
        judge = self.judges["testpoints"]
        return self._cached(
            "testpoints",
            sample_id,
            image_sha256(image),
            [prompt, [[point.name, point.description] for point in testpoints]],
            lambda: judge.judge(image=image, prompt=prompt, testpoints=list(testpoints)),
            lambda result: {"scores": list(result.scores), "error": result.error},
            lambda stored: TestpointScores(tuple(stored["scores"]), stored["error"]),
        )

    def detect(self, sample_id: str, image: Image.Image, classes: Sequence[str]) -> dict[str, list[Detection]]:
        judge = self.judges["detector"]
        return self._cached(
            "detector",
            sample_id,
            image_sha256(image),
            sorted(classes),
            lambda: judge.detect(image, sorted(classes)),
            lambda found: {name: [d.to_json() for d in items] for name, items in found.items()},
            lambda stored: {name: [Detection.from_json(d) for d in items] for name, items in stored.items()},
        )


class ImageCache:
    """Generated images as `<root>/<key[:2]>/<key>.png`, key = SHA-256 of (weights hash, prompt, seed, settings)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    @staticmethod
    def key(weights_sha256: str, prompt: str, seed: int, settings: dict[str, Any]) -> str:
        return canonical_sha256({"weights": weights_sha256, "prompt": prompt, "seed": seed, "settings": settings})

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.png"

    def contains(self, key: str) -> bool:
        return self.path(key).is_file()

    def get(self, key: str) -> Image.Image | None:
        path = self.path(key)
        if not path.is_file():
            return None
        with Image.open(path) as handle:
            return handle.convert("RGB")

    def put(self, key: str, image: Image.Image) -> None:
        buffer = BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        atomic_write_bytes(self.path(key), buffer.getvalue(), durable=False)


class SampleLog:
    """Append-only JSONL of per-sample records, each with a "sample_id" and "complete" (False when a judge could
    not be asked: the sample is redone on the next run). Later lines win over earlier ones for the same id."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, dict[str, Any]]:
        """The records on disk by sample id; a last line cut short by a kill is removed from the file."""
        if not self.path.exists():
            return {}
        text = self.path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):  # a write cut short: keep the complete lines only
            text = text[: text.rfind("\n") + 1]
            atomic_write_text(self.path, text)
        records: dict[str, dict[str, Any]] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{self.path} line {number} is not JSON ({error}): delete the file to rerun") from None
            records[record["sample_id"]] = record
        return records

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
