"""Pretraining of the tiny generator on real SpatialWorld pairs: a few rectified-flow steps move every transformer
weight and nothing frozen, the EMA follows, the oracle evaluation runs on real ODE samples, and the saved pipeline
reloads with exactly the EMA weights."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from lightning.pytorch import Trainer

from data_synthesis.scene import COLOURS
from rl_policy.policy import FluxPolicy, build_tiny_flux_pipeline, load_pipeline
from rl_policy.pretrain import (
    GeneratorPretrainDataModule,
    GeneratorPretrainModule,
    object_token_weights,
    rectified_flow_loss,
    save_generator,
    training_sigmas,
)
from rl_policy.rollout import sample_ode
from shared.schedules import lr_factor

pytestmark = pytest.mark.usefixtures("one_thread")


def quiet_trainer(**options) -> Trainer:
    """A CPU Trainer without logger, checkpoints, progress bar or summary."""
    return Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **options,
    )


def test_rectified_flow_loss_is_zero_for_the_exact_velocity():
    clean, noise = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    assert rectified_flow_loss(noise - clean, noise, clean).item() == 0.0
    assert rectified_flow_loss(torch.zeros(2, 4, 3), noise, clean).item() == pytest.approx(
        ((noise - clean) ** 2).mean().item()
    )


def test_weighted_flow_loss_and_object_token_weights_against_hand_values():
    clean, noise = torch.zeros(1, 2, 2), torch.tensor([[[1.0, 1.0], [2.0, 2.0]]])
    velocity = torch.zeros(1, 2, 2)  # squared errors per token: 1 and 4
    assert rectified_flow_loss(velocity, noise, clean, torch.ones(1, 2)).item() == pytest.approx(2.5)
    assert rectified_flow_loss(velocity, noise, clean, torch.tensor([[1.0, 3.0]])).item() == pytest.approx(13 / 4)
    # a 4x4 image on a 2x2 token grid: object 0 covers the top-left token whole and half of the top-right one;
    # object 1 overlaps object 0 on the top-left token (counted once); object 2 is absent (colour -1)
    regions = torch.zeros(1, 3, 4, 4)
    regions[0, 0, :2, :3] = 1
    regions[0, 1, :2, :2] = 1
    regions[0, 2] = 1
    colours = torch.tensor([[4, 2, -1]])
    weights = object_token_weights(regions, colours, (2, 2), 4.0)
    assert weights.tolist() == [[5.0, 3.0, 1.0, 1.0]]


def test_lr_factor_warms_up_holds_and_decays_to_zero():
    assert [lr_factor(step, warmup_steps=4) for step in (0, 1, 3, 100)] == [0.25, 0.5, 1.0, 1.0]
    # decay over the last 10 of 100 steps: 1 up to step 90, then (100 - step) / 10
    factors = [lr_factor(step, warmup_steps=4, decay_steps=10, total_steps=100) for step in (50, 90, 95, 99, 100)]
    assert factors == [1.0, 1.0, 0.5, pytest.approx(0.1), 0.0]
    with pytest.raises(ValueError, match="decay_steps"):
        GeneratorPretrainModule(FluxPolicy(build_tiny_flux_pipeline()), decay_steps=10, total_steps=5)


def test_training_sigmas_distribution_and_time_shift():
    draw = lambda *args: training_sigmas(5, *args, generator=torch.Generator().manual_seed(3))  # noqa: E731
    uniform = torch.rand(5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(draw("uniform", 1.0), uniform)
    assert torch.equal(
        draw("logit_normal", 1.0), torch.sigmoid(torch.randn(5, generator=torch.Generator().manual_seed(3)))
    )
    # shift 3: 0.5 -> 1.5 / 2 = 0.75, 0.25 -> 0.75 / 1.5 = 0.5; the map is increasing and keeps 0 and 1
    assert torch.allclose(draw("uniform", 3.0), 3 * uniform / (1 + 2 * uniform))
    fixed = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert torch.allclose(3 * fixed / (1 + 2 * fixed), torch.tensor([0.0, 0.5, 0.75, 1.0]))
    shifted = training_sigmas(20_000, "logit_normal", 3.0, generator=torch.Generator().manual_seed(0))
    assert 0.35 < (shifted > 0.8).float().mean() < 0.42  # 39% above sigma .8 against logit-normal's 8%
    with pytest.raises(ValueError, match="sigma distribution"):
        training_sigmas(2, "cosine")
    with pytest.raises(ValueError, match="shift"):
        training_sigmas(2, "uniform", 0.0)
    with pytest.raises(ValueError, match="sigma distribution"):
        GeneratorPretrainModule(FluxPolicy(build_tiny_flux_pipeline()), sigma_distribution="beta")


def test_a_few_steps_train_the_transformer_only_and_the_saved_pipeline_holds_the_ema(small_dataset, tmp_path):
    pipeline = build_tiny_flux_pipeline(max_prompt_tokens=160)
    policy = FluxPolicy(pipeline, max_sequence_length=161, strict_prompt_length=True)
    module = GeneratorPretrainModule(policy, lr=1e-3, warmup_steps=1, eval_steps=2, ema_decay=0.5)
    datamodule = GeneratorPretrainDataModule(small_dataset, resolution=32, batch_size=4, num_eval_prompts=3)
    frozen = {name: p.detach().clone() for name, p in pipeline.text_encoder.named_parameters()}
    before = {name: p.detach().clone() for name, p in pipeline.transformer.named_parameters()}
    trainer = quiet_trainer(max_steps=3)
    trainer.fit(module, datamodule)
    changed = [name for name, p in pipeline.transformer.named_parameters() if not torch.equal(p, before[name])]
    assert len(changed) > 0.9 * len(before)
    assert all(torch.equal(p, frozen[name]) for name, p in pipeline.text_encoder.named_parameters())
    ema = dict(module.ema.named_parameters())
    assert any(not torch.equal(ema[name], p) for name, p in pipeline.transformer.named_parameters())

    metrics, images = module.evaluate(datamodule.eval_prompts, datamodule.eval_metadata, 32)
    assert images.shape == (3, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    assert 0 <= metrics["all_found"] <= 1 and metrics["num_eval_images"] == 3

    out = save_generator(module, tmp_path / "generator", metrics)
    reloaded = load_pipeline(out)
    for name, parameter in reloaded.transformer.named_parameters():
        assert torch.equal(parameter, ema[name]), name
    assert (out / "pretrain_metrics.json").is_file() and not (tmp_path / "generator.partial").exists()
    samples = sample_ode(
        FluxPolicy(reloaded, max_sequence_length=161), ["a red circle"], height=32, width=32, num_steps=2
    )
    assert samples.shape == (1, 3, 32, 32)


def test_pretrain_command_writes_a_loadable_pipeline_and_resumes(small_dataset, tmp_path, capsys):
    from rl_policy.__main__ import main

    args = ["pretrain", "--data", str(small_dataset), "--out", str(tmp_path / "gen"), "--steps", "2"]
    args += ["--batch-size", "4", "--eval-prompts", "2", "--eval-steps", "2", "--max-prompt-tokens", "160"]
    args += ["--decay-steps", "1"]
    main(args)
    metrics = json.loads((tmp_path / "gen" / "pipeline" / "pretrain_metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["num_eval_images"] == 2
    assert (tmp_path / "gen" / "logs" / "checkpoints" / "last.ckpt").is_file()
    main([*args[:6], "4", *args[7:]])  # more steps: resumes from last.ckpt
    assert json.loads((tmp_path / "gen" / "pipeline" / "pretrain_metrics.json").read_text())["steps"] == 4
    # resuming a copy of the run in another dir keeps writing last.ckpt (not last-v1.ckpt beside a stale one)
    shutil.copytree(tmp_path / "gen" / "logs", tmp_path / "copy" / "logs")
    main([*args[:4], str(tmp_path / "copy"), args[5], "6", *args[7:]])
    assert json.loads((tmp_path / "copy" / "pipeline" / "pretrain_metrics.json").read_text())["steps"] == 6
    assert not list((tmp_path / "copy" / "logs" / "checkpoints").glob("last-v*.ckpt"))
    with pytest.raises(SystemExit):
        main(["pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "x")])
    assert "is not a SpatialWorld dataset dir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args[:6], "3", "--decay-steps", "5"])
    assert "--decay-steps 5 exceeds --steps 3" in capsys.readouterr().err


def test_oracle_metrics_by_family_among_all_found_images():
    """Two images: the first has both objects (left_of holds, above fails), the second misses one (left_of fails).
    Over all relations 1 of 3 hold; among all-found images 1 of 2: horizontal 1/1, vertical 0/1, depth NaN (none)."""
    from data_synthesis.oracle import OracleVerdict
    from rl_policy.pretrain import oracle_metrics

    verdicts = [OracleVerdict((True, False), ("left_of", "above"), True), OracleVerdict((False,), ("left_of",), False)]
    metrics = oracle_metrics(verdicts)
    assert metrics["all_found"] == 0.5 and metrics["num_eval_images"] == 2
    assert metrics["relation_accuracy"] == pytest.approx(1 / 3) and metrics["relation_accuracy_all_found"] == 0.5
    assert metrics["relation_accuracy_all_found/horizontal"] == 1.0
    assert metrics["relation_accuracy_all_found/vertical"] == 0.0
    assert math.isnan(metrics["relation_accuracy_all_found/depth"]) and metrics["num_relations_all_found/depth"] == 0
    assert metrics["num_relations_all_found/horizontal"] == 1


def test_trained_text_encoders_move_with_their_ema_and_are_saved(small_dataset, tmp_path):
    """With train_text_encoders the CLIP and T5 weights change, their EMA follows, evaluation and the saved pipeline
    use the EMA encoders, and the policy's prompt cache holds nothing stale after either."""
    pipeline = build_tiny_flux_pipeline(max_prompt_tokens=160)
    policy = FluxPolicy(pipeline, max_sequence_length=161, strict_prompt_length=True)
    module = GeneratorPretrainModule(
        policy, lr=1e-3, warmup_steps=1, eval_steps=2, ema_decay=0.5, train_text_encoders=True
    )
    datamodule = GeneratorPretrainDataModule(small_dataset, resolution=32, batch_size=4, num_eval_prompts=2)
    before = {name: p.detach().clone() for name, p in pipeline.text_encoder_2.named_parameters()}
    trainer = quiet_trainer(max_steps=2)
    trainer.fit(module, datamodule)
    live = dict(pipeline.text_encoder_2.named_parameters())
    assert any(not torch.equal(p, before[name]) for name, p in live.items())
    averaged = dict(module.ema_text_encoders["text_encoder_2"].named_parameters())
    assert any(not torch.equal(averaged[name], p) for name, p in live.items())
    assert any(not torch.equal(averaged[name], before[name]) for name in before)

    metrics, _ = module.evaluate(datamodule.eval_prompts, datamodule.eval_metadata, 32)
    assert metrics["num_eval_images"] == 2 and not policy._cache
    assert policy.pipeline.text_encoder_2 is module.text_encoders["text_encoder_2"]
    reloaded = load_pipeline(save_generator(module, tmp_path / "generator", metrics))
    for name, parameter in reloaded.text_encoder_2.named_parameters():
        assert torch.equal(parameter, averaged[name]), name


def test_pretrain_command_warm_starts_from_a_saved_pipeline(small_dataset, tmp_path, capsys):
    from rl_policy.__main__ import main

    args = ["pretrain", "--data", str(small_dataset), "--steps", "1", "--batch-size", "4", "--eval-prompts", "1"]
    args += ["--eval-steps", "1", "--max-prompt-tokens", "160", "--decay-steps", "0", "--warmup-steps", "1"]
    main([*args, "--out", str(tmp_path / "first")])
    first = load_pipeline(tmp_path / "first" / "pipeline")
    main([*args, "--out", str(tmp_path / "second"), "--init-from", str(tmp_path / "first" / "pipeline"), "--lr", "0"])
    second = load_pipeline(tmp_path / "second" / "pipeline")
    for (name, parameter), other in zip(
        first.transformer.named_parameters(), second.transformer.parameters(), strict=True
    ):
        assert torch.equal(parameter, other), name  # learning rate 0: the warm start is the saved weights
    with pytest.raises(SystemExit):
        main([*args, "--out", str(tmp_path / "x"), "--init-from", str(tmp_path)])
    assert "is not a saved pipeline" in capsys.readouterr().err


def test_pretrain_command_stops_at_its_time_budget_and_saves(small_dataset, tmp_path, capsys):
    from rl_policy.__main__ import main

    args = ["pretrain", "--data", str(small_dataset), "--batch-size", "4", "--eval-prompts", "1", "--eval-steps", "1"]
    args += ["--max-prompt-tokens", "160", "--decay-steps", "0", "--warmup-steps", "1"]
    main([*args, "--steps", "100000", "--max-minutes", "0.001", "--out", str(tmp_path / "timed")])
    metrics = json.loads((tmp_path / "timed" / "pipeline" / "pretrain_metrics.json").read_text())
    assert 1 <= metrics["steps"] < 100000 and metrics["num_eval_images"] == 1
    with pytest.raises(SystemExit):
        main([*args, "--steps", "2", "--max-minutes", "0", "--out", str(tmp_path / "x")])
    assert "--max-minutes must be positive" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            main([*args, "--steps", "2", "--accelerator", "gpu", "--out", str(tmp_path / "x")])
        assert "torch sees no CUDA device" in capsys.readouterr().err


@pytest.mark.gpu
def test_pretrain_command_trains_on_a_gpu_in_bf16(small_dataset, tmp_path):
    from rl_policy.__main__ import main

    args = ["pretrain", "--data", str(small_dataset), "--batch-size", "4", "--eval-prompts", "2", "--eval-steps", "2"]
    args += ["--max-prompt-tokens", "160", "--decay-steps", "0", "--warmup-steps", "1", "--steps", "3"]
    main([*args, "--accelerator", "gpu", "--precision", "bf16-mixed", "--out", str(tmp_path / "gpu")])
    metrics = json.loads((tmp_path / "gpu" / "pipeline" / "pretrain_metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["num_eval_images"] == 2
    reloaded = load_pipeline(tmp_path / "gpu" / "pipeline")
    assert all(parameter.dtype == torch.float32 for parameter in reloaded.transformer.parameters())


def test_evaluation_runs_at_every_nth_epoch_end(small_dataset):
    policy = FluxPolicy(build_tiny_flux_pipeline(max_prompt_tokens=160), max_sequence_length=161)
    module = GeneratorPretrainModule(policy, warmup_steps=1, eval_every_epochs=2)
    epochs = []
    module._evaluate_and_log = lambda: epochs.append(module.current_epoch)
    datamodule = GeneratorPretrainDataModule(small_dataset, batch_size=2, num_eval_prompts=1)
    trainer = quiet_trainer(max_epochs=5, limit_train_batches=1)
    trainer.fit(module, datamodule)
    assert epochs == [1, 3]  # the ends of the 2nd and 4th of 5 epochs
    with pytest.raises(ValueError, match="eval_every_epochs"):
        GeneratorPretrainModule(policy, eval_every_epochs=0)


def test_pretrain_datamodule_adds_the_fresh_scenes_to_the_train_split(small_dataset, tmp_path):
    from data_synthesis.fresh import FreshScenes

    plain = GeneratorPretrainDataModule(small_dataset, resolution=32, num_eval_prompts=2)
    plain.setup()
    fresh_path = tmp_path / "fresh.safetensors"
    mixed = GeneratorPretrainDataModule(
        small_dataset, resolution=32, num_eval_prompts=2, fresh_scenes=20, fresh_seed=77, fresh_path=fresh_path
    )
    mixed.setup()
    fresh = FreshScenes.load(fresh_path)
    assert len(mixed.train) == len(plain.train) + 20
    assert mixed.train.prompts[len(plain.train) :] == fresh.prompts
    image, prompt, _, _ = mixed.train[len(plain.train) + 3]
    assert prompt == fresh.prompts[3]
    assert torch.equal((image * 255).round().to(torch.uint8), torch.from_numpy(fresh.images[3]).permute(2, 0, 1))
    assert mixed.eval_prompts == plain.eval_prompts
    short = GeneratorPretrainDataModule(
        small_dataset,
        resolution=32,
        num_eval_prompts=2,
        fresh_scenes=20,
        fresh_seed=77,
        fresh_path=fresh_path,
        prompt_fits=lambda prompt: len(prompt) < 400,
    )
    short.setup()
    kept = [prompt for prompt in fresh.prompts if len(prompt) < 400]
    assert 0 < len(kept) < 20, "the fixture's 3-6 object prompts straddle 400 characters"
    assert short.skipped_fresh == 20 - len(kept) and short.train.prompts[len(plain.train) :] == kept
    with pytest.raises(ValueError, match="fresh_path"):
        GeneratorPretrainDataModule(small_dataset, fresh_scenes=5)


def test_layout_head_trains_with_the_transformer_and_stays_out_of_the_saved_pipeline(small_dataset, tmp_path):
    policy = FluxPolicy(build_tiny_flux_pipeline(max_prompt_tokens=160), max_sequence_length=161)
    module = GeneratorPretrainModule(policy, warmup_steps=1, layout_loss_weight=1.0, eval_steps=1)
    datamodule = GeneratorPretrainDataModule(small_dataset, resolution=32, batch_size=4, num_eval_prompts=1)
    head = module.layout_head.weight.detach().clone()
    block = {name: p.detach().clone() for name, p in policy.transformer.transformer_blocks.named_parameters()}
    trainer = quiet_trainer(max_steps=2)
    trainer.fit(module, datamodule)
    assert not torch.equal(module.layout_head.weight, head)
    moved = [n for n, p in policy.transformer.transformer_blocks.named_parameters() if not torch.equal(p, block[n])]
    assert len(moved) > 0.9 * len(block)
    # the logged layout loss is a real cross-entropy: positive, and near log(classes) at a fresh head
    assert 0 < trainer.callback_metrics["train/layout_loss"].item() < 2 * math.log(len(COLOURS) + 1)
    save_generator(module, tmp_path / "pipeline", {})
    reloaded = load_pipeline(tmp_path / "pipeline")
    assert type(reloaded.transformer).__name__ == "FluxTransformer2DModel"
    assert not any("layout" in name for name in reloaded.transformer.state_dict())
    with pytest.raises(ValueError, match="layout_loss_weight"):
        GeneratorPretrainModule(policy, layout_loss_weight=-1.0)


def test_object_weighted_flow_loss_trains_and_counts_object_tokens_more(small_dataset):
    torch.manual_seed(0)
    policy = FluxPolicy(build_tiny_flux_pipeline(max_prompt_tokens=160), max_sequence_length=161)
    module = GeneratorPretrainModule(policy, warmup_steps=1, object_loss_weight=4.0, eval_steps=1)
    datamodule = GeneratorPretrainDataModule(small_dataset, resolution=32, batch_size=4, num_eval_prompts=1)
    datamodule.setup()
    images, prompts, regions, colours = next(iter(datamodule.train_dataloader()))
    grid = policy.latent_grid(32, 32)
    weights = object_token_weights(regions, colours, grid, 4.0)
    assert weights.shape == (4, grid[0] * grid[1]) and (weights > 1).any() and (weights == 1).any()
    before = {name: p.detach().clone() for name, p in policy.transformer.named_parameters()}
    trainer = quiet_trainer(max_steps=2)
    trainer.fit(module, datamodule)
    moved = [n for n, p in policy.transformer.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) > 0.9 * len(before)
    with pytest.raises(ValueError, match="object_loss_weight"):
        GeneratorPretrainModule(policy, object_loss_weight=-1.0)
