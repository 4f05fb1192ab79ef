"""GRPOModule on the tiny pixel-space Flux: real CPU steps change only the LoRA weights, the first update is exactly
on-policy, the logged terms exist, GRPO raises a simple reward (image brightness) within a few iterations, a group
of equal rewards trains nothing but still counts as a step, and 2 iterations equal 1 + checkpoint + resume + 1 bit
for bit (LoRA weights, optimizer state and data position)."""

from __future__ import annotations

import csv
import functools

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import CSVLogger

from data_synthesis import SpatialWorldOracle
from rl_policy.data import PromptBatch, PromptDataModule
from rl_policy.module import GRPOModule, WeightedReward
from rl_policy.policy import build_policy, build_tiny_flux_pipeline, trainable_parameters

pytestmark = pytest.mark.usefixtures("one_thread")


class Brightness:
    """A Reward: the mean pixel value of each image (a target every sampler can move, unlike the oracle on an
    untrained generator's noise, whose rewards are all zero)."""

    def __call__(self, *, prompts, images, metadata=None) -> torch.Tensor:
        return torch.stack([image.float().mean() for image in images])


def make_module(reward=None, lr: float = 1e-2, **overrides) -> GRPOModule:
    torch.manual_seed(0)  # LoRA A is initialised from the global generator (the CLI seeds it with seed_everything)
    pipeline = build_tiny_flux_pipeline(max_prompt_tokens=160, seed=0)
    policy = build_policy(pipeline, lora_rank=4, max_sequence_length=161, strict_prompt_length=True)
    oracle = SpatialWorldOracle()
    settings = dict(
        group_size=4,
        keep_per_side=1,
        resolution=32,
        num_steps=3,
        eval_num_steps=2,
        cfg_scale=2.0,
        noise_level=0.8,
        clip_range=0.2,
        beta=0.01,
        micro_batch_size=4,
        eval_every_n_steps=0,
        image_every_n_steps=0,
    )
    return GRPOModule(
        policy,
        reward or WeightedReward([Brightness()], [1.0]),
        functools.partial(torch.optim.AdamW, lr=lr),
        oracle=oracle,
        **(settings | overrides),
    )


def trainer(tmp_path, steps: int, **overrides) -> Trainer:
    settings = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    return Trainer(accelerator="cpu", max_steps=steps, **(settings | overrides))


def assert_same_lora(first: GRPOModule, second: GRPOModule) -> None:
    ours, theirs = trainable_parameters(first.transformer), trainable_parameters(second.transformer)
    assert ours.keys() == theirs.keys()
    for name, value in ours.items():
        assert torch.equal(value, theirs[name]), name


@pytest.mark.parametrize("noise_cell, antithetic", [(None, False), (4, False), (None, True)])
def test_steps_change_only_lora_weights_and_the_first_update_is_on_policy(
    small_dataset, tmp_path, noise_cell, antithetic
):
    # 4: coarse SDE noise, cells of 4 x 4 of the 16 x 16 latent; antithetic: mirrored SDE noise
    module = make_module(noise_cell=noise_cell, antithetic=antithetic)
    before = {name: p.detach().clone() for name, p in module.transformer.named_parameters()}
    lora = set(trainable_parameters(module.transformer))
    assert lora and all("lora" in name for name in lora)
    run = trainer(tmp_path, 2, enable_checkpointing=False)
    run.fit(module, PromptDataModule(small_dataset, prompts_per_step=2, num_eval_prompts=2))
    for name, parameter in module.transformer.named_parameters():
        assert torch.equal(parameter, before[name]) != (name in lora), name
    metrics = run.callback_metrics
    assert metrics["train/ratio_deviation_first"].item() == 0.0
    for name in ("train/reward_mean", "train/kl", "train/clip_fraction", "train/grad_norm", "train/approx_kl"):
        assert torch.isfinite(metrics[name]), name
    assert "train/critic_oracle_agreement" in metrics  # NaN here: the oracle finds nothing in untrained samples
    results = module.evaluate(["a red circle is left of a blue square."], None)
    assert set(results) == {"reward", "num_eval_samples"}


def test_antithetic_rollout_mirrors_each_pair_about_the_groups_shared_mean():
    """One initial noise per group, SDE on step 0 only: samples 2j and 2j + 1 leave the same state with opposite
    noise, so their sum after step 0 is the same for every pair of the group (twice the step's mean)."""
    module = make_module(antithetic=True, shared_noise=True, sde_steps=[0], group_size=6)
    batch = PromptBatch(["a", "b"], ["a red circle is left of a blue square.", "a green square."], None)
    trajectory, _, _ = module.rollout(batch)
    after = trajectory.latents[:, 1].view(2, 3, 2, -1)  # [prompt, pair, member, N * C]
    sums = after.sum(dim=2)  # [prompt, pair]
    torch.testing.assert_close(sums, sums[:, :1].expand_as(sums))
    assert not torch.allclose(after[:, 0, 0], after[:, 1, 0])  # different pairs, different noise
    with pytest.raises(ValueError, match="must be even"):
        make_module(antithetic=True, group_size=5)


@pytest.mark.parametrize("objective", ["grpo", "nft"])
def test_grpo_raises_the_reward(small_dataset, tmp_path, objective):
    module = make_module(lr=3e-2, updates_per_rollout=1, beta=0.0, keep_per_side=2, objective=objective)
    datamodule = PromptDataModule(small_dataset, prompts_per_step=2, num_eval_prompts=4)
    datamodule.setup("fit")
    prompts = [record.prompt for record in datamodule.eval_records]
    before = module.evaluate(prompts, None)["reward"]
    trainer(tmp_path, 8, enable_checkpointing=False).fit(module, datamodule)
    after = module.evaluate(prompts, None)["reward"]
    assert after > before + 0.02, (before, after)


def test_equal_rewards_train_nothing_but_count_as_a_step(small_dataset, tmp_path):
    module = make_module(reward=SpatialWorldOracle())  # zero for every sample of the untrained generator
    before = {name: p.detach().clone() for name, p in trainable_parameters(module.transformer).items()}
    run = trainer(tmp_path, 2, enable_checkpointing=False)
    run.fit(module, PromptDataModule(small_dataset, prompts_per_step=2, num_eval_prompts=2))
    assert run.global_step == 2 and module.counters["zero_variance_groups"] == 4
    for name, parameter in trainable_parameters(module.transformer).items():
        assert torch.equal(parameter, before[name]), name


@pytest.mark.parametrize(
    "ema_decay, settings", [(None, {}), (0.9, {}), (None, dict(objective="nft", beta=0.0, keep_per_side=2))]
)
def test_resume_is_bit_exact(small_dataset, tmp_path, ema_decay, settings):
    # the third case: the NFT objective (rl_policy.nft), whose noised copies are drawn from (seed, step) too
    straight = make_module(ema_decay=ema_decay, **settings)
    trainer(tmp_path / "a", 2, enable_checkpointing=False).fit(
        straight, PromptDataModule(small_dataset, prompts_per_step=2, num_eval_prompts=2)
    )
    first = make_module(ema_decay=ema_decay, **settings)
    run = trainer(tmp_path / "b", 1, enable_checkpointing=False)
    run.fit(first, PromptDataModule(small_dataset, prompts_per_step=2, num_eval_prompts=2))
    run.save_checkpoint(tmp_path / "half.ckpt")
    saved = torch.load(tmp_path / "half.ckpt", weights_only=False)
    assert saved["state_dict"] and all("lora" in key for key in saved["state_dict"])
    assert ("grpo_ema" in saved) == (ema_decay is not None)
    resumed = make_module(ema_decay=ema_decay, **settings)
    trainer(tmp_path / "c", 2, enable_checkpointing=False).fit(
        resumed,
        PromptDataModule(small_dataset, prompts_per_step=2, num_eval_prompts=2),
        ckpt_path=tmp_path / "half.ckpt",
    )
    assert_same_lora(straight, resumed)
    if ema_decay is not None:
        assert straight.ema.keys() == resumed.ema.keys()
        for name, average in straight.ema.items():
            assert torch.equal(average, resumed.ema[name]), name


class StopAfter(Callback):
    """Ends the fit after `steps` GRPO iterations, as a kill would, with trainer.max_steps (the schedule's length)
    unchanged."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_train_batch_end(self, trainer, *args) -> None:
        trainer.should_stop = trainer.global_step >= self.steps


def logged_rows(tmp_path, name: str) -> list[dict[str, str]]:
    (path,) = (tmp_path / name).rglob("metrics.csv")
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_lr_decay_is_linear_to_zero_over_the_last_iterations_and_resumes_exactly(small_dataset, tmp_path):
    # max_steps 3, decay over the last 2: iterations 0, 1, 2 use lr x 1, 1, 1/2; a kill after 2 and a resume
    # continue the schedule and end with the same LoRA weights as the uninterrupted run
    straight = make_module(lr=1e-2, lr_decay_steps=2)
    trainer(
        tmp_path, 3, enable_checkpointing=False, logger=CSVLogger(tmp_path, name="straight"), log_every_n_steps=1
    ).fit(straight, PromptDataModule(small_dataset, prompts_per_step=2, num_eval_prompts=2))
    rates = [float(row["train/lr"]) for row in logged_rows(tmp_path, "straight") if row.get("train/lr")]
    assert rates == pytest.approx([1e-2, 1e-2, 5e-3], rel=1e-6)
    assert straight.optimizers().optimizer.param_groups[0]["lr"] == 0.0
    first = make_module(lr=1e-2, lr_decay_steps=2)
    run = trainer(tmp_path / "b", 3, enable_checkpointing=False, callbacks=[StopAfter(2)])
    run.fit(first, PromptDataModule(small_dataset, prompts_per_step=2, num_eval_prompts=2))
    assert run.global_step == 2
    run.save_checkpoint(tmp_path / "killed.ckpt")
    resumed = make_module(lr=1e-2, lr_decay_steps=2)
    trainer(tmp_path / "c", 3, enable_checkpointing=False).fit(
        resumed,
        PromptDataModule(small_dataset, prompts_per_step=2, num_eval_prompts=2),
        ckpt_path=tmp_path / "killed.ckpt",
    )
    assert_same_lora(straight, resumed)


def test_lr_decay_longer_than_the_run_is_a_clear_error(small_dataset, tmp_path):
    with pytest.raises(ValueError, match="lr_decay_steps"):
        make_module(lr_decay_steps=-1)
    with pytest.raises(ValueError, match=r"lr_decay_steps \(5\) needs trainer.max_steps"):
        trainer(tmp_path, 3, enable_checkpointing=False).fit(
            make_module(lr_decay_steps=5), PromptDataModule(small_dataset, prompts_per_step=2, num_eval_prompts=2)
        )


def test_held_out_evaluation_is_logged_once_per_evaluation(small_dataset, tmp_path):
    # self.log in training_step would repeat the last evaluation at every later step (a staircase in TensorBoard)
    module = make_module(eval_every_n_steps=2)
    trainer(tmp_path, 3, enable_checkpointing=False, logger=CSVLogger(tmp_path, name="log"), log_every_n_steps=1).fit(
        module, PromptDataModule(small_dataset, prompts_per_step=2, num_eval_prompts=2)
    )
    rows = logged_rows(tmp_path, "log")
    assert [int(row["step"]) for row in rows if row.get("eval/reward")] == [2]
    assert sum(bool(row.get("train/reward_mean")) for row in rows) == 3


def test_lora_ema_is_the_running_mean_of_the_iterates_and_what_evaluation_and_export_use(small_dataset, tmp_path):
    from lightning.pytorch.callbacks import Callback
    from safetensors.torch import load_file

    from rl_policy.training import export_lora

    class Snapshots(Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            iterates.append({n: p.detach().clone() for n, p in trainable_parameters(pl_module.transformer).items()})

    module = make_module(ema_decay=0.9)
    iterates = [{n: p.detach().clone() for n, p in trainable_parameters(module.transformer).items()}]
    trainer(tmp_path, 3, enable_checkpointing=False, callbacks=[Snapshots()]).fit(
        module, PromptDataModule(small_dataset, prompts_per_step=2, num_eval_prompts=2)
    )
    assert len(iterates) == 4
    for name, average in module.ema.items():  # decays 1/2, 2/3, 3/4 (< 0.9): the mean of p0, p1, p2, p3
        expected = torch.stack([iterate[name].float() for iterate in iterates]).mean(0)
        assert torch.allclose(average, expected, atol=1e-6), name
        assert not torch.equal(average, iterates[-1][name].float())

    parameters = trainable_parameters(module.transformer)
    prompts = ["a red circle is left of a blue square."]
    with_ema = module.evaluate(prompts, None)["reward"]
    for name, parameter in parameters.items():  # evaluate put the current weights back
        assert torch.equal(parameter, iterates[-1][name]), name
    ema, module.ema = module.ema, None
    assert module.evaluate(prompts, None)["reward"] != with_ema  # it sampled with the EMA, not the current weights
    module.ema = ema
    exported = load_file(export_lora(module, tmp_path / "lora") / "pytorch_lora_weights.safetensors")
    expected = {"transformer." + name.replace(".default", ""): value for name, value in module.ema.items()}
    assert exported.keys() == expected.keys()
    for name, value in exported.items():
        assert torch.equal(value, expected[name].to(value.dtype)), name
    with pytest.raises(ValueError, match="ema_decay"):
        make_module(ema_decay=1.0)


def test_fit_command_trains_exports_lora_and_metrics(small_dataset, tmp_path):
    """`python -m rl_policy fit` with the tiny random policy and the oracle: the LoRA reloads into a FluxPipeline
    (and changes its output), and metrics.json has the base/final keys of DESIGN.md."""
    import json

    from diffusers import FluxPipeline

    from rl_policy.__main__ import main
    from rl_policy.policy import build_tiny_flux_pipeline

    root = tmp_path / "run"
    main(
        [
            "fit",
            "--config",
            "configs/rl/tiny.yaml",
            "--config",
            "configs/rl/reward_oracle.yaml",
            "--trainer.default_root_dir",
            str(root),
            "--trainer.max_steps",
            "1",
            "--trainer.callbacks",
            "[]",
            "--trainer.enable_progress_bar",
            "false",
            "--model.policy.pipeline",
            "tiny-random",
            "--model.policy.max_sequence_length",
            "160",
            "--model.policy.lora_rank",
            "4",
            "--model.group_size",
            "4",
            "--model.keep_per_side",
            "1",
            "--model.num_steps",
            "2",
            "--model.eval_num_steps",
            "2",
            "--data.source",
            str(small_dataset),
            "--data.num_eval_prompts",
            "2",
            "--export.seeds",
            "1",
        ]
    )
    metrics = json.loads((root / "metrics.json").read_text())
    assert metrics["reward_source"] == "oracle" and metrics["global_step"] == 1 and metrics["num_eval_samples"] == 2
    for key in ("reward", "oracle_accuracy", "all_found"):
        assert 0 <= metrics[f"{key}_base"] <= 1 and 0 <= metrics[f"{key}_final"] <= 1
    policy = json.loads((root / "lora" / "policy.json").read_text())
    assert policy["base_pipeline"] == "tiny-random" and policy["pipeline_class"] == "FluxPipeline"
    pipeline = build_tiny_flux_pipeline(max_prompt_tokens=160)
    assert isinstance(pipeline, FluxPipeline)
    pipeline.load_lora_weights(root / "lora")
    assert any("lora" in name for name, _ in pipeline.transformer.named_parameters())
