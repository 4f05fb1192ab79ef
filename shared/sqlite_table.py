"""One SQLite table of text rows by key, shared by threads: the store under the chat cache (`shared.chat`) and the
benchmark judge cache (`benchmarks.cache`).

WAL mode (readers never block the writer, and other processes may read while one writes), one connection shared
under a lock (sqlite3 connections are not thread-safe), a 60 s busy timeout, and one commit per write, so a killed
process loses at most the row it was writing.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path


class SQLiteTable:
    """Table `name` of (key TEXT PRIMARY KEY, *columns) in the database at `path` (created on first use).

    columns: SQL column definitions ("answer TEXT NOT NULL"); `what` names the store in the error raised (as
    `error`) when the file is not a usable SQLite database."""

    def __init__(
        self,
        path: str | os.PathLike,
        name: str,
        columns: Sequence[str],
        *,
        what: str,
        error: type[Exception] = ValueError,
    ) -> None:
        self.path, self.name = Path(path), name
        self.columns = [definition.split()[0] for definition in columns]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._connection = sqlite3.connect(self.path, check_same_thread=False, timeout=60)
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute(f"CREATE TABLE IF NOT EXISTS {name} (key TEXT PRIMARY KEY, {', '.join(columns)})")
            self._connection.commit()
        except sqlite3.DatabaseError as failure:
            raise error(f"{what} {self.path} is not a usable SQLite database: {failure}") from None
        self._lock = threading.Lock()

    def get(self, key: str, column: str) -> str | None:
        """The row's value in `column`, or None when there is no row for `key`."""
        if column not in self.columns:
            raise KeyError(f"{self.name} has no column {column!r}; it has {self.columns}")
        with self._lock:
            row = self._connection.execute(f"SELECT {column} FROM {self.name} WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def put(self, key: str, values: Sequence[str | None]) -> None:
        """Insert or replace the row of `key` (values in column order) and commit."""
        if len(values) != len(self.columns):
            raise ValueError(f"{self.name} has {len(self.columns)} columns {self.columns}, got {len(values)} values")
        marks = ", ".join("?" * (len(values) + 1))
        with self._lock:
            self._connection.execute(f"INSERT OR REPLACE INTO {self.name} VALUES ({marks})", (key, *values))
            self._connection.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._connection.execute(f"SELECT COUNT(*) FROM {self.name}").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._connection.close()
