"""Flow-GRPO policy optimisation of a flow-matching generator (FLUX.1-dev, Qwen-Image, or the tiny embedded Flux)
with an SDE sampler, top-k/bottom-k group filtering and a KL penalty to the reference.

The SDE step with log-probs and Flux's sigma schedule (`sde.py`), the samplers (`rollout.py`), the GRPO maths
(`grpo.py`) and DiffusionNFT's (`nft.py`), the two objectives (`objectives.py`), the `Reward` protocol
(`reward.py`), the policy builders (`policy.py`: the tiny pixel-space FluxPipeline, FLUX.1-dev / Qwen-Image from a
local directory, LoRA and the adapter-disabled reference), `GRPOModule` (`module.py`), what the CLI trains and
exports (`training.py`), the prompts (`data.py`) and the tiny generator's pretraining (`pretrain.py`)."""

from rl_policy.grpo import (
    GroupAdvantages,
    GroupSettings,
    PolicyLoss,
    filtered_advantages,
    flow_grpo_kl,
    gaussian_kl,
    group_advantages,
    grpo_clip_loss,
    kl_to_reference,
    topk_bottomk,
)
from rl_policy.module import GRPOModule
from rl_policy.objectives import ClippedGRPO, DiffusionNFT, Objective
from rl_policy.policy import (
    FLUX_LORA_TARGETS,
    FluxPolicy,
    PixelUnshuffleAutoencoder,
    Policy,
    PromptEmbeddings,
    QwenImagePolicy,
    add_lora,
    build_policy,
    build_tiny_flux_pipeline,
    load_pipeline,
    reference_policy,
    trainable_parameters,
)
from rl_policy.reward import Reward, WeightedReward
from rl_policy.rollout import SamplerSettings
from rl_policy.sde import SDEStep, flux_shift_mu, flux_sigmas, ode_step, sde_step_with_logprob
from rl_policy.updates import UpdateSettings

__all__ = [
    "ClippedGRPO",
    "DiffusionNFT",
    "GRPOModule",
    "GroupSettings",
    "Objective",
    "Reward",
    "SamplerSettings",
    "UpdateSettings",
    "WeightedReward",
    "FLUX_LORA_TARGETS",
    "FluxPolicy",
    "GroupAdvantages",
    "PixelUnshuffleAutoencoder",
    "Policy",
    "PolicyLoss",
    "PromptEmbeddings",
    "QwenImagePolicy",
    "SDEStep",
    "add_lora",
    "build_policy",
    "build_tiny_flux_pipeline",
    "filtered_advantages",
    "flow_grpo_kl",
    "flux_shift_mu",
    "flux_sigmas",
    "gaussian_kl",
    "group_advantages",
    "grpo_clip_loss",
    "kl_to_reference",
    "load_pipeline",
    "ode_step",
    "reference_policy",
    "sde_step_with_logprob",
    "topk_bottomk",
    "trainable_parameters",
]
