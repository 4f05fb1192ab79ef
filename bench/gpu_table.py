"""The table of bench/gpu_check.sh: one row per measured path of each run's JSON (bench/reward_gpu.py,
bench/rl_gpu.py) in a folder: time, model FLOPs, MFU (bench/flops.py's convention and peak) and peak memory; a run
without JSON (failed, timed out, skipped) gets a row saying so with the last line of its log.

    python bench/gpu_table.py reports/gpu
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ORDER = ("reward-before", "reward-after", "reward-compiled", "policy-before", "policy-after", "policy-after-flash")
ORDER += ("policy-compiled",)


def reward_rows(report: dict) -> list[tuple[str, str, float | None, float | None, float | None]]:
    """(path, time, TFLOP, MFU, peak GiB) rows of a reward_gpu.py report."""
    pairs = report["pairs_per_step"]
    checkpointing = "checkpointing" if report["gradient_checkpointing"] else "no checkpointing"
    rows = [
        (
            f"SpatialScore 7B training, {pairs} pairs per step, {checkpointing}",
            f"{report['train_step_seconds']:.3f} s/step",
            report["train_step_flop"] / 1e12,
            report["train_mfu"],
            report["train_peak_memory_gib"],
        ),
        (
            f"SpatialScore 7B scoring, batch {report['score_batch']}",
            f"{report['score_images_per_second']:.1f} images/s",
            report["score_flop_per_image"] / 1e12,
            report["score_mfu"],
            report["score_peak_memory_gib"],
        ),
    ]
    if "scorer_rows" in report:
        budget = report["scorer_max_batch_tokens"]
        batching = f"buckets of <= {budget} tokens" if budget else f"batches of {report['score_batch']}"
        rows.append(
            (
                f"SpatialScorer, {report['scorer_rows']} rows of 10-{report['prompt_words']} words, {batching}",
                f"{report['scorer_images_per_second']:.1f} images/s",
                None,
                report["scorer_mfu"],
                report["scorer_peak_memory_gib"],
            )
        )
    return rows


def policy_rows(report: dict) -> list[tuple[str, str, float | None, float | None, float | None]]:
    """(path, time, TFLOP, MFU, peak GiB) rows of an rl_gpu.py report."""
    switches = report["switches"]
    how = f"{'compiled' if switches['compile'] else 'eager'}"
    rows = [
        (
            f"GRPO sampling, group {report['group']} x {report['steps']} steps, "
            f"{switches['sample_batch']} per forward, attention {switches['sampling_attention'] or 'default'}, {how}",
            f"{report['sampling_seconds_per_group']:.2f} s",
            report["sampling_flop"] / 1e12,
            report["sampling_mfu"],
            report["sampling_peak_memory_gib"],
        ),
        (
            f"{report['objective'].upper()} training, {report['trained_pairs']} pairs, "
            f"{switches['train_batch']} per forward, beta {switches['beta']}, "
            f"attention {switches['training_attention'] or 'default'}, {how}",
            f"{report['training_seconds_kept_samples']:.2f} s",
            report["training_flop"] / 1e12,
            report["training_mfu"],
            report["training_peak_memory_gib"],
        ),
    ]
    if report.get("critic_flop") is not None:
        rows.append(
            (
                "critic (7B) scoring the group, batch 8",
                f"{report['critic_scoring_seconds_per_group']:.2f} s",
                report["critic_flop"] / 1e12,
                report["critic_mfu"],
                None,
            )
        )
        total = report["sampling_flop"] + report["critic_flop"] + report["training_flop"]
        rows.append(
            (
                "end to end, one group: sample + score + train the kept",
                f"{report['end_to_end_seconds']:.2f} s",
                total / 1e12,
                total / report["end_to_end_seconds"] / 989e12,
                report["peak_memory_gib"],
            )
        )
    return rows


def table(folder: Path) -> str:
    lines = ["| run | path | time | TFLOP | MFU | peak GiB |", "|---|---|---|---|---|---|"]
    labels = [label for label in ORDER if (folder / f"{label}.log").exists() or (folder / f"{label}.json").exists()]
    for label in labels:
        path = folder / f"{label}.json"
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            log = folder / f"{label}.log"
            last = log.read_text().strip().splitlines()[-1:] if log.exists() else ["no log"]
            lines.append(f"| {label} | no result: {(last or ['empty log'])[0][:150]} | | | | |")
            continue
        rows = reward_rows(report) if "train_step_seconds" in report else policy_rows(report)
        for name, time, tflop, mfu, peak in rows:
            tflop_text = "" if tflop is None else f"{tflop:.2f}"
            mfu_text = "" if mfu is None else f"{100 * mfu:.1f}%"
            peak_text = "" if peak is None else f"{peak:.1f}"
            lines.append(f"| {label} | {name} | {time} | {tflop_text} | {mfu_text} | {peak_text} |")
    devices = set()
    for path in folder.glob("*.json"):
        try:
            devices.add(json.loads(path.read_text())["device"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            continue
    lines.append(
        f"\nDevice: {', '.join(sorted(devices)) or 'none'}; MFU against 989 TFLOP/s bf16 dense (bench/flops.py)."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the output folder of bench/gpu_check.sh")
    print(table(parser.parse_args().folder))
