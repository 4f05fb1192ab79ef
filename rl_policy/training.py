"""What `python -m rl_policy fit` trains: `GRPOTraining` (a `GRPOModule` whose policy is described by a `PolicySpec`,
so that a LightningCLI YAML can name it) and `ExportPolicy`, the end-of-fit evaluation and LoRA export.

`ExportPolicy` evaluates the held-out prompts of the `PromptDataModule`'s evaluation split (every one by default:
398 RL test prompts x 2 seeds) twice with the ODE sampler from the same noise (paired seeds, the same in every run
whatever its seed): once with the LoRA adapter disabled (the base policy, kept in a cache so it is drawn once per
generator) and once with it (the trained policy), and writes into `<default_root_dir>`:
- `lora/`: the adapter in diffusers' format (`FluxPipeline.load_lora_weights(dir)` loads it; safetensors) and
  `lora/policy.json` (the base pipeline it applies to, LoRA settings);
- `metrics.json` (docs/DESIGN.md, "Default locations"): `reward_source`, `reward_base`, `reward_final`, and where
  the prompts carry SpatialWorld metadata and an oracle is configured `oracle_accuracy_base`,
  `oracle_accuracy_final`, `relation_accuracy_all_found_base`, `relation_accuracy_all_found_final`,
  `all_found_base`, `all_found_final`, per relation family `relation_accuracy_all_found_by_family_{base,final}`
  (null for a family with no relation) and `num_relations_all_found_by_family_{base,final}`; `grpo_seconds`,
  `num_eval_samples`, `num_eval_prompts`, `global_step`; with an oracle `critic_oracle_spearman_final` (and its
  `_step`: the last rollout the monitor measured) and `reward_hacking_warning` (the reward rose while the oracle's
  accuracy fell, rl_policy.monitor).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from peft.utils import get_peft_model_state_dict

from data_synthesis import FAMILIES
from rl_policy.data import load_prompts
from rl_policy.evaluation import (
    BaseImageCache,
    dequantize,
    pipeline_identity,
    sample_eval_images,
    score_eval_images,
    to_uint8,
)
from rl_policy.module import GRPOModule
from rl_policy.monitor import divergence_warning
from rl_policy.policy import FLUX_LORA_TARGETS, build_policy, build_tiny_flux_pipeline, load_pipeline, reference_policy
from shared import atomic_write_json, canonical_sha256, stable_seed
from shared.dtypes import torch_dtype

TINY = "tiny-random"  # PolicySpec.pipeline value: the tiny pipeline with random weights (tests, smoke runs)


@dataclass
class PolicySpec:
    """The policy to train. pipeline: a local diffusers directory (FLUX.1-dev, Qwen-Image, or the pretrained tiny
    generator of `python -m rl_policy pretrain`), or "tiny-random" (random tiny weights, for smoke tests);
    lora_*: the adapter (paper: rank 32); max_sequence_length / strict_prompt_length: text length and whether a
    longer prompt is an error (the embedded default) or truncated with a counted warning; dtype of the pipeline;
    forward_batch_size, grad_attention, no_grad_attention, compile_blocks: the GPU throughput switches of
    `policy.build_policy` (None / False: the default computation)."""

    pipeline: str = TINY
    lora_rank: int = 32
    lora_alpha: float | None = None
    lora_targets: list[str] = field(default_factory=lambda: list(FLUX_LORA_TARGETS))
    max_sequence_length: int | None = None
    strict_prompt_length: bool = False
    dtype: str = "float32"
    forward_batch_size: int | None = None
    grad_attention: str | None = None
    no_grad_attention: str | None = None
    compile_blocks: bool = False

    def build(self):
        dtype = torch_dtype(self.dtype, "PolicySpec.dtype")
        if self.pipeline == TINY:
            pipeline = build_tiny_flux_pipeline(max_prompt_tokens=self.max_sequence_length or 96)
        else:
            path = Path(self.pipeline)
            if not path.is_dir():
                raise FileNotFoundError(
                    f"policy pipeline {path} does not exist (for the embedded default run `make pretrain-generator`)"
                )
            pipeline = load_pipeline(path, torch_dtype=dtype)
        return build_policy(
            pipeline,
            lora_rank=self.lora_rank,
            lora_alpha=self.lora_alpha,
            lora_targets=self.lora_targets,
            # the tiny tokenizers' own limit (max_prompt_tokens + 1, see spatialworld_text_tokenizer) when not given
            max_sequence_length=None if self.pipeline == TINY else self.max_sequence_length,
            strict_prompt_length=self.strict_prompt_length,
            forward_batch_size=self.forward_batch_size,
            grad_attention=self.grad_attention,
            no_grad_attention=self.no_grad_attention,
            compile_blocks=self.compile_blocks,
        )


class GRPOTraining(GRPOModule):
    """`GRPOModule` built from a `PolicySpec` (see `GRPOModule` for every other argument).

    reward, eval_reward, oracle: objects satisfying the `Reward` protocol, named in a config by `class_path` (typed
    `Any` here because jsonargparse reads a callable protocol as a callable's return type); reward_source: the name
    written to metrics.json ("spatialscore", "oracle", "geneval", ...).
    """

    def __init__(
        self,
        policy: PolicySpec,
        reward: Any,
        optimizer: OptimizerCallable,
        *,
        eval_reward: Any = None,
        oracle: Any = None,
        reward_source: str = "custom",
        **kwargs: Any,
    ) -> None:
        for name, value in (("reward", reward), ("eval_reward", eval_reward), ("oracle", oracle)):
            if type(value).__name__ == "NestedArg":  # jsonargparse's leftover of `--model.reward.init_args.x=...`
                raise ValueError(
                    f"model.{name}: command-line overrides of its init_args are not supported (it is typed Any); "
                    f'give it whole, --model.{name} \'{{"class_path": ..., "init_args": {{...}}}}\', or in a YAML '
                    "passed with another --config"
                )
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be a Reward (callable with prompts, images, metadata), got {value!r}")
        super().__init__(policy.build(), reward, optimizer, eval_reward=eval_reward, oracle=oracle, **kwargs)
        self.policy_spec = policy
        self.reward_source = reward_source


def json_number(value: float) -> float | None:
    """`value` as metrics.json holds it: NaN (nothing to measure) as null, so the file stays strict JSON."""
    return None if math.isnan(value) else value


class ExportPolicy(Callback):
    """At the end of `fit`: base vs trained evaluation, `lora/` and `metrics.json` (module docstring).

    seeds: samples per held-out prompt (paired across base and trained, and across runs);
    num_prompts: the first this many prompts of the data module's evaluation split (None: every one; the RL test
        split has 398, so 2 seeds give 796 images per side);
    eval_seed: seeds the evaluation noise, independent of the run's seed, so runs of different seeds are evaluated on
        the same noise and share the base side;
    base_cache: a dir where the base policy's images are kept (rl_policy.evaluation.BaseImageCache), so the base
        side is drawn once per generator, prompt set and sampler; None: drawn every time.
    """

    def __init__(
        self, seeds: int = 2, num_prompts: int | None = None, eval_seed: int = 0, base_cache: str | None = None
    ) -> None:
        if seeds < 1 or (num_prompts is not None and num_prompts < 1):
            raise ValueError(f"seeds and num_prompts must be positive, got {seeds}, {num_prompts}")
        self.seeds, self.num_prompts, self.eval_seed = seeds, num_prompts, eval_seed
        self.base_cache = None if base_cache is None else BaseImageCache(base_cache)
        self._started: float | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._started = time.perf_counter()

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        seconds = time.perf_counter() - self._started
        if not trainer.is_global_zero:
            return
        datamodule = trainer.datamodule
        split = datamodule.eval_split if datamodule.eval_source.is_dir() else datamodule.train_split
        records = load_prompts(datamodule.eval_source, split)[: self.num_prompts]
        prompts = [record.prompt for record in records for _ in range(self.seeds)]
        metadata = [record.metadata for record in records for _ in range(self.seeds)]
        metadata = metadata if all(meta is not None for meta in metadata) else None
        base_images = self._base_images(pl_module, prompts)
        final_images = dequantize(to_uint8(self._draw(pl_module, prompts)))  # as the cached base: what a PNG holds
        base = score_eval_images(base_images, prompts, metadata, pl_module.eval_reward, pl_module.oracle)
        final = score_eval_images(final_images, prompts, metadata, pl_module.eval_reward, pl_module.oracle)
        out = Path(trainer.default_root_dir)
        export_lora(pl_module, out / "lora")
        metrics: dict[str, Any] = {
            "reward_source": getattr(pl_module, "reward_source", "custom"),
            "grpo_seconds": seconds,
            "global_step": trainer.global_step,
            "num_eval_samples": int(final["num_eval_samples"]),
            "num_eval_prompts": len(records),
        }
        for name in ("reward", "oracle_accuracy", "relation_accuracy_all_found", "all_found"):
            if name in final:  # NaN where nothing was measured (no sample with every object found)
                metrics[f"{name}_base"], metrics[f"{name}_final"] = json_number(base[name]), json_number(final[name])
        if "all_found" in final:  # an oracle judged the images: families_all_found's numbers, as JSON (null, not NaN)
            for side, scores in (("base", base), ("final", final)):
                for name in ("relation_accuracy_all_found", "num_relations_all_found"):
                    values = {family: scores[f"{name}/{family}"] for family in FAMILIES}
                    metrics[f"{name}_by_family_{side}"] = {f: json_number(v) for f, v in values.items()}
        history = getattr(pl_module, "agreement_history", [])
        if history:  # the critic's within-group Spearman with the oracle on the last measured rollout (NaN where
            # every group's oracle values tied)
            step, spearman = history[-1]
            metrics["critic_oracle_spearman_final"] = json_number(spearman)
            metrics["critic_oracle_spearman_step"] = step
        warning = divergence_warning(base, final, trainer.global_step)
        metrics["reward_hacking_warning"] = warning is not None
        if warning is not None:
            rank_zero_warn(f"end of fit, base vs trained on the paired evaluation: {warning}")
        atomic_write_json(out / "metrics.json", metrics)
        rank_zero_info(f"wrote {out / 'lora'} and {out / 'metrics.json'}: {json.dumps(metrics)}")

    def _draw(self, pl_module: GRPOModule, prompts: list[str]) -> torch.Tensor:
        generator = torch.Generator(device=pl_module.transformer.device)
        generator.manual_seed(stable_seed("grpo-export", self.eval_seed) % 2**63)
        return sample_eval_images(pl_module.policy, pl_module.sampler, prompts, generator)

    def _base_images(self, pl_module: GRPOModule, prompts: list[str]) -> torch.Tensor:
        """The base policy's images of `prompts`: from the cache when it has them, else drawn (and cached)."""
        sampler = pl_module.sampler
        spec = getattr(pl_module, "policy_spec", None)
        description = {
            "base": pipeline_identity(spec.pipeline) if spec is not None else repr(type(pl_module.policy.pipeline)),
            "prompts_sha256": canonical_sha256(prompts),
            "num_images": len(prompts),
            "eval_seed": self.eval_seed,
            "sampler": {name: getattr(sampler, name) for name in ("resolution", "eval_num_steps", "num_steps")}
            | {"cfg_scale": sampler.cfg_scale, "guidance": sampler.guidance},
        }
        key = BaseImageCache.key(**description)
        if self.base_cache is not None and (cached := self.base_cache.load(key, len(prompts))) is not None:
            rank_zero_info(f"base evaluation: {len(prompts)} images from the cache {self.base_cache.directory}")
            return cached
        with reference_policy(pl_module.transformer):
            images = self._draw(pl_module, prompts)
        if self.base_cache is not None:
            self.base_cache.save(key, images, description)
        return dequantize(to_uint8(images))


def export_lora(module: GRPOModule, directory: str | Path) -> Path:
    """The policy's LoRA in diffusers' format (`load_lora_weights` loads it) plus `policy.json` (what it applies to)."""
    directory = Path(directory)
    layers = {name: value.detach().clone() for name, value in get_peft_model_state_dict(module.transformer).items()}
    type(module.policy.pipeline).save_lora_weights(directory, transformer_lora_layers=layers, safe_serialization=True)
    spec = getattr(module, "policy_spec", None)
    atomic_write_json(
        directory / "policy.json",
        {
            "base_pipeline": None if spec is None else spec.pipeline,
            "pipeline_class": type(module.policy.pipeline).__name__,
            "policy": None if spec is None else asdict(spec),
        },
    )
    return directory


class GRPOCLI(LightningCLI):
    """LightningCLI with `ExportPolicy` attached (its options under `--export.*`)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ExportPolicy, "export")
