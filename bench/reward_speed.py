"""Reward-model speed on this machine: scoring throughput batched vs one pair at a time, and training step time.

Run with `make bench` (or `python bench/reward_speed.py --help`). The network is the one a config names (default
`configs/reward/tiny.yaml`, built exactly as `fit` builds it), scored through `SpatialScorer` (the path the RL critic
and the benchmarks use) on SpatialWorld pairs: the test split of `--dataset` when it exists, otherwise a small dataset
built into a temporary directory. Prints one line per measurement and the batched / one-at-a-time ratio, and the ratio
of length buckets under a token budget (`SpatialScorer(max_batch_tokens=...)`, default budget batch size x the median
row length, so batches hold the same tokens on average) to fixed batches. Timings come from one run each, after a
warm-up: read them as rough numbers.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml

from data_synthesis.build import BuildConfig, build
from reward_model.data import PairCollator, PairwiseDataModule
from reward_model.module import RewardModule
from reward_model.scorer import SpatialScorer, to_pil


def instantiate(spec: dict[str, Any]) -> Any:
    """A `class_path` / `init_args` block of a LightningCLI config -> the object (or the function's result)."""
    module_name, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module_name), name)(**(spec.get("init_args") or {}))


def optimizer_factory(spec: dict[str, Any]):
    module_name, _, name = spec["class_path"].rpartition(".")
    optimizer_class = getattr(importlib.import_module(module_name), name)
    return lambda parameters: optimizer_class(parameters, **(spec.get("init_args") or {}))


def dataset_dir(requested: Path, scratch: Path) -> Path:
    if (requested / "pairs.parquet").is_file():
        return requested
    build(BuildConfig(num_pairs=96, seed=7, resolution=128), scratch, workers=1, progress=False)
    return scratch


def time_scoring(scorer: SpatialScorer, prompts: list[str], images: list[Path], batch_size: int) -> float:
    """Rows per second of `scorer.score` at `batch_size` (after one warm-up batch)."""
    scorer.score(prompts=prompts[:batch_size], images=images[:batch_size], batch_size=batch_size)
    start = time.perf_counter()
    scorer.score(prompts=prompts, images=images, batch_size=batch_size)
    return len(prompts) / (time.perf_counter() - start)


def time_training_steps(module: RewardModule, batch, steps: int) -> list[float]:
    """Seconds per optimizer step (forward of 2B sequences, loss, backward, AdamW), after two warm-up steps."""
    optimizer = module.configure_optimizers()
    module.train()
    durations = []
    for step in range(steps + 2):
        start = time.perf_counter()
        loss = module.pair_loss(*module.pair_scores(batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= 2:
            durations.append(time.perf_counter() - start)
    return durations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/reward/tiny.yaml"), help="a reward fit config")
    parser.add_argument("--dataset", type=Path, default=Path("data/spatialworld"), help="a SpatialWorld dataset dir")
    parser.add_argument("--rows", type=int, default=256, help="(prompt, image) rows to score")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per forward pass when batched")
    parser.add_argument("--max-batch-tokens", type=int, default=None, help="token budget (default: see above)")
    parser.add_argument("--train-pairs", type=int, default=8, help="pairs per training step")
    parser.add_argument("--train-steps", type=int, default=10, help="timed training steps")
    args = parser.parse_args()
    config = yaml.safe_load(args.config.read_text())
    torch.manual_seed(0)
    network = instantiate(config["model"]["network"])
    with tempfile.TemporaryDirectory() as scratch:
        directory = dataset_dir(args.dataset, Path(scratch))
        frame = pd.read_parquet(directory / "pairs.parquet")
        frame = frame[frame["split"] == "test"] if (frame["split"] == "test").any() else frame
        rows = frame.head((args.rows + 1) // 2)
        prompts = [prompt for prompt in rows["prompt"] for _ in range(2)][: args.rows]
        images = [
            directory / p for pair in zip(rows["perfect_image"], rows["perturbed_image"], strict=True) for p in pair
        ]
        images = images[: args.rows]

        print(
            f"reward model ({args.config}, {sum(p.numel() for p in network.parameters()) / 1e6:.2f}M parameters, "
            f"{torch.get_num_threads()} threads), {len(prompts)} rows of {directory}"
        )
        scorer = SpatialScorer.from_network(network)
        batched = time_scoring(scorer, prompts, images, args.batch_size)
        single = time_scoring(scorer, prompts, images, 1)
        print(f"  scoring, batch {args.batch_size:3d}: {batched:8.1f} images/s")
        print(f"  scoring, batch   1: {single:8.1f} images/s")
        print(f"  batched / one at a time: {batched / single:.2f}x")
        if args.max_batch_tokens is None:
            costs = [scorer._cost(prompt, to_pil(image)) for prompt, image in zip(prompts, images, strict=True)]
            args.max_batch_tokens = args.batch_size * int(statistics.median(costs))
        bucketed_scorer = SpatialScorer.from_network(network, max_batch_tokens=args.max_batch_tokens)
        bucketed = time_scoring(bucketed_scorer, prompts, images, 4 * args.batch_size)
        print(
            f"  scoring, buckets of <= {args.max_batch_tokens} tokens (<= {4 * args.batch_size} rows): "
            f"{bucketed:8.1f} images/s"
        )
        print(f"  token-budget buckets / batches of {args.batch_size}: {bucketed / batched:.2f}x")

        datamodule = PairwiseDataModule(directory, network.processor, batch_size=args.train_pairs, orientation="both")
        datamodule.setup("test" if (frame["split"] == "test").any() else None)
        split = "test" if "test" in datamodule.records else next(iter(datamodule.records))
        dataset = datamodule.dataset(split)
        batch = PairCollator(network.processor)([dataset[index] for index in range(args.train_pairs)])
        module = RewardModule(
            network, optimizer_factory(config["model"]["optimizer"]), config["model"].get("loss", "gaussian_bt")
        )
        durations = time_training_steps(module, batch, args.train_steps)
        median = statistics.median(durations)
        print(
            f"  training step ({args.train_pairs} pairs = {2 * args.train_pairs} sequences): {median * 1000:7.1f} ms "
            f"median of {len(durations)} ({1 / median:.2f} steps/s)"
        )


if __name__ == "__main__":
    main()
