"""`std_scope: global` across processes (Flow-GRPO's `global_std`): two CPU ranks (gloo) with different numbers of
prompts each compute their group advantages; the std is the one of every rank's kept rewards, checked on both ranks
against hand values and against one process given all the prompts.

Rank 0: one prompt [1, 2, 3, 4]; rank 1: two prompts [6, 6, 6, 6] (zero variance) and [2, 4, 6, NaN] (NaN never kept).
- every finite reward (11): sum 46, sum of squares 230, population variance 230/11 - (46/11)^2 = 414/121,
  std = sqrt(414) / 11 (about 1.85; rank 0's own would be sqrt(1.25), rank 1's sqrt(2.25)).
- top-1/bottom-1 kept, then normalised (select_then_normalise): 1, 4 | 6, 6 | 6, 2: sum 25, sum of squares 129,
  variance 129/6 - (25/6)^2 = 149/36, std = sqrt(149) / 6.
The means stay per prompt (2.5 | 6 | 4; kept: 2.5 | 6 | 4).

The test launches this file once per rank (tests/ddp_launch.py)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from ddp_launch import launch_ranks

EPS = 1e-4
NAN = float("nan")
REWARDS = {0: [[1.0, 2.0, 3.0, 4.0]], 1: [[6.0, 6.0, 6.0, 6.0], [2.0, 4.0, 6.0, NAN]]}
ALL_STD = math.sqrt(414) / 11
KEPT_STD = math.sqrt(149) / 6


def run_rank(out_dir: Path) -> None:
    from rl_policy.grpo import filtered_advantages, group_advantages

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    torch.distributed.init_process_group("gloo", rank=rank, world_size=int(os.environ["WORLD_SIZE"]))
    rewards = torch.tensor(REWARDS[rank])
    summary = {
        "all": group_advantages(rewards, std_scope="global", eps=EPS).advantages.tolist(),
        "kept": filtered_advantages(rewards, 1, "select_then_normalise", "global", eps=EPS).advantages.tolist(),
        "per_group": group_advantages(rewards, std_scope="group", eps=EPS).advantages.tolist(),  # no collective
    }
    torch.distributed.destroy_process_group()
    (out_dir / f"summary_{rank}.json").write_text(json.dumps(summary))


def test_global_std_gathers_every_rank(tmp_path):
    from rl_policy.grpo import filtered_advantages, group_advantages

    summaries = launch_ranks(__file__, ["--out", str(tmp_path)], tmp_path, world_size=2, timeout=300)
    zero = [0.0] * 4
    expected_all = {
        0: [[(r - 2.5) / (ALL_STD + EPS) for r in (1, 2, 3, 4)]],
        1: [zero, [(r - 4) / (ALL_STD + EPS) for r in (2, 4, 6)] + [0.0]],
    }
    expected_kept = {
        0: [[(1 - 2.5) / (KEPT_STD + EPS), 0.0, 0.0, (4 - 2.5) / (KEPT_STD + EPS)]],
        1: [zero, [(2 - 4) / (KEPT_STD + EPS), 0.0, (6 - 4) / (KEPT_STD + EPS), 0.0]],
    }
    for rank, summary in enumerate(summaries):
        torch.testing.assert_close(torch.tensor(summary["all"]), torch.tensor(expected_all[rank]))
        torch.testing.assert_close(torch.tensor(summary["kept"]), torch.tensor(expected_kept[rank]))
        local = group_advantages(torch.tensor(REWARDS[rank]), std_scope="group", eps=EPS).advantages
        torch.testing.assert_close(torch.tensor(summary["per_group"]), local)
    # one process holding every prompt gives the same advantages (and without the gather the ranks would not)
    together = torch.tensor(REWARDS[0] + REWARDS[1])
    one_process = group_advantages(together, std_scope="global", eps=EPS).advantages
    torch.testing.assert_close(torch.tensor(summaries[0]["all"] + summaries[1]["all"]), one_process)
    one_process = filtered_advantages(together, 1, "select_then_normalise", "global", eps=EPS).advantages
    torch.testing.assert_close(torch.tensor(summaries[0]["kept"] + summaries[1]["kept"]), one_process)
    rank_0_alone = group_advantages(torch.tensor(REWARDS[0]), std_scope="global", eps=EPS).advantages
    assert not torch.allclose(rank_0_alone, torch.tensor(summaries[0]["all"]))


def test_all_ranks_is_a_no_op_in_one_process():
    from rl_policy.grpo import all_ranks

    values = torch.tensor([3.0, 1.0])
    assert not torch.distributed.is_initialized() and all_ranks(values) is values


if __name__ == "__main__":
    import argparse

    arguments = argparse.ArgumentParser(description="one rank of the global-std test")
    arguments.add_argument("--out", type=Path, required=True)
    run_rank(arguments.parse_args().out)
