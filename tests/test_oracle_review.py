"""The SpatialWorld oracle as reviewer `oracle`: hand-built pairs (exact Pillow renders, edited so each breaks one
clause of the accept rule) get exactly the expected decision and reason in the review store; export, the review
app's oracle-accepted list and agreement with a person work on those decisions; bad input gets one clear error."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pandas as pd
import pytest

from data_synthesis.__main__ import main
from data_synthesis.build import BuildConfig, build, png_bytes
from data_synthesis.oracle_review import (
    REASONS,
    ImageReading,
    oracle_review,
    pair_graph,
    prefers,
    read_image,
)
from data_synthesis.relations import Truth
from data_synthesis.render import render
from data_synthesis.review import ReviewError, ReviewStore, export_reviewed, load_review_pairs, pairwise_agreement
from data_synthesis.review.store import ORACLE_REVIEWER, perfect_side
from data_synthesis.scene import Scene
from data_synthesis.verify import load_pairs

H, B = Truth.HOLDS, Truth.BROKEN


def test_prefers_is_strict_and_needs_both_counts():
    """(confirmed, all found): (2, yes) > (1, yes) > (1, no); (2, no) vs (1, yes) disagree, so neither is preferred;
    equal readings are not ordered."""
    two_found, one_found = ImageReading((H, H), True), ImageReading((H, B), True)
    one_missing, two_missing = ImageReading((H, Truth.MISSING), False), ImageReading((H, H), False)
    assert prefers(two_found, one_found) and not prefers(one_found, two_found)
    assert prefers(one_found, one_missing) and not prefers(one_missing, one_found)
    assert not prefers(two_missing, one_found) and not prefers(one_found, two_missing)
    assert not prefers(one_found, ImageReading((B, H), True))


def _render(row: dict, column: str, omit: tuple[str, ...] = ()):
    return render(Scene.from_json(row[column]), 128, jitter=8, seed=int(row["render_seed"]), omit=omit)


def _omitting_one(row: dict, column: str):
    """The scene of `column` rendered without the first object whose absence the detector notices."""
    graph = pair_graph(row)
    for colour in graph.colours:
        image = _render(row, column, (colour,))
        if not read_image(image, graph.relations, graph.colours).all_found:
            return image
    raise AssertionError(f"no object of {row['pair_id']} can be left out visibly")


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """A dataset dir of hand-built pairs, one per outcome, and the oracle's review of it: (dir, expected reasons by
    pair id, result)."""
    source = tmp_path_factory.mktemp("oracle") / "source"
    build(BuildConfig(num_pairs=24, seed=5, min_objects=3, max_objects=3, max_broken=2), source, progress=False)
    meta, frame = load_pairs(source)
    rows = []
    for row in frame.to_dict("records"):
        graph = pair_graph(row)
        readings = [
            read_image(_render(row, c), graph.relations, graph.colours) for c in ("perfect_scene", "perturbed_scene")
        ]
        perturbed_ok = all((t is B) == (i in graph.broken) and t in (H, B) for i, t in enumerate(readings[1].truths))
        if all(t is H for t in readings[0].truths) and readings[0].all_found and readings[1].all_found and perturbed_ok:
            rows.append(row)  # the exact pair reads as recorded: a clean base for each edit
    two_broken = next(row for row in rows if row["num_broken"] == 2)
    one_broken = [row for row in rows if row["num_broken"] == 1]
    assert len(one_broken) >= 7

    out = source.parent / "pairs"
    (out / "images").mkdir(parents=True)
    cases, expected = [], {}

    def add(name, base, perfect, perturbed, reason, **changes):
        row = {**base, **changes, "pair_id": name, "perfect_image": f"images/{name}_a.png"}
        row["perturbed_image"] = f"images/{name}_b.png"
        (out / row["perfect_image"]).write_bytes(png_bytes(perfect))
        (out / row["perturbed_image"]).write_bytes(perturbed if isinstance(perturbed, bytes) else png_bytes(perturbed))
        cases.append(row)
        expected[name] = reason

    a, b, c, d, e, f, g = one_broken[:7]
    add("accepted", a, _render(a, "perfect_scene"), _render(a, "perturbed_scene"), None)
    add(
        "perfect-missing", b, _omitting_one(b, "perfect_scene"), _render(b, "perturbed_scene"), "perfect_object_missing"
    )
    add(
        "perturbed-missing",
        c,
        _render(c, "perfect_scene"),
        _omitting_one(c, "perturbed_scene"),
        "perturbed_object_missing",
    )
    add("perfect-fails", d, _render(d, "perturbed_scene"), _render(d, "perturbed_scene"), "perfect_relation_fails")
    add("not-broken", e, _render(e, "perfect_scene"), _render(e, "perfect_scene"), "perturbed_relation_not_broken")
    first_broken = json.loads(two_broken["broken_relations"])[:1]  # the image breaks two, the row records one
    add(
        "other-broken",
        two_broken,
        _render(two_broken, "perfect_scene"),
        _render(two_broken, "perturbed_scene"),
        "perturbed_kept_relation_fails",
        broken_relations=json.dumps(first_broken),
        num_broken=1,
    )
    add("unreadable", f, _render(f, "perfect_scene"), b"not a png", "image_unreadable")
    ranked = {"kind": "ranked", "perturbed_prompt": g["prompt"], "perturbed_scene": g["perfect_scene"]}
    full, missing = _render(g, "perfect_scene"), _omitting_one(g, "perfect_scene")
    add("ranked-accepted", g, full, missing, None, **ranked)
    add("ranked-swapped", g, missing, full, "not_strictly_preferred", **ranked)
    pd.DataFrame(cases).to_parquet(out / "pairs.parquet", index=False)
    (out / "meta.json").write_text(json.dumps(meta))
    return out, expected, oracle_review(out, progress=False)


def test_each_hand_built_pair_gets_its_decision_and_reason(judged):
    out, expected, result = judged
    decisions = {d.pair_id: d for d in ReviewStore(out / "review.sqlite").decisions()}
    assert set(decisions) == set(expected) and {d.reviewer for d in decisions.values()} == {ORACLE_REVIEWER}
    assert {pair_id: d.reason for pair_id, d in decisions.items()} == expected
    verdicts = {pair_id: d.verdict for pair_id, d in decisions.items()}
    assert verdicts == {
        "accepted": "perfect",
        "ranked-accepted": "perfect",
        "perfect-missing": "neither",  # the perturbed image breaks a stated relation: neither follows the prompt
        "perturbed-missing": "flag",  # the perfect image follows the prompt; the pair is wrong otherwise
        "perfect-fails": "neither",
        "not-broken": "both",
        "other-broken": "flag",
        "unreadable": "flag",
        "ranked-swapped": "perturbed",
    }
    # a click as a person makes it: the side the oracle "saw" the chosen image on
    accepted = decisions["accepted"]
    assert accepted.choice == accepted.perfect_side == perfect_side("accepted", ORACLE_REVIEWER)
    assert result.accepted == 2 and result.already_decided == 0
    assert result.rejected == {reason: list(expected.values()).count(reason) for reason in REASONS}
    assert "2 accepted, 7 rejected" in result.describe()


def test_rerun_resumes_export_keeps_accepted_and_people_review_on_top(judged, tmp_path):
    out, expected, _ = judged
    again = oracle_review(out, progress=False)
    assert again.already_decided == len(expected) and again.accepted == 0 and sum(again.rejected.values()) == 0
    assert len(ReviewStore(out / "review.sqlite").decisions()) == len(expected)

    exported = export_reviewed(out, tmp_path / "export")
    assert exported.accepted == 2
    kept = pd.read_parquet(tmp_path / "export" / "pairs.parquet")
    assert sorted(kept["pair_id"]) == ["accepted", "ranked-accepted"] and set(kept["review_status"]) == {"reviewed"}

    listed = load_review_pairs(out, oracle_accepted=True)  # whatever their review_status ("verified" here)
    assert [pair.pair_id for pair in listed] == ["accepted", "ranked-accepted"]
    db = tmp_path / "people.sqlite"
    shutil.copy(out / "review.sqlite", db)
    ReviewStore(db).decide(reviewer="ann", pair_id="accepted", choice="left", shown_perfect_side="left")
    (agreement,) = pairwise_agreement(ReviewStore(db).decisions())
    assert (agreement.reviewer_a, agreement.reviewer_b, agreement.num_pairs) == ("ann", "oracle", 1)


def test_cli_prints_the_counts_and_a_dataset_without_scene_graphs_is_one_error(judged, tmp_path, capsys):
    out, _, _ = judged
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "review.sqlite").unlink()
    for name in ("review.sqlite-wal", "review.sqlite-shm"):
        (copy / name).unlink(missing_ok=True)
    assert main(["oracle-review", str(copy), "--quiet"]) == 0
    assert (
        "oracle review: 2 accepted, 7 rejected (image_unreadable 1, perfect_object_missing 1" in capsys.readouterr().out
    )

    frame = pd.read_parquet(copy / "pairs.parquet")
    frame.loc[3, "perfect_scene"] = "{}"  # an LLM-style row without a usable scene graph
    no_graph = tmp_path / "no_graph"
    shutil.copytree(copy, no_graph, ignore=shutil.ignore_patterns("review.sqlite*"))
    frame.to_parquet(no_graph / "pairs.parquet", index=False)
    assert main(["oracle-review", str(no_graph), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert f"pair {frame.loc[3, 'pair_id']} has no usable scene graph" in error and "Traceback" not in error
    assert not (no_graph / "review.sqlite").exists()  # refused before any decision


def test_a_detector_failure_rejects_the_pair_and_the_review_goes_on(judged, tmp_path, monkeypatch):
    out, expected, _ = judged
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("review.sqlite*"))

    def failing(image, relations, colours):
        raise RuntimeError("detector broke")

    monkeypatch.setattr("data_synthesis.oracle_review.read_image", failing)
    result = oracle_review(copy, progress=False)
    assert result.accepted == 0
    # the unreadable image is caught first; every other pair fails in the detector
    assert result.rejected["detector_failed"] == len(expected) - 1 and result.rejected["image_unreadable"] == 1


def test_a_store_from_before_the_reason_column_gains_it(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as connection:
        connection.executescript(
            "CREATE TABLE decisions (id INTEGER PRIMARY KEY AUTOINCREMENT, reviewer TEXT NOT NULL, pair_id TEXT NOT "
            "NULL, choice TEXT NOT NULL, perfect_side TEXT NOT NULL, verdict TEXT NOT NULL, decided_at TEXT NOT NULL, "
            "undone_at TEXT);"
            "INSERT INTO decisions (reviewer, pair_id, choice, perfect_side, verdict, decided_at) "
            "VALUES ('ann', 'p1', 'left', 'left', 'perfect', '2026-01-01');"
        )
    store = ReviewStore(path)
    store.decide(reviewer="oracle", pair_id="p1", choice="neither", shown_perfect_side="left", reason="why")
    assert [(d.reviewer, d.reason) for d in store.decisions()] == [("ann", None), ("oracle", "why")]


def test_review_of_oracle_accepted_pairs_needs_an_oracle_review_first(judged, tmp_path):
    out, _, _ = judged
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("review.sqlite*"))
    with pytest.raises(ReviewError, match="no pair the oracle accepted"):
        load_review_pairs(copy, oracle_accepted=True)
