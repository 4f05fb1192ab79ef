"""GRPO iteration time on this machine, split into sampling / reward / training, and the training compute that
top-k/bottom-k filtering saves (training only the 2k kept samples of each group of G vs all G).

Run with `make bench` (or `python bench/rl_speed.py --help`). The policy is the tiny generator of `make
pretrain-generator` when it exists (else the tiny pipeline with random weights: the timings are the same); the
reward is the SpatialWorld oracle plus a 1e-3 brightness term (so that no group is all equal); the prompts come
from `data/spatialworld-rl` (else a small dataset built into a temporary directory). The second of two iterations is
timed: read the numbers as rough.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import Trainer

from data_synthesis import SpatialWorldOracle
from data_synthesis.build import BuildConfig, build
from rl_policy import GroupSettings, GRPOModule, SamplerSettings, UpdateSettings, WeightedReward
from rl_policy.data import PromptBatch, PromptDataModule
from rl_policy.training import TINY, PolicySpec


class Timed:
    """Wraps a reward and accumulates the seconds spent in it."""

    def __init__(self, reward) -> None:
        self.reward, self.seconds = reward, 0.0

    def __call__(self, **kwargs) -> torch.Tensor:
        start = time.perf_counter()
        try:
            return self.reward(**kwargs)
        finally:
            self.seconds += time.perf_counter() - start


class Brightness:
    """Mean pixel value; mixed into the reward with a tiny weight so that every group has a spread to train on
    even when the oracle scores all of an untrained generator's samples 0."""

    def __call__(self, *, prompts, images, metadata=None) -> torch.Tensor:
        return torch.stack([torch.as_tensor(image).float().mean() for image in images])


class TimedGRPO(GRPOModule):
    """GRPOModule recording, per iteration, the seconds of the rollout (sampling + reward) and of the whole step."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.times: list[dict[str, float]] = []

    def rollout(self, batch: PromptBatch):
        self.reward.seconds = 0.0
        start = time.perf_counter()
        result = super().rollout(batch)
        self.times.append({"rollout": time.perf_counter() - start, "reward": self.reward.seconds})
        return result

    def training_step(self, batch: PromptBatch, batch_idx: int) -> None:
        start = time.perf_counter()
        super().training_step(batch, batch_idx)
        self.times[-1]["step"] = time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default="runs/rl/generator/pipeline", help="a pretrained tiny generator dir")
    parser.add_argument("--data", type=Path, default=Path("data/spatialworld-rl"))
    parser.add_argument("--group-size", type=int, default=24)
    parser.add_argument("--keep-per-side", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=2, help="prompts per iteration")
    args = parser.parse_args()
    pipeline = args.pipeline if Path(args.pipeline, "model_index.json").is_file() else TINY
    with tempfile.TemporaryDirectory() as scratch:
        data = args.data
        if not (data / "pairs.parquet").is_file():
            data = Path(scratch)
            build(BuildConfig(num_pairs=40, seed=1, min_objects=2, max_objects=2), data, workers=1, progress=False)
        results = {}
        for label, keep in (("top-k/bottom-k", args.keep_per_side), ("all G", None)):
            torch.manual_seed(0)
            module = TimedGRPO(
                PolicySpec(pipeline=pipeline, strict_prompt_length=True).build(),
                Timed(WeightedReward([SpatialWorldOracle(), Brightness()], [1.0, 1e-3])),
                functools.partial(torch.optim.AdamW, lr=3e-4),
                sampler=SamplerSettings(resolution=32, num_steps=6, cfg_scale=3.0),
                groups=GroupSettings(group_size=args.group_size, keep_per_side=keep),
                updates=UpdateSettings(micro_batch_size=args.group_size),
                eval_every_n_steps=0,
                image_every_n_steps=0,
            )
            trainer = Trainer(
                accelerator="cpu",
                max_steps=2,  # the first iteration is a warm-up
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                default_root_dir=scratch,
            )
            trainer.fit(module, PromptDataModule(data, prompts_per_step=args.prompts, num_eval_prompts=1))
            last = module.times[-1]
            results[label] = {
                "sampling": last["rollout"] - last["reward"],
                "reward": last["reward"],
                "training": last["step"] - last["rollout"],
            }
    print(f"GRPO iteration ({pipeline}, {args.prompts} prompts x G = {args.group_size}, 6 steps, 32 px, true CFG)")
    for label, parts in results.items():
        total = sum(parts.values())
        split = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in parts.items())
        print(f"  {label:15s}: {total:6.2f} s ({split})")
    saved = results["all G"]["training"] / max(results["top-k/bottom-k"]["training"], 1e-9)
    print(f"  training time, all G / kept only: {saved:.2f}x (ideal {args.group_size / (2 * args.keep_per_side):.1f}x)")


if __name__ == "__main__":
    main()
