"""The layout head's targets and loss (rl_policy.layout_head) against hand-computed values, and the pretraining data's
object regions against the scenes they come from."""

from __future__ import annotations

import math

import pytest
import torch

from data_synthesis import load_pairs
from data_synthesis.scene import COLOURS, Scene
from rl_policy.layout_head import layout_loss, layout_targets, object_region_masks, token_grid_masks
from rl_policy.pretrain import load_split_objects


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


def example() -> tuple[torch.Tensor, torch.Tensor]:
    """One sample, 4 x 4 pixels on a 2 x 2 token grid, 6 colour classes + background. Object 0 (colour 2) covers the
    top-left token fully; object 1 (colour 5) covers half of the bottom-right token; a third slot is absent (-1) but
    has a region, which must be ignored."""
    regions = torch.zeros(1, 3, 4, 4)
    regions[0, 0, :2, :2] = 1
    regions[0, 1, 2:, 2:3] = 1
    regions[0, 2] = 1
    return regions, torch.tensor([[2, 5, -1]])


def test_layout_targets_put_each_tokens_coverage_on_its_colour_and_the_rest_on_background():
    target = layout_targets(*example(), (2, 2), classes=6)
    expected = torch.zeros(1, 4, 7)
    expected[0, 0, 2] = 1  # top-left: colour 2
    expected[0, 1, 6] = expected[0, 2, 6] = 1  # background
    expected[0, 3, 5] = expected[0, 3, 6] = 0.5  # half colour 5, half background
    assert torch.allclose(target, expected)
    # two objects over one token (an overlap) are normalised to a distribution
    regions = torch.ones(1, 2, 4, 4)
    overlap = layout_targets(regions, torch.tensor([[0, 1]]), (2, 2), classes=6)
    assert torch.allclose(overlap[0, :, :2], torch.full((4, 2), 0.5)) and torch.all(overlap[0, :, 2:] == 0)


def test_layout_loss_counts_object_and_background_mass_half_each():
    target = layout_targets(*example(), (2, 2), classes=6)
    assert layout_loss(torch.zeros(1, 4, 7), target).item() == pytest.approx(math.log(7), rel=1e-6)
    # background logit 1, the rest 0: log Z = log(6 + e); a colour class costs log Z, background log Z - 1. Object
    # mass 1.5 (tokens 0 and 3) all at log Z, background mass 2.5 all at log Z - 1 -> log Z - 1/2
    logits = torch.zeros(1, 4, 7)
    logits[..., 6] = 1.0
    assert layout_loss(logits, target).item() == pytest.approx(math.log(6 + math.e) - 0.5, rel=1e-6)
    # right answers at high confidence cost almost nothing; a swapped layout costs much more
    confident = 20 * target.clamp(min=0.01).log()
    swapped = confident.flip(1)
    assert layout_loss(confident, target).item() < 0.8 < layout_loss(swapped, target).item()


def test_split_objects_are_the_scenes_squares_and_colours(small_dataset):
    _, frame = load_pairs(small_dataset)
    texts = list(frame["perfect_scene"].head(5))
    regions, colours = load_split_objects(texts, 32)
    names = list(COLOURS)
    for row, text in enumerate(texts):
        scene = Scene.from_json(text)
        assert colours[row, : len(scene.objects)].tolist() == [names.index(item.colour) for item in scene.objects]
        assert torch.all(colours[row, len(scene.objects) :] == -1)
        for index, item in enumerate(scene.objects):
            square = object_region_masks([(item.x, item.y, item.radius)], 32, 1)[0]
            assert torch.equal(regions[row, index], (square * 255).round().to(torch.uint8))
