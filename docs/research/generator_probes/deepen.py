"""Research helper (docs/research/generator.md, 2026-12-06): a deeper copy of a tiny generator pipeline that draws
exactly what the original draws. The original's blocks keep their weights; the added double- and single-stream blocks
get zero modulation (their AdaLayerNormZero linear layers are 0, so every gate is 0 and each block passes its input
through), so training starts from the original's function with more depth to use.

    python docs/research/generator_probes/deepen.py checkpoints/generator_tiny/pipeline 2 4 OUT_DIR
"""

from __future__ import annotations

import sys

import torch
from diffusers import FluxTransformer2DModel

from rl_policy.policy import load_pipeline


def main() -> None:
    source, layers, single_layers, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    pipeline = load_pipeline(source, torch_dtype=torch.float32)
    old = pipeline.transformer
    config = dict(old.config) | {"num_layers": layers, "num_single_layers": single_layers}
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    torch.manual_seed(0)
    new = FluxTransformer2DModel(**config)
    missing, unexpected = new.load_state_dict(old.state_dict(), strict=False)
    assert not unexpected, unexpected
    for block in list(new.transformer_blocks)[len(old.transformer_blocks) :]:
        for norm in (block.norm1.linear, block.norm1_context.linear):
            torch.nn.init.zeros_(norm.weight)
            torch.nn.init.zeros_(norm.bias)
    for block in list(new.single_transformer_blocks)[len(old.single_transformer_blocks) :]:
        torch.nn.init.zeros_(block.norm.linear.weight)
        torch.nn.init.zeros_(block.norm.linear.bias)
    print(f"{sum(p.numel() for p in old.parameters())} -> {sum(p.numel() for p in new.parameters())} parameters")
    pipeline.transformer = new
    pipeline.save_pretrained(out, safe_serialization=True)


if __name__ == "__main__":
    main()
