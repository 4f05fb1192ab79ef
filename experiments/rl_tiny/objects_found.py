"""Per-object find rate of the base generator (the issue's "described objects found") with the policy's own ODE
sampler on test prompts, paired with evaluate_paired.py (same module, prompts, noise):

    OMP_NUM_THREADS=1 python experiments/rl_tiny/objects_found.py --prompts 200 --seeds 2
"""

import argparse
import json

import torch

from data_synthesis import SpatialWorldOracle
from data_synthesis.detect import detect
from data_synthesis.oracle import to_pil
from rl_policy.data import load_prompts
from rl_policy.module import GRPOModule
from rl_policy.training import PolicySpec

parser = argparse.ArgumentParser()
parser.add_argument("--pipeline", default="runs/rl/generator/pipeline")
parser.add_argument("--data", default="data/spatialworld-rl")
parser.add_argument("--prompts", type=int, default=200)
parser.add_argument("--seeds", type=int, default=2)
arguments = parser.parse_args()
torch.set_num_threads(1)
oracle = SpatialWorldOracle()
policy = PolicySpec(pipeline=arguments.pipeline, strict_prompt_length=True).build()  # LoRA B = 0: the base
module = GRPOModule(policy, oracle, torch.optim.AdamW, oracle=oracle, resolution=32, eval_num_steps=20, cfg_scale=3.0)
records = load_prompts(arguments.data, "test")[: arguments.prompts]
metrics = module.evaluate([r.prompt for r in records], [r.metadata for r in records], seeds=arguments.seeds)
colours = [r.metadata["colours"] for r in records for _ in range(arguments.seeds)]
layouts = [(detect(to_pil(image), c), c) for image, c in zip(module._eval_images, colours, strict=True)]
found = [layout.box(colour) is not None for layout, c in layouts for colour in c]
print(json.dumps(metrics | {"objects_found": sum(found) / len(found), "num_objects": len(found)}, indent=2))
