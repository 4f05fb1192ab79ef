"""Run one task into an output dir, resumably.

    OUT/run.json        what the run is (task, data, image source, judges); a rerun into OUT must match it
    OUT/samples.jsonl   one record per sample, appended as each finishes (see `benchmarks.cache.SampleLog`)
    OUT/summary.json    the task's numbers (no timings, sorted keys): identical inputs give identical bytes
    OUT/report.md       the numbers as Markdown
    OUT/run_log.json    timings, judge calls and cache hits of the last run (the only file that differs on a rerun)

A rerun skips every sample whose record is complete; one whose judge could not be asked (a request that failed
after its retries) is evaluated again. A judge answer is asked at most once across runs (the judge cache).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.cache import SampleLog
from benchmarks.tasks.base import RunInputs, Sample, Task
from shared.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

RUN_FILE, SAMPLES_FILE, SUMMARY_FILE, REPORT_FILE, LOG_FILE = (
    "run.json",
    "samples.jsonl",
    "summary.json",
    "report.md",
    "run_log.json",
)


@dataclass(frozen=True)
class RunResult:
    summary: dict[str, Any]
    evaluated: int  # samples evaluated by this run
    skipped: int  # samples whose complete record was already on disk
    judge_calls: dict[str, int]  # by judge kind; 0 everywhere on a fully cached rerun
    cache_hits: dict[str, int]
    seconds: float


def run_identity(task: Task, inputs: RunInputs) -> dict[str, Any]:
    """What decides a run's records: the task, its data, where images come from, and each judge's name/version."""
    judges = {
        kind: [judge.name, judge.template_version]
        for kind, judge in sorted(inputs.judges.judges.items())
        if judge is not None
    }
    return {
        "task": task.name,
        "data": None if inputs.data is None else str(inputs.data.resolve()),
        "images": None if inputs.images is None else inputs.images.name,
        "judges": judges,
    }


def run_task(task: Task, inputs: RunInputs, out_dir: str | Path) -> RunResult:
    """Evaluate every sample of `task` not already complete in `out_dir`, then write the summary and report."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    identity = run_identity(task, inputs)
    run_path = out_dir / RUN_FILE
    if run_path.exists():
        previous = json.loads(run_path.read_text())
        if previous != identity:
            raise ValueError(
                f"{out_dir} holds a run of {previous} and this is {identity}: pass a fresh --out to start another run"
            )
    samples = task.samples(inputs)
    atomic_write_json(run_path, identity)
    sample_log = SampleLog(out_dir / SAMPLES_FILE)
    records = sample_log.load()
    evaluated = skipped = 0
    pending = {sample.sample_id for sample in samples if not records.get(sample.sample_id, {}).get("complete")}
    prefetched: set[str] = set()
    for number, sample in enumerate(samples, start=1):
        if sample.sample_id not in pending:
            skipped += 1
            continue
        if sample.sample_id not in prefetched:
            prefetched |= prefetch_images(task, inputs, [s for s in samples[number - 1 :] if s.sample_id in pending])
        retryable_before = inputs.judges.retryable
        record = task.evaluate(sample, inputs)
        record = {**record, "sample_id": sample.sample_id, "complete": inputs.judges.retryable == retryable_before}
        sample_log.append(record)
        records[sample.sample_id] = record
        evaluated += 1
        if number % 50 == 0 or number == len(samples):
            log.info("%s: %d/%d samples", task.name, number, len(samples))
    ordered = [records[sample.sample_id] for sample in samples]
    summary = {**task.summarize(ordered), "incomplete_samples": sum(not r["complete"] for r in ordered)}
    atomic_write_json(out_dir / SUMMARY_FILE, summary)
    atomic_write_text(out_dir / REPORT_FILE, render_report(task, identity, summary))
    seconds = time.perf_counter() - start
    result = RunResult(summary, evaluated, skipped, dict(inputs.judges.calls), dict(inputs.judges.hits), seconds)
    atomic_write_json(
        out_dir / LOG_FILE,
        {
            "seconds": round(seconds, 3),
            "evaluated": evaluated,
            "skipped": skipped,
            "judge_calls": result.judge_calls,
            "cache_hits": result.cache_hits,
        },
    )
    return result


def prefetch_images(task: Task, inputs: RunInputs, pending: list[Sample]) -> set[str]:
    """Let a batching image source draw the images of the next pending samples in one go (at most its batch size);
    returns the ids of the samples covered. Tasks without images, or sources without `prefetch`, cover one sample."""
    prefetch = getattr(inputs.images, "prefetch", None)
    image_request = getattr(task, "image_request", None)
    if prefetch is None or image_request is None:
        return {pending[0].sample_id}
    chunk = pending[: inputs.images.batch_size]
    requests = [image_request(sample) for sample in chunk]
    prefetch([request for request in requests if request is not None])
    return {sample.sample_id for sample in chunk}


def render_report(task: Task, identity: dict[str, Any], summary: dict[str, Any]) -> str:
    judges = ", ".join(f"{kind}: {name} (v{version})" for kind, (name, version) in identity["judges"].items())
    lines = [
        f"# {task.name}",
        "",
        f"{task.description}.",
        "",
        f"- data: `{identity['data']}`",
        f"- images: `{identity['images']}`",
        f"- judges: {judges or 'none'}",
        "",
        task.report(summary),
    ]
    if summary["incomplete_samples"]:
        lines.append(
            f"{summary['incomplete_samples']} samples have answers a judge could not give (requests failed after "
            "retries); rerun to ask again."
        )
    return "\n".join(lines).rstrip() + "\n"
