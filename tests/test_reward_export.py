"""Reward checkpoint dirs: export after a few real training steps on SpatialWorld pairs, reload with `SpatialScorer`
to identical scores, image inputs of every accepted kind, batching that does not change the numbers, the `Reward`
protocol, clear errors for incomplete dirs, and the calibration maths against hand-computed values."""

from __future__ import annotations

import functools
import json
import math
import shutil

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image
from safetensors import safe_open

from data_synthesis import load_pairs
from reward_model.calibration import expected_calibration_error, win_probability
from reward_model.data import PairwiseDataModule
from reward_model.export import CONFIG_FILE, HEAD_FILE, export_checkpoint
from reward_model.module import RewardModule
from reward_model.recipes import build_tiny_spatialscore
from reward_model.scorer import SpatialScorer, read_checkpoint_config, to_pil

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(small_dataset, tmp_path_factory):
    """A tiny SpatialScore after 3 Lightning steps, exported; -> (network, export dir, prompts, image paths)."""
    torch.set_num_threads(1)
    network = build_tiny_spatialscore()
    module = RewardModule(network, functools.partial(torch.optim.AdamW, lr=1e-2))
    datamodule = PairwiseDataModule(small_dataset, batch_size=4, orientation="both", system_prompt="Judge the layout.")
    trainer = Trainer(
        accelerator="cpu",
        max_steps=3,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule)
    out = export_checkpoint(
        network,
        tmp_path_factory.mktemp("export") / "export",
        metrics={"pairwise_accuracy": 0.5},
        system_prompt="Judge the layout.",
    )
    _, frame = load_pairs(small_dataset)
    rows = frame[frame["split"] == "test"].head(5)
    prompts = list(rows["prompt"]) + list(rows["perturbed_prompt"])
    paths = [small_dataset / p for p in list(rows["perfect_image"]) + list(rows["perturbed_image"])]
    return network.eval(), out, prompts, paths


def test_export_writes_safetensors_and_json_only(trained):
    _, out, _, _ = trained
    files = sorted(str(path.relative_to(out)) for path in out.rglob("*") if path.is_file())
    assert {"config.json", "metrics.json", HEAD_FILE, "adapter/adapter_model.safetensors"} <= set(files)
    assert {"backbone/model.safetensors", "processor/tokenizer.json"} <= set(files)
    assert not any(name.endswith((".bin", ".pt", ".pkl", ".ckpt")) for name in files)
    config = read_checkpoint_config(out)
    assert config["reward_token"] == "<|reward|>" and config["reward_token_id"] == 8
    assert config["backbone"]["source"] == "embedded" and config["backbone"]["config"]["model_type"] == "qwen2_5_vl"
    assert config["lora"]["rank"] == 4 and config["head"]["hidden_size"] == 32
    assert config["preprocessing"]["max_pixels"] == 112 * 112
    assert config["preprocessing"]["system_prompt"] == "Judge the layout."
    assert json.loads((out / "metrics.json").read_text()) == {"pairwise_accuracy": 0.5}
    assert not any(path.name.endswith(".tmp") for path in out.parent.iterdir())  # no staging dir left behind


def test_reload_gives_identical_scores(trained):
    network, out, prompts, paths = trained
    reloaded = SpatialScorer.from_pretrained(out)
    in_memory = SpatialScorer.from_network(network, system_prompt="Judge the layout.")
    mean, std = reloaded.score(prompts=prompts, images=paths)  # [N], [N]
    expected_mean, expected_std = in_memory.score(prompts=prompts, images=paths)
    torch.testing.assert_close(mean, expected_mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(std, expected_std, atol=1e-6, rtol=0)
    assert mean.std() > 0  # input-dependent, so equality says something
    assert not any(parameter.requires_grad for parameter in reloaded.network.parameters())
    assert expected_mean.grad_fn is None  # score builds no graph, even on a network that still trains
    torch.testing.assert_close(reloaded(prompts=prompts, images=paths, metadata=[{}] * len(prompts)), mean)


def test_export_replaces_an_existing_dir_atomically(trained, tmp_path):
    network, _, _, _ = trained
    target = tmp_path / "export"
    export_checkpoint(network, target, metrics={"run": 1})
    export_checkpoint(network, target, metrics={"run": 2})
    assert json.loads((target / "metrics.json").read_text()) == {"run": 2}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["export"]


def test_batched_and_one_at_a_time_agree_in_input_order(trained):
    _, out, prompts, paths = trained
    scorer = SpatialScorer.from_pretrained(out, batch_size=4)
    mean, std = scorer.score(prompts=prompts, images=paths)
    singles = [scorer.score(prompts=[prompt], images=[path]) for prompt, path in zip(prompts, paths, strict=True)]
    torch.testing.assert_close(mean, torch.cat([m for m, _ in singles]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(std, torch.cat([s for _, s in singles]), atol=1e-5, rtol=1e-5)
    reversed_mean, _ = scorer.score(prompts=prompts[::-1], images=paths[::-1], batch_size=3)
    torch.testing.assert_close(reversed_mean, mean.flip(0), atol=1e-5, rtol=1e-5)


def test_paths_pil_tensors_and_rgba_score_alike(trained):
    _, out, prompts, paths = trained
    scorer = SpatialScorer.from_pretrained(out)
    pil = Image.open(paths[0]).convert("RGB")
    pixels = np.array(pil)  # [H, W, 3] uint8
    rgba = pil.copy()
    rgba.putalpha(255)
    inputs = [
        paths[0],
        str(paths[0]),
        pil,
        rgba,
        torch.from_numpy(pixels),
        torch.from_numpy(pixels).permute(2, 0, 1),
        pixels,
        torch.from_numpy(pixels).permute(2, 0, 1).float() / 255,
    ]
    mean, _ = scorer.score(prompts=[prompts[0]] * len(inputs), images=inputs)
    torch.testing.assert_close(mean, mean[:1].expand(len(inputs)), atol=1e-5, rtol=1e-5)

    grey = to_pil(pil.convert("L"))
    assert grey.mode == "RGB" and grey.size == pil.size
    transparent = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert to_pil(transparent).getpixel((0, 0)) == (255, 255, 255)  # composited on white
    with pytest.raises(ValueError, match=r"must be \[3, H, W\] or \[H, W, 3\]"):
        scorer.score(prompts=["a"], images=[torch.zeros(4, 5, 6, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="must be uint8"):
        scorer.score(prompts=["a"], images=[torch.zeros(3, 5, 6, dtype=torch.int32)])
    with pytest.raises(ValueError, match="cannot read image"):
        scorer.score(prompts=["a"], images=[out / "config.json"])
    with pytest.raises(ValueError, match="one image per prompt"):
        scorer.score(prompts=["a", "b"], images=[pil])


def test_an_incomplete_dir_gives_one_clear_error(trained, tmp_path):
    _, out, _, _ = trained
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / HEAD_FILE).unlink()
    (broken / "adapter" / "adapter_model.safetensors").unlink()
    message = rf"{broken} is not a complete reward checkpoint: missing head\.safetensors, adapter/adapter_model"
    with pytest.raises(FileNotFoundError, match=message):
        SpatialScorer.from_pretrained(broken)
    (broken / CONFIG_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="is not a reward checkpoint: config.json is missing"):
        SpatialScorer.from_pretrained(broken)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SpatialScorer.from_pretrained(tmp_path / "nowhere")


def test_win_probability_and_ece_on_hand_computed_values():
    """D = 2, stds 0 and V = 8 / pi: Bradley-Terry sigmoid(2) = 0.8808; Gaussian BT sigmoid(2 / sqrt(1 + 1)) =
    sigmoid(1.4142) = 0.8044; Thurstone Phi(2 / sqrt(8 / pi)) = Phi(1.2533) = 0.8950 (0.894954).
    ECE over p_w = (0.9, 0.2, 0.65, 0.5): confidences 0.9, 0.8, 0.65, 0.5 in bins 8, 6, 3, 0 of 10 over [0.5, 1];
    correct: yes, no, yes, no (a tie is wrong). ECE = (|0.9 - 1| + |0.8 - 0| + |0.65 - 1| + |0.5 - 0|) / 4 = 0.4375."""
    mean_w, mean_l = torch.tensor([2.0]), torch.tensor([0.0])
    zero, half_variance = torch.tensor([0.0]), torch.tensor([math.sqrt(4 / math.pi)])
    assert win_probability(mean_w, zero, mean_l, zero, "bradley_terry").item() == pytest.approx(0.880797, abs=1e-6)
    gaussian = win_probability(mean_w, half_variance, mean_l, half_variance, "gaussian_bt")
    assert gaussian.item() == pytest.approx(0.804429, abs=1e-6)
    thurstone = win_probability(mean_w, half_variance, mean_l, half_variance, "thurstone")
    assert thurstone.item() == pytest.approx(0.894954, abs=1e-5)
    assert expected_calibration_error(torch.tensor([0.9, 0.2, 0.65, 0.5])) == pytest.approx(0.4375)
    assert expected_calibration_error(torch.tensor([1.0, 1.0, 0.0])) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="loss must be one of"):
        win_probability(mean_w, zero, mean_l, zero, "hinge")


@pytest.fixture(scope="module")
def stage_a_dir(tmp_path_factory):
    """A tiny stage-A backbone dir with a patch position embedding, written by stage A's own functions. The
    embedding is scaled up from its sine-cosine start so that it moves the scores visibly."""
    from reward_model.model import tiny_backbone_config
    from reward_model.stage_a.model import build_grounding_network, save_grounded_backbone
    from reward_model.tokenizer import REWARD_TOKEN, build_spatialworld_processor

    torch.manual_seed(1)
    processor = build_spatialworld_processor(max_pixels=112 * 112)  # 8 x 8 patches: the embedding's grid
    config = tiny_backbone_config(text_hidden_size=64, text_intermediate_size=128)
    reward_token_id = processor.tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
    network = build_grounding_network(config, reward_token_id, position_grid_size=8)
    with torch.no_grad():
        network.backbone.visual.patch_position_embedding.weight.mul_(4.0)
    return save_grounded_backbone(network, processor, tmp_path_factory.mktemp("stage_a") / "backbone")


@pytest.mark.parametrize("training", ["lora", "full_with_vision"])
def test_stage_a_position_embedding_is_exported_and_reloads_to_identical_scores(
    training, stage_a_dir, trained, tmp_path
):
    """LoRA keeps the embedding frozen (it follows the vision tower); a full fine-tune with train_vision trains it,
    here stood in for by an in-place change after the build, which the export must carry (the stage-A dir's copy is
    then stale)."""
    from reward_model.export import patch_position_embedding
    from reward_model.model import build_spatialscore
    from reward_model.position_embedding import POSITION_EMBEDDING_FILE

    _, _, prompts, paths = trained
    options = {"lora_rank": 4} if training == "lora" else {"lora_rank": None, "train_vision": True}
    network = build_spatialscore(stage_a_dir, head_seed=2, **options)
    embedding = patch_position_embedding(network.backbone)
    assert embedding is not None and embedding.weight.requires_grad is (training != "lora")
    if training != "lora":
        with torch.no_grad():
            embedding.weight.add_(torch.randn_like(embedding.weight))
    out = export_checkpoint(network, tmp_path / "export", system_prompt="Judge the layout.")
    config = read_checkpoint_config(out)
    assert config["backbone"]["patch_position_embedding"] == POSITION_EMBEDDING_FILE
    assert config["backbone"]["source"] == ("pretrained" if training == "lora" else "embedded")
    assert (out / POSITION_EMBEDDING_FILE).is_file()
    if training != "lora":  # backbone/ stays a plain Qwen2.5-VL dir
        with safe_open(str(out / "backbone" / "model.safetensors"), framework="pt") as handle:
            assert not any("patch_position_embedding" in key for key in handle.keys())  # noqa: SIM118 (not a dict)

    reloaded = SpatialScorer.from_pretrained(out)
    torch.testing.assert_close(patch_position_embedding(reloaded.network.backbone).weight, embedding.weight)
    expected_mean, expected_std = SpatialScorer.from_network(network, system_prompt="Judge the layout.").score(
        prompts=prompts, images=paths
    )
    mean, std = reloaded.score(prompts=prompts, images=paths)
    assert torch.equal(mean, expected_mean) and torch.equal(std, expected_std)

    # the embedding matters: without it the same weights score differently
    embedding.weight.data.zero_()
    without_mean, _ = SpatialScorer.from_network(network, system_prompt="Judge the layout.").score(
        prompts=prompts, images=paths
    )
    assert (without_mean - expected_mean).abs().max() > 1e-4
