"""GRPOModule on the tiny pixel-space Flux: real CPU steps change only the LoRA weights, the first update is exactly
on-policy, the logged terms exist, GRPO raises a simple reward (image brightness) within a few iterations, a group
of equal rewards trains nothing but still counts as a step, and 2 iterations equal 1 + checkpoint + resume + 1 bit
for bit (LoRA weights, optimizer state and data position); settings are checked, naming the field."""

from __future__ import annotations

import csv
import functools
import math

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger

from data_synthesis import SpatialWorldOracle
from rl_policy import (
    ClippedGRPO,
    DiffusionNFT,
    GroupSettings,
    GRPOModule,
    SamplerSettings,
    UpdateSettings,
    WeightedReward,
)
from rl_policy.data import PromptDataModule
from rl_policy.policy import build_policy, build_tiny_flux_pipeline, trainable_parameters

pytestmark = pytest.mark.usefixtures("one_thread")


class Brightness:
    """A Reward: the mean pixel value of each image (a target every sampler can move, unlike the oracle on an
    untrained generator's noise, whose rewards are all zero)."""

    def __call__(self, *, prompts, images, metadata=None) -> torch.Tensor:
        return torch.stack([image.float().mean() for image in images])


SETTINGS = dict(
    sampler=dict(resolution=32, num_steps=3, eval_num_steps=2, cfg_scale=2.0, noise_level=0.8),
    groups=dict(group_size=4, keep_per_side=1),
    updates=dict(micro_batch_size=4),
    objective=dict(clip_range=0.2, beta=0.01),
)
GROUP_OF = {name: group for group, names in SETTINGS.items() for name in names} | {
    name: group
    for group, names in [
        ("sampler", ["sde_steps", "shared_noise", "guidance"]),
        ("groups", ["filter_order", "std_scope", "min_spread_to_std"]),
        ("updates", ["updates_per_rollout", "max_grad_norm"]),
        ("objective", ["advantage_clip", "kl_form"]),
    ]
    for name in names
}


def make_module(reward=None, lr: float = 1e-2, objective: str = "grpo", nft: dict | None = None, **overrides):
    """The tiny module with the test settings; `overrides` by field name (each goes to its settings group), `nft`:
    DiffusionNFT's settings (objective="nft")."""
    torch.manual_seed(0)  # LoRA A is initialised from the global generator (the CLI seeds it with seed_everything)
    pipeline = build_tiny_flux_pipeline(max_prompt_tokens=160, seed=0)
    policy = build_policy(pipeline, lora_rank=4, max_sequence_length=161, strict_prompt_length=True)
    groups = {group: dict(values) for group, values in SETTINGS.items()}
    module_settings = {}
    for name, value in overrides.items():
        if name in GROUP_OF:
            groups[GROUP_OF[name]][name] = value
        else:
            module_settings[name] = value
    loss = groups.pop("objective")
    if objective == "nft":
        chosen = DiffusionNFT(advantage_clip=loss.get("advantage_clip", 5.0), **(nft or {}))
    else:
        chosen = ClippedGRPO(**loss)
    return GRPOModule(
        policy,
        reward or WeightedReward([Brightness()], [1.0]),
        functools.partial(torch.optim.AdamW, lr=lr),
        oracle=SpatialWorldOracle(),
        objective=chosen,
        sampler=SamplerSettings(**groups["sampler"]),
        groups=GroupSettings(**groups["groups"]),
        updates=UpdateSettings(**groups["updates"]),
        **(dict(eval_every_n_steps=0, image_every_n_steps=0) | module_settings),
    )


def trainer(tmp_path, steps: int, **overrides) -> Trainer:
    settings = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    return Trainer(accelerator="cpu", max_steps=steps, **(settings | overrides))


def assert_same_lora(first: GRPOModule, second: GRPOModule) -> None:
    ours, theirs = trainable_parameters(first.transformer), trainable_parameters(second.transformer)
    assert ours.keys() == theirs.keys()
    for name, value in ours.items():
        assert torch.equal(value, theirs[name]), name


def test_steps_change_only_lora_weights_and_the_first_update_is_on_policy(small_dataset, tmp_path):
    module = make_module()
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
    assert (
        module.agreement_history[0][0] == 0
    )  # measured on the first rollout (NaN: nothing found in untrained samples)
    results = module.evaluate(["a red circle is left of a blue square."], None)
    assert set(results) == {"reward", "num_eval_samples"}


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


@pytest.mark.parametrize("settings", [{}, dict(objective="nft", keep_per_side=2)])
def test_resume_is_bit_exact(small_dataset, tmp_path, settings):
    # the second case: the NFT objective (rl_policy.nft), whose noised copies are drawn from (seed, step) too
    straight = make_module(**settings)
    trainer(tmp_path / "a", 2, enable_checkpointing=False).fit(
        straight, PromptDataModule(small_dataset, prompts_per_step=2, num_eval_prompts=2)
    )
    first = make_module(**settings)
    run = trainer(tmp_path / "b", 1, enable_checkpointing=False)
    run.fit(first, PromptDataModule(small_dataset, prompts_per_step=2, num_eval_prompts=2))
    run.save_checkpoint(tmp_path / "half.ckpt")
    saved = torch.load(tmp_path / "half.ckpt", weights_only=False)
    assert saved["state_dict"] and all("lora" in key for key in saved["state_dict"])
    resumed = make_module(**settings)
    trainer(tmp_path / "c", 2, enable_checkpointing=False).fit(
        resumed,
        PromptDataModule(small_dataset, prompts_per_step=2, num_eval_prompts=2),
        ckpt_path=tmp_path / "half.ckpt",
    )
    assert_same_lora(straight, resumed)


def logged_rows(tmp_path, name: str) -> list[dict[str, str]]:
    (path,) = (tmp_path / name).rglob("metrics.csv")
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_held_out_evaluation_is_logged_once_per_evaluation(small_dataset, tmp_path):
    # self.log in training_step would repeat the last evaluation at every later step (a staircase in TensorBoard)
    module = make_module(eval_every_n_steps=2)
    trainer(tmp_path, 3, enable_checkpointing=False, logger=CSVLogger(tmp_path, name="log"), log_every_n_steps=1).fit(
        module, PromptDataModule(small_dataset, prompts_per_step=2, num_eval_prompts=2)
    )
    rows = logged_rows(tmp_path, "log")
    assert [int(row["step"]) for row in rows if row.get("eval/reward")] == [0, 2]  # step 0: before any update
    assert sum(bool(row.get("train/reward_mean")) for row in rows) == 3
    # the monitor's agreement on the rollouts of the first, the evaluation and the last steps (here 0 and 2), logged
    # once each
    assert [step for step, _ in module.agreement_history] == [0, 2]
    assert [int(row["step"]) for row in rows if row.get("train/critic_oracle_spearman")] == [0, 2]
    assert module.first_eval["num_relations"] > 0 and set(module.first_eval) >= {"reward", "oracle_accuracy"}


def test_settings_are_checked_with_the_field_named():
    with pytest.raises(ValueError, match="keep_per_side"):
        make_module(keep_per_side=3)  # 3 per side of a group of 4
    with pytest.raises(ValueError, match="micro_batch_size"):
        make_module(micro_batch_size=0)
    with pytest.raises(ValueError, match="sde_steps"):
        make_module(sde_steps=[3])  # the 3-step schedule has steps 0-2
    with pytest.raises(ValueError, match="beta"):
        make_module(beta=-1.0)


def test_fit_command_trains_exports_lora_and_metrics(small_dataset, tmp_path):
    """`python -m rl_policy fit` with the tiny random policy and the oracle: the LoRA reloads into a FluxPipeline
    (and changes its output), and metrics.json has the base/final keys of docs/DESIGN.md."""
    import json

    from diffusers import FluxPipeline

    from rl_policy.__main__ import main
    from rl_policy.data import load_prompts
    from rl_policy.policy import build_tiny_flux_pipeline

    root = tmp_path / "run"
    argv = [
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
        "--model.groups.group_size",
        "4",
        "--model.groups.keep_per_side",
        "1",
        "--model.sampler.num_steps",
        "2",
        "--model.sampler.eval_num_steps",
        "2",
        "--data.source",
        str(small_dataset),
        "--data.num_eval_prompts",
        "2",
        "--export.seeds",
        "1",
        "--export.base_cache",
        str(tmp_path / "cache"),
    ]
    assert main(argv) == 0
    metrics = json.loads((root / "metrics.json").read_text())
    # every test prompt of the split, 1 seed; the base side was drawn once and cached, and a second run (another
    # training seed) reads it back: the same base numbers, the same noise
    num_test = len(load_prompts(small_dataset, "test"))
    assert metrics["num_eval_prompts"] == num_test and metrics["num_eval_samples"] == num_test
    (cached,) = (tmp_path / "cache").glob("*.safetensors")
    written = cached.stat().st_mtime_ns
    argv[argv.index(str(root))] = str(tmp_path / "again")
    assert main([*argv, "--seed_everything", "7", "--model.seed", "7"]) == 0
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert [*(tmp_path / "cache").glob("*.safetensors")] == [cached] and cached.stat().st_mtime_ns == written
    for key in ("reward_base", "oracle_accuracy_base", "all_found_base"):
        assert again[key] == metrics[key], key
    assert metrics["reward_source"] == "oracle" and metrics["global_step"] == 1
    for key in ("reward", "oracle_accuracy", "all_found"):
        assert 0 <= metrics[f"{key}_base"] <= 1 and 0 <= metrics[f"{key}_final"] <= 1
    assert metrics["critic_oracle_spearman_step"] == 0 and isinstance(metrics["reward_hacking_warning"], bool)
    spearman = metrics["critic_oracle_spearman_final"]  # null where every group's oracle values tied, never NaN
    assert spearman is None or -1 <= spearman <= 1
    json.loads((root / "metrics.json").read_text(), parse_constant=lambda name: pytest.fail(f"{name} in metrics.json"))
    from data_synthesis import FAMILIES

    for side in ("base", "final"):  # per family among all-found images: counts add up to the overall rate's
        accuracy = metrics[f"relation_accuracy_all_found_by_family_{side}"]
        counts = metrics[f"num_relations_all_found_by_family_{side}"]
        assert set(accuracy) == set(counts) == set(FAMILIES)
        assert all((accuracy[f] is None) == (counts[f] == 0) for f in FAMILIES)
        if sum(counts.values()):
            confirmed = sum(accuracy[f] * counts[f] for f in FAMILIES if counts[f])
            overall = metrics[f"relation_accuracy_all_found_{side}"]
            assert confirmed / sum(counts.values()) == pytest.approx(overall)
    policy = json.loads((root / "lora" / "policy.json").read_text())
    assert policy["base_pipeline"] == "tiny-random" and policy["pipeline_class"] == "FluxPipeline"
    pipeline = build_tiny_flux_pipeline(max_prompt_tokens=160)
    assert isinstance(pipeline, FluxPipeline)
    pipeline.load_lora_weights(root / "lora")
    assert any("lora" in name for name, _ in pipeline.transformer.named_parameters())


def test_policy_spec_passes_the_throughput_switches_to_the_policy():
    from rl_policy.training import PolicySpec

    policy = PolicySpec(
        lora_rank=4, forward_batch_size=3, grad_attention="flash", no_grad_attention="math", max_sequence_length=160
    ).build()
    assert (policy.forward_batch_size, policy.grad_attention, policy.no_grad_attention) == (3, "flash", "math")
    assert PolicySpec(lora_rank=4, max_sequence_length=160).build().forward_batch_size is None


def test_eval_scores_give_placement_per_family_among_all_found_images():
    """Three images judged by hand-made verdicts: the first has both objects (left_of holds, above fails), the second
    too (left_of fails), the third misses one (its left_of, confirmed by chance, counts only over all images).
    Overall 2 of 4 relations hold; among all-found images 1 of 3: horizontal 1/2, vertical 0/1, depth none."""
    from data_synthesis.oracle import OracleVerdict
    from rl_policy.evaluation import score_eval_images

    verdicts = [
        OracleVerdict((True, False), ("left_of", "above"), True),
        OracleVerdict((False,), ("right_of",), True),
        OracleVerdict((True,), ("left_of",), False),
    ]

    class HandJudge:
        def judge(self, image, meta):
            return verdicts[int(image[0, 0, 0])]

    def reward(prompts, images, metadata):
        return torch.tensor([0.5, float("nan"), 1.0])

    images = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 3, 2, 2)
    scores = score_eval_images(images, ["a", "b", "c"], [{}, {}, {}], reward, HandJudge())
    assert scores["reward"] == 0.75 and scores["num_eval_samples"] == 3  # the NaN reward left out
    assert scores["oracle_accuracy"] == 0.5 and scores["num_relations"] == 4
    assert scores["all_found"] == pytest.approx(2 / 3) and scores["relation_accuracy_all_found"] == pytest.approx(1 / 3)
    assert scores["relation_accuracy_all_found/horizontal"] == 0.5 and scores["num_relations_all_found/horizontal"] == 2
    assert scores["relation_accuracy_all_found/vertical"] == 0.0 and scores["num_relations_all_found/vertical"] == 1
    assert math.isnan(scores["relation_accuracy_all_found/depth"]) and scores["num_relations_all_found/depth"] == 0


class GaussianBrightness(Brightness):
    """A Gaussian reward: brightness as the mean, with a constant std, like the critic's (mean, std)."""

    def __init__(self, std: float) -> None:
        self.std = std

    def mean_and_std(self, *, prompts, images):
        mean = self(prompts=prompts, images=images)
        return mean, torch.full_like(mean, self.std)


def test_groups_a_gaussian_reward_cannot_order_train_nothing(small_dataset, tmp_path):
    """With a std far above the groups' spread every group is uncertain: no weight moves, the groups are counted;
    the same reward without the gate trains."""
    data = functools.partial(PromptDataModule, small_dataset, prompts_per_step=2, num_eval_prompts=2)
    gated = make_module(reward=GaussianBrightness(std=10.0), min_spread_to_std=2.0)
    before = {name: p.detach().clone() for name, p in trainable_parameters(gated.transformer).items()}
    run = trainer(tmp_path / "gated", 2, enable_checkpointing=False)
    run.fit(gated, data())
    assert run.global_step == 2 and gated.counters["uncertain_groups"] == 4
    assert gated.last_reward_std is not None and torch.all(gated.last_reward_std == 10.0)
    for name, parameter in trainable_parameters(gated.transformer).items():
        assert torch.equal(parameter, before[name]), name

    confident = make_module(reward=GaussianBrightness(std=1e-6), min_spread_to_std=2.0)
    trainer(tmp_path / "confident", 1, enable_checkpointing=False).fit(confident, data())
    assert confident.counters["uncertain_groups"] == 0
    moved = [n for n, p in trainable_parameters(confident.transformer).items() if not torch.equal(p, before[n])]
    assert moved
