"""Held-out evaluation of a policy: ODE samples of prompts from fixed noise, scored by the evaluation reward and the
SpatialWorld oracle; and the cache of the base policy's samples, so that the end-of-fit comparison (every test prompt
x 2 seeds, paired noise) draws the base side once per generator instead of once per run.

- `sample_eval_images`: `seeds` samples per prompt with the ODE sampler (the sampler settings' `eval_num_steps`,
  guidance) from noise drawn by one generator, so the same generator seed gives the same noise to every policy;
- `score_eval_images`: `reward` (mean over samples; NaN rewards left out) and, with an oracle that has `judge`, the
  share of stated relations confirmed (`oracle_accuracy`, over `num_relations`), `all_found`, the relation
  accuracy among all-found images, and the same per relation family (`families_all_found`: placement between
  objects apart from whether both were drawn); other oracles give `oracle_reward`;
- `BaseImageCache`: the images as safetensors under a key of everything that decides them (the base pipeline's
  identity, the prompts, seeds, noise seed and sampler settings); a cache entry that does not match is redrawn.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from data_synthesis import FAMILIES, KINDS
from rl_policy.policy import FluxPolicy
from rl_policy.rollout import SamplerSettings, initial_noise, sample_ode
from shared import atomic_write_bytes, canonical_sha256

CACHE_FORMAT = 1


@torch.no_grad()
def sample_eval_images(
    policy: FluxPolicy, sampler: SamplerSettings, prompts: Sequence[str], generator: torch.Generator
) -> torch.Tensor:
    """ODE samples [N, 3, H, W] in [0, 1] (on the CPU) of `prompts` (one per entry) from noise drawn by `generator`."""
    side = sampler.resolution
    noise = initial_noise(policy, len(prompts), side, side, generator)
    return sample_ode(
        policy,
        list(prompts),
        height=side,
        width=side,
        num_steps=sampler.eval_num_steps or max(sampler.num_steps, 20),
        cfg_scale=sampler.cfg_scale,
        guidance=sampler.guidance,
        noise=noise,
    ).cpu()


def score_eval_images(
    images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[Any] | None, reward, oracle
) -> dict[str, float]:
    """The evaluation metrics of `images` [N, 3, H, W] (module docstring); prompts and metadata one per image."""
    rewards = reward(prompts=list(prompts), images=list(images), metadata=metadata).float()
    results = {"reward": float(rewards.nanmean()), "num_eval_samples": float(len(prompts))}
    if oracle is None or metadata is None or not all(meta is not None for meta in metadata):
        return results
    judge = getattr(oracle, "judge", None)
    if judge is None:
        return results | {
            "oracle_reward": float(oracle(prompts=list(prompts), images=list(images), metadata=metadata).mean())
        }
    verdicts = [judge(image, meta) for image, meta in zip(images, metadata, strict=True)]
    relations = [ok for verdict in verdicts for ok in verdict.confirmed]
    found = [ok for verdict in verdicts if verdict.all_found for ok in verdict.confirmed]
    return (
        results
        | {
            "oracle_accuracy": sum(relations) / max(len(relations), 1),
            "num_relations": float(len(relations)),
            "all_found": sum(verdict.all_found for verdict in verdicts) / len(verdicts),
            "relation_accuracy_all_found": sum(found) / len(found) if found else math.nan,
        }
        | families_all_found(verdicts)
    )


def families_all_found(verdicts: Sequence[Any]) -> dict[str, float]:
    """Per relation family f, over the images of `verdicts` (oracle `judge` results) with every object found:
    `relation_accuracy_all_found/f` (NaN when there is no such relation) and `num_relations_all_found/f`."""
    found = [
        (KINDS[kind][2], ok) for v in verdicts if v.all_found for ok, kind in zip(v.confirmed, v.kinds, strict=True)
    ]
    metrics: dict[str, float] = {}
    for family in FAMILIES:
        hits = [ok for name, ok in found if name == family]
        metrics[f"relation_accuracy_all_found/{family}"] = sum(hits) / len(hits) if hits else math.nan
        metrics[f"num_relations_all_found/{family}"] = len(hits)
    return metrics


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] in [0, 1] -> uint8, what a PNG of them holds."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).contiguous()


def dequantize(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float() / 255


def pipeline_identity(pipeline: str) -> dict[str, Any]:
    """What identifies a base pipeline without reading its weights: the name for the built-in tiny one; for a
    directory, its resolved path and the transformer's config and files (names, sizes, modification times)."""
    path = Path(pipeline)
    if not path.is_dir():
        return {"pipeline": pipeline}
    transformer = path / "transformer"
    files = sorted(transformer.glob("*")) if transformer.is_dir() else []
    return {
        "pipeline": str(path.resolve()),
        "transformer_files": [(file.name, file.stat().st_size, file.stat().st_mtime_ns) for file in files],
    }


class BaseImageCache:
    """The base policy's evaluation images, one safetensors file per key (module docstring)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    @staticmethod
    def key(**parts: Any) -> str:
        return canonical_sha256({"format": CACHE_FORMAT, **parts})

    def load(self, key: str, count: int) -> torch.Tensor | None:
        """The cached images of `key` if there are `count` of them, else None (a damaged file is redrawn)."""
        path = self.directory / f"{key}.safetensors"
        if not path.is_file():
            return None
        try:
            images = load_safetensors(path.read_bytes())["images"]
        except Exception:  # noqa: BLE001 - any unreadable file is a cache miss, redrawn and rewritten
            return None
        return dequantize(images) if images.shape[0] == count else None

    def save(self, key: str, images: torch.Tensor, description: dict[str, Any]) -> Path:
        """Store images [N, 3, H, W] in [0, 1] as uint8 (what a PNG of them would hold) with a readable description."""
        pixels = to_uint8(images)
        path = self.directory / f"{key}.safetensors"
        atomic_write_bytes(
            path, save_safetensors({"images": pixels}, metadata={"description": json.dumps(description)})
        )
        return path
