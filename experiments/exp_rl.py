"""`make exp-rl`: the RL comparison of the embedded default (not in CI: about 10-20 CPU-minutes per run).

Runs, each `python -m rl_policy fit` on configs/rl/tiny.yaml with the reward's overlay (configs/rl/reward_*.yaml, which
changes only the reward), in this order:
- `<reward>-layout-s<seed>`: tiny.yaml's recipe (SDE noise on the first, layout, step only with one initial noise per
  group, every sample of each group of 24 trained, lr 1e-3, 115 steps) for 3 seeds;
- with the critic: `oracle-layout-s<seed>`, the SpatialWorld oracle as reward (what a perfect critic gives) on the
  same seeds: the reference the critic's gain is measured against, at the same budget;
- `geneval-layout-s<seed>`: the GenEval-rule reward (the paper's Flow-GRPO* baseline), same seeds;
- then the same rewards under the paper's recipe (`-topk`: configs/rl/recipe_topk.yaml, SDE on every step but the
  last, top-6 and bottom-6 of each group, lr 3e-4, 120 steps);
where <reward> is the SpatialScore critic (default) or the SpatialWorld oracle (`--reward oracle`). Every reward is
so measured under both recipes, and within one recipe the runs differ only in `model.reward`.
`--only CONFIGURATION ...` runs only those configurations (two processes can then share the runs on two cores).

Every run writes into `<out>/<name>/` (its own checkpoints, TensorBoard logs, `lora/`, `metrics.json`); a run whose
`metrics.json` exists is not run again, and a killed run resumes from its `checkpoints/last.ckpt`. Then:
- `<out>/comparison.md`: per configuration, mean and standard deviation over seeds of the paired base-vs-trained
  evaluation (oracle relation accuracy, the same among samples where every object was found, share of samples with
  every object found, the training reward), the gain in points, and each seed's numbers; and per relation family
  the accuracy among all-found samples, base -> RL, with the relation counts behind it;
  and per recipe with all three rewards, the critic against the references by issue 18's item 6 (`critic_verdict`:
  at least 0.7x the oracle's gain, placement among all-found not falling, above the GenEval rules by more than
  the seeds' spread);
- `<out>/curves.png`: held-out oracle relation accuracy (`eval/oracle_accuracy`) against GRPO steps, one line per run.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from benchmarks.charts import line_chart  # noqa: E402
from shared import atomic_write_bytes, atomic_write_text  # noqa: E402

OVERLAYS = {
    "spatialscore": None,
    "oracle": "configs/rl/reward_oracle.yaml",
    "geneval": "configs/rl/reward_geneval.yaml",
}
RECIPES = {"layout": None, "topk": "configs/rl/recipe_topk.yaml"}  # recipe -> its overlay of tiny.yaml
METRICS = (
    ("oracle_accuracy", "oracle relation accuracy"),
    ("relation_accuracy_all_found", "among samples with every object found"),
    ("all_found", "every object found"),
    ("reward", "training reward"),
)
CURVE_TAG = "eval/oracle_accuracy"


@dataclass(frozen=True)
class Run:
    name: str
    reward: str
    seed: int
    recipe: str = "layout"  # a key of RECIPES

    @property
    def configuration(self) -> str:
        return self.name.rsplit("-s", 1)[0]


def plan(reward: str, seeds: Sequence[int]) -> list[Run]:
    """The runs of the comparison, in the order they are run (module docstring)."""
    rewards = [reward, "oracle", "geneval"] if reward == "spatialscore" else [reward, "geneval"]
    return [
        Run(f"{name}-{recipe}-s{seed}", name, seed, recipe) for recipe in RECIPES for name in rewards for seed in seeds
    ]


def overlay(run: Run, run_dir: Path) -> dict[str, Any]:
    """The last config of a run: its dir, its own checkpoints and its seed."""
    return {
        "seed_everything": run.seed,
        "trainer": {
            "default_root_dir": str(run_dir),
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {
                        "dirpath": str(run_dir / "checkpoints"),
                        "save_last": True,
                        "every_n_train_steps": 10,
                    },
                }
            ],
        },
        "data": {"seed": run.seed},
    }


def command(run: Run, run_dir: Path, extra: Sequence[str] = ()) -> list[str]:
    """`python -m rl_policy fit` for one run (writing its overlay into the run dir), resuming when it can."""
    run_dir.mkdir(parents=True, exist_ok=True)
    overlay_path = run_dir / "overlay.yaml"
    atomic_write_text(
        overlay_path, "# python -m rl_policy fit --config (exp-rl overlay)\n" + yaml.safe_dump(overlay(run, run_dir))
    )
    argv = [sys.executable, "-m", "rl_policy", "fit", "--config", "configs/rl/tiny.yaml"]
    for extra_config in (RECIPES[run.recipe], OVERLAYS[run.reward]):
        if extra_config is not None:
            argv += ["--config", extra_config]
    argv += ["--config", str(overlay_path), *extra]
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        argv += ["--ckpt_path", str(last)]
    return argv


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value); NaN values are left out."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def _number(value: Any) -> float:
    """A metrics.json value as a float: null (nothing to measure) and absent keys as NaN."""
    return math.nan if value is None else float(value)


def summarize(results: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """{run name: metrics.json} -> {configuration: {metric: {base, final, gain: (mean, std)}, seeds: n}}.

    The gain is final - base per seed (paired), then averaged."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for name, metrics in sorted(results.items()):
        groups.setdefault(name.rsplit("-s", 1)[0], []).append(metrics)
    table: dict[str, dict[str, Any]] = {}
    for configuration, runs in groups.items():
        row: dict[str, Any] = {"seeds": len(runs)}
        for metric, _ in METRICS:
            base = [_number(r.get(f"{metric}_base")) for r in runs]
            final = [_number(r.get(f"{metric}_final")) for r in runs]
            row[metric] = {
                "base": mean_std(base),
                "final": mean_std(final),
                "gain": mean_std([f - b for b, f in zip(base, final, strict=True)]),
            }
        row["families"] = summarize_families(runs)
        table[configuration] = row
    return table


def summarize_families(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per relation family, over the seeds of one configuration: accuracy among all-found samples (base, final,
    paired gain: mean and std) and the mean relation count behind base and final; families without a relation left
    out."""
    families: dict[str, dict[str, Any]] = {}
    for family in sorted({f for r in runs for f in r.get("num_relations_all_found_by_family_final", {})}):
        rates, counts = {}, {}
        for side in ("base", "final"):
            values = [r.get(f"relation_accuracy_all_found_by_family_{side}", {}).get(family) for r in runs]
            rates[side] = [math.nan if value is None else float(value) for value in values]
            counts[side] = statistics.fmean(
                float(r.get(f"num_relations_all_found_by_family_{side}", {}).get(family, 0)) for r in runs
            )
        if counts["base"] == 0 and counts["final"] == 0:
            continue
        families[family] = {
            "base": mean_std(rates["base"]),
            "final": mean_std(rates["final"]),
            "gain": mean_std([f - b for b, f in zip(rates["base"], rates["final"], strict=True)]),
            "count_base": counts["base"],
            "count_final": counts["final"],
        }
    return families


def fmt(pair: tuple[float, float], scale: float = 100.0) -> str:
    mean, std = pair
    return "n/a" if math.isnan(mean) else f"{scale * mean:.1f} ± {scale * std:.1f}"


def critic_verdict(table: Mapping[str, Mapping[str, Any]], recipe: str, critic: str = "spatialscore") -> dict | None:
    """Does the critic's RL beat the references under one recipe (issue 18, item 6)? None unless the critic, the
    oracle and the GenEval rules all have runs under it.

    On the paired gains in oracle relation accuracy (mean and sample std over seeds): the critic's gain must be at
    least 0.7x the oracle's, its accuracy among all-found samples must not fall (mean gain >= 0), and its gain must
    exceed the GenEval rules' by more than the seeds' spread, the larger std of the two (a difference smaller than
    the spread is not a win). Also returned: Welch's standard error of that difference, for the reader."""
    rows = {name: table.get(f"{name}-{recipe}") for name in (critic, "oracle", "geneval")}
    if any(row is None for row in rows.values()):
        return None
    (critic_gain, critic_std), (oracle_gain, _), (geneval_gain, geneval_std) = (
        rows[name]["oracle_accuracy"]["gain"] for name in (critic, "oracle", "geneval")
    )
    placement_gain = rows[critic]["relation_accuracy_all_found"]["gain"][0]
    difference, spread = critic_gain - geneval_gain, max(critic_std, geneval_std)
    welch = math.sqrt(critic_std**2 / rows[critic]["seeds"] + geneval_std**2 / rows["geneval"]["seeds"])
    ratio = critic_gain / oracle_gain if oracle_gain > 0 else math.nan  # no ratio to a reference that did not gain
    checks = {
        "at least 0.7x the oracle's gain": ratio >= 0.7,
        "placement among all-found not falling": placement_gain >= 0,
        "above the GenEval rules by more than the spread": difference > spread,
    }
    return {
        "recipe": recipe,
        "seeds": {name: rows[name]["seeds"] for name in rows},
        "ratio_to_oracle": ratio,
        "difference_to_geneval": difference,
        "spread": spread,
        "welch_standard_error": welch,
        "checks": checks,
        "win": all(checks.values()),
    }


def verdict_markdown(table: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The `critic_verdict` of every recipe with all three rewards, as markdown lines (none without)."""
    verdicts = [v for recipe in RECIPES if (v := critic_verdict(table, recipe)) is not None]
    if not verdicts:
        return []
    lines = ["", "## The critic against the references (issue 18, item 6)", ""]
    lines += ["Oracle relation accuracy gains; spread: the larger seed std of the critic and the GenEval rules.", ""]
    lines += [
        "| recipe | seeds (critic / oracle / GenEval) | critic / oracle | critic - GenEval | spread | "
        "Welch s.e. | checks | win |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        seeds = " / ".join(str(n) for n in v["seeds"].values())
        checks = "; ".join(f"{name}: {'yes' if ok else 'no'}" for name, ok in v["checks"].items())
        lines.append(
            f"| {v['recipe']} | {seeds} | {v['ratio_to_oracle']:.2f} | {100 * v['difference_to_geneval']:+.1f} | "
            f"{100 * v['spread']:.1f} | {100 * v['welch_standard_error']:.1f} | {checks} | "
            f"{'yes' if v['win'] else 'no'} |"
        )
    return lines


def comparison_markdown(table: Mapping[str, Mapping[str, Any]], results: Mapping[str, Mapping[str, Any]]) -> str:
    lines = ["# exp-rl: Flow-GRPO on the embedded default", ""]
    lines += ["Paired base-vs-trained evaluation on held-out prompts (same noise); mean ± std over seeds, in %.", ""]
    header = "| configuration | seeds | " + " | ".join(f"{label}: base -> RL (gain)" for _, label in METRICS) + " |"
    lines += [header, "|---|---|" + "---|" * len(METRICS)]
    for configuration, row in table.items():
        cells = [f"{fmt(row[m]['base'])} -> {fmt(row[m]['final'])} ({fmt(row[m]['gain'])})" for m, _ in METRICS]
        lines.append(f"| {configuration} | {row['seeds']} | " + " | ".join(cells) + " |")
    lines += verdict_markdown(table)
    lines += ["", "## Placement per relation family, among samples with every object found", ""]
    lines += ["Accuracy in %, base -> RL (paired gain), mean ± std over seeds; n: relations behind it, base / RL.", ""]
    lines += ["| configuration | family | base -> RL (gain) | n |", "|---|---|---|---|"]
    for configuration, row in table.items():
        for family, cell in row.get("families", {}).items():
            n = f"{cell['count_base']:.0f} / {cell['count_final']:.0f}"
            span = f"{fmt(cell['base'])} -> {fmt(cell['final'])} ({fmt(cell['gain'])})"
            lines.append(f"| {configuration} | {family} | {span} | {n} |")
    lines += ["", "## Runs", "", "| run | steps | GRPO seconds | oracle accuracy base -> RL |", "|---|---|---|---|"]
    for name, metrics in sorted(results.items()):
        base, final = metrics.get("oracle_accuracy_base"), metrics.get("oracle_accuracy_final")
        pair = "n/a" if base is None or final is None else f"{100 * base:.1f} -> {100 * final:.1f}"
        lines.append(f"| {name} | {metrics.get('global_step', '')} | {metrics.get('grpo_seconds', 0):.0f} | {pair} |")
    lines += ["", "![curves](curves.png)", ""]
    return "\n".join(lines)


def read_curve(run_dir: Path, tag: str = CURVE_TAG) -> list[tuple[int, float]]:
    """(step, value) of a scalar in the run's TensorBoard event files, sorted by step (last value per step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[int, float] = {}
    for events in sorted(run_dir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        if tag in accumulator.Tags().get("scalars", []):
            points |= {event.step: event.value for event in accumulator.Scalars(tag)}
    return sorted(points.items())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--reward", choices=("spatialscore", "oracle"), default="spatialscore")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/exp-rl"))
    parser.add_argument("--report-only", action="store_true", help="only write the comparison of the finished runs")
    parser.add_argument(
        "--only", nargs="+", metavar="CONFIGURATION", help="run only these configurations (e.g. oracle-layout)"
    )
    parser.add_argument("extra", nargs="*", help="more `python -m rl_policy fit` arguments for every run (after --)")
    args = parser.parse_args(argv)

    runs = plan(args.reward, args.seeds)
    configurations = {run.configuration for run in runs}
    unknown = sorted(set(args.only or ()) - configurations)
    if unknown:
        parser.error(
            f"--only: no configuration {', '.join(unknown)} in this plan; known: {', '.join(sorted(configurations))}"
        )
    failed = []
    for run in runs if not args.report_only else []:
        if args.only and run.configuration not in args.only:
            continue
        run_dir = args.out / run.name
        if (run_dir / "metrics.json").is_file():
            continue
        argv_run = command(run, run_dir, args.extra)
        print(f"[exp-rl] {run.name}: {' '.join(argv_run)}", flush=True)
        if subprocess.call(argv_run, cwd=REPO) != 0 or not (run_dir / "metrics.json").is_file():
            failed.append(run.name)
    results = {
        run.name: json.loads((args.out / run.name / "metrics.json").read_text())
        for run in runs
        if (args.out / run.name / "metrics.json").is_file()
    }
    if results:
        table = summarize(results)
        atomic_write_text(args.out / "comparison.md", comparison_markdown(table, results))
        curves = {name: read_curve(args.out / name) for name in results}
        chart = line_chart(
            curves,
            "held-out oracle relation accuracy",
            ylabel="oracle relation accuracy",
            colour_of={name: name.rsplit("-s", 1)[0] for name in curves},  # the seeds of a configuration
        )
        atomic_write_bytes(args.out / "curves.png", chart)
        print((args.out / "comparison.md").read_text())
    if failed:
        print(f"[exp-rl] failed runs (rerun `make exp-rl` to resume them): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
