"""Label Studio interop (data_synthesis/review/label_studio.py): tasks and labelling config written from a real
dataset, blind (sides keyed by the decisions database's secret, nothing in a task or image file telling the images
apart), a simulated annotation round trip read back into the review store with every skip reason counted, an
idempotent re-import, key-less (older) and other-database tasks refused, and the imported decisions exported as a
reviewed dataset."""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ElementTree

import pandas as pd
import pytest

from data_synthesis.review import ReviewError, ReviewStore, export_reviewed, load_review_pairs, perfect_side
from data_synthesis.review.app import SIDE_KEY, shown_perfect_side
from data_synthesis.review.label_studio import (
    CHOICES,
    ORDER_KEY,
    import_annotations,
    opaque_name,
    reviewer_of,
    write_tasks,
)

PREFIX = "/data/local-files/?d="


@pytest.fixture
def db(tmp_path):
    return tmp_path / "decisions.sqlite"


@pytest.fixture
def tasks(small_dataset, db, tmp_path):
    out = tmp_path / "ls"
    assert write_tasks(small_dataset, out, db_path=db, all_pairs=True, url_prefix=PREFIX) == 60
    return json.loads((out / "tasks.json").read_text())


def annotation(user, choice, *, cancelled=False):
    result = [{"from_name": "decision", "to_name": "left", "type": "choices", "value": {"choices": [choice]}}]
    return {"id": 1, "completed_by": user, "was_cancelled": cancelled, "result": result}


def seen_perfect_side(task, pair, out):
    """The side on which an annotator sees the perfect image: read from the served bytes, as a person would."""
    shown = {side: (out / task["data"][side].removeprefix(PREFIX)).read_bytes() for side in ("left", "right")}
    perfect, perturbed = pair.perfect_image.read_bytes(), pair.perturbed_image.read_bytes()
    assert sorted(shown.values()) == sorted([perfect, perturbed])
    return "left" if shown["left"] == perfect else "right"


def other(side):
    return "right" if side == "left" else "left"


def test_tasks_are_blind_and_keyed_by_the_database(small_dataset, db, tasks, tmp_path):
    """The sides follow the database's secret (shown_perfect_side as reviewer "label-studio"), not the key-less
    perfect_side that anyone can compute from a task's pair id; a task holds nothing else that tells the images
    apart: its fields, image names (content hashes) and image files (copies sharing one modification time)."""
    out = tmp_path / "ls"
    pairs = load_review_pairs(small_dataset, all_pairs=True)
    side_key = ReviewStore(db).secret(SIDE_KEY)
    assert [t["data"]["pair_id"] for t in tasks] == [p.pair_id for p in pairs]
    seen = [seen_perfect_side(task, pair, out) for task, pair in zip(tasks, pairs, strict=True)]
    assert seen == [shown_perfect_side(side_key, p.pair_id, ORDER_KEY) for p in pairs]
    key_less = [perfect_side(p.pair_id, ORDER_KEY) for p in pairs]
    assert sum(s != k for s, k in zip(seen, key_less, strict=True)) > 10  # 60 pairs: about 30 expected
    assert set(seen) == {"left", "right"}
    write_tasks(small_dataset, tmp_path / "ls2", db_path=tmp_path / "other.sqlite", all_pairs=True, url_prefix=PREFIX)
    other_tasks = json.loads((tmp_path / "ls2" / "tasks.json").read_text())
    assert seen != [seen_perfect_side(t, p, tmp_path / "ls2") for t, p in zip(other_tasks, pairs, strict=True)]

    key_ids = {t["data"]["side_key_id"] for t in tasks}
    assert len(key_ids) == 1 and key_ids != {t["data"]["side_key_id"] for t in other_tasks}
    for task, pair in zip(tasks, pairs, strict=True):
        assert set(task) == {"data"}
        assert set(task["data"]) == {"pair_id", "prompt", "relations", "left", "right", "side_key_id"}
        for side in ("left", "right"):
            assert re.fullmatch(r"/data/local-files/\?d=images/[0-9a-f]{64}\.png", task["data"][side])
        assert task["data"]["prompt"] == pair.prompt
        assert task["data"]["relations"].split("\n") == pair.relations
        assert not re.search(r"perfect|perturbed", json.dumps(task), re.IGNORECASE)
    images = sorted((out / "images").iterdir())
    assert len(images) == 120
    assert len({image.stat().st_mtime_ns for image in images}) == 1  # hard links would carry the dataset's times
    assert not any(os.path.samefile(image, pair.perfect_image) for image in images for pair in pairs[:3])

    config = ElementTree.fromstring((out / "labeling_config.xml").read_text())
    choices = config.find("Choices")
    assert choices.get("name") == "decision" and [c.get("value") for c in choices] == list(CHOICES)
    assert [c.get("hotkey") for c in choices] == ["1", "2", "3", "4", "5"]
    assert {i.get("value") for i in config.iter("Image")} == {"$left", "$right"}


def test_an_annotated_export_round_trips_with_every_skip_counted(small_dataset, db, tasks, tmp_path):
    """Annotators pick by what they see; the import recomputes the keyed side and records the intended verdicts."""
    out = tmp_path / "ls"
    pairs = {p.pair_id: p for p in load_review_pairs(small_dataset, all_pairs=True)}
    first, second, third, fourth = tasks[:4]
    seen = {t["data"]["pair_id"]: seen_perfect_side(t, pairs[t["data"]["pair_id"]], out) for t in tasks[:4]}
    ann = {"id": 3, "email": "ann@lab.org"}
    first["annotations"] = [
        annotation(ann, seen[first["data"]["pair_id"]]),
        annotation(7, "neither"),
        annotation(8, "left", cancelled=True),
        annotation(9, "maybe"),
    ]
    second["annotations"] = [annotation(ann, other(seen[second["data"]["pair_id"]]))]
    third["annotations"] = [annotation(7, "flag")]
    third["data"]["left"], third["data"]["right"] = third["data"]["right"], third["data"]["left"]
    fourth["annotations"] = [annotation(5, seen[fourth["data"]["pair_id"]])]
    stranger = {"data": {"pair_id": "sw-9-9999999"}, "annotations": [annotation(7, "left")]}
    export = tmp_path / "export.json"
    export.write_text(json.dumps([first, second, third, stranger, fourth, tasks[4]]))

    store = ReviewStore(db)
    report = import_annotations(small_dataset, export, store)
    assert report.imported == 4
    assert report.skipped == {
        "cancelled": 1,
        "without a choice or reviewer": 1,
        "with images in another order": 1,
        "of unknown pairs": 1,
    }
    verdicts = {(d.reviewer, d.pair_id): d.verdict for d in store.decisions()}
    assert verdicts == {
        ("ls-ann@lab.org", first["data"]["pair_id"]): "perfect",
        ("ls-7", first["data"]["pair_id"]): "neither",
        ("ls-ann@lab.org", second["data"]["pair_id"]): "perturbed",
        ("ls-5", fourth["data"]["pair_id"]): "perfect",
    }
    assert {d.pair_id: d.perfect_side for d in store.decisions()} == {
        pair_id: seen[pair_id]
        for pair_id in (first["data"]["pair_id"], second["data"]["pair_id"], fourth["data"]["pair_id"])
    }
    again = import_annotations(small_dataset, export, store)
    assert again.imported == 0 and again.skipped["already decided"] == 4
    assert len(store.decisions()) == 4
    assert again.describe().startswith("imported 0 decisions; skipped: 4 already decided, 1 cancelled")

    result = export_reviewed(small_dataset, tmp_path / "reviewed", db_path=store.path)
    assert result.accepted == 1 and result.dropped["disagreement"] == 1 and result.dropped["perturbed_chosen"] == 1
    assert list(pd.read_parquet(tmp_path / "reviewed" / "pairs.parquet")["pair_id"]) == [fourth["data"]["pair_id"]]


def test_every_pair_of_a_full_annotation_round_trips(small_dataset, db, tasks, tmp_path):
    """One annotator picks the perfect image on even tasks and the perturbed one on odd tasks, over all 60 pairs:
    every verdict comes back as intended, whichever side the key put the perfect image on."""
    out = tmp_path / "ls"
    pairs = {p.pair_id: p for p in load_review_pairs(small_dataset, all_pairs=True)}
    intended = {}
    for index, task in enumerate(tasks):
        pair_id = task["data"]["pair_id"]
        seen = seen_perfect_side(task, pairs[pair_id], out)
        task["annotations"] = [annotation(1, seen if index % 2 == 0 else other(seen))]
        intended[pair_id] = "perfect" if index % 2 == 0 else "perturbed"
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    store = ReviewStore(db)
    assert import_annotations(small_dataset, tmp_path / "export.json", store) == (60, {})
    assert {d.pair_id: d.verdict for d in store.decisions()} == intended


def test_key_less_and_other_database_tasks_are_refused(small_dataset, db, tasks, tmp_path):
    """Tasks of the earlier key-less scheme (no side_key_id; sides from perfect_side(pair_id, "label-studio")) and
    tasks written with another database's key are one clear error each, and nothing is imported."""
    pairs = {p.pair_id: p for p in load_review_pairs(small_dataset, all_pairs=True)}
    old_tasks = []
    for task in tasks[:3]:
        pair = pairs[task["data"]["pair_id"]]
        images = (pair.perfect_image, pair.perturbed_image)
        if perfect_side(pair.pair_id, ORDER_KEY) == "right":
            images = images[::-1]
        data = {key: value for key, value in task["data"].items() if key != "side_key_id"}
        data["left"], data["right"] = (PREFIX + opaque_name(image) for image in images)
        old_tasks.append({"data": data, "annotations": [annotation(2, "left")]})
    export = tmp_path / "old.json"
    export.write_text(json.dumps([tasks[3] | {"annotations": [annotation(2, "flag")]}, *old_tasks]))
    store = ReviewStore(db)
    with pytest.raises(ReviewError, match=r"old.json: 3 tasks .* written by an earlier `label-studio tasks`"):
        import_annotations(small_dataset, export, store)
    assert store.decisions() == []

    write_tasks(small_dataset, tmp_path / "ls2", db_path=tmp_path / "other.sqlite", all_pairs=True)
    other_tasks = json.loads((tmp_path / "ls2" / "tasks.json").read_text())
    other_tasks[0]["annotations"] = [annotation(2, "flag")]
    (tmp_path / "other.json").write_text(json.dumps(other_tasks[:1]))
    with pytest.raises(ReviewError, match="written with another decisions database than .*decisions.sqlite"):
        import_annotations(small_dataset, tmp_path / "other.json", store)
    assert store.decisions() == []
    assert import_annotations(small_dataset, tmp_path / "other.json", ReviewStore(tmp_path / "other.sqlite")) == (1, {})


def test_bad_exports_and_reviewer_names(small_dataset, tmp_path):
    with pytest.raises(ReviewError, match="is the dataset dir"):
        write_tasks(small_dataset, small_dataset, all_pairs=True)
    store = ReviewStore(tmp_path / "review.sqlite")
    with pytest.raises(ReviewError, match="missing: export the project from Label Studio as JSON"):
        import_annotations(small_dataset, tmp_path / "nowhere.json", store)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ReviewError, match="bad.json is not a Label Studio JSON export"):
        import_annotations(small_dataset, tmp_path / "bad.json", store)
    (tmp_path / "dict.json").write_text("{}")
    with pytest.raises(ReviewError, match="expected a list of tasks"):
        import_annotations(small_dataset, tmp_path / "dict.json", store)
    assert reviewer_of(12) == "ls-12" and reviewer_of({"email": "a b@x.y"}) == "ls-a_b@x.y"
    assert reviewer_of(None) is None and reviewer_of(True) is None


def test_the_command_line_round_trip(small_dataset, tmp_path, capsys):
    from data_synthesis.__main__ import main

    out, db = tmp_path / "ls", tmp_path / "decisions.sqlite"
    argv = ["label-studio", "tasks", str(small_dataset), "--out", str(out), "--all-pairs", "--db", str(db)]
    assert main(argv) == 0
    tasks = json.loads((out / "tasks.json").read_text())
    tasks[0]["annotations"] = [annotation(11, "flag")]
    (tmp_path / "export.json").write_text(json.dumps(tasks[:2]))
    assert main(["label-studio", "import", str(small_dataset), str(tmp_path / "export.json"), "--db", str(db)]) == 0
    assert "imported 1 decisions; skipped: none" in capsys.readouterr().out
    assert [(d.reviewer, d.verdict) for d in ReviewStore(db).decisions()] == [("ls-11", "flag")]
    other_db = tmp_path / "other.sqlite"
    assert (
        main(["label-studio", "import", str(small_dataset), str(tmp_path / "export.json"), "--db", str(other_db)]) == 2
    )
    assert "another decisions database" in capsys.readouterr().err
    assert main(["label-studio", "import", str(tmp_path), str(tmp_path / "export.json")]) == 2
    assert "is not a finished dataset dir" in capsys.readouterr().err and not (tmp_path / "review.sqlite").exists()
    assert main(["label-studio", "tasks", str(small_dataset)]) == 2
    assert "needs --out DIR" in capsys.readouterr().err
