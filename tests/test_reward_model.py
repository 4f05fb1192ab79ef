"""SpatialScore builders on a tiny Qwen2.5-VL and real SpatialWorld pairs: reward-token placement, the (mean, std)
head, one forward pass for perfect and perturbed images, which weights train, and save/load round trips."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image
from transformers import Qwen2_5_VLForConditionalGeneration

import data_synthesis
from reward_model.loss import gaussian_bt_loss
from reward_model.model import (
    VISION_LORA_TARGETS,
    SpatialScore,
    build_spatialscore,
    reward_text,
    reward_token_positions,
    tiny_backbone_config,
)
from reward_model.tokenizer import (
    PAD_TOKEN,
    REWARD_TOKEN,
    SpatialScoreProcessor,
    build_spatialworld_processor,
    build_spatialworld_tokenizer,
    load_processor,
)

RESOLUTION = 112
MIN_STD, MAX_STD = 0.05, 10.0


def stated_relations(sampled) -> list:
    relations = sampled.planned + [r for group in sampled.candidates.values() for r in group]
    return relations[: max(sampled.num_relations, 1)]


@pytest.fixture(scope="module")
def pairs() -> tuple[list[str], list, list]:
    """Four (prompt, perfect image, perturbed image) triplets: one relation broken, verified by data_synthesis."""
    rng = random.Random(0)
    prompts, perfect, perturbed = [], [], []
    while len(prompts) < 4:
        sampled = data_synthesis.sample_scene(rng, data_synthesis.WorldConfig(2, 3))
        relations = stated_relations(sampled)
        perturbation = data_synthesis.perturb(sampled.scene, relations, 1, rng=rng)
        if perturbation is None:
            continue
        prompts.append(data_synthesis.describe(sampled.scene, relations, style_seed=len(prompts)))
        perfect.append(data_synthesis.render(sampled.scene, RESOLUTION))
        perturbed.append(data_synthesis.render(perturbation.scene, RESOLUTION))
    assert len({len(p) for p in prompts}) > 1  # different lengths, so batches are padded
    return prompts, perfect, perturbed


def tiny_model(**overrides) -> SpatialScore:
    torch.manual_seed(0)
    arguments = {"lora_rank": 4, "lora_alpha": 8.0, "lora_dropout": 0.0, "head_hidden_size": 32} | overrides
    return build_spatialscore(tiny_backbone_config(), **arguments).eval()


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()}


def test_vocabulary_covers_spatialworld_prompts():
    tokenizer = build_spatialworld_tokenizer()
    rng = random.Random(1)
    for seed in range(60):
        sampled = data_synthesis.sample_scene(rng, data_synthesis.WorldConfig())
        prompt = data_synthesis.describe(sampled.scene, stated_relations(sampled), style_seed=seed)
        assert tokenizer.unk_token_id not in tokenizer(prompt)["input_ids"], prompt


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_reward_token_is_the_last_non_padding_token(pairs, padding_side):
    prompts, perfect, _ = pairs
    model = tiny_model()
    batch = model.encode(prompts, perfect, padding_side=padding_side)
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]  # [B, T]
    assert (attention_mask == 0).any()  # really padded
    positions = reward_token_positions(input_ids, attention_mask, model.reward_token_id)  # [B]
    pad_id = model.processor.tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    for row, position in enumerate(positions.tolist()):
        real = input_ids[row][attention_mask[row].bool()]
        assert real[-1] == model.reward_token_id and (real == model.reward_token_id).sum() == 1
        assert input_ids[row, position] == model.reward_token_id
        assert (input_ids[row, position + 1 :] == pad_id).all()
        assert (batch["mm_token_type_ids"][row] == 1).sum() == (RESOLUTION // 28) ** 2  # 16 merged image tokens


def test_a_batch_without_the_reward_token_last_is_refused(pairs):
    prompts, perfect, _ = pairs
    model = tiny_model()
    batch = model.processor(images=perfect[:1], text=[reward_text(prompts[0]) + " extra"], return_tensors="pt")
    with pytest.raises(ValueError, match="last non-padding token of rows \\[0\\]"):
        model(**batch)
    with pytest.raises(ValueError, match="special-token markup"):
        reward_text(f"a prompt with {REWARD_TOKEN}")
    with pytest.raises(ValueError, match="one image per prompt"):
        model.encode(prompts, perfect[:1])


def test_forward_gives_finite_mean_and_bounded_std_for_either_padding(pairs):
    prompts, perfect, _ = pairs
    model = tiny_model()
    with torch.no_grad():
        mean, std = model(**model.encode(prompts, perfect))  # [B], [B]
        mean_left, std_left = model(**model.encode(prompts, perfect, padding_side="left"))
    assert mean.shape == std.shape == (len(prompts),)
    assert mean.dtype == std.dtype == torch.float32
    assert torch.isfinite(mean).all() and ((std >= MIN_STD) & (std <= MAX_STD)).all()
    torch.testing.assert_close(mean_left, mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(std_left, std, atol=1e-5, rtol=1e-5)
    assert mean.std() > 0  # depends on the input


def test_one_forward_pass_for_perfect_and_perturbed_equals_two(pairs):
    prompts, perfect, perturbed = pairs
    model = tiny_model()
    with torch.no_grad():
        mean, std = model(**model.encode(prompts + prompts, perfect + perturbed))  # [2B]
        mean_perfect, mean_perturbed = mean.chunk(2)
        std_perfect, std_perturbed = std.chunk(2)
        alone_perfect = model(**model.encode(prompts, perfect))
        alone_perturbed = model(**model.encode(prompts, perturbed))
    torch.testing.assert_close((mean_perfect, std_perfect), alone_perfect, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close((mean_perturbed, std_perturbed), alone_perturbed, atol=1e-5, rtol=1e-5)


def test_training_moves_lora_head_and_reward_row_only(pairs):
    prompts, perfect, perturbed = pairs
    model = tiny_model().train()
    embeddings = model.backbone.get_input_embeddings()
    vocabulary = torch.arange(embeddings.weight.shape[0])
    with torch.no_grad():
        rows_before = embeddings(vocabulary).clone()  # [V, H], with the trainable-token delta applied
    before = snapshot(model)
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert any("lora_A" in name for name in trainable) and any("head." in name for name in trainable)
    assert any("trainable_tokens_delta" in name for name in trainable)
    assert not any(".visual." in name for name in trainable)  # vision tower frozen by default
    assert embeddings.token_adapter.trainable_tokens_delta["default"].shape == (1, embeddings.weight.shape[1])

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = model.encode(prompts + prompts, perfect + perturbed)
    for _ in range(3):
        mean, std = model(**batch)
        mean_w, mean_l = mean.chunk(2)
        std_w, std_l = std.chunk(2)
        loss = gaussian_bt_loss(mean_w, std_w, mean_l, std_l)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for name, parameter in model.named_parameters():
        if name in trainable:
            assert not torch.equal(parameter, before[name]), f"trainable {name} did not change"
        else:
            assert torch.equal(parameter, before[name]), f"frozen {name} changed"
    with torch.no_grad():
        rows_after = embeddings(vocabulary)
    changed_rows = (rows_after != rows_before).any(dim=1).nonzero().flatten().tolist()
    assert changed_rows == [model.reward_token_id]


def test_vision_lora_and_full_fine_tune_options():
    lora_vision = tiny_model(vision_lora_target_modules=VISION_LORA_TARGETS)
    visual_lora = [n for n, p in lora_vision.named_parameters() if ".visual.blocks." in n and p.requires_grad]
    assert visual_lora and all("lora_" in name for name in visual_lora)

    full = tiny_model(lora_rank=None)
    assert all(p.requires_grad for p in full.backbone.language_model.parameters())
    assert not any(p.requires_grad for p in full.backbone.visual.parameters())
    full_vision = tiny_model(lora_rank=None, train_vision=True)
    assert all(p.requires_grad for p in full_vision.backbone.parameters())


def test_bad_choices_raise_one_clear_message(tmp_path):
    with pytest.raises(ValueError, match="not Linear layers of the language model"):
        tiny_model(lora_target_modules=("q_proj", "qkv"))
    with pytest.raises(ValueError, match="mrope_section"):
        tiny_backbone_config(mrope_section=(4, 4, 4))
    with pytest.raises(ValueError, match="patch_size"):
        build_spatialscore(tiny_backbone_config(), build_spatialworld_processor(patch_size=16))
    with pytest.raises(ValueError, match="min_std < initial_std"):
        tiny_model(initial_std=20.0)
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        build_spatialscore(tmp_path)
    with pytest.raises(ValueError, match=r"max_pixels \(3136\) must be at least min_pixels \(12544\)"):
        tiny_model(min_pixels=112 * 112, max_pixels=56 * 56)
    with pytest.raises(ValueError, match="min_pixels .100. must be at least one merged token"):
        tiny_model(min_pixels=100)


def test_min_pixels_sends_small_images_to_the_training_token_grid():
    """A 32 px image gets the processor's floor (56 x 56: 4 x 4 patches) by default; with min_pixels = max_pixels =
    112 x 112 it is resized up to the 8 x 8 patches of a 112 px training image, and a 112 px image is unchanged."""
    small, large = Image.new("RGB", (32, 32), "red"), Image.new("RGB", (112, 112), "red")
    default = tiny_model(max_pixels=112 * 112)
    floored = tiny_model(max_pixels=112 * 112, min_pixels=112 * 112)
    grids = {
        name: [model.encode(["a red circle"], [image])["image_grid_thw"].tolist() for image in (small, large)]
        for name, model in (("default", default), ("floored", floored))
    }
    assert grids == {"default": [[[1, 4, 4]], [[1, 8, 8]]], "floored": [[[1, 8, 8]], [[1, 8, 8]]]}
    with torch.no_grad():
        mean, _ = floored(**floored.encode(["a red circle"] * 2, [small, small.resize((112, 112), Image.BICUBIC)]))
    torch.testing.assert_close(mean[0], mean[1], atol=1e-4, rtol=1e-4)  # the processor's resize, nothing else


def test_processor_save_load_round_trip(pairs, tmp_path):
    prompts, perfect, _ = pairs
    processor = build_spatialworld_processor()
    processor.save_pretrained(tmp_path)
    reloaded = load_processor(tmp_path)
    assert isinstance(reloaded, SpatialScoreProcessor)
    assert type(reloaded.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    assert reloaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    texts = [reward_text(prompt) for prompt in prompts]
    original = processor(images=perfect, text=texts, padding=True, return_tensors="pt")
    again = reloaded(images=perfect, text=texts, padding=True, return_tensors="pt")
    assert original.keys() == again.keys()
    for key in original:
        assert torch.equal(original[key], again[key]), key


@pytest.mark.parametrize("layout", ["backbone", "with_lm_head"])
def test_pretrained_directory_loads_through_the_same_builder(pairs, tmp_path, layout):
    """A checkpoint saved here (as `Qwen2_5_VLModel`, or as the hub's `...ForConditionalGeneration`) reloads to
    identical outputs, also wrapped in LoRA (B = 0 and a zero token delta leave the function unchanged)."""
    prompts, perfect, _ = pairs
    source = tiny_model(lora_rank=None)
    if layout == "backbone":
        source.backbone.save_pretrained(tmp_path)
    else:
        with_head = Qwen2_5_VLForConditionalGeneration(source.backbone.config)
        with_head.model.load_state_dict(source.backbone.state_dict())
        with_head.save_pretrained(tmp_path)
    source.processor.save_pretrained(tmp_path)
    with torch.no_grad():
        expected = source(**source.encode(prompts, perfect))
        for lora_rank in (None, 4):
            loaded = build_spatialscore(tmp_path, lora_rank=lora_rank, head_hidden_size=32).eval()
            torch.testing.assert_close(loaded(**loaded.encode(prompts, perfect)), expected, atol=1e-6, rtol=1e-6)


def test_reward_token_is_added_when_the_checkpoint_lacks_it(pairs):
    prompts, perfect, _ = pairs
    tokenizer = build_spatialworld_tokenizer(include_reward_token=False)
    assert REWARD_TOKEN not in tokenizer.get_vocab()
    vocab_size = len(tokenizer)  # no spare row: the embedding matrix must grow
    torch.manual_seed(0)
    model = build_spatialscore(
        tiny_backbone_config(vocab_size=vocab_size), build_spatialworld_processor(tokenizer), lora_rank=4
    ).eval()
    assert model.reward_token_id == vocab_size
    assert model.backbone.get_input_embeddings().weight.shape[0] > vocab_size
    delta = model.backbone.get_input_embeddings().token_adapter
    assert delta.token_indices["default"] == [vocab_size]
    with torch.no_grad():
        mean, std = model(**model.encode(prompts, perfect))
    assert torch.isfinite(mean).all() and torch.isfinite(std).all()


def test_long_prompts_are_truncated_keeping_the_reward_token_and_counted(pairs, caplog):
    """A prompt of n tokens cut to 5 keeps exactly its first 5 tokens and the reward token stays last; a short
    prompt is untouched; every cut is counted and logged."""
    from reward_model.model import encode, truncate_prompt, truncated_prompt_count

    prompts, perfect, _ = pairs
    model = tiny_model(max_prompt_tokens=5)
    tokenizer = model.processor.tokenizer
    cut, was_cut = truncate_prompt(tokenizer, prompts[0], 5)
    assert (
        was_cut
        and tokenizer(cut, add_special_tokens=False)["input_ids"]
        == (tokenizer(prompts[0], add_special_tokens=False)["input_ids"][:5])
    )
    assert truncate_prompt(tokenizer, "the red star .", 5) == ("the red star .", False)
    before = truncated_prompt_count()
    with caplog.at_level("WARNING", logger="reward_model.model"):
        inputs = model.encode(prompts[:2], perfect[:2])
    assert truncated_prompt_count() == before + 2 and "truncated" in caplog.text
    positions = reward_token_positions(inputs["input_ids"], inputs["attention_mask"], model.reward_token_id)
    assert (inputs["input_ids"].gather(1, positions[:, None]) == model.reward_token_id).all()
    full = encode(model.processor, prompts[:2], perfect[:2])
    assert inputs["input_ids"].shape[1] < full["input_ids"].shape[1]
    with torch.no_grad():
        mean, std = model(**inputs)
    assert torch.isfinite(mean).all() and torch.isfinite(std).all()


def test_head_mean_initialised_from_a_linear_map_equals_it_exactly_and_keeps_the_std():
    """silu(z) - silu(-z) = z: two hidden units carry a linear map (the stage-A matching head) into the mean."""
    from reward_model.model import RewardHead

    torch.manual_seed(0)
    head = RewardHead(hidden_size=8, head_hidden_size=6, min_std=0.05, max_std=10.0, initial_std=1.0)
    hidden = torch.randn(5, 8) * 4  # large enough that silu is far from linear
    weight, bias = torch.randn(1, 8), torch.tensor([0.7])
    first, _, last = head.layers
    other_units = (first.weight[2:].clone(), last.weight[1, 2:].clone(), last.bias[1].clone())
    head.init_mean_from_linear(weight, bias)
    mean, std = head(hidden)
    torch.testing.assert_close(mean, (hidden @ weight.T + bias).squeeze(-1), atol=1e-5, rtol=1e-5)
    # The std reads only the untouched units, with its own weights: the same function of the other units as before.
    assert torch.equal(first.weight[2:], other_units[0]) and torch.equal(last.weight[1, 2:], other_units[1])
    assert torch.equal(last.weight[1, :2], torch.zeros(2)) and torch.equal(last.bias[1], other_units[2])
    assert ((std > 0.05) & (std < 10.0)).all()
    # One Bradley-Terry step moves the mean's other units away from zero: the head is not frozen into a linear map.
    loss = gaussian_bt_loss(mean[:2], std[:2], mean[2:4], std[2:4])
    loss.backward()
    assert last.weight.grad[0, 2:].abs().sum() > 0
    with pytest.raises(ValueError, match="reads 3 features"):
        head.init_mean_from_linear(torch.randn(3), torch.tensor(0.0))
    with pytest.raises(ValueError, match="head_hidden_size >= 2"):
        RewardHead(8, 1, 0.05, 10.0, 1.0).init_mean_from_linear(weight, bias)
