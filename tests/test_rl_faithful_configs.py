"""The full-size RL configs use Flow-GRPO's reference semantics (issue 22): its KL form at beta 0.01 and the
advantage std over every rank's rewards (std_scope: global, rl_policy.grpo.all_ranks), while the tiny default keeps
the exact Gaussian KL and the per-group std it was measured with."""

from __future__ import annotations

import pytest
from test_rl_configs import CONFIG_DIR, parse


@pytest.mark.parametrize("name", ["flux_dev.yaml", "qwen_image.yaml"])
def test_full_size_configs_follow_flow_grpo(name):
    model = parse(CONFIG_DIR / name).model
    objective = model.objective.init_args
    assert model.objective.class_path == "rl_policy.ClippedGRPO"
    assert (objective.kl_form, objective.beta) == ("flow_grpo", 0.01)
    assert model.groups.std_scope == "global" and model.groups.filter_order == "normalise_then_select"


def test_tiny_default_is_unchanged():
    model = parse(CONFIG_DIR / "tiny.yaml").model
    assert model.groups.std_scope == "group"
    assert model.objective.init_args.kl_form == "gaussian"
