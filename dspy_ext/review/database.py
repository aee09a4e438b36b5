"""The review store's SQLite file: its schema, one shared connection, transactions and settings.

Every part of the store (:mod:`~dspy_ext.review.items`, :mod:`~dspy_ext.review.labels`,
:mod:`~dspy_ext.review.criteria_store`) works on one :class:`ReviewDatabase`. Each write runs in its
own ``BEGIN IMMEDIATE`` transaction under one lock; SQLite's WAL journal lets a second process read
meanwhile.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from dspy_ext.review.records import ReviewError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    key TEXT PRIMARY KEY, input_id TEXT NOT NULL, inputs TEXT NOT NULL, outputs TEXT NOT NULL,
    gold TEXT, seq INTEGER NOT NULL, created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS items_input ON items(input_id);
CREATE TABLE IF NOT EXISTS samples (
    input_id TEXT NOT NULL, prompt_version TEXT NOT NULL, sample_index INTEGER NOT NULL,
    item_key TEXT NOT NULL REFERENCES items(key), created_at REAL NOT NULL,
    PRIMARY KEY (input_id, prompt_version, sample_index));
CREATE INDEX IF NOT EXISTS samples_item ON samples(item_key);
CREATE TABLE IF NOT EXISTS labels (
    item_key TEXT PRIMARY KEY REFERENCES items(key), grade TEXT, reason TEXT, correction TEXT,
    updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS criteria (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL, version INTEGER NOT NULL,
    archived INTEGER NOT NULL DEFAULT 0, chosen_check INTEGER, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS criterion_versions (
    criterion_id INTEGER NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL, description TEXT NOT NULL,
    created_at REAL NOT NULL, PRIMARY KEY (criterion_id, version));
CREATE TABLE IF NOT EXISTS checks (
    id INTEGER PRIMARY KEY, criterion_id INTEGER NOT NULL REFERENCES criteria(id), kind TEXT NOT NULL,
    argument TEXT NOT NULL, created_at REAL NOT NULL, UNIQUE (criterion_id, kind, argument));
CREATE TABLE IF NOT EXISTS check_results (
    check_id INTEGER NOT NULL, item_key TEXT NOT NULL, passed INTEGER, PRIMARY KEY (check_id, item_key));
CREATE TABLE IF NOT EXISTS judgements (
    item_key TEXT NOT NULL, criterion_id INTEGER NOT NULL, passed INTEGER NOT NULL,
    criterion_version INTEGER NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (item_key, criterion_id));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, client TEXT NOT NULL, kind TEXT NOT NULL, item_key TEXT,
    criterion_id INTEGER, before TEXT, after TEXT, undone INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS events_client ON events(client, undone, id);
"""


def dump_json(value: Any) -> str:
    """``value`` as the JSON text a column holds (keys sorted, non-ASCII kept)."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


class ReviewDatabase:
    """One SQLite review file, opened (and created with its folder) at the current schema version.

    Args:
        path: The SQLite file, or ``":memory:"``.

    Raises:
        ReviewError: The file holds another schema version.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        with self.lock:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA busy_timeout=30000")
            self.conn.executescript(_SCHEMA)
            version = self._read_meta("schema_version")
            if version is None:
                self._write_meta("schema_version", str(SCHEMA_VERSION))
            elif int(version) != SCHEMA_VERSION:
                raise ReviewError(f"{self.path}: review store schema {version}, this dspy-ext reads {SCHEMA_VERSION}")

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    def transaction(self) -> Transaction:
        """A write transaction; a nested one joins the outer one."""
        return Transaction(self.conn, self.lock)

    def get_meta(self, key: str) -> str | None:
        """A free-form store setting (e.g. ``"task"``)."""
        with self.lock:
            return self._read_meta(key)

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction():
            self._write_meta(key, value)

    def _read_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row["value"] if row else None

    def _write_meta(self, key: str, value: str) -> None:
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value),
        )


class Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` under the store lock; nested uses join the outer one."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.RLock) -> None:
        self.conn, self.lock, self.outer = conn, lock, False

    def __enter__(self) -> None:
        self.lock.acquire()
        self.outer = not self.conn.in_transaction
        if self.outer:
            self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type | None, *rest: object) -> None:
        try:
            if self.outer:
                self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.lock.release()
