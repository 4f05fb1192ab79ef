"""Zero-shot scores of a stage-A (verification) backbone on the SpatialWorld test split: the image-text matching
logit at `<|reward|>`, and a verifier score (sum over relation sentences of log sigmoid(verdict logit)).

  OMP_NUM_THREADS=1 .venv/bin/python experiments/reward_tiny/eval_stage_a.py runs/stage_a/v3 [--pairs N]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from evaluate import load_test_pairs, pairwise_accuracy

from reward_model.grounding import GroundingNetwork, load_grounding_heads
from reward_model.model import build_spatialscore, encode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backbone_dir", type=Path)
    parser.add_argument("--pairs", type=int, default=None, help="first N test pairs (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = build_spatialscore(args.backbone_dir, lora_rank=None)
    heads = json.loads((args.backbone_dir / "pretrain_metrics.json").read_text())["args"]
    verdict_layer = None if heads.get("verdict_layer") in (None, "None") else int(heads["verdict_layer"])
    network = GroundingNetwork(model.backbone, model.reward_token_id, verdict_layer).eval()
    load_grounding_heads(network, args.backbone_dir)
    processor, period = model.processor, model.processor.tokenizer.convert_tokens_to_ids(".")
    frame = pd.read_parquet("data/spatialworld/pairs.parquet")
    sentences_of = dict(zip(frame["prompt"], frame["num_relations"], strict=True))
    sentences_of |= dict(zip(frame["perturbed_prompt"], frame["num_relations"], strict=True))
    pairs = load_test_pairs(Path("data/spatialworld"), args.pairs)

    cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def scores(prompts, images) -> tuple[torch.Tensor, torch.Tensor]:
        key = hash((tuple(prompts), tuple(id(image) for image in images)))
        if key not in cache:
            inputs = dict(encode(processor, prompts, images))
            ends = []
            for row, prompt in enumerate(prompts):
                periods = (inputs["input_ids"][row] == period).nonzero().flatten().tolist()
                ends += [(row, p, 0) for p in periods[len(periods) - sentences_of[prompt] :]]
            ends_tensor = torch.tensor([(r, p) for r, p, _ in ends], dtype=torch.long)
            output = network(inputs, ends_tensor)
            verifier = torch.zeros(len(prompts)).index_add_(
                0, ends_tensor[:, 0], F.logsigmoid(output.sentence_logits.float())
            )
            cache[key] = (output.match_logits, verifier)
        return cache[key]

    result = {
        "match_logit": pairwise_accuracy(lambda p, i: scores(p, i)[0], pairs),
        "verifier_sum_log_sigmoid": pairwise_accuracy(lambda p, i: scores(p, i)[1], pairs),
        "num_pairs": len(pairs),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
