"""`make demo`: the whole chain on the embedded default, from nothing, timed, ending in `reports/demo.md`.

Each stage is one `make` target (the Makefile stays the one place that says how a stage runs) with the file that
proves it finished. A stage whose file exists is not run again, so an interrupted demo resumes at the stage it
stopped in (and the stages resume inside themselves: Lightning checkpoints, the benchmark caches). Wall times go to
`<out>/demo/stages.json` after every stage (atomic writes), and `<out>/demo.md` is rewritten after every stage too,
so a failed stage leaves a report saying what ran, what failed and the command to rerun it.

The report: the stage table (what, command, seconds, or "present" for stages done by an earlier run), the numbers
(dataset checks, the reward model's pairwise accuracy, each RL run's paired base-vs-trained evaluation, the benchmark
table of `make eval-benchmarks`), and a grid of base and RL'd samples for the same test prompts and seeds, drawn
with the benchmark suite's sampler settings through its image cache (so they are the images the benchmarks judged).
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

DATA, RL_DATA = "data/spatialworld", "data/spatialworld-rl"  # the Makefile's DATA_DIR and RL_DATA_DIR
GENERATOR = "runs/rl/generator/pipeline"  # what `make pretrain-generator` writes


@dataclass(frozen=True)
class Stage:
    name: str
    what: str
    command: tuple[str, ...]
    done: str | None  # the file that proves the stage finished (None: always run; it must be cheap when done)


def default_stages(make: str = "make", generator: str = GENERATOR) -> list[Stage]:
    """The embedded default's chain, in dependency order (each target also builds what it needs). `generator`: the
    pipeline dir RL starts from (the shipped one when the repo has it: then nothing is pretrained)."""
    return [
        Stage("data", "SpatialWorld pairs for the reward model", (make, "data"), f"{DATA}/verify_report.json"),
        Stage("data-rl", "2-object SpatialWorld prompts for RL", (make, "data-rl"), f"{RL_DATA}/verify_report.json"),
        Stage(
            "train-reward",
            "SpatialScore stage B (LoRA, reward token, Gaussian BT) on the shipped stage A",
            (make, "train-reward"),
            "runs/reward/tiny/export/metrics.json",
        ),
        Stage(
            "pretrain-generator",
            "the tiny Flux generator (rectified flow in pixel space)",
            (make, "pretrain-generator"),
            f"{generator}/model_index.json",
        ),
        Stage(
            "train-rl-oracle",
            "Flow-GRPO with the SpatialWorld oracle as reward (a perfect critic)",
            (make, "train-rl", "REWARD=oracle"),
            "runs/rl/tiny-oracle/metrics.json",
        ),
        Stage(
            "train-rl",
            "Flow-GRPO with the tiny SpatialScore critic",
            (make, "train-rl"),
            "runs/rl/tiny/metrics.json",
        ),
        Stage("eval-benchmarks", "every benchmark, cached", (make, "eval-benchmarks"), None),
    ]


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


def reward_section(metrics: dict[str, Any] | None) -> list[str]:
    if metrics is None:
        return ["No reward checkpoint yet (`runs/reward/tiny/export/metrics.json`)."]
    by_broken = metrics.get("pairwise_accuracy_by_broken", {})
    rows = [
        ("overall", metrics.get("pairwise_accuracy")),
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
    return lines if any_run else ["No RL run yet (`runs/rl/*/metrics.json`)."]


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


def write_report(
    out: Path,
    records: Sequence[dict[str, Any]],
    *,
    root: Path = Path("."),
    samples: tuple[str, Sequence[str]] | None = None,
) -> Path:
    """`<out>/demo.md` from the stage records and whatever artifacts exist."""
    total = sum(record["seconds"] or 0 for record in records if record["status"] == "ran")
    lines = [
        "# SpatialScore demo (embedded default)",
        "",
        "`make demo` ran the chain below on this machine; stages marked *present* were done by an earlier run "
        "(their time is the one measured then, when known). Rerun a stage with its command.",
        "",
        "| stage | what | command | status | seconds |",
        "|---|---|---|---|---|",
    ]
    for record in records:
        seconds = "" if record["seconds"] is None else f"{record['seconds']:.0f}"
        status = record["status"] + (f" ({record['error']})" if "error" in record else "")
        lines.append(f"| {record['name']} | {record['what']} | `{record['command']}` | {status} | {seconds} |")
    lines += ["", f"Wall time of the stages run this time: {total / 60:.1f} min.", ""]

    data = read_json(root / "data/spatialworld/verify_report.json")
    if data is not None:
        lines += [
            "## Data",
            "",
            f"`data/spatialworld`: {data.get('num_pairs')} pairs, verification "
            f"{'passed' if data.get('passed') else 'FAILED'} (perfect scenes: {percent(data.get('perfect_all_hold'))}"
            f" of stated relations hold; perturbed: {percent(data.get('perturbed_exact'))} exact).",
            "",
        ]
    lines += ["## Reward model (tiny SpatialScore, test split)", ""]
    lines += reward_section(read_json(root / "runs/reward/tiny/export/metrics.json"))
    lines += ["", "## RL of the generator (paired seeds, held-out prompts)", ""]
    lines += rl_section({run: read_json(root / f"runs/rl/{run}/metrics.json") for run in ("tiny-oracle", "tiny")})
    benchmarks = out / "benchmarks.md"
    lines += ["", "## Benchmarks (`make eval-benchmarks`, judged by the SpatialWorld pixel detector)", ""]
    if benchmarks.is_file():
        body = benchmarks.read_text().strip().splitlines()
        lines += [line.replace("](", "](./") if line.startswith("![") else line for line in body]
    else:
        lines.append("Not run yet.")
    if samples is not None:
        image, prompts = samples
        lines += ["", "## Samples (same prompts, same seed)", "", f"![samples]({image})", ""]
        lines += [f"{index}. {prompt}" for index, prompt in enumerate(prompts, start=1)]
    path = out / "demo.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from benchmarks.images import SamplerSettings

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.demo",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("reports"), help="demo.md goes here (the suite's --out)")
    parser.add_argument("--make", default=os.environ.get("MAKE", "make"), help="the make program")
    parser.add_argument("--prompt-data", type=Path, default=Path(RL_DATA))
    parser.add_argument("--generator", type=Path, default=Path(GENERATOR), help="the base pipeline dir of RL")
    parser.add_argument("--num-samples", type=int, default=8, help="test prompts in the sample grid")
    parser.add_argument("--sample-seed", type=int, default=0)
    defaults = SamplerSettings()
    parser.add_argument("--steps", type=int, default=defaults.num_inference_steps, help="as make eval-benchmarks")
    parser.add_argument("--guidance", type=float, default=defaults.guidance_scale)
    parser.add_argument("--height", type=int, default=defaults.height)
    parser.add_argument("--width", type=int, default=defaults.width)
    parser.add_argument("--true-cfg", type=float, default=defaults.true_cfg_scale)
    args = parser.parse_args(argv)

    records = run_stages(default_stages(args.make, str(args.generator)), args.out)
    failed = next((record for record in records if record["status"] == "failed"), None)
    samples = None
    base = args.generator
    if failed is None and (base / "model_index.json").is_file():
        generators = [("base", base)] + [
            (run, Path("runs/rl") / run)
            for run in ("tiny-oracle", "tiny")
            if (Path("runs/rl") / run / "lora" / "policy.json").is_file()
        ]
        settings = SamplerSettings(args.steps, args.guidance, args.height, args.width, args.true_cfg)
        image = args.out / "demo_samples.png"
        prompts = draw_samples(
            generators,
            args.prompt_data,
            args.out / "cache" / "images",
            settings,
            num_prompts=args.num_samples,
            seed=args.sample_seed,
            out=image,
        )
        samples = (image.name, prompts)
    report = write_report(args.out, records, samples=samples)
    if failed is not None:
        print(f"[demo] stage {failed['name']} failed ({failed['error']}); rerun: {failed['command']}", file=sys.stderr)
        print(f"[demo] partial report: {report}", file=sys.stderr)
        return 1
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
