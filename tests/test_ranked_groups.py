"""Ranked pairs from drawn groups: a hand-made draw dir (exact renders: the perfect scene, the perturbed one, the
perfect one with an object left out, a corrupt file) gives exactly the oracle's strict orders, the relations broken
between the two samples, splits by prompt, the same bytes twice, and one clear error for bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from data_synthesis.__main__ import main
from data_synthesis.build import BuildConfig, BuildError, build, png_bytes
from data_synthesis.oracle_review import ImageReading, pair_graph, read_image
from data_synthesis.ranked_groups import RankedGroupsConfig, build_ranked_groups, ordered_pairs
from data_synthesis.relations import Truth
from data_synthesis.render import render
from data_synthesis.scene import Scene
from data_synthesis.verify import load_pairs

H, B, M = Truth.HOLDS, Truth.BROKEN, Truth.MISSING


def test_ordered_pairs_keeps_strict_orders_only_and_at_most_the_limit():
    best, middle, worst = ImageReading((H, H), True), ImageReading((H, B), True), ImageReading((M, M), False)
    readings = [middle, best, worst, None, ImageReading((H, B), True)]
    every = ordered_pairs(readings, 100, seed=0, group=0)
    # best over both middles and worst; each middle over worst; equal middles and the unreadable one: no order
    assert every == [(0, 2), (1, 0), (1, 2), (1, 4), (4, 2)]
    two = ordered_pairs(readings, 2, seed=0, group=0)
    assert len(two) == 2 and set(two) <= set(every)
    assert two == ordered_pairs(readings, 2, seed=0, group=0)
    assert {tuple(ordered_pairs(readings, 2, seed=s, group=0)) for s in range(8)} != {tuple(two)}  # the seed chooses
    assert ordered_pairs([middle, ImageReading((H, B), True)], 6, seed=0, group=0) == []


def _render(row: dict, column: str, omit: tuple[str, ...] = ()):
    return render(Scene.from_json(row[column]), 64, jitter=8, seed=int(row["render_seed"]), omit=omit)


@pytest.fixture(scope="module")
def draw(tmp_path_factory):
    """A source dataset and a draw dir in `rl_policy draw`'s layout: group 0 holds (perfect, perturbed, object left
    out, corrupt file) of one pair, group 1 the perfect render of another pair twice."""
    root = tmp_path_factory.mktemp("ranked_groups")
    source = root / "source"
    build(BuildConfig(num_pairs=16, seed=3, min_objects=2, max_objects=2, max_broken=1), source, progress=False)
    _, frame = load_pairs(source)
    rows = []
    for row in frame.to_dict("records"):
        graph = pair_graph(row)
        perfect, perturbed = (
            read_image(_render(row, c), graph.relations, graph.colours) for c in ("perfect_scene", "perturbed_scene")
        )
        if perfect.all_found and perturbed.all_found and perfect.confirmed > perturbed.confirmed:
            rows.append(row)
    first, second = rows[:2]
    draw_dir = root / "draw"
    (draw_dir / "images").mkdir(parents=True)
    missing = next(
        image
        for colour in pair_graph(first).colours
        if not read_image(image := _render(first, "perfect_scene", (colour,)), [], [colour]).all_found
    )
    images = {
        (0, 0): png_bytes(_render(first, "perfect_scene")),
        (0, 1): png_bytes(_render(first, "perturbed_scene")),
        (0, 2): png_bytes(missing),
        (0, 3): b"not a png",
        (1, 0): png_bytes(_render(second, "perfect_scene")),
        (1, 1): png_bytes(_render(second, "perfect_scene")),
    }
    samples = []
    for (group, sample), data in images.items():
        name = f"images/g{group:04d}_s{sample:02d}.png"
        (draw_dir / name).write_bytes(data)
        row = (first, second)[group]
        samples.append(
            {"group": group, "sample": sample, "pair_id": row["pair_id"], "prompt": row["prompt"], "image": name}
        )
    pd.DataFrame(samples).to_parquet(draw_dir / "samples.parquet", index=False)
    arguments = {"pipeline": "tiny", "split": "train", "num_steps": 6, "noise_level": 0.8, "per_prompt": 4}
    (draw_dir / "draw_args.json").write_text(json.dumps(arguments))
    return source, draw_dir, first


def test_ranked_groups_orders_each_group_and_writes_a_dataset(draw, tmp_path):
    source, draw_dir, first = draw
    counts = build_ranked_groups(draw_dir, source, tmp_path / "ranked", RankedGroupsConfig(pairs_per_group=6))
    assert counts["pairs"] == 3 and counts["groups"] == 2
    assert counts["skipped"] == {"image_unreadable": 1, "no_ordered_samples": 1}
    _, pairs = load_pairs(tmp_path / "ranked")
    assert (pairs["kind"] == "ranked").all() and (pairs["prompt"] == pairs["perturbed_prompt"]).all()
    assert (pairs["prompt"] == first["prompt"]).all() and pairs["split"].nunique() == 1
    by_id = {row["pair_id"].rsplit("-g0-", 1)[1]: row for row in pairs.to_dict("records")}
    assert set(by_id) == {"0-1", "0-2", "1-2"}  # perfect > perturbed > object left out
    assert json.loads(by_id["0-1"]["broken_relations"]) == json.loads(first["broken_relations"])
    assert by_id["0-1"]["sampler"] == "sde:6:0.8" and by_id["0-1"]["perfect_tries"] == 4
    copied = (tmp_path / "ranked" / by_id["0-1"]["perfect_image"]).read_bytes()
    assert copied == (draw_dir / "images/g0000_s00.png").read_bytes()
    # a second run with the same arguments keeps the finished dir; another out dir gets the same bytes
    assert build_ranked_groups(draw_dir, source, tmp_path / "ranked", RankedGroupsConfig(pairs_per_group=6)) == counts
    build_ranked_groups(draw_dir, source, tmp_path / "again", RankedGroupsConfig(pairs_per_group=6))
    assert (tmp_path / "again/pairs.parquet").read_bytes() == (tmp_path / "ranked/pairs.parquet").read_bytes()
    one = build_ranked_groups(draw_dir, source, tmp_path / "one", RankedGroupsConfig(pairs_per_group=1))
    assert one["pairs"] == 1
    arguments = ["ranked-groups", str(draw_dir), "--source-dir", str(source), "--out", str(tmp_path / "cli")]
    assert main([*arguments, "--pairs-per-group", "6"]) == 0
    assert (tmp_path / "cli/pairs.parquet").read_bytes() == (tmp_path / "ranked/pairs.parquet").read_bytes()


def test_ranked_groups_bad_input_gets_one_clear_error(draw, tmp_path, capsys):
    source, draw_dir, _ = draw
    config = RankedGroupsConfig()
    with pytest.raises(BuildError, match="samples.parquet is missing"):
        build_ranked_groups(tmp_path, source, tmp_path / "out", config)
    other = tmp_path / "other-source"
    build(BuildConfig(num_pairs=4, seed=99, min_objects=2, max_objects=2), other, progress=False)
    with pytest.raises(BuildError, match="wrong --source-dir"):
        build_ranked_groups(draw_dir, other, tmp_path / "out", config)
    build_ranked_groups(draw_dir, source, tmp_path / "out", config)
    with pytest.raises(BuildError, match="other arguments"):
        build_ranked_groups(draw_dir, source, tmp_path / "out", RankedGroupsConfig(pairs_per_group=2))
    with pytest.raises(BuildError, match="pairs-per-group"):
        RankedGroupsConfig(pairs_per_group=0)
    code = main(
        [
            "ranked-groups",
            str(draw_dir),
            "--source-dir",
            str(source),
            "--out",
            str(tmp_path / "cli"),
            "--split-fractions",
            "0.5",
            "0.5",
            "0.5",
        ]
    )
    assert code == 2 and "--split-fractions" in capsys.readouterr().err
