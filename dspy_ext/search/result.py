"""What a compile of one of dspy-ext's optimizers found: the result the compiled program carries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["SearchResult"]


@dataclass
class SearchResult:
    """What a compile found; the compiled program carries it (``compile_record(program).search``).

    Attributes:
        method: The optimizer's name.
        best: The returned prompts (:meth:`Candidate.to_dict`).
        val_score: Their score on the valset (``None``: not scored on all of it).
        baseline_val_score: The student's own instructions with the labeled demos, on the valset.
        lm_calls: LM calls of the compile (task and prompt model).
        tokens: Tokens of those calls.
        seconds: Wall time of the compile.
        budget_exhausted: A budget ran out (the best candidate so far was returned).
        n_candidates: Candidates scored.
        rejected: Proposals (and demo sets) set aside, by reason (:class:`~dspy_ext.search.reasons.Rejection`).
        demo_sets: Demo sets searched.
        trials: The trial log's rows (left out of :meth:`to_dict`).
        guard_report: With regression guards: every criterion, reference against the returned program on
            the valset (means with 95% CIs, the paired drop and test, tolerance, broken), the tolerances,
            and how many candidates each guard set aside.
        demo_start: An instruction search's demo start: which demo set it started from and the race on
            val that chose it (:class:`~dspy_ext.search.demo_start.DemoStart`; ``None``: none was raced).
    """

    method: str
    best: dict[str, Any]
    val_score: float | None
    baseline_val_score: float | None
    lm_calls: int
    tokens: int
    seconds: float
    budget_exhausted: bool
    n_candidates: int
    rejected: dict[str, int]
    demo_sets: int
    trials: list[dict[str, Any]] = field(repr=False, default_factory=list)
    guard_report: dict[str, Any] | None = None
    demo_start: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "trials"}
