"""Label Studio interop (data_synthesis/review/label_studio.py): tasks and labelling config written from a real
dataset, a hand-written Label Studio JSON export read back into the review store with every skip reason counted,
an idempotent re-import, and the imported decisions exported as a reviewed dataset."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree

import pandas as pd
import pytest

from data_synthesis.review import ReviewError, ReviewStore, export_reviewed, load_review_pairs, perfect_side
from data_synthesis.review.label_studio import (
    CHOICES,
    ORDER_KEY,
    import_annotations,
    reviewer_of,
    write_tasks,
)


@pytest.fixture
def tasks(small_dataset, tmp_path):
    out = tmp_path / "ls"
    assert write_tasks(small_dataset, out, all_pairs=True, url_prefix="/data/local-files/?d=") == 60
    return json.loads((out / "tasks.json").read_text())


def annotation(user, choice, *, cancelled=False):
    result = [{"from_name": "decision", "to_name": "left", "type": "choices", "value": {"choices": [choice]}}]
    return {"id": 1, "completed_by": user, "was_cancelled": cancelled, "result": result}


def test_tasks_show_each_pair_in_its_fixed_order(small_dataset, tasks, tmp_path):
    pairs = load_review_pairs(small_dataset, all_pairs=True)
    assert [t["data"]["pair_id"] for t in tasks] == [p.pair_id for p in pairs]
    for task, pair in zip(tasks, pairs, strict=True):
        side = perfect_side(pair.pair_id, ORDER_KEY)
        other = "right" if side == "left" else "left"
        for shown, image in ((side, pair.perfect_image), (other, pair.perturbed_image)):
            url = task["data"][shown]
            assert url.startswith("/data/local-files/?d=images/")
            assert (tmp_path / "ls" / url.removeprefix("/data/local-files/?d=")).read_bytes() == image.read_bytes()
        assert task["data"]["prompt"] == pair.prompt
        assert task["data"]["relations"].split("\n") == pair.relations
        assert "perfect" not in json.dumps(task)  # nothing tells the reviewer which image is which
    assert {perfect_side(t["data"]["pair_id"], ORDER_KEY) for t in tasks} == {"left", "right"}
    config = ElementTree.fromstring((tmp_path / "ls" / "labeling_config.xml").read_text())
    choices = config.find("Choices")
    assert choices.get("name") == "decision" and [c.get("value") for c in choices] == list(CHOICES)
    assert [c.get("hotkey") for c in choices] == ["1", "2", "3", "4", "5"]
    assert {i.get("value") for i in config.iter("Image")} == {"$left", "$right"}


def test_an_export_is_imported_with_every_skip_counted(small_dataset, tasks, tmp_path):
    first, second, third = tasks[0], tasks[1], tasks[2]
    perfect_of_first = perfect_side(first["data"]["pair_id"], ORDER_KEY)
    perturbed_of_second = "right" if perfect_side(second["data"]["pair_id"], ORDER_KEY) == "left" else "left"
    first["annotations"] = [
        annotation({"id": 3, "email": "ann@lab.org"}, perfect_of_first),
        annotation(7, "neither"),
        annotation(8, "left", cancelled=True),
        annotation(9, "maybe"),
    ]
    second["annotations"] = [annotation({"id": 3, "email": "ann@lab.org"}, perturbed_of_second)]
    third["annotations"] = [annotation(7, "flag")]
    third["data"]["left"], third["data"]["right"] = third["data"]["right"], third["data"]["left"]
    fourth = tasks[3]
    fourth["annotations"] = [annotation(5, perfect_side(fourth["data"]["pair_id"], ORDER_KEY))]
    stranger = {"data": {"pair_id": "sw-9-9999999"}, "annotations": [annotation(7, "left")]}
    export = tmp_path / "export.json"
    export.write_text(json.dumps([first, second, third, stranger, fourth, tasks[4]]))

    store = ReviewStore(tmp_path / "review.sqlite")
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
    again = import_annotations(small_dataset, export, store)
    assert again.imported == 0 and again.skipped["already decided"] == 4
    assert len(store.decisions()) == 4
    assert again.describe().startswith("imported 0 decisions; skipped: 4 already decided, 1 cancelled")

    result = export_reviewed(small_dataset, tmp_path / "reviewed", db_path=store.path)
    assert result.accepted == 1 and result.dropped["disagreement"] == 1 and result.dropped["perturbed_chosen"] == 1
    assert list(pd.read_parquet(tmp_path / "reviewed" / "pairs.parquet")["pair_id"]) == [fourth["data"]["pair_id"]]


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

    out = tmp_path / "ls"
    assert main(["label-studio", "tasks", str(small_dataset), "--out", str(out), "--all-pairs"]) == 0
    tasks = json.loads((out / "tasks.json").read_text())
    tasks[0]["annotations"] = [annotation(11, "flag")]
    (tmp_path / "export.json").write_text(json.dumps(tasks[:2]))
    db = tmp_path / "decisions.sqlite"
    assert main(["label-studio", "import", str(small_dataset), str(tmp_path / "export.json"), "--db", str(db)]) == 0
    assert "imported 1 decisions; skipped: none" in capsys.readouterr().out
    assert [(d.reviewer, d.verdict) for d in ReviewStore(db).decisions()] == [("ls-11", "flag")]
    assert main(["label-studio", "import", str(tmp_path), str(tmp_path / "export.json")]) == 2
    assert "is not a finished dataset dir" in capsys.readouterr().err and not (tmp_path / "review.sqlite").exists()
    assert main(["label-studio", "tasks", str(small_dataset)]) == 2
    assert "needs --out DIR" in capsys.readouterr().err
