"""Flow-GRPO policy optimisation of a flow-matching generator (FLUX.1-dev, Qwen-Image, or the tiny embedded Flux)
with an SDE sampler, top-k/bottom-k group filtering and a KL penalty to the reference. Built in the RL issue.

Built so far: the SDE step with log-probs and Flux's sigma schedule (`sde.py`), the GRPO maths (`grpo.py`), the
policy builders (`policy.py`: the tiny pixel-space FluxPipeline, loading FLUX.1-dev / Qwen-Image from a local
directory, LoRA and the adapter-disabled reference)."""

from rl_policy.grpo import (
    GroupAdvantages,
    PolicyLoss,
    filtered_advantages,
    flow_grpo_kl,
    gaussian_kl,
    group_advantages,
    grpo_clip_loss,
    kl_to_reference,
    topk_bottomk,
)
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
from rl_policy.sde import SDEStep, flux_shift_mu, flux_sigmas, ode_step, sde_step_with_logprob

__all__ = [
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
