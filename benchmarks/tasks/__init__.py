"""The registry of benchmark tasks: `python -m benchmarks list` shows it, `run --task NAME` picks from it.

A task is any object with the `Task` protocol (`benchmarks.tasks.base`); add one by adding it to `TASKS` below.
The DPG-Bench, TIIF-Bench and UniGenBench++ loaders and aggregations live as pure functions in
`benchmarks/formats/`; `dpg-bench`, `tiif-bench` and `unigenbench` wrap those format modules.
"""

from __future__ import annotations

from benchmarks.tasks.base import RunInputs, Sample, Task
from benchmarks.tasks.dpg import DpgBench
from benchmarks.tasks.geneval import GenEval
from benchmarks.tasks.spatialscore_pairs import SpatialScorePairs
from benchmarks.tasks.spatialworld_oracle import SpatialWorldOracle
from benchmarks.tasks.tiif import TiifBench
from benchmarks.tasks.unigenbench import UniGenBenchTask

ALL_TASKS = (SpatialScorePairs(), SpatialWorldOracle(), GenEval(), DpgBench(), TiifBench(), UniGenBenchTask())
TASKS: dict[str, Task] = {task.name: task for task in ALL_TASKS}


def get_task(name: str) -> Task:
    """The registered task called `name`, or one clear error listing the known names."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


__all__ = ["TASKS", "RunInputs", "Sample", "Task", "get_task"]
