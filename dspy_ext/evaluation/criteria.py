"""Metrics with several named criteria, and what a metric's return value means.

A metric ``metric(example, prediction, trace=None)`` may return:

* a number or a bool: one score;
* a mapping ``{"correct": 1.0, "format": 0.0}``: named criteria (the score is their mean);
* ``dspy.Prediction(score=..., criteria={...}, feedback="...")``, the form GEPA's metrics use
  (``criteria`` and ``feedback`` optional); a Prediction without ``criteria`` gives its other
  numeric fields as criteria.

:func:`measure` reads any of them into a :class:`Measurement` (score, criteria, feedback);
the evaluator calls it once per row and keeps all three.

:func:`criteria` builds a metric from parts, each an ordinary metric:

Example:
    >>> import dspy
    >>> from metrics import exact_match, max_words, one_of
    >>> metric = criteria(correct=exact_match, format=one_of(["positive", "negative"]), short=max_words(1),
    ...                   weights={"correct": 2, "format": 1, "short": 1})
    >>> ex = dspy.Example(input="A fine film.", output="positive").with_inputs("input")
    >>> m = metric.measure(ex, dspy.Prediction(output="positive, clearly"))
    >>> m.criteria, m.score
    ({'correct': 0.0, 'format': 0.0, 'short': 0.0}, 0.0)
    >>> metric(ex, dspy.Prediction(output="positive"))   # an ordinary float metric for any DSPy optimizer
    1.0
"""

from __future__ import annotations

import math
import statistics
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import dspy

from dspy_ext.prompt_state import demo_to_dict, short_hash

Metric = Callable[..., Any]


def metric_value(value: Any) -> float:
    """A metric's return value as one float.

    A bool or number is itself; ``dspy.Prediction(score=...)`` (or anything with ``score``) is its
    score; a mapping of criteria, or a Prediction holding only ``criteria``, is their mean.

    Raises:
        TypeError: Anything else.
    """
    return _read(value, need_score=True).score


def criteria_of(value: Any) -> dict[str, float]:
    """A metric's return value as ``{criterion: float}``.

    A mapping gives its items; ``dspy.Prediction(criteria={...})`` gives ``criteria``; another
    ``dspy.Prediction`` gives its numeric or boolean fields (``score`` first when present); a bool or
    number gives ``{"score": value}``.

    Raises:
        TypeError: For anything else, or a criterion that is not a number.
    """
    measurement = _read(value, need_score=False)
    return dict(measurement.criteria) if measurement.criteria is not None else {"score": measurement.score}


def feedback_of(value: Any) -> str | None:
    """The text of feedback a metric returned (``Prediction(feedback=...)`` or ``{"feedback": ...}``), if any."""
    if isinstance(value, (dspy.Prediction, Mapping)):
        text = value.get("feedback")
    else:
        text = getattr(value, "feedback", None)
    return str(text) if text not in (None, "") else None


@dataclass(frozen=True)
class Measurement:
    """One row's verdict: the scalar ``score`` (0-1), the named ``criteria`` (``None`` for a
    one-number metric) and the ``feedback`` text (``None`` if the metric gave none)."""

    score: float
    criteria: dict[str, float] | None = None
    feedback: str | None = None


def measure(metric: Metric, example: dspy.Example, prediction: Any) -> Measurement:
    """Call ``metric`` once on a row and read everything it returned.

    A metric with a ``measure(example, prediction)`` method (a :class:`CriteriaMetric`) is asked
    directly; any other metric is called and its return value read (see the module docstring).

    Raises:
        TypeError: The metric returned something that is not a score or criteria.
    """
    own = getattr(metric, "measure", None)
    if callable(own):
        return own(example, prediction)
    return _read(metric(example, prediction), need_score=True)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        out = float(value)
        if math.isnan(out):
            raise TypeError(f"criterion {name!r} is NaN")
        return out
    raise TypeError(f"criterion {name!r} is {type(value).__name__}; expected a bool or a number")


def _read(value: Any, *, need_score: bool) -> Measurement:
    if isinstance(value, (bool, int, float)):
        return Measurement(_number("score", value))
    feedback = feedback_of(value)
    if isinstance(value, dspy.Prediction):
        named = value.get("criteria")
        if isinstance(named, Mapping):
            crits = {str(k): _number(str(k), v) for k, v in named.items()}
            score = value.get("score")
            if score is None:
                if not crits:
                    raise TypeError("metric returned a Prediction with empty criteria and no score")
                score_value = statistics.fmean(crits.values())
            else:
                score_value = _number("score", score)
            return Measurement(score_value, crits or None, feedback)
        items = {k: v for k, v in value.items() if isinstance(v, (bool, int, float))}
        if "score" not in items and not items:
            raise TypeError("metric returned a Prediction without a numeric score or criteria")
        crits = {str(k): _number(str(k), v) for k, v in items.items()}
        if "score" in crits:
            crits = {"score": crits.pop("score"), **crits}
        score_value = crits["score"] if "score" in crits else statistics.fmean(crits.values())
        # A Prediction(score=..., feedback=...) alone is one number with feedback, not a criterion table.
        return Measurement(score_value, crits if len(crits) > 1 or "score" not in crits else None, feedback)
    if isinstance(value, Mapping):
        crits = {str(k): _number(str(k), v) for k, v in value.items() if k != "feedback"}
        if not crits:
            raise TypeError("metric returned no criteria")
        return Measurement(statistics.fmean(crits.values()), crits, feedback)
    if hasattr(value, "score"):
        return Measurement(_number("score", value.score), None, feedback)
    raise TypeError(
        f"metric returned {type(value).__name__}; expected bool, a number, a mapping of criteria "
        "or Prediction(score=..., criteria=...)"
    )


def _row_key(example: dspy.Example) -> str:
    return short_hash(demo_to_dict(example))


class CriteriaMetric:
    """A metric with named criteria: a float for DSPy, every criterion for dspy-ext's evaluator.

    Called as a metric it returns one float, the *objective* (so any DSPy optimizer can use it);
    :meth:`measure` returns the objective with every criterion and a feedback text, and dspy-ext's
    evaluator asks for that. Every row scored without a trace is recorded, so :meth:`means` gives
    each criterion's mean since the last :meth:`reset` (used by ``tune``).

    The objective is, in this order: the ``weights``-weighted mean of the criteria; the ``primary``
    criterion; the score the wrapped metric returned itself (``Prediction(score=..., criteria=...)``);
    else the first criterion (which becomes ``primary``).

    Args:
        metric: ``metric(example, prediction, trace=None)`` returning one value or several criteria.
        primary: The criterion to maximise (instead of weights).
        weights: ``{criterion: weight}`` (weights >= 0, not all 0); criteria left out weigh 0.

    Example:
        >>> import dspy
        >>> def metric(example, prediction, trace=None):
        ...     return {"accuracy": float(prediction.output == example.output),
        ...             "brevity": float(len(prediction.output.split()) <= 2)}
        >>> cm = CriteriaMetric(metric)
        >>> ex = dspy.Example(input="x", output="yes").with_inputs("input")
        >>> cm(ex, dspy.Prediction(output="yes it is"))
        0.0
        >>> cm.criteria, cm.primary
        (['accuracy', 'brevity'], 'accuracy')
    """

    def __init__(
        self,
        metric: Metric,
        primary: str | None = None,
        *,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        if primary is not None and weights is not None:
            raise ValueError("give primary or weights, not both")
        if weights is not None:
            weights = {str(k): float(v) for k, v in weights.items()}
            bad = [k for k, v in weights.items() if not v >= 0]
            if bad or not any(weights.values()):
                raise ValueError(f"weights must be >= 0 and not all 0, got {weights}")
        self.metric = metric
        self.primary = primary
        self.weights: dict[str, float] | None = weights
        self.criteria: list[str] = []
        self.parts: dict[str, Metric] = {}
        self._rows: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()
        self.__name__ = getattr(metric, "__name__", "criteria")

    # ---- scoring ---------------------------------------------------------------------------
    def objective(self, values: Mapping[str, float], own_score: float | None = None) -> float:
        """The scalar objective of one row's criteria (see the class docstring).

        Raises:
            KeyError: A weighted or primary criterion the metric did not return.
        """
        if self.weights is not None:
            missing = [k for k, w in self.weights.items() if w and k not in values]
            if missing:
                raise KeyError(f"metric returned {sorted(values)}; weighted criteria {missing} are missing")
            total = sum(self.weights.values())
            return sum(w * values[k] for k, w in self.weights.items() if w) / total
        if self.primary is not None:
            if self.primary not in values:
                raise KeyError(f"metric returned {sorted(values)}; the primary criterion {self.primary!r} is missing")
            return values[self.primary]
        if own_score is not None:
            return own_score
        with self._lock:
            if self.primary is None:
                self.primary = next(iter(values))
        return values[self.primary]

    def measure(self, example: dspy.Example, prediction: Any) -> Measurement:
        """Score one row: the objective, every criterion, and the feedback (recorded for :meth:`means`)."""
        read = measure(self.metric, example, prediction)  # a wrapped criteria metric gives all its criteria
        own = read.score if read.criteria is not None else None
        values = dict(read.criteria) if read.criteria is not None else {"score": read.score}
        score = self.objective(values, own)
        with self._lock:
            if not self.criteria:
                self.criteria = list(values)
            self._rows[_row_key(example)] = values
        return Measurement(score, values, read.feedback)

    def __call__(self, example: dspy.Example, prediction: Any, trace: Any = None) -> float | bool:
        if trace is None:
            return self.measure(example, prediction).score
        # With a trace (DSPy bootstrapping a demo) nothing is recorded.
        value = self.metric(example, prediction, trace)
        if isinstance(value, bool):
            return value
        read = _read(value, need_score=False)
        values = dict(read.criteria) if read.criteria is not None else {"score": read.score}
        return self.objective(values, read.score if read.criteria is not None else None)

    # ---- recorded rows -----------------------------------------------------------------------
    def reset(self) -> None:
        with self._lock:
            self._rows.clear()

    def rows(self, examples: list[dspy.Example] | None = None) -> list[dict[str, float]]:
        """The recorded criteria of ``examples`` (all recorded rows when ``None``)."""
        with self._lock:
            if examples is None:
                return list(self._rows.values())
            return [self._rows[k] for k in (_row_key(ex) for ex in examples) if k in self._rows]

    def means(self, examples: list[dspy.Example] | None = None) -> dict[str, float]:
        """Each criterion's mean on a 0-100 scale over the recorded rows of ``examples``."""
        rows = self.rows(examples)
        names = self.criteria or sorted({k for r in rows for k in r})
        return {
            name: round(100.0 * statistics.fmean(r[name] for r in rows if name in r), 4)
            if any(name in r for r in rows)
            else 0.0
            for name in names
        }

    def __repr__(self) -> str:
        inside = ", ".join(self.parts) if self.parts else getattr(self.metric, "__name__", repr(self.metric))
        return f"CriteriaMetric({inside}; weights={self.weights}, primary={self.primary!r})"


class _Parts:
    """The metric behind :func:`criteria`: every part on the row; feedback names the failed ones."""

    def __init__(self, parts: dict[str, Metric]) -> None:
        self.parts = parts
        self.__name__ = "criteria(" + ", ".join(parts) + ")"

    def __call__(self, example: dspy.Example, prediction: Any, trace: Any = None) -> Any:
        if trace is not None:
            # Bootstrapping keeps a demo only when it passes every part.
            return all(bool(part(example, prediction, trace)) for part in self.parts.values())
        values: dict[str, float] = {}
        notes: list[str] = []
        for name, part in self.parts.items():
            read = measure(part, example, prediction)
            values[name] = read.score
            if read.feedback:
                notes.append(f"{name}: {read.feedback}")
            elif read.score < 1.0:
                what = getattr(part, "description", None)
                notes.append(f"{name}: expected {what}" if what else f"{name}: scored {read.score:.2f}")
        return dspy.Prediction(criteria=values, feedback="; ".join(notes) or None)


def criteria(*, weights: Mapping[str, float] | None = None, **parts: Metric) -> CriteriaMetric:
    """A metric whose criteria are ``parts``, each an ordinary metric ``(example, prediction, trace=None)``.

    Args:
        weights: ``{part: weight}`` giving the scalar objective (default: every part weighs 1).
        **parts: The criteria, by name, in report order.

    Returns:
        A :class:`CriteriaMetric`: a float (the weighted mean) when called, every part from
        ``measure``; with a trace, ``True`` only when every part passes. Its feedback names the parts a
        row failed, with the check's description (e.g. ``"format: expected one of: positive, negative"``).

    Raises:
        ValueError: No parts, a part that is not callable, or weights naming no part.

    Example:
        >>> from metrics import exact_match, one_of
        >>> metric = criteria(correct=exact_match, format=one_of(["positive", "negative"]))
        >>> metric.criteria
        ['correct', 'format']
    """
    if not parts:
        raise ValueError("criteria() needs at least one named part, e.g. criteria(correct=exact_match)")
    for name, part in parts.items():
        if not callable(part):
            raise ValueError(f"criterion {name!r} is {type(part).__name__}, not a metric")
    unknown = sorted(set(weights or {}) - set(parts))
    if unknown:
        raise ValueError(f"weights name {unknown}, which are not criteria ({', '.join(parts)})")
    full_weights = {name: float((weights or {}).get(name, 0.0 if weights else 1.0)) for name in parts}
    metric = CriteriaMetric(_Parts(dict(parts)), weights=full_weights)
    metric.parts = dict(parts)
    metric.criteria = list(parts)
    metric.__name__ = metric.metric.__name__
    return metric


def criteria_names(metric: Metric) -> list[str] | None:
    """The criteria a metric is known to return before it runs (a :func:`criteria` metric), else ``None``."""
    if isinstance(metric, CriteriaMetric) and metric.parts:
        return list(metric.parts)
    return None
