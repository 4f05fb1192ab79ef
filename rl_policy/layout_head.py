"""Layout supervision of the tiny generator's pretraining: a linear head on the image stream names each image token's
object colour (or background), from the prompt and the noisy latents.

Why (issue 19; docs/research/generator.md, 2026-12-06 tenth session): the rectified-flow loss teaches the tiny
transformer which objects a prompt names and the regions of one-object phrases, but where two objects go relative to
each other is a small part of that loss at high noise, and placement between objects stayed at chance over tens of
thousands of steps. The head's cross-entropy asks the image tokens after the double-stream blocks to carry the scene's
layout at every noise level; at pure noise that layout is predictable only from the prompt's relations. It is a
representation-alignment term in the spirit of REPA (Yu et al., ICLR 2025), with the exact layout of SpatialWorld's
scenes as the target instead of a pretrained encoder's features. The head is used only in training: the saved pipeline
is a plain FluxPipeline.

A SpatialWorld object is named in its prompt by its colour (colours are unique within a scene), and its region is its
bounding square from the scene, averaged onto the image-token grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


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


def object_coverage(regions: torch.Tensor, colours: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Each object's share of each image token [B, K, h * w]: `token_grid_masks` of the regions [B, K, R, R], zero for
    absent objects (colour -1 in colours [B, K])."""
    return token_grid_masks(regions, grid) * (colours >= 0)[:, :, None]


def layout_targets(regions: torch.Tensor, colours: torch.Tensor, grid: tuple[int, int], classes: int) -> torch.Tensor:
    """Each image token's soft class [B, N, classes + 1]: object k's coverage of the token on its colour's class, the
    rest on background (the last index); a token that objects cover more than once (overlaps) is normalised to 1.

    regions [B, K, R, R] in [0, 1] (`object_region_masks`); colours [B, K]: colour indices, -1 for absent objects."""
    coverage = object_coverage(regions, colours, grid)  # [B, K, N]
    target = torch.zeros(coverage.shape[0], coverage.shape[2], classes + 1, device=regions.device)
    index = colours.clamp(min=0)[:, None, :].expand(-1, coverage.shape[2], -1)  # [B, N, K]
    target.scatter_add_(2, index, coverage.transpose(1, 2))
    target[..., -1] = (1 - target[..., :-1].sum(-1)).clamp(min=0)
    return target / target.sum(-1, keepdim=True)


def layout_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft cross-entropy of per-token logits [B, N, C + 1] against `layout_targets` -> per sample [B]. Objects cover a
    small share of the tokens, so the object classes' mass and the background's count half each: 0.5 (sum over tokens
    and object classes of -t log p / object mass + sum over tokens of -t_bg log p_bg / background mass)."""
    terms = -(target * torch.log_softmax(logits.float(), -1))  # [B, N, C + 1]
    objects, background = target[..., :-1].sum((1, 2)), target[..., -1].sum(1)
    return 0.5 * (
        terms[..., :-1].sum((1, 2)) / objects.clamp(min=1e-6) + terms[..., -1].sum(1) / background.clamp(min=1e-6)
    )
