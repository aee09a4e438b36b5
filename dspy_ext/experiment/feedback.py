"""Merging human review into a compile (``--feedback STORE``; ``RunSettings(feedback=...)``).

:func:`merge_feedback` takes what :meth:`dspy_ext.review.feedback.Feedback.from_store` read and
the run's own parts, and returns what the compile uses instead:

* **train pool**: the labeled examples (Good and corrected outputs) join the training rows, where
  they are candidates for demos and rows for scoring. A reviewed input that is also a validation or
  test row is left out of training (it would leak into the scores that choose and judge the result);
  one already among the training rows takes the person's label;
* **metric**: the run's metric and the review criteria's aligned checks, combined with
  :func:`dspy_ext.evaluation.criteria`; the objective stays the run's metric (the review criteria
  weigh 0), and each review criterion is a **guard** at tolerance 0 unless the run's guards name it;
* **critiques**: for the optimizers that use them (those whose registry entry says ``takes_feedback``).

Example:
    >>> merged = merge_feedback(Feedback.from_store("review.sqlite"), metric=exact_match,      # doctest: +SKIP
    ...                         metric_name="exact_match", task=task, train=train, val=val)
    >>> merged.metric.criteria, merged.guards                                                 # doctest: +SKIP
    (['exact_match', 'label only'], {'label only': 0.0})
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import dspy

from dspy_ext.data import TaskData
from dspy_ext.evaluation import CriteriaMetric, criteria
from dspy_ext.search.feedback import SearchFeedback

if TYPE_CHECKING:
    from dspy_ext.review.feedback import Feedback

logger = logging.getLogger(__name__)


@dataclass
class FeedbackMerge:
    """A compile's parts with the human review merged in.

    Attributes:
        feedback: What the review store held.
        metric: The run's metric with the review criteria as further criteria (the run's own metric
            when no criterion has an aligned check).
        train: The training rows with the labeled examples.
        guards: The run's guards with every review criterion (tolerance 0 unless the run names it).
        critiques: The critiques for the optimizer (``None`` when there are none).
        added: Labeled examples added to the training rows.
        relabeled: Training rows whose label the person's replaced.
        held_out: Labeled examples left out because their input is a validation or test row.
    """

    feedback: Feedback
    metric: Callable[..., Any]
    train: list[dspy.Example]
    guards: dict[str, float]
    critiques: SearchFeedback | None
    added: int = 0
    relabeled: int = 0
    held_out: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The ``feedback`` entry of a run report."""
        return {
            **self.feedback.summary(),
            "added_to_train": self.added,
            "relabeled": self.relabeled,
            "held_out": self.held_out,
            "guards": dict(self.guards),
            "critiques_to_optimizer": len(self.critiques) if self.critiques else 0,
            "notes": list(self.notes),
        }


def _inputs_key(example: dspy.Example, input_keys: list[str]) -> tuple[str, ...]:
    return tuple(str(example.get(k)) for k in input_keys)


def combined_metric(
    metric: Callable[..., Any],
    metric_name: str,
    review_parts: Mapping[str, Callable[..., Any]],
) -> Callable[..., Any]:
    """The run's metric with the review checks as further criteria; the objective stays the run's metric.

    A run metric that already has criteria (a :func:`~dspy_ext.evaluation.criteria` metric) keeps
    them and its weights; any other metric becomes the criterion ``metric_name``.

    Raises:
        ValueError: A review criterion has the name of one of the run metric's criteria.
    """
    if not review_parts:
        return metric
    if isinstance(metric, CriteriaMetric) and metric.parts:
        own = dict(metric.parts)
        weights = dict(metric.weights or dict.fromkeys(own, 1.0))
    else:
        own = {metric_name: metric}
        weights = {metric_name: 1.0}
    clash = sorted(set(own) & set(review_parts))
    if clash:
        raise ValueError(
            f"review criteria {clash} have the names of the run metric's criteria; rename them in dspy-ext review"
        )
    return criteria(**own, **review_parts, weights=weights)


def merge_feedback(
    feedback: Feedback,
    *,
    metric: Callable[..., Any],
    metric_name: str,
    task: TaskData,
    train: list[dspy.Example],
    val: list[dspy.Example],
    guards: Mapping[str, float] | None = None,
    optimizer_uses_critiques: bool = True,
) -> FeedbackMerge:
    """Merge a review into a compile's train rows, metric, guards and optimizer input.

    Args:
        feedback: The review (:meth:`~dspy_ext.review.feedback.Feedback.from_store`).
        metric: The run's metric.
        metric_name: Its criterion name in the combined metric (e.g. ``exact_match``).
        task: The task (its fields, and its test split: no test input joins training).
        train: The run's training rows.
        val: The run's validation rows (no validation input joins training).
        guards: The run's own guards; they override the review criteria's default of 0.
        optimizer_uses_critiques: Whether the optimizer takes critiques (else they are noted, not passed).

    Returns:
        A :class:`FeedbackMerge`.

    Raises:
        FeedbackError: The store's outputs were made for other fields than the task's.
    """
    input_keys, output_keys = list(task.input_keys), list(task.output_keys)
    scored_elsewhere = {_inputs_key(ex, input_keys) for ex in [*val, *task.test]}
    rows = _merge_rows(feedback.examples(input_keys, output_keys), train, scored_elsewhere, input_keys)
    notes = []
    if rows.held_out:
        notes.append(
            f"{rows.held_out} labeled example(s) left out of training: their inputs are validation or test "
            "rows (review outputs of training inputs to use them)"
        )
    parts = feedback.metric_parts(output_keys)
    review_guards = feedback.guards(0.0)
    review_guards.update(guards or {})
    critiques = feedback.search_feedback() or None
    if critiques is not None and not optimizer_uses_critiques:
        notes.append(f"{len(critiques)} critique(s) not used: this optimizer takes no critiques")
        critiques = None
    for name, why in feedback.skipped.items():
        notes.append(f"criterion {name!r} not used: {why}")
    for note in notes:
        logger.info("feedback: %s", note)
    return FeedbackMerge(
        feedback=feedback,
        metric=combined_metric(metric, metric_name, parts),
        train=rows.train,
        guards=review_guards,
        critiques=critiques,
        added=rows.added,
        relabeled=rows.relabeled,
        held_out=rows.held_out,
        notes=notes,
    )


@dataclass
class _MergedRows:
    train: list[dspy.Example]
    added: int = 0
    relabeled: int = 0
    held_out: int = 0


def _merge_rows(
    labeled: list[dspy.Example],
    train: list[dspy.Example],
    scored_elsewhere: set[tuple[str, ...]],
    input_keys: list[str],
) -> _MergedRows:
    """The training rows with the labeled examples: new inputs added, known ones relabeled, scored ones held out."""
    by_input = {_inputs_key(ex, input_keys): index for index, ex in enumerate(train)}
    merged = _MergedRows(list(train))
    for example in labeled:
        key = _inputs_key(example, input_keys)
        if key in scored_elsewhere:
            merged.held_out += 1
        elif key in by_input:
            if merged.train[by_input[key]].labels() != example.labels():
                merged.train[by_input[key]] = example
                merged.relabeled += 1
        else:
            by_input[key] = len(merged.train)
            merged.train.append(example)
            merged.added += 1
    return merged


def merge_review_store(
    settings: Any,
    *,
    metric: Callable[..., Any],
    task: TaskData,
    train: list[dspy.Example],
    val: list[dspy.Example],
    optimizer_uses_critiques: bool = True,
) -> FeedbackMerge:
    """Read the review store ``settings.feedback`` and merge it (see :func:`merge_feedback`).

    Args:
        settings: The run's or the tune's settings: ``feedback`` (the store), ``metric`` (its name or
            import path) and ``guards``.
        metric: The metric the review criteria join.
        task: The task.
        train: The training rows the labeled examples join.
        val: The validation rows (no validation input joins training).
        optimizer_uses_critiques: Whether the optimizer takes critiques.

    Raises:
        SettingsError: The store cannot be read or was made for other fields (one line naming it).
    """
    from dspy_ext.experiment.settings import SettingsError
    from dspy_ext.review.feedback import Feedback, FeedbackError

    try:
        return merge_feedback(
            Feedback.from_store(str(settings.feedback)),
            metric=metric,
            metric_name=settings.metric.rpartition(":")[2],
            task=task,
            train=train,
            val=val,
            guards=settings.guards,
            optimizer_uses_critiques=optimizer_uses_critiques,
        )
    except (FeedbackError, ValueError) as exc:
        raise SettingsError(f"invalid settings: feedback: {exc}") from None
