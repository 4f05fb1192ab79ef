"""Stage A's entry point, `python -m reward_model pretrain --config configs/reward/tiny_stage_a_v<N>.yaml
[--init-from DIR]`: every phase of the shipped recipe, chained as `make pretrain-reward` chains them, gives in its
first steps the losses that the experiment script which made checkpoints/reward_tiny_stage_a gave (to 1e-6); the
configs chain; the patch position embedding follows the processor's patch order."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import get_vision_position_ids

from reward_model.__main__ import main
from reward_model.model import build_spatialscore
from reward_model.position_embedding import patch_grid_positions
from reward_model.stage_a.pairs import pair_accuracies, relation_sentence_count

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "reward"
PHASES = ("v3", "v4", "v5", "v6", "v7", "v8", "v9", "v10", "v11", "v12")

# float(loss) of the first 3 training steps of each phase, as experiments/reward_tiny/stage_a_verify.py computed it
# (the script `make pretrain-reward` ran to make the shipped checkpoint), each phase started from the previous one's
# output as the Makefile chained them, at batch size 4, by experiments/reward_tiny/record_stage_a_losses.py (both
# scripts are in commit 0757927, removed after; its docstring says how to run it):
#   cd /tmp/sa && OMP_NUM_THREADS=1 REPO/.venv/bin/python REPO/experiments/reward_tiny/record_stage_a_losses.py \
#       REPO 4 3 /tmp/sa/runs
# Phases after the first start from a 3-step phase before them, so loading (`--init-from`) is checked as well.
RECORDED_LOSSES = {
    "v3": [1.9808528423309326, 2.240879535675049, 2.2045388221740723],
    "v4": [2.164034843444824, 2.241699695587158, 2.154819965362549],
    "v5": [2.135819911956787, 2.183647394180298, 2.1304123401641846],
    "v6": [4.188617706298828, 4.1750030517578125, 4.356634140014648],
    "v7": [6.266000747680664, 6.214524269104004, 6.343512535095215],
    "v8": [8.254343032836914, 8.264420509338379, 8.70801830291748],
    "v9": [11.968063354492188, 11.890951156616211, 11.735733032226562],
    "v10": [18.434417724609375, 15.40304183959961, 17.50249481201172],
    "v11": [17.74441146850586, 15.628523826599121, 14.524101257324219],
    "v12": [17.281021118164062, 15.789628982543945, 14.340924263000488],
}
STEPS, BATCH_SIZE = 3, 4


def config(phase: str) -> dict:
    return yaml.safe_load((CONFIG_DIR / f"tiny_stage_a_{phase}.yaml").read_text())


def test_the_configs_chain_the_phases_and_start_with_their_launch_command():
    previous = None
    for phase in PHASES:
        text = (CONFIG_DIR / f"tiny_stage_a_{phase}.yaml").read_text()
        assert text.startswith(f"# python -m reward_model pretrain --config configs/reward/tiny_stage_a_{phase}.yaml")
        settings = yaml.safe_load(text)
        init_from = settings["model"]["network"]["init_args"]["init_from"]
        expected = None if previous is None else f"{previous['trainer']['default_root_dir']}/backbone"
        assert init_from == expected, phase
        previous = settings
    assert previous["trainer"]["default_root_dir"] == "runs/stage_a/v12"


def test_every_phase_gives_the_losses_of_the_script_that_made_the_shipped_checkpoint(tmp_path, small_dataset):
    """Each phase as `make pretrain-reward` runs it, with a batch of 4, 3 steps (the learning-rate schedule stays the
    phase's) and 2 held-out examples (they do not touch training); losses per step from the CSV log. The last phase
    also scores 4 test pairs zero-shot (the others skip the dataset)."""
    previous = None
    for phase in PHASES:
        root = tmp_path / phase
        overrides = [
            f"--trainer.max_steps={STEPS}",
            f"--trainer.val_check_interval={STEPS}",
            "--trainer.log_every_n_steps=1",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
            f"--trainer.logger.save_dir={root}",
            f"--trainer.default_root_dir={root}",
            "--trainer.enable_checkpointing=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--data.batch_size={BATCH_SIZE}",
            "--data.val_size=2",
            f"--data.easy_val_size={min(2, config(phase)['data']['easy_val_size'])}",
            "--data.num_workers=0",  # the same order as the recipe's 1 worker
            f"--data.dataset_dir={small_dataset if phase == PHASES[-1] else 'null'}",
            "--data.eval_pairs=4",
        ]
        init_from = [] if previous is None else ["--init-from", str(previous)]
        main(["pretrain", "--config", str(CONFIG_DIR / f"tiny_stage_a_{phase}.yaml"), *init_from, *overrides])
        with open(root / "lightning_logs" / "version_0" / "metrics.csv") as handle:
            losses = [float(row["train/loss"]) for row in csv.DictReader(handle) if row["train/loss"]]
        assert losses == pytest.approx(RECORDED_LOSSES[phase], abs=1e-6, rel=0), phase
        previous = root / "backbone"
        assert (previous / "grounding_heads.safetensors").is_file()

    history = json.loads((previous / "pretrain_metrics.json").read_text())["history"]
    assert [record["step"] for record in history] == [STEPS]
    assert {"val/auroc_verdict", "easy/acc_verdict", "pairs/match_acc", "pairs/ver_acc_both"} <= set(history[0])
    assert history[0]["train/loss"] == pytest.approx(sum(RECORDED_LOSSES[PHASES[-1]]) / STEPS, abs=1e-5)

    # The last phase's directory is what stage B loads: its backbone, position embedding attached.
    network = build_spatialscore(previous, lora_rank=4)
    assert hasattr(network.backbone.get_base_model().visual, "patch_position_embedding")


def test_a_phase_resumed_from_its_lightning_checkpoint_continues_the_same_run(tmp_path):
    """2 steps, then a resume (`--ckpt_path`) to 3: the third step's loss is the uninterrupted run's (the data
    stream restarts at the restored step, the optimizer and the schedule are restored)."""
    words = ["pretrain", "--config", str(CONFIG_DIR / "tiny_stage_a_v3.yaml")]
    words += ["--trainer.val_check_interval=2", "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false"]
    words += ["--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={tmp_path}"]
    words += [f"--trainer.default_root_dir={tmp_path}", "--data.dataset_dir=null", "--data.num_workers=0"]
    words += [f"--data.batch_size={BATCH_SIZE}", "--data.val_size=2"]
    main([*words, "--trainer.max_steps=2"])
    (checkpoint,) = (tmp_path / "lightning_logs" / "version_0" / "checkpoints").glob("*.ckpt")
    main([*words, "--trainer.max_steps=3", f"--ckpt_path={checkpoint}"])
    with open(tmp_path / "lightning_logs" / "version_1" / "metrics.csv") as handle:
        losses = [float(row["train/loss"]) for row in csv.DictReader(handle) if row["train/loss"]]
    assert losses == pytest.approx(RECORDED_LOSSES["v3"][2:], abs=1e-6, rel=0)
    history = json.loads((tmp_path / "backbone" / "pretrain_metrics.json").read_text())["history"]
    assert [record["step"] for record in history] == [2]  # kept across the resume; step 3 ran no evaluation


def test_zero_shot_pair_accuracies_by_hand():
    # scores [4, n]: rows (prompt, perfect), (prompt, perturbed), (perturbed prompt, perfect), (perturbed prompt,
    # perturbed). Pair 0 is right both ways, pair 1 only forward, pair 2 (a tie forward) only reversed.
    scores = torch.tensor([[2.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 2.0, 1.0]])
    accuracies = pair_accuracies(scores, num_broken=torch.tensor([1, 2, 3]))
    assert accuracies["acc"].tolist() == [True, True, False] and accuracies["acc_rev"].tolist() == [True, False, True]
    assert accuracies["acc_1"].tolist() == [True] and accuracies["acc_23"].tolist() == [True, False]
    assert accuracies["acc_both"].float().mean() == pytest.approx(4 / 6)
    prompt = "An image of a red star and a blue circle. The red star is left of the blue circle. There is sky."
    assert relation_sentence_count(prompt) == 1


def test_patch_positions_follow_the_processor_order():
    grid_thw = torch.tensor([[1, 8, 8], [1, 4, 6]])
    rows, cols = patch_grid_positions(grid_thw, merge_size=2)
    assert torch.equal(torch.stack([rows, cols], dim=-1), get_vision_position_ids(grid_thw, 2))
