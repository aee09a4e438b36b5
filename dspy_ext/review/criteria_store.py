"""The criteria of a review: versioned names and descriptions, candidate checks, stored LM-check results.

A criterion keeps its id for life; every edit of its name or description makes a new version (the
history is kept), and the reviewer's marks made under an older version stay. Each criterion has
candidate automatic checks; the alignment report (:func:`~dspy_ext.review.align`) records the one it
chose. Results of checks that need an LM (an LM judge) are stored, since they cost calls.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from dspy_ext.review.criteria import CheckSpec
from dspy_ext.review.database import ReviewDatabase
from dspy_ext.review.records import CandidateCheck, Criterion, ReviewError, checked_text

MAX_NAME = 60
MAX_DESCRIPTION = 300


def _name(value: Any) -> str:
    return checked_text(value, "name", MAX_NAME).strip()


def _description(value: Any) -> str:
    return checked_text(value, "description", MAX_DESCRIPTION).strip()


class CriterionBook:
    """Criteria, their versions and candidate checks, and LM-check results in one review database."""

    def __init__(self, db: ReviewDatabase) -> None:
        self.db = db

    # ---- criteria ---------------------------------------------------------------------------
    def add_criterion(self, name: str, description: str = "", check: CheckSpec | None = None) -> Criterion:
        """Create a criterion (version 1), optionally with a first candidate check.

        Raises:
            ReviewError: Empty name or a name already used by an active criterion.
        """
        name, description = _name(name), _description(description)
        if not name:
            raise ReviewError("a criterion needs a name")
        conn = self.db.conn
        with self.db.transaction():
            if conn.execute("SELECT 1 FROM criteria WHERE lower(name)=lower(?) AND archived=0", (name,)).fetchone():
                raise ReviewError(f"a criterion named {name!r} already exists")
            now = time.time()
            cid = conn.execute(
                "INSERT INTO criteria(name, description, version, created_at) VALUES(?,?,1,?)", (name, description, now)
            ).lastrowid
            conn.execute("INSERT INTO criterion_versions VALUES(?,?,?,?,?)", (cid, 1, name, description, now))
            if check is not None:
                self._insert_check(cid, check)
        return self.criterion(cid)

    def update_criterion(
        self, criterion_id: int, name: str | None, description: str | None, archived: bool | None
    ) -> Criterion:
        """Edit a criterion (``None``: keep that field); a new name or description makes a new version."""
        conn = self.db.conn
        with self.db.transaction():
            current = self.criterion(criterion_id)
            new_name = _name(name) if name is not None else current.name
            new_description = _description(description) if description is not None else current.description
            if not new_name:
                raise ReviewError("a criterion needs a name")
            if (new_name, new_description) != (current.name, current.description):
                version = current.version + 1
                conn.execute(
                    "UPDATE criteria SET name=?, description=?, version=? WHERE id=?",
                    (new_name, new_description, version, criterion_id),
                )
                conn.execute(
                    "INSERT INTO criterion_versions VALUES(?,?,?,?,?)",
                    (criterion_id, version, new_name, new_description, time.time()),
                )
            if archived is not None:
                conn.execute("UPDATE criteria SET archived=? WHERE id=?", (int(archived), criterion_id))
        return self.criterion(criterion_id)

    def criterion_history(self, criterion_id: int) -> list[dict[str, Any]]:
        """Every version of a criterion: ``{version, name, description, created_at}``."""
        with self.db.lock:
            rows = self.db.conn.execute(
                "SELECT version, name, description, created_at FROM criterion_versions "
                "WHERE criterion_id=? ORDER BY version",
                (criterion_id,),
            ).fetchall()
        return [dict(r) for r in rows]

    def criterion(self, criterion_id: int) -> Criterion:
        """One criterion, archived or not; :class:`ReviewError` if unknown."""
        found = [c for c in self.criteria(include_archived=True) if c.id == criterion_id]
        if not found:
            raise ReviewError(f"no criterion {criterion_id}")
        return found[0]

    def criteria(self, include_archived: bool = False) -> list[Criterion]:
        """Criteria in creation order, each with its candidate checks and chosen check."""
        with self.db.lock:
            rows = self.db.conn.execute("SELECT * FROM criteria ORDER BY id").fetchall()
            checks: dict[int, list[CandidateCheck]] = {}
            for c in self.db.conn.execute("SELECT * FROM checks ORDER BY id"):
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

    # ---- candidate checks -------------------------------------------------------------------
    def _insert_check(self, criterion_id: int, spec: CheckSpec) -> int:
        spec.validate()
        self.db.conn.execute(
            "INSERT OR IGNORE INTO checks(criterion_id, kind, argument, created_at) VALUES(?,?,?,?)",
            (criterion_id, spec.kind, spec.argument, time.time()),
        )
        return self.db.conn.execute(
            "SELECT id FROM checks WHERE criterion_id=? AND kind=? AND argument=?",
            (criterion_id, spec.kind, spec.argument),
        ).fetchone()[0]

    def add_check(self, criterion_id: int, spec: CheckSpec) -> int:
        """Add a candidate check to a criterion (an identical one is reused); returns its id."""
        with self.db.transaction():
            self.criterion(criterion_id)
            return self._insert_check(criterion_id, spec)

    def set_chosen_check(self, criterion_id: int, check_id: int | None) -> None:
        """Record the candidate the alignment report chose (``None``: none qualifies)."""
        with self.db.transaction():
            self.db.conn.execute("UPDATE criteria SET chosen_check=? WHERE id=?", (check_id, criterion_id))

    def record_check_results(self, check_id: int, results: Mapping[str, bool | None]) -> None:
        """Store results of a check that needs an LM (item key -> passed, ``None`` = no verdict)."""
        with self.db.transaction():
            self.db.conn.executemany(
                "INSERT INTO check_results(check_id, item_key, passed) VALUES(?,?,?) "
                "ON CONFLICT(check_id, item_key) DO UPDATE SET passed=excluded.passed",
                [(check_id, k, None if v is None else int(v)) for k, v in results.items()],
            )

    def check_results(self, check_id: int) -> dict[str, bool | None]:
        """Stored results of an LM check: item key -> passed."""
        with self.db.lock:
            rows = self.db.conn.execute("SELECT item_key, passed FROM check_results WHERE check_id=?", (check_id,))
            return {r["item_key"]: None if r["passed"] is None else bool(r["passed"]) for r in rows}
