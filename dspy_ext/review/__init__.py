"""Human review: grade outputs on a local keyboard-first page, grow criteria, align checks to the grades.

* :class:`ReviewStore` (``store``): the SQLite store of outputs, grades, critiques, corrections and
  criteria; its read API (``labeled_examples()``, ``critiques()``, ``criteria()``) feeds optimizers.
  It hands each job to a part: ``database`` (the file, schema, transactions), ``items`` (outputs and
  samples), ``labels`` (grades, reasons, corrections, criterion marks, undo), ``criteria_store``
  (criterion versions, candidate checks, LM-check results) and ``codec`` (the JSONL label format);
  ``records`` holds the record types they share.
* :mod:`~dspy_ext.review.criteria`: built-in checks, the LM judge and the criterion proposer.
* :func:`align` (``alignment``): EvalGen coverage and false failure rate; chooses each criterion's check.
* :class:`NextItemSampler` (``sampling``): informative picks alternating with random ones.
* :func:`collect` (``collect``): run a program on N inputs, K samples each, into the store.
* :class:`ReviewApp`, :class:`ReviewServer` (``server``): the local web page, put together from
  ``guard`` (Host, token and body-size checks, security headers), ``routes`` (the endpoints), ``views``
  (view models and templates), ``navigation`` (filters, next item per tab), ``judging`` (the LM
  actions) and ``options`` (the settings they share).
* :class:`Feedback` (``feedback``): a store read for a compile: labeled examples, critiques, criteria with
  their aligned checks (metric parts and guards), pinned cases.

Example:
    >>> from dspy_ext.review import ReviewStore, ReviewApp, ReviewServer, collect
    >>> store = ReviewStore("runs/review-sentiment.sqlite")                          # doctest: +SKIP
    >>> collect(program, rows, store=store, input_keys=("input",), lm=lm)            # doctest: +SKIP
    >>> server = ReviewServer(ReviewApp(store, lm=lm)).start(); print(server.url)     # doctest: +SKIP
"""

from dspy_ext.review.alignment import DEFAULT_THRESHOLD, AlignmentReport, CheckAlignment, CriterionAlignment, align
from dspy_ext.review.collect import CollectSummary, InputsFileError, collect, load_inputs_jsonl, prompt_version
from dspy_ext.review.criteria import (
    CheckError,
    CheckSpec,
    CriterionProposer,
    JudgeCriterion,
    LMJudge,
    ProposalError,
    ProposeCriterion,
    ProposedCriterion,
)
from dspy_ext.review.feedback import Feedback, FeedbackError, PinnedReport, ReviewCheck
from dspy_ext.review.records import (
    Criterion,
    Critique,
    ImportSummary,
    ItemSummary,
    LabeledExample,
    ReviewError,
    ReviewItem,
)
from dspy_ext.review.sampling import NextItemSampler, Signal, SignalIndex, item_signals
from dspy_ext.review.server import ReviewApp, ReviewServer
from dspy_ext.review.store import ReviewStore

__all__ = [
    "DEFAULT_THRESHOLD",
    "AlignmentReport",
    "CheckAlignment",
    "CheckError",
    "CheckSpec",
    "CollectSummary",
    "Criterion",
    "CriterionAlignment",
    "CriterionProposer",
    "Critique",
    "Feedback",
    "FeedbackError",
    "ImportSummary",
    "InputsFileError",
    "PinnedReport",
    "ReviewCheck",
    "ItemSummary",
    "JudgeCriterion",
    "LMJudge",
    "LabeledExample",
    "NextItemSampler",
    "ProposalError",
    "ProposeCriterion",
    "ProposedCriterion",
    "ReviewApp",
    "ReviewError",
    "ReviewItem",
    "ReviewServer",
    "ReviewStore",
    "Signal",
    "SignalIndex",
    "align",
    "collect",
    "item_signals",
    "load_inputs_jsonl",
    "prompt_version",
]
