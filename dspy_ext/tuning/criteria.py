"""Metrics with several named criteria.

A metric may return a mapping ``{"accuracy": 1.0, "brevity": 0.0}`` (or a
``dspy.Prediction`` with several numeric fields) instead of one number.
:class:`CriteriaMetric` turns such a metric into what the optimizers need (one
number: the primary criterion) while recording every criterion of every row
it scores, so a trial can report all of them.

Example:
    >>> def metric(example, prediction, trace=None):
    ...     return {"accuracy": float(prediction.output == example.output),
    ...             "brevity": float(len(prediction.output.split()) <= 2)}
    >>> cm = CriteriaMetric(metric)
    >>> import dspy
    >>> ex = dspy.Example(input="x", output="yes").with_inputs("input")
    >>> cm(ex, dspy.Prediction(output="yes it is"))
    0.0
    >>> cm.criteria, cm.primary
    (['accuracy', 'brevity'], 'accuracy')
"""

from __future__ import annotations

import statistics
import threading
from collections.abc import Callable, Mapping
from typing import Any

import dspy

from dspy_ext.evaluation import example_key, metric_value


def criteria_of(value: Any) -> dict[str, float]:
    """A metric's return value as ``{criterion: float}``.

    A mapping gives its items; a ``dspy.Prediction`` gives its numeric or boolean
    fields (``score`` first when present); a bool or number gives ``{"score": value}``.

    Raises:
        TypeError: For anything else, or a criterion that is not a number.
    """
    if isinstance(value, Mapping):
        items = dict(value)
    elif isinstance(value, dspy.Prediction):
        items = {k: v for k, v in value.items() if isinstance(v, (bool, int, float))}
        if not items:
            raise TypeError("metric returned a Prediction without numeric fields")
        if "score" in items:
            items = {"score": items.pop("score"), **items}
    else:
        return {"score": metric_value(value)}
    out = {}
    for name, v in items.items():
        try:
            out[str(name)] = metric_value(v)
        except TypeError:
            raise TypeError(f"criterion {name!r} is {type(v).__name__}; expected a bool or a number") from None
    if not out:
        raise TypeError("metric returned no criteria")
    return out


class CriteriaMetric:
    """Wraps a metric; returns its primary criterion and records every criterion per example.

    Args:
        metric: ``metric(example, prediction, trace=None)`` returning one value or several criteria.
        primary: The criterion the optimizers maximise (default: the first one the metric returns).

    After an evaluation, :meth:`means` gives each criterion's mean over the
    examples recorded since the last :meth:`reset`.
    """

    def __init__(self, metric: Callable[..., Any], primary: str | None = None) -> None:
        self.metric = metric
        self.primary = primary
        self.criteria: list[str] = []
        self._rows: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()

    def __call__(self, example: dspy.Example, prediction: Any, trace: Any = None) -> float:
        value = self.metric(example, prediction, trace) if trace is not None else self.metric(example, prediction)
        criteria = criteria_of(value)
        with self._lock:
            if not self.criteria:
                self.criteria = list(criteria)
            if self.primary is None:
                self.primary = self.criteria[0]
            if self.primary not in criteria:
                raise KeyError(f"metric returned {sorted(criteria)}; the primary criterion {self.primary!r} is missing")
            if trace is None:
                self._rows[example_key(example)] = criteria
        return criteria[self.primary]

    def reset(self) -> None:
        with self._lock:
            self._rows.clear()

    def rows(self, examples: list[dspy.Example] | None = None) -> list[dict[str, float]]:
        """The recorded criteria of ``examples`` (all recorded rows when ``None``)."""
        with self._lock:
            if examples is None:
                return list(self._rows.values())
            return [self._rows[k] for k in (example_key(ex) for ex in examples) if k in self._rows]

    def means(self, examples: list[dspy.Example] | None = None) -> dict[str, float]:
        """Each criterion's mean on a 0-100 scale over the recorded rows of ``examples``."""
        rows = self.rows(examples)
        names = self.criteria or sorted({k for r in rows for k in r})
        return {name: round(100.0 * statistics.fmean(r[name] for r in rows if name in r), 4)
                if any(name in r for r in rows) else 0.0 for name in names}
