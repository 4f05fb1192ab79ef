"""What `python -m rl_policy fit` trains: `GRPOTraining` (a `GRPOModule` whose policy is described by a `PolicySpec`,
so that a LightningCLI YAML can name it) and `ExportPolicy`, the end-of-fit evaluation and LoRA export.

`ExportPolicy` evaluates the held-out prompts of the `PromptDataModule` twice with the ODE sampler from the same
noise (paired seeds): once with the LoRA adapter disabled (the base policy) and once with it (the trained policy),
and writes into `<default_root_dir>`:
- `lora/`: the adapter in diffusers' format (`FluxPipeline.load_lora_weights(dir)` loads it; safetensors) and
  `lora/policy.json` (the base pipeline it applies to, LoRA settings);
- `metrics.json` (docs/DESIGN.md, "Default locations"): `reward_source`, `reward_base`, `reward_final`, and where
  the prompts carry SpatialWorld metadata and an oracle is configured `oracle_accuracy_base`,
  `oracle_accuracy_final`, `relation_accuracy_all_found_base`, `relation_accuracy_all_found_final`,
  `all_found_base`, `all_found_final`; `grpo_seconds`, `num_eval_samples`, `global_step`; with an oracle
  `critic_oracle_spearman_final` (and its `_step`: the last rollout the monitor measured) and
  `reward_hacking_warning` (the reward rose while the oracle's accuracy fell, rl_policy.monitor).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from peft.utils import get_peft_model_state_dict

from rl_policy.module import GRPOModule
from rl_policy.monitor import divergence_warning
from rl_policy.policy import FLUX_LORA_TARGETS, build_policy, build_tiny_flux_pipeline, load_pipeline, reference_policy
from shared import atomic_write_json
from shared.dtypes import torch_dtype

TINY = "tiny-random"  # PolicySpec.pipeline value: the tiny pipeline with random weights (tests, smoke runs)


@dataclass
class PolicySpec:
    """The policy to train. pipeline: a local diffusers directory (FLUX.1-dev, Qwen-Image, or the pretrained tiny
    generator of `python -m rl_policy pretrain`), or "tiny-random" (random tiny weights, for smoke tests);
    lora_*: the adapter (paper: rank 32); max_sequence_length / strict_prompt_length: text length and whether a
    longer prompt is an error (the embedded default) or truncated with a counted warning; dtype of the pipeline."""

    pipeline: str = TINY
    lora_rank: int = 32
    lora_alpha: float | None = None
    lora_targets: list[str] = field(default_factory=lambda: list(FLUX_LORA_TARGETS))
    max_sequence_length: int | None = None
    strict_prompt_length: bool = False
    dtype: str = "float32"

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
                    f"give the whole `model.{name}` (class_path and init_args) in a YAML passed with another --config"
                )
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be a Reward (callable with prompts, images, metadata), got {value!r}")
        super().__init__(policy.build(), reward, optimizer, eval_reward=eval_reward, oracle=oracle, **kwargs)
        self.policy_spec = policy
        self.reward_source = reward_source


class ExportPolicy(Callback):
    """At the end of `fit`: base vs trained evaluation, `lora/` and `metrics.json` (module docstring).

    seeds: samples per held-out prompt (paired across base and trained)."""

    def __init__(self, seeds: int = 2) -> None:
        if seeds < 1:
            raise ValueError(f"seeds must be positive, got {seeds}")
        self.seeds = seeds
        self._started: float | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._started = time.perf_counter()

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        seconds = time.perf_counter() - self._started
        if not trainer.is_global_zero:
            return
        records = trainer.datamodule.eval_records
        prompts = [record.prompt for record in records]
        metadata = [record.metadata for record in records]
        metadata = metadata if all(meta is not None for meta in metadata) else None
        with reference_policy(pl_module.transformer):
            base = pl_module.evaluate(prompts, metadata, seeds=self.seeds)
        final = pl_module.evaluate(prompts, metadata, seeds=self.seeds)
        out = Path(trainer.default_root_dir)
        export_lora(pl_module, out / "lora")
        metrics: dict[str, Any] = {
            "reward_source": getattr(pl_module, "reward_source", "custom"),
            "grpo_seconds": seconds,
            "global_step": trainer.global_step,
            "num_eval_samples": int(final["num_eval_samples"]),
        }
        for name in ("reward", "oracle_accuracy", "relation_accuracy_all_found", "all_found"):
            if name in final:
                metrics[f"{name}_base"], metrics[f"{name}_final"] = base[name], final[name]
        history = getattr(pl_module, "agreement_history", [])
        if history:  # the critic's within-group Spearman with the oracle on the last measured rollout
            metrics["critic_oracle_spearman_final"], metrics["critic_oracle_spearman_step"] = (
                history[-1][1],
                history[-1][0],
            )
        warning = divergence_warning(base, final, trainer.global_step)
        metrics["reward_hacking_warning"] = warning is not None
        if warning is not None:
            rank_zero_warn(f"end of fit, base vs trained on the paired evaluation: {warning}")
        atomic_write_json(out / "metrics.json", metrics)
        rank_zero_info(f"wrote {out / 'lora'} and {out / 'metrics.json'}: {json.dumps(metrics)}")


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
