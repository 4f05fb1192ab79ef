"""Attention supervision of the tiny generator's pretraining (rl_policy.attention_supervision): region masks and the
TokenCompose token loss against hand-computed values, the recording processor against diffusers' own attention, and a
few pretraining steps with the term on real SpatialWorld pairs."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer

from rl_policy.attention_supervision import (
    attention_centre_loss,
    attention_localisation_loss,
    install_recorders,
    object_region_masks,
    region_centres,
    token_grid_masks,
    token_objects,
)
from rl_policy.policy import FluxPolicy, build_tiny_flux_pipeline
from rl_policy.pretrain import GeneratorPretrainDataModule, GeneratorPretrainModule
from rl_policy.sde import noised_latents

pytestmark = pytest.mark.usefixtures("one_thread")


def test_object_region_masks_cover_each_pixel_by_its_share_of_the_square():
    """4 x 4 pixels of side .25. Square 1: centre (.5, .5), half side .25 -> [.25, .75]^2 covers pixels 1-2 in both
    directions fully. Square 2: centre (.375, .125), half side .125 -> x in [.25, .5] (pixel 1 fully), y in [0, .25]
    (row 0 fully). Square 3: centre (.375, .5), half side .25 -> x in [.125, .625]: pixel 0 half, 1 fully, 2 half."""
    masks = object_region_masks([(0.5, 0.5, 0.25), (0.375, 0.125, 0.125), (0.375, 0.5, 0.25)], 4, max_objects=4)
    assert masks.shape == (4, 4, 4)
    expected_first = torch.zeros(4, 4)
    expected_first[1:3, 1:3] = 1
    assert torch.allclose(masks[0], expected_first)
    expected_second = torch.zeros(4, 4)
    expected_second[0, 1] = 1
    assert torch.allclose(masks[1], expected_second)
    assert torch.allclose(masks[2][1], torch.tensor([0.5, 1.0, 0.5, 0.0]))
    assert torch.allclose(masks[2][0], torch.zeros(4)) and torch.allclose(masks[2][3], torch.zeros(4))
    assert torch.equal(masks[3], torch.zeros(4, 4))
    with pytest.raises(ValueError, match="max_objects"):
        object_region_masks([(0.5, 0.5, 0.1)] * 3, 4, max_objects=2)


def test_token_grid_masks_average_pixel_blocks_in_row_major_order():
    masks = torch.zeros(1, 1, 4, 4)
    masks[0, 0, 0, 2:] = 1  # top row, right half: token (0, 1) holds 2 of its 4 pixels
    masks[0, 0, 3, 0] = 1  # bottom-left pixel: token (1, 0) holds 1 of 4
    assert torch.allclose(token_grid_masks(masks, (2, 2)), torch.tensor([[[0.0, 0.5, 0.25, 0.0]]]))


def test_token_objects_mark_each_objects_word():
    token_ids = torch.tensor([[5, 7, 9, 7, 0], [9, 9, 3, 5, 0]])
    object_words = torch.tensor([[7, 9], [5, -1]])
    assert torch.equal(token_objects(token_ids, object_words), torch.tensor([[-1, 0, 1, 0, -1], [-1, -1, -1, 0, -1]]))


def test_attention_localisation_loss_matches_hand_values():
    """One image, 2 heads, 4 image tokens, 3 text tokens; token 0 names object 0 (region: image tokens 0 and 1),
    token 2 names object 1 (region: token 3 at half coverage), token 1 names nothing.
    Head-mean map of token 0: (.2, .2, .1, .1) -> inside .4 / .6 = 2/3, loss 1/9.
    Head-mean map of token 2: (.1, .1, .1, .3) -> inside .5 * .3 / .6 = .25, loss .5625. Mean: (1/9 + .5625) / 2."""
    heads = torch.zeros(1, 2, 4, 3)
    heads[0, 0, :, 0] = torch.tensor([0.3, 0.1, 0.1, 0.1])
    heads[0, 1, :, 0] = torch.tensor([0.1, 0.3, 0.1, 0.1])
    heads[0, :, :, 1] = 0.9  # an unnamed token: ignored however it attends
    heads[0, 0, :, 2] = torch.tensor([0.2, 0.0, 0.1, 0.3])
    heads[0, 1, :, 2] = torch.tensor([0.0, 0.2, 0.1, 0.3])
    owners = torch.tensor([[0, -1, 1]])
    regions = torch.tensor([[[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.5]]])
    loss = attention_localisation_loss(heads, owners, regions)
    assert loss.item() == pytest.approx((1 / 9 + 0.5625) / 2, rel=1e-5)
    perfect = torch.zeros(1, 1, 4, 3)
    perfect[0, 0, :2, 0] = 0.5
    perfect[0, 0, 3, 2] = 1.0
    assert attention_localisation_loss(perfect, owners, torch.tensor([[[1.0, 1, 0, 0], [0, 0, 0, 1.0]]])).item() == 0
    nobody = attention_localisation_loss(heads.requires_grad_(), torch.full((1, 3), -1), regions)
    assert nobody.item() == 0 and nobody.requires_grad


def test_region_centres_are_the_squares_centres():
    masks = object_region_masks([(0.5, 0.25, 0.125), (0.375, 0.625, 0.125)], 8, max_objects=3)[None]
    centres = region_centres(masks)
    assert torch.allclose(centres[0, :2], torch.tensor([[0.5, 0.25], [0.375, 0.625]]))
    assert torch.equal(centres[0, 2], torch.zeros(2))  # empty region


def test_attention_centre_loss_matches_hand_values():
    """2 x 2 token grid, token centres (.25, .25), (.75, .25), (.25, .75), (.75, .75). One head.
    Token 0 (object 0, centre (.25, .25)) attends (.3, .1, 0, 0): centre of mass (.375, .25) -> squared distance
    .125^2 = .015625. Token 1 (object 1, centre (.75, .75)) attends (0, 0, 0, .2): exactly there -> 0.
    Token 2 names nothing. Mean over named tokens: .0078125."""
    probabilities = torch.zeros(1, 1, 4, 3)
    probabilities[0, 0, :, 0] = torch.tensor([0.3, 0.1, 0.0, 0.0])
    probabilities[0, 0, 3, 1] = 0.2
    probabilities[0, 0, :, 2] = 0.25
    owners = torch.tensor([[0, 1, -1]])
    centres = torch.tensor([[[0.25, 0.25], [0.75, 0.75]]])
    loss = attention_centre_loss(probabilities, owners, centres, (2, 2))
    assert loss.item() == pytest.approx(0.0078125, rel=1e-5)
    # rows and columns are not swapped: attention at token (row 0, column 1) is centre (x .75, y .25)
    probabilities = torch.zeros(1, 1, 4, 1)
    probabilities[0, 0, 1, 0] = 1.0
    at_top_right = attention_centre_loss(probabilities, torch.tensor([[0]]), torch.tensor([[[0.75, 0.25]]]), (2, 2))
    assert at_top_right.item() == pytest.approx(0.0, abs=1e-7)


def test_recording_processor_gives_diffusers_output_and_records_image_to_text_attention():
    pipeline = build_tiny_flux_pipeline(max_prompt_tokens=40)
    policy = FluxPolicy(pipeline, max_sequence_length=41)
    latents = torch.randn(2, 64, 48, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.3, 0.9])
    prompt = policy.encode_prompts(["a red circle left of a blue square", "a green star"])
    with torch.no_grad():
        expected = policy.velocity(latents, sigma, prompt, 32, 32)
        recorders = install_recorders(pipeline.transformer)
        inactive = policy.velocity(latents, sigma, prompt, 32, 32)
        for recorder in recorders:
            recorder.records, recorder.text_length = [], 41
        recorded = policy.velocity(latents, sigma, prompt, 32, 32)
    assert torch.equal(inactive, expected)
    assert torch.allclose(recorded, expected, atol=1e-5)
    assert len(recorders) == 3  # one double block, two single blocks
    for recorder in recorders:
        (probabilities,) = recorder.records
        assert probabilities.shape == (2, 4, 64, 41)  # [B, heads, image tokens, text tokens]
        assert probabilities.min() >= 0 and (probabilities.sum(-1) <= 1 + 1e-6).all()


@pytest.mark.parametrize("target", ["inside", "centre"])
def test_pretraining_with_the_attention_term_lowers_it_and_moves_the_transformer(small_dataset, target):
    """Real pairs from the session dataset: the term is positive, the module logs it beside the flow loss, and 30
    steps with only the attention term (prompt dropout off) lower it on a fixed batch."""
    torch.manual_seed(0)
    pipeline = build_tiny_flux_pipeline(max_prompt_tokens=160)
    policy = FluxPolicy(pipeline, max_sequence_length=161, strict_prompt_length=True)
    module = GeneratorPretrainModule(
        policy, attention_loss_weight=1.0, attention_target=target, prompt_dropout=0.0, lr=3e-3, warmup_steps=1
    )
    datamodule = GeneratorPretrainDataModule(small_dataset, resolution=32, batch_size=8, num_eval_prompts=2)
    datamodule.setup()
    images, prompts, regions, colours = next(iter(datamodule.train_dataloader()))
    assert regions.shape[:2] == colours.shape and (colours >= 0).sum(1).min() >= 2

    def attention_term() -> torch.Tensor:
        clean = policy.encode_images(images)
        noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
        embeddings = policy.encode_prompts(list(prompts))
        for recorder in module.recorders:
            recorder.records, recorder.text_length = [], embeddings.prompt_embeds.shape[1]
        policy.velocity(noised_latents(clean, noise, torch.full((8,), 0.9)), torch.full((8,), 0.9), embeddings, 32, 32)
        records = [p for recorder in module.recorders for p in recorder.records]
        for recorder in module.recorders:
            recorder.records = None
        return module.attention_loss(records, list(prompts), regions, colours, 32, 32)

    before_term = attention_term().item()
    assert 0 < before_term < 1
    before = {name: p.detach().clone() for name, p in module.transformer.named_parameters()}
    optimizer = torch.optim.Adam(module.transformer.parameters(), lr=3e-3)
    for _ in range(30):
        optimizer.zero_grad()
        attention_term().backward()
        optimizer.step()
    assert attention_term().item() < 0.8 * before_term
    changed = [n for n, p in module.transformer.named_parameters() if not torch.equal(p, before[n])]
    assert any("attn.to_q" in name for name in changed) and any("attn.add_k_proj" in name for name in changed)

    trainer = Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule)
    logged = trainer.callback_metrics
    assert {"train/attention_loss", "train/flow_loss", "train/loss"} <= set(logged)
    assert logged["train/loss"].item() == pytest.approx(
        logged["train/flow_loss"].item() + logged["train/attention_loss"].item(), rel=1e-5
    )
    with pytest.raises(ValueError, match="attention_loss_weight"):
        GeneratorPretrainModule(policy, attention_loss_weight=-1.0)
    with pytest.raises(ValueError, match="attention_target"):
        GeneratorPretrainModule(policy, attention_loss_weight=1.0, attention_target="middle")
