"""How far can a SpatialScore critic be trusted on the tiny generator's own 32 px samples?

Draws GRPO's rollout (configs/rl/reward_oracle.yaml's sampler: 6 steps, SDE noise on step 0, one initial noise per
group, true CFG 3, 32 px) of G = 24 samples for each of P training prompts from the base generator, once (cached in
--images), then scores every image with the SpatialWorld oracle (binary: share of stated relations that hold) and
with each critic. Reported per critic: agreement = share of same-prompt sample pairs that the oracle tells apart
and the critic orders the same way (what `train/critic_oracle_agreement` logs at step 0 of a GRPO run; 0.5 is
chance), and the same over the pairs GRPO trains on (top-6 against bottom-6 of the critic's ranking).

--critic NAME=DIR[@MIN_PIXELS]: a reward export dir; @MIN_PIXELS overrides its processor's min_pixels, so that a
32 px image is resized up to the token grid the critic was trained on (19600 = 140 x 140, 10 x 10 patches, as the
128 px SpatialWorld images) instead of the processor's floor (3136 = 56 x 56, 2 x 2 tokens).

    OMP_NUM_THREADS=1 python experiments/rl_tiny/critic_agreement.py --prompts 16 \
        --critic clean=runs/reward/tiny/export --critic upscaled=runs/reward/tiny/export@19600
"""

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from data_synthesis import SpatialWorldOracle
from reward_model import SpatialScorer
from reward_model.model import set_pixel_range
from rl_policy.data import load_prompts
from rl_policy.rollout import sample_trajectories
from rl_policy.training import PolicySpec

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--pipeline", default="checkpoints/generator_tiny/pipeline")
parser.add_argument("--data", default="data/spatialworld-rl")
parser.add_argument("--prompts", type=int, default=16)
parser.add_argument("--group-size", type=int, default=24)
parser.add_argument("--images", default="runs/rl/critic_agreement_images.safetensors", help="rollout cache")
parser.add_argument("--critic", action="append", required=True, help="NAME=DIR[@MIN_PIXELS]")
parser.add_argument("--out", default=None)
arguments = parser.parse_args()
torch.set_num_threads(1)

records = load_prompts(arguments.data, "train")[: arguments.prompts]
group = arguments.group_size
cache = Path(arguments.images)
started = time.perf_counter()
if cache.is_file():
    images = load_file(str(cache))["images"]  # [P * G, 3, 32, 32] uint8
    assert len(images) == len(records) * group, f"{cache} holds {len(images)} images, not {len(records)} x {group}"
else:
    policy = PolicySpec(pipeline=arguments.pipeline, strict_prompt_length=True).build()
    drawn = []
    for index, record in enumerate(records):
        with torch.no_grad():
            trajectory = sample_trajectories(
                policy, [record.prompt], group, height=32, width=32, num_steps=6, noise_level=0.8, sde_steps=[0],
                cfg_scale=3.0, shared_noise=True, generator=torch.Generator().manual_seed(1000 * index),
            )  # fmt: skip
            decoded = policy.decode(trajectory.latents[:, -1], 32, 32)  # [G, 3, 32, 32] in [0, 1]
        drawn.append((decoded.clamp(0, 1) * 255).round().to(torch.uint8))
    images = torch.cat(drawn)
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_file({"images": images.contiguous()}, str(cache))
print(f"{len(images)} images ready: {time.perf_counter() - started:.0f} s", flush=True)

prompts = [record.prompt for record in records for _ in range(group)]
metadata = [record.metadata for record in records for _ in range(group)]
oracle = SpatialWorldOracle()(prompts=prompts, images=list(images), metadata=metadata).float().view(-1, group)


def agreement(critic: torch.Tensor, reference: torch.Tensor, keep: int | None = None) -> float:
    """Share of same-prompt pairs with different `reference` values that `critic` orders the same way ([P, G])."""
    agree, decided = 0, 0
    for scores, truth in zip(critic, reference, strict=True):
        rows = torch.arange(len(scores))
        if keep is not None:  # GRPO's trained pairs: top-k against bottom-k of the critic's ranking
            order = scores.argsort(descending=True)
            rows = torch.cat([order[:keep], order[-keep:]])
        s, t = scores[rows], truth[rows]
        critic_order = torch.sign(s[:, None] - s[None, :])
        oracle_order = torch.sign(t[:, None] - t[None, :])
        mask = torch.triu(oracle_order != 0, diagonal=1)
        agree += int((critic_order == oracle_order)[mask].sum())
        decided += int(mask.sum())
    return agree / decided if decided else float("nan")


report = {
    "prompts": len(records),
    "group_size": group,
    "oracle_mean_accuracy": float(oracle.mean()),
    "decided_pairs": None,
    "critics": {},
}
for spec in arguments.critic:
    name, _, location = spec.partition("=")
    directory, _, min_pixels = location.partition("@")
    scorer = SpatialScorer.from_pretrained(directory)
    if min_pixels:
        set_pixel_range(scorer.network.processor, int(min_pixels), None)
    began = time.perf_counter()
    mean = scorer(prompts=prompts, images=list(images)).float().view(-1, group)
    report["critics"][name] = {
        "dir": directory,
        "min_pixels": int(min_pixels) if min_pixels else None,
        "agreement_all_pairs": agreement(mean, oracle),
        "agreement_top6_vs_bottom6": agreement(mean, oracle, keep=6),
        "seconds": time.perf_counter() - began,
    }
    print(name, json.dumps(report["critics"][name]), flush=True)
report["decided_pairs"] = sum(
    int(torch.triu(torch.sign(t[:, None] - t[None, :]) != 0, diagonal=1).sum()) for t in oracle
)
print(json.dumps(report, indent=2))
if arguments.out:
    Path(arguments.out).write_text(json.dumps(report, indent=2) + "\n")
