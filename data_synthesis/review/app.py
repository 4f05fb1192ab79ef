"""`python -m data_synthesis review DIR`: a small Flask app in which people judge the pairs of a dataset dir.

The page shows the prompt, its stated relations and the two images side by side, the perfect one on a side fixed
per (pair, reviewer) by a secret key kept in the decisions database (`store.shown_perfect_side`), so that neither the
page's script nor a reviewer with this source can work it out from the pair id and reviewer name (the key-less
`store.perfect_side` could be). Nothing else tells the images apart but their pixels: each is served under an opaque
id (a keyed hash of pair and side, new at every start), without a file name, modification date or mtime-based ETag
(the ETag is a hash of the bytes). The reviewer says which image follows the prompt (left/right), neither, both, or
flags the pair; keyboard shortcuts, progress and undo of the last decision are in `static/review.js`.

One pair per keypress: the page ignores auto-repeated keys and any decision until both images have loaded and
`min_display_ms` has passed; the server refuses (429) a decision on a pair it served to that reviewer less than
`min_display_ms` ago, which a page that waited can never send. Request bodies over `MAX_BODY_BYTES` get 413, ids
over `MAX_ID_CHARS` 400, neither echoed back.

Security: on a loopback address anyone on the machine may review. Bound to any other address, every request needs
the access token (from $SPATIALSCORE_REVIEW_TOKEN, or generated and printed once at start): typed into a login
form, kept in an HttpOnly, SameSite=Strict cookie, or sent as `Authorization: Bearer`; it is compared in constant
time and never appears in a URL, so the access log never holds it. API writes accept JSON bodies only, which a
cross-site form cannot send; without a token, requests must name a loopback Host (no DNS rebinding).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import secrets
import socket
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from flask import Flask, Response, jsonify, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

from data_synthesis.prompts import SHAPE_WORDS
from data_synthesis.review.store import (
    CHOICES,
    DB_NAME,
    ORACLE_REVIEWER,
    SIDE_KEY,
    SIDES,
    AlreadyDecided,
    Decision,
    ReviewError,
    ReviewStore,
    shown_perfect_side,
)
from data_synthesis.scene import Scene, SceneError
from data_synthesis.verify import load_pairs
from shared.net import is_loopback

TOKEN_ENV = "SPATIALSCORE_REVIEW_TOKEN"
TOKEN_COOKIE = "review_token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")
REVIEWER_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
MAX_BODY_BYTES = 16 * 1024  # a decision is a few hundred bytes
MAX_ID_CHARS = 256  # pair ids, image ids and reviewer names longer than this are refused unread
MIN_DISPLAY_MS = 400  # a pair must be on screen this long before it may be decided (page and server)


class ReviewPair(NamedTuple):
    pair_id: str
    prompt: str
    relations: list[str]  # the stated relations, one readable line each
    perfect_image: Path
    perturbed_image: Path


def relation_text(relation: dict, names: dict[str, str]) -> str:
    """A stated relation (its `to_dict` form) as a short line, objects by name: "green star left of pink hexagon",
    "green star in region: left half". `names` maps an object's colour (its identity) to its name."""
    words = relation["kind"].replace("_", " ")
    subjects = [names.get(colour, colour) for colour in relation["subjects"]]
    if relation.get("region"):
        return f"{subjects[0]} {words}: {relation['region'].replace('_', ' ')}"
    if len(subjects) == 3:
        return f"{subjects[0]} {words} {subjects[1]} and {subjects[2]}"
    return " ".join([subjects[0], words, *subjects[1:]])


def shape_name(colour: str, shape: str, prompt: str) -> str:
    """The name the prompt gives an object: the word for its shape the prompt uses after its colour ("plus sign"
    for a cross, "disc" for a circle), the longest if several match; the shape itself when none does."""
    words = SHAPE_WORDS.get(shape, (shape.replace("_", " "),))
    used = [word for word in words if re.search(rf"\b{re.escape(colour)} {re.escape(word)}\b", prompt, re.IGNORECASE)]
    return f"{colour} {max(used, key=len) if used else words[0]}"


def load_review_pairs(
    dataset_dir: str | os.PathLike,
    *,
    all_pairs: bool = False,
    oracle_accepted: bool = False,
    db_path: str | os.PathLike | None = None,
) -> list[ReviewPair]:
    """The pairs to review in the order they are served: those with review_status "unreviewed" (with
    `all_pairs`, every pair, the unreviewed first; with `oracle_accepted`, the pairs the SpatialWorld oracle
    accepted in the decisions at `db_path`, default DIR/review.sqlite, whatever their status: people review on
    top of the oracle), each in dataset order. One clear error if the dir is not a dataset dir (DatasetError), has
    nothing to review or lacks image files (ReviewError)."""
    dataset_dir = Path(dataset_dir)
    _, dataset = load_pairs(dataset_dir)
    unreviewed = dataset["review_status"] == "unreviewed"
    if oracle_accepted:
        path = dataset_dir / DB_NAME if db_path is None else Path(db_path)
        decisions = ReviewStore(path).decisions(ORACLE_REVIEWER) if path.is_file() else []
        accepted = {decision.pair_id for decision in decisions if decision.verdict == "perfect"}
        if not accepted:
            raise ReviewError(
                f"{path} holds no pair the oracle accepted ({len(decisions)} oracle decisions); run "
                f"`python -m data_synthesis oracle-review {dataset_dir}` first"
            )
        frame = dataset[dataset["pair_id"].isin(accepted)]
    elif all_pairs:
        frame = dataset.assign(_later=~unreviewed).sort_values("_later", kind="stable")
    else:
        frame = dataset[unreviewed]
    if frame.empty:
        statuses = Counter(dataset["review_status"])
        found = ", ".join(f"{count} {status!r}" for status, count in sorted(statuses.items())) or "no pairs"
        raise ReviewError(
            f"{dataset_dir} has no pairs with review_status 'unreviewed' (it has {found}); "
            "pass --all-pairs to review them anyway"
        )
    pairs, missing = [], []
    columns = ["pair_id", "prompt", "perfect_scene", "stated_relations", "perfect_image", "perturbed_image"]
    for row in frame[columns].itertuples():
        try:
            names = {
                o.colour: shape_name(o.colour, o.shape, row.prompt) for o in Scene.from_json(row.perfect_scene).objects
            }
            relations = [relation_text(r, names) for r in json.loads(row.stated_relations)]
        except (SceneError, json.JSONDecodeError, KeyError, TypeError, IndexError) as error:
            raise ReviewError(
                f"{dataset_dir}/pairs.parquet: pair {row.pair_id} has a malformed scene or stated relations: {error}"
            ) from error
        images = (dataset_dir / row.perfect_image, dataset_dir / row.perturbed_image)
        missing.extend(str(path) for path in images if not path.is_file())
        pairs.append(ReviewPair(row.pair_id, row.prompt, relations, *images))
    if missing:
        raise ReviewError(
            f"{dataset_dir}: {len(missing)} image files are missing (first: {missing[0]}); "
            f"check the dir with `python -m data_synthesis verify {dataset_dir}`"
        )
    return pairs


def check_reviewer(name: str) -> str:
    if not REVIEWER_PATTERN.fullmatch(name):
        shown = name if len(name) <= 80 else f"{name[:40]}... ({len(name)} characters)"
        raise ReviewError(f"reviewer name must be 1 to 64 letters, digits or _.@- ; got {shown!r}")
    return name


def access_token(host: str, environ: Mapping[str, str]) -> tuple[str | None, bool]:
    """The token the server at `host` requires, and whether it was generated: the value of $SPATIALSCORE_REVIEW_TOKEN
    if set, else a new random one off loopback, else none."""
    if environ.get(TOKEN_ENV):
        return environ[TOKEN_ENV], False
    if is_loopback(host):
        return None, False
    return secrets.token_urlsafe(32), True


def create_app(
    dataset_dir: str | os.PathLike,
    *,
    db_path: str | os.PathLike | None = None,
    reviewer: str | None = None,
    all_pairs: bool = False,
    oracle_accepted: bool = False,
    token: str | None = None,
    min_display_ms: int = MIN_DISPLAY_MS,
) -> Flask:
    """The review app over `dataset_dir`, with decisions in `db_path` (default DIR/review.sqlite). `reviewer` is
    the name used when the page URL gives none (`/?reviewer=NAME`); `token`, when given, is required on every
    request; a pair may be decided `min_display_ms` after it was served, not before."""
    dataset_dir = Path(dataset_dir)
    pairs = load_review_pairs(dataset_dir, all_pairs=all_pairs, oracle_accepted=oracle_accepted, db_path=db_path)
    by_id = {pair.pair_id: pair for pair in pairs}
    default_reviewer = None if reviewer is None else check_reviewer(reviewer)
    store = ReviewStore(dataset_dir / DB_NAME if db_path is None else db_path)
    side_key = store.secret(SIDE_KEY)
    served_at: dict[tuple[str, str], float] = {}  # (reviewer, pair id) -> time.monotonic() it was last served
    app = Flask(__name__)
    app.config.update(REVIEW_STORE=store, REVIEW_PAIRS=pairs, MAX_CONTENT_LENGTH=MAX_BODY_BYTES)
    image_key = secrets.token_bytes(32)  # image ids change at every start: nothing to learn across sessions
    image_ids = {
        hmac.new(image_key, f"{pair.pair_id}\0{side}".encode(), hashlib.sha256).hexdigest()[:32]: (pair, side)
        for pair in pairs
        for side in SIDES
    }
    id_of = {(pair.pair_id, side): image_id for image_id, (pair, side) in image_ids.items()}
    if token is None:  # loopback only: refuse other Host names, so a web page cannot reach the app by DNS rebinding
        app.config["TRUSTED_HOSTS"] = list(LOOPBACK_NAMES)

    def authorised() -> bool:
        supplied = request.cookies.get(TOKEN_COOKIE, "")
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            supplied = header.removeprefix("Bearer ")
        return hmac.compare_digest(supplied.encode(), token.encode())

    @app.before_request
    def refuse_long_ids():
        values = [*request.args.values(), *(request.view_args or {}).values()]
        if any(isinstance(v, str) and len(v) > MAX_ID_CHARS for v in values) or len(request.path) > 2 * MAX_ID_CHARS:
            return jsonify(error=f"an id or name in the request is longer than {MAX_ID_CHARS} characters"), 400
        return None

    @app.before_request
    def require_token():
        if token is None or request.endpoint in ("login", "static") or authorised():
            return None
        if request.path.startswith(("/api/", "/image/")):
            return jsonify(error="access token required"), 401
        return redirect(url_for("login", reviewer=request.args.get("reviewer")))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        return jsonify(error=error.description), error.code

    @app.errorhandler(ReviewError)
    def review_error(error: ReviewError):
        return jsonify(error=str(error)), 400

    @app.route("/login", methods=["GET", "POST"])
    def login():
        if token is None:
            return redirect(url_for("page"))
        if request.method == "POST":
            supplied = request.form.get("token", "")
            if hmac.compare_digest(supplied.encode(), token.encode()):
                response = redirect(url_for("page", reviewer=request.form.get("reviewer") or None))
                response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
                return response
            return render_template("login.html", wrong=True, reviewer=request.form.get("reviewer", "")), 403
        return render_template("login.html", wrong=False, reviewer=request.args.get("reviewer", ""))

    def reviewer_of(value: str | None) -> str:
        if value:
            return check_reviewer(value)
        if default_reviewer is None:
            raise ReviewError("no reviewer given: add ?reviewer=NAME, or start the server with --reviewer NAME")
        return default_reviewer

    def pair_json(pair: ReviewPair, name: str) -> dict:
        images = {side: url_for("image", image_id=id_of[pair.pair_id, side], reviewer=name) for side in SIDES}
        return {"pair_id": pair.pair_id, "prompt": pair.prompt, "relations": pair.relations, "images": images}

    def decision_json(decision: Decision | None) -> dict | None:
        if decision is None:
            return None
        return {"pair_id": decision.pair_id, "choice": decision.choice, "decided_at": decision.decided_at}

    def state(name: str, *, show: str | None = None) -> dict:
        """What the page shows: pair `show`, or the first pair the reviewer has not decided, and the one after
        (so the page can preload its images)."""
        decided = store.decided_pairs(name)
        undecided = (pair for pair in pairs if pair.pair_id not in decided and pair.pair_id != show)
        current = by_id[show] if show is not None else next(undecided, None)
        if current is not None:
            served_at[name, current.pair_id] = time.monotonic()
        upcoming = next(undecided, None)
        reviewed = sum(pair.pair_id in decided for pair in pairs)
        return {
            "reviewer": name,
            "pair": None if current is None else pair_json(current, name),
            "upcoming": None if upcoming is None else pair_json(upcoming, name)["images"],
            "progress": {"reviewed": reviewed, "total": len(pairs)},
            "last": decision_json(store.latest(name)),
        }

    def json_body() -> dict:
        body = request.get_json()  # 415 unless Content-Type is JSON, 400 if malformed
        if not isinstance(body, dict):
            raise ReviewError("the request body must be a JSON object")
        return body

    @app.get("/")
    def page():
        name = request.args.get("reviewer") or default_reviewer
        reviewer = None if name is None else check_reviewer(name)
        return render_template("review.html", reviewer=reviewer, total=len(pairs), min_display_ms=min_display_ms)

    @app.get("/api/state")
    def current_state():
        return jsonify(state(reviewer_of(request.args.get("reviewer"))))

    @app.post("/api/decide")
    def decide():
        body = json_body()
        name, pair_id, choice = reviewer_of(body.get("reviewer")), body.get("pair_id"), body.get("choice")
        if isinstance(pair_id, str) and len(pair_id) > MAX_ID_CHARS:
            return jsonify(error=f"pair id of {len(pair_id)} characters: at most {MAX_ID_CHARS}"), 400
        if not isinstance(pair_id, str) or pair_id not in by_id:
            return jsonify(error=f"unknown pair {pair_id!r}: not among the pairs under review"), 404
        if choice not in CHOICES:
            raise ReviewError(f"choice must be one of {', '.join(CHOICES)}; got {choice!r}")
        # a pair this server never served (a script, or a page from before a restart) has no time to check against
        shown_ms = 1000 * (time.monotonic() - served_at.get((name, pair_id), -math.inf))
        if shown_ms < min_display_ms:
            return jsonify(
                error=f"pair {pair_id} was shown {shown_ms:.0f} ms ago; a decision needs {min_display_ms} ms on "
                "screen (a held or doubled key?)"
            ), 429
        side = shown_perfect_side(side_key, pair_id, name)
        try:
            store.decide(reviewer=name, pair_id=pair_id, choice=choice, shown_perfect_side=side)
        except AlreadyDecided as error:
            return jsonify(error=str(error)), 409
        return jsonify(state(name))

    @app.post("/api/undo")
    def undo():
        name = reviewer_of(json_body().get("reviewer"))
        undone = store.undo(name)
        shown = undone.pair_id if undone is not None and undone.pair_id in by_id else None
        return jsonify({**state(name, show=shown), "undone": decision_json(undone)})

    @app.get("/image/<image_id>")
    def image(image_id: str):
        name = reviewer_of(request.args.get("reviewer"))
        if image_id not in image_ids:
            return jsonify(error="no such image"), 404
        pair, side = image_ids[image_id]
        path = pair.perfect_image if side == shown_perfect_side(side_key, pair.pair_id, name) else pair.perturbed_image
        data = path.read_bytes()
        # no file name, no Last-Modified, no mtime in the ETag: the perfect image is always written first
        response = Response(data, mimetype="image/png")
        response.headers["Cache-Control"] = "private, max-age=3600"
        response.set_etag(hashlib.sha256(data).hexdigest())
        return response.make_conditional(request)

    return app


def serve(
    dataset_dir: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    db_path: str | os.PathLike | None = None,
    reviewer: str | None = None,
    all_pairs: bool = False,
    oracle_accepted: bool = False,
) -> None:
    """Serve the review app until interrupted (threaded: several reviewers at once)."""
    if not 0 <= port <= 65535:
        raise ReviewError(f"--port must be 1 to 65535 (or 0 for a free port); got {port}")
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise ReviewError(f"--host {host!r} does not resolve to an address to listen on: {error}") from None
    token, generated = access_token(host, os.environ)
    app = create_app(
        dataset_dir,
        db_path=db_path,
        reviewer=reviewer,
        all_pairs=all_pairs,
        oracle_accepted=oracle_accepted,
        token=token,
    )
    try:
        server = make_server(host, port, app, threaded=True)
    except OSError as error:
        raise ReviewError(f"cannot listen on {host}:{port}: {error.strerror or error}") from error
    shown_host = f"[{host}]" if ":" in host else host
    query = "" if reviewer else "?reviewer=YOUR_NAME"
    print(
        f"reviewing {len(app.config['REVIEW_PAIRS'])} pairs of {dataset_dir}, decisions in "
        f"{app.config['REVIEW_STORE'].path}\nopen http://{shown_host}:{server.port}/{query}  (Ctrl-C stops)",
        flush=True,
    )
    if generated:
        print(f"access token (enter it on the page; set {TOKEN_ENV} to choose your own): {token}", flush=True)
    elif token is not None:
        print(f"access token required: the value of ${TOKEN_ENV}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
