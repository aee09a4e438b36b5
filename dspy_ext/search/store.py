"""The candidate store: every candidate seen in a search, with its per-example scores."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from dspy_ext.search.candidate import Candidate


@dataclass
class CandidateRecord:
    """A candidate and what is known of it.

    A row whose evaluation failed (LM error, context overflow, metric or program error) has no score and is
    left out of the mean. So that a candidate is never adopted on a handful of rows, one whose rows mostly
    failed is *set aside*: :meth:`CandidateStore.ranked` skips it, and a validation on which most rows
    failed does not count (``val_reliable``).

    With regression guards (:mod:`dspy_ext.search.regression`) a candidate whose guarded criterion dropped
    beyond its tolerance against the reference is set aside the same way: ``guard_breaks`` (search rows)
    keeps it out of :meth:`CandidateStore.ranked`, ``val_guard_breaks`` (valset rows) out of the final
    choice.
    """

    candidate: Candidate
    order: int
    train_scores: dict[str, float] = field(default_factory=dict)  # example key -> score in [0, 1]
    failed_rows: set[str] = field(default_factory=set)  # example keys whose evaluation failed, never scored
    val_score: float | None = None  # 0-100 on the first ``val_n`` validation rows
    val_n: int = 0
    val_reliable: bool = True  # at least half of the validation rows were scored
    train_criteria: dict[str, dict[str, float]] = field(default_factory=dict)  # example key -> criteria (0-1)
    val_criteria: dict[str, dict[str, float]] = field(default_factory=dict)
    guard_breaks: dict[str, float] = field(default_factory=dict)  # criterion -> points dropped (search rows)
    val_guard_breaks: dict[str, float] = field(default_factory=dict)  # criterion -> points dropped (valset rows)

    @property
    def mean(self) -> float | None:
        """Mean search score (0-100) over every training example it was scored on."""
        if not self.train_scores:
            return None
        return 100.0 * statistics.fmean(self.train_scores.values())

    @property
    def n_scored(self) -> int:
        return len(self.train_scores)

    @property
    def reliable(self) -> bool:
        """At least half of the rows it was evaluated on were scored (the rest failed)."""
        return len(self.failed_rows) <= self.n_scored

    @property
    def guarded(self) -> bool:
        """No guarded criterion dropped beyond its tolerance on the search rows."""
        return not self.guard_breaks

    @property
    def val_guarded(self) -> bool:
        """No guarded criterion dropped beyond its tolerance on the valset rows."""
        return not self.val_guard_breaks


class CandidateStore:
    """Deduplicates candidates by content hash and accumulates their scores.

    Example:
        >>> store = CandidateStore()
        >>> record, is_new = store.add(candidate)    # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._records: dict[str, CandidateRecord] = {}
        self._instruction_texts: set[str] = set()

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key: str) -> bool:
        return key in self._records

    def get(self, key: str) -> CandidateRecord:
        return self._records[key]

    def add(self, candidate: Candidate) -> tuple[CandidateRecord, bool]:
        """Add ``candidate`` unless an identical one is stored; return its record and whether it is new."""
        key = candidate.key
        if key in self._records:
            return self._records[key], False
        record = CandidateRecord(candidate, len(self._records))
        self._records[key] = record
        self._instruction_texts.update(_norm(t) for t in candidate.instructions.values())
        return record, True

    def seen_instruction(self, text: str) -> bool:
        """Whether an instruction with this text (case/space-insensitive) was already proposed."""
        return _norm(text) in self._instruction_texts

    def records(self) -> list[CandidateRecord]:
        return list(self._records.values())

    def ranked(self) -> list[CandidateRecord]:
        """Scored, reliable, guarded records, best search mean first (ties: more examples, then earlier)."""
        scored = [r for r in self._records.values() if r.mean is not None and r.reliable and r.guarded]
        return sorted(scored, key=lambda r: (-r.mean, -r.n_scored, r.order))

    def best_validated(self) -> CandidateRecord | None:
        """The record validated on the most rows, best score first (ties: earlier); never one breaking a guard."""
        done = [
            r
            for r in self._records.values()
            if r.val_score is not None and r.val_reliable and r.val_guarded and r.guarded
        ]
        return min(done, key=lambda r: (-r.val_n, -r.val_score, r.order)) if done else None


def _norm(text: str) -> str:
    return " ".join(text.lower().split())
