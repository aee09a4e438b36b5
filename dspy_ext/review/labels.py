"""What a reviewer writes about an item (grade, reason, correction, criterion marks), with undo per tab.

Writes are per field, so a grade never overwrites a reason another tab wrote. Every change is logged
in the ``events`` table under the writer's ``client`` name (a browser tab id), so that :meth:`LabelBook.undo`
reverts that tab's own last change, and refuses when another tab has changed the item since.
"""

from __future__ import annotations

import json
import time
from typing import Any

from dspy_ext.review.database import ReviewDatabase, dump_json
from dspy_ext.review.items import ItemTable
from dspy_ext.review.records import GRADES, ReviewError, ReviewItem, checked_text

_NO_LABEL = {"grade": None, "reason": None, "correction": None}


class LabelBook:
    """Grades, reasons, corrections and criterion marks of the items in one review database.

    Args:
        db: The database.
        items: Its items (a label is only written for a known item; writes return the updated item).
    """

    def __init__(self, db: ReviewDatabase, items: ItemTable) -> None:
        self.db = db
        self.items = items

    # ---- the label row ----------------------------------------------------------------------
    def _label(self, key: str) -> dict[str, Any]:
        """The item's label columns (all ``None`` before its first label); :class:`ReviewError` if unknown."""
        self.items.require(key)
        row = self.db.conn.execute("SELECT grade, reason, correction FROM labels WHERE item_key=?", (key,)).fetchone()
        return dict(row) if row else dict(_NO_LABEL)

    def _write_label(self, key: str, new: dict[str, Any], client: str, kind: str) -> None:
        """Write the columns of ``new`` that differ from the stored ones, and log the change."""
        old = self._label(key)
        changed = {k: v for k, v in new.items() if old.get(k) != v}
        if not changed:
            return
        sets = ", ".join(f"{k}=excluded.{k}" for k in changed)
        columns = ["item_key", *changed, "updated_at"]
        self.db.conn.execute(
            f"INSERT INTO labels({', '.join(columns)}) VALUES({', '.join('?' * len(columns))}) "
            f"ON CONFLICT(item_key) DO UPDATE SET {sets}, updated_at=excluded.updated_at",
            (key, *changed.values(), time.time()),
        )
        self._log(client, kind, key, None, {k: old.get(k) for k in changed}, changed)

    # ---- writes -----------------------------------------------------------------------------
    def set_grade(self, key: str, grade: str | None, reason: str | None = None, *, client: str = "api") -> ReviewItem:
        """Grade an item (``None`` clears it); a Bad grade needs a reason, given or already stored."""
        if grade is not None and grade not in GRADES:
            raise ReviewError(f"grade must be one of {GRADES} or null, got {grade!r}")
        with self.db.transaction():
            new: dict[str, Any] = {"grade": grade}
            if reason is not None:
                new["reason"] = checked_text(reason, "reason") or None
            current = new.get("reason", self._label(key)["reason"])
            if grade == "bad" and not current:
                raise ReviewError("a Bad grade needs a reason: write what is wrong")
            self._write_label(key, new, client, "grade")
        return self.items.item(key)

    def set_reason(self, key: str, reason: str, *, client: str = "api") -> ReviewItem:
        """Set the critique text; it cannot be emptied while the grade is Bad."""
        with self.db.transaction():
            text = checked_text(reason, "reason") or None
            if text is None and self._label(key)["grade"] == "bad":
                raise ReviewError("a Bad grade needs a reason: it cannot be emptied")
            self._write_label(key, {"reason": text}, client, "reason")
        return self.items.item(key)

    def set_correction(self, key: str, correction: str | None, *, client: str = "api") -> ReviewItem:
        """Set (or clear with ``""``/``None``) the corrected output text."""
        with self.db.transaction():
            text = checked_text(correction or "", "correction") or None
            self._write_label(key, {"correction": text}, client, "correction")
        return self.items.item(key)

    def set_judgement(self, key: str, criterion_id: int, passed: bool | None, *, client: str = "api") -> ReviewItem:
        """Mark a criterion passed/failed on an item (``None`` clears the mark), at the criterion's version."""
        conn = self.db.conn
        with self.db.transaction():
            self.items.require(key)
            crit = conn.execute("SELECT version FROM criteria WHERE id=?", (criterion_id,)).fetchone()
            if crit is None:
                raise ReviewError(f"no criterion {criterion_id}")
            old = self._judgement(key, criterion_id)
            if old == passed:
                return self.items.item(key)
            if passed is None:
                conn.execute("DELETE FROM judgements WHERE item_key=? AND criterion_id=?", (key, criterion_id))
            else:
                conn.execute(
                    "INSERT INTO judgements(item_key, criterion_id, passed, criterion_version, updated_at) "
                    "VALUES(?,?,?,?,?) ON CONFLICT(item_key, criterion_id) DO UPDATE SET passed=excluded.passed, "
                    "criterion_version=excluded.criterion_version, updated_at=excluded.updated_at",
                    (key, criterion_id, int(passed), crit["version"], time.time()),
                )
            self._log(client, "judgement", key, criterion_id, {"passed": old}, {"passed": passed})
        return self.items.item(key)

    def _judgement(self, key: str, criterion_id: int) -> bool | None:
        row = self.db.conn.execute(
            "SELECT passed FROM judgements WHERE item_key=? AND criterion_id=?", (key, criterion_id)
        ).fetchone()
        return None if row is None else bool(row["passed"])

    def judgements_of(self, criterion_id: int) -> dict[str, bool]:
        """Item key -> the reviewer's pass/fail mark for one criterion."""
        with self.db.lock:
            rows = self.db.conn.execute("SELECT item_key, passed FROM judgements WHERE criterion_id=?", (criterion_id,))
            return {r["item_key"]: bool(r["passed"]) for r in rows}

    # ---- undo -------------------------------------------------------------------------------
    def _log(
        self,
        client: str,
        kind: str,
        key: str | None,
        criterion_id: int | None,
        before: dict[str, Any],
        after: dict[str, Any],
    ) -> None:
        self.db.conn.execute(
            "INSERT INTO events(at, client, kind, item_key, criterion_id, before, after) VALUES(?,?,?,?,?,?,?)",
            (time.time(), client, kind, key, criterion_id, dump_json(before), dump_json(after)),
        )

    def undo(self, client: str) -> str | None:
        """Revert ``client``'s last change not yet undone; returns the item key (``None``: nothing to undo).

        Raises:
            ReviewError: Another client has changed the item since (reverting would lose its write).
        """
        with self.db.transaction():
            event = self.db.conn.execute(
                "SELECT * FROM events WHERE client=? AND undone=0 AND kind != 'undo' ORDER BY id DESC LIMIT 1",
                (client,),
            ).fetchone()
            if event is None:
                return None
            before, after, key = json.loads(event["before"]), json.loads(event["after"]), event["item_key"]
            if event["kind"] == "judgement":
                current = {"passed": self._judgement(key, event["criterion_id"])}
            else:
                label = self._label(key)
                current = {k: label.get(k) for k in after}
            if current != after:
                raise ReviewError("cannot undo: the item was changed since (in another tab?)")
            self.db.conn.execute("UPDATE events SET undone=1 WHERE id=?", (event["id"],))
            if event["kind"] == "judgement":
                self.set_judgement(key, event["criterion_id"], before["passed"], client=f"undo:{client}")
            else:
                self._write_label(key, before, f"undo:{client}", "undo")
        return key
