"""The policy's throughput switches (rl_policy.policy) give the numbers of the default path on the tiny Flux: the
samples per transformer call capped (`forward_batch_size`), the SDPA backend chosen per pass (with / without
gradients), regional torch.compile of the transformer blocks (one GRPO step's LoRA update), and the reference
forward skipped when beta = 0."""

from __future__ import annotations

import contextlib
import time

import pytest
import torch
from test_rl_grpo_module import make_module

from rl_policy import ClippedGRPO
from rl_policy.data import PromptBatch
from rl_policy.policy import (
    build_policy,
    build_tiny_flux_pipeline,
    compile_transformer_blocks,
    trainable_parameters,
)
from rl_policy.rollout import initial_noise

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["a red circle left of a blue square", "a green triangle above a red circle", "a blue square"]


def tiny_policy(**switches):
    torch.manual_seed(0)
    policy = build_policy(build_tiny_flux_pipeline(seed=0), lora_rank=4, **switches)
    with torch.no_grad():  # a non-zero LoRA B, so that the adapter changes the velocity
        for name, parameter in trainable_parameters(policy.transformer).items():
            if "lora_B" in name:
                parameter.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return policy


def velocity_inputs(policy, count: int = 5):
    generator = torch.Generator().manual_seed(1)
    latents = initial_noise(policy, count, 32, 32, generator)
    sigma = torch.rand(count, generator=generator)
    prompt = policy.encode_prompts([PROMPTS[i % len(PROMPTS)] for i in range(count)])
    negative = policy.encode_prompts([""] * count)
    return latents, sigma, prompt, negative


@pytest.mark.parametrize("forward_batch_size", [1, 2, 4])
def test_capped_forward_batch_gives_the_whole_batch_velocity(forward_batch_size):
    whole, capped = tiny_policy(), tiny_policy(forward_batch_size=forward_batch_size)
    latents, sigma, prompt, negative = velocity_inputs(whole)
    rows = []
    capped.transformer.register_forward_pre_hook(
        lambda _, args, kwargs: rows.append(len(kwargs["hidden_states"])), with_kwargs=True
    )
    with torch.no_grad():
        expected = whole.velocity(latents, sigma, prompt, 32, 32, negative=negative, true_cfg_scale=3.0)
        got = capped.velocity(latents, sigma, prompt, 32, 32, negative=negative, true_cfg_scale=3.0)
    assert sum(rows) == 2 * 5 and max(rows) == 2 * forward_batch_size  # both guidance halves in each call
    # the same per-sample computation in smaller matmuls: float32 rounding differs in the last bits (here up to
    # 1.5e-6 on velocities of order 1, the guidance scale 3 amplifying the two passes' difference)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_attention_backend_per_pass():
    """Math and CPU flash attention give the default's velocity, with and without gradients; the backend really is
    switched per pass: cuDNN (CUDA only) fails exactly in the pass it is chosen for."""
    default = tiny_policy()
    latents, sigma, prompt, _ = velocity_inputs(default)
    with torch.no_grad():
        expected = default.velocity(latents, sigma, prompt, 32, 32)
    for backend in ("math", "flash"):
        policy = tiny_policy(grad_attention=backend, no_grad_attention=backend)
        with torch.no_grad():
            torch.testing.assert_close(policy.velocity(latents, sigma, prompt, 32, 32), expected)
        torch.testing.assert_close(policy.velocity(latents, sigma, prompt, 32, 32).detach(), expected)
    sampling_only = tiny_policy(no_grad_attention="cudnn")
    torch.testing.assert_close(sampling_only.velocity(latents, sigma, prompt, 32, 32).detach(), expected)
    with torch.no_grad(), pytest.raises(RuntimeError, match="kernel"):
        sampling_only.velocity(latents, sigma, prompt, 32, 32)
    with pytest.raises(ValueError, match="grad_attention must be None or one of"):
        tiny_policy(grad_attention="flash2")
    with pytest.raises(ValueError, match="forward_batch_size must be None or positive"):
        tiny_policy(forward_batch_size=0)


class CountingReference:
    def __init__(self, reference) -> None:
        self.reference, self.entered = reference, 0

    @contextlib.contextmanager
    def __call__(self):
        self.entered += 1
        with self.reference():
            yield


def grpo_step(module, objective, trajectory_and_rewards=None):
    """One GRPO loss + backward on the module's first rollout; -> (loss, LoRA gradients, trajectory, rewards, the
    reference calls counted)."""
    batch = PromptBatch(prompt_ids=["0", "1"], prompts=PROMPTS[:2], metadata=[None, None])
    trajectory, _, rewards = trajectory_and_rewards or module.rollout(batch)
    call = module.policy_call(batch, trajectory)
    counting = CountingReference(call.reference)
    call = call._replace(reference=counting)
    samples = torch.arange(trajectory.num_samples)
    steps = objective.second_axis(trajectory)[:1].expand(len(samples))
    advantages = rewards - rewards.mean()
    module.transformer.zero_grad(set_to_none=True)
    loss, _ = objective.loss(trajectory, samples, steps, advantages, None, call)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in trainable_parameters(module.transformer).items()}
    return loss.detach(), grads, (trajectory, None, rewards), counting.entered


def test_reference_forward_only_when_beta_is_positive():
    module = make_module()
    _, _, rollout, entered = grpo_step(module, ClippedGRPO(clip_range=0.2, beta=0.01))
    assert entered == 1
    loss, grads, _, entered = grpo_step(module, ClippedGRPO(clip_range=0.2, beta=0.0), rollout)
    assert entered == 0 and torch.isfinite(loss) and any(g.abs().sum() > 0 for g in grads.values())


@pytest.mark.slow  # inductor compiles the two block classes (with and without the adapter, forward and backward)
def test_compiled_blocks_give_the_eager_lora_update():
    """One GRPO step (clipped loss + KL to the reference, so both the adapted and the adapter-off graphs run) on the
    same rollout, eager and with every block compiled: the same loss and LoRA gradients, so the same SGD update.
    Tolerance: inductor fuses the elementwise ops and may reorder float32 reductions, a relative rounding of about
    1e-6 per op; through 3 blocks and the log-prob's mean over 3,072 elements the gradients agree to ~1e-5 of their
    scale, so rtol 1e-4 with atol 1e-4 x max |gradient| leaves a margin and still fails on any real difference
    (a dropped term or a wrong adapter state changes gradients by O(1) of their scale)."""
    module = make_module()
    objective = ClippedGRPO(clip_range=0.2, beta=0.01)
    eager_loss, eager_grads, rollout, _ = grpo_step(module, objective)
    assert compile_transformer_blocks(module.transformer) == 3
    start = time.perf_counter()
    loss, grads, _, entered = grpo_step(module, objective, rollout)
    print(f"compiled GRPO step (compilation included): {time.perf_counter() - start:.1f} s")
    assert entered == 1
    torch.testing.assert_close(loss, eager_loss, rtol=1e-4, atol=1e-6)
    scale = max(g.abs().max() for g in eager_grads.values())
    assert scale > 0
    lr = 1e-2
    for name, gradient in eager_grads.items():
        torch.testing.assert_close(-lr * grads[name], -lr * gradient, rtol=1e-4, atol=1e-4 * lr * scale, msg=name)
