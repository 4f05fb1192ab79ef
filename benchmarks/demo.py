"""`make demo`: the whole chain on the embedded default at demo size, from nothing, timed, ending in `reports/demo.md`.

Each stage is one `make` target (the Makefile stays the one place that says how a stage runs) with the file that
proves it finished. The demo passes its sizes to every target as Makefile variables (`DemoSize.make_variables`):
the targets' own defaults are the full size, and the demo's data, runs and benchmark reports go to their own dirs
(`data/demo`, `runs/demo`, `reports/demo`), so a full-size target never reads a demo-size file as its own. The RL
prompt set (`make data-rl`, about 2 minutes) and the generator are built at full size and shared.

A stage whose file exists is not run again, so an interrupted demo resumes at the stage it stopped in (and the stages
resume inside themselves: Lightning checkpoints, the benchmark caches). Wall times go to `<out>/demo/stages.json` after
every stage (atomic writes), and `<out>/demo.md` is rewritten at the end, also after a failed stage, saying what ran,
what failed and the command to rerun it.

The report opens with the three numbers a reader wants (the critic's pairwise accuracy, the RL gain with each reward,
the benchmark table) and the grid of base and RL'd samples for the same test prompts and seed, drawn with the
benchmark suite's sampler settings through its image cache (the images the benchmarks judged); then the stage times,
the sizes, and the details.

The sizes and their time budget, from per-unit costs measured with short runs on the 2-core machine while 4-5 other
jobs ran on it (OMP_NUM_THREADS=1; so upper bounds), 2026-12-05:

| stage | demo size (full) | measured unit cost | estimate |
|---|---|---|---|
| data | 2,000 pairs (12,000) | 0.05 s/pair + 25 s (a) | 125 s |
| data-rl | 8,000 pairs (same: shared) | 0.011 s/pair + 30 s (b) | 120 s |
| pretrain-generator | skipped: shipped generator | | 0 s |
| data-ranked | 96 prompts x 8 (4,800 x 8) | 2.3 s per 24 images + 25 s (c), ranked-groups 10 s | 110 s |
| agreement-set | 16 prompts x 24 (64 x 24) | 2.3 s/prompt + 25 s (c) | 65 s |
| train-reward | 150 steps (2,400) | 0.82 s/step, 0.03 s/scored image, 20 s (d) | 210 s |
| train-rl REWARD=oracle | 24 iterations (115) | 11 s/iteration, 0.55 s/eval image, 18 s (e) | 460 s |
| train-rl (critic) | 24 iterations (115) | 17.6 s/iteration (e) | 580 s |
| eval-benchmarks | EVAL_LIMIT=16 (all) | 3.3 s per prompt and generator + 15 s (f) | 175 s |
| sample grid, report | 8 prompts x 3 generators | cached images | 20 s |
| total | | | 1,865 s (31 min) |

Measured from a fresh clone on 2026-12-07 (`make demo`, beside one other training job): 19.1 min in all, 17.3 min of
stages (data 67 s, data-rl 86, data-ranked 123, agreement-set 51, train-reward 127, oracle RL 286, critic RL 215,
benchmarks 82); the RL stages are faster than estimated under the shared recipe (8.3 and 6.8 s per iteration).

Both RL runs evaluate 64 test prompts x 2 seeds at the end (RL_EVAL_PROMPTS; full: all 398) and 64 x 1 during the
fit (step 0, then every 40 iterations); the base side of the end evaluation is drawn once. That leaves 14 of the 45
minutes for the error of the estimate. The critic learns from the renders and the generator's own samples as ranked
pairs (`make data-ranked`), as the full-size `make train-reward` does; `make data-generated` (best-of-N pairs) is
part of neither. The RL unit costs were measured with the paper's top-6 recipe, before configs/rl/tiny.yaml took the
recipe every reward now shares (one initial noise per group, noise on the first step only).
Measured with: (a) `data_synthesis build` + `verify` of 200 pairs (15 s + 24 s; the full
12,000 built in 104 s); (b) 400 RL pairs (15 s + 21 s; the full 8,000 in 20 s + 48 s); (c) `rl_policy draw
--prompts 4` (34 s) and `12` (53 s); (d) `reward_model fit --trainer.max_steps 5` and `20` on 200 pairs (5.7 s and
18.0 s of training, 33 s and 37 s in all); (e) `rl_policy fit --trainer.max_steps 3` with each reward (oracle: 37 s
of GRPO, 72 s in all with 8 evaluation prompts; critic: 57 s, 130 s with 24); (f) `benchmarks suite --limit 8` with
one generator (34 images, 42 s).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from shared import atomic_write_json, atomic_write_text

RL_DATA = "data/spatialworld-rl"  # the Makefile's RL_DATA_DIR: built at full size, shared with the full-size targets
GENERATOR = "runs/rl/generator/pipeline"  # what `make pretrain-generator` writes
# The demo's own outputs (the Makefile variables DATA_DIR, AGREEMENT_DIR, RANKED_DRAW_DIR, RANKED_DIR, REWARD_RUN_DIR,
# RL_RUNS_DIR; EVAL_OUT is `<out>/demo`)
DEMO_DATA = "data/demo/spatialworld"
DEMO_AGREEMENT = "data/demo/agreement-test"
DEMO_RANKED_DRAW = "data/demo/draw-train"
DEMO_RANKED = "data/demo/spatialworld-ranked"
DEMO_REWARD = "runs/demo/reward/tiny"
DEMO_RL = "runs/demo/rl"
RL_RUNS = (("tiny-oracle", "oracle"), ("tiny", "critic (tiny SpatialScore)"))  # run dir name, the reward it used
COLUMNS = {"base": "base", "tiny-oracle": "RL: oracle", "tiny": "RL: critic"}  # generator label -> column heading
# 75% train split, both orientations, batches of 8: 1,000 pairs give ~185 batches per epoch (Lightning refuses a
# val_check_interval longer than an epoch)
MIN_DATA_PAIRS = 1000


@dataclass(frozen=True)
class DemoSize:
    """The demo's sizes (the budget table of the module docstring); each is a Makefile variable whose default is the
    full size."""

    data_pairs: int = 2000  # DATA_PAIRS: SpatialWorld pairs for the critic (full: 12,000)
    ranked_prompts: int = 96  # RANKED_PROMPTS: RL train prompts x 8 samples for ranked pairs (full: 4,800)
    agreement_prompts: int = 16  # AGREEMENT_PROMPTS: RL test prompts x 24 samples (full: 64)
    reward_steps: int = 150  # REWARD_STEPS: stage-B optimizer steps (full: tiny_ranked.yaml's 2,400)
    rl_steps: int = 24  # RL_STEPS: GRPO iterations of each RL run (full: tiny.yaml's 115)
    rl_eval_prompts: int = 64  # RL_EVAL_PROMPTS: RL test prompts x 2 seeds in the end-of-fit evaluation (full: 398)
    eval_limit: int = 16  # EVAL_LIMIT: prompts (pairs) of each benchmark task (full: all)

    def make_variables(self, eval_out: Path) -> tuple[str, ...]:
        """`NAME=value` for every stage command: the sizes and the demo's own dirs."""
        variables = {
            "DATA_DIR": DEMO_DATA,
            "DATA_PAIRS": self.data_pairs,
            "RANKED_DRAW_DIR": DEMO_RANKED_DRAW,
            "RANKED_DIR": DEMO_RANKED,
            "RANKED_PROMPTS": self.ranked_prompts,
            "AGREEMENT_DIR": DEMO_AGREEMENT,
            "AGREEMENT_PROMPTS": self.agreement_prompts,
            "REWARD_RUN_DIR": DEMO_REWARD,
            "REWARD_STEPS": self.reward_steps,
            "RL_RUNS_DIR": DEMO_RL,
            "RL_STEPS": self.rl_steps,
            "RL_EVAL_PROMPTS": self.rl_eval_prompts,
            "EVAL_OUT": eval_out,
            "EVAL_LIMIT": self.eval_limit,
        }
        return tuple(f"{name}={value}" for name, value in variables.items())

    def table(self) -> list[str]:
        """The sizes as a markdown table, with what the full-size targets use."""
        rows = [
            ("SpatialWorld pairs for the critic", "DATA_PAIRS", self.data_pairs, "12,000"),
            ("critic's ranked pairs: RL train prompts x 8 samples", "RANKED_PROMPTS", self.ranked_prompts, "4,800"),
            ("agreement set: RL test prompts x 24 samples", "AGREEMENT_PROMPTS", self.agreement_prompts, "64"),
            ("critic (stage B) optimizer steps", "REWARD_STEPS", self.reward_steps, "2,400"),
            ("GRPO iterations per RL run", "RL_STEPS", self.rl_steps, "115"),
            ("RL evaluation: test prompts x 2 seeds", "RL_EVAL_PROMPTS", self.rl_eval_prompts, "every one (398)"),
            ("prompts per benchmark task", "EVAL_LIMIT", self.eval_limit, "every one"),
        ]
        lines = ["| what | make variable | demo | full size |", "|---|---|---|---|"]
        return lines + [f"| {what} | `{name}` | {demo} | {full} |" for what, name, demo, full in rows]


@dataclass(frozen=True)
class Stage:
    name: str
    what: str
    command: tuple[str, ...]
    done: str | None  # the file that proves the stage finished (None: always run; it must be cheap when done)


def default_stages(size: DemoSize, eval_out: Path, make: str = "make", generator: str = GENERATOR) -> list[Stage]:
    """The chain at demo size, in dependency order (each target also builds what it needs). `generator`: the pipeline
    dir RL starts from (the shipped one when the repo has it: then nothing is pretrained)."""
    variables = size.make_variables(eval_out)

    def command(target: str, *extra: str) -> tuple[str, ...]:
        return (make, target, *extra, *variables)

    stages = [
        Stage("data", "SpatialWorld pairs for the critic", command("data"), f"{DEMO_DATA}/verify_report.json"),
        Stage("data-rl", "2-object SpatialWorld prompts for RL", command("data-rl"), f"{RL_DATA}/verify_report.json"),
        Stage(
            "pretrain-generator",
            "the tiny Flux generator (rectified flow in pixel space)",
            command("pretrain-generator"),
            f"{generator}/model_index.json",
        ),
        Stage(
            "data-ranked",
            "the generator's own samples of RL train prompts as ranked pairs for the critic (oracle-ordered)",
            command("data-ranked"),
            f"{DEMO_RANKED}/meta.json",
        ),
    ]
    stages += [
        Stage(
            "agreement-set",
            "the generator's samples of RL test prompts, oracle-labelled",
            command("agreement-set"),
            f"{DEMO_AGREEMENT}/samples.parquet",
        ),
        Stage(
            "train-reward",
            "SpatialScore stage B (LoRA, reward token, Gaussian BT) on the shipped stage A: renders + ranked pairs",
            command("train-reward"),
            f"{DEMO_REWARD}/export/metrics.json",
        ),
        Stage(
            "train-rl-oracle",
            "Flow-GRPO with the SpatialWorld oracle as reward (a perfect critic)",
            command("train-rl", "REWARD=oracle"),
            f"{DEMO_RL}/tiny-oracle/metrics.json",
        ),
        Stage(
            "train-rl",
            "Flow-GRPO with the tiny SpatialScore critic",
            command("train-rl"),
            f"{DEMO_RL}/tiny/metrics.json",
        ),
        Stage("eval-benchmarks", "every benchmark, cached", command("eval-benchmarks"), None),
    ]
    return stages


Runner = Callable[[Sequence[str]], int]


def run_command(command: Sequence[str]) -> int:
    """Run one stage with its output on this terminal; its exit status."""
    return subprocess.call(list(command))


def run_stages(
    stages: Sequence[Stage], out: Path, *, root: Path = Path("."), runner: Runner = run_command
) -> list[dict[str, Any]]:
    """Run the stages that are not done yet, recording each one's wall time in `<out>/demo/stages.json`.

    Returns one record per stage: {name, what, command, status ("ran", "present", "failed", "not run"), seconds}.
    `seconds` of a present stage is the time an earlier demo measured for it, if one did. Stops at the first failed
    stage."""
    ledger_path = out / "demo" / "stages.json"
    earlier = json.loads(ledger_path.read_text()) if ledger_path.is_file() else {}
    records: list[dict[str, Any]] = []
    failed = False
    for stage in stages:
        record: dict[str, Any] = {"name": stage.name, "what": stage.what, "command": shlex.join(stage.command)}
        if failed:
            record.update(status="not run", seconds=None)
        elif stage.done is not None and (root / stage.done).is_file():
            record.update(status="present", seconds=earlier.get(stage.name, {}).get("seconds"))
        else:
            print(f"[demo] {stage.name}: {shlex.join(stage.command)}", flush=True)
            started = time.perf_counter()
            status = runner(stage.command)
            seconds = round(time.perf_counter() - started, 1)
            missing = stage.done is not None and not (root / stage.done).is_file()
            if status != 0 or missing:
                failed = True
                reason = f"exit status {status}" if status != 0 else f"finished without writing {stage.done}"
                record.update(status="failed", seconds=seconds, error=reason)
            else:
                record.update(status="ran", seconds=seconds)
                earlier[stage.name] = {"seconds": seconds}
                atomic_write_json(ledger_path, earlier)
        records.append(record)
    return records


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def percent(value: Any) -> str:
    return "n/a" if value is None else f"{100 * float(value):.1f}%"


def _number(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


def points(base: Any, final: Any) -> str:
    return "n/a" if base is None or final is None else f"{100 * (float(final) - float(base)):+.1f} points"


def nested(summary: dict[str, Any], path: str) -> Any:
    """`summary["a"]["b"]` for "a/b" (metric names may hold spaces but not slashes); None where missing."""
    value: Any = summary
    for key in path.split("/"):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


# The one number of each benchmark task the demo shows (benchmarks/*: the summary's keys); the suite's benchmarks.md
# has every metric.
HEADLINES = (
    ("spatialworld-oracle", "relation_accuracy", "relation accuracy (pixel detector)"),
    ("geneval", "overall", "overall"),
    ("dpg-bench", "corrected/relation_spatial", "spatial relations (corrected)"),
    ("tiif-bench", "overall/short", "overall, short prompts"),
    ("tiif-bench", "overall/long", "overall, long prompts"),
    ("unigenbench", "layout_2d", "layout 2D"),
)


def benchmark_table(summary: dict[str, Any] | None) -> list[str]:
    """The headline of each benchmark task, one column per generator (base first)."""
    if not summary:
        return ["No benchmark summary yet (`make eval-benchmarks`)."]
    labels: list[str] = []
    for task, _, _ in HEADLINES:
        labels += [label for label in summary.get(task, {}) if label not in labels]
    order = list(COLUMNS)
    labels.sort(key=lambda label: order.index(label) if label in order else len(order))
    headings = [COLUMNS.get(label, label) for label in labels]
    lines = ["| task | metric | " + " | ".join(headings) + " |", "|---|---|" + "---|" * len(labels)]
    for task, metric, name in HEADLINES:
        if task not in summary:
            continue
        values = [nested(summary[task].get(label, {}), metric) for label in labels]
        cells = ["" if value is None else f"{float(value):.3f}" for value in values]
        lines.append(f"| {task} | {name} | " + " | ".join(cells) + " |")
    return lines


def headline_section(
    reward: dict[str, Any] | None,
    runs: dict[str, dict[str, Any] | None],
    summary: dict[str, Any] | None,
    *,
    eval_limit: int | None,
    benchmarks_link: str,
) -> list[str]:
    """The three numbers: the critic's pairwise accuracy, the RL gain with each reward, the benchmark table."""
    lines = ["## The three numbers", ""]
    if reward is None:
        lines.append("1. **Critic**: no reward checkpoint yet.")
    else:
        by_broken = reward.get("pairwise_accuracy_by_broken", {})
        by_kind, counts = reward.get("pairwise_accuracy_by_kind", {}), reward.get("num_test_pairs_by_kind", {})
        # the renders' pairs are the ones the paper's accuracy compares with; the ranked pairs of the generator's
        # own samples are another task, reported beside them
        renders = " of renders" if "render" in by_kind else ""
        line = (
            f"1. **Critic pairwise accuracy** (tiny SpatialScore, "
            f"{counts.get('render', reward.get('num_test_pairs'))} held-out test pairs{renders}): "
            f"**{percent(by_kind.get('render', reward.get('pairwise_accuracy')))}** (one broken relation "
            f"{percent(by_broken.get('1'))}, 2-3 broken {percent(by_broken.get('2-3'))}; the paper's 7B model: 95.8%)"
        )
        if "ranked" in by_kind:
            line += (
                f"; {percent(by_kind['ranked'])} of {counts.get('ranked')} ranked pairs of the generator's own "
                "samples (the oracle's order)"
            )
        lines.append(line + ".")
    lines += [
        "2. **RL gain**: oracle relation accuracy on held-out RL test prompts, the base generator against the trained "
        "one on the same prompts and seeds:",
        "",
        "| reward | base | after RL | gain | GRPO iterations | evaluated images per side |",
        "|---|---|---|---|---|---|",
    ]
    for run, reward_name in RL_RUNS:
        metrics = runs.get(run)
        if metrics is None:
            lines.append(f"| {reward_name} | not run | | | | |")
            continue
        base, final = metrics.get("oracle_accuracy_base"), metrics.get("oracle_accuracy_final")
        lines.append(
            f"| {reward_name} | {percent(base)} | {percent(final)} | **{points(base, final)}** | "
            f"{metrics.get('global_step', '')} | {metrics.get('num_eval_samples', '')} |"
        )
    limit = f"the first {eval_limit} prompts of each task" if eval_limit else "every prompt"
    lines += [
        "",
        f"3. **Benchmarks** ({limit}, judged by the SpatialWorld pixel detector; every metric in "
        f"[{benchmarks_link}]({benchmarks_link})):",
        "",
    ]
    return lines + benchmark_table(summary)


def reward_section(metrics: dict[str, Any] | None) -> list[str]:
    if metrics is None:
        return ["No reward checkpoint yet."]
    by_broken = metrics.get("pairwise_accuracy_by_broken", {})
    by_kind = metrics.get("pairwise_accuracy_by_kind", {})
    rows = [
        ("overall", metrics.get("pairwise_accuracy")),
        *((f"{kind} pairs", by_kind[kind]) for kind in sorted(by_kind) if len(by_kind) > 1),
        ("1 broken relation", by_broken.get("1")),
        ("2-3 broken relations", by_broken.get("2-3")),
        ("reversed pairs", metrics.get("pairwise_accuracy_reversed")),
    ]
    lines = ["| test pairs | pairwise accuracy | paper (7B) |", "|---|---|---|"]
    paper = {"overall": "95.8%", "1 broken relation": "93.9%", "2-3 broken relations": "97.8%"}
    lines += [f"| {name} | {percent(value)} | {paper.get(name, '')} |" for name, value in rows]
    lines += [
        "",
        f"{metrics.get('num_test_pairs')} test pairs; expected calibration error {metrics.get('ece', 0):.3f} raw, "
        f"{metrics.get('ece_calibrated', 0):.3f} at the temperature fitted on val; the predicted std flags misordered "
        f"pairs with AUROC {metrics.get('std_error_auroc', 0):.3f}.",
    ]
    if metrics.get("agreement_spearman") is not None:
        lines += [
            "",
            f"On the generator's own samples ({metrics.get('agreement_prompts')} RL test prompts x "
            f"{metrics.get('agreement_samples_per_prompt')}), the critic's within-group Spearman with the oracle's "
            f"relation accuracy is {metrics['agreement_spearman']:.3f}, with every object found "
            f"{_number(metrics.get('agreement_spearman_found'))}; its top 6 beat its bottom 6 by the oracle in "
            f"{percent(metrics.get('agreement_top6_bottom6'))} of the pairs the oracle orders.",
        ]
    return lines


def rl_section(runs: dict[str, dict[str, Any] | None]) -> list[str]:
    lines = [
        "| run | reward | oracle relation accuracy (base -> RL) | among samples with every object found | every "
        "object found | GRPO steps | GRPO seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    any_run = False
    for label, metrics in runs.items():
        if metrics is None:
            continue
        any_run = True

        def pair(name: str, metrics: dict[str, Any] = metrics) -> str:
            return f"{percent(metrics.get(f'{name}_base'))} -> {percent(metrics.get(f'{name}_final'))}"

        lines.append(
            f"| {label} | {metrics.get('reward_source', '')} | {pair('oracle_accuracy')} | "
            f"{pair('relation_accuracy_all_found')} | {pair('all_found')} | {metrics.get('global_step', '')} | "
            f"{metrics.get('grpo_seconds', 0):.0f} |"
        )
    return lines if any_run else ["No RL run yet."]


def sample_grid(rows: Sequence[Sequence[Image.Image]], labels: Sequence[str], cell: int = 128) -> Image.Image:
    """Images in a grid (one row per prompt, one column per generator), nearest-upscaled to `cell` px, with the
    column labels on top and the row numbers on the left."""
    if not rows or not rows[0]:
        raise ValueError("sample_grid needs at least one row and one column")
    margin, header = 28, 20
    grid = Image.new("RGB", (margin + cell * len(labels), header + cell * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for column, label in enumerate(labels):
        draw.text((margin + column * cell + 4, 4), label, fill="black")
    for row, images in enumerate(rows):
        if len(images) != len(labels):
            raise ValueError(f"row {row} has {len(images)} images for {len(labels)} columns")
        draw.text((4, header + row * cell + cell // 2 - 6), str(row + 1), fill="black")
        for column, image in enumerate(images):
            tile = image.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)
            grid.paste(tile, (margin + column * cell, header + row * cell))
    return grid


def draw_samples(
    generators: Sequence[tuple[str, Path]],
    prompt_data: Path,
    cache_dir: Path,
    settings: Any,
    *,
    num_prompts: int,
    seed: int,
    out: Path,
) -> list[str]:
    """The grid of base and RL'd samples (same prompts, same seed) -> `out`; returns the prompts in row order."""
    from benchmarks.cache import ImageCache
    from benchmarks.formats import load_spatialworld_prompts
    from benchmarks.suite import image_source

    prompts = load_spatialworld_prompts(prompt_data, "test")[:num_prompts]
    cache = ImageCache(cache_dir)
    sources = [image_source(directory, settings, cache, batch_size=max(1, len(prompts))) for _, directory in generators]
    for source in sources:
        source.prefetch([(p.prompt_id, p.prompt, seed) for p in prompts])
    rows = [[source.get(p.prompt_id, p.prompt, seed) for source in sources] for p in prompts]
    grid = sample_grid(rows, [label for label, _ in generators])
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(out.name + ".tmp.png")
    grid.save(temporary)
    os.replace(temporary, out)
    return [p.prompt for p in prompts]


def stage_table(records: Sequence[dict[str, Any]], variables: str) -> list[str]:
    """The stages' status and seconds; `variables` (the size variables every command ends with) is written once."""
    total = sum(record["seconds"] or 0 for record in records if record["status"] == "ran")
    chain = sum(record["seconds"] or 0 for record in records if record["status"] in ("ran", "present"))
    lines = ["| stage | what | status | seconds | command |", "|---|---|---|---|---|"]
    for record in records:
        seconds = "" if record["seconds"] is None else f"{record['seconds']:.0f}"
        status = record["status"] + (f" ({record['error']})" if "error" in record else "")
        command = record["command"].replace(f" {variables}", " $SIZES") if variables else record["command"]
        lines.append(f"| {record['name']} | {record['what']} | {status} | {seconds} | `{command}` |")
    return lines + [
        "",
        f"`$SIZES`: `{variables}`",
        "",
        f"Wall time of the stages run this time: {total / 60:.1f} min; of the whole chain, as measured by this run "
        f"and earlier ones: {chain / 60:.1f} min.",
    ]


def write_report(
    out: Path,
    records: Sequence[dict[str, Any]],
    size: DemoSize,
    *,
    root: Path = Path("."),
    samples: tuple[str, Sequence[str]] | None = None,
) -> Path:
    """`<out>/demo.md` from the stage records and whatever artifacts exist: the three numbers and the sample grid
    first, then the stage times, the sizes and the details. Every number is marked demo-size."""
    reward = read_json(root / DEMO_REWARD / "export" / "metrics.json")
    runs = {run: read_json(root / DEMO_RL / run / "metrics.json") for run, _ in RL_RUNS}
    eval_out = out / "demo"
    summary = read_json(eval_out / "summary.json")
    benchmarks_link = "demo/benchmarks.md"
    lines = [
        "# SpatialScore demo (DEMO SIZE)",
        "",
        "**Demo size: every number here comes from the small runs of `make demo` (sizes below), not from the "
        "full-size targets; the full-size results are in the README's results table.**",
        "",
    ]
    lines += headline_section(reward, runs, summary, eval_limit=size.eval_limit, benchmarks_link=benchmarks_link)
    lines += ["", "## Samples (base and RL'd generators, same test prompts, same seed)", ""]
    if samples is None:
        lines.append("Not drawn (the chain did not finish).")
    else:
        image, prompts = samples
        lines += [f"![samples]({image})", ""]
        lines += [f"{index}. {prompt}" for index, prompt in enumerate(prompts, start=1)]
    lines += [
        "",
        "## Stage times",
        "",
        "Stages marked *present* were done by an earlier run (their time is the one measured then, when known); "
        "rerun a stage with its command.",
        "",
    ]
    lines += stage_table(records, shlex.join(size.make_variables(eval_out)))
    lines += [
        "",
        "## Sizes",
        "",
        f"The demo writes to `{DEMO_DATA}`, `{DEMO_RANKED_DRAW}`, `{DEMO_RANKED}`, `{DEMO_AGREEMENT}`, "
        f"`{DEMO_REWARD}`, `{DEMO_RL}` and `{eval_out}`; the "
        f"full-size targets (`make data`, `make train-reward`, ...) never read them. The RL prompt set "
        f"(`{RL_DATA}`) and the generator are full size and shared.",
        "",
    ]
    lines += size.table()
    data = read_json(root / DEMO_DATA / "verify_report.json")
    if data is not None:
        lines += [
            "",
            "## Data",
            "",
            f"`{DEMO_DATA}`: {data.get('num_pairs')} pairs, verification "
            f"{'passed' if data.get('passed') else 'FAILED'} (perfect scenes: {percent(data.get('perfect_all_hold'))}"
            f" of stated relations hold; perturbed: {percent(data.get('perturbed_exact'))} exact).",
        ]
    lines += ["", "## Critic (tiny SpatialScore, test split)", ""]
    lines += reward_section(reward)
    lines += ["", "## RL of the generator (paired seeds, held-out prompts)", ""]
    lines += rl_section(runs)
    path = out / "demo.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from benchmarks.images import SamplerSettings

    default = DemoSize()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.demo",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("reports"), help="demo.md goes here, the benchmarks in demo/")
    parser.add_argument("--make", default=os.environ.get("MAKE", "make"), help="the make program")
    parser.add_argument("--prompt-data", type=Path, default=Path(RL_DATA))
    parser.add_argument("--generator", type=Path, default=Path(GENERATOR), help="the base pipeline dir of RL")
    parser.add_argument("--num-samples", type=int, default=8, help="test prompts in the sample grid")
    parser.add_argument("--sample-seed", type=int, default=0)
    parser.add_argument("--dry-run", action="store_true", help="print the stage commands and run nothing")
    sizes = parser.add_argument_group("sizes (the budget table of benchmarks/demo.py)")
    for name, value in vars(default).items():
        sizes.add_argument(f"--{name.replace('_', '-')}", type=int, default=value)
    sampler = SamplerSettings()
    parser.add_argument("--steps", type=int, default=sampler.num_inference_steps, help="as make eval-benchmarks")
    parser.add_argument("--guidance", type=float, default=sampler.guidance_scale)
    parser.add_argument("--height", type=int, default=sampler.height)
    parser.add_argument("--width", type=int, default=sampler.width)
    parser.add_argument("--true-cfg", type=float, default=sampler.true_cfg_scale)
    args = parser.parse_args(argv)
    size = DemoSize(**{name: getattr(args, name) for name in vars(default)})
    if any(value < 1 for value in vars(size).values()):
        parser.error(f"every size must be positive, got {vars(size)}")
    if size.data_pairs < MIN_DATA_PAIRS:
        parser.error(
            f"--data-pairs {size.data_pairs}: at least {MIN_DATA_PAIRS}, so that an epoch of the critic's training "
            "split holds the 150 batches after which configs/reward/tiny.yaml validates"
        )

    eval_out = args.out / "demo"
    stages = default_stages(size, eval_out, args.make, str(args.generator))
    if args.dry_run:
        for stage in stages:
            print(shlex.join(stage.command))
        return 0
    records = run_stages(stages, args.out)
    failed = next((record for record in records if record["status"] == "failed"), None)
    samples = None
    base = args.generator
    if failed is None and (base / "model_index.json").is_file():
        trained = [run for run, _ in RL_RUNS if (Path(DEMO_RL) / run / "lora" / "policy.json").is_file()]
        generators = [("base", base)] + [(COLUMNS[run], Path(DEMO_RL) / run) for run in trained]
        settings = SamplerSettings(args.steps, args.guidance, args.height, args.width, args.true_cfg)
        image = args.out / "demo_samples.png"
        prompts = draw_samples(
            generators,
            args.prompt_data,
            eval_out / "cache" / "images",
            settings,
            num_prompts=args.num_samples,
            seed=args.sample_seed,
            out=image,
        )
        samples = (image.name, prompts)
    report = write_report(args.out, records, size, samples=samples)
    if failed is not None:
        print(f"[demo] stage {failed['name']} failed ({failed['error']}); rerun: {failed['command']}", file=sys.stderr)
        print(f"[demo] partial report: {report}", file=sys.stderr)
        return 1
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
