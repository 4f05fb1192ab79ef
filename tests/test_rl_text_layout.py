"""Layout pretraining of the tiny generator's T5 (rl_policy.text_layout, `python -m rl_policy pretrain-text`)."""

from __future__ import annotations

import json

import pytest
import torch

from data_synthesis import load_pairs
from data_synthesis.scene import Scene
from rl_policy.__main__ import main
from rl_policy.policy import build_tiny_flux_pipeline, load_pipeline
from rl_policy.text_layout import TextLayoutModule, layout_targets, ordering_shares


def test_ordering_shares_by_family_against_hand_counts():
    predicted = torch.tensor([[[0.2, 0.5], [0.8, 0.4]], [[0.6, 0.1], [0.3, 0.9]]])  # [N 2, K 2, (x, y)]
    ordered = [
        [("left_of", 0, 1), ("above", 0, 1)],  # x .2 < .8 holds; y .5 < .4 fails
        [("right_of", 0, 1), ("below", 1, 0), ("left_of", 1, 0)],  # .6 > .3 holds; .9 > .1 holds; .3 < .6 holds
    ]
    assert ordering_shares(predicted, ordered) == {"horizontal": 1.0, "vertical": 0.5}
    assert ordering_shares(predicted, [[], []])["vertical"] != ordering_shares(predicted, [[], []])["vertical"]  # NaN


def test_layout_targets_point_at_each_colour_word_and_its_centre(small_dataset):
    _, frame = load_pairs(small_dataset)
    rows = frame.head(6)
    tokenizer = build_tiny_flux_pipeline(max_prompt_tokens=160).tokenizer_2
    ids, occurrences, centres, mask, ordered = layout_targets(
        tokenizer, list(rows["prompt"]), list(rows["perfect_scene"]), list(rows["stated_relations"]), length=161
    )
    assert ids.shape == (6, 161) and occurrences.shape[:2] == centres.shape[:2] == mask.shape
    for row, scene_json in enumerate(rows["perfect_scene"]):
        objects = Scene.from_json(scene_json).objects
        assert int(mask[row].sum()) == len(objects) and not mask[row, len(objects) :].any()
        for k, item in enumerate(objects):
            words = tokenizer.convert_ids_to_tokens(ids[row][occurrences[row, k].bool()].tolist())
            assert words and set(words) == {item.colour}
            assert centres[row, k].tolist() == pytest.approx([item.x, item.y])
        kinds = [r["kind"] for r in json.loads(rows["stated_relations"].iloc[row])]
        assert len(ordered[row]) == sum(kind in ("left_of", "right_of", "above", "below") for kind in kinds)
    with pytest.raises(ValueError, match="longer than the text encoder's 8 tokens"):
        layout_targets(tokenizer, list(rows["prompt"]), list(rows["perfect_scene"]), [], length=8)


def test_the_layout_head_and_t5_fit_a_fixed_batch(small_dataset, one_thread):
    """A tiny model that really learns: the squared error of 16 prompts' object centres falls by more than half."""
    _, frame = load_pairs(small_dataset)
    rows = frame.head(16)
    pipeline = build_tiny_flux_pipeline(max_prompt_tokens=160)
    ids, occurrences, centres, mask, _ = layout_targets(
        pipeline.tokenizer_2,
        list(rows["prompt"]),
        list(rows["perfect_scene"]),
        list(rows["stated_relations"]),
        length=161,
    )
    torch.manual_seed(0)
    module = TextLayoutModule(pipeline.text_encoder_2, lr=3e-3)
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = (module.predict_centres(ids, occurrences) - centres).square().sum(-1)[mask].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_pretrain_text_command_trains_only_the_t5_saves_it_and_resumes(small_dataset, tmp_path, capsys):
    out = tmp_path / "text"
    common = ["pretrain-text", "--data", str(small_dataset), "--out", str(out), "--fresh-scenes", "96"]
    common += [
        "--batch-size",
        "16",
        "--max-prompt-tokens",
        "160",
        "--eval-every",
        "2",
        "--threads",
        "1",
        "--decay-steps",
        "0",
    ]
    assert main([*common, "--steps", "4"]) == 0
    reference = build_tiny_flux_pipeline(max_prompt_tokens=160, seed=0)
    saved = load_pipeline(out / "pipeline", torch_dtype=torch.float32)
    trained = dict(saved.text_encoder_2.named_parameters())
    moved = [
        name for name, value in reference.text_encoder_2.named_parameters() if not torch.equal(value, trained[name])
    ]
    assert moved, "the T5 did not change"
    for name in ("transformer", "text_encoder"):
        for (key, value), (_, kept) in zip(
            getattr(reference, name).state_dict().items(), getattr(saved, name).state_dict().items(), strict=True
        ):
            assert torch.equal(value, kept), f"{name}.{key} changed"
    metrics = json.loads((out / "text_layout_metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["fresh_prompts"] == 96
    assert [entry["step"] for entry in metrics["history_this_run"]] == [0, 2, 4]
    assert 0 <= metrics["val"]["horizontal"] <= 1 and metrics["val"]["squared_error"] > 0
    stamp = (out / "fresh_scenes.safetensors").stat().st_mtime_ns
    assert main([*common, "--steps", "6"]) == 0  # resumes from step 4, reuses the fresh scenes
    metrics = json.loads((out / "text_layout_metrics.json").read_text())
    assert metrics["steps"] == 6 and [entry["step"] for entry in metrics["history_this_run"]] == [6]
    assert (out / "fresh_scenes.safetensors").stat().st_mtime_ns == stamp
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["pretrain-text", "--data", str(tmp_path), "--out", str(out)])
    assert "is not a SpatialWorld dataset dir" in capsys.readouterr().err
