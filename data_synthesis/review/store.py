"""Review decisions in SQLite: one row per decision, with the reviewer, the pair, what they chose and which side
showed the perfect image, so that a decision means the same whatever order the images were shown in.

Concurrency: every call opens its own connection (safe across threads and forked processes), the database runs in
WAL mode (readers never block the one writer), and each write is one statement in its own transaction with a busy
timeout, so reviewers working at once queue for a few milliseconds instead of losing a decision.

A decision may carry a `reason`: why the reviewer decided so, in a word. The SpatialWorld oracle reviewing as
`oracle` (`data_synthesis.oracle_review`) records the first check a pair fails there (`None` when it accepts); the
review app leaves it empty. Databases written before the column existed gain it on first open.

Undo supersedes instead of deleting: the row gets `undone_at`, and only rows without it count. A partial unique
index allows at most one counting decision per (reviewer, pair); deciding a pair twice is refused.

A `secrets` table keeps random keys across starts: the review app's key for which side shows the perfect image.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from shared.io import stable_seed

CHOICES = ("left", "right", "neither", "both", "flag")  # what the reviewer says about the two images as shown
VERDICTS = ("perfect", "perturbed", "neither", "both", "flag")  # the same, independent of the order shown
SIDES = ("left", "right")
DB_NAME = "review.sqlite"  # in the dataset dir, unless told otherwise
ORACLE_REVIEWER = "oracle"  # the SpatialWorld oracle's name as a reviewer (data_synthesis.oracle_review)
BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    reviewer TEXT NOT NULL,
    pair_id TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('left', 'right', 'neither', 'both', 'flag')),
    perfect_side TEXT NOT NULL CHECK (perfect_side IN ('left', 'right')),
    verdict TEXT NOT NULL CHECK (verdict IN ('perfect', 'perturbed', 'neither', 'both', 'flag')),
    decided_at TEXT NOT NULL,
    undone_at TEXT,
    reason TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS one_counting_decision ON decisions (reviewer, pair_id) WHERE undone_at IS NULL;
CREATE INDEX IF NOT EXISTS by_reviewer ON decisions (reviewer, id);
CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);
"""
_COLUMNS = "id, reviewer, pair_id, choice, perfect_side, verdict, decided_at, undone_at, reason"


class Decision(NamedTuple):
    id: int
    reviewer: str
    pair_id: str
    choice: str  # one of CHOICES: left/right as shown to this reviewer
    perfect_side: str  # the side the perfect image was shown on
    verdict: str  # one of VERDICTS: "perfect" when the reviewer chose the perfect image
    decided_at: str  # ISO 8601, UTC
    undone_at: str | None  # set by undo; such a decision no longer counts
    reason: str | None = None  # why (the oracle's failed check); None for people


class ReviewError(ValueError):
    """A review or export that cannot be carried out: nothing to review, missing images or decisions, a bad
    reviewer name or output dir."""


class AlreadyDecided(ValueError):
    """The reviewer already has a counting decision for this pair (undo it first)."""


def perfect_side(pair_id: str, reviewer: str) -> str:
    """The side the perfect image is shown on: random-looking, fixed per (pair, reviewer), and computable by anyone
    who knows both (the oracle's reviews use it; people get `shown_perfect_side`)."""
    return SIDES[stable_seed("review-side", pair_id, reviewer) % 2]


SIDE_KEY = "review-side"  # the name of the side key among the database's secrets (`ReviewStore.secret`)


def shown_perfect_side(side_key: bytes, pair_id: str, reviewer: str) -> str:
    """The side the review app and the Label Studio tasks show the perfect image on: a keyed hash of pair and
    reviewer, so fixed per (pair, reviewer) for a given database but unknowable without `side_key`
    (`ReviewStore.secret(SIDE_KEY)`)."""
    digest = hmac.new(side_key, f"{pair_id}\0{reviewer}".encode(), hashlib.sha256).digest()
    return SIDES[digest[0] % 2]


def verdict_of(choice: str, shown_perfect_side: str) -> str:
    """What a choice says about the pair: left/right become perfect/perturbed, the others stay as they are."""
    if choice not in CHOICES:
        raise ValueError(f"decision must be one of {', '.join(CHOICES)}; got {choice!r}")
    if choice in SIDES:
        return "perfect" if choice == shown_perfect_side else "perturbed"
    return choice


def existing_db(dataset_dir: str | os.PathLike, db_path: str | os.PathLike | None = None) -> Path:
    """The decisions database of a review of `dataset_dir` (default DIR/review.sqlite), which must exist."""
    path = Path(dataset_dir) / DB_NAME if db_path is None else Path(db_path)
    if not path.is_file():
        raise ReviewError(f"{path} is missing: no decisions yet (review with `python -m data_synthesis review`)")
    return path


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class ReviewStore:
    """The decisions database at `path` (created on first use)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        with self._connect() as connection:
            connection.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the database file
            connection.executescript(_SCHEMA)
            columns = {row[1] for row in connection.execute("PRAGMA table_info(decisions)")}
            if "reason" not in columns:  # a database from before the reason column
                connection.execute("ALTER TABLE decisions ADD COLUMN reason TEXT")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: autocommit, so each statement is its own transaction and holds the lock briefly
        connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            yield connection
        finally:
            connection.close()

    def decide(
        self, *, reviewer: str, pair_id: str, choice: str, shown_perfect_side: str, reason: str | None = None
    ) -> Decision:
        """Record a decision (with an optional `reason`). Raises AlreadyDecided if this reviewer has a counting
        decision for the pair."""
        if shown_perfect_side not in SIDES:
            raise ValueError(f"perfect side must be left or right; got {shown_perfect_side!r}")
        verdict = verdict_of(choice, shown_perfect_side)
        try:
            with self._connect() as connection:
                row = connection.execute(
                    f"INSERT INTO decisions (reviewer, pair_id, choice, perfect_side, verdict, decided_at, reason) "
                    f"VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING {_COLUMNS}",
                    (reviewer, pair_id, choice, shown_perfect_side, verdict, _now(), reason),
                ).fetchone()
        except sqlite3.IntegrityError as error:
            raise AlreadyDecided(f"{reviewer} has already decided pair {pair_id}; undo that decision first") from error
        return Decision(*row)

    def undo(self, reviewer: str) -> Decision | None:
        """Supersede the reviewer's latest counting decision; None if there is none."""
        with self._connect() as connection:
            row = connection.execute(
                f"UPDATE decisions SET undone_at = ? WHERE id = (SELECT id FROM decisions WHERE reviewer = ? "
                f"AND undone_at IS NULL ORDER BY id DESC LIMIT 1) RETURNING {_COLUMNS}",
                (_now(), reviewer),
            ).fetchone()
        return None if row is None else Decision(*row)

    def decisions(self, reviewer: str | None = None, *, include_undone: bool = False) -> list[Decision]:
        """Decisions in the order they were made: the counting ones of `reviewer` (or of everyone)."""
        where, params = [], []
        if reviewer is not None:
            where.append("reviewer = ?")
            params.append(reviewer)
        if not include_undone:
            where.append("undone_at IS NULL")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        with self._connect() as connection:
            rows = connection.execute(f"SELECT {_COLUMNS} FROM decisions{clause} ORDER BY id", params).fetchall()
        return [Decision(*row) for row in rows]

    def latest(self, reviewer: str) -> Decision | None:
        """The reviewer's latest counting decision (the one undo would supersede)."""
        with self._connect() as connection:
            row = connection.execute(
                f"SELECT {_COLUMNS} FROM decisions WHERE reviewer = ? AND undone_at IS NULL ORDER BY id DESC LIMIT 1",
                (reviewer,),
            ).fetchone()
        return None if row is None else Decision(*row)

    def secret(self, name: str) -> bytes:
        """A random 32-byte key kept in the database under `name`: made on first use, the same for every process
        and start after that (the first writer wins a race)."""
        with self._connect() as connection:
            connection.execute(
                "INSERT OR IGNORE INTO secrets (name, value) VALUES (?, ?)", (name, secrets.token_bytes(32))
            )
            (value,) = connection.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()
        return value

    def decided_pairs(self, reviewer: str) -> set[str]:
        """Pairs the reviewer has a counting decision for."""
        with self._connect() as connection:
            rows = connection.execute(
                "SELECT pair_id FROM decisions WHERE reviewer = ? AND undone_at IS NULL", (reviewer,)
            ).fetchall()
        return {pair_id for (pair_id,) in rows}
