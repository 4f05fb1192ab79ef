"""Paired base-vs-RL evaluation with the policy's own ODE sampler (GRPOModule.evaluate, what ExportPolicy runs) on
more test prompts than the run's end-of-fit evaluation:

    OMP_NUM_THREADS=1 python experiments/rl_tiny/evaluate_paired.py --run runs/rl/tiny-oracle --prompts 200 --seeds 2
"""

import argparse
import json
import time

import torch

from data_synthesis import SpatialWorldOracle
from rl_policy.data import load_prompts
from rl_policy.module import GRPOModule
from rl_policy.policy import reference_policy
from rl_policy.training import PolicySpec

parser = argparse.ArgumentParser()
parser.add_argument("--run", default="runs/rl/tiny-oracle")
parser.add_argument("--pipeline", default="runs/rl/generator/pipeline")
parser.add_argument("--data", default="data/spatialworld-rl")
parser.add_argument("--prompts", type=int, default=200)
parser.add_argument("--seeds", type=int, default=2)
parser.add_argument("--ckpt", default="last.ckpt", help="file name under <run>/checkpoints")
parser.add_argument("--steps", type=int, default=20, help="ODE steps of the evaluation sampler (configs: 20)")
parser.add_argument("--skip-base", action="store_true", help="the base half is the same for every run")
arguments = parser.parse_args()
torch.set_num_threads(1)
oracle = SpatialWorldOracle()
policy = PolicySpec(pipeline=arguments.pipeline, strict_prompt_length=True).build()
state = torch.load(f"{arguments.run}/checkpoints/{arguments.ckpt}", map_location="cpu", weights_only=False)
ema_decay = state.get("hyper_parameters", {}).get("ema_decay")  # a run with one: evaluate its EMA, as its export does
module = GRPOModule(
    policy,
    oracle,
    torch.optim.AdamW,
    oracle=oracle,
    resolution=32,
    eval_num_steps=arguments.steps,
    cfg_scale=3.0,
    ema_decay=ema_decay,
)
result = module.load_state_dict(state["state_dict"], strict=False)
assert not result.unexpected_keys and len(state["state_dict"]) > 0, result
module.on_load_checkpoint(state)  # the EMA (and counters), which `evaluate` samples with
records = load_prompts(arguments.data, "test")[: arguments.prompts]
prompts, metadata = [r.prompt for r in records], [r.metadata for r in records]
started = time.perf_counter()
base = None
if not arguments.skip_base:
    with reference_policy(module.transformer):
        base = module.evaluate(prompts, metadata, seeds=arguments.seeds)
final = module.evaluate(prompts, metadata, seeds=arguments.seeds)
report = {
    "run": arguments.run,
    "global_step": state["global_step"],
    "weights": "current" if module.ema is None else "ema",
    "prompts": len(prompts),
    "seeds": arguments.seeds,
    "steps": arguments.steps,
    "base": base,
    "final": final,
    "seconds": time.perf_counter() - started,
}
print(json.dumps(report, indent=2))
