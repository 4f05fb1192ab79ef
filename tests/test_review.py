"""The review app: decisions store (decide, undo, concurrent reviewers), Cohen's kappa against a hand value, the
HTTP API through Flask's test client, the access token off loopback, and the export of the reviewed dataset."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from data_synthesis.__main__ import main
from data_synthesis.prompts import SHAPE_WORDS
from data_synthesis.review import (
    AlreadyDecided,
    ReviewError,
    ReviewStore,
    cohen_kappa,
    create_app,
    export_reviewed,
    load_review_pairs,
    pairwise_agreement,
    perfect_side,
    verdict_of,
)
from data_synthesis.review.app import (
    MAX_ID_CHARS,
    MIN_DISPLAY_MS,
    SIDE_KEY,
    TOKEN_ENV,
    access_token,
    relation_text,
    serve,
    shape_name,
    shown_perfect_side,
)
from data_synthesis.scene import COLOURS
from data_synthesis.verify import DatasetError, load_pairs

NUM_UNREVIEWED = 40
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reviewable(small_dataset, tmp_path_factory) -> Path:
    """The small dataset with its last 40 pairs marked "unreviewed" (the others stay "verified", so serving the
    unreviewed first reorders the file); images shared by a symlink."""
    out = tmp_path_factory.mktemp("review") / "dataset"
    out.mkdir()
    _, frame = load_pairs(small_dataset)
    frame = frame.copy()
    frame.loc[frame.index[-NUM_UNREVIEWED:], "review_status"] = "unreviewed"
    frame.to_parquet(out / "pairs.parquet", index=False)
    shutil.copy(small_dataset / "meta.json", out / "meta.json")
    (out / "images").symlink_to(small_dataset / "images")
    return out


# --- the store --------------------------------------------------------------------------------------------------
def test_verdicts_do_not_depend_on_the_order_shown_and_the_order_is_fixed_per_pair_and_reviewer():
    assert verdict_of("left", "left") == verdict_of("right", "right") == "perfect"
    assert verdict_of("left", "right") == verdict_of("right", "left") == "perturbed"
    assert [verdict_of(c, "right") for c in ("neither", "both", "flag")] == ["neither", "both", "flag"]
    with pytest.raises(ValueError, match="decision must be one of"):
        verdict_of("up", "left")
    sides = [perfect_side(f"p{i}", "alice") for i in range(200)]
    assert sides == [perfect_side(f"p{i}", "alice") for i in range(200)]
    assert 70 < sides.count("left") < 130  # random-looking
    assert sides != [perfect_side(f"p{i}", "bob") for i in range(200)]  # each reviewer has their own order


def test_store_decides_undoes_the_last_decision_and_refuses_a_second_decision_on_a_pair(tmp_path):
    store = ReviewStore(tmp_path / "review.sqlite")
    assert store.undo("alice") is None
    store.decide(reviewer="alice", pair_id="a", choice="left", shown_perfect_side="left")
    store.decide(reviewer="bob", pair_id="a", choice="flag", shown_perfect_side="right")
    store.decide(reviewer="alice", pair_id="b", choice="left", shown_perfect_side="right")
    with pytest.raises(AlreadyDecided, match="alice has already decided pair b"):
        store.decide(reviewer="alice", pair_id="b", choice="both", shown_perfect_side="right")
    undone = store.undo("alice")
    assert (undone.pair_id, undone.choice, undone.verdict) == ("b", "left", "perturbed") and undone.undone_at
    assert store.latest("alice").pair_id == "a"
    store.decide(reviewer="alice", pair_id="b", choice="neither", shown_perfect_side="right")  # allowed again
    assert [(d.reviewer, d.pair_id, d.verdict) for d in store.decisions()] == [
        ("alice", "a", "perfect"),
        ("bob", "a", "flag"),
        ("alice", "b", "neither"),
    ]
    assert len(store.decisions(include_undone=True)) == 4  # undo supersedes, it does not delete
    assert store.decided_pairs("alice") == {"a", "b"} and store.decided_pairs("carol") == set()
    assert store.undo("alice").pair_id == "b" and store.undo("alice").pair_id == "a" and store.undo("alice") is None


def _review(db_path: Path, reviewer: str, num_pairs: int) -> None:
    """Decide `num_pairs` pairs, undoing every third decision and deciding that pair again differently."""
    store = ReviewStore(db_path)
    for i in range(num_pairs):
        store.decide(reviewer=reviewer, pair_id=f"pair-{i}", choice="left", shown_perfect_side="left")
        if i % 3 == 2:
            assert store.undo(reviewer).pair_id == f"pair-{i}"
            store.decide(reviewer=reviewer, pair_id=f"pair-{i}", choice="both", shown_perfect_side="left")


def test_reviewers_in_threads_and_processes_at_once_lose_no_decision(tmp_path):
    db_path, num_pairs = tmp_path / "review.sqlite", 30
    ReviewStore(db_path)
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_review, args=(db_path, f"process-{i}", num_pairs)) for i in range(2)]
    threads = [threading.Thread(target=_review, args=(db_path, f"thread-{i}", num_pairs)) for i in range(3)]
    for worker in processes + threads:
        worker.start()
    for worker in processes + threads:
        worker.join(timeout=120)
    assert [p.exitcode for p in processes] == [0, 0]
    store = ReviewStore(db_path)
    expected = {f"pair-{i}": "both" if i % 3 == 2 else "perfect" for i in range(num_pairs)}
    reviewers = [f"process-{i}" for i in range(2)] + [f"thread-{i}" for i in range(3)]
    for reviewer in reviewers:
        assert {d.pair_id: d.verdict for d in store.decisions(reviewer)} == expected, reviewer
    assert len(store.decisions(include_undone=True)) == len(reviewers) * (num_pairs + num_pairs // 3)


# --- agreement --------------------------------------------------------------------------------------------------
def test_cohen_kappa_matches_the_hand_computed_value():
    """Ten pairs, P = perfect, N = neither, B = both:
        a: P P P P P N N N B B
        b: P P P P N N N B B P
    Same verdict on pairs 1-4, 6, 7, 9: p_o = 7/10. Marginals a: P 5, N 3, B 2; b: P 5, N 3, B 2, so
    p_e = (5*5 + 3*3 + 2*2) / 100 = 0.38 and kappa = (0.7 - 0.38) / (1 - 0.38) = 0.32 / 0.62 = 16/31."""
    a = ["perfect"] * 5 + ["neither"] * 3 + ["both"] * 2
    b = ["perfect"] * 4 + ["neither"] * 3 + ["both"] * 2 + ["perfect"]
    assert cohen_kappa(a, b) == pytest.approx(16 / 31)
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    assert math.isnan(cohen_kappa(["perfect"] * 3, ["perfect"] * 3))  # p_e = 1: undefined
    with pytest.raises(ValueError, match="equally long"):
        cohen_kappa(a, b[:-1])


def test_agreement_compares_verdicts_over_the_pairs_both_reviewers_decided(tmp_path):
    """alice and bob see the images in opposite orders, so equal verdicts come from different clicks."""
    store = ReviewStore(tmp_path / "review.sqlite")
    a = ["perfect"] * 5 + ["neither"] * 3 + ["both"] * 2
    b = ["perfect"] * 4 + ["neither"] * 3 + ["both"] * 2 + ["perfect"]
    click = {"perfect": "left", "neither": "neither", "both": "both"}
    for i, (verdict_a, verdict_b) in enumerate(zip(a, b, strict=True)):
        store.decide(reviewer="alice", pair_id=f"p{i}", choice=click[verdict_a], shown_perfect_side="left")
        bob_click = "right" if verdict_b == "perfect" else click[verdict_b]
        store.decide(reviewer="bob", pair_id=f"p{i}", choice=bob_click, shown_perfect_side="right")
    store.decide(reviewer="alice", pair_id="only-alice", choice="flag", shown_perfect_side="left")
    store.decide(reviewer="carol", pair_id="only-carol", choice="flag", shown_perfect_side="left")
    (agreement,) = pairwise_agreement(store.decisions())
    assert agreement.reviewer_a == "alice" and agreement.reviewer_b == "bob" and agreement.num_pairs == 10
    assert agreement.observed == pytest.approx(0.7) and agreement.kappa == pytest.approx(16 / 31)


def test_the_agreement_command_prints_kappa(reviewable, tmp_path, capsys):
    db_path = tmp_path / "review.sqlite"
    store = ReviewStore(db_path)
    for reviewer in ("alice", "bob"):
        for i, choice in enumerate(("left", "right", "neither")):
            store.decide(reviewer=reviewer, pair_id=f"p{i}", choice=choice, shown_perfect_side="left")
    assert main(["review", str(reviewable), "--db", str(db_path), "--agreement"]) == 0
    assert "alice vs bob: Cohen's kappa 1.000 over 3 shared pairs" in capsys.readouterr().out


# --- the HTTP API -----------------------------------------------------------------------------------------------
def test_unreviewed_pairs_are_served_first_and_others_only_on_request(reviewable):
    _, frame = load_pairs(reviewable)
    unreviewed = list(frame["pair_id"][frame["review_status"] == "unreviewed"])
    assert [p.pair_id for p in load_review_pairs(reviewable)] == unreviewed
    every = [p.pair_id for p in load_review_pairs(reviewable, all_pairs=True)]
    assert every[:NUM_UNREVIEWED] == unreviewed and sorted(every) == sorted(frame["pair_id"])


def test_api_decide_undo_progress_and_images(reviewable, tmp_path):
    db_path = tmp_path / "review.sqlite"
    client = create_app(reviewable, db_path=db_path, reviewer="alice", min_display_ms=0).test_client()
    page = client.get("/")
    assert page.status_code == 200 and b'data-reviewer="alice"' in page.data
    state = client.get("/api/state").get_json()
    first = state["pair"]
    assert state["progress"] == {"reviewed": 0, "total": NUM_UNREVIEWED} and state["last"] is None
    assert first["prompt"] and first["relations"] and state["upcoming"]

    # images are served by side; the perfect one on this reviewer's side for the pair
    pair = {p.pair_id: p for p in load_review_pairs(reviewable)}[first["pair_id"]]
    side = shown_perfect_side(ReviewStore(db_path).secret(SIDE_KEY), first["pair_id"], "alice")
    other = "right" if side == "left" else "left"
    assert client.get(first["images"][side]).data == pair.perfect_image.read_bytes()
    assert client.get(first["images"][other]).data == pair.perturbed_image.read_bytes()
    assert "perfect" not in json.dumps(state["pair"]["images"])  # the URLs do not give the answer away

    state = client.post("/api/decide", json={"pair_id": first["pair_id"], "choice": side}).get_json()
    assert state["progress"]["reviewed"] == 1 and state["pair"]["pair_id"] != first["pair_id"]
    assert state["last"]["pair_id"] == first["pair_id"]
    second = state["pair"]["pair_id"]
    assert client.post("/api/decide", json={"pair_id": first["pair_id"], "choice": "left"}).status_code == 409
    client.post("/api/decide", json={"pair_id": second, "choice": "flag"})
    state = client.post("/api/undo", json={}).get_json()
    assert state["undone"]["pair_id"] == second and state["pair"]["pair_id"] == second
    assert state["progress"]["reviewed"] == 1
    # bob, on the same server, has his own progress
    assert client.get("/api/state?reviewer=bob").get_json()["progress"]["reviewed"] == 0

    counted = ReviewStore(db_path).decisions()
    assert [(d.reviewer, d.pair_id, d.verdict) for d in counted] == [("alice", first["pair_id"], "perfect")]

    assert client.post("/api/decide", json={"pair_id": "nope", "choice": "left"}).status_code == 404
    assert client.post("/api/decide", json={"pair_id": ["a"], "choice": "left"}).status_code == 404
    assert client.get("/api/state", headers={"Host": "attacker.example"}).status_code == 400  # DNS rebinding
    assert client.post("/api/decide", json={"pair_id": second, "choice": "up"}).status_code == 400
    assert (
        client.post("/api/decide", data="pair_id=x", content_type="application/x-www-form-urlencoded").status_code
        == 415
    )
    response = client.get("/api/state?reviewer=no%20spaces")
    assert response.status_code == 400 and "reviewer name" in response.get_json()["error"]
    no_default = create_app(reviewable, db_path=db_path).test_client()
    assert b'name="reviewer"' in no_default.get("/").data  # asks for a name
    assert no_default.get("/api/state").status_code == 400


def test_a_token_is_required_on_every_request_when_set(reviewable, tmp_path):
    client = create_app(reviewable, db_path=tmp_path / "r.sqlite", reviewer="alice", token="s3cret").test_client()
    assert client.get("/?reviewer=bob").headers["Location"] == "/login?reviewer=bob"
    assert client.get("/api/state").status_code == 401
    assert client.get("/api/state", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/state", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.post("/login", data={"token": "wrong"}).status_code == 403
    response = client.post("/login", data={"token": "s3cret", "reviewer": "bob"})
    assert response.status_code == 302 and response.headers["Location"] == "/?reviewer=bob"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert client.get("/").status_code == 200 and client.get("/api/state").status_code == 200  # by the cookie


def test_the_token_comes_from_the_environment_or_is_generated_off_loopback():
    assert access_token("127.0.0.1", {}) == (None, False)
    assert access_token("::1", {}) == (None, False) and access_token("localhost", {}) == (None, False)
    for host in ("0.0.0.0", "192.168.1.4", "review.example.org"):
        token, generated = access_token(host, {})
        assert generated and len(token) >= 40
    assert access_token("0.0.0.0", {TOKEN_ENV: "mine"}) == ("mine", False)
    assert access_token("127.0.0.1", {TOKEN_ENV: "mine"}) == ("mine", False)


def test_the_server_off_loopback_refuses_requests_without_the_printed_token(reviewable, tmp_path):
    """The real command, bound to 0.0.0.0 on a free port: the token it prints opens it, nothing else does."""
    command = [sys.executable, "-m", "data_synthesis", "review", str(reviewable), "--host", "0.0.0.0", "--port", "0"]
    command += ["--db", str(tmp_path / "r.sqlite"), "--reviewer", "alice"]
    environment = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    server = subprocess.Popen(
        command, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        address = re.search(r"open http://[^:]+:(\d+)/", server.stdout.readline() + server.stdout.readline())
        assert address, f"the server did not start: {server.stderr.read() if server.poll() is not None else ''}"
        token = server.stdout.readline().strip().rsplit(" ", 1)[-1]
        url = f"http://127.0.0.1:{address.group(1)}/api/state"
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(url, timeout=30)
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.load(response)["progress"]["total"] == NUM_UNREVIEWED
    finally:
        server.terminate()
        _, log = server.communicate(timeout=30)
    assert "GET /api/state" in log and token not in log  # requests are logged, the token is not


def test_a_dir_that_is_not_a_dataset_gets_one_clear_error(tmp_path, capsys, reviewable, small_dataset):
    with pytest.raises(DatasetError, match="meta.json is missing"):
        create_app(tmp_path)
    assert main(["review", str(tmp_path)]) == 2
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors == [f"error: {tmp_path / 'meta.json'} is missing: {tmp_path} is not a finished dataset dir"] * 2
    broken = tmp_path / "broken"
    shutil.copytree(reviewable, broken, ignore=shutil.ignore_patterns("images"))
    (broken / "images").mkdir()
    with pytest.raises(ReviewError, match=r"80 image files are missing \(first: .*_perfect.png\)"):
        create_app(broken)
    with pytest.raises(ReviewError, match="no pairs with review_status 'unreviewed' .*60 'verified'.*--all-pairs"):
        load_review_pairs(small_dataset)


# --- export -----------------------------------------------------------------------------------------------------
def test_export_writes_exactly_the_accepted_pairs_in_the_dataset_format(reviewable, tmp_path):
    """Decisions through the API: alice picks the perfect image on pairs 0-4 and 9, the perturbed one on 5, neither
    on 6, both on 7, flags 8; bob agrees on 0-2, and picks the perturbed image on 9."""
    db_path = tmp_path / "review.sqlite"
    client = create_app(reviewable, db_path=db_path, min_display_ms=0).test_client()
    ids = [p.pair_id for p in load_review_pairs(reviewable)]

    side_key = ReviewStore(db_path).secret(SIDE_KEY)

    def decide(reviewer: str, index: int, verdict: str) -> None:
        side = shown_perfect_side(side_key, ids[index], reviewer)
        choice = {"perfect": side, "perturbed": "right" if side == "left" else "left"}.get(verdict, verdict)
        response = client.post("/api/decide", json={"reviewer": reviewer, "pair_id": ids[index], "choice": choice})
        assert response.status_code == 200

    for index in (0, 1, 2, 3, 4, 9):
        decide("alice", index, "perfect")
    for index, verdict in ((5, "perturbed"), (6, "neither"), (7, "both"), (8, "flag")):
        decide("alice", index, verdict)
    for index in (0, 1, 2):
        decide("bob", index, "perfect")
    decide("bob", 9, "perturbed")

    out = tmp_path / "reviewed"
    result = export_reviewed(reviewable, out, db_path=db_path)
    meta, exported = load_pairs(out)
    assert list(exported["pair_id"]) == [ids[i] for i in range(5)] and result.accepted == 5
    assert set(exported["review_status"]) == {"reviewed"}
    _, source = load_pairs(reviewable)
    expected = source.set_index("pair_id").loc[ids[:5]].reset_index().assign(review_status="reviewed")
    pd.testing.assert_frame_equal(exported, expected)
    for relative in list(exported["perfect_image"]) + list(exported["perturbed_image"]):
        assert (out / relative).read_bytes() == (reviewable / relative).read_bytes()
    assert len(list(out.glob("images/*/*.png"))) == 10
    assert meta["counts"]["pairs"] == 5 and sum(meta["counts"]["by_split"].values()) == 5
    assert meta["arguments"] == json.loads((reviewable / "meta.json").read_text())["arguments"]
    dropped = {"flagged": 1, "disagreement": 1, "perturbed_chosen": 1, "neither": 1, "both": 1, "too_few_reviewers": 0}
    assert meta["review"]["pairs_dropped"] == result.dropped == dropped
    assert meta["review"]["reviewers"] == ["alice", "bob"] and meta["review"]["pairs_not_reviewed"] == 50

    # a rerun into the same dir brings it up to date; stale images go
    result = export_reviewed(reviewable, out, db_path=db_path, min_reviewers=2)
    assert list(load_pairs(out)[1]["pair_id"]) == ids[:3] and result.dropped["too_few_reviewers"] == 2
    assert len(list(out.glob("images/*/*.png"))) == 6
    assert main(["export", str(reviewable), "--out", str(out), "--db", str(db_path)]) == 0


def test_export_refuses_a_foreign_output_dir_and_a_review_without_accepted_pairs(reviewable, tmp_path):
    db_path = tmp_path / "review.sqlite"
    with pytest.raises(ReviewError, match="review.sqlite is missing"):
        export_reviewed(reviewable, tmp_path / "out", db_path=db_path)
    store = ReviewStore(db_path)
    pair_id = load_review_pairs(reviewable)[0].pair_id
    store.decide(reviewer="alice", pair_id=pair_id, choice="flag", shown_perfect_side="left")
    with pytest.raises(ReviewError, match="no pair of .* is accepted"):
        export_reviewed(reviewable, tmp_path / "out", db_path=db_path)
    store.undo("alice")
    store.decide(reviewer="alice", pair_id=pair_id, choice="left", shown_perfect_side="left")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ReviewError, match="holds files but no export.json"):
        export_reviewed(reviewable, foreign, db_path=db_path)
    with pytest.raises(ReviewError, match="is the dataset dir itself"):
        export_reviewed(reviewable, reviewable, db_path=db_path)


# --- hardening: nothing tells the images apart, limits, the page's words, bad addresses -------------------------
def test_image_responses_carry_nothing_that_tells_perfect_from_perturbed(reviewable, tmp_path):
    """No file name (Content-Disposition), no Last-Modified, an ETag from the bytes (not the mtime: the perfect
    image is always written first); the URL is an opaque id naming neither the pair nor the side; a conditional
    request with the ETag gets 304."""
    client = create_app(reviewable, db_path=tmp_path / "review.sqlite", reviewer="alice").test_client()
    state = client.get("/api/state").get_json()
    pair_id, urls = state["pair"]["pair_id"], state["pair"]["images"]
    for url in urls.values():
        assert pair_id not in url and "left" not in url and "right" not in url
        response = client.get(url)
        assert response.status_code == 200 and response.mimetype == "image/png"
        assert "Content-Disposition" not in response.headers and "Last-Modified" not in response.headers
        assert response.headers["ETag"].strip('"') == hashlib.sha256(response.data).hexdigest()
        assert client.get(url, headers={"If-None-Match": response.headers["ETag"]}).status_code == 304
    assert client.get("/image/" + "0" * 32 + "?reviewer=alice").status_code == 404


def _served_perfect_sides(app) -> list[str]:
    """The side on which `app` shows alice the perfect image of each pair, read from the bytes it serves, deciding
    "flag" on each pair in turn to reach the next."""
    client, by_id, sides = app.test_client(), {p.pair_id: p for p in app.config["REVIEW_PAIRS"]}, []
    pair = client.get("/api/state").get_json()["pair"]
    while pair is not None:
        perfect = by_id[pair["pair_id"]].perfect_image.read_bytes()
        (side,) = [side for side, url in pair["images"].items() if client.get(url).data == perfect]
        sides.append(side)
        pair = client.post("/api/decide", json={"pair_id": pair["pair_id"], "choice": "flag"}).get_json()["pair"]
    return sides


def test_which_side_shows_the_perfect_image_needs_the_databases_secret_key(reviewable, tmp_path):
    """The page shows the pair id and the reviewer's name; if the side were a function of those alone (as the
    key-less `perfect_side` is), script on the page could work out the answer. The app's sides for 40 pairs differ
    from `perfect_side`'s and between two fresh databases (each a 2**-40 chance to be equal by luck), and stay the
    same when the app starts again over the same database (a page left open across a restart stays right)."""

    def sides(db_path: Path) -> list[str]:
        return _served_perfect_sides(create_app(reviewable, db_path=db_path, reviewer="alice", min_display_ms=0))

    ids, first_db = [pair.pair_id for pair in load_review_pairs(reviewable)], tmp_path / "first.sqlite"
    first = sides(first_db)
    assert len(first) == NUM_UNREVIEWED and set(first) == {"left", "right"}
    assert first != [perfect_side(pair_id, "alice") for pair_id in ids]
    assert first != sides(tmp_path / "second.sqlite")
    store = ReviewStore(first_db)
    for _ in ids:
        store.undo("alice")
    assert sides(first_db) == first  # the app started again over the same database
    key = store.secret(SIDE_KEY)
    assert first == [shown_perfect_side(key, pair_id, "alice") for pair_id in ids]
    assert [decision.perfect_side for decision in store.decisions()] == first


def test_the_server_refuses_a_decision_on_a_pair_served_less_than_min_display_ms_ago(reviewable, tmp_path):
    """Whatever the page's script does: a pair served 0 ms ago gets 429 and no decision; 0.3 s later the same
    decision counts; the next pair, served by that response, is again too new, and so is a pair an undo brings
    back. A pair this server never served (a script's decision, a page from before a restart) is not held back."""
    db_path = tmp_path / "review.sqlite"
    client = create_app(reviewable, db_path=db_path, reviewer="alice", min_display_ms=300).test_client()
    first = client.get("/api/state").get_json()["pair"]["pair_id"]
    refused = client.post("/api/decide", json={"pair_id": first, "choice": "left"})
    assert refused.status_code == 429 and "a decision needs 300 ms on screen" in refused.get_json()["error"]
    assert ReviewStore(db_path).decisions() == []
    time.sleep(0.3)
    state = client.post("/api/decide", json={"pair_id": first, "choice": "left"}).get_json()
    second = state["pair"]["pair_id"]
    assert client.post("/api/decide", json={"pair_id": second, "choice": "flag"}).status_code == 429
    assert client.post("/api/undo", json={}).get_json()["pair"]["pair_id"] == first
    assert client.post("/api/decide", json={"pair_id": first, "choice": "right"}).status_code == 429
    never_served = load_review_pairs(reviewable)[-1].pair_id
    assert client.post("/api/decide", json={"pair_id": never_served, "choice": "both"}).status_code == 200
    assert [(d.pair_id, d.choice) for d in ReviewStore(db_path).decisions()] == [(never_served, "both")]


def test_request_bodies_and_ids_have_a_size_limit(reviewable, tmp_path):
    """A body over MAX_BODY_BYTES gets 413; an id or name over MAX_ID_CHARS gets 400 and is not echoed back."""
    client = create_app(reviewable, db_path=tmp_path / "review.sqlite", reviewer="alice").test_client()
    huge = "x" * (5 * 1024 * 1024)
    assert client.post("/api/decide", json={"pair_id": huge, "choice": "left"}).status_code == 413
    long_id = "y" * (MAX_ID_CHARS + 1)
    response = client.post("/api/decide", json={"pair_id": long_id, "choice": "left"})
    assert response.status_code == 400 and long_id not in response.get_data(as_text=True)
    response = client.get(f"/api/state?reviewer={long_id}")
    assert response.status_code == 400 and long_id not in response.get_data(as_text=True)
    assert client.get(f"/image/{long_id}?reviewer=alice").status_code == 400


def test_the_page_explains_neither_both_and_flag_and_sets_a_minimum_display_time(reviewable, tmp_path):
    page = create_app(reviewable, db_path=tmp_path / "r.sqlite", reviewer="alice").test_client().get("/")
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", page.get_data(as_text=True)))
    assert "neither: no image does" in text and "both: both do" in text
    assert "flag: the pair itself is broken" in text
    assert f'data-min-display-ms="{MIN_DISPLAY_MS}"' in page.get_data(as_text=True) and MIN_DISPLAY_MS >= 300


def test_the_relation_list_names_shapes_as_the_prompt_does():
    """A cross the prompt calls a "plus sign" and a circle it calls a "disc" keep those names; the longest word that
    matches wins ("five-pointed star" over "star"); a word the prompt does not use falls back to the shape."""
    prompt = "The red plus sign is left of the blue disc. A green five-pointed star. A pink square."
    assert shape_name("red", "cross", prompt) == "red plus sign"
    assert shape_name("blue", "circle", prompt) == "blue disc"
    assert shape_name("green", "star", prompt) == "green five-pointed star"
    assert shape_name("pink", "square", prompt) == "pink square"
    assert shape_name("cyan", "cross", prompt) == "cyan cross"
    relation = {"kind": "left_of", "subjects": ["red", "blue"], "region": None}
    names = {"red": shape_name("red", "cross", prompt), "blue": shape_name("blue", "circle", prompt)}
    assert relation_text(relation, names) == "red plus sign left of blue disc"


def test_the_served_relations_use_the_prompts_shape_words(reviewable):
    """In every served relation line, each object ("red plus sign") is named with the words the pair's prompt uses
    for it: the longest shape word that follows the colour in the line also follows it in the prompt."""
    shape_words = sorted({word for words in SHAPE_WORDS.values() for word in words}, key=len, reverse=True)
    named = 0
    for pair in load_review_pairs(reviewable, all_pairs=True):
        prompt = pair.prompt.lower()
        for line, colour in itertools.product(pair.relations, COLOURS):
            word = next((word for word in shape_words if f"{colour} {word}" in line), None)
            if word is not None:
                assert f"{colour} {word}" in prompt, (pair.prompt, line)
                named += 1
    assert named >= 60  # every pair states at least one relation between named objects


@pytest.mark.parametrize(
    ("host", "port", "message"),
    [
        ("127.0.0.1", 99999, "--port must be 1 to 65535 .*got 99999"),
        ("127.0.0.1", -5, "--port must be 1 to 65535 .*got -5"),
        ("no-such-host.invalid", 8765, "--host 'no-such-host.invalid' does not resolve"),
    ],
)
def test_a_bad_port_or_host_gets_one_clear_error(reviewable, tmp_path, capsys, host, port, message):
    with pytest.raises(ReviewError, match=message):
        serve(reviewable, host=host, port=port, db_path=tmp_path / "r.sqlite")
    assert main(["review", str(reviewable), "--host", host, "--port", str(port), "--db", str(tmp_path / "d")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert re.search(message, line)
