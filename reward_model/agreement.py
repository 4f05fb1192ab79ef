"""Critic-oracle agreement on the generator's own samples: the critic scores an agreement set (groups of samples of
held-out prompts with the SpatialWorld oracle's labels, written by `python -m rl_policy draw`), and the agreement is
measured inside each group, where GRPO uses the reward (shared.agreement):

- `agreement_spearman`: mean within-group Spearman between the critic's mean and the oracle's relation accuracy;
- `agreement_spearman_found`: the same against "every object found";
- `agreement_top{k}_bottom{k}`: share of (top-k, bottom-k by the critic) pairs the oracle's relation accuracy orders
  the same way, over the pairs it does not tie;
- `agreement_groups_used` / `agreement_groups_skipped` (relation accuracy constant in the group), the same with
  `_found`, `agreement_pairs_decided`, `agreement_prompts`, `agreement_samples_per_prompt`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from shared.agreement import top_bottom_agreement, within_group_spearman

SAMPLES_FILE = "samples.parquet"
COLUMNS = ("group", "sample", "prompt", "image", "relation_accuracy", "all_found")


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
    return {
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
