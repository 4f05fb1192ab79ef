"""Stage A (verification + image-text matching) of the tiny SpatialScore backbone, with a learning curve.

Every `--eval-every` steps: held-out sentence / match accuracy (stage-A val stream) and the pairwise accuracy of the
matching logit used as a zero-shot reward on the first `--eval-pairs` pairs of the SpatialWorld test split (both
orientations). Prints one JSON line per evaluation and writes the backbone dir at the end.

  OMP_NUM_THREADS=1 .venv/bin/python experiments/reward_tiny/stage_a_verify.py --steps 1500 --out runs/stage_a/v1
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import torch
from evaluate import load_test_pairs, pairwise_accuracy
from torch.utils.data import DataLoader

from reward_model.grounding import (
    GroundingPretrainModule,
    VerificationCollator,
    VerificationStream,
    build_grounding_network,
    load_grounding_heads,
    save_grounded_backbone,
    validation_examples,
)
from reward_model.model import build_spatialscore, tiny_backbone_config
from reward_model.pretrain import warmup_cosine
from reward_model.tokenizer import REWARD_TOKEN, build_spatialworld_processor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--text-layers", type=int, default=4)
    parser.add_argument("--text-hidden", type=int, default=128)
    parser.add_argument("--text-intermediate", type=int, default=256)
    parser.add_argument("--vision-hidden", type=int, default=64)
    parser.add_argument("--vision-layers", type=int, default=2)
    parser.add_argument("--max-pixels", type=int, default=140 * 140)
    parser.add_argument("--verdict-layer", type=int, default=None)
    parser.add_argument("--match-weight", type=float, default=1.0)
    parser.add_argument("--colour-weight", type=float, default=1.0)
    parser.add_argument("--curriculum", type=str, default="0:3,300:4,600:6", help="step:max_objects,...")
    parser.add_argument("--min-objects", type=int, default=2)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--eval-pairs", type=int, default=300)
    parser.add_argument("--val-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init-from", type=Path, default=None, help="a stage-A dir to start from (same sizes)")
    parser.add_argument(
        "--stop-after", type=int, default=None, help="stop after this many steps (the lr schedule stays --steps')"
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    curriculum = [tuple(int(v) for v in item.split(":")) for item in args.curriculum.split(",")]
    config = tiny_backbone_config(
        text_hidden_size=args.text_hidden,
        text_layers=args.text_layers,
        text_intermediate_size=args.text_intermediate,
        vision_hidden_size=args.vision_hidden,
        vision_layers=args.vision_layers,
    )
    processor = build_spatialworld_processor(max_pixels=args.max_pixels)
    processor.tokenizer.add_tokens([REWARD_TOKEN], special_tokens=True)  # already an id of the tiny tokenizer
    reward_token_id = processor.tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
    network = build_grounding_network(config, reward_token_id, verdict_layer=args.verdict_layer)
    if args.init_from is not None:  # weights only: the optimizer and the data stream start afresh
        state = build_spatialscore(args.init_from, lora_rank=None).backbone.state_dict()
        network.backbone.load_state_dict(state)
        load_grounding_heads(network, args.init_from)
    module = GroundingPretrainModule(
        network,
        functools.partial(torch.optim.AdamW, lr=args.lr, weight_decay=0.01),
        match_weight=args.match_weight,
        colour_weight=args.colour_weight,
    )
    optimizer = module.optimizer_factory(network.parameters())
    scheduler = warmup_cosine(optimizer, warmup_steps=args.warmup, total_steps=args.steps)
    collate = VerificationCollator(processor)
    stream = VerificationStream(
        seed=args.seed, batch_size=args.batch_size, curriculum=curriculum, min_objects=args.min_objects
    )
    loader = iter(DataLoader(stream, batch_size=args.batch_size, collate_fn=collate, num_workers=1))
    val_batches = [collate(chunk) for chunk in _chunks(validation_examples(args.seed, args.val_size), 64)]
    test_pairs = load_test_pairs(Path("data/spatialworld"), args.eval_pairs)
    print(json.dumps({"parameters": sum(p.numel() for p in network.parameters()), "args": vars(args)}, default=str))

    history, started, running = [], time.time(), []
    last = min(args.steps, args.stop_after or args.steps)
    for step in range(1, last + 1):
        network.train()
        loss, metrics = module.step(next(loader))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        running.append({k: float(v) for k, v in metrics.items()})
        if step % args.eval_every == 0 or step == last:
            record = {"step": step, "minutes": round((time.time() - started) / 60, 2)}
            record |= {f"train_{k}": round(sum(r[k] for r in running) / len(running), 4) for k in running[0]}
            running = []
            network.eval()
            with torch.no_grad():
                val = [module.step(batch)[1] for batch in val_batches]
            record |= {f"val_{k}": round(float(sum(v[k] for v in val) / len(val)), 4) for k in val[0]}
            record |= pairwise_accuracy(
                lambda prompts, images: _match_scores(network, processor, prompts, images), test_pairs
            )
            history.append(record)
            print(json.dumps(record), flush=True)
            arguments = {k: str(v) for k, v in vars(args).items()}
            save_grounded_backbone(network, processor, args.out, metrics={"history": history, "args": arguments})


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _match_scores(network, processor, prompts, images) -> torch.Tensor:
    from reward_model.model import encode

    inputs = dict(encode(processor, prompts, images))
    empty = torch.zeros(0, 2, dtype=torch.long)
    return network(inputs, empty).match_logits


if __name__ == "__main__":
    main()
