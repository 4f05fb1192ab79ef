"""Callbacks of reward training: the end-of-fit evaluation and export, and the TensorBoard grid of scored pairs.

`ExportRewardCheckpoint` (a Lightning Callback) times the fit, and when it ends scores every pair of the data
module's test split in both orientations (forward: the prompt, the perfect image must win; reversed: the perturbed
scene's prompt, the perturbed image must win) and writes `export_checkpoint(...)` into `<default_root_dir>/export`
(or `dirpath`) with the metrics of docs/DESIGN.md, "Default locations":

- `pairwise_accuracy`: forward pairs ordered right (mean_w > mean_l; a tie is wrong);
- `pairwise_accuracy_by_broken`: the same per number of broken relations, `{"1", "2", "3", "2-3"}` (null where the
  split has no such pair), over the pairs made by perturbing a scene (render, generated): a ranked pair's two
  samples differ by what the oracle confirmed, not by a perturbation, and count only in `pairwise_accuracy_by_kind`;
- `pairwise_accuracy_reversed`: reversed pairs ordered right;
- `ece`: expected calibration error (10 bins) of P(the higher-scored image is right) under the trained loss's own
  probability model (`reward_model.calibration`), over the pairs each in one orientation drawn from its id;
- `temperature`, `ece_calibrated`: the temperature fitted on the calibration split (validation, never test) and the
  test ECE at it;
- `std_error_auroc`, `num_misordered`: how well V = std_w^2 + std_l^2 flags the misordered pairs (AUROC) among those
  same pairs, and how many there are;
- `train_seconds` (fit start to fit end, before this pass), `num_test_pairs`;
- `pairwise_accuracy_by_kind`, `num_test_pairs_by_kind` (render, generated, ranked) and, where the split has the
  generator's own images, `generated_pairwise_accuracy` (forward readings of every non-render pair);
- with `agreement_set`: the critic-oracle agreement on the generator's own samples (reward_model.agreement).
 The pass runs on rank 0 with the plain network, so it
suits single-process and DDP training; under FSDP (a sharded network) it is skipped with a message saying how to
export the last full checkpoint with `python -m reward_model export`.

`PairGridLogger` draws the first validation pairs with their scores into one image per validation epoch
(`val/pairs` in TensorBoard).
"""

from __future__ import annotations

import functools
import math
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader

from reward_model.agreement import agreement_metrics, load_agreement_set
from reward_model.calibration import expected_calibration_error, fit_temperature, std_error_auroc, win_probability
from reward_model.data import PairCollator, PairRecord, PairwiseDataModule, PairwiseDataset
from reward_model.export import export_checkpoint
from reward_model.model import SpatialScore
from reward_model.module import BROKEN_GROUPS, correct_pairs, counts_by_broken, perturbation_pairs
from reward_model.scorer import SpatialScorer
from reward_model.tokenizer import SpatialScoreProcessor
from shared import stable_seed


class PairScores(NamedTuple):
    """Scores of pairs in both orientations where they have two (a ranked pair has only its forward reading); every
    field has one row per reading."""

    mean_w: torch.Tensor
    std_w: torch.Tensor
    mean_l: torch.Tensor
    std_l: torch.Tensor
    is_reversed: torch.Tensor  # bool
    num_broken: torch.Tensor  # long
    pair_ids: list[str]
    kinds: list[str]  # render | generated | ranked, per reading

    def one_orientation(self, seed: int) -> torch.Tensor:
        """[R] bool: one reading per pair, the orientation drawn from its id where it has both, so that calibration
        sees both readings without counting a pair twice."""
        two = {pair_id for pair_id, flag in zip(self.pair_ids, self.is_reversed.tolist(), strict=True) if flag}
        return torch.tensor(
            [
                pair_id not in two or (stable_seed("ece", seed, pair_id) % 2 == 1) == flag
                for pair_id, flag in zip(self.pair_ids, self.is_reversed.tolist(), strict=True)
            ]
        )

    def select(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.mean_w[rows], self.std_w[rows], self.mean_l[rows], self.std_l[rows]


@torch.no_grad()
def score_pairs(
    network: SpatialScore,
    records: Sequence[PairRecord],
    processor: SpatialScoreProcessor,
    *,
    system_prompt: str | None = None,
    batch_size: int = 16,
) -> PairScores:
    """Scores of every pair of `records`, forward and reversed. The network is put in eval mode for the pass and
    back in its previous mode after it."""
    if not records:
        raise ValueError("no pairs to evaluate: the split is empty")
    loader = DataLoader(
        PairwiseDataset(records, "both"),  # each pair forward, then reversed where it has that reading
        batch_size=2 * batch_size,
        collate_fn=PairCollator(processor, system_prompt, getattr(network, "max_prompt_tokens", None)),
    )
    device = next(network.parameters()).device
    was_training = network.training
    network.eval()
    scores, reversed_flags, num_broken, pair_ids, kinds = [], [], [], [], []
    try:
        for batch in loader:
            mean, std = network(**{name: tensor.to(device) for name, tensor in batch.inputs.items()})  # [2B], [2B]
            mean_w, mean_l = mean.float().cpu().chunk(2)  # winners come first
            std_w, std_l = std.float().cpu().chunk(2)
            scores.append(torch.stack([mean_w, std_w, mean_l, std_l]))  # [4, B]
            reversed_flags.append(batch.is_reversed)
            num_broken.append(batch.num_broken)
            pair_ids += batch.pair_ids
            kinds += batch.kinds
    finally:
        network.train(was_training)
    mean_w, std_w, mean_l, std_l = torch.cat(scores, dim=1)  # each [2P]
    return PairScores(mean_w, std_w, mean_l, std_l, torch.cat(reversed_flags), torch.cat(num_broken), pair_ids, kinds)


def pair_metrics(
    scores: PairScores,
    *,
    loss: str = "gaussian_bt",
    num_bins: int = 10,
    seed: int = 0,
    calibration_scores: PairScores | None = None,
) -> dict[str, Any]:
    """Accuracy (forward, reversed, by number broken), ECE and the std's error AUROC of test `scores` (see the module
    docstring); with `calibration_scores` (validation pairs) also the temperature fitted on them and the test ECE
    at that temperature."""
    correct = correct_pairs(scores.mean_w, scores.mean_l)  # [2P]
    forward = ~scores.is_reversed
    perturbed = forward & perturbation_pairs(scores.kinds)  # [2P]
    correct_by_group, total_by_group = counts_by_broken(correct[perturbed], scores.num_broken[perturbed])  # [G], [G]
    by_broken = {
        group.replace("_", "-"): (right / total if total else None)
        for group, right, total in zip(BROKEN_GROUPS, correct_by_group.tolist(), total_by_group.tolist(), strict=True)
    }
    chosen = scores.one_orientation(seed)  # [2P], P of them true
    auroc, errors = std_error_auroc(*scores.select(chosen))
    kinds = np.array(scores.kinds)
    by_kind = {
        kind: correct[forward & torch.from_numpy(kinds == kind)].float().mean().item() for kind in sorted(set(kinds))
    }
    metrics = {
        "pairwise_accuracy": correct[forward].float().mean().item(),
        "pairwise_accuracy_by_kind": by_kind,
        "num_test_pairs_by_kind": {kind: int((forward & torch.from_numpy(kinds == kind)).sum()) for kind in by_kind},
        "pairwise_accuracy_by_broken": by_broken,
        "pairwise_accuracy_reversed": correct[scores.is_reversed].float().mean().item(),
        "ece": expected_calibration_error(win_probability(*scores.select(chosen), loss), num_bins),
        "ece_bins": num_bins,
        "probability_model": loss,
        "std_error_auroc": auroc,
        "num_misordered": errors,
        "num_test_pairs": int(forward.sum()),
    }
    generated = forward & torch.from_numpy(kinds != "render")
    if generated.any():  # the generator's own images (best-of-N pairs and ranked pairs), issue 18
        metrics["generated_pairwise_accuracy"] = correct[generated].float().mean().item()
    if calibration_scores is not None:
        temperature = fit_temperature(*calibration_scores.select(calibration_scores.one_orientation(seed)), loss)
        probability = win_probability(*scores.select(chosen), loss, temperature=temperature)
        metrics |= {"temperature": temperature, "ece_calibrated": expected_calibration_error(probability, num_bins)}
    return metrics


def evaluate_pairs(
    network: SpatialScore,
    records: Sequence[PairRecord],
    processor: SpatialScoreProcessor,
    *,
    system_prompt: str | None = None,
    loss: str = "gaussian_bt",
    batch_size: int = 16,
    num_bins: int = 10,
    seed: int = 0,
    calibration_records: Sequence[PairRecord] | None = None,
) -> dict[str, Any]:
    """`pair_metrics` of `network` on `records`; `calibration_records` (validation pairs) fit the temperature."""
    score = functools.partial(
        score_pairs, network, processor=processor, system_prompt=system_prompt, batch_size=batch_size
    )
    calibration = score(calibration_records) if calibration_records else None
    return pair_metrics(score(records), loss=loss, num_bins=num_bins, seed=seed, calibration_scores=calibration)


class ExportRewardCheckpoint(Callback):
    """At the end of `fit`: evaluate on a held-out split and export the reward checkpoint dir with metrics.json.

    dirpath: where to export; None: `<trainer.default_root_dir>/export`.
    split: the data module's split to evaluate ("test" for the numbers of docs/DESIGN.md).
    batch_size: pairs per forward pass of the evaluation (2 x batch_size sequences).
    max_pairs: evaluate only the first max_pairs pairs of the split; None: all.
    ece_bins: confidence bins of the ECE.
    seed: draws each pair's orientation for the ECE.
    calibration_split: the split the temperature is fitted on (None: no temperature); must differ from `split`.
    agreement_set: an agreement set dir (`python -m rl_policy draw`: groups of the generator's samples of held-out
        prompts with the oracle's labels); its critic-oracle agreement metrics (reward_model.agreement) join
        metrics.json. Checked when the fit starts, so a bad path fails before training.
    agreement_top_k: k of the top-k vs bottom-k agreement (GRPO's filter: 6 of 24).
    """

    def __init__(
        self,
        dirpath: str | None = None,
        split: str = "test",
        batch_size: int = 16,
        max_pairs: int | None = None,
        ece_bins: int = 10,
        seed: int = 0,
        calibration_split: str | None = "val",
        agreement_set: str | None = None,
        agreement_top_k: int = 6,
    ) -> None:
        if agreement_top_k < 1:
            raise ValueError(f"agreement_top_k must be positive, got {agreement_top_k}")
        if max_pairs is not None and max_pairs < 1:
            raise ValueError(f"max_pairs must be positive or None, got {max_pairs}")
        if calibration_split is not None and calibration_split == split:
            raise ValueError(f"calibration_split must differ from the evaluated split, both are {split!r}")
        self.dirpath = dirpath
        self.split = split
        self.batch_size = batch_size
        self.max_pairs = max_pairs
        self.ece_bins = ece_bins
        self.seed = seed
        self.calibration_split = calibration_split
        self.agreement_set, self.agreement_top_k = agreement_set, agreement_top_k
        self.resolved_config: dict[str, Any] | None = None  # set by the CLI: kept in the export's config.json
        self.exported_to: Path | None = None
        self._fit_started: float | None = None

    def export_dir(self, trainer: Trainer) -> Path:
        return Path(self.dirpath) if self.dirpath is not None else Path(trainer.default_root_dir) / "export"

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_started = time.perf_counter()
        if self.agreement_set is not None:
            load_agreement_set(self.agreement_set)  # a missing or malformed set fails now, not after training

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        train_seconds = time.perf_counter() - self._fit_started
        if isinstance(trainer.strategy, FSDPStrategy):  # rank 0 holds only its shard of the network here
            rank_zero_info(
                "ExportRewardCheckpoint: skipped under FSDP (the network is sharded); export the last checkpoint with "
                "`python -m reward_model export --ckpt CKPT --out DIR --evaluate` (state_dict_type: full)"
            )
            return
        if trainer.is_global_zero:
            datamodule = trainer.datamodule
            if not isinstance(datamodule, PairwiseDataModule):
                raise TypeError(
                    f"ExportRewardCheckpoint needs a PairwiseDataModule to evaluate on, got {type(datamodule).__name__}"
                )
            for split in (self.split, self.calibration_split):
                if split is not None:
                    datamodule.setup("test" if split == "test" else "validate" if split == "val" else "fit")
            records = datamodule.records[self.split][: self.max_pairs]
            calibration = None if self.calibration_split is None else datamodule.records[self.calibration_split]
            metrics = evaluate_pairs(
                pl_module.network,
                records,
                datamodule.processor,
                system_prompt=datamodule.system_prompt,
                loss=getattr(pl_module, "loss_name", "gaussian_bt"),
                batch_size=self.batch_size,
                num_bins=self.ece_bins,
                seed=self.seed,
                calibration_records=calibration,
            )
            metrics |= {"train_seconds": train_seconds, "split": self.split, "global_step": trainer.global_step}
            if self.agreement_set is not None:
                scorer = SpatialScorer.from_network(
                    pl_module.network,
                    device=next(pl_module.network.parameters()).device,
                    batch_size=self.batch_size,
                    system_prompt=datamodule.system_prompt,
                )
                metrics |= agreement_metrics(scorer, load_agreement_set(self.agreement_set), top_k=self.agreement_top_k)
                metrics["agreement_set"] = str(self.agreement_set)
            self.exported_to = export_checkpoint(
                pl_module.network,
                self.export_dir(trainer),
                metrics=json_safe(metrics),
                resolved_config=self.resolved_config,
                system_prompt=datamodule.system_prompt,
            )
            rank_zero_info(
                f"exported {self.exported_to}: pairwise accuracy {metrics['pairwise_accuracy']:.3f} (reversed "
                f"{metrics['pairwise_accuracy_reversed']:.3f}, by number broken "
                f"{json_safe(metrics['pairwise_accuracy_by_broken'])}), ECE {metrics['ece']:.3f} "
                f"(at the fitted temperature {metrics.get('ece_calibrated', math.nan):.3f}), "
                f"std error AUROC {metrics['std_error_auroc']:.3f} on "
                f"{metrics['num_test_pairs']} {self.split} pairs"
            )
        trainer.strategy.barrier("export_reward_checkpoint")


class PairGridLogger(Callback):
    """Draws the first `num_pairs` validation pairs with their scores into one image per validation epoch, logged to
    TensorBoard as `val/pairs` (one row per pair: the image that should win, the one that should lose, and the
    prompt with mean +- std of both and whether the order is right). Needs `RewardModule.validation_step`'s returned
    scores and a `PairwiseDataModule`; without a TensorBoard logger it does nothing.

    num_pairs: rows of the grid. thumbnail: side of each drawn image in pixels.
    """

    def __init__(self, num_pairs: int = 8, thumbnail: int = 128) -> None:
        if num_pairs < 1 or thumbnail < 16:
            raise ValueError(f"num_pairs must be positive and thumbnail >= 16, got {num_pairs} and {thumbnail}")
        self.num_pairs = num_pairs
        self.thumbnail = thumbnail
        self._rows: list[tuple[PairRecord, bool, list[float]]] = []

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._rows = []

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, *args: Any
    ) -> None:
        if len(self._rows) >= self.num_pairs or not isinstance(outputs, dict) or not trainer.is_global_zero:
            return
        records = {record.pair_id: record for record in getattr(trainer.datamodule, "records", {}).get("val", [])}
        scores = torch.stack([outputs[name].float().cpu() for name in ("mean_w", "std_w", "mean_l", "std_l")], 1)
        for pair_id, is_reversed, row in zip(batch.pair_ids, batch.is_reversed.tolist(), scores.tolist(), strict=True):
            if pair_id in records and len(self._rows) < self.num_pairs:
                self._rows.append((records[pair_id], is_reversed, row))

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger

        if not self._rows or trainer.sanity_checking or not isinstance(trainer.logger, TensorBoardLogger):
            return
        grid = draw_pair_grid(self._rows, self.thumbnail)
        trainer.logger.experiment.add_image("val/pairs", np.asarray(grid), trainer.global_step, dataformats="HWC")


def draw_pair_grid(rows: Sequence[tuple[PairRecord, bool, Sequence[float]]], thumbnail: int = 128) -> Image.Image:
    """One row per (record, is_reversed, [mean_w, std_w, mean_l, std_l]): winner, loser, and the text. RGB image."""
    text_width, line_height, chars_per_line = 4 * thumbnail, 11, (4 * thumbnail - 8) // 6
    grid = Image.new("RGB", (2 * thumbnail + text_width, len(rows) * thumbnail), "white")
    draw = ImageDraw.Draw(grid)
    for index, (record, is_reversed, (mean_w, std_w, mean_l, std_l)) in enumerate(rows):
        top = index * thumbnail
        winner, loser = (
            (record.perturbed_image, record.perfect_image)
            if is_reversed
            else (record.perfect_image, record.perturbed_image)
        )
        for column, path in enumerate((winner, loser)):
            with Image.open(path) as image:
                grid.paste(image.convert("RGB").resize((thumbnail, thumbnail)), (column * thumbnail, top))
        verdict = "right" if mean_w > mean_l else "WRONG"
        header = (
            f"{'reversed' if is_reversed else 'forward'}, {record.num_broken} broken: should win {mean_w:+.2f} +- "
            f"{std_w:.2f}, should lose {mean_l:+.2f} +- {std_l:.2f}: {verdict}"
        )
        prompt = record.perturbed_prompt if is_reversed else record.prompt
        lines = [header] + textwrap.wrap(prompt, chars_per_line)
        for number, line in enumerate(lines[: thumbnail // line_height]):
            draw.text((2 * thumbnail + 4, top + 2 + number * line_height), line, fill="black")
        draw.line([(0, top), (grid.width, top)], fill="grey")
    return grid


def json_safe(value: Any) -> Any:
    """NaN and infinities (not JSON) as null."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
