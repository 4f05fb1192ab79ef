"""Critic-oracle agreement on the generator's own samples: the critic scores an agreement set (groups of samples of
held-out prompts with the SpatialWorld oracle's labels, written by `python -m rl_policy draw`), and the agreement is
measured inside each group, where GRPO uses the reward (shared.agreement):

- `agreement_spearman`: mean within-group Spearman between the critic's mean and the oracle's relation accuracy;
- `agreement_spearman_found`: the same against "every object found";
- `agreement_top{k}_bottom{k}`: share of (top-k, bottom-k by the critic) pairs the oracle's relation accuracy orders
  the same way, over the pairs it does not tie;
- `agreement_auroc_by_relation` (when the set records each relation's verdict, `relations_confirmed` and
  `relation_kinds`, as `rl_policy draw` writes them): per relation kind (left_of, behind, inside, ...), the mean over
  (group, stated relation) of the AUROC with which the critic's mean separates the samples where that relation holds
  from those where it does not, among the group's samples with every object found (placement alone, not presence);
  a (group, relation) that holds in all or none of them is left out; `agreement_auroc_relations_by_relation` counts
  the ones used. Which relations the critic reads on the generator's samples, and which it reads at chance (.5);
- `agreement_groups_used` / `agreement_groups_skipped` (relation accuracy constant in the group), the same with
  `_found`, `agreement_pairs_decided`, `agreement_prompts`, `agreement_samples_per_prompt`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from shared.agreement import binary_auroc, top_bottom_agreement, within_group_spearman

SAMPLES_FILE = "samples.parquet"
COLUMNS = ("group", "sample", "prompt", "image", "relation_accuracy", "all_found")
RELATION_COLUMNS = ("relations_confirmed", "relation_kinds")  # optional: per stated relation (scene-graph order)


def load_agreement_set(directory: str | os.PathLike) -> pd.DataFrame:
    """samples.parquet of an agreement set dir, checked: its columns, equal group sizes of at least 2, every image
    file present; image paths made absolute. One clear error naming the problem otherwise."""
    directory = Path(directory)
    path = directory / SAMPLES_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"agreement set {directory} has no {SAMPLES_FILE}: draw one with `python -m rl_policy draw --out DIR` "
            "(`make agreement-set` for the embedded default)"
        )
    frame = pd.read_parquet(path)
    missing = [column for column in COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing} of an agreement set")
    sizes = frame.groupby("group").size()
    if sizes.nunique() != 1 or sizes.iloc[0] < 2:
        raise ValueError(f"{path}: every group needs the same number (>= 2) of samples, got sizes {sorted(set(sizes))}")
    frame = frame.sort_values(["group", "sample"]).reset_index(drop=True)
    frame["image"] = [str(directory / name) for name in frame["image"]]
    absent = [name for name in frame["image"] if not Path(name).is_file()]
    if absent:
        raise FileNotFoundError(f"agreement set {directory}: {len(absent)} image files are missing, e.g. {absent[0]}")
    return frame


def agreement_metrics(scorer, frame: pd.DataFrame, *, top_k: int = 6) -> dict[str, Any]:
    """The module docstring's metrics of `scorer` (a `SpatialScorer`) on a loaded agreement set."""
    groups = frame["group"].nunique()
    per_group = len(frame) // groups
    mean, _ = scorer.score(prompts=list(frame["prompt"]), images=list(frame["image"]))
    scores = mean.float().cpu().view(groups, per_group)  # [P, G]
    accuracy = torch.tensor(frame["relation_accuracy"].to_numpy(dtype="float64")).view(groups, per_group)
    found = torch.tensor(frame["all_found"].to_numpy(dtype="float64")).view(groups, per_group)
    spearman = within_group_spearman(scores, accuracy)
    spearman_found = within_group_spearman(scores, found)
    top_bottom = top_bottom_agreement(scores, accuracy, min(top_k, per_group // 2))
    metrics = {
        "agreement_spearman": spearman.value,
        "agreement_spearman_found": spearman_found.value,
        f"agreement_top{top_k}_bottom{top_k}": top_bottom.value,
        "agreement_groups_used": spearman.used,
        "agreement_groups_skipped": spearman.skipped,
        "agreement_found_groups_used": spearman_found.used,
        "agreement_found_groups_skipped": spearman_found.skipped,
        "agreement_pairs_decided": top_bottom.used,
        "agreement_prompts": groups,
        "agreement_samples_per_prompt": per_group,
    }
    if set(RELATION_COLUMNS) <= set(frame.columns) and frame[list(RELATION_COLUMNS)].notna().all(axis=None):
        auroc, used = auroc_by_relation(frame, scores)
        metrics |= {"agreement_auroc_by_relation": auroc, "agreement_auroc_relations_by_relation": used}
    return metrics


def auroc_by_relation(frame: pd.DataFrame, scores: torch.Tensor) -> tuple[dict[str, float], dict[str, int]]:
    """Per relation kind: the mean within-group AUROC of `scores` [P, G] (groups in `frame`'s sorted order) for that
    relation holding, among each group's samples with every object found, and how many (group, relation) entered it
    (module docstring)."""
    values: dict[str, list[float]] = {}
    for index, (_, group) in enumerate(frame.groupby("group", sort=True)):
        found = torch.tensor(group["all_found"].to_numpy(dtype=bool))  # [G]
        kinds = list(group["relation_kinds"].iloc[0])
        verdicts = torch.tensor([list(row) for row in group["relations_confirmed"]], dtype=torch.bool)  # [G, R]
        if verdicts.shape[1] != len(kinds):
            raise ValueError(
                f"agreement set group {group['group'].iloc[0]}: relations_confirmed and relation_kinds differ in length"
            )
        for relation, kind in enumerate(kinds):
            value = binary_auroc(scores[index][found], verdicts[found, relation])
            if not math.isnan(value):  # the relation holds in some found samples and not in others
                values.setdefault(kind, []).append(value)
    return (
        {kind: sum(aurocs) / len(aurocs) for kind, aurocs in sorted(values.items())},
        {kind: len(aurocs) for kind, aurocs in sorted(values.items())},
    )
