"""The dataset builder end to end: format, determinism, resume after a kill, verify, show, CLI errors."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from data_synthesis.__main__ import main
from data_synthesis.build import COLUMNS, BuildConfig, BuildError, build
from data_synthesis.relations import Relation
from data_synthesis.scene import Scene
from data_synthesis.verify import verify

REPO = Path(__file__).resolve().parents[1]


def digest_tree(root: Path) -> dict[str, str]:
    """sha256 of every file except the timing log."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "build_log.json"
    }


def test_dataset_dir_format(small_dataset):
    meta = json.loads((small_dataset / "meta.json").read_text())
    frame = pd.read_parquet(small_dataset / "pairs.parquet")
    assert list(frame.columns) == list(COLUMNS)
    assert len(frame) == 60 == meta["counts"]["pairs"] and frame["pair_id"].is_unique
    assert sum(meta["counts"]["by_split"].values()) == 60
    assert "seconds" not in json.dumps(meta)  # timings live in build_log.json only
    assert "seconds" in json.loads((small_dataset / "build_log.json").read_text())
    # splits are disjoint by prompt
    splits_of_prompt = frame.groupby("prompt")["split"].nunique()
    assert (splits_of_prompt == 1).all()
    for row in frame.head(10).itertuples():
        stated = [Relation.from_dict(r) for r in json.loads(row.stated_relations)]
        broken = json.loads(row.broken_relations)
        assert len(broken) == row.num_broken and len(stated) == row.num_relations
        Scene.from_json(row.perfect_scene)
        with Image.open(small_dataset / row.perfect_image) as image:
            assert image.size == (128, 128) and image.mode == "RGB"
    referenced = set(frame["perfect_image"]) | set(frame["perturbed_image"])
    on_disk = {p.relative_to(small_dataset).as_posix() for p in small_dataset.glob("images/*/*.png")}
    assert on_disk == referenced


def test_same_arguments_give_identical_bytes_whatever_the_workers(tmp_path):
    config = BuildConfig(num_pairs=40, seed=11, resolution=64, max_objects=5)
    build(config, tmp_path / "one", workers=1, progress=False)
    build(config, tmp_path / "two", workers=2, progress=False)
    assert digest_tree(tmp_path / "one") == digest_tree(tmp_path / "two")
    before = digest_tree(tmp_path / "one")
    result = build(config, tmp_path / "one", workers=2, progress=False)  # a rerun changes nothing
    assert result.seconds == 0.0 and digest_tree(tmp_path / "one") == before


def test_a_killed_build_resumes_to_the_same_dataset(tmp_path):
    args = ["--num-pairs", "150", "--seed", "4", "--resolution", "64", "--max-objects", "5", "--quiet"]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    build(BuildConfig(num_pairs=150, seed=4, resolution=64, max_objects=5), reference, workers=2, progress=False)
    command = [sys.executable, "-m", "data_synthesis", "build", "--out", str(killed), "--workers", "1", *args]
    process = subprocess.Popen(command, cwd=REPO, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and sum(1 for _ in killed.glob("images/*/*.png")) < 40:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "pairs.parquet").exists()  # it really was interrupted
    assert any(killed.glob("images/*/*.png"))
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert digest_tree(killed) == digest_tree(reference)
    assert not list(killed.rglob("*.tmp"))


def test_verify_passes_on_a_clean_build_and_reads_the_relations(small_dataset):
    report = verify(small_dataset, workers=1, progress=False)
    assert report.passed, report.to_dict()
    assert report.perfect_all_hold >= 0.99 and report.perturbed_exact >= 0.99
    assert set(report.shortcut) >= {"overall", "by_family", "by_kind"}


def test_verify_catches_a_corrupt_png_and_a_deleted_file(small_dataset, tmp_path, capsys):
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", str(small_dataset), str(broken)], check=True)
    frame = pd.read_parquet(broken / "pairs.parquet")
    corrupt, deleted = frame["perfect_image"][3], frame["perturbed_image"][7]
    (broken / corrupt).write_bytes((broken / corrupt).read_bytes()[:200])
    (broken / deleted).unlink()
    report = verify(broken, workers=2, progress=False)
    assert not report.passed
    assert report.corrupt == [corrupt] and report.missing == [deleted]
    assert main(["verify", str(broken), "--quiet", "--workers", "1"]) == 1
    output = capsys.readouterr().out
    assert corrupt in output and deleted in output and "FAILED" in output


def test_show_writes_a_contact_sheet(small_dataset, tmp_path):
    out = tmp_path / "grid.png"
    assert main(["show", str(small_dataset), "--num", "6", "--out", str(out)]) == 0
    with Image.open(out) as sheet:
        assert sheet.width > 2 * 192 and sheet.height > 192


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min-objects", "1"], "at least 2"),
        (["--max-objects", "8", "--resolution", "64"], "too small for 8 objects"),
        (["--resolution", "32"], "--resolution must be in"),
        (["--colours", "red", "mauve"], "unknown colours"),
        (["--shapes", "blob"], "unknown shapes"),
        (["--max-broken", "4"], "--max-broken"),
        (["--split-fractions", "0.5", "0.2", "0.2"], "summing to 1"),
        (["--num-pairs", "0"], "--num-pairs"),
    ],
)
def test_cli_rejects_bad_arguments_before_any_work(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    base = ["build", "--out", str(out), "--num-pairs", "5", "--quiet"]
    assert main(base + args) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
    assert not out.exists()


def test_an_output_dir_with_another_dataset_is_refused_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "ds"
    build(BuildConfig(num_pairs=5, seed=1, resolution=64, max_objects=4), out, progress=False)
    before = digest_tree(out)
    with pytest.raises(BuildError, match="other arguments"):
        build(BuildConfig(num_pairs=6, seed=1, resolution=64, max_objects=4), out, progress=False)
    assert digest_tree(out) == before
    assert (
        main(
            [
                "build",
                "--out",
                str(out),
                "--num-pairs",
                "6",
                "--resolution",
                "64",
                "--max-objects",
                "4",
                "--seed",
                "1",
                "--quiet",
            ]
        )
        == 2
    )
    assert "num_pairs: 5 -> 6" in capsys.readouterr().err
    build(BuildConfig(num_pairs=6, seed=1, resolution=64, max_objects=4), out, overwrite=True, progress=False)
    assert len(pd.read_parquet(out / "pairs.parquet")) == 6
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(BuildError, match="files of another kind"):
        build(BuildConfig(num_pairs=5, resolution=64, max_objects=4), stranger, progress=False)


def test_verify_names_a_missing_dataset(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "nothing"), "--quiet"]) == 2
    assert "is not a directory" in capsys.readouterr().err
