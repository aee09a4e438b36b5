"""Compiling from human review: what a review store gives an optimizer.

:meth:`Feedback.from_store` reads a review store (:class:`~dspy_ext.review.ReviewStore`) into
four things a compile uses (``dspy-ext compile --feedback STORE``; ``RunSettings(feedback=...)``):

* **labeled examples**: outputs graded Good, and corrected outputs, as ``dspy.Example`` rows
  (candidates for demos and rows for scoring);
* **critiques**: outputs graded Bad with the reason, as plain data for the optimizers
  (:class:`~dspy_ext.search.SearchFeedback`);
* **criteria**: every review criterion whose aligned automatic check exists becomes a metric part
  (:class:`ReviewCheck`) for :func:`dspy_ext.evaluation.criteria`, and a guard at tolerance 0;
* **pinned cases**: every output graded Good must keep passing the aligned checks it passed;
  :meth:`Feedback.check_pinned` runs a program on them and names the ones it now fails.

The checks are chosen by the alignment report (:func:`~dspy_ext.review.align`, EvalGen's
coverage and false failure rate), computed fresh when the store is read and not written back.
LM-judge checks are not run during a compile (they would spend the compile's budget on the judge):
such criteria are listed in :attr:`Feedback.skipped`.

Example:
    >>> fb = Feedback.from_store("runs/review-sentiment.sqlite")                # doctest: +SKIP
    >>> len(fb.labeled), len(fb.critiques), [c.name for c in fb.checks]        # doctest: +SKIP
    (19, 11, ['label only'])
    >>> metric = criteria(correct=exact_match, **fb.metric_parts(["output"]))   # doctest: +SKIP
    >>> fb.guards()                                                             # doctest: +SKIP
    {'label only': 0.0}
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy

from dspy_ext.evaluation import Evaluator, metric_value
from dspy_ext.prompt_state import short_hash
from dspy_ext.review.alignment import DEFAULT_THRESHOLD, align
from dspy_ext.review.criteria import CheckSpec
from dspy_ext.review.records import Critique, LabeledExample, ReviewError, fields_text, json_value
from dspy_ext.review.store import ReviewStore
from dspy_ext.search.feedback import HumanCritique, SearchFeedback

logger = logging.getLogger(__name__)


class FeedbackError(ValueError):
    """A review store that cannot feed a compile (missing, empty, or made for other fields)."""


def prediction_text(prediction: Any, output_keys: Sequence[str]) -> str:
    """A prediction's output fields as the review page shows them (one field: its value alone)."""
    if prediction is None:
        return ""
    get = prediction.get if hasattr(prediction, "get") else lambda k, d=None: getattr(prediction, k, d)
    return fields_text({k: json_value(get(k, "")) for k in output_keys})


class ReviewCheck:
    """A review criterion's aligned automatic check, as a metric part.

    Called as ``check(example, prediction, trace=None)`` it returns 1.0 when the prediction's output
    fields pass the check, else 0.0 (a ``bool`` with a trace, for DSPy's bootstrapping).

    Args:
        name: The criterion's name (the metric part's name).
        description: The criterion's description (shown as feedback when a row fails).
        spec: The chosen check (a built-in kind; not ``judge``).
        output_keys: The program's output fields the check reads.

    Example:
        >>> check = ReviewCheck("label only", "one label", CheckSpec.parse("one_of:positive,negative"), ["output"])
        >>> check(None, dspy.Prediction(output="Positive")), check(None, dspy.Prediction(output="It is positive."))
        (1.0, 0.0)
    """

    def __init__(self, name: str, description: str, spec: CheckSpec, output_keys: Sequence[str]) -> None:
        if spec.needs_lm:
            raise FeedbackError(f"criterion {name!r}: an LM-judge check is not run during a compile")
        self.name = name
        self.spec = spec
        self.output_keys = list(output_keys)
        self.description = description or str(spec)
        self.__name__ = name

    def passes_outputs(self, outputs: Mapping[str, Any]) -> bool:
        """Whether output fields (a dict, as the store holds them) pass."""
        return self.spec.passes(fields_text({k: outputs.get(k, "") for k in self.output_keys}))

    def __call__(self, example: Any, prediction: Any, trace: Any = None) -> float | bool:
        passed = self.spec.passes(prediction_text(prediction, self.output_keys))
        return passed if trace is not None else float(passed)

    def __repr__(self) -> str:
        return f"ReviewCheck({self.name!r}, {str(self.spec)!r})"


@dataclass(frozen=True)
class AlignedCriterion:
    """A review criterion with the automatic check the alignment chose for it.

    Attributes:
        name: The criterion's name.
        description: Its description.
        check: The chosen check.
        coverage: Share of human-Bad outputs the check fails.
        false_failure_rate: Share of human-Good outputs the check fails.
    """

    name: str
    description: str
    check: CheckSpec
    coverage: float | None
    false_failure_rate: float | None


@dataclass(frozen=True)
class PinnedCase:
    """An output a person graded Good: the program must keep passing the checks it passed.

    Attributes:
        item_key: The review item's key.
        inputs: Its input fields.
        outputs: The output the person approved.
    """

    item_key: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]


@dataclass
class PinnedReport:
    """Which pinned cases a program keeps passing.

    Attributes:
        by: ``"checks"`` (the aligned checks each approved output passed) or ``"metric"`` (no aligned
            check exists: the run's metric against the approved output).
        kept: Cases the program still passes.
        broken: Cases it now fails.
        unscored: Cases whose run failed (LM or program error): neither kept nor broken.
        broken_items: One entry per broken case: key, input, approved output, new output, failed checks.
    """

    by: str
    kept: int = 0
    broken: int = 0
    unscored: int = 0
    broken_items: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.kept + self.broken + self.unscored

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "kept": self.kept,
            "broken": self.broken,
            "unscored": self.unscored,
            "by": self.by,
            "broken_items": self.broken_items,
        }


@dataclass
class Feedback:
    """What a review store gives a compile; build it with :meth:`from_store`.

    Attributes:
        path: The store file.
        fingerprint: A hash of everything below (a changed review is a different compile).
        labeled: Good and corrected outputs.
        critiques: Bad outputs with their reasons.
        checks: Criteria with an aligned automatic check (each a metric part and a guard).
        skipped: Criteria left out, with why (no aligned check, or an LM judge).
        pinned: Outputs graded Good.
        output_keys: The output fields of the reviewed program (from the store's items).
    """

    path: str
    fingerprint: str
    labeled: list[LabeledExample]
    critiques: list[Critique]
    checks: list[AlignedCriterion]
    skipped: dict[str, str]
    pinned: list[PinnedCase]
    output_keys: list[str]

    # ---- reading ----------------------------------------------------------------------------
    @classmethod
    def from_store(cls, path: str | Path, *, threshold: float = DEFAULT_THRESHOLD) -> Feedback:
        """Read a review store (it is not changed).

        Args:
            path: The SQLite review store (``dspy-ext review --store``).
            threshold: Highest false failure rate of a chosen check.

        Returns:
            The :class:`Feedback`.

        Raises:
            FeedbackError: No such file, not a review store, or no graded output in it.
        """
        path = Path(path)
        if not path.is_file():
            raise FeedbackError(f"--feedback {path}: no such review store (make one with dspy-ext review)")
        try:
            store = ReviewStore(path)
        except ReviewError as exc:
            raise FeedbackError(f"--feedback {path}: {exc}") from None
        except Exception as exc:  # sqlite3.DatabaseError: not a database file
            raise FeedbackError(f"--feedback {path}: not a review store: {exc}") from None
        try:
            items = store.items()
            if not any(item.grade for item in items):
                raise FeedbackError(f"--feedback {path}: no graded outputs yet (grade some in dspy-ext review)")
            labeled, critiques = store.labeled_examples(), store.critiques()
            report = align(store, threshold, persist=False)
            by_id = {c.id: c for c in store.criteria()}
        finally:
            store.close()
        checks: list[AlignedCriterion] = []
        skipped: dict[str, str] = {}
        for entry in report.criteria:
            chosen = next((c for c in entry.candidates if c.chosen), None)
            criterion = by_id[entry.criterion_id]
            if chosen is None:
                skipped[entry.name] = (
                    f"no aligned check (none fails a Bad output with at most {threshold:.0%} false failures)"
                )
                continue
            spec = next(c.spec for c in criterion.checks if c.id == chosen.check_id)
            if spec.needs_lm:
                skipped[entry.name] = "its aligned check is an LM judge, which a compile does not run"
                continue
            checks.append(
                AlignedCriterion(entry.name, entry.description, spec, chosen.coverage, chosen.false_failure_rate)
            )
        pinned = [PinnedCase(item.key, dict(item.inputs), dict(item.outputs)) for item in items if item.grade == "good"]
        output_keys = list(dict.fromkeys(k for item in items for k in item.outputs))
        fingerprint = short_hash(
            {
                "labeled": [(e.item_key, e.outputs) for e in labeled],
                "critiques": [(c.item_key, c.reason, c.correction) for c in critiques],
                "checks": [(c.name, str(c.check)) for c in checks],
            },
            16,
        )
        return cls(str(path), fingerprint, labeled, critiques, checks, skipped, pinned, output_keys)

    # ---- what a compile uses -------------------------------------------------------------------
    def examples(self, input_keys: Sequence[str], output_keys: Sequence[str]) -> list[dspy.Example]:
        """The labeled examples as ``dspy.Example`` rows of a task with these fields.

        Raises:
            FeedbackError: The store's outputs were made for other fields (another task or program).
        """
        rows = []
        for example in self.labeled:
            if set(example.inputs) != set(input_keys) or set(example.outputs) != set(output_keys):
                raise FeedbackError(
                    f"--feedback {self.path}: a reviewed output has fields {sorted(example.inputs)} -> "
                    f"{sorted(example.outputs)}, the task has {sorted(input_keys)} -> {sorted(output_keys)}; "
                    "give the review store of this task"
                )
            rows.append(dspy.Example(**example.inputs, **example.outputs).with_inputs(*input_keys))
        return rows

    def search_feedback(self) -> SearchFeedback:
        """The critiques as plain data for the optimizers."""
        return SearchFeedback(
            tuple(
                HumanCritique(dict(c.inputs), dict(c.output), c.reason, c.correction, tuple(c.failed_criteria))
                for c in self.critiques
                if c.reason.strip()
            )
        )

    def metric_parts(self, output_keys: Sequence[str]) -> dict[str, ReviewCheck]:
        """Each criterion with an aligned check, as a metric part for :func:`~dspy_ext.evaluation.criteria`."""
        return {c.name: ReviewCheck(c.name, c.description, c.check, output_keys) for c in self.checks}

    def guards(self, tolerance: float = 0.0) -> dict[str, float]:
        """Each criterion with an aligned check as a guard: it may drop by at most ``tolerance`` points."""
        return dict.fromkeys((c.name for c in self.checks), float(tolerance))

    def pinned_examples(self, input_keys: Sequence[str]) -> list[dspy.Example]:
        """The pinned cases as ``dspy.Example`` rows (the approved output as the label)."""
        return [dspy.Example(**case.inputs, **case.outputs).with_inputs(*input_keys) for case in self.pinned]

    def check_pinned(
        self,
        program: dspy.Module,
        *,
        input_keys: Sequence[str],
        output_keys: Sequence[str],
        metric: Callable[..., Any] | None = None,
        evaluator_threads: int = 1,
        desc: str = "pinned",
    ) -> PinnedReport:
        """Run ``program`` on the pinned cases and say which it keeps passing.

        A case is kept when the new output passes every aligned check that the approved output passed
        (a check that already failed the approved output does not count against it). Without any
        aligned check, a case is kept when ``metric`` scores the new output 1 against the approved one.
        Runs in the caller's ``dspy.context`` (LM and adapter).

        Args:
            program: The program to check (e.g. the compiled one).
            input_keys: The program's input fields.
            output_keys: Its output fields.
            metric: The fallback without aligned checks (default: the outputs must be equal as text).
            evaluator_threads: Threads to run the cases on.
            desc: Progress label.

        Returns:
            A :class:`PinnedReport`.
        """
        parts = list(self.metric_parts(output_keys).values())
        report = PinnedReport(by="checks" if parts else "metric")
        examples = self.pinned_examples(input_keys)
        if not examples:
            return report
        judge = _PinnedJudge(parts, output_keys, metric or _same_output(output_keys))
        result = Evaluator(judge.metric, num_threads=evaluator_threads).evaluate(program, examples, desc=desc)
        for row in result.rows:
            if row.score is None:
                report.unscored += 1
            elif row.score >= 1.0:
                report.kept += 1
            else:
                report.broken += 1
                report.broken_items.append(judge.broken_item(self.pinned[row.index], row.prediction or {}))
        report.unscored += len(examples) - len(result.rows)  # rows never run (budget)
        return report

    def summary(self) -> dict[str, Any]:
        """Counts for a run report: what the store held and what the compile used."""
        return {
            "store": self.path,
            "fingerprint": self.fingerprint,
            "labeled": len(self.labeled),
            "corrected": sum(e.corrected for e in self.labeled),
            "critiques": len(self.critiques),
            "criteria": {
                c.name: {"check": str(c.check), "coverage": c.coverage, "false_failure_rate": c.false_failure_rate}
                for c in self.checks
            },
            "criteria_skipped": dict(self.skipped),
            "pinned": len(self.pinned),
        }


class _PinnedJudge:
    """Scores a program's new output on a pinned case, and says what a broken case broke.

    Args:
        parts: The aligned checks (empty: ``fallback`` decides).
        output_keys: The program's output fields.
        fallback: The metric against the approved output when there is no aligned check.
    """

    def __init__(self, parts: list[ReviewCheck], output_keys: Sequence[str], fallback: Callable[..., Any]) -> None:
        self.parts, self.output_keys, self.fallback = parts, list(output_keys), fallback

    def required(self, approved: Mapping[str, Any]) -> list[ReviewCheck]:
        """The aligned checks the approved output passed: the new output must pass them too."""
        return [check for check in self.parts if check.passes_outputs(approved)]

    def metric(self, example: dspy.Example, prediction: Any, trace: Any = None) -> float:
        """1.0 when the new output keeps passing what the approved one (the example's label) passed."""
        if not self.parts:
            return metric_value(self.fallback(example, prediction))
        approved = {k: example[k] for k in self.output_keys}
        return float(all(check(example, prediction) for check in self.required(approved)))

    def broken_item(self, case: PinnedCase, prediction: Any) -> dict[str, Any]:
        """A broken case as :attr:`PinnedReport.broken_items` lists it."""
        failed = (
            [check.name for check in self.required(case.outputs) if not check(None, prediction)]
            if self.parts
            else ["metric"]
        )
        return {
            "key": case.item_key,
            "input": fields_text(case.inputs),
            "approved": fields_text(case.outputs),
            "output": prediction_text(prediction, self.output_keys),
            "failed": failed,
        }


def _same_output(output_keys: Sequence[str]) -> Callable[..., float]:
    """The default pinned-case metric without aligned checks: the same output text, spacing and case aside."""

    def same(example: dspy.Example, prediction: Any, trace: Any = None) -> float:
        approved = fields_text({k: example[k] for k in output_keys})
        return float(
            " ".join(approved.split()).lower() == " ".join(prediction_text(prediction, output_keys).split()).lower()
        )

    return same
