"""`python -m benchmarks compare OUT1 OUT2 ...`: one Markdown table per task across runs, and PNG bar charts.

Each OUT is a run dir (`run.json` + `summary.json`). Runs are labelled by their dir name. Metrics are the summary's
numbers flattened to `a/b` keys. Charts (drawn with Pillow) show the rates among them: metrics whose name says
accuracy, overall or consistency and whose values lie in [0, 1], one group of bars per metric, one bar per run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.charts import bar_chart
from benchmarks.runner import RUN_FILE, SUMMARY_FILE
from shared.io import atomic_write_bytes, atomic_write_text

COMPARISON_FILE = "comparison.md"
CHARTED_WORDS = ("accuracy", "overall", "consistency")


def flatten(summary: dict[str, Any], prefix: str = "") -> dict[str, float | int | None]:
    """{"a": {"b": 1}} -> {"a/b": 1}; only numbers and None are kept."""
    flat: dict[str, float | int | None] = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}/"))
        elif value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
            flat[name] = value
    return flat


def load_run(out_dir: str | os.PathLike) -> tuple[str, str, dict[str, float | int | None]]:
    """(label, task, flattened summary) of one run dir; one clear error when it is not a finished run."""
    out_dir = Path(out_dir)
    for name in (RUN_FILE, SUMMARY_FILE):
        if not (out_dir / name).is_file():
            raise FileNotFoundError(f"{out_dir} is not a finished benchmark run: {name} is missing")
    try:
        identity = json.loads((out_dir / RUN_FILE).read_text())
        summary = json.loads((out_dir / SUMMARY_FILE).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{out_dir}: {RUN_FILE} or {SUMMARY_FILE} is not valid JSON: {error}") from None
    return out_dir.name, identity["task"], flatten(summary)


def charted(metrics: dict[str, list[float | int | None]]) -> dict[str, list[float | None]]:
    """The metrics a chart shows: rates (named as such, every value None or in [0, 1])."""
    return {
        name: values
        for name, values in metrics.items()
        if any(word in name.split("/")[0] for word in CHARTED_WORDS)
        and any(v is not None for v in values)
        and all(v is None or (isinstance(v, float) and 0.0 <= v <= 1.0) for v in values)
    }


def compare(out_dirs: Sequence[str | os.PathLike], dest: str | os.PathLike) -> str:
    """Write `dest/comparison.md` and `dest/<task>.png` for the runs; returns the Markdown."""
    runs = [load_run(path) for path in out_dirs]
    for task in {task for _, task, _ in runs}:
        labels = [label for label, run_task, _ in runs if run_task == task]
        if len(set(labels)) != len(labels):
            raise ValueError(f"runs of task {task} must have distinct dir names to label them, got {labels}")
    dest = Path(dest)
    sections = ["# Benchmark comparison", ""]
    for task in sorted({task for _, task, _ in runs}):
        task_runs = [(label, summary) for label, run_task, summary in runs if run_task == task]
        names = sorted({name for _, summary in task_runs for name in summary})
        metrics = {name: [summary.get(name) for _, summary in task_runs] for name in names}
        header = ["metric", *[label for label, _ in task_runs]]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name, values in metrics.items():
            cells = ["-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v)) for v in values]
            lines.append("| " + " | ".join([name, *cells]) + " |")
        sections += [f"## {task}", "", *lines, ""]
        rates = charted(metrics)
        if rates:
            atomic_write_bytes(dest / f"{task}.png", bar_chart(task, [label for label, _ in task_runs], rates))
            sections += [f"![{task}]({task}.png)", ""]
    markdown = "\n".join(sections)
    atomic_write_text(dest / COMPARISON_FILE, markdown)
    return markdown
