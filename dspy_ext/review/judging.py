"""The review page's LM work: run a criterion's LM-judge checks, and propose a criterion from a critique.

One LM call sequence runs at a time (a lock), so two tabs asking at once do not double the spend.
Without an LM both answer 503.
"""

from __future__ import annotations

import threading

from dspy_ext.review.criteria import CriterionProposer, LMJudge, ProposedCriterion
from dspy_ext.review.guard import HttpError
from dspy_ext.review.options import ReviewOptions
from dspy_ext.review.records import ReviewItem
from dspy_ext.review.store import ReviewStore

NO_LM_TO_JUDGE = "no LM: start dspy-ext review with a program and --lm to run judges"
NO_LM_TO_PROPOSE = "no LM: start dspy-ext review with a program to get proposals"


class ReviewJudges:
    """Runs the page's LM (``options.lm`` with ``options.adapter``) on the store's items.

    Args:
        store: The review store (LM-judge results are stored there).
        options: The page's settings.
    """

    def __init__(self, store: ReviewStore, options: ReviewOptions) -> None:
        self.store, self.options = store, options
        self._lock = threading.Lock()

    def require_lm(self, why: str) -> None:
        """Raise :class:`HttpError` (503) with ``why`` when the page has no LM."""
        if self.options.lm is None:
            raise HttpError(503, why)

    def run_judges(self, criterion_id: int) -> int:
        """Run the criterion's LM-judge checks on every labelled item they have no result for yet.

        Returns:
            How many results were recorded.
        """
        self.require_lm(NO_LM_TO_JUDGE)
        criterion = self.store.criterion(criterion_id)
        judged = 0
        labelled = [i for i in self.store.items() if i.grade is not None or criterion_id in i.judgements]
        with self._lock:
            for check in (c for c in criterion.checks if c.spec.needs_lm):
                judge = LMJudge(criterion.description or criterion.name, self.options.lm, self.options.adapter)
                done = self.store.check_results(check.id)
                results = {i.key: judge.passes(i.input_text, i.output_text) for i in labelled if i.key not in done}
                self.store.record_check_results(check.id, results)
                judged += len(results)
        return judged

    def propose(self, item: ReviewItem, critique: str) -> ProposedCriterion:
        """A new criterion for ``item`` from ``critique``, unlike the active criteria."""
        self.require_lm(NO_LM_TO_PROPOSE)
        existing = [f"{c.name}: {c.description}" for c in self.store.criteria()]
        with self._lock:
            proposer = CriterionProposer(self.options.lm, self.options.adapter)
            return proposer.propose(item.input_text, item.output_text, critique, existing)
