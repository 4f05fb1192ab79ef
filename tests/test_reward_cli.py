"""`python -m reward_model`: every shipped reward YAML parses; a 2-step `fit` from the tiny config on a small
SpatialWorld set ends with an export dir (metrics.json, reloadable to the trained network's scores); `export` from
the Lightning checkpoint gives the same scores; `score` prints JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from data_synthesis import load_pairs
from reward_model.__main__ import lightning_cli, main
from reward_model.agreement import auroc_by_relation, load_agreement_set
from reward_model.model import encode
from reward_model.scorer import SpatialScorer
from shared.agreement import top_bottom_agreement, within_group_spearman
from tests.test_reward_configs import launch_configs

REPO = Path(__file__).resolve().parents[1]
REWARD_CONFIGS = sorted((REPO / "configs" / "reward").glob("*.yaml"))
METRIC_KEYS = {
    "pairwise_accuracy",
    "pairwise_accuracy_by_broken",
    "pairwise_accuracy_reversed",
    "ece",
    "train_seconds",
    "num_test_pairs",
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def agreement_set(small_dataset, tmp_path_factory):
    """3 groups x 4 samples (the first 3 test prompts, each with 2 perfect and 2 perturbed images of test rows), with
    oracle labels set by hand; group 2's relation accuracy is constant (skipped), its all_found is not."""
    _, frame = load_pairs(small_dataset)
    rows = frame[frame["split"] == "test"].head(3).reset_index(drop=True)
    directory = tmp_path_factory.mktemp("agreement")
    records = []
    for group, row in rows.iterrows():
        images = [row["perfect_image"], row["perturbed_image"]] * 2
        accuracy = [[1.0, 0.0, 0.5, 0.0], [0.0, 1.0, 1.0, 0.5], [0.5, 0.5, 0.5, 0.5]][group]
        found = [[True, False, True, True], [True, True, False, False], [True, False, False, True]][group]
        for sample, image in enumerate(images):
            name = f"images/g{group}_s{sample}.png"
            (directory / "images").mkdir(exist_ok=True)
            (directory / name).write_bytes((small_dataset / image).read_bytes())
            records.append(
                {
                    "group": group,
                    "sample": sample,
                    "prompt": row["prompt"],
                    "image": name,
                    "relation_accuracy": accuracy[sample],
                    "all_found": found[sample],
                    # two stated relations, as many confirmed as the accuracy says
                    "relations_confirmed": {1.0: [True, True], 0.5: [True, False], 0.0: [False, False]}[
                        accuracy[sample]
                    ],
                    "relation_kinds": ["left_of", "behind"],
                }
            )
    pd.DataFrame(records).to_parquet(directory / "samples.parquet")
    return directory


@pytest.fixture(scope="module")
def fitted(small_dataset, agreement_set, tmp_path_factory):
    """`fit` of configs/reward/tiny.yaml for 2 steps on the small dataset -> (cli, run dir, test prompts, paths)."""
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    cli = lightning_cli(
        [
            "fit",
            "--config",
            str(REPO / "configs/reward/tiny.yaml"),
            f"--data.dataset_dir={small_dataset}",
            f"--trainer.default_root_dir={run_dir}",
            "--trainer.max_steps=2",
            "--trainer.val_check_interval=2",
            "--trainer.limit_val_batches=1",
            "--data.batch_size=2",
            f"--export.agreement_set={agreement_set}",
            "--export.agreement_top_k=2",
        ]
    )
    _, frame = load_pairs(small_dataset)
    rows = frame[frame["split"] == "test"].head(3)
    paths = [str(small_dataset / path) for path in rows["perfect_image"]]
    return cli, run_dir, list(rows["prompt"]), paths


def test_reward_configs_exist_and_start_with_their_launch_command():
    assert REWARD_CONFIGS, "no configs/reward/*.yaml"
    for path in REWARD_CONFIGS:
        assert path.read_text().startswith("# python -m reward_model "), path


@pytest.mark.parametrize("path", REWARD_CONFIGS, ids=lambda path: path.name)
def test_every_reward_yaml_parses(path, capsys):
    """Each config with the configs its launch command (first line) puts before it: an overlay such as
    tiny_ranked.yaml parses on top of tiny.yaml."""
    command = "pretrain" if path.read_text().startswith("# python -m reward_model pretrain ") else "fit"
    arguments = [part for config in launch_configs(path) for part in ("--config", str(config))]
    with pytest.raises(SystemExit) as exited:  # stage A's phases are `pretrain` configs, the others `fit` configs
        main([command, *arguments, "--print_config"])
    assert exited.value.code == 0
    assert "class_path: reward_model." in capsys.readouterr().out


def test_fit_exports_a_reloadable_checkpoint_with_metrics(fitted):
    cli, run_dir, prompts, paths = fitted
    assert cli.trainer.global_step == 2
    export = run_dir / "export"
    metrics = json.loads((export / "metrics.json").read_text())
    assert set(metrics) >= METRIC_KEYS
    _, frame = load_pairs(Path(cli.datamodule.dataset_dir))
    assert metrics["num_test_pairs"] == (frame["split"] == "test").sum()
    assert set(metrics["pairwise_accuracy_by_broken"]) == {"1", "2", "3", "2-3"}
    for key in ("pairwise_accuracy", "pairwise_accuracy_reversed", "ece"):
        assert 0 <= metrics[key] <= 1, key
    assert metrics["train_seconds"] > 0
    config = json.loads((export / "config.json").read_text())
    network = config["training_config"]["model"]["network"]
    assert network["class_path"] == "reward_model.recipes.build_pretrained_tiny_spatialscore"

    reloaded = SpatialScorer.from_pretrained(export)
    expected = SpatialScorer.from_network(cli.model.network).score(prompts=prompts, images=paths)
    torch.testing.assert_close(reloaded.score(prompts=prompts, images=paths), expected, atol=1e-6, rtol=0)


def test_export_from_the_lightning_checkpoint_matches(fitted, tmp_path, capsys):
    _, run_dir, prompts, paths = fitted
    (ckpt,) = run_dir.glob("**/checkpoints/*.ckpt")
    main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "from_ckpt")])
    assert json.loads(capsys.readouterr().out)["exported"] == str(tmp_path / "from_ckpt")
    from_ckpt = SpatialScorer.from_pretrained(tmp_path / "from_ckpt").score(prompts=prompts, images=paths)
    from_fit = SpatialScorer.from_pretrained(run_dir / "export").score(prompts=prompts, images=paths)
    torch.testing.assert_close(from_ckpt, from_fit, atol=1e-6, rtol=0)
    capsys.readouterr()
    assert main(["export", "--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"Lightning checkpoint {tmp_path / 'missing.ckpt'} does not exist" in err[0]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["export", "--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "x"), "--verbose"])


def test_score_prints_json(fitted, capsys):
    _, run_dir, prompts, paths = fitted
    main(["score", "--checkpoint", str(run_dir / "export"), "--prompt", prompts[0], *paths[:2]])
    printed = json.loads(capsys.readouterr().out)
    assert printed["prompt"] == prompts[0]
    assert [row["image"] for row in printed["scores"]] == paths[:2]
    assert all(isinstance(row["mean"], float) and row["std"] > 0 for row in printed["scores"])


def test_score_warns_about_a_prompt_beyond_the_text_budget_and_says_what_was_cut(fitted, capfd):
    """A 5,000-word prompt, one token per word (the tiny model's word-level tokenizer). The tiny backbone has 4,096
    positions; the chat template and the image take `overhead` of them (the encoded empty prompt), so the first
    4,096 - overhead words are scored and the other 5,000 - (4,096 - overhead) are cut, tokens and words alike."""
    _, run_dir, prompts, paths = fitted
    long_prompt = " ".join(["a red disc left of a blue square"] * 625)
    scorer = SpatialScorer.from_pretrained(run_dir / "export")
    image = Image.open(paths[0]).convert("RGB")
    overhead = encode(scorer.network.processor, [""], [image], system_prompt=scorer.system_prompt)["input_ids"].shape[1]
    budget = 4_096 - overhead
    assert main(["score", "--checkpoint", str(run_dir / "export"), "--prompt", long_prompt, paths[0]]) == 0
    captured = capfd.readouterr()
    warning = [line for line in captured.err.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1, captured.err
    assert warning[0].startswith(
        f"warning: the prompt has 5000 tokens (5000 words) and this model reads {budget} "
        f"(4096 positions less {overhead} for the template and image); "
        f"scored without its last {5_000 - budget} tokens ({5_000 - budget} words): "
    )
    printed = json.loads(captured.out)
    scored = printed["prompt_scored"]
    assert long_prompt.startswith(scored) and len(scored.split()) == budget
    expected, _ = scorer.score(prompts=[scored], images=[paths[0]])
    assert printed["scores"][0]["mean"] == pytest.approx(expected.item(), abs=1e-6)
    main(["score", "--checkpoint", str(run_dir / "export"), "--prompt", prompts[0], paths[0]])
    assert "warning" not in capfd.readouterr().err


def test_score_checks_the_images_before_loading_the_model(tmp_path, capsys, small_dataset):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    _, frame = load_pairs(small_dataset)
    good = str(small_dataset / frame["perfect_image"].iloc[0])
    argv = ["score", "--checkpoint", str(tmp_path / "no_such_export"), "--prompt", "a red disc"]
    assert main([*argv, good, str(corrupt), str(tmp_path / "gone.png")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "2 of 3 images cannot be scored" in err[0]
    assert f"{corrupt} is not a readable image" in err[0] and f"{tmp_path / 'gone.png'} does not exist" in err[0]
    assert "reward checkpoint dir" not in err[0]  # the model (missing here) was never loaded
    assert main([*argv, good]) == 1
    assert "make train-reward" in capsys.readouterr().err


def test_fit_reports_critic_oracle_agreement_on_the_agreement_set(fitted, agreement_set):
    """metrics.json holds the agreement of the trained critic (the exported one scores identically) with the hand
    labels, grouped as the set says: group 2's constant relation accuracy skipped, every all_found group used."""
    _, run_dir, _, _ = fitted
    metrics = json.loads((run_dir / "export" / "metrics.json").read_text())
    frame = load_agreement_set(agreement_set)
    mean, _ = SpatialScorer.from_pretrained(run_dir / "export").score(
        prompts=list(frame["prompt"]), images=list(frame["image"])
    )
    scores = mean.view(3, 4)
    accuracy = torch.tensor(frame["relation_accuracy"].to_numpy()).view(3, 4)
    found = torch.tensor(frame["all_found"].to_numpy(dtype="float64")).view(3, 4)
    assert metrics["agreement_spearman"] == pytest.approx(within_group_spearman(scores, accuracy).value, abs=1e-5)
    assert metrics["agreement_spearman_found"] == pytest.approx(within_group_spearman(scores, found).value, abs=1e-5)
    assert metrics["agreement_top2_bottom2"] == pytest.approx(top_bottom_agreement(scores, accuracy, 2).value)
    assert (metrics["agreement_groups_used"], metrics["agreement_groups_skipped"]) == (2, 1)
    assert (metrics["agreement_found_groups_used"], metrics["agreement_found_groups_skipped"]) == (3, 0)
    assert (metrics["agreement_prompts"], metrics["agreement_samples_per_prompt"]) == (3, 4)
    auroc, used = auroc_by_relation(frame, scores.cpu())
    assert metrics["agreement_auroc_relations_by_relation"] == used and used  # some (group, relation) both ways
    assert metrics["agreement_auroc_by_relation"] == pytest.approx(auroc)
    assert metrics["pairwise_accuracy_by_kind"].keys() == {"render"} and "generated_pairwise_accuracy" not in metrics


def test_a_bad_agreement_set_is_one_clear_error(agreement_set, tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m rl_policy draw"):
        load_agreement_set(tmp_path)
    frame = pd.read_parquet(agreement_set / "samples.parquet")
    frame.iloc[:-1].to_parquet(tmp_path / "samples.parquet")
    with pytest.raises(ValueError, match="same number"):
        load_agreement_set(tmp_path)
    frame.drop(columns="all_found").to_parquet(tmp_path / "samples.parquet")
    with pytest.raises(ValueError, match="all_found"):
        load_agreement_set(tmp_path)
    frame.to_parquet(tmp_path / "samples.parquet")
    with pytest.raises(FileNotFoundError, match="12 image files are missing"):
        load_agreement_set(tmp_path)
