"""Stage A in stage B's format (sentence verification + image-text matching): the prompt pieces join to the exact
`describe` text, every sentence label is the oracle's verdict, the collator finds each relation sentence's final
".", a few real steps move every weight, and the saved backbone loads through `build_spatialscore`."""

from __future__ import annotations

import functools
import math
import random
import re

import pytest
import torch

from data_synthesis import (
    COLOURS,
    SHAPE_WORDS,
    TEMPLATES,
    Background,
    Relation,
    Scene,
    SceneLayout,
    SceneObject,
    Truth,
    WorldConfig,
    evaluate,
)
from data_synthesis.perturb import sample_pair
from data_synthesis.prompts import describe, describe_sentences
from reward_model.model import build_spatialscore, tiny_backbone_config
from reward_model.recipes import build_pretrained_tiny_spatialscore
from reward_model.stage_a.data import (
    POSITION_BINS,
    PromptPhase,
    VerificationBatch,
    VerificationCollator,
    parse_prompt_curriculum,
    phase_at,
)
from reward_model.stage_a.examples import (
    image_token_cells,
    simple_verification_example,
    stated_margin,
    stated_offset,
    token_colour_targets,
    verification_example,
)
from reward_model.stage_a.losses import grounding_losses
from reward_model.stage_a.model import (
    HEADS_FILE,
    GroundingOutput,
    build_grounding_network,
    load_grounding_heads,
    save_grounded_backbone,
)
from reward_model.stage_a.module import VerificationModule
from reward_model.tokenizer import REWARD_TOKEN

pytestmark = pytest.mark.usefixtures("one_thread")


def patterns(relation: Relation) -> list[str]:
    """Regexes of the sentences that can state `relation`: its templates with its objects and region filled in."""
    fills = {name: f"the {colour} [a-z -]+?" for name, colour in zip("abc", relation.subjects, strict=False)}
    fills["region"] = re.escape(relation.region or "")
    result = []
    for template in TEMPLATES[relation.kind]:
        pattern = re.escape(template)
        for name, fill in fills.items():
            pattern = pattern.replace(re.escape("{" + name + "}"), fill)
        result.append(pattern)
    return result


def test_describe_sentences_join_to_describe_and_name_their_relation():
    for seed in range(40):
        rng = random.Random(seed)
        sample = sample_pair(rng, WorldConfig(3, 6), rng.randint(1, 3))
        if sample is None:
            continue
        pieces = describe_sentences(sample.scene, sample.stated, style_seed=seed)
        assert " ".join(pieces.intro + pieces.sentences) == describe(sample.scene, sample.stated, style_seed=seed)
        assert sorted(pieces.slots) == list(range(len(sample.stated)))
        for sentence, slot in zip(pieces.sentences, pieces.slots, strict=True):
            assert sentence.endswith(".") and sentence.count(".") == 1
            assert all(colour in sentence for colour in sample.stated[slot].subjects)
            assert any(re.fullmatch(pattern, sentence, re.IGNORECASE) for pattern in patterns(sample.stated[slot]))
        assert all(sentence.count(".") == 1 for sentence in pieces.intro)


def test_sentence_labels_are_the_oracle_verdicts_and_both_kinds_occur():
    labels, matches = [], []
    for seed in range(30):
        example = verification_example(seed, WorldConfig(3, 6), resolution=64)
        layout = SceneLayout(example.scene)
        for relation, truth in zip(example.relations, example.sentence_truth, strict=True):
            assert evaluate(relation, layout) is (Truth.HOLDS if truth else Truth.BROKEN)
        labels += example.sentence_truth
        matches.append(example.matches)
    assert 0.5 < sum(labels) / len(labels) < 0.95 and 0.2 < sum(matches) / len(matches) < 0.8


def test_collator_points_at_the_final_period_of_each_relation_sentence(processor):
    examples = [verification_example(seed, WorldConfig(3, 4), resolution=64) for seed in range(3)]
    batch = VerificationCollator(processor)(examples)
    period = processor.tokenizer.convert_tokens_to_ids(".")
    ids = batch.inputs["input_ids"]
    assert len(batch.sentence_ends) == sum(len(e.sentence_truth) for e in examples) == len(batch.sentence_truth)
    assert (ids[batch.sentence_ends[:, 0], batch.sentence_ends[:, 1]] == period).all()
    # The last relation sentence of each row ends right before <|im_end|> (the prompt's last token).
    for row in range(len(examples)):
        last = batch.sentence_ends[batch.sentence_ends[:, 0] == row, 1].max()
        assert processor.tokenizer.convert_ids_to_tokens(int(ids[row, last + 1])) == "<|im_end|>"


def test_collator_finds_every_object_mention_and_its_cell(processor):
    """Each mention ends at its noun ("sign" of "plus sign", "star" of "five-pointed star"), its colour the nearest
    colour word before it; colour words that name no object ("blue sky") are skipped; every object is named in the
    intro, so each gets at least one mention."""
    examples = [verification_example(seed, WorldConfig(3, 6), resolution=64) for seed in range(4)]
    batch = VerificationCollator(processor)(examples)
    nouns = {words.split()[-1].split("-")[-1] for options in SHAPE_WORDS.values() for words in options}
    for (row, position), (column, grid_row) in zip(batch.mentions.tolist(), batch.mention_cells.tolist(), strict=True):
        tokens = processor.tokenizer.convert_ids_to_tokens(batch.inputs["input_ids"][row, : position + 1].tolist())
        assert tokens[-1] in nouns
        colour = next(token for token in reversed(tokens) if token in COLOURS)
        obj = examples[row].scene[colour]
        assert obj.shape in SHAPE_WORDS and tokens[-1] in " ".join(SHAPE_WORDS[obj.shape])
        assert (column, grid_row) == (int(obj.x * POSITION_BINS), int(obj.y * POSITION_BINS))
    for row, example in enumerate(examples):
        assert (batch.mentions[:, 0] == row).sum() >= len(example.scene.objects)


def test_colour_words_are_bound_too_when_asked(processor):
    examples = [verification_example(seed, WorldConfig(3, 6), resolution=64) for seed in range(2)]
    nouns_only = VerificationCollator(processor)(examples)
    both = VerificationCollator(processor, bind_colour_words=True)(examples)
    assert len(both.mentions) == 2 * len(nouns_only.mentions)
    colours = both.inputs["input_ids"][both.mentions[::2, 0], both.mentions[::2, 1]]
    assert set(processor.tokenizer.convert_ids_to_tokens(colours.tolist())) <= set(COLOURS)
    torch.testing.assert_close(both.mention_cells[::2], nouns_only.mention_cells)


def test_slot_cells_are_the_cells_of_each_sentence_objects(processor):
    examples = [verification_example(seed, WorldConfig(3, 6), resolution=64) for seed in range(4)]
    batch = VerificationCollator(processor)(examples)
    relations = [(e, r) for e in examples for r in e.relations]
    assert batch.slot_cells.shape == (len(batch.sentence_ends), 2, 2) and len(relations) == len(batch.sentence_ends)
    for (example, relation), cells in zip(relations, batch.slot_cells.tolist(), strict=True):
        for subject, (column, row) in zip(relation.subjects[:2], cells, strict=False):
            obj = example.scene[subject]
            assert (column, row) == (int(obj.x * POSITION_BINS), int(obj.y * POSITION_BINS))
        if len(relation.subjects) == 1:
            assert cells[1] == [-100, -100]


def red_and_blue_squares(red: tuple[float, float], blue: tuple[float, float]) -> Scene:
    """Two medium squares (radius 0.05) on a plain background, red in front, at the given centres."""
    squares = [
        SceneObject(colour, "square", "medium", x=x, y=y, radius=0.05, depth=depth)
        for depth, (colour, (x, y)) in enumerate([("red", red), ("blue", blue)])
    ]
    return Scene(objects=tuple(squares), background=Background("plain"))


def test_stated_offset_is_positive_exactly_when_the_direction_holds():
    """red at (0.2, 0.7), blue at (0.6, 0.3): red is 0.4 left of blue and 0.4 below it."""
    scene = red_and_blue_squares((0.2, 0.7), (0.6, 0.3))
    offsets = {
        kind: stated_offset(Relation(kind, ("red", "blue")), scene)
        for kind in ("left_of", "right_of", "above", "below")
    }
    assert offsets == pytest.approx({"left_of": 0.4, "right_of": -0.4, "above": -0.4, "below": 0.4})
    assert math.isnan(stated_offset(Relation("next_to", ("red", "blue")), scene))


def test_stated_margin_sign_is_the_oracle_verdict_for_every_family():
    signs, families = [], set()
    for seed in range(40):
        example = verification_example(seed, WorldConfig(3, 6), resolution=64)
        for relation, truth in zip(example.relations, example.sentence_truth, strict=True):
            margin = stated_margin(relation, example.scene)
            if not math.isnan(margin):
                signs.append((margin > 0) == truth)
                families.add(relation.family)
    assert all(signs) and len(families) >= 6


def test_image_token_cells_are_the_bins_of_token_centres():
    """A 2 x 2 token grid has centres at 0.25 and 0.75 of each side: bins 2 and 6 of 8, raster order."""
    assert image_token_cells(2, 2, 8).tolist() == [[2, 2], [6, 2], [2, 6], [6, 6]]


def test_binding_loss_is_the_mean_cross_entropy_of_column_and_row():
    """Two mentions, 2 bins, logits 0 except a logit of ln 3 on the right bin of mention 0's column: its column
    probability is 3/4, every other one 1/2, so the loss is (ln(4/3) + 3 ln 2) / 4."""
    logits = torch.zeros(2, 2, 2)
    logits[0, 0, 1] = torch.tensor(3.0).log()
    output = GroundingOutput(torch.zeros(1), torch.zeros(1), torch.zeros(1, 4), torch.zeros(1, 3), logits)
    batch = VerificationBatch(
        inputs={},
        sentence_ends=torch.zeros(1, 2, dtype=torch.long),
        sentence_truth=torch.ones(1),
        matches=torch.ones(1),
        token_colours=torch.zeros(1, 3),
        num_objects=torch.ones(1, dtype=torch.long),
        mentions=torch.zeros(2, 2, dtype=torch.long),
        mention_cells=torch.tensor([[1, 0], [0, 1]]),
    )
    expected = (torch.tensor(4 / 3).log() + 3 * torch.tensor(2.0).log()) / 4
    torch.testing.assert_close(grounding_losses(output, batch)["binding"], expected)


def test_simple_examples_state_few_relations_of_the_asked_families():
    families = {"horizontal": ("left_of", "right_of"), "vertical": ("above", "below")}
    for seed in range(20):
        example = simple_verification_example(seed, WorldConfig(3, 6), max_relations=2, resolution=64)
        assert 1 <= len(example.relations) <= 2
        assert all(r.kind in families["horizontal"] + families["vertical"] for r in example.relations)
        layout = SceneLayout(example.scene)
        for relation, truth in zip(example.relations, example.sentence_truth, strict=True):
            assert evaluate(relation, layout) is (Truth.HOLDS if truth else Truth.BROKEN)


def test_prompt_curriculum_parses_and_picks_the_phase_of_a_step():
    phases = parse_prompt_curriculum("0:2:hv,400:4:all,800:8:all")
    assert phases[0] == PromptPhase(0, 2, ("horizontal", "vertical")) and not phases[0].full
    assert phase_at(399, phases) is phases[0] and phase_at(400, phases) is phases[1] and phase_at(10**6, phases).full
    with pytest.raises(ValueError, match="unknown relation families"):
        parse_prompt_curriculum("0:2:sideways")


def test_token_colour_targets_mark_the_patches_under_each_box():
    scene = red_and_blue_squares((0.15, 0.15), (0.65, 0.85))
    targets = token_colour_targets(scene, rows=2, cols=2, merge_size=2)  # a 4 x 4 patch grid
    red, blue = list(COLOURS).index("red"), list(COLOURS).index("blue")
    assert targets.shape == (4, 4 * len(COLOURS))
    # Red spans x, y 0.1 .. 0.2: patch (0, 0) of the 4 x 4 grid, token 0's first sub-patch. Blue spans x 0.6 .. 0.7,
    # y 0.8 .. 0.9: patch (row 3, col 2), token 3 (row 1, col 1)'s sub-patch (1, 0), the third.
    assert targets.nonzero().tolist() == [[0, red], [3, 2 * len(COLOURS) + blue]]


def tiny_network(processor):
    config = tiny_backbone_config(text_hidden_size=32, text_layers=2, text_intermediate_size=64, vision_hidden_size=32)
    return build_grounding_network(config, processor.tokenizer.convert_tokens_to_ids(REWARD_TOKEN))


def test_a_few_steps_move_every_weight_and_the_backbone_reloads(processor, tmp_path):
    torch.manual_seed(0)
    network = tiny_network(processor)
    module = VerificationModule(
        network,
        functools.partial(torch.optim.AdamW, lr=1e-3),
        binding_weight=1.0,
        image_cell_weight=1.0,
        slot_weight=1.0,
        coord_weight=1.0,
        stated_weight=1.0,
    )
    optimizer = module.configure_optimizers()["optimizer"]
    examples = [verification_example(seed, WorldConfig(3, 4), resolution=64) for seed in range(4)]
    batch = VerificationCollator(processor)(examples)
    before = {name: value.detach().clone() for name, value in network.named_parameters()}
    losses = []
    for _ in range(4):
        loss, _, _ = module.step(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    unchanged = [name for name, value in network.named_parameters() if torch.equal(value, before[name])]
    # Rows of tokens absent from the batch get no gradient (AdamW's decay still moves them), so all weights move.
    assert not unchanged, unchanged

    directory = save_grounded_backbone(network, processor, tmp_path / "stage_a", metrics={"steps": 4})
    model = build_spatialscore(directory, lora_rank=None)
    assert hasattr(model.backbone.visual, "patch_position_embedding")  # build_spatialscore attaches it
    reloaded = tiny_network(processor)
    reloaded.backbone.load_state_dict(model.backbone.state_dict())
    load_grounding_heads(reloaded, directory)
    network.eval(), reloaded.eval()
    with torch.no_grad():
        expected = network(batch.inputs, batch.sentence_ends)
        actual = reloaded(batch.inputs, batch.sentence_ends)
    torch.testing.assert_close(actual.sentence_logits, expected.sentence_logits)
    torch.testing.assert_close(actual.match_logits, expected.match_logits)
    with torch.no_grad():
        bound = network(batch.inputs, batch.sentence_ends, batch.mentions).binding_logits
        reloaded_bound = reloaded(batch.inputs, batch.sentence_ends, batch.mentions).binding_logits
    torch.testing.assert_close(reloaded_bound, bound)

    scorer = build_pretrained_tiny_spatialscore(backbone_dir=str(directory), lora_rank=4)  # stage B's recipe
    assert hasattr(scorer.backbone.get_base_model().visual, "patch_position_embedding")
    mean, std = scorer(**batch.inputs)
    assert mean.shape == std.shape == (len(examples),)

    # head_init="match": before any stage-B step the reward mean is the stage-A matching logit of the same input
    # (LoRA starts as the identity, so the backbone is stage A's).
    for scale in (1.0, 0.25):
        matched = build_pretrained_tiny_spatialscore(
            backbone_dir=str(directory), lora_rank=4, head_init="match", head_init_scale=scale
        ).eval()
        with torch.no_grad():
            matched_mean, _ = matched(**batch.inputs)
        torch.testing.assert_close(matched_mean, scale * expected.match_logits, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(mean, matched_mean)
    # LoRA on the vision tower as well: its blocks gain trainable adapters (the text ones too), and the untrained
    # adapters leave stage A's output unchanged
    with_vision = build_pretrained_tiny_spatialscore(
        backbone_dir=str(directory), lora_rank=4, head_init="match", vision_lora_target_modules=["qkv", "proj"]
    ).eval()
    trainable = [name for name, value in with_vision.named_parameters() if value.requires_grad]
    assert any("visual.blocks" in name and "lora_" in name for name in trainable)
    assert any("language_model" in name and "lora_" in name for name in trainable)
    assert not any("visual.blocks" in name and "lora_" in name for name, _ in scorer.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(with_vision(**batch.inputs)[0], expected.match_logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="head_init must be one of"):
        build_pretrained_tiny_spatialscore(backbone_dir=str(directory), head_init="verdict")
    with pytest.raises(ValueError, match="head_init_scale must be positive"):
        build_pretrained_tiny_spatialscore(backbone_dir=str(directory), head_init="match", head_init_scale=0.0)
    (directory / HEADS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="grounding heads"):
        build_pretrained_tiny_spatialscore(backbone_dir=str(directory), head_init="match")
