"""The benchmark suite of `make eval-benchmarks`: every task for the reward model and for each generator, in one
process, then one comparison.

- `spatialscore-pairs`: the reward checkpoint on a SpatialWorld dataset dir's test split;
- for each generator (a diffusers pipeline dir, e.g. the pretrained tiny base, or an rl_policy run dir: its LoRA over
  the base): `spatialworld-oracle` on the prompt dataset's test split (with the mean SpatialScore of the images),
  and `geneval`, `dpg-bench`, `tiif-bench` and `unigenbench` on the same prompts written in each benchmark's format
  (`export-prompts`), all judged by the SpatialWorld pixel detector;
- `reports/summary.json` ({task: {run label: summary}}, numbers only, sorted keys: a rerun is byte-identical),
  `reports/benchmarks.md` and one PNG bar chart per task (`compare`), and the Markdown is printed.

Every judge call and generated image is cached under `<out>/cache` (shared by the tasks: a prompt drawn for one
task is not drawn again for another), so a rerun makes no judge call and generates nothing, and a killed run
resumes where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from benchmarks.cache import ImageCache, JudgeCache
from benchmarks.compare import compare
from benchmarks.formats import load_spatialworld_prompts, write_dpg, write_tiif, write_unigenbench
from benchmarks.images import PipelineImages, SamplerSettings
from benchmarks.runner import run_task
from benchmarks.spatialworld import geneval_metadata
from benchmarks.tasks import RunInputs, get_task
from shared import atomic_write_json, atomic_write_text

GENERATOR_TASKS = ("spatialworld-oracle", "geneval", "dpg-bench", "tiif-bench", "unigenbench")


def parse_generator(text: str) -> tuple[str, Path]:
    """ "LABEL=DIR" -> (label, dir)."""
    label, separator, directory = text.partition("=")
    if not separator or not label or not directory or "/" in label:
        raise ValueError(f"--generator takes LABEL=DIR (a label without '/'), got {text!r}")
    return label, Path(directory)


def export_prompts(dataset: Path, out: Path) -> dict[str, Path]:
    """The prompt dataset's test prompts in each benchmark's format -> {task: its --data}."""
    out.mkdir(parents=True, exist_ok=True)
    prompts = load_spatialworld_prompts(dataset, "test")
    metadata = out / "geneval_metadata.jsonl"
    atomic_write_text(
        metadata, "".join(json.dumps(p, sort_keys=True) + "\n" for p in geneval_metadata(dataset, "test"))
    )
    write_dpg(prompts, out / "dpg")
    write_tiif(prompts, out / "tiif")
    write_unigenbench(prompts, out / "unigenbench.csv")
    return {
        "spatialworld-oracle": dataset,
        "geneval": metadata,
        "dpg-bench": out / "dpg",
        "tiif-bench": out / "tiif",
        "unigenbench": out / "unigenbench.csv",
    }


def image_source(directory: Path, settings: SamplerSettings, cache: ImageCache, batch_size: int) -> PipelineImages:
    if (directory / "model_index.json").is_file():
        return PipelineImages.from_pretrained(directory, settings, cache, batch_size)
    return PipelineImages.from_policy(directory, settings, cache, batch_size)


def run_suite(
    out: str | Path,
    *,
    reward_data: Path | None = None,
    scorer: Path | None = None,
    prompt_data: Path | None = None,
    generators: Sequence[tuple[str, Path]] = (),
    settings: SamplerSettings | None = None,
    images_per_prompt: int | None = None,
    limit: int | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Run the suite (module docstring) into `out`; returns {task: {label: summary}}."""
    from benchmarks.__main__ import make_judges  # the CLI's judge factory: one place builds judges

    out = Path(out)
    settings = settings or SamplerSettings()
    if scorer is not None and not (scorer / "config.json").is_file():
        raise FileNotFoundError(f"--scorer {scorer} is not a reward checkpoint dir (config.json missing)")
    jobs: list[tuple[str, str, Path, PipelineImages | None]] = []  # (task, label, data, images)
    if reward_data is not None and scorer is not None:
        jobs.append(("spatialscore-pairs", "spatialscore", reward_data, None))
    cache_dir = out / "cache"
    if generators:
        if prompt_data is None:
            raise ValueError("generators need --prompt-data: a SpatialWorld dataset dir whose test prompts are drawn")
        data = export_prompts(prompt_data, out / "prompts")
        image_cache = ImageCache(cache_dir / "images")
        for label, directory in generators:
            images = image_source(directory, settings, image_cache, batch_size)
            jobs += [(task, label, data[task], images) for task in GENERATOR_TASKS]
    if not jobs:
        raise ValueError("nothing to run: give --reward-data with --scorer, and/or --generator with --prompt-data")
    cache = JudgeCache(cache_dir / "judges.sqlite")
    summaries: dict[str, dict[str, Any]] = {}
    run_dirs = []
    try:
        for task_name, label, data, images in jobs:
            arguments = SimpleNamespace(judge="spatialworld", detector=None, scorer=scorer, task=task_name)
            inputs = RunInputs(
                judges=make_judges(arguments, cache),
                data=data,
                images=images,
                images_per_prompt=images_per_prompt,
                limit=limit,
            )
            run_dir = out / "runs" / task_name / label
            run_task(get_task(task_name), inputs, run_dir)
            summaries.setdefault(task_name, {})[label] = json.loads((run_dir / "summary.json").read_text())
            run_dirs.append(run_dir)
    finally:
        cache.close()
    atomic_write_json(out / "summary.json", summaries)
    markdown = compare(run_dirs, out)
    atomic_write_text(out / "benchmarks.md", markdown)
    return summaries
