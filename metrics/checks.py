"""Small checks of a prediction's form, as metrics: one label of a set, at most N words, a regex, JSON.

Each factory returns a metric ``metric(example, prediction, trace=None)`` that
needs no gold answer: it checks the *form* of the output, so it can stand
next to a correctness metric as a named criterion
(``dspy_ext.evaluation.criteria(correct=exact_match, format=one_of([...]))``).

Which fields are checked: ``field`` (a name or a sequence of names), else the
example's label fields, else every field of the prediction. The score is the
share of checked fields that pass (1.0 or 0.0 with one field); with a trace
(DSPy bootstrapping) it is a ``bool``: every checked field passes.

Every check has a ``description`` ("one of: positive, negative"): the
criteria metric uses it as feedback text when the check fails.

Example:
    >>> import dspy
    >>> ex = dspy.Example(input="x", output="positive").with_inputs("input")
    >>> one_of(["positive", "negative"])(ex, dspy.Prediction(output="Positive."))
    1.0
    >>> max_words(1)(ex, dspy.Prediction(output="positive, I think"))
    0.0
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from metrics.text import _get, _label_fields, normalize_text

__all__ = [
    "Check",
    "contains_text",
    "matches",
    "max_words",
    "not_contains",
    "one_of",
    "valid_json",
]


class Check:
    """A check of one or more prediction fields: pass (1.0) or fail (0.0) per field, averaged.

    Args:
        name: Short name (used as ``__name__``).
        description: What a passing output is, e.g. ``"at most 3 words"`` (feedback text).
        passes: ``passes(text) -> bool`` on one field's value, as text.
        field: A field name, a sequence of names, or ``None`` (the example's label fields,
            else every field of the prediction).
    """

    def __init__(
        self, name: str, description: str, passes: Callable[[str], bool], field: str | Sequence[str] | None = None
    ) -> None:
        if isinstance(field, str):
            self.fields: tuple[str, ...] | None = (field,)
        elif field is None:
            self.fields = None
        else:
            self.fields = tuple(field)
            if not self.fields:
                raise ValueError("field must be a name, a non-empty sequence of names or None")
        self.description = description
        self.passes = passes
        self.__name__ = name if self.fields is None else f"{name}[{','.join(self.fields)}]"

    def _fields(self, example: Any, prediction: Any) -> list[str]:
        if self.fields is not None:
            return list(self.fields)
        fields = _label_fields(example)
        if fields:
            return fields
        keys = getattr(prediction, "keys", None)
        return [k for k in keys() if not str(k).startswith("dspy_")] if callable(keys) else []

    def score(self, example: Any, prediction: Any) -> float:
        """The share of checked fields that pass (0.0 when there is no field to check)."""
        fields = self._fields(example, prediction)
        if not fields:
            return 0.0
        passed = 0
        for field in fields:
            value = _get(prediction, field)
            if value is not None and self.passes(str(value)):
                passed += 1
        return passed / len(fields)

    def __call__(self, example: Any, prediction: Any, trace: Any = None) -> float | bool:
        value = self.score(example, prediction)
        return value >= 1.0 if trace is not None else value

    def __repr__(self) -> str:
        return f"Check({self.__name__!r}: {self.description})"


def one_of(labels: Iterable[str], field: str | Sequence[str] | None = None) -> Check:
    """The output is one of ``labels`` (compared after :func:`~metrics.text.normalize_text`).

    Raises:
        ValueError: ``labels`` is empty.
    """
    allowed = [str(label) for label in labels]
    if not allowed:
        raise ValueError("one_of needs at least one label")
    normalized = {normalize_text(label) for label in allowed}
    return Check("one_of", f"one of: {', '.join(allowed)}", lambda text: normalize_text(text) in normalized, field)


def max_words(n: int, field: str | Sequence[str] | None = None) -> Check:
    """The output has at most ``n`` words (whitespace-separated).

    Raises:
        ValueError: ``n`` is below 1.
    """
    if n < 1:
        raise ValueError(f"max_words needs n >= 1, got {n}")
    return Check("max_words", f"at most {n} word{'s' if n > 1 else ''}", lambda text: len(text.split()) <= n, field)


def matches(regex: str | re.Pattern[str], field: str | Sequence[str] | None = None) -> Check:
    """The whole output (stripped) matches ``regex`` (``re.fullmatch``).

    Raises:
        ValueError: ``regex`` does not compile.
    """
    try:
        pattern = re.compile(regex) if isinstance(regex, str) else regex
    except re.error as exc:
        raise ValueError(f"matches: invalid regular expression {regex!r}: {exc}") from None
    return Check(
        "matches", f"matching /{pattern.pattern}/", lambda text: pattern.fullmatch(text.strip()) is not None, field
    )


def contains_text(s: str, field: str | Sequence[str] | None = None, *, case_sensitive: bool = False) -> Check:
    """The output contains ``s`` (case-insensitive unless ``case_sensitive``)."""
    if not s:
        raise ValueError("contains_text needs a non-empty string")
    needle = s if case_sensitive else s.lower()
    return Check(
        "contains_text", f"containing {s!r}", lambda text: needle in (text if case_sensitive else text.lower()), field
    )


def not_contains(s: str, field: str | Sequence[str] | None = None, *, case_sensitive: bool = False) -> Check:
    """The output does not contain ``s`` (case-insensitive unless ``case_sensitive``)."""
    if not s:
        raise ValueError("not_contains needs a non-empty string")
    needle = s if case_sensitive else s.lower()
    return Check(
        "not_contains",
        f"not containing {s!r}",
        lambda text: needle not in (text if case_sensitive else text.lower()),
        field,
    )


def _is_json(text: str) -> bool:
    body = text.strip()
    if body.startswith("```"):
        # A fenced block: the JSON is what the fence holds.
        body = body.strip("`").removeprefix("json").strip()
    try:
        json.loads(body)
    except (ValueError, RecursionError):
        return False
    return True


def valid_json(field: str | Sequence[str] | None = None) -> Check:
    """The output parses as JSON (a Markdown code fence around it is allowed)."""
    return Check("valid_json", "valid JSON", _is_json, field)
