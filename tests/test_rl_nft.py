"""The NFT objective (rl_policy.nft) against hand-computed values, its on-policy gradient (the clipped advantage
times the weighted flow-matching gradient, whatever beta is), and GRPOModule with the `DiffusionNFT` objective on
the tiny Flux: real steps change only the LoRA weights and the first update starts exactly at the rollout policy (a
simple reward rising, and resume: tests/test_rl_grpo_module.py, parametrized by objective)."""

from __future__ import annotations

import pytest
import torch
from test_rl_grpo_module import make_module, trainer

from rl_policy import DiffusionNFT
from rl_policy.data import PromptBatch, PromptDataModule
from rl_policy.nft import nft_loss, optimality_probability
from rl_policy.policy import trainable_parameters

pytestmark = pytest.mark.usefixtures("one_thread")


def test_optimality_probability_by_hand():
    advantages = torch.tensor([-10.0, -2.5, 0.0, 2.5, 10.0])
    expected = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    torch.testing.assert_close(optimality_probability(advantages, 5.0), expected)
    with pytest.raises(ValueError, match="advantage_clip"):
        optimality_probability(advantages, 0.0)


def test_nft_loss_by_hand():
    # v = [1, 3], v_old = [1, 1], v* = 0, sigma = 0.5, r = 0.75, beta = 1:
    # v+ = v, x0 errors [0.5, 1.5]: mean square 1.25 / mean |.| 1.0 = 1.25
    # v- = 2 v_old - v = [1, -1], errors [0.5, -0.5]: 0.25 / 0.5 = 0.5;  loss = 0.75 * 1.25 + 0.25 * 0.5 = 1.0625
    velocity = torch.tensor([[1.0, 3.0]])
    result = nft_loss(
        velocity, torch.tensor([[1.0, 1.0]]), torch.zeros(1, 2), torch.tensor([0.5]), torch.tensor([0.75])
    )
    torch.testing.assert_close(result.loss, torch.tensor([1.0625]))
    torch.testing.assert_close(result.drift, torch.tensor([2.0]))  # mean (v - v_old)^2 = (0 + 4) / 2
    # beta = 0.5: v+ = 0.5 v + 0.5 v_old = [1, 2] -> errors [0.5, 1]: 0.625 / 0.75; v- = 1.5 v_old - 0.5 v = [1, 0]
    # -> errors [0.5, 0]: 0.125 / 0.25 = 0.5; loss = (0.75 * 0.625 / 0.75 + 0.25 * 0.5) / 0.5 = 1.5
    half = nft_loss(
        velocity, torch.tensor([[1.0, 1.0]]), torch.zeros(1, 2), torch.tensor([0.5]), torch.tensor([0.75]), 0.5
    )
    torch.testing.assert_close(half.loss, torch.tensor([1.5]))
    with pytest.raises(ValueError, match="beta"):
        nft_loss(velocity, velocity, velocity, torch.tensor([0.5]), torch.tensor([0.5]), 0.0)


@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_on_policy_gradient_is_the_advantage_weighted_flow_matching_gradient(beta):
    torch.manual_seed(0)
    old, target = torch.randn(3, 8, 4), torch.randn(3, 8, 4)
    sigma, r = torch.tensor([1.0, 0.6, 0.2]), torch.tensor([0.9, 0.5, 0.1])
    velocity = old.clone().requires_grad_(True)
    nft_loss(velocity, old, target, sigma, r, beta).loss.sum().backward()
    regression = old.clone().requires_grad_(True)  # r = 1, beta = 1: plain weighted regression onto v*
    nft_loss(regression, old, target, sigma, torch.ones(3), 1.0).loss.sum().backward()
    torch.testing.assert_close(velocity.grad, (2 * r - 1)[:, None, None] * regression.grad)
    assert velocity.grad[1].abs().max() < 1e-7  # r = 1/2: no push at the rollout policy (rounding aside)


@pytest.mark.parametrize("noise, steps", [("fresh", None), ("trajectory", [0, 1])])
def test_nft_steps_change_only_lora_weights_and_start_at_the_rollout_policy(small_dataset, tmp_path, noise, steps):
    module = make_module(objective="nft", keep_per_side=2, nft=dict(noise=noise, steps=steps))
    before = {name: p.detach().clone() for name, p in module.transformer.named_parameters()}
    lora = set(trainable_parameters(module.transformer))
    run = trainer(tmp_path, 2, enable_checkpointing=False)
    run.fit(module, PromptDataModule(small_dataset, prompts_per_step=2, num_eval_prompts=2))
    for name, parameter in module.transformer.named_parameters():
        assert torch.equal(parameter, before[name]) != (name in lora), name
    metrics = run.callback_metrics
    assert metrics["train/nft_drift_first"].item() == 0.0  # v_old is exactly the rollout policy's velocity
    assert metrics["train/nft_drift"].item() > 0.0  # the second update starts from moved weights
    assert torch.isfinite(metrics["train/loss"]) and torch.isfinite(metrics["train/grad_norm"])


def test_nft_trajectory_inputs_are_the_rollout_states():
    module = make_module(objective="nft", nft=dict(noise="trajectory", steps=[0, 2]))
    batch = PromptBatch(["a", "b"], ["a red circle is left of a blue square.", "a green square."], None)
    trajectory, _, _ = module.rollout(batch)
    pairs = torch.cartesian_prod(torch.arange(trajectory.num_samples), torch.arange(2))
    inputs = module.objective.prepare(trajectory, pairs, module.policy_call(batch, trajectory))
    sigma = inputs.sigma[..., None, None]  # [S, 2, 1, 1]
    torch.testing.assert_close(inputs.sigma[0], trajectory.sigmas[[0, 2]])
    rebuilt = (1 - sigma) * trajectory.latents[:, -1:] + sigma * inputs.noise
    torch.testing.assert_close(rebuilt, trajectory.latents[:, [0, 2]])


def test_nft_settings_are_checked():
    with pytest.raises(ValueError, match="NFT beta"):
        DiffusionNFT(beta=0.0)
    with pytest.raises(ValueError, match="NFT noise"):
        DiffusionNFT(noise="gaussian")
    with pytest.raises(ValueError, match="NFT steps"):
        make_module(objective="nft", nft=dict(steps=[3]))  # the 3-step schedule has steps 0-2
