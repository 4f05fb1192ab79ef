"""The stages' command lines report a failure as one line naming what went wrong (shared.cli): the traceback only
with --verbose or SPATIALSCORE_TRACEBACK=1, and `rl_policy fit` without its reward checkpoint names the checkpoint
and the command that makes it (jsonargparse used to drop the failed reward and report a missing argument)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rl_policy.__main__ import main as rl_main
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


def test_rl_fit_without_the_reward_checkpoint_names_it_and_its_command(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    missing = tmp_path / "reward" / "export"
    overlay = tmp_path / "reward.yaml"
    overlay.write_text(
        f"model:\n  reward:\n    class_path: reward_model.SpatialScorer\n"
        f"    init_args:\n      checkpoint_dir: {missing}\n"
    )
    argv = [
        "fit",
        "--config",
        str(REPO / "configs/rl/tiny.yaml"),
        "--config",
        str(overlay),
        f"--trainer.default_root_dir={tmp_path / 'run'}",
        "--trainer.callbacks=[]",
    ]
    assert rl_main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert f"reward checkpoint dir {missing} does not exist" in err[0]
    assert "make train-reward" in err[0] and "missing 1 required positional argument" not in err[0]
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    with pytest.raises(ValueError) as raised:
        rl_main(argv)
    assert isinstance(raised.value.__cause__, FileNotFoundError)


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
