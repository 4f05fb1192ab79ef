"""The stages' command lines report a failure as one line naming what went wrong (shared.cli): the traceback only
with --verbose or SPATIALSCORE_TRACEBACK=1 (said in every --help), a likely bug with its type name, and `rl_policy
fit` without its reward checkpoint names the option, the checkpoint, the command that makes it and the oracle reward
(jsonargparse used to drop the failed reward and report a missing argument)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import rl_policy.__main__ as rl_cli
from reward_model.__main__ import main as reward_main
from rl_policy.__main__ import main as rl_main
from shared.chat import ChatError
from shared.cli import TRACEBACK_ENV, error_message, run_command, wants_traceback

REPO = Path(__file__).resolve().parents[1]


def test_wants_traceback_reads_the_flag_and_the_environment(monkeypatch):
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    assert wants_traceback(["fit", "--verbose", "--config", "x"]) == (["fit", "--config", "x"], True)
    assert wants_traceback(["fit"]) == (["fit"], False)
    for value, expected in (("1", True), ("yes", True), ("0", False), ("false", False), ("", False)):
        monkeypatch.setenv(TRACEBACK_ENV, value)
        assert wants_traceback(["fit"]) == (["fit"], expected)


def test_error_message_gives_way_to_a_cause_it_only_repeats():
    cause = FileNotFoundError("reward checkpoint dir x does not exist")
    try:
        raise ValueError(f"Invalid subclass spec given as value for type Any: {cause}") from cause
    except ValueError as wrapper:
        assert error_message(wrapper) == "reward checkpoint dir x does not exist"
    unrelated = ValueError("bad --steps")
    unrelated.__cause__ = OSError("disk full")
    assert error_message(unrelated) == "bad --steps"
    assert error_message(KeyError("real_world/27")) == "KeyError: 'real_world/27'"
    assert error_message(RuntimeError()) == "RuntimeError"
    assert error_message(ValueError("two\n   lines")) == "two lines"


def test_error_message_keeps_the_type_of_what_is_not_a_user_error():
    """ValueError, OSError and the repository's own exceptions are what user errors are raised as; anything else is
    most likely a bug and must not read like a user's mistake."""
    assert error_message(FileNotFoundError("x.png does not exist")) == "x.png does not exist"
    assert error_message(ChatError("the chat server at :8000 does not answer")) == (
        "the chat server at :8000 does not answer"
    )
    assert error_message(AssertionError("rows out of order")) == "AssertionError: rows out of order"
    assert error_message(AttributeError("'NoneType' object has no attribute 'shape'")) == (
        "AttributeError: 'NoneType' object has no attribute 'shape'"
    )
    assert error_message(TypeError("f() missing 1 required positional argument: 'reward'")) == (
        "TypeError: f() missing 1 required positional argument: 'reward'"
    )


def test_run_command_prints_one_line_and_exits_1(capsys, monkeypatch):
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)

    def failing(argv):
        raise FileNotFoundError(f"{argv[0]} does not exist")

    assert run_command("prog", failing, ["data.csv"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == ["prog: error: data.csv does not exist (--verbose shows the traceback)"]
    with pytest.raises(FileNotFoundError, match="data.csv"):
        run_command("prog", failing, ["data.csv", "--verbose"])
    assert run_command("prog", lambda argv: None, []) == 0
    assert run_command("prog", lambda argv: 3, []) == 3


def fit_argv(tmp_path: Path, reward_args: list[str]) -> list[str]:
    """`fit` of configs/rl/tiny.yaml with its outputs under tmp_path and `reward_args` appended."""
    return [
        "fit",
        "--config",
        str(REPO / "configs/rl/tiny.yaml"),
        f"--trainer.default_root_dir={tmp_path / 'run'}",
        "--trainer.callbacks=[]",
        *reward_args,
    ]


def scorer_spec(checkpoint_dir: Path) -> str:
    """`model.reward` as the Makefile's RL_CRITIC_ARGS passes it: the whole SpatialScorer spec as JSON."""
    return json.dumps(
        {"class_path": "reward_model.SpatialScorer", "init_args": {"checkpoint_dir": str(checkpoint_dir)}}
    )


@pytest.mark.parametrize("given_as", ["yaml overlay", "json on the command line"])
def test_rl_fit_without_the_reward_checkpoint_names_it_and_its_command(given_as, tmp_path, capfd, monkeypatch):
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    missing = tmp_path / "reward" / "export"
    if given_as == "yaml overlay":
        overlay = tmp_path / "reward.yaml"
        overlay.write_text(
            f"model:\n  reward:\n    class_path: reward_model.SpatialScorer\n"
            f"    init_args:\n      checkpoint_dir: {missing}\n"
        )
        reward_args = ["--config", str(overlay)]
    else:
        reward_args = ["--model.reward", scorer_spec(missing)]
    argv = fit_argv(tmp_path, reward_args)
    assert rl_main(argv) == 1
    captured = capfd.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1, captured.err  # checked as soon as the config is parsed: not even "Seed set to 0" before
    assert err[0].startswith(f"python -m rl_policy: error: model.reward: the reward checkpoint dir {missing} does not")
    assert "`make train-reward`" in err[0] and "`make train-rl REWARD=oracle`" in err[0]
    assert "configs/rl/reward_oracle.yaml" in err[0] and "Traceback" not in captured.err
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    with pytest.raises(FileNotFoundError, match="make train-reward"):
        rl_main(argv)


def test_rl_fit_checks_a_scorer_eval_reward_too(tmp_path, capfd, monkeypatch):
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    argv = fit_argv(
        tmp_path,
        ["--config", str(REPO / "configs/rl/reward_oracle.yaml"), "--model.eval_reward", scorer_spec(tmp_path / "x")],
    )
    assert rl_main(argv) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"model.eval_reward: the reward checkpoint dir {tmp_path / 'x'} does not exist" in err[0]


def test_python_m_rl_policy_fit_ends_with_one_clear_line_and_no_traceback(tmp_path):
    """The real entry point (`python -m rl_policy`, sys.exit of main's status). Libraries may log while importing
    (e.g. a missing optional package); the last line is the error and no traceback is printed."""
    missing = tmp_path / "export"
    environment = {key: value for key, value in os.environ.items() if key != TRACEBACK_ENV} | {"OMP_NUM_THREADS": "1"}
    process = subprocess.run(
        [sys.executable, "-m", "rl_policy", *fit_argv(tmp_path, ["--model.reward", scorer_spec(missing)])],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 1, process.stderr
    assert "Traceback" not in process.stderr and "Seed set" not in process.stderr
    assert (
        process.stderr.strip()
        .splitlines()[-1]
        .startswith(f"python -m rl_policy: error: model.reward: the reward checkpoint dir {missing} does not exist")
    )


def test_a_bug_in_a_subcommand_exits_1_with_its_type_and_message(monkeypatch, capfd):
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)

    def buggy(argv):
        return None.shape

    monkeypatch.setitem(rl_cli.COMMANDS, "pretrain", buggy)
    assert rl_main(["pretrain", "--data", "x"]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert err == [
        "python -m rl_policy: error: AttributeError: 'NoneType' object has no attribute 'shape' "
        "(--verbose shows the traceback)"
    ]
    with pytest.raises(AttributeError):
        rl_main(["pretrain", "--data", "x", "--verbose"])


@pytest.mark.parametrize(
    ("main", "argv"),
    [
        (rl_main, ["--help"]),
        (rl_main, ["fit", "--help"]),
        (rl_main, ["pretrain", "--help"]),
        (rl_main, ["sample", "--help"]),
        (rl_main, ["draw", "--help"]),
        (reward_main, ["--help"]),
        (reward_main, ["fit", "--help"]),
        (reward_main, ["score", "--help"]),
        (reward_main, ["export", "--help"]),
        (reward_main, ["pretrain", "--help"]),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else value.__module__.split(".")[0],
)
def test_every_help_names_the_traceback_switches(main, argv, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"--verbose anywhere on the command line, or {TRACEBACK_ENV}=1 in the environment" in text


def test_rl_fit_names_an_unsupported_command_line_override_of_the_reward(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    argv = [
        "fit",
        "--config",
        str(REPO / "configs/rl/tiny.yaml"),
        "--config",
        str(REPO / "configs/rl/reward_oracle.yaml"),
        "--model.reward.init_args.graded=true",
        "--model.policy.pipeline=tiny-random",
        f"--trainer.default_root_dir={tmp_path / 'run'}",
        "--trainer.callbacks=[]",
    ]
    assert rl_main(argv) == 1
    err = capsys.readouterr().err
    assert "model.reward: command-line overrides of its init_args are not supported" in err
