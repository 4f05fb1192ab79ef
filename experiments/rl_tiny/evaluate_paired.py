"""Paired base-vs-RL evaluation with the policy's own ODE sampler (GRPOModule.evaluate, what ExportPolicy runs) on
more test prompts than the run's end-of-fit evaluation:

    OMP_NUM_THREADS=1 python experiments/rl_tiny/evaluate_paired.py --run runs/rl/tiny-oracle --prompts 200 --seeds 2

Several checkpoints (`--ckpt A B ...`, e.g. the kept ones of a run with `save_top_k: -1`) give a learning curve on
the same prompts and noise: the report then lists one result per checkpoint.
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
parser.add_argument("--ckpt", nargs="+", default=["last.ckpt"], help="file names under <run>/checkpoints")
parser.add_argument("--steps", type=int, default=20, help="ODE steps of the evaluation sampler (configs: 20)")
parser.add_argument("--skip-base", action="store_true", help="the base half is the same for every run")
parser.add_argument("--out", default=None, help="also write the report here (JSON)")
parser.add_argument("--base-only", action="store_true", help="evaluate only the pipeline itself (no run, no LoRA)")
arguments = parser.parse_args()
torch.set_num_threads(1)
oracle = SpatialWorldOracle()
records = load_prompts(arguments.data, "test")[: arguments.prompts]
prompts, metadata = [r.prompt for r in records], [r.metadata for r in records]
started = time.perf_counter()


def build_module(state: dict | None) -> GRPOModule:
    """The evaluation module over --pipeline: with a run's checkpoint, its LoRA layout (target layers and rank, read
    off its weights, e.g. a LoRA on every linear layer) and its EMA setting (a run with an EMA is evaluated on the EMA,
    as its export is); without one, the default LoRA (only the base is sampled then)."""
    layout = {}
    if state is not None:
        suffix = ".lora_A.default.weight"
        lora = {
            k.removeprefix("transformer.")[: -len(suffix)]: v
            for k, v in state["state_dict"].items()
            if k.endswith(suffix)
        }
        layout = dict(lora_rank=next(iter(lora.values())).shape[0], lora_targets=sorted(lora))
    policy = PolicySpec(pipeline=arguments.pipeline, strict_prompt_length=True, **layout).build()
    return GRPOModule(
        policy,
        oracle,
        torch.optim.AdamW,
        oracle=oracle,
        resolution=32,
        eval_num_steps=arguments.steps,
        cfg_scale=3.0,
        ema_decay=None if state is None else state.get("hyper_parameters", {}).get("ema_decay"),
    )


module, base, results = None, None, []
# --base-only: e.g. a generator whose pretraining went on, its own samples (paired with any run's)
for name in [None] if arguments.base_only else arguments.ckpt:
    state = (
        None
        if name is None
        else torch.load(f"{arguments.run}/checkpoints/{name}", map_location="cpu", weights_only=True)
    )
    if module is None:
        module = build_module(state)
        if arguments.base_only or not arguments.skip_base:
            with reference_policy(module.transformer):
                base = module.evaluate(prompts, metadata, seeds=arguments.seeds)
    if state is None:
        break
    result = module.load_state_dict(state["state_dict"], strict=False)
    assert not result.unexpected_keys and len(state["state_dict"]) > 0, result
    module.on_load_checkpoint(state)  # the EMA (and counters), which `evaluate` samples with
    final = module.evaluate(prompts, metadata, seeds=arguments.seeds)
    results.append({"ckpt": name, "global_step": state["global_step"], "final": final})
    print(f"{name} (step {state['global_step']}): {json.dumps(final)}", flush=True)
report = {
    "run": arguments.run,
    "weights": "current" if module.ema is None else "ema",
    "prompts": len(prompts),
    "seeds": arguments.seeds,
    "steps": arguments.steps,
    "base": base,
    **(results[0] if len(results) == 1 else {"checkpoints": results}),
    "seconds": time.perf_counter() - started,
}
print(json.dumps(report, indent=2))
if arguments.out:
    with open(arguments.out, "w") as handle:
        json.dump(report, handle, indent=2)
