"""The outputs under review: items (one distinct output of one input) and the samples that made them.

An *item* is keyed by a hash of its input and output; every time a program makes that output it is
recorded as a *sample* keyed by the input, the prompt version and the sample index. So an output that
is unchanged under a new prompt is the same item, and keeps its grade.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from dspy_ext.prompt_state import fingerprint_json
from dspy_ext.review.database import ReviewDatabase, dump_json
from dspy_ext.review.records import ItemSummary, ReviewError, ReviewItem, fields_text, input_id, item_key


class ItemTable:
    """Items and samples of one review database: recorded once, read in insertion order."""

    def __init__(self, db: ReviewDatabase) -> None:
        self.db = db

    # ---- writing --------------------------------------------------------------------------
    def add_output(
        self,
        inputs: Mapping[str, Any],
        outputs: Mapping[str, Any],
        prompt_version: str,
        sample_index: int,
        gold: Mapping[str, Any] | None,
    ) -> str:
        """Record one output as a sample of its item (made when new); returns the item key."""
        inputs, outputs = dict(inputs), dict(outputs)
        fingerprint_json(inputs), fingerprint_json(outputs)  # fails early on values JSON cannot hold
        key, iid, now = item_key(inputs, outputs), input_id(inputs), time.time()
        conn = self.db.conn
        with self.db.transaction():
            row = conn.execute("SELECT gold FROM items WHERE key=?", (key,)).fetchone()
            if row is None:
                seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM items").fetchone()[0]
                conn.execute(
                    "INSERT INTO items(key, input_id, inputs, outputs, gold, seq, created_at) VALUES(?,?,?,?,?,?,?)",
                    (key, iid, dump_json(inputs), dump_json(outputs), dump_json(gold) if gold else None, seq, now),
                )
            elif gold and row["gold"] is None:
                conn.execute("UPDATE items SET gold=? WHERE key=?", (dump_json(gold), key))
            # The first output recorded for a sample slot stays: re-running a collection resumes, it does not
            # replace what the reviewer already saw.
            conn.execute(
                "INSERT OR IGNORE INTO samples(input_id, prompt_version, sample_index, item_key, created_at) "
                "VALUES(?,?,?,?,?)",
                (iid, prompt_version, sample_index, key, now),
            )
        return key

    # ---- reading items ----------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        """Whether ``key`` names an item."""
        with self.db.lock:
            return self.db.conn.execute("SELECT 1 FROM items WHERE key=?", (key,)).fetchone() is not None

    def require(self, key: str) -> None:
        """Raise :class:`ReviewError` unless ``key`` names an item."""
        if not self.exists(key):
            raise ReviewError(f"no review item {key!r}")

    def has_sample(self, inputs: Mapping[str, Any], prompt_version: str, sample_index: int) -> bool:
        """Whether this input already has an output for this prompt version and sample index."""
        with self.db.lock:
            row = self.db.conn.execute(
                "SELECT 1 FROM samples WHERE input_id=? AND prompt_version=? AND sample_index=?",
                (input_id(inputs), prompt_version, sample_index),
            ).fetchone()
        return row is not None

    def item(self, key: str) -> ReviewItem:
        """One item with its labels; :class:`ReviewError` if unknown."""
        items = self._load("WHERE i.key=?", (key,))
        if not items:
            raise ReviewError(f"no review item {key!r}")
        return items[0]

    def items(self) -> list[ReviewItem]:
        """All items in insertion order."""
        return self._load("", ())

    def _load(self, where: str, params: tuple) -> list[ReviewItem]:
        with self.db.lock:
            rows = self.db.conn.execute(
                "SELECT i.*, l.grade, l.reason, l.correction FROM items i LEFT JOIN labels l ON l.item_key=i.key "
                f"{where} ORDER BY i.seq",
                params,
            ).fetchall()
            keys = [r["key"] for r in rows]
            key_filter, kparams = ("WHERE item_key=?", (keys[0],)) if len(keys) == 1 else ("", ())
            judgements = self._judgements(keys, key_filter, kparams)
            versions = self._prompt_versions(keys, key_filter, kparams)
        return [
            ReviewItem(
                key=r["key"],
                input_id=r["input_id"],
                inputs=json.loads(r["inputs"]),
                outputs=json.loads(r["outputs"]),
                gold=json.loads(r["gold"]) if r["gold"] else None,
                seq=r["seq"],
                grade=r["grade"],
                reason=r["reason"],
                correction=r["correction"],
                judgements=judgements[r["key"]],
                prompt_versions=versions[r["key"]],
            )
            for r in rows
        ]

    def _judgements(self, keys: list[str], key_filter: str, params: tuple) -> dict[str, dict[int, bool]]:
        """Item key -> criterion id -> the reviewer's mark, for ``keys``."""
        judgements: dict[str, dict[int, bool]] = {k: {} for k in keys}
        for j in self.db.conn.execute(f"SELECT item_key, criterion_id, passed FROM judgements {key_filter}", params):
            if j["item_key"] in judgements:
                judgements[j["item_key"]][j["criterion_id"]] = bool(j["passed"])
        return judgements

    def _prompt_versions(self, keys: list[str], key_filter: str, params: tuple) -> dict[str, list[str]]:
        """Item key -> the prompt versions that made it, first made first, for ``keys``."""
        versions: dict[str, list[str]] = {k: [] for k in keys}
        for s in self.db.conn.execute(
            f"SELECT item_key, prompt_version, MIN(created_at) AS first FROM samples {key_filter} "
            "GROUP BY item_key, prompt_version ORDER BY first",
            params,
        ):
            if s["item_key"] in versions:
                versions[s["item_key"]].append(s["prompt_version"])
        return versions

    def summaries(self) -> list[ItemSummary]:
        """Every item's key, input, order and grade, without decoding any JSON."""
        with self.db.lock:
            rows = self.db.conn.execute(
                "SELECT i.key, i.input_id, i.seq, l.grade FROM items i "
                "LEFT JOIN labels l ON l.item_key=i.key ORDER BY i.seq"
            ).fetchall()
        return [ItemSummary(r["key"], r["input_id"], r["seq"], r["grade"]) for r in rows]

    def output_texts(self, keys: Iterable[str] | None = None) -> dict[str, str]:
        """Item key -> output text (all items, or the given keys, read 500 at a time)."""
        with self.db.lock:
            if keys is None:
                rows = self.db.conn.execute("SELECT key, outputs FROM items").fetchall()
            else:
                wanted = list(keys)
                rows = []
                for start in range(0, len(wanted), 500):
                    chunk = wanted[start : start + 500]
                    rows += self.db.conn.execute(
                        f"SELECT key, outputs FROM items WHERE key IN ({', '.join('?' * len(chunk))})", chunk
                    ).fetchall()
        return {r["key"]: fields_text(json.loads(r["outputs"])) for r in rows}

    def progress(self) -> tuple[int, int]:
        """``(reviewed, total)`` items."""
        with self.db.lock:
            total = self.db.conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            reviewed = self.db.conn.execute("SELECT COUNT(*) FROM labels WHERE grade IS NOT NULL").fetchone()[0]
        return reviewed, total

    # ---- reading samples --------------------------------------------------------------------
    def samples_of_input(self, input_id_: str) -> list[dict[str, Any]]:
        """The samples of one input: ``{prompt_version, sample_index, item_key, grade}``, oldest first."""
        with self.db.lock:
            rows = self.db.conn.execute(
                "SELECT s.prompt_version, s.sample_index, s.item_key, l.grade FROM samples s "
                "LEFT JOIN labels l ON l.item_key=s.item_key WHERE s.input_id=? "
                "ORDER BY s.created_at, s.sample_index",
                (input_id_,),
            ).fetchall()
        return [dict(r) for r in rows]

    def latest_prompt_version(self) -> str | None:
        """The prompt version of the most recently recorded sample (``None`` for an empty store)."""
        with self.db.lock:
            row = self.db.conn.execute(
                "SELECT prompt_version FROM samples ORDER BY created_at DESC, rowid DESC LIMIT 1"
            ).fetchone()
        return row["prompt_version"] if row else None

    def changed_outputs(self, version: str) -> dict[str, list[str]]:
        """After-item key -> the before-item keys of the same input (graded first, then in order)."""
        with self.db.lock:
            rows = self.db.conn.execute(
                "SELECT s.input_id, s.prompt_version, s.item_key, i.seq, l.grade FROM samples s "
                "JOIN items i ON i.key = s.item_key LEFT JOIN labels l ON l.item_key = s.item_key"
            ).fetchall()
        after: dict[str, set[str]] = {}
        before: dict[str, dict[str, tuple[int, int]]] = {}
        for r in rows:
            if r["prompt_version"] == version:
                after.setdefault(r["input_id"], set()).add(r["item_key"])
            else:
                before.setdefault(r["input_id"], {})[r["item_key"]] = (r["grade"] is None, r["seq"])
        changed: dict[str, list[str]] = {}
        for input_, keys in after.items():
            earlier = before.get(input_, {})
            for key in keys:
                if earlier and key not in earlier:
                    changed[key] = sorted(earlier, key=earlier.__getitem__)
        return changed

    def sample_counts(self) -> dict[str, tuple[int, int]]:
        """Input id -> ``(samples, distinct outputs)`` over all prompt versions."""
        with self.db.lock:
            rows = self.db.conn.execute(
                "SELECT input_id, COUNT(*) AS n, COUNT(DISTINCT item_key) AS d FROM samples GROUP BY input_id"
            )
            return {r["input_id"]: (r["n"], r["d"]) for r in rows}
