"""Research probe (docs/research/generator.md, 2026-12-05 fifth session): does a generator's joint attention know at
high noise where the prompt puts each object?

For the RL set's val prompts with a stated left/right or above/below relation "A rel B": the attention of the image
tokens to A's and B's colour words at sigma .95 (mean over 4 noise seeds, the heads and every block); right when the
two maps' centres of mass are ordered as stated (chance .5). At sigma .95 the image says nothing, so what the attention
shows there is the layout the model reads from the prompt.

    python docs/research/generator_probes/attention_layout_probe.py PIPELINE_DIR [--data DIR] [--distance]

The recorder below is the one of commit 640898b (rl_policy/attention_supervision.py), which measured no gain as a
training term and left the product.
"""

from __future__ import annotations

import argparse
import json
import math

import torch
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, _get_qkv_projections

from data_synthesis import load_pairs
from rl_policy.policy import FluxPolicy, load_pipeline
from rl_policy.sde import noised_latents

RELATIONS = {"left_of": "horizontal", "right_of": "horizontal", "above": "vertical", "below": "vertical"}


class RecordingFluxAttnProcessor(FluxAttnProcessor):
    """Flux's joint attention computed explicitly (softmax(q k^T / sqrt(d)) v, the same maths as the default processor)
    that, while `records` is a list, appends the image-to-text attention probabilities [B, H, N_image, T] of each call.

    In a double block the text tokens arrive as `encoder_hidden_states`; in a single block the sequence is already
    [text, image] and `text_length` (set by the caller before the forward) says where the text ends.
    """

    def __init__(self) -> None:
        super().__init__()
        self.records: list[torch.Tensor] | None = None
        self.text_length = 0

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if self.records is None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        if attention_mask is not None:
            raise ValueError("the recording attention processor does not support an attention mask")
        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states
        )
        query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))  # [B, S, H, D]
        key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
        value = value.unflatten(-1, (-1, attn.head_dim))
        text_length = self.text_length
        if encoder_hidden_states is not None:
            text_length = encoder_hidden_states.shape[1]
            query = torch.cat([attn.norm_added_q(encoder_query.unflatten(-1, (-1, attn.head_dim))), query], dim=1)
            key = torch.cat([attn.norm_added_k(encoder_key.unflatten(-1, (-1, attn.head_dim))), key], dim=1)
            value = torch.cat([encoder_value.unflatten(-1, (-1, attn.head_dim)), value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        query, key, value = (tensor.transpose(1, 2) for tensor in (query, key, value))  # [B, H, S, D]
        probabilities = torch.softmax((query @ key.transpose(-1, -2)).float() / math.sqrt(attn.head_dim), dim=-1)
        self.records.append(probabilities[:, :, text_length:, :text_length])  # [B, H, N, T]
        hidden_states = (probabilities.to(value.dtype) @ value).transpose(1, 2).flatten(2, 3)  # [B, S, H * D]
        if encoder_hidden_states is None:
            return hidden_states
        encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
            [text_length, hidden_states.shape[1] - text_length], dim=1
        )
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.contiguous()))
        return hidden_states, attn.to_add_out(encoder_hidden_states.contiguous())


def install_recorders(transformer: torch.nn.Module) -> list[RecordingFluxAttnProcessor]:
    """A `RecordingFluxAttnProcessor` in every attention of a FluxTransformer2DModel (double blocks first, then single
    blocks); inactive (the default path) until their `records` is set."""
    recorders = []
    for block in [*transformer.transformer_blocks, *transformer.single_transformer_blocks]:
        recorder = RecordingFluxAttnProcessor()
        block.attn.set_processor(recorder)
        recorders.append(recorder)
    return recorders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline")
    parser.add_argument("--data", default="data/spatialworld-rl")
    parser.add_argument("--sigma", type=float, default=0.95)
    parser.add_argument(
        "--distance",
        action="store_true",
        help="report the mean distance (in tokens) between the two words' attention centres along the relation's "
        "axis instead of the share ordered right",
    )
    arguments = parser.parse_args()
    pipeline = load_pipeline(arguments.pipeline, torch_dtype=torch.float32)
    policy = FluxPolicy(pipeline, max_sequence_length=161)
    recorders = install_recorders(pipeline.transformer)
    _, frame = load_pairs(arguments.data)
    val = frame[frame["split"] == "val"]
    tokenizer = pipeline.tokenizer_2
    rows, columns = policy.latent_grid(32, 32)
    y = torch.arange(rows).float().repeat_interleave(columns)
    x = torch.arange(columns).float().repeat(rows)
    ordered = {"horizontal": [], "vertical": []}
    for start in range(0, len(val), 32):
        batch = val.iloc[start : start + 32]
        prompts = list(batch["prompt"])
        embeddings = policy.encode_prompts(prompts)
        ids = tokenizer(prompts, padding="max_length", max_length=161, truncation=True, return_tensors="pt").input_ids
        maps = 0
        for seed in range(4):
            noise = torch.randn(len(prompts), rows * columns, 48, generator=torch.Generator().manual_seed(seed))
            sigma = torch.full((len(prompts),), arguments.sigma)
            latents = noised_latents(torch.full_like(noise, 0.5), noise, sigma)
            for recorder in recorders:
                recorder.records, recorder.text_length = [], 161
            with torch.no_grad():
                policy.velocity(latents, sigma, embeddings, 32, 32)
            maps = maps + torch.stack([p.mean(1) for r in recorders for p in r.records]).mean(0)  # [B, N, T]
            for recorder in recorders:
                recorder.records = None
        for row, stated in enumerate(batch["stated_relations"]):
            for relation in json.loads(stated):
                if relation["kind"] not in RELATIONS:
                    continue
                centres = []
                for colour in relation["subjects"]:
                    columns_of_word = (ids[row] == tokenizer.convert_tokens_to_ids(colour)).nonzero().flatten()
                    weights = maps[row][:, columns_of_word].mean(1)
                    weights = weights / weights.sum()
                    centres.append(((weights * x).sum().item(), (weights * y).sum().item()))
                (ax, ay), (bx, by) = centres
                kind = relation["kind"]
                if arguments.distance:
                    ordered[RELATIONS[kind]].append(abs(ax - bx) if RELATIONS[kind] == "horizontal" else abs(ay - by))
                else:
                    right = {"left_of": ax < bx, "right_of": ax > bx, "above": ay < by, "below": ay > by}[kind]
                    ordered[RELATIONS[kind]].append(right)
    print(arguments.pipeline, {family: (round(sum(h) / len(h), 3), len(h)) for family, h in ordered.items()})


if __name__ == "__main__":
    main()
