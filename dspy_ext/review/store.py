"""The review store: outputs, human grades, critiques, corrections and criteria in one SQLite file.

Keys. An *item* is one distinct output for one input; its key is a hash of the
input and the output. Every time a program makes that output it is recorded as
a *sample* row keyed by the input, the prompt version and the sample index, so
the store holds the (input, output, prompt version) occurrences, while the
grade belongs to the (input, output) pair: an output that is unchanged under a
new prompt keeps its grade and is never asked again.

Writes are per field (a grade never overwrites a reason another tab wrote) and
each runs in its own transaction under one lock; SQLite's WAL journal lets a
second process read meanwhile. Every change is logged in ``events`` so that
undo works per browser tab (``client``).

The JSONL label format (:meth:`ReviewStore.export_jsonl`, :meth:`ReviewStore.import_jsonl`),
one object per line::

    {"input": {"input": "A gorgeous film."},      # dict of input fields (a string means {"input": s})
     "output": {"output": "positive"},            # dict of output fields (a string means {"output": s})
     "gold": {"output": "positive"},              # optional
     "grade": "good",                             # "good", "bad" or null (also accepted: pass/fail, 1/0, true/false)
     "reason": "…",                               # required when grade is bad
     "correction": "…",                           # optional corrected output text
     "criteria": {"one word": true},              # optional: criterion name -> passed
     "prompt_versions": ["3f2a…"]}                # optional: prompt versions that made the output

Example:
    >>> store = ReviewStore(":memory:")
    >>> key = store.add_output({"input": "great"}, {"output": "positive"}, prompt_version="v1")
    >>> store.set_grade(key, "good").grade
    'good'
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dspy_ext.prompt_state import canonical_json, short_hash
from dspy_ext.review.criteria import CheckSpec

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
GRADES = ("good", "bad")
MAX_TEXT = 20_000

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


class ReviewError(ValueError):
    """A review action that cannot be done (unknown item, Bad without a reason, bad label row...)."""


def input_id(inputs: Mapping[str, Any]) -> str:
    """The key of an input: a hash of its fields."""
    return short_hash(dict(inputs), 16)


def item_key(inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> str:
    """The key of an item: a hash of the input and the output (not of the prompt version)."""
    return short_hash({"input": dict(inputs), "output": dict(outputs)}, 24)


def fields_text(values: Mapping[str, Any]) -> str:
    """Fields as one text: the value alone for one field, ``name: value`` lines for several."""
    if len(values) == 1:
        return str(next(iter(values.values())))
    return "\n".join(f"{k}: {v}" for k, v in values.items())


@dataclass
class ReviewItem:
    """One distinct output for one input, with its human labels.

    Attributes:
        key: Hash of input + output.
        input_id: Hash of the input.
        inputs: Input fields.
        outputs: Output fields.
        gold: Gold output fields, when the data has them.
        seq: Insertion order (1-based).
        grade: ``"good"``, ``"bad"`` or ``None`` (not reviewed).
        reason: The reviewer's critique (required for Bad).
        correction: A corrected output text.
        judgements: Criterion id -> passed, as marked by the reviewer.
        prompt_versions: The prompt versions that made this output.
    """

    key: str
    input_id: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    gold: dict[str, Any] | None
    seq: int
    grade: str | None = None
    reason: str | None = None
    correction: str | None = None
    judgements: dict[int, bool] = field(default_factory=dict)
    prompt_versions: list[str] = field(default_factory=list)

    @property
    def input_text(self) -> str:
        return fields_text(self.inputs)

    @property
    def output_text(self) -> str:
        return fields_text(self.outputs)

    @property
    def gold_text(self) -> str | None:
        return fields_text(self.gold) if self.gold else None

    @property
    def reviewed(self) -> bool:
        return self.grade is not None

    def corrected_outputs(self) -> dict[str, Any] | None:
        """The correction as output fields, or ``None`` when there is none or it cannot be read."""
        if not self.correction:
            return None
        names = list(self.outputs)
        if len(names) == 1:
            return {names[0]: self.correction}
        values: dict[str, Any] = {}
        for line in self.correction.splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() in names:
                values[name.strip()] = value.strip()
        return values if set(values) == set(names) else None


@dataclass(frozen=True)
class ItemSummary:
    """The navigation fields of an item (no JSON decoded)."""

    key: str
    input_id: str
    seq: int
    grade: str | None


@dataclass(frozen=True)
class CandidateCheck:
    """A candidate automatic check of a criterion."""

    id: int
    criterion_id: int
    spec: CheckSpec


@dataclass
class Criterion:
    """A criterion with its current version and candidate checks.

    Attributes:
        id: Stable id (a rename keeps it).
        name: Short name.
        description: One-line description (what a good output does).
        version: Incremented on every edit.
        archived: Hidden from the page; its judgements stay.
        checks: Candidate automatic checks.
        chosen_check_id: The candidate the last alignment report chose, if any.
    """

    id: int
    name: str
    description: str
    version: int
    archived: bool
    checks: list[CandidateCheck]
    chosen_check_id: int | None

    @property
    def chosen_check(self) -> CandidateCheck | None:
        return next((c for c in self.checks if c.id == self.chosen_check_id), None)


@dataclass(frozen=True)
class LabeledExample:
    """An output a person accepted (Good) or corrected: usable as a labeled example."""

    inputs: dict[str, Any]
    outputs: dict[str, Any]
    corrected: bool
    item_key: str


@dataclass(frozen=True)
class Critique:
    """A Bad grade with its reason (a textual gradient for an optimizer)."""

    inputs: dict[str, Any]
    output: dict[str, Any]
    reason: str
    correction: str | None
    failed_criteria: tuple[str, ...]
    prompt_versions: tuple[str, ...]
    item_key: str


@dataclass(frozen=True)
class ImportSummary:
    """What :meth:`ReviewStore.import_jsonl` did."""

    rows: int
    added_items: int
    graded: int
    skipped_graded: int


class ReviewStore:
    """The SQLite review store.

    Args:
        path: The SQLite file (created with its folder), or ``":memory:"``.

    Example:
        >>> store = ReviewStore("runs/review-sentiment.sqlite")   # doctest: +SKIP
        >>> store.progress()                                        # doctest: +SKIP
        (12, 40)
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=30000")
            self._conn.executescript(_SCHEMA)
            version = self._meta("schema_version")
            if version is None:
                self._set_meta("schema_version", str(SCHEMA_VERSION))
            elif int(version) != SCHEMA_VERSION:
                raise ReviewError(f"{self.path}: review store schema {version}, this dspy-ext reads {SCHEMA_VERSION}")

    # ---- plumbing -----------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ReviewStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tx(self) -> _Transaction:
        return _Transaction(self._conn, self._lock)

    def _meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row["value"] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self._conn.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value),
        )

    def get_meta(self, key: str) -> str | None:
        """A free-form store setting (e.g. ``"task"``)."""
        with self._lock:
            return self._meta(key)

    def set_meta(self, key: str, value: str) -> None:
        with self._tx():
            self._set_meta(key, value)

    # ---- items --------------------------------------------------------------------------
    def add_output(
        self,
        inputs: Mapping[str, Any],
        outputs: Mapping[str, Any],
        *,
        prompt_version: str,
        sample_index: int = 0,
        gold: Mapping[str, Any] | None = None,
    ) -> str:
        """Record one output of a program run; an existing item (same input and output) is reused.

        Args:
            inputs: Input fields.
            outputs: Output fields.
            prompt_version: A hash of the prompt that made the output.
            sample_index: Which of the K samples this is.
            gold: Gold output fields, if known.

        Returns:
            The item key.
        """
        inputs, outputs = dict(inputs), dict(outputs)
        canonical_json(inputs), canonical_json(outputs)  # fails early on values JSON cannot hold
        key, iid, now = item_key(inputs, outputs), input_id(inputs), time.time()
        with self._tx():
            row = self._conn.execute("SELECT gold FROM items WHERE key=?", (key,)).fetchone()
            if row is None:
                seq = self._conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM items").fetchone()[0]
                self._conn.execute(
                    "INSERT INTO items(key, input_id, inputs, outputs, gold, seq, created_at) VALUES(?,?,?,?,?,?,?)",
                    (key, iid, _dump(inputs), _dump(outputs), _dump(gold) if gold else None, seq, now),
                )
            elif gold and row["gold"] is None:
                self._conn.execute("UPDATE items SET gold=? WHERE key=?", (_dump(gold), key))
            # The first output recorded for a sample slot stays: re-running a collection resumes, it does not
            # replace what the reviewer already saw.
            self._conn.execute(
                "INSERT OR IGNORE INTO samples(input_id, prompt_version, sample_index, item_key, created_at) "
                "VALUES(?,?,?,?,?)",
                (iid, prompt_version, sample_index, key, now),
            )
        return key

    def has_sample(self, inputs: Mapping[str, Any], prompt_version: str, sample_index: int) -> bool:
        """Whether this input already has an output for this prompt version and sample index."""
        with self._lock:
            row = self._conn.execute(
                "SELECT 1 FROM samples WHERE input_id=? AND prompt_version=? AND sample_index=?",
                (input_id(inputs), prompt_version, sample_index),
            ).fetchone()
        return row is not None

    def item(self, key: str) -> ReviewItem:
        """One item with its labels, judgements and prompt versions; :class:`ReviewError` if unknown."""
        items = self._load_items("WHERE i.key=?", (key,))
        if not items:
            raise ReviewError(f"no review item {key!r}")
        return items[0]

    def items(self) -> list[ReviewItem]:
        """All items in insertion order."""
        return self._load_items("", ())

    def _load_items(self, where: str, params: tuple) -> list[ReviewItem]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT i.*, l.grade, l.reason, l.correction FROM items i LEFT JOIN labels l ON l.item_key=i.key "
                f"{where} ORDER BY i.seq",
                params,
            ).fetchall()
            keys = [r["key"] for r in rows]
            judgements: dict[str, dict[int, bool]] = {k: {} for k in keys}
            versions: dict[str, list[str]] = {k: [] for k in keys}
            key_filter, kparams = ("WHERE item_key=?", (keys[0],)) if len(keys) == 1 else ("", ())
            for j in self._conn.execute(f"SELECT item_key, criterion_id, passed FROM judgements {key_filter}", kparams):
                if j["item_key"] in judgements:
                    judgements[j["item_key"]][j["criterion_id"]] = bool(j["passed"])
            for s in self._conn.execute(
                f"SELECT item_key, prompt_version, MIN(created_at) AS first FROM samples {key_filter} "
                "GROUP BY item_key, prompt_version ORDER BY first",
                kparams,
            ):
                if s["item_key"] in versions:
                    versions[s["item_key"]].append(s["prompt_version"])
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

    def summaries(self) -> list[ItemSummary]:
        """Every item's key, input, order and grade, without decoding any JSON (fast navigation)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT i.key, i.input_id, i.seq, l.grade FROM items i "
                "LEFT JOIN labels l ON l.item_key=i.key ORDER BY i.seq"
            ).fetchall()
        return [ItemSummary(r["key"], r["input_id"], r["seq"], r["grade"]) for r in rows]

    def output_texts(self, keys: Iterable[str] | None = None) -> dict[str, str]:
        """Item key -> output text (all items, or the given keys). Outputs never change for a key."""
        with self._lock:
            if keys is None:
                rows = self._conn.execute("SELECT key, outputs FROM items").fetchall()
            else:
                wanted = list(keys)
                rows = []
                for start in range(0, len(wanted), 500):
                    chunk = wanted[start : start + 500]
                    rows += self._conn.execute(
                        f"SELECT key, outputs FROM items WHERE key IN ({', '.join('?' * len(chunk))})", chunk
                    ).fetchall()
        return {r["key"]: fields_text(json.loads(r["outputs"])) for r in rows}

    def judgements_of(self, criterion_id: int) -> dict[str, bool]:
        """Item key -> the reviewer's pass/fail mark for one criterion."""
        with self._lock:
            rows = self._conn.execute("SELECT item_key, passed FROM judgements WHERE criterion_id=?", (criterion_id,))
            return {r["item_key"]: bool(r["passed"]) for r in rows}

    def progress(self) -> tuple[int, int]:
        """``(reviewed, total)`` items."""
        with self._lock:
            total = self._conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            reviewed = self._conn.execute("SELECT COUNT(*) FROM labels WHERE grade IS NOT NULL").fetchone()[0]
        return reviewed, total

    def samples_of_input(self, input_id_: str) -> list[dict[str, Any]]:
        """The K samples of one input, per prompt version: ``{prompt_version, sample_index, item_key, grade}``."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT s.prompt_version, s.sample_index, s.item_key, l.grade FROM samples s "
                "LEFT JOIN labels l ON l.item_key=s.item_key WHERE s.input_id=? "
                "ORDER BY s.created_at, s.sample_index",
                (input_id_,),
            ).fetchall()
        return [dict(r) for r in rows]

    def latest_prompt_version(self) -> str | None:
        """The prompt version of the most recently recorded sample (``None`` for an empty store)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT prompt_version FROM samples ORDER BY created_at DESC, rowid DESC LIMIT 1"
            ).fetchone()
        return row["prompt_version"] if row else None

    def changed_outputs(self, version: str) -> dict[str, list[str]]:
        """The outputs prompt ``version`` changed: after-item key -> the before-item keys of the same input.

        An output of ``version`` is *changed* when another prompt version made some output for the
        same input but never this one. An unchanged output is the same item as before (same input,
        same output) and keeps its grade, so it is not listed. The before items come graded first,
        then in insertion order.

        Example:
            >>> store = ReviewStore(":memory:")
            >>> old = store.add_output({"input": "a"}, {"output": "x"}, prompt_version="v1")
            >>> new = store.add_output({"input": "a"}, {"output": "y"}, prompt_version="v2")
            >>> store.changed_outputs("v2") == {new: [old]}
            True
        """
        with self._lock:
            rows = self._conn.execute(
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
        """Input id -> ``(samples, distinct outputs)`` over all prompt versions (for the sampler)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT input_id, COUNT(*) AS n, COUNT(DISTINCT item_key) AS d FROM samples GROUP BY input_id"
            )
            return {r["input_id"]: (r["n"], r["d"]) for r in rows}

    # ---- labels -------------------------------------------------------------------------
    def _label_row(self, key: str) -> dict[str, Any]:
        if self._conn.execute("SELECT 1 FROM items WHERE key=?", (key,)).fetchone() is None:
            raise ReviewError(f"no review item {key!r}")
        row = self._conn.execute("SELECT grade, reason, correction FROM labels WHERE item_key=?", (key,)).fetchone()
        return dict(row) if row else {"grade": None, "reason": None, "correction": None}

    def _write_label(self, key: str, new: dict[str, Any], client: str, kind: str) -> None:
        old = self._label_row(key)
        changed = {k: v for k, v in new.items() if old.get(k) != v}
        if not changed:
            return
        sets = ", ".join(f"{k}=excluded.{k}" for k in changed)
        columns = ["item_key", *changed, "updated_at"]
        self._conn.execute(
            f"INSERT INTO labels({', '.join(columns)}) VALUES({', '.join('?' * len(columns))}) "
            f"ON CONFLICT(item_key) DO UPDATE SET {sets}, updated_at=excluded.updated_at",
            (key, *changed.values(), time.time()),
        )
        self._log(client, kind, key, None, {k: old.get(k) for k in changed}, changed)

    def set_grade(self, key: str, grade: str | None, reason: str | None = None, *, client: str = "api") -> ReviewItem:
        """Grade an item Good or Bad (or clear it with ``None``); a Bad grade needs a reason.

        Args:
            key: The item key.
            grade: ``"good"``, ``"bad"`` or ``None``.
            reason: The critique; required for Bad unless the item already has one. ``None`` keeps the
                current reason.
            client: Who wrote it (a browser tab id), for undo.

        Returns:
            The updated item.
        """
        if grade is not None and grade not in GRADES:
            raise ReviewError(f"grade must be one of {GRADES} or null, got {grade!r}")
        with self._tx():
            new: dict[str, Any] = {"grade": grade}
            if reason is not None:
                new["reason"] = _text(reason, "reason") or None
            current = new.get("reason", self._label_row(key)["reason"])
            if grade == "bad" and not current:
                raise ReviewError("a Bad grade needs a reason: write what is wrong")
            self._write_label(key, new, client, "grade")
        return self.item(key)

    def set_reason(self, key: str, reason: str, *, client: str = "api") -> ReviewItem:
        """Set the critique text; it cannot be emptied while the grade is Bad."""
        with self._tx():
            text = _text(reason, "reason") or None
            if text is None and self._label_row(key)["grade"] == "bad":
                raise ReviewError("a Bad grade needs a reason: it cannot be emptied")
            self._write_label(key, {"reason": text}, client, "reason")
        return self.item(key)

    def set_correction(self, key: str, correction: str | None, *, client: str = "api") -> ReviewItem:
        """Set (or clear with ``""``/``None``) the corrected output text."""
        with self._tx():
            self._write_label(key, {"correction": _text(correction or "", "correction") or None}, client, "correction")
        return self.item(key)

    def set_judgement(self, key: str, criterion_id: int, passed: bool | None, *, client: str = "api") -> ReviewItem:
        """Mark a criterion passed/failed on an item (``None`` clears the mark)."""
        with self._tx():
            self._label_row(key)  # the item must exist
            crit = self._conn.execute("SELECT version FROM criteria WHERE id=?", (criterion_id,)).fetchone()
            if crit is None:
                raise ReviewError(f"no criterion {criterion_id}")
            row = self._conn.execute(
                "SELECT passed FROM judgements WHERE item_key=? AND criterion_id=?", (key, criterion_id)
            ).fetchone()
            old = None if row is None else bool(row["passed"])
            if old == passed:
                return self.item(key)
            if passed is None:
                self._conn.execute("DELETE FROM judgements WHERE item_key=? AND criterion_id=?", (key, criterion_id))
            else:
                self._conn.execute(
                    "INSERT INTO judgements(item_key, criterion_id, passed, criterion_version, updated_at) "
                    "VALUES(?,?,?,?,?) ON CONFLICT(item_key, criterion_id) DO UPDATE SET passed=excluded.passed, "
                    "criterion_version=excluded.criterion_version, updated_at=excluded.updated_at",
                    (key, criterion_id, int(passed), crit["version"], time.time()),
                )
            self._log(client, "judgement", key, criterion_id, {"passed": old}, {"passed": passed})
        return self.item(key)

    # ---- undo ---------------------------------------------------------------------------
    def _log(
        self,
        client: str,
        kind: str,
        key: str | None,
        criterion_id: int | None,
        before: dict[str, Any],
        after: dict[str, Any],
    ) -> None:
        self._conn.execute(
            "INSERT INTO events(at, client, kind, item_key, criterion_id, before, after) VALUES(?,?,?,?,?,?,?)",
            (time.time(), client, kind, key, criterion_id, _dump(before), _dump(after)),
        )

    def undo(self, client: str) -> str | None:
        """Revert ``client``'s last not yet undone change to an item.

        A change that another client has overwritten since is not reverted (that would
        lose the other client's write): :class:`ReviewError` says so.

        Returns:
            The key of the item changed back, or ``None`` when there is nothing to undo.
        """
        with self._tx():
            event = self._conn.execute(
                "SELECT * FROM events WHERE client=? AND undone=0 AND kind != 'undo' ORDER BY id DESC LIMIT 1",
                (client,),
            ).fetchone()
            if event is None:
                return None
            before, after, key = json.loads(event["before"]), json.loads(event["after"]), event["item_key"]
            if event["kind"] == "judgement":
                row = self._conn.execute(
                    "SELECT passed FROM judgements WHERE item_key=? AND criterion_id=?", (key, event["criterion_id"])
                ).fetchone()
                current = {"passed": None if row is None else bool(row["passed"])}
            else:
                label = self._label_row(key)
                current = {k: label.get(k) for k in after}
            if current != after:
                raise ReviewError("cannot undo: the item was changed since (in another tab?)")
            self._conn.execute("UPDATE events SET undone=1 WHERE id=?", (event["id"],))
            if event["kind"] == "judgement":
                self.set_judgement(key, event["criterion_id"], before["passed"], client=f"undo:{client}")
            else:
                self._write_label(key, before, f"undo:{client}", "undo")
        return key

    # ---- criteria -----------------------------------------------------------------------
    def add_criterion(self, name: str, description: str = "", check: CheckSpec | None = None) -> Criterion:
        """Create a criterion (version 1), optionally with a first candidate check.

        Raises:
            ReviewError: Empty name or a name already used by an active criterion.
        """
        name, description = _text(name, "name", 60).strip(), _text(description, "description", 300).strip()
        if not name:
            raise ReviewError("a criterion needs a name")
        with self._tx():
            if self._conn.execute(
                "SELECT 1 FROM criteria WHERE lower(name)=lower(?) AND archived=0", (name,)
            ).fetchone():
                raise ReviewError(f"a criterion named {name!r} already exists")
            now = time.time()
            cid = self._conn.execute(
                "INSERT INTO criteria(name, description, version, created_at) VALUES(?,?,1,?)", (name, description, now)
            ).lastrowid
            self._conn.execute("INSERT INTO criterion_versions VALUES(?,?,?,?,?)", (cid, 1, name, description, now))
            if check is not None:
                self._insert_check(cid, check)
        return self.criterion(cid)

    def update_criterion(
        self,
        criterion_id: int,
        *,
        name: str | None = None,
        description: str | None = None,
        archived: bool | None = None,
    ) -> Criterion:
        """Edit a criterion; a new name or description makes a new version. Judgements are kept."""
        with self._tx():
            current = self.criterion(criterion_id)
            new_name = _text(name, "name", 60).strip() if name is not None else current.name
            new_description = (
                _text(description, "description", 300).strip() if description is not None else current.description
            )
            if not new_name:
                raise ReviewError("a criterion needs a name")
            if (new_name, new_description) != (current.name, current.description):
                version = current.version + 1
                self._conn.execute(
                    "UPDATE criteria SET name=?, description=?, version=? WHERE id=?",
                    (new_name, new_description, version, criterion_id),
                )
                self._conn.execute(
                    "INSERT INTO criterion_versions VALUES(?,?,?,?,?)",
                    (criterion_id, version, new_name, new_description, time.time()),
                )
            if archived is not None:
                self._conn.execute("UPDATE criteria SET archived=? WHERE id=?", (int(archived), criterion_id))
        return self.criterion(criterion_id)

    def criterion_history(self, criterion_id: int) -> list[dict[str, Any]]:
        """Every version of a criterion: ``{version, name, description, created_at}``."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT version, name, description, created_at FROM criterion_versions "
                "WHERE criterion_id=? ORDER BY version",
                (criterion_id,),
            ).fetchall()
        return [dict(r) for r in rows]

    def _insert_check(self, criterion_id: int, spec: CheckSpec) -> int:
        spec.validate()
        self._conn.execute(
            "INSERT OR IGNORE INTO checks(criterion_id, kind, argument, created_at) VALUES(?,?,?,?)",
            (criterion_id, spec.kind, spec.argument, time.time()),
        )
        return self._conn.execute(
            "SELECT id FROM checks WHERE criterion_id=? AND kind=? AND argument=?",
            (criterion_id, spec.kind, spec.argument),
        ).fetchone()[0]

    def add_check(self, criterion_id: int, spec: CheckSpec) -> int:
        """Add a candidate check to a criterion (an identical one is reused); returns its id."""
        with self._tx():
            self.criterion(criterion_id)
            return self._insert_check(criterion_id, spec)

    def set_chosen_check(self, criterion_id: int, check_id: int | None) -> None:
        """Record the candidate the alignment report chose (``None``: none qualifies)."""
        with self._tx():
            self._conn.execute("UPDATE criteria SET chosen_check=? WHERE id=?", (check_id, criterion_id))

    def criterion(self, criterion_id: int) -> Criterion:
        found = [c for c in self.criteria(include_archived=True) if c.id == criterion_id]
        if not found:
            raise ReviewError(f"no criterion {criterion_id}")
        return found[0]

    def criteria(self, include_archived: bool = False) -> list[Criterion]:
        """Criteria in creation order, each with its candidate checks and chosen check."""
        with self._lock:
            rows = self._conn.execute("SELECT * FROM criteria ORDER BY id").fetchall()
            checks: dict[int, list[CandidateCheck]] = {}
            for c in self._conn.execute("SELECT * FROM checks ORDER BY id"):
                checks.setdefault(c["criterion_id"], []).append(
                    CandidateCheck(c["id"], c["criterion_id"], CheckSpec(c["kind"], c["argument"]))
                )
        return [
            Criterion(
                r["id"],
                r["name"],
                r["description"],
                r["version"],
                bool(r["archived"]),
                checks.get(r["id"], []),
                r["chosen_check"],
            )
            for r in rows
            if include_archived or not r["archived"]
        ]

    def record_check_results(self, check_id: int, results: Mapping[str, bool | None]) -> None:
        """Store results of a check that needs an LM (item key -> passed, ``None`` = no verdict)."""
        with self._tx():
            self._conn.executemany(
                "INSERT INTO check_results(check_id, item_key, passed) VALUES(?,?,?) "
                "ON CONFLICT(check_id, item_key) DO UPDATE SET passed=excluded.passed",
                [(check_id, k, None if v is None else int(v)) for k, v in results.items()],
            )

    def check_results(self, check_id: int) -> dict[str, bool | None]:
        """Stored results of an LM check: item key -> passed."""
        with self._lock:
            rows = self._conn.execute("SELECT item_key, passed FROM check_results WHERE check_id=?", (check_id,))
            return {r["item_key"]: None if r["passed"] is None else bool(r["passed"]) for r in rows}

    # ---- read API for optimizers ----------------------------------------------------------
    def labeled_examples(self) -> list[LabeledExample]:
        """Good outputs, and corrected outputs (Good or Bad), as labeled examples.

        Example:
            >>> [dspy.Example(**e.inputs, **e.outputs).with_inputs(*e.inputs)
            ...  for e in store.labeled_examples()]   # doctest: +SKIP
        """
        examples = []
        for item in self.items():
            corrected = item.corrected_outputs()
            if corrected is not None:
                examples.append(LabeledExample(item.inputs, corrected, True, item.key))
            elif item.grade == "good":
                examples.append(LabeledExample(item.inputs, item.outputs, False, item.key))
        return examples

    def critiques(self) -> list[Critique]:
        """Bad outputs with their reasons, the criteria marked failed, and the prompt versions."""
        names = {c.id: c.name for c in self.criteria(include_archived=True)}
        return [
            Critique(
                item.inputs,
                item.outputs,
                item.reason or "",
                item.correction,
                tuple(names[cid] for cid, ok in item.judgements.items() if not ok and cid in names),
                tuple(item.prompt_versions),
                item.key,
            )
            for item in self.items()
            if item.grade == "bad"
        ]

    # ---- JSONL export / import -------------------------------------------------------------
    def export_rows(self) -> Iterator[dict[str, Any]]:
        """Every item as one label row (the module docstring's format)."""
        names = {c.id: c.name for c in self.criteria(include_archived=True)}
        for item in self.items():
            yield {
                "input": item.inputs,
                "output": item.outputs,
                "gold": item.gold,
                "grade": item.grade,
                "reason": item.reason,
                "correction": item.correction,
                "criteria": {names[cid]: ok for cid, ok in item.judgements.items() if cid in names},
                "prompt_versions": item.prompt_versions,
            }

    def export_jsonl(self, path: str | Path) -> int:
        """Write every item as a label row; returns the number of rows."""
        count = 0
        with open(path, "w", encoding="utf-8") as handle:
            for row in self.export_rows():
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
        return count

    def import_jsonl(self, path: str | Path, *, overwrite: bool = False, client: str = "import") -> ImportSummary:
        """Read label rows (e.g. exported from another tool) into the store.

        The whole file is checked before anything is written, so a bad line leaves
        the store as it was.

        Args:
            path: The JSONL file.
            overwrite: Replace grades already in the store (default: keep them, count as skipped).
            client: Recorded as the writer.

        Returns:
            An :class:`ImportSummary`.

        Raises:
            ReviewError: A line that is not a valid label row; the message names the line.
        """
        rows = []
        try:
            with open(path, encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    if line.strip():
                        rows.append(_parse_label_row(line, f"{path}, line {number}"))
        except UnicodeDecodeError as exc:
            raise ReviewError(f"{path}: not UTF-8 text (byte {exc.start}); a label file is UTF-8 JSONL") from None
        added = graded = skipped = 0
        criteria = {c.name.lower(): c.id for c in self.criteria()}
        for row in rows:
            known = self._exists(item_key(row["input"], row["output"]))
            versions = row["prompt_versions"] or ["imported"]
            for version in versions:
                key = self.add_output(
                    row["input"], row["output"], prompt_version=version, sample_index=0, gold=row["gold"]
                )
            added += not known
            existing = self.item(key)
            if existing.grade is not None and not overwrite:
                skipped += 1
                continue
            if row["grade"] is not None:
                self.set_grade(key, row["grade"], row["reason"], client=client)
                graded += 1
            elif row["reason"] is not None:
                self.set_reason(key, row["reason"], client=client)
            if row["correction"] is not None:
                self.set_correction(key, row["correction"], client=client)
            for name, passed in row["criteria"].items():
                if name.lower() not in criteria:
                    criteria[name.lower()] = self.add_criterion(name).id
                self.set_judgement(key, criteria[name.lower()], passed, client=client)
        return ImportSummary(rows=len(rows), added_items=added, graded=graded, skipped_graded=skipped)

    def _exists(self, key: str) -> bool:
        with self._lock:
            return self._conn.execute("SELECT 1 FROM items WHERE key=?", (key,)).fetchone() is not None


class _Transaction:
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


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _text(value: Any, what: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise ReviewError(f"{what} must be text, got {type(value).__name__}")
    if len(value) > limit:
        raise ReviewError(f"{what} is {len(value)} characters (max {limit})")
    return value.strip()


_GRADE_WORDS = {
    "good": "good",
    "pass": "good",
    "passed": "good",
    "up": "good",
    "thumbs_up": "good",
    "yes": "good",
    "bad": "bad",
    "fail": "bad",
    "failed": "bad",
    "down": "bad",
    "thumbs_down": "bad",
    "no": "bad",
}


def _grade(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "good" if value else "bad"
    if isinstance(value, (int, float)) and value in (0, 1):
        return "good" if value == 1 else "bad"
    if isinstance(value, str) and value.strip().lower() in _GRADE_WORDS:
        return _GRADE_WORDS[value.strip().lower()]
    raise ReviewError(f"{where}: grade {value!r} is not one of good/bad (or pass/fail, 1/0, true/false, null)")


def _fields(value: Any, default_name: str, where: str, what: str) -> dict[str, Any]:
    if isinstance(value, str):
        return {default_name: value}
    if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
        return value
    raise ReviewError(f"{where}: {what!r} must be a non-empty object of fields or a string")


def _parse_label_row(line: str, where: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ReviewError(f"{where}: not valid JSON: {exc.msg}") from None
    if not isinstance(row, dict):
        raise ReviewError(f"{where}: expected a JSON object")
    for required in ("input", "output"):
        if required not in row:
            raise ReviewError(f"{where}: missing {required!r} (a row needs input and output)")
    unknown = set(row) - {"input", "output", "gold", "grade", "reason", "correction", "criteria", "prompt_versions"}
    if unknown:
        raise ReviewError(f"{where}: unknown keys {sorted(unknown)}")
    grade = _grade(row.get("grade"), where)
    reason = row.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise ReviewError(f"{where}: reason must be a string or null")
    if grade == "bad" and not (reason or "").strip():
        raise ReviewError(f"{where}: a bad grade needs a reason")
    correction = row.get("correction")
    if correction is not None and not isinstance(correction, str):
        raise ReviewError(f"{where}: correction must be a string or null")
    criteria = row.get("criteria") or {}
    if not isinstance(criteria, dict) or not all(isinstance(v, bool) for v in criteria.values()):
        raise ReviewError(f"{where}: criteria must be an object of name -> true/false")
    versions = row.get("prompt_versions") or []
    if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
        raise ReviewError(f"{where}: prompt_versions must be a list of strings")
    gold = row.get("gold")
    return {
        "input": _fields(row["input"], "input", where, "input"),
        "output": _fields(row["output"], "output", where, "output"),
        "gold": _fields(gold, "output", where, "gold") if gold is not None else None,
        "grade": grade,
        "reason": reason,
        "correction": correction,
        "criteria": criteria,
        "prompt_versions": versions,
    }


def iter_label_rows(path: str | Path) -> Iterable[dict[str, Any]]:
    """Read and validate a label file without a store (e.g. to inspect it)."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                yield _parse_label_row(line, f"{path}, line {number}")
