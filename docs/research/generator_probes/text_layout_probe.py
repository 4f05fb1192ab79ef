"""Research probe (docs/research/generator.md, 2026-12-05 fifth session): can a tiny text encoder read where objects go
from a SpatialWorld prompt?

The tiny generator's T5 encoder (or a fresh T5 of another size) plus a linear head predict each object's centre (x, y)
from the mean feature of its colour word's occurrences, trained by squared error; reported every 250 steps on the RL
set's val prompts: the share of stated left/right and above/below relations whose predicted centres are ordered as
stated (chance .5), and the val squared error (predicting the mean position gives about .11). A text encoder that
fails here cannot hand the generator's transformer who is left of whom, whatever the generator's loss.

    python docs/research/generator_probes/text_layout_probe.py --pipeline checkpoints/generator_tiny/pipeline \
        --data data/spatialworld-rl [--fresh-prompts prompts.jsonl] [--frozen] [--size 4,128] [--steps 3000]

--fresh-prompts: train on prompts from make_prompts.py (one unseen prompt per example) instead of the 7,175 train
prompts of --data.
"""

from __future__ import annotations

import argparse
import json
import time

import pandas as pd
import torch
from transformers import T5Config, T5EncoderModel

from data_synthesis import load_pairs
from data_synthesis.scene import Scene
from rl_policy.policy import load_pipeline

RELATIONS = {"left_of": "horizontal", "right_of": "horizontal", "above": "vertical", "below": "vertical"}


def encode(frame: pd.DataFrame, tokenizer, length: int):
    """Token ids [N, T], colour-word occurrences [N, 2, T], object centres [N, 2, 2], and per prompt its stated
    (kind, subject index, object index) horizontal/vertical relations."""
    ids = tokenizer(
        list(frame["prompt"]), padding="max_length", max_length=length, truncation=True, return_tensors="pt"
    ).input_ids
    occurrences, centres, relations = torch.zeros(len(frame), 2, length), torch.zeros(len(frame), 2, 2), []
    for row, (scene_json, stated) in enumerate(zip(frame["perfect_scene"], frame["stated_relations"], strict=True)):
        objects = Scene.from_json(scene_json).objects[:2]
        colours = [item.colour for item in objects]
        for k, item in enumerate(objects):
            occurrences[row, k] = (ids[row] == tokenizer.convert_tokens_to_ids(item.colour)).float()
            centres[row, k] = torch.tensor([item.x, item.y])
        relations.append(
            [
                (r["kind"], colours.index(r["subjects"][0]), colours.index(r["subjects"][1]))
                for r in json.loads(stated)
                if r["kind"] in RELATIONS
            ]
        )
    return ids, occurrences, centres, relations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--fresh-prompts", default=None)
    parser.add_argument("--frozen", action="store_true", help="train only the head (the encoder as it is)")
    parser.add_argument("--size", default=None, help="LAYERS,WIDTH: a fresh T5 of that size instead")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-length", type=int, default=161)
    parser.add_argument("--save", default=None, help="write the pipeline with the trained T5 encoder to this dir")
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    pipeline = load_pipeline(arguments.pipeline, torch_dtype=torch.float32)
    encoder, tokenizer = pipeline.text_encoder_2, pipeline.tokenizer_2
    if arguments.size:
        layers, width = map(int, arguments.size.split(","))
        base = encoder.config
        encoder = T5EncoderModel(
            T5Config(
                vocab_size=base.vocab_size, d_model=width, d_kv=width // 4, d_ff=4 * width, num_layers=layers,
                num_heads=4, pad_token_id=base.pad_token_id, feed_forward_proj=base.feed_forward_proj,
                relative_attention_num_buckets=base.relative_attention_num_buckets,
                relative_attention_max_distance=base.relative_attention_max_distance,
            )
        )  # fmt: skip
    _, frame = load_pairs(arguments.data)
    source = pd.read_json(arguments.fresh_prompts, lines=True) if arguments.fresh_prompts else frame
    train = encode(source if arguments.fresh_prompts else frame[frame["split"] == "train"], tokenizer, 161)
    val = encode(frame[frame["split"] == "val"], tokenizer, arguments.max_length)
    head = torch.nn.Linear(encoder.config.d_model, 2)
    encoder.requires_grad_(not arguments.frozen).eval()
    trained = list(head.parameters()) + ([] if arguments.frozen else list(encoder.parameters()))
    optimizer = torch.optim.AdamW(trained, lr=arguments.lr)

    def predict(ids, occurrences):
        features = encoder(ids).last_hidden_state  # [B, T, D]
        return head((occurrences @ features) / occurrences.sum(-1, keepdim=True).clamp(min=1))  # [B, 2, 2]

    def evaluate() -> tuple[dict[str, float], float]:
        with torch.no_grad():
            predicted = torch.cat(
                [predict(val[0][i : i + 128], val[1][i : i + 128]) for i in range(0, len(val[0]), 128)]
            )
        ordered = {"horizontal": [], "vertical": []}
        for row, stated in enumerate(val[3]):
            for kind, a, b in stated:
                (ax, ay), (bx, by) = predicted[row, a].tolist(), predicted[row, b].tolist()
                right = {"left_of": ax < bx, "right_of": ax > bx, "above": ay < by, "below": ay > by}[kind]
                ordered[RELATIONS[kind]].append(right)
        error = (predicted - val[2]).square().sum(-1).mean().item()
        return {family: round(sum(hits) / len(hits), 3) for family, hits in ordered.items()}, round(error, 4)

    start = time.time()
    for step in range(arguments.steps + 1):
        if step % 250 == 0:
            print(step, *evaluate(), f"{time.time() - start:.0f}s", flush=True)
        rows = torch.randint(0, len(train[0]), (64,))
        loss = (predict(train[0][rows], train[1][rows]) - train[2][rows]).square().sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if arguments.save:
        if arguments.size:
            raise SystemExit("--save keeps the pipeline's own encoder size; drop --size")
        pipeline.text_encoder_2 = encoder.requires_grad_(False)
        pipeline.save_pretrained(arguments.save, safe_serialization=True)
        print(f"pipeline with the layout-trained T5 -> {arguments.save}")


if __name__ == "__main__":
    main()
