"""`python -m rl_policy draw`: groups of the rollouts' SDE samples of held-out prompts with the oracle's labels
(the agreement set reward_model scores); deterministic, resumable, and strict about its arguments."""

from __future__ import annotations

import hashlib
import json
import shutil

import pandas as pd
import pytest
from PIL import Image

from data_synthesis import SpatialWorldOracle
from rl_policy.__main__ import main
from rl_policy.data import load_prompts
from rl_policy.draw import FINGERPRINT_SPAN, weights_fingerprint
from rl_policy.policy import build_tiny_flux_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("draw")
    build_tiny_flux_pipeline(max_prompt_tokens=96, seed=0).save_pretrained(root / "pipeline")
    return root / "pipeline"


def digests(out):
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted((out / "images").iterdir())}


def test_draw_labels_every_sample_with_the_oracle_and_resumes(pipeline_dir, small_dataset, tmp_path, capsys):
    out = tmp_path / "agreement"
    argv = ["draw", "--pipeline", str(pipeline_dir), "--data", str(small_dataset), "--prompts", "2"]
    argv += ["--per-prompt", "3", "--steps", "2", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    frame = pd.read_parquet(out / "samples.parquet")
    records = load_prompts(small_dataset, "test")[:2]
    assert list(frame["group"]) == [0, 0, 0, 1, 1, 1] and list(frame["sample"]) == [0, 1, 2] * 2
    assert list(frame["prompt"]) == [records[0].prompt] * 3 + [records[1].prompt] * 3
    oracle = SpatialWorldOracle()
    for row in frame.itertuples():
        with Image.open(out / row.image) as image:
            verdict = oracle.judge(image.convert("RGB"), records[row.group].metadata)
        assert (row.relation_accuracy, row.all_found) == (verdict.accuracy, verdict.all_found)
        assert row.num_relations == len(records[row.group].metadata["relations"])
        assert (list(row.relations_confirmed), list(row.relation_kinds)) == (
            list(verdict.confirmed),
            list(verdict.kinds),
        )
    first = digests(out)
    assert len(first) == 6 and len(set(first.values())) == 6  # every sample its own noise

    # an interrupted run (group 1's labels never written) resumes to the same bytes; group 0 is not redrawn
    (out / "groups" / "g0001.json").unlink()
    for name in ("g0001_s00.png", "g0001_s01.png"):
        (out / "images" / name).unlink()
    before = (out / "images" / "g0000_s00.png").stat().st_mtime_ns
    assert main(argv) == 0
    assert digests(out) == first and (out / "images" / "g0000_s00.png").stat().st_mtime_ns == before
    pd.testing.assert_frame_equal(pd.read_parquet(out / "samples.parquet"), frame)

    # only the number of prompts may change: the groups do not depend on it (a smaller set writes the first group's
    # table; the larger one again draws nothing already drawn)
    fewer = [*argv]
    fewer[fewer.index("--prompts") + 1] = "1"
    assert main(fewer) == 0
    assert list(pd.read_parquet(out / "samples.parquet")["group"]) == [0, 0, 0]
    assert json.loads((out / "draw_args.json").read_text())["prompts"] == 1
    assert main(argv) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "samples.parquet"), frame)
    assert digests(out) == first and (out / "images" / "g0000_s00.png").stat().st_mtime_ns == before

    capsys.readouterr()
    assert main([*argv[:-2], "--seed", "1", "--out", str(out)]) == 1
    assert "drawn with other arguments (seed)" in capsys.readouterr().err
    assert json.loads((out / "draw_args.json").read_text())["seed"] == 0


def test_draw_refuses_a_dir_that_is_not_a_pipeline(small_dataset, tmp_path, capsys):
    argv = ["draw", "--pipeline", str(tmp_path), "--data", str(small_dataset), "--out", str(tmp_path / "o")]
    assert main(argv) == 1
    assert "is not a diffusers pipeline dir" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_draw_refuses_to_resume_from_other_weights_at_the_same_path(small_dataset, tmp_path, capsys):
    """A retrained generator saved where the old one was: its samples would be mixed with the old one's."""
    pipeline = tmp_path / "pipeline"
    build_tiny_flux_pipeline(max_prompt_tokens=96, seed=0).save_pretrained(pipeline)
    out = tmp_path / "agreement"
    argv = ["draw", "--pipeline", str(pipeline), "--data", str(small_dataset), "--prompts", "1"]
    argv += ["--per-prompt", "2", "--steps", "2", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    recorded = json.loads((out / "draw_args.json").read_text())["weights_fingerprint"]
    assert recorded == weights_fingerprint(pipeline, None)

    # the same weights copied elsewhere (new modification times) have the same fingerprint
    copy = tmp_path / "copy"
    shutil.copytree(pipeline, copy, copy_function=shutil.copy)
    assert weights_fingerprint(copy) == recorded

    build_tiny_flux_pipeline(max_prompt_tokens=96, seed=1).save_pretrained(pipeline)  # retrained, same path
    assert weights_fingerprint(pipeline) != recorded
    capsys.readouterr()
    assert main(argv) == 1
    assert "drawn from other weights" in capsys.readouterr().err
    assert json.loads((out / "draw_args.json").read_text())["weights_fingerprint"] == recorded

    # a draw from before fingerprints were recorded is not trusted either
    arguments = json.loads((out / "draw_args.json").read_text())
    del arguments["weights_fingerprint"]
    (out / "draw_args.json").write_text(json.dumps(arguments))
    assert main(argv) == 1
    assert "weights it did not record" in capsys.readouterr().err


def test_weights_fingerprint_reads_both_ends_of_a_large_file(tmp_path):
    """Weights changed only past the first MiB (a later tensor) change the fingerprint; other files do not count."""
    data = bytearray(3 * FINGERPRINT_SPAN)
    (tmp_path / "model.safetensors").write_bytes(bytes(data))
    first = weights_fingerprint(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert weights_fingerprint(tmp_path) == first
    data[-1] = 1
    (tmp_path / "model.safetensors").write_bytes(bytes(data))
    assert weights_fingerprint(tmp_path) != first
    assert weights_fingerprint(tmp_path, None) == weights_fingerprint(tmp_path)
