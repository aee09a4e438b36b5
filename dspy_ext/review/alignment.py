"""EvalGen-style alignment: how well each candidate check agrees with the human grades.

For one criterion and one candidate check, over the items a person has labelled:

* **coverage**: the share of human-Bad items that the check fails;
* **false failure rate**: the share of human-Good items that the check fails.

The human label of an item for a criterion is the reviewer's explicit mark for
that criterion when there is one (a criterion toggled pass/fail), otherwise the
item's overall grade (Good = pass, Bad = fail), as EvalGen does. The chosen
check is the candidate with the highest coverage among those whose false
failure rate is at most the threshold (ties: lower false failure rate, then
the older check); a check that fails no Bad item is never chosen.

Example:
    >>> report = align(store, threshold=0.25)          # doctest: +SKIP
    >>> report.criteria[0].candidates[0].coverage      # doctest: +SKIP
    0.75
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from dspy_ext.review.records import CandidateCheck, Criterion, ReviewItem
from dspy_ext.review.store import ReviewStore

DEFAULT_THRESHOLD = 0.25


@dataclass(frozen=True)
class CheckAlignment:
    """One candidate check's agreement with the human labels.

    Attributes:
        check_id: The candidate's id in the store.
        check: The check text (``regex:...``).
        n_bad: Human-Bad items the check has a result for.
        n_good: Human-Good items the check has a result for.
        failed_bad: Of those Bad items, how many the check fails.
        failed_good: Of those Good items, how many the check fails.
        unknown: Labelled items without a check result (an LM judge not run yet, or no verdict).
        coverage: ``failed_bad / n_bad`` (``None`` without Bad items).
        false_failure_rate: ``failed_good / n_good`` (``None`` without Good items).
        chosen: Whether this candidate is the criterion's chosen check.
    """

    check_id: int
    check: str
    n_bad: int
    n_good: int
    failed_bad: int
    failed_good: int
    unknown: int
    coverage: float | None
    false_failure_rate: float | None
    chosen: bool = False


@dataclass(frozen=True)
class CriterionAlignment:
    """The candidates of one criterion and the one chosen."""

    criterion_id: int
    name: str
    description: str
    version: int
    labelled: int
    candidates: list[CheckAlignment] = field(default_factory=list)
    chosen_check_id: int | None = None


@dataclass(frozen=True)
class AlignmentReport:
    """Alignment of every criterion's candidates; ``to_dict()`` is the ``--report --json`` output."""

    threshold: float
    reviewed: int
    total: int
    criteria: list[CriterionAlignment]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def human_labels(items: Sequence[ReviewItem], criterion_id: int) -> dict[str, bool]:
    """Item key -> human pass (``True``) / fail (``False``) for one criterion.

    Args:
        items: The store's items.
        criterion_id: The criterion.

    Returns:
        Labels of the items that have an explicit mark or an overall grade.
    """
    labels: dict[str, bool] = {}
    for item in items:
        if criterion_id in item.judgements:
            labels[item.key] = item.judgements[criterion_id]
        elif item.grade is not None:
            labels[item.key] = item.grade == "good"
    return labels


def check_outcomes(
    check: CandidateCheck, items: Sequence[ReviewItem], stored: Mapping[str, bool | None] | None = None
) -> dict[str, bool | None]:
    """Item key -> the check's pass/fail (``None`` = no result).

    Built-in checks run here; LM checks are read from ``stored`` (their results in the store).
    """
    if check.spec.needs_lm:
        stored = stored or {}
        return {item.key: stored.get(item.key) for item in items}
    return {item.key: check.spec.passes(item.output_text) for item in items}


def measure(
    check_id: int, check: str, labels: Mapping[str, bool], outcomes: Mapping[str, bool | None]
) -> CheckAlignment:
    """Coverage and false failure rate of one check against human labels.

    Args:
        check_id: The candidate's id.
        check: The check text.
        labels: Item key -> human pass/fail.
        outcomes: Item key -> check pass/fail/None.

    Returns:
        The counts and the two rates.

    Example:
        >>> a = measure(1, "max_words:1", {"a": False, "b": False, "c": True}, {"a": False, "b": True, "c": True})
        >>> a.coverage, a.false_failure_rate
        (0.5, 0.0)
    """
    n_bad = n_good = failed_bad = failed_good = unknown = 0
    for key, human_pass in labels.items():
        result = outcomes.get(key)
        if result is None:
            unknown += 1
        elif human_pass:
            n_good += 1
            failed_good += not result
        else:
            n_bad += 1
            failed_bad += not result
    return CheckAlignment(
        check_id=check_id,
        check=check,
        n_bad=n_bad,
        n_good=n_good,
        failed_bad=failed_bad,
        failed_good=failed_good,
        unknown=unknown,
        coverage=failed_bad / n_bad if n_bad else None,
        false_failure_rate=failed_good / n_good if n_good else None,
    )


def choose(candidates: Sequence[CheckAlignment], threshold: float) -> CheckAlignment | None:
    """The candidate with the best coverage whose false failure rate is at most ``threshold``."""
    eligible = [
        c
        for c in candidates
        if c.coverage is not None
        and c.coverage > 0
        and c.false_failure_rate is not None
        and c.false_failure_rate <= threshold
    ]
    if not eligible:
        return None
    return min(eligible, key=lambda c: (-c.coverage, c.false_failure_rate, c.check_id))


def align_criterion(
    criterion: Criterion, items: Sequence[ReviewItem], store: ReviewStore | None, threshold: float
) -> CriterionAlignment:
    """Measure and choose among one criterion's candidates."""
    labels = human_labels(items, criterion.id)
    measured = []
    for check in criterion.checks:
        stored = store.check_results(check.id) if (store is not None and check.spec.needs_lm) else None
        measured.append(measure(check.id, str(check.spec), labels, check_outcomes(check, items, stored)))
    best = choose(measured, threshold)
    chosen_id = best.check_id if best else None
    return CriterionAlignment(
        criterion_id=criterion.id,
        name=criterion.name,
        description=criterion.description,
        version=criterion.version,
        labelled=len(labels),
        candidates=[CheckAlignment(**{**asdict(m), "chosen": m.check_id == chosen_id}) for m in measured],
        chosen_check_id=chosen_id,
    )


def align(store: ReviewStore, threshold: float = DEFAULT_THRESHOLD, *, persist: bool = True) -> AlignmentReport:
    """The alignment report of every active criterion; records each chosen check in the store.

    Args:
        store: The review store.
        threshold: Highest false failure rate a chosen check may have (0..1).
        persist: Write the chosen checks into the store (what :meth:`ReviewStore.criteria` returns).

    Returns:
        The :class:`AlignmentReport`.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
    items = store.items()
    report = [align_criterion(c, items, store, threshold) for c in store.criteria()]
    if persist:
        current = {c.id: c.chosen_check_id for c in store.criteria()}
        for entry in report:
            if current.get(entry.criterion_id) != entry.chosen_check_id:
                store.set_chosen_check(entry.criterion_id, entry.chosen_check_id)
    reviewed, total = store.progress()
    return AlignmentReport(threshold=threshold, reviewed=reviewed, total=total, criteria=report)


class AlignmentCache:
    """Re-runs :func:`align` before a read only when labels changed since the last run.

    Grades change which check aligns best, and the page reads the chosen checks; a write marks the
    alignment stale, and the next :meth:`refresh` re-chooses the checks. Thread-safe.

    Args:
        store: The review store.
    """

    def __init__(self, store: ReviewStore) -> None:
        self.store = store
        self._stale = True
        self._lock = threading.Lock()

    def mark_stale(self) -> None:
        """Labels may have changed: the next :meth:`refresh` re-runs the alignment."""
        self._stale = True

    def refresh(self, threshold: float) -> None:
        """Re-choose each criterion's check if labels changed since the last time."""
        with self._lock:
            if self._stale:
                self._stale = False
                align(self.store, threshold)
