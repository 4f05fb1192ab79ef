"""Stage B training pieces on a real small SpatialWorld dataset and a tiny Qwen2.5-VL: `PairwiseDataModule` batches
(orientation, winners first), bad images, a short Lightning fit (LoRA and head move, frozen weights do not),
accuracy by number of broken relations, and skipped non-finite steps."""

from __future__ import annotations

import functools
import logging
import math
import re
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image

from data_synthesis import DatasetError, load_pairs
from data_synthesis.render import render
from data_synthesis.scene import Scene, SceneError
from reward_model.data import (
    OMISSION_FAMILY,
    Degradation,
    Omission,
    PairBatch,
    PairwiseDataModule,
    PairwiseDataset,
    degrade,
    render_settings,
)
from reward_model.model import build_spatialscore, encode, tiny_backbone_config
from reward_model.module import BROKEN_GROUPS, AccuracyByBroken, RewardModule, correct_pairs, counts_by_broken

BATCH_PAIRS = 4


def tiny_network():
    """The builder of the real model with small numbers: 2 text layers of width 64, LoRA rank 4."""
    torch.manual_seed(0)
    config = tiny_backbone_config(text_hidden_size=64, text_layers=2, text_intermediate_size=128)
    return build_spatialscore(config, lora_rank=4, lora_alpha=8.0, lora_dropout=0.0, head_hidden_size=32)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().clone() for name, parameter in module.named_parameters()}


def quiet_trainer(**overrides) -> Trainer:
    arguments = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "max_epochs": 1,
    }
    return Trainer(**(arguments | overrides))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def widened_dataset(small_dataset, tmp_path):
    """A copy of the small dataset whose train split is tripled (138 pairs, each replica with its own image files),
    so that one bad pair is under 1% of the split and two are over."""
    out = tmp_path / "widened"
    shutil.copytree(small_dataset, out)
    _, frame = load_pairs(out)
    replicas = []
    for copy in (1, 2):
        rows = frame[frame["split"] == "train"].copy()
        rows["pair_id"] = rows["pair_id"] + f"-copy{copy}"
        for column in ("perfect_image", "perturbed_image"):
            renamed = rows[column].str.replace(".png", f"_copy{copy}.png", regex=False)
            for source, target in zip(rows[column], renamed, strict=True):
                shutil.copyfile(out / source, out / target)
            rows[column] = renamed
        replicas.append(rows)
    pd.concat([frame, *replicas], ignore_index=True).to_parquet(out / "pairs.parquet", index=False)
    return out


def image_chunks(inputs) -> list[torch.Tensor]:
    """pixel_values [sum of patches, D] split into one [patches, D] block per sequence."""
    sizes = inputs["image_grid_thw"].prod(dim=-1).tolist()
    return list(inputs["pixel_values"].split(sizes))


def test_batches_put_winners_first_in_either_orientation(small_dataset, processor):
    _, frame = load_pairs(small_dataset)
    frame = frame.set_index("pair_id")
    datamodule = PairwiseDataModule(small_dataset, processor, batch_size=BATCH_PAIRS, orientation="both")
    datamodule.setup("fit")
    assert len(datamodule.dataset("train")) == 2 * (frame["split"] == "train").sum()
    batch = next(iter(datamodule.val_dataloader()))  # unshuffled: pair 0 forward, pair 0 reversed, pair 1, ...
    assert batch.is_reversed.tolist() == [False, True, False, True]
    assert batch.pair_ids[0] == batch.pair_ids[1] and batch.pair_ids[2] == batch.pair_ids[3]
    assert batch.inputs["input_ids"].shape[0] == 2 * BATCH_PAIRS == batch.inputs["image_grid_thw"].shape[0]

    chunks = image_chunks(batch.inputs)
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]  # [2B, T]
    for row, (pair_id, is_reversed) in enumerate(zip(batch.pair_ids, batch.is_reversed.tolist(), strict=True)):
        pair = frame.loc[pair_id]
        perfect, perturbed = (
            Image.open(small_dataset / pair[column]).convert("RGB") for column in ("perfect_image", "perturbed_image")
        )
        prompt, winner, loser = (
            (pair["perturbed_prompt"], perturbed, perfect) if is_reversed else (pair["prompt"], perfect, perturbed)
        )
        expected = encode(processor, [prompt, prompt], [winner, loser])
        expected_chunks = image_chunks(expected)
        assert batch.prompts[row] == prompt
        assert batch.num_broken[row] == pair["num_broken"] and batch.broken_families[row] == pair["broken_families"]
        for sequence, which in ((row, 0), (row + BATCH_PAIRS, 1)):  # winner at row, loser at row + B
            assert torch.equal(ids[sequence][mask[sequence].bool()], expected["input_ids"][which])
            assert torch.equal(chunks[sequence], expected_chunks[which])
    assert any(frame["prompt"] != frame["perturbed_prompt"])  # the reversed reading really is another prompt

    reversed_only = PairwiseDataModule(small_dataset, processor, batch_size=BATCH_PAIRS, orientation="reversed")
    reversed_only.setup("validate")
    assert all(next(iter(reversed_only.val_dataloader())).is_reversed.tolist())


def test_degradations_are_off_by_default_seeded_and_change_the_image(small_dataset, processor):
    datamodule = PairwiseDataModule(small_dataset, processor)
    datamodule.setup("fit")
    records = datamodule.records["train"][:3]
    clean = PairwiseDataset(records)[0]
    assert PairwiseDataset(records, degradation=Degradation())[0].winner.tobytes() == clean.winner.tobytes()

    degradation = Degradation(downscale_to=32, blur_radius=1.0, noise_std=8.0, seed=1)
    first, again = (
        PairwiseDataset(records, degradation=degradation)[0],
        PairwiseDataset(records, "both", degradation)[1],
    )
    assert first.winner.size == clean.winner.size and first.winner.tobytes() != clean.winner.tobytes()
    assert first.winner.tobytes() == again.loser.tobytes()  # same pair, same degradation in either orientation
    other_seed = PairwiseDataset(records, degradation=Degradation(noise_std=8.0, seed=2))[0]
    assert other_seed.winner.tobytes() != first.winner.tobytes()
    downscaled = degrade(clean.winner, Degradation(downscale_to=16), np.random.default_rng(0))
    assert downscaled.size == clean.winner.size and len(np.unique(np.asarray(downscaled).reshape(-1, 3), axis=0)) > 1
    with pytest.raises(ValueError, match="probability"):
        Degradation(probability=2.0)


def test_omission_pairs_rerender_the_winner_without_exactly_one_object_on_the_train_split_only(
    small_dataset, processor
):
    _, frame = load_pairs(small_dataset)
    frame = frame.set_index("pair_id")
    datamodule = PairwiseDataModule(small_dataset, processor, orientation="both", omission=Omission(fraction=0.5))
    datamodule.setup("fit")
    train, val = datamodule.dataset("train"), datamodule.dataset("val")
    num_train = 2 * (frame["split"] == "train").sum()
    assert train.num_pairs == num_train and len(train) == num_train + round(0.5 * num_train)
    assert len(val) == 2 * (frame["split"] == "val").sum()  # never on evaluation splits
    settings = render_settings(datamodule.meta)
    assert (settings.resolution, settings.jitter, settings.noise) == (128, 8, 0.0)

    orientations = set()
    for number in range(12):
        example = train[train.num_pairs + number]
        pair = frame.loc[example.pair_id.split("-omission-")[0]]
        image_column, scene_column, prompt_column = (
            ("perturbed_image", "perturbed_scene", "perturbed_prompt")
            if example.is_reversed
            else ("perfect_image", "perfect_scene", "prompt")
        )
        orientations.add(example.is_reversed)
        assert example.prompt == pair[prompt_column]
        assert (example.num_broken, example.broken_families) == (0, OMISSION_FAMILY)
        with Image.open(small_dataset / pair[image_column]) as stored:
            assert example.winner.tobytes() == stored.convert("RGB").tobytes()
        scene = Scene.from_json(pair[scene_column])
        omitted = [
            obj
            for obj in scene.objects
            if render(scene, 128, seed=int(pair["render_seed"]), omit=(obj.colour,)).tobytes()
            == example.loser.tobytes()
        ]
        assert len(omitted) == 1  # the loser is the winner's scene minus exactly one object, nothing else changed
        assert f" {omitted[0].colour} " in example.prompt  # ... an object the prompt names (colours are unique)
        changed = np.any(np.asarray(example.loser) != np.asarray(example.winner), axis=-1).sum()
        assert changed >= Omission().min_changed_pixels
        again = PairwiseDataset(datamodule.records["train"], "both", None, Omission(fraction=0.5), settings)
        assert again[train.num_pairs + number].loser.tobytes() == example.loser.tobytes()  # seeded, not drawn anew
    assert orientations == {False, True}

    without_scenes = [record._replace(perfect_scene=None) for record in datamodule.records["train"]]
    with pytest.raises(DatasetError, match="omission pairs need SpatialWorld scenes to re-render: 0 of"):
        PairwiseDataset(without_scenes, "both", None, Omission(fraction=0.5), settings)
    with pytest.raises(SceneError, match="no object of that colour"):
        render(scene, 128, omit=("not-a-colour",))
    with pytest.raises(ValueError, match="Omission.fraction"):
        Omission(fraction=-0.1)


def test_a_corrupt_image_is_skipped_and_counted_and_over_one_percent_raises(widened_dataset, processor, caplog):
    (widened_dataset / "images/0000/0000000_perfect.png").write_bytes(b"not a png at all")
    datamodule = PairwiseDataModule(widened_dataset, processor, batch_size=BATCH_PAIRS)
    with caplog.at_level(logging.WARNING, logger="reward_model.data"):
        datamodule.setup("fit")
    assert datamodule.skipped == {"train": 1, "val": 0}
    assert len(datamodule.dataset("train")) == 137
    assert "sw-3-0000000" not in {record.pair_id for record in datamodule.records["train"]}
    assert "1 of 138 train pairs" in caplog.text and "corrupt" in caplog.text

    train_ids = load_pairs(widened_dataset)[1].query("split == 'train'")["perturbed_image"]
    (widened_dataset / train_ids.iloc[5]).unlink()  # a second bad pair: 2 / 138 = 1.4%
    message = rf"2 of 138 train pairs \(1\.4%\) in {re.escape(str(widened_dataset))} have a missing or corrupt image"
    with pytest.raises(DatasetError, match=message) as raised:
        PairwiseDataModule(widened_dataset, processor).setup("fit")
    assert "'corrupt': 1" in str(raised.value) and "'missing': 1" in str(raised.value)

    with pytest.raises(ValueError, match="has no processor"):
        PairwiseDataModule(widened_dataset).setup("test")
    with pytest.raises(ValueError, match="orientation must be one of"):
        PairwiseDataModule(widened_dataset, processor, orientation="sideways")


def test_fit_moves_lora_reward_row_and_head_and_leaves_frozen_weights_bit_identical(small_dataset):
    network = tiny_network()
    module = RewardModule(network, functools.partial(torch.optim.AdamW, lr=1e-2))
    datamodule = PairwiseDataModule(small_dataset, batch_size=BATCH_PAIRS, orientation="both")  # processor: network's
    before = snapshot(network)
    trainable = {name for name, parameter in network.named_parameters() if parameter.requires_grad}
    assert any("lora_A" in n for n in trainable) and any(n.startswith("head.") for n in trainable)
    assert any("trainable_tokens_delta" in n for n in trainable)

    trainer = quiet_trainer(max_steps=3, limit_val_batches=2, val_check_interval=3)
    trainer.fit(module, datamodule)

    assert trainer.global_step == 3 and module.skipped_steps == 0
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimised == {id(p) for p in network.parameters() if p.requires_grad}
    for name, parameter in network.named_parameters():
        if name in trainable:
            assert not torch.equal(parameter, before[name]), f"trainable {name} did not change"
        else:
            assert torch.equal(parameter, before[name]), f"frozen {name} changed"
    metrics = trainer.callback_metrics
    for name in ("train/loss", "train/acc", "train/margin", "train/std", "val/loss", "val/acc", "val/std"):
        assert name in metrics and torch.isfinite(metrics[name]), name
    assert any(name.startswith("val/acc_broken_") for name in metrics)


def test_validation_accuracy_by_broken_counts_the_perturbation_pairs_only():
    """A render pair (1 broken, right), a ranked pair (its count 1, wrong) and a generated pair (2 broken, right): the
    validation accuracy by broken relations reads 1.0 for "1" (the ranked pair's count is what the oracle confirmed,
    not a perturbation: with it "1" would be 0.5), as the export's pairwise_accuracy_by_broken does."""
    module = RewardModule(tiny_network(), functools.partial(torch.optim.AdamW, lr=1e-2))
    batch = PairBatch(
        inputs={},
        prompts=["a", "b", "c"],
        pair_ids=["r", "k", "g"],
        num_broken=torch.tensor([1, 1, 2]),
        broken_families=["left_of", "left_of", "above"],
        is_reversed=torch.tensor([False, False, False]),
        kinds=["render", "ranked", "generated"],
    )
    scores = (torch.tensor([2.0, 0.0, 1.0]), torch.ones(3), torch.tensor([1.0, 1.0, 0.0]), torch.ones(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        module._update_metrics("val", batch, torch.tensor(0.5), scores)
    accuracy = {group: value.item() for group, value in module.val_metrics["acc_broken"].compute().items()}
    assert accuracy["1"] == 1.0 and accuracy["2"] == 1.0 and math.isnan(accuracy["3"])


def test_accuracy_by_number_broken_on_hand_made_scores():
    """Pairs (mean_w, mean_l, broken): (2, 1, 1) right; (0.5, 0.5, 1) a tie, wrong; (1, 2, 2) wrong; (3, 1, 2) right;
    (0, -0.5, 3) right; (-1, -2, 3) right; (4, 5, 4) wrong and in no group. So 1 broken: 1/2, 2 broken: 1/2,
    3 broken: 2/2, 2-3 broken: 3/4."""
    mean_w = torch.tensor([2.0, 0.5, 1.0, 3.0, 0.0, -1.0, 4.0])
    mean_l = torch.tensor([1.0, 0.5, 2.0, 1.0, -0.5, -2.0, 5.0])
    num_broken = torch.tensor([1, 1, 2, 2, 3, 3, 4])
    correct = correct_pairs(mean_w, mean_l)
    assert correct.tolist() == [True, False, False, True, True, True, False]
    correct_counts, totals = counts_by_broken(correct, num_broken)
    assert list(BROKEN_GROUPS) == ["1", "2", "3", "2_3"]
    assert correct_counts.tolist() == [1, 1, 2, 3] and totals.tolist() == [2, 2, 2, 4]

    metric = AccuracyByBroken()
    metric.update(mean_w[:3], mean_l[:3], num_broken[:3])  # accumulated over two batches
    metric.update(mean_w[3:], mean_l[3:], num_broken[3:])
    assert {group: value.item() for group, value in metric.compute().items()} == {
        "1": 0.5,
        "2": 0.5,
        "3": 1.0,
        "2_3": 0.75,
    }
    metric.reset()
    metric.update(mean_w[:2], mean_l[:2], num_broken[:2])
    values = metric.compute()
    assert values["1"].item() == 0.5 and math.isnan(values["3"].item())  # a group without pairs is NaN


@pytest.mark.filterwarnings("ignore:`training_step` returned `None`")
def test_a_non_finite_loss_skips_the_step_and_is_counted(small_dataset):
    network = tiny_network()
    calls = []

    def poison_first_two(head, args, output):  # the first two training batches give a NaN mean
        calls.append(1)
        mean, std = output
        return (mean * float("nan"), std) if len(calls) <= 2 else output

    network.head.register_forward_hook(poison_first_two)
    module = RewardModule(network, functools.partial(torch.optim.AdamW, lr=1e-2), loss="bradley_terry")
    datamodule = PairwiseDataModule(small_dataset, batch_size=BATCH_PAIRS)
    before = snapshot(network)
    trainer = quiet_trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(module, datamodule)
    assert module.skipped_steps == 2 and trainer.callback_metrics["train/skipped_steps"] == 2
    assert not trainer.optimizers[0].state  # the optimizer never stepped
    for name, parameter in network.named_parameters():
        assert torch.equal(parameter, before[name]), f"{name} changed on a skipped step"

    trainer = quiet_trainer(max_steps=1, limit_val_batches=0)  # the hook now passes scores through: this step trains
    trainer.fit(module, datamodule)
    assert module.skipped_steps == 2
    assert any(not torch.equal(parameter, before[name]) for name, parameter in network.named_parameters())
