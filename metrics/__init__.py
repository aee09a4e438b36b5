"""Metrics for DSPy programs: ``metric(example, prediction, trace=None)``.

Plain functions score the example's label fields; the classes take
``field=`` to score a named field. See :mod:`metrics.text` for the rules
(normalisation, accepted alternatives, trace mode).

Example:
    >>> import dspy
    >>> from metrics import get_metric
    >>> metric = get_metric("exact_match")
    >>> ex = dspy.Example(input="x", output="Positive").with_inputs("input")
    >>> metric(ex, dspy.Prediction(output="positive."))
    1.0
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from metrics.checks import Check, contains_text, matches, max_words, not_contains, one_of, valid_json
from metrics.text import (
    Contains,
    ExactMatch,
    FieldMetric,
    NumericMatch,
    TokenF1,
    contains,
    exact_match,
    normalize_text,
    numeric_match,
    parse_number,
    token_f1,
)

__all__ = [
    "METRICS",
    "Check",
    "contains_text",
    "matches",
    "max_words",
    "not_contains",
    "one_of",
    "valid_json",
    "METRIC_CLASSES",
    "Contains",
    "ExactMatch",
    "FieldMetric",
    "NumericMatch",
    "TokenF1",
    "contains",
    "exact_match",
    "get_metric",
    "normalize_text",
    "numeric_match",
    "parse_number",
    "token_f1",
]

Metric = Callable[..., Any]

#: Metric functions by name (they score the example's label fields).
METRICS: dict[str, Metric] = {
    "exact_match": exact_match,
    "contains": contains,
    "token_f1": token_f1,
    "numeric_match": numeric_match,
}

#: The class behind each registered metric, for ``field=``-specific instances.
METRIC_CLASSES: dict[str, type[FieldMetric]] = {
    "exact_match": ExactMatch,
    "contains": Contains,
    "token_f1": TokenF1,
    "numeric_match": NumericMatch,
}


def get_metric(name: str, *, field: str | None = None) -> Metric:
    """Look up a metric by name.

    Args:
        name: One of the keys of :data:`METRICS` (case and ``-``/``_``
            insensitive, e.g. ``"exact-match"``).
        field: If given, return an instance scoring only this field instead of
            the plain function.

    Returns:
        A callable ``metric(example, prediction, trace=None)``.

    Raises:
        ValueError: If the name is unknown; the message lists the valid names.

    Example:
        >>> get_metric("token_f1").__name__
        'token_f1'
        >>> get_metric("exact_match", field="answer")
        ExactMatch(field=('answer',), threshold=1.0)
    """
    key = name.strip().lower().replace("-", "_")
    if key not in METRICS:
        valid = ", ".join(sorted(METRICS))
        raise ValueError(f"unknown metric {name!r}; valid metrics: {valid}")
    if field is not None:
        return METRIC_CLASSES[key](field=field)
    return METRICS[key]
