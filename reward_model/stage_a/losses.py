"""Stage A's losses and accuracies, pure functions of a `GroundingOutput` and its `VerificationBatch`.

As BLIP's image-text matching, plus dense per-sentence and per-token targets:
- verdict: BCE of each relation sentence's verdict against the oracle; match: BCE of the `<|reward|>` logit against
  "every sentence holds"; colour: multi-label BCE of the colours whose boxes overlap each image token's patches
  (it supervises the vision tower directly, so it needs no text model that can already read).
- binding: cross-entropy of each mention's object cell (column and row bin of its centre), a dense, easy gradient
  for the mention -> image-token attention that verification needs first; image_cell: the same head reads each
  image token's own cell, so image tokens keep their position where a mention can copy it.
- slot: at each sentence's ".", the cells of the relation's objects a and b, so the sentence end gathers what the
  verdict compares.
- coord: MSE of each mention's centre (x, y) and each sentence's offset (a - b), `COORD_SCALE` times the image
  fractions. Comparing two one-hot cells is quadratic; a coordinate held linearly makes "a left of b" one ReLU of the
  offset, gated by the relation word.
- stated: the sentence's relation kind (cross-entropy over `KINDS`) and its stated margin (MSE; positive exactly
  where the sentence holds). The verdict is XOR-like in (relation word, sign of the offset): neither alone says
  whether the sentence holds, so the verdict BCE alone gives no first-order signal; the stated margin is that
  product, supervised directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reward_model.stage_a.data import VerificationBatch
from reward_model.stage_a.model import GroundingOutput

COORD_SCALE = 4.0  # coordinate regressions predict this times the image fraction (offsets span -4 .. 4)
# Losses weighted by the module's options (verdict's weight is 1); the others are always computed and logged.
WEIGHTED = ("match", "colour", "binding", "image_cell", "slot", "coord", "stated")


def grounding_losses(output: GroundingOutput, batch: VerificationBatch) -> dict[str, torch.Tensor]:
    """BCE of the verdicts against the oracle ([S]), of the matching logits against all-true ([B]), of the image
    tokens' colour logits against the colours whose boxes overlap their cells ([N, C]), and the cross-entropy of
    each mention's column and row bins ([M, 2, bins]; mean over both, 0 without mentions)."""
    losses = {
        "verdict": F.binary_cross_entropy_with_logits(output.sentence_logits.float(), batch.sentence_truth),
        "match": F.binary_cross_entropy_with_logits(output.match_logits.float(), batch.matches),
        "colour": F.binary_cross_entropy_with_logits(output.token_colour_logits.float(), batch.token_colours),
    }
    logits = output.binding_logits.float()
    if batch.mention_cells is None or len(batch.mention_cells) == 0:
        losses["binding"] = logits.sum() * 0.0
    else:
        losses["binding"] = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.mention_cells.reshape(-1))
    if output.image_cell_logits is not None and batch.image_cells is not None:
        logits = output.image_cell_logits.float()
        losses["image_cell"] = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.image_cells.reshape(-1))
    if output.slot_logits is not None and batch.slot_cells is not None:
        logits = output.slot_logits.float()
        losses["slot"] = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch.slot_cells.reshape(-1), ignore_index=-100
        )
    if output.mention_xy is not None and batch.mention_xy is not None and batch.slot_offsets is not None:
        known = ~batch.slot_offsets.isnan()
        offsets = output.slot_offsets.float()[known]
        losses["coord"] = 0.5 * F.mse_loss(output.mention_xy.float(), COORD_SCALE * batch.mention_xy) + 0.5 * (
            F.mse_loss(offsets, COORD_SCALE * batch.slot_offsets[known]) if known.any() else offsets.sum() * 0.0
        )
    if output.kind_logits is not None and batch.relation_kinds is not None and batch.stated_offsets is not None:
        known = ~batch.stated_offsets.isnan()
        stated = output.stated_offsets.float()[known]
        losses["stated"] = F.cross_entropy(output.kind_logits.float(), batch.relation_kinds) + (
            F.mse_loss(stated, COORD_SCALE * batch.stated_offsets[known]) if known.any() else stated.sum() * 0.0
        )
    return losses


@torch.no_grad()
def grounding_accuracies(output: GroundingOutput, batch: VerificationBatch) -> dict[str, torch.Tensor]:
    """Per head, the share of right answers: sentences, matches, image-token colours (per token and colour);
    mentions, image tokens and sentence slots whose column and row bins are both right; sentence offsets of clear
    sign (|offset| > 0.05) and stated margins whose sign is right. A head without targets in the batch is left out."""
    accuracies = {
        "acc_verdict": ((output.sentence_logits > 0).float() == batch.sentence_truth).float().mean(),
        "acc_match": ((output.match_logits > 0).float() == batch.matches).float().mean(),
        "acc_colour": ((output.token_colour_logits > 0).float() == batch.token_colours).float().mean(),
    }
    if batch.mention_cells is not None and len(batch.mention_cells):
        right = output.binding_logits.argmax(-1) == batch.mention_cells  # [M, 2]
        accuracies["acc_binding"] = right.all(-1).float().mean()
    if output.image_cell_logits is not None and batch.image_cells is not None:
        accuracies["acc_image_cell"] = (output.image_cell_logits.argmax(-1) == batch.image_cells).all(-1).float().mean()
    if output.slot_logits is not None and batch.slot_cells is not None:
        known = batch.slot_cells[..., 0] >= 0  # [S, 2]
        right = (output.slot_logits.argmax(-1) == batch.slot_cells).all(-1)  # [S, 2]
        accuracies["acc_slot"] = right[known].float().mean()
    if output.slot_offsets is not None and batch.slot_offsets is not None:
        clear = batch.slot_offsets.abs() > 0.05  # NaN compares False
        agree = (output.slot_offsets > 0) == (batch.slot_offsets > 0)
        accuracies["acc_offset_sign"] = agree[clear].float().mean()
    if output.stated_offsets is not None and batch.stated_offsets is not None:
        known = ~batch.stated_offsets.isnan()
        if known.any():
            right = (output.stated_offsets[known] > 0) == (batch.stated_offsets[known] > 0)
            accuracies["acc_stated_sign"] = right.float().mean()
    return accuracies


def total_loss(losses: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """verdict + sum of weights[name] * losses[name] over `WEIGHTED` (a name missing from `weights` weighs 0);
    match, colour and binding are always added (0 * a finite loss adds nothing), the others only where weighted."""
    loss = losses["verdict"] + weights.get("match", 0.0) * losses["match"]
    loss = loss + weights.get("colour", 0.0) * losses["colour"]
    loss = loss + weights.get("binding", 0.0) * losses["binding"]
    for name in ("image_cell", "slot", "coord", "stated"):
        if weights.get(name, 0.0):
            loss = loss + weights[name] * losses[name]
    return loss
