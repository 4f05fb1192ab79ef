"""Stage A (grounded-caption pretraining of the tiny Qwen2.5-VL): captions of a hand-made scene, the answer-only loss
mask, the curriculum stream, the patch position embedding's order, a few real steps (every weight moves, the loss
falls) and the save/load round trip, including the path `build_spatialscore` takes."""

from __future__ import annotations

import functools

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import get_vision_position_ids

from data_synthesis import Background, Scene, SceneObject, render
from reward_model.model import build_spatialscore, tiny_backbone_config
from reward_model.pretrain import (
    IGNORE_INDEX,
    OBJECT_WORD,
    POSITION_DIGIT,
    POSITION_EMBEDDING_FILE,
    CaptionCollator,
    CaptionExample,
    CaptionPretrainModule,
    GroundedCaptionDataModule,
    build_caption_model,
    caption_loss,
    grounded_caption,
    load_caption_model,
    max_objects_at,
    patch_grid_positions,
    position_bin,
    save_pretrained_backbone,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def hand_made_scene() -> Scene:
    """Green square centred at (0.30, 0.70); red triangle whose bounding square is centred at (0.5, 0.5) but whose
    drawn box spans y 0.40 .. 0.585 (centre 0.4925, row 3, not 4); blue circle touching the right border bin."""
    return Scene(
        objects=(
            SceneObject("green", "square", "medium", x=0.30, y=0.70, radius=0.05, depth=0),
            SceneObject("red", "triangle", "large", x=0.5, y=0.5, radius=0.1, depth=1),
            SceneObject("blue", "circle", "small", x=0.94, y=0.06, radius=0.04, depth=2),
        ),
        background=Background("plain"),
    )


def tiny_caption_model():
    torch.manual_seed(0)
    config = tiny_backbone_config(text_hidden_size=64, text_layers=2, text_intermediate_size=128)
    return build_caption_model(config)


def fixed_batch(processor, count: int = 4):
    data = GroundedCaptionDataModule(processor, batch_size=count, curriculum=((0, 3),), val_size=1, seed=5)
    stream = iter(data.train_stream())
    return CaptionCollator(processor)([next(stream) for _ in range(count)])


def test_position_bins_and_caption_of_a_hand_made_scene():
    assert [position_bin(value, 8) for value in (0.0, 0.124, 0.125, 0.4925, 0.5, 0.999, 1.0)] == [0, 0, 1, 3, 4, 7, 7]
    # palette order (red, green, blue), not scene order; col from x, row from y (downwards)
    assert grounded_caption(hand_made_scene()) == "red triangle 4 3 ; green square 2 5 ; blue circle 7 0"
    assert grounded_caption(hand_made_scene(), grid_size=4) == "red triangle 2 1 ; green square 1 2 ; blue circle 3 0"
    with pytest.raises(ValueError, match="grid_size"):
        grounded_caption(hand_made_scene(), grid_size=11)


def test_loss_mask_covers_only_the_answer(processor):
    scene = hand_made_scene()
    two_objects = Scene(objects=scene.objects[:2], background=scene.background)
    examples = [
        CaptionExample(render(scene, 112), grounded_caption(scene), 3),
        CaptionExample(render(two_objects, 112), grounded_caption(two_objects), 2),
    ]
    batch = CaptionCollator(processor)(examples)
    tokenizer = processor.tokenizer
    for row, example in enumerate(examples):
        supervised = batch.labels[row] != IGNORE_INDEX  # [T]
        expected = example.caption.split() + ["<|im_end|>"]
        assert tokenizer.convert_ids_to_tokens(batch.labels[row][supervised].tolist()) == expected
        assert not supervised[batch.inputs["attention_mask"][row] == 0].any()  # no loss on padding
        assert not supervised[batch.inputs["mm_token_type_ids"][row] == 1].any()  # nor on image tokens
        # the supervised tokens are one contiguous run that ends at the row's last real token
        positions = supervised.nonzero().flatten()
        assert positions.tolist() == list(range(positions[0], int(batch.inputs["attention_mask"][row].sum())))
        assert (batch.token_kinds[row] == OBJECT_WORD).sum() == 2 * example.num_objects
        assert (batch.token_kinds[row] == POSITION_DIGIT).sum() == 2 * example.num_objects
    assert batch.inputs["image_grid_thw"].tolist() == [[1, 8, 8], [1, 8, 8]]  # 112 px: 8 x 8 patches


def test_stream_follows_the_curriculum_and_is_seeded(processor):
    curriculum = ((0, 2), (2, 4))
    assert [max_objects_at(step, curriculum) for step in (0, 1, 2, 9)] == [2, 2, 4, 4]
    data = GroundedCaptionDataModule(processor, batch_size=4, curriculum=curriculum, val_size=4, seed=1)
    data.setup()
    first = next(iter(data.train_stream()))
    examples = list(zip(range(16), iter(data.train_stream()), strict=False))
    assert all(example.num_objects == 2 for index, example in examples if index < 8)  # steps 0 and 1
    assert max(example.num_objects for _, example in examples) <= 4
    assert examples[0][1].caption == first.caption  # same seed, same stream
    resumed = next(iter(data.train_stream(start_step=3)))
    assert resumed.caption == examples[12][1].caption  # resuming at step 3 continues with example 12
    assert {example.caption for _, example in examples}.isdisjoint({example.caption for example in data.val_examples})
    with pytest.raises(ValueError, match="curriculum"):
        GroundedCaptionDataModule(processor, curriculum=((5, 2),))


def test_patch_positions_follow_the_processor_order():
    grid_thw = torch.tensor([[1, 8, 8], [1, 4, 6]])
    rows, cols = patch_grid_positions(grid_thw, merge_size=2)
    assert torch.equal(torch.stack([rows, cols], dim=-1), get_vision_position_ids(grid_thw, 2))


def test_a_few_steps_move_every_weight_and_lower_the_loss(processor):
    network = tiny_caption_model()
    embedding = network.model.visual.patch_position_embedding.weight
    assert embedding.requires_grad and embedding.shape == (64, 64)
    batch = fixed_batch(processor)
    module = CaptionPretrainModule(network, functools.partial(torch.optim.Adam, lr=3e-3))
    with torch.no_grad():
        loss_before = caption_loss(module(batch.inputs), batch.labels).item()
    before = {name: parameter.detach().clone() for name, parameter in network.named_parameters()}
    trainer = Trainer(
        accelerator="cpu",
        max_steps=6,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=DataLoader([batch] * 6, batch_size=None))  # the same ready batch 6 times
    unchanged = [name for name, parameter in network.named_parameters() if torch.equal(parameter, before[name])]
    assert unchanged == []
    assert "model.visual.patch_position_embedding.weight" in before
    with torch.no_grad():
        loss_after = caption_loss(module(batch.inputs), batch.labels).item()
    assert loss_after < loss_before - 0.5, (loss_before, loss_after)
    assert {"train/loss", "train/acc_colour_shape", "train/acc_position"} <= set(trainer.logged_metrics)
    held_out = trainer.validate(module, DataLoader([batch], batch_size=None), verbose=False)[0]
    assert set(held_out) == {"val/loss", "val/acc_colour_shape", "val/acc_position", "val/acc_exact"}
    assert held_out["val/loss"] == pytest.approx(loss_after, rel=1e-5)


def test_save_and_load_give_identical_logits(processor, tmp_path):
    network = tiny_caption_model()
    with torch.no_grad():  # a non-trivial position embedding, so that losing it would show
        network.model.visual.patch_position_embedding.weight.normal_(0.0, 1.0)
    network.eval()
    batch = fixed_batch(processor, count=2)
    directory = save_pretrained_backbone(network, processor, tmp_path / "stage_a", metrics={"steps": 0})
    assert (directory / POSITION_EMBEDDING_FILE).is_file() and (directory / "config.json").is_file()
    with torch.no_grad():
        logits = network(**batch.inputs, use_cache=False).logits  # [B, T, V]
        reloaded = load_caption_model(directory).eval()
        assert torch.equal(reloaded(**batch.inputs, use_cache=False).logits, logits)

        # The path of stage B: build_spatialscore loads the backbone without its LM head and attaches the
        # position embedding found in the directory.
        expected_hidden = network.model(**batch.inputs, use_cache=False).last_hidden_state  # [B, T, H]
        scorer = build_spatialscore(directory, lora_rank=None).eval()
        assert torch.equal(scorer.backbone(**batch.inputs, use_cache=False).last_hidden_state, expected_hidden)


def test_pretrain_command_writes_a_loadable_backbone(tmp_path, capsys):
    from reward_model.__main__ import main
    from reward_model.pretrain import load_caption_model

    out = tmp_path / "stage_a_run"
    main(
        [
            "pretrain",
            "--objective",
            "caption",
            "--out",
            str(out),
            "--max-steps",
            "2",
            "--batch-size",
            "4",
            "--val-size",
            "8",
            "--val-every",
            "2",
            "--num-workers",
            "0",
        ]
    )
    printed = capsys.readouterr().out
    assert '"global_step": 2' in printed
    assert (out / "backbone" / "patch_position_embedding.safetensors").exists()
    assert load_caption_model(out / "backbone") is not None
    with pytest.raises(SystemExit):
        main(["pretrain", "--out", str(out), "--curriculum", "5:2"])
    assert "--curriculum must look like" in capsys.readouterr().err
