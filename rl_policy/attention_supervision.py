"""Attention supervision for the tiny generator's pretraining: each object's words attend to where the object is.

TokenCompose (Wang et al., CVPR 2024) adds to the denoising loss a grounding term on the cross-attention maps of a
text-to-image model: for every noun token of an object, the share of its attention that falls inside the object's
mask should be 1, loss (1 - inside / total)^2. Here the same term on Flux's joint attention: the rows of the image
tokens (queries) and the columns of the text tokens (keys), averaged over heads, in every block the recorder is
installed in. A SpatialWorld object is named in its prompt by its colour word (colours are unique within a scene), and
its region is its bounding square from the scene (exact ground truth), averaged onto the image-token grid.

Why it is here (issue 19): the rectified-flow loss alone taught the tiny transformer which objects and which absolute
regions a prompt names, but not which object goes on which side of the other (placement between objects stays at
chance over 15,000 steps). The attention term asks, at every noise level including pure noise, for the object's words
to be attended from the object's place: at high noise that place is only predictable from the prompt's relations,
so the term is a direct, dense layout signal that the pixel loss carries only weakly.

Simplified against TokenCompose: the bounding square instead of a segmentation mask, the token-level term only (not
its pixel-level BCE term), every block rather than a chosen subset of layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, _get_qkv_projections


def object_region_masks(boxes: Sequence[tuple[float, float, float]], resolution: int, max_objects: int) -> torch.Tensor:
    """Coverage of each object's bounding square on the pixel grid: [max_objects, R, R] in [0, 1], rows past
    len(boxes) zero.

    boxes: (x, y, radius) per object, centre and half side as fractions of the image side (y downwards), as in
    `data_synthesis.scene.SceneObject`. A pixel's value is the fraction of its area inside the square.
    """
    if len(boxes) > max_objects:
        raise ValueError(f"{len(boxes)} objects exceed max_objects={max_objects}")
    edges = torch.arange(resolution + 1, dtype=torch.float64) / resolution  # pixel borders, fractions
    masks = torch.zeros(max_objects, resolution, resolution)
    for index, (x, y, radius) in enumerate(boxes):
        across = (edges[1:].clamp(max=x + radius) - edges[:-1].clamp(min=x - radius)).clamp(min=0) * resolution
        down = (edges[1:].clamp(max=y + radius) - edges[:-1].clamp(min=y - radius)).clamp(min=0) * resolution
        masks[index] = (down[:, None] * across[None, :]).float()
    return masks


def token_grid_masks(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Pixel masks [B, K, R, R] averaged onto the image-token grid (h, w) -> [B, K, h * w], tokens in row-major order
    (Flux packs latents row by row)."""
    batch, objects = masks.shape[:2]
    return F.adaptive_avg_pool2d(masks.float(), grid).reshape(batch, objects, grid[0] * grid[1])


def token_objects(token_ids: torch.Tensor, object_word_ids: torch.Tensor) -> torch.Tensor:
    """Which object each text token names: [B, T] object index, -1 for tokens that name none.

    token_ids [B, T]: the prompts' text-encoder tokens. object_word_ids [B, K]: the token id of object k's naming word
    (its colour), -1 for absent objects. A word that names two objects (not the case in SpatialWorld) goes to the last.
    """
    owner = torch.full_like(token_ids, -1)
    for k in range(object_word_ids.shape[1]):
        word = object_word_ids[:, k : k + 1]  # [B, 1]
        owner = torch.where((token_ids == word) & (word >= 0), k, owner)
    return owner


def attention_localisation_loss(
    probabilities: torch.Tensor, owners: torch.Tensor, regions: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """TokenCompose's token loss: mean over object tokens of (1 - inside / total)^2.

    probabilities [B, H, N, T]: attention of the N image tokens (queries) to the T text tokens, per head (a slice of
    the softmax over every key, so a row does not sum to 1). owners [B, T]: `token_objects`. regions [B, K, N]: each
    object's coverage of the image tokens (`token_grid_masks`). For token t of object k the map over image tokens is
    a_n = mean over heads of probabilities[:, :, n, t]; inside = sum_n a_n regions[k, n] / sum_n a_n. Returns a scalar;
    0 (with a gradient) when no token names an object.
    """
    maps = probabilities.mean(dim=1)  # [B, N, T]
    valid = owners >= 0  # [B, T]
    index = owners.clamp(min=0)[:, :, None].expand(-1, -1, regions.shape[-1])  # [B, T, N]
    per_token_region = torch.gather(regions, 1, index).transpose(1, 2)  # [B, N, T]
    inside = (maps * per_token_region).sum(dim=1) / (maps.sum(dim=1) + eps)  # [B, T]
    losses = (1 - inside).square()
    if not valid.any():
        return maps.sum() * 0
    return losses[valid].mean()


def region_centres(masks: torch.Tensor) -> torch.Tensor:
    """Coverage-weighted centre (x, y) of each region, as fractions of the image side: masks [B, K, R, R] -> [B, K, 2]
    (0 for an empty region). For a bounding square inside the image it is the object's centre."""
    rows, columns = masks.shape[-2:]
    y = (torch.arange(rows, dtype=masks.dtype, device=masks.device) + 0.5) / rows
    x = (torch.arange(columns, dtype=masks.dtype, device=masks.device) + 0.5) / columns
    total = masks.sum(dim=(-2, -1)).clamp(min=1e-8)  # [B, K]
    centre_x = (masks.sum(dim=-2) * x).sum(dim=-1) / total
    centre_y = (masks.sum(dim=-1) * y).sum(dim=-1) / total
    return torch.stack([centre_x, centre_y], dim=-1)


def attention_centre_loss(
    probabilities: torch.Tensor, owners: torch.Tensor, centres: torch.Tensor, grid: tuple[int, int], eps: float = 1e-8
) -> torch.Tensor:
    """Mean over object tokens of the squared distance between the centre of mass of the token's attention map and
    its object's centre (image-side fractions).

    probabilities [B, H, N, T], owners [B, T]: as `attention_localisation_loss`; centres [B, K, 2]: (x, y) per object
    (`region_centres`); grid: (rows, columns) of the N image tokens, row-major, token n at its cell's middle.

    Why beside TokenCompose's term: SpatialWorld objects cover 1-4 of the 8 x 8 tokens, so at high noise, where only
    the prompt tells where an object goes, knowing "the right half" raises the inside share from about 2/64 to 2/32:
    that loss is almost flat there (measured .75-.82 at sigma .9-.99 against .12 at sigma .1-.3). The centre's
    optimum at high noise is the object's expected position given the prompt, which moves with every relation.
    """
    rows, columns = grid
    y = ((torch.arange(rows, device=probabilities.device) + 0.5) / rows).repeat_interleave(columns)  # [N]
    x = ((torch.arange(columns, device=probabilities.device) + 0.5) / columns).repeat(rows)  # [N]
    maps = probabilities.mean(dim=1)  # [B, N, T]
    total = maps.sum(dim=1) + eps  # [B, T]
    predicted = torch.stack([(maps * x[:, None]).sum(1) / total, (maps * y[:, None]).sum(1) / total], -1)  # [B, T, 2]
    valid = owners >= 0
    target = torch.gather(centres, 1, owners.clamp(min=0)[:, :, None].expand(-1, -1, 2))  # [B, T, 2]
    if not valid.any():
        return maps.sum() * 0
    return (predicted - target).square().sum(-1)[valid].mean()


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
