"""Does the graded oracle reward raise the policy gradient's signal? A direct measurement at the pretrained policy.

For each of P training prompts, two independent rollouts of G samples (each its own initial noise and SDE noise;
GRPO's sampler as in configs/rl/reward_oracle.yaml: 6 steps, SDE noise on step 0 only, one initial noise per group,
true CFG 3); each image is scored by the binary oracle and by the graded one (same images, so only the reward
differs). For each reward and rollout, the GRPO policy gradient of that group alone (top-k/bottom-k of normalised
rewards, k = --keep, 6 as configured; first update: ratio = 1, no KL) is taken with respect to the LoRA weights.
Signal = cosine between the two rollouts' gradients of the same prompt (independent estimates of one expected
gradient: cos ~ |E g|^2 / E |g|^2 = SNR / (1 + SNR) per group), averaged over prompts; and the cosine between the
sums over all P prompts of each rollout set (what a P-prompt batch would see). Also: the share of groups whose
binary rewards tie entirely, and how often the two rewards pick different top/bottom sets.

    OMP_NUM_THREADS=1 python experiments/rl_tiny/gradient_signal.py --prompts 16 \
        --out experiments/rl_tiny/gradient_signal.json
"""

import argparse
import json
import time

import torch

from data_synthesis import SpatialWorldOracle
from rl_policy.data import PromptBatch, load_prompts
from rl_policy.grpo import filtered_advantages
from rl_policy.module import GRPOModule
from rl_policy.policy import trainable_parameters
from rl_policy.rollout import sample_trajectories
from rl_policy.training import PolicySpec

parser = argparse.ArgumentParser()
parser.add_argument("--pipeline", default="checkpoints/generator_tiny/pipeline")
parser.add_argument("--data", default="data/spatialworld-rl")
parser.add_argument("--prompts", type=int, default=16)
parser.add_argument("--temperature", type=float, default=0.05)
parser.add_argument("--keep", type=int, default=6, help="keep_per_side (12 of 24: every sample)")
parser.add_argument("--noise-level", type=float, default=0.8)
parser.add_argument("--noise-cell", type=int, default=None, help="coarse SDE noise (GRPOModule noise_cell)")
parser.add_argument("--antithetic", action="store_true", help="mirrored SDE noise (GRPOModule antithetic)")
parser.add_argument("--out", default=None)
arguments = parser.parse_args()
torch.set_num_threads(1)
torch.manual_seed(0)

binary, graded = SpatialWorldOracle(), SpatialWorldOracle(graded=True, temperature=arguments.temperature)
policy = PolicySpec(pipeline=arguments.pipeline, strict_prompt_length=True).build()
module = GRPOModule(
    policy, binary, torch.optim.AdamW, resolution=32, num_steps=6, noise_level=arguments.noise_level, sde_steps=[0],
    cfg_scale=3.0, shared_noise=True, beta=0.0, group_size=24, keep_per_side=6, noise_cell=arguments.noise_cell,
)  # fmt: skip
parameters = list(trainable_parameters(module.transformer).values())
records = load_prompts(arguments.data, "train")[: arguments.prompts]
started = time.perf_counter()


def group_gradient(batch, trajectory, rewards) -> torch.Tensor:
    """The GRPO gradient (flattened over the LoRA weights) of one group with these rewards [G]."""
    result = filtered_advantages(rewards[None], arguments.keep)
    samples = (result.keep & ~result.zero_variance[:, None]).flatten().nonzero().flatten()
    if not len(samples):
        return torch.zeros(sum(p.numel() for p in parameters))
    steps = torch.zeros_like(samples)  # the one SDE step
    for parameter in parameters:
        parameter.grad = None
    loss, _ = module._step_terms(batch, trajectory, samples, steps, result.advantages.flatten()[samples])
    loss.backward()
    return torch.cat([p.grad.flatten() for p in parameters]).clone()


gradients = {"binary": [[], []], "graded": [[], []]}
ties, different_sets = 0, 0
for index, record in enumerate(records):
    batch = PromptBatch([record.prompt_id], [record.prompt], [record.metadata])
    for rollout in range(2):
        generator = torch.Generator().manual_seed(1000 * index + rollout)
        with torch.no_grad():
            trajectory = sample_trajectories(
                policy, batch.prompts, 24, height=32, width=32, num_steps=6, noise_level=arguments.noise_level,
                sde_steps=[0], cfg_scale=3.0, shared_noise=True, generator=generator, noise=module.noise,
                antithetic=arguments.antithetic,
            )  # fmt: skip
            images = list(policy.decode(trajectory.latents[:, -1], 32, 32).cpu())
        metadata = [record.metadata] * len(images)
        scores = {
            name: reward(prompts=[record.prompt] * len(images), images=images, metadata=metadata).float()
            for name, reward in (("binary", binary), ("graded", graded))
        }
        ties += bool((scores["binary"] == scores["binary"][0]).all())
        keeps = {name: filtered_advantages(score[None], arguments.keep).keep for name, score in scores.items()}
        different_sets += bool((keeps["binary"] != keeps["graded"]).any())
        for name, score in scores.items():
            gradients[name][rollout].append(group_gradient(batch, trajectory, score))
    print(f"prompt {index + 1}/{len(records)}: {time.perf_counter() - started:.0f} s", flush=True)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    denominator = a.norm() * b.norm()
    return float(a @ b / denominator) if denominator > 0 else 0.0


report = {
    "prompts": len(records),
    "temperature": arguments.temperature,
    "keep_per_side": arguments.keep,
    "group_size": 24,
    "rollouts_per_prompt": 2,
    "noise_level": arguments.noise_level,
    "noise_cell": arguments.noise_cell,
    "antithetic": arguments.antithetic,
}
for name, (first, second) in gradients.items():
    per_prompt = [cosine(a, b) for a, b in zip(first, second, strict=True)]
    report[name] = {
        "mean_cosine_same_prompt": sum(per_prompt) / len(per_prompt),
        "cosine_per_prompt": per_prompt,
        "cosine_of_batch_sums": cosine(torch.stack(first).sum(0), torch.stack(second).sum(0)),
    }
report["cosine_binary_vs_graded_same_rollout"] = sum(
    cosine(a, b) for a, b in zip(gradients["binary"][0], gradients["graded"][0], strict=True)
) / len(records)
report["binary_groups_all_tied"] = ties / (2 * len(records))
report["groups_where_kept_sets_differ"] = different_sets / (2 * len(records))
report["seconds"] = time.perf_counter() - started
print(json.dumps(report, indent=2))
if arguments.out:
    with open(arguments.out, "w") as handle:
        json.dump(report, handle, indent=2)
