"""What GRPO's rollouts can find: per prompt, the oracle's verdicts on G samples of the training sampler.

For P test prompts, G samples each with configs/rl/reward_oracle.yaml's rollout sampler (6 steps, SDE noise level
0.8 on step 0 only, one initial noise per group, true CFG 3, 32 px), from the base generator or from a run's
checkpoint (`--run`, `--ckpt`). Reported, averaged over prompts: the group's mean relation accuracy (what GRPO
raises), the best sample's relation accuracy (best-of-G), the share of prompts with at least one sample confirming
every stated relation, and the same for "every object found". GRPO only reinforces what its rollouts contain, so
best-of-G bounds what one round of it can pull the mean towards.

    OMP_NUM_THREADS=1 python experiments/rl_tiny/best_of_group.py --prompts 100 [--run runs/rl/tiny-oracle-seed1]
"""

import argparse
import json
import time

import torch

from data_synthesis import SpatialWorldOracle
from rl_policy.data import load_prompts
from rl_policy.module import GRPOModule
from rl_policy.rollout import sample_trajectories
from rl_policy.training import PolicySpec

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--pipeline", default="checkpoints/generator_tiny/pipeline")
parser.add_argument("--data", default="data/spatialworld-rl")
parser.add_argument("--prompts", type=int, default=100)
parser.add_argument("--group-size", type=int, default=24)
parser.add_argument("--run", default=None, help="a run dir; without it, the base generator")
parser.add_argument("--ckpt", default="last.ckpt", help="file name under <run>/checkpoints")
parser.add_argument("--out", default=None)
arguments = parser.parse_args()
torch.set_num_threads(1)
oracle = SpatialWorldOracle()
policy = PolicySpec(pipeline=arguments.pipeline, strict_prompt_length=True).build()
if arguments.run is not None:
    state = torch.load(f"{arguments.run}/checkpoints/{arguments.ckpt}", map_location="cpu", weights_only=True)
    module = GRPOModule(policy, oracle, torch.optim.AdamW, resolution=32)
    result = module.load_state_dict(state["state_dict"], strict=False)
    assert not result.unexpected_keys and len(state["state_dict"]) > 0, result
records = load_prompts(arguments.data, "test")[: arguments.prompts]
group = arguments.group_size
started = time.perf_counter()
rows = []
for index, record in enumerate(records):
    with torch.no_grad():
        trajectory = sample_trajectories(
            policy, [record.prompt], group, height=32, width=32, num_steps=6, noise_level=0.8, sde_steps=[0],
            cfg_scale=3.0, shared_noise=True, generator=torch.Generator().manual_seed(7919 * index + 1),
        )  # fmt: skip
        images = policy.decode(trajectory.latents[:, -1], 32, 32).cpu()
    verdicts = [oracle.judge(image, record.metadata) for image in images]
    accuracy = torch.tensor([v.accuracy for v in verdicts])  # [G]
    found = torch.tensor([float(v.all_found) for v in verdicts])  # [G]
    rows.append((accuracy.mean(), accuracy.max(), (accuracy == 1).any(), found.mean(), found.max()))
    if (index + 1) % 10 == 0:
        print(f"prompt {index + 1}/{len(records)}: {time.perf_counter() - started:.0f} s", flush=True)
mean = torch.tensor([[float(x) for x in row] for row in rows]).mean(0)
report = {
    "run": arguments.run or "base",
    "ckpt": arguments.ckpt if arguments.run else None,
    "prompts": len(records),
    "group_size": group,
    "relation_accuracy_group_mean": float(mean[0]),
    "relation_accuracy_best_of_group": float(mean[1]),
    "prompts_with_a_sample_confirming_every_relation": float(mean[2]),
    "all_found_group_mean": float(mean[3]),
    "prompts_with_a_sample_finding_every_object": float(mean[4]),
    "seconds": time.perf_counter() - started,
}
print(json.dumps(report, indent=2))
if arguments.out:
    with open(arguments.out, "w") as handle:
        json.dump(report, handle, indent=2)
