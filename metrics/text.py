"""Text and number metrics with the DSPy metric signature.

Every metric here is callable as ``metric(example, prediction, trace=None)``:

* with ``trace=None`` (evaluation) it returns a float score in ``[0, 1]``;
* with a trace (DSPy bootstrapping decides whether to keep a demo) it returns
  a ``bool``: ``score >= 1.0`` for :class:`ExactMatch`, :class:`Contains` and
  :class:`NumericMatch`, ``score >= threshold`` for :class:`TokenF1`.

Which fields are compared:

* a class instance built with ``field="answer"`` (or a sequence of fields)
  scores exactly those fields;
* the plain functions (``exact_match`` ...) and ``field=None`` score the
  example's label fields, i.e. the keys of ``example.labels()`` minus
  ``accepted``; with several label fields the score is their mean. An example
  whose inputs were never declared (no ``with_inputs``) is scored on ``output``.

A missing (or ``None``) field in the prediction scores 0.0 for that field.

Alternative right answers come from ``example.accepted``: a list of strings
applies when a single field is scored; a dict ``{field: [answers, ...]}``
gives alternatives per field.
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "Contains",
    "ExactMatch",
    "FieldMetric",
    "NumericMatch",
    "TokenF1",
    "contains",
    "exact_match",
    "normalize_text",
    "numeric_match",
    "parse_number",
    "token_f1",
]

ACCEPTED_KEY = "accepted"

# Quote characters stripped from both ends. The straight apostrophe is handled
# separately (only as a matching pair) so that "dogs'" keeps its apostrophe.
_QUOTES = '"`\u201c\u201d\u201e\u00ab\u00bb\u2018\u2019\u201a'
_TRAILING_PUNCT = ".!?,;"


def normalize_text(text: Any) -> str:
    """Normalise a value for comparison.

    Steps: convert to ``str`` (``None`` becomes ``""``), Unicode NFKC, lowercase,
    strip surrounding whitespace, surrounding quotes and trailing sentence
    punctuation (``. ! ? , ;``), repeatedly until stable, then collapse internal
    runs of whitespace to one space.

    Args:
        text: The value to normalise (usually a string).

    Returns:
        The normalised string.

    Example:
        >>> normalize_text('  "Hello,   World!" ')
        'hello, world'
    """
    if text is None:
        return ""
    s = unicodedata.normalize("NFKC", str(text)).lower()
    s = " ".join(s.split())
    previous = None
    while s != previous:
        previous = s
        s = s.strip()
        s = s.strip(_QUOTES)
        s = s.rstrip(_TRAILING_PUNCT)
        if len(s) >= 2 and s[0] == s[-1] == "'":
            s = s[1:-1]
    return s


def _tokens(text: Any) -> list[str]:
    """Split normalised text into word tokens, dropping punctuation (SQuAD-style)."""
    s = normalize_text(text)
    s = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in s)
    return s.split()


_NUMBER_WORDS: dict[str, int] = {
    word: value
    for value, word in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
            "twenty",
        ]
    )
}

# A sign counts only when it does not follow a word character, so "covid-19"
# parses as 19, not -19. Thousands groups need exactly three digits.
_DIGITS_RE = re.compile(
    r"(?:(?<![\w.])[-+])?"
    r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?:e[-+]?\d+)?(?!\d)",
    re.IGNORECASE,
)
_WORD_RE = re.compile(r"\b(" + "|".join(_NUMBER_WORDS) + r")\b", re.IGNORECASE)


def parse_number(text: Any) -> float | None:
    """Return the first number in ``text``, or ``None`` if there is none.

    Understands integers, decimals, thousands separators (``1,234.5``), a
    leading sign and exponents (``1e3``). Only when the text has no digits,
    the English words ``zero`` to ``twenty`` are read as numbers.

    Args:
        text: The value to search (converted with ``str``).

    Returns:
        The number as a float, or ``None``.

    Example:
        >>> parse_number("About -1,234.5 units")
        -1234.5
        >>> parse_number("twelve eggs")
        12.0
    """
    if text is None:
        return None
    if isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        return float(text)
    # NFKC folds full-width digits; the Unicode minus sign is not folded by it.
    s = unicodedata.normalize("NFKC", str(text)).replace("\u2212", "-")
    match = _DIGITS_RE.search(s)
    if match is not None:
        return float(match.group(0).replace(",", ""))
    # Words only as a fallback: "one" is often a pronoun ("the one with 5 legs").
    word = _WORD_RE.search(s)
    if word is not None:
        return float(_NUMBER_WORDS[word.group(1).lower()])
    return None


def _get(obj: Any, key: str) -> Any:
    """Read ``key`` from an Example/Prediction/mapping/object, ``None`` if absent."""
    if isinstance(obj, Mapping):
        return obj.get(key)
    getter = getattr(obj, "get", None)
    if callable(getter):
        try:
            return getter(key)
        except (KeyError, AttributeError, TypeError):
            return None
    return getattr(obj, key, None)


def _label_fields(example: Any) -> list[str]:
    """The fields to score when no ``field`` was given: the example's labels."""
    labels = getattr(example, "labels", None)
    if callable(labels):
        try:
            keys = list(labels().keys())
        except ValueError:
            # Inputs were never declared with .with_inputs(): every key could
            # be a label, so fall back to the conventional "output" field.
            keys = ["output"] if _get(example, "output") is not None else []
    elif isinstance(example, Mapping):
        keys = ["output"] if "output" in example else []
    else:
        keys = []
    return [k for k in keys if k != ACCEPTED_KEY and not k.startswith("dspy_")]


def _alternatives(example: Any, field: str, n_fields: int) -> list[Any]:
    """Accepted alternative answers for ``field`` (see the module docstring)."""
    accepted = _get(example, ACCEPTED_KEY)
    if accepted is None:
        return []
    if isinstance(accepted, Mapping):
        accepted = accepted.get(field)
        if accepted is None:
            return []
    elif n_fields != 1:
        # A flat list cannot say which of several fields it belongs to.
        return []
    if isinstance(accepted, str):
        return [accepted]
    if isinstance(accepted, Iterable):
        return [a for a in accepted if a is not None]
    return [accepted]


class FieldMetric:
    """Base class: pick fields, gather gold answers, average, apply trace mode.

    Subclasses implement :meth:`score_value`, which scores one predicted value
    against one gold value; the best score over the gold and its accepted
    alternatives is the field's score.

    Args:
        field: A field name, a sequence of names, or ``None`` for the
            example's label fields.
        threshold: Minimum score counted as a success when ``trace`` is given.
    """

    name = "field_metric"

    def __init__(self, field: str | Sequence[str] | None = None, *, threshold: float = 1.0) -> None:
        if isinstance(field, str):
            fields: tuple[str, ...] | None = (field,)
        elif field is None:
            fields = None
        else:
            fields = tuple(field)
            if not fields:
                raise ValueError("field must be a name, a non-empty sequence of names or None")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.fields = fields
        self.threshold = threshold
        # DSPy and loggers read __name__ from metrics.
        self.__name__ = self.name if fields is None else f"{self.name}[{','.join(fields)}]"

    def score_value(self, predicted: Any, gold: Any) -> float:
        """Score one predicted value against one gold value, in ``[0, 1]``."""
        raise NotImplementedError

    def score(self, example: Any, prediction: Any) -> float:
        """Return the float score in ``[0, 1]`` (mean over the scored fields).

        Args:
            example: The gold ``dspy.Example`` (or a mapping).
            prediction: The ``dspy.Prediction`` (or a mapping).

        Returns:
            The score; 0.0 if there is no field to score.
        """
        fields = list(self.fields) if self.fields is not None else _label_fields(example)
        if not fields:
            logger.warning("%s: the example has no label fields to score", self.__name__)
            return 0.0
        total = 0.0
        for field in fields:
            predicted = _get(prediction, field)
            gold = _get(example, field)
            if predicted is None or gold is None:
                continue
            golds = [gold, *_alternatives(example, field, len(fields))]
            total += max(self.score_value(predicted, g) for g in golds)
        return total / len(fields)

    def __call__(self, example: Any, prediction: Any, trace: Any = None) -> float | bool:
        """DSPy metric entry point: float score, or a bool when ``trace`` is given."""
        value = self.score(example, prediction)
        if trace is not None:
            return value >= self.threshold
        return value

    def __repr__(self) -> str:
        return f"{type(self).__name__}(field={self.fields!r}, threshold={self.threshold})"


class ExactMatch(FieldMetric):
    """1.0 if the normalised prediction equals the normalised gold (or an alternative).

    Example:
        >>> import dspy
        >>> ex = dspy.Example(input="2+2", answer="Four").with_inputs("input")
        >>> ExactMatch(field="answer")(ex, dspy.Prediction(answer="four."))
        1.0
    """

    name = "exact_match"

    def score_value(self, predicted: Any, gold: Any) -> float:
        return 1.0 if normalize_text(predicted) == normalize_text(gold) else 0.0


class Contains(FieldMetric):
    """1.0 if the normalised gold appears as whole words in the normalised prediction.

    "Whole words" means the match is not glued to letters or digits on either
    side, so gold ``"cat"`` is found in ``"the cat sat"`` but not in
    ``"concatenate"``. An empty gold only matches an empty prediction.

    Example:
        >>> import dspy
        >>> ex = dspy.Example(input="x", output="Paris").with_inputs("input")
        >>> Contains()(ex, dspy.Prediction(output="It is Paris."))
        1.0
    """

    name = "contains"

    def score_value(self, predicted: Any, gold: Any) -> float:
        pred, ref = normalize_text(predicted), normalize_text(gold)
        if not ref:
            return 1.0 if not pred else 0.0
        pattern = r"(?<!\w)" + re.escape(ref) + r"(?!\w)"
        return 1.0 if re.search(pattern, pred) else 0.0


class TokenF1(FieldMetric):
    """SQuAD-style token F1 between normalised prediction and gold.

    Text is normalised with :func:`normalize_text`, punctuation is replaced by
    spaces and the rest is split on whitespace (articles are kept). Two empty
    texts score 1.0. In trace mode it returns ``score >= threshold``
    (default 0.66, as in DSPy's SemanticF1).

    Example:
        >>> import dspy
        >>> ex = dspy.Example(input="x", output="the black cat").with_inputs("input")
        >>> round(TokenF1()(ex, dspy.Prediction(output="black cat")), 2)
        0.8
    """

    name = "token_f1"

    def __init__(self, field: str | Sequence[str] | None = None, *, threshold: float = 0.66) -> None:
        super().__init__(field, threshold=threshold)

    def score_value(self, predicted: Any, gold: Any) -> float:
        pred, ref = _tokens(predicted), _tokens(gold)
        if not pred and not ref:
            return 1.0
        common = Counter(pred) & Counter(ref)
        overlap = sum(common.values())
        if overlap == 0:
            return 0.0
        precision = overlap / len(pred)
        recall = overlap / len(ref)
        return 2 * precision * recall / (precision + recall)


class NumericMatch(FieldMetric):
    """1.0 if the first number in the prediction equals the gold's first number.

    Numbers are read with :func:`parse_number`; equality is within the relative
    tolerance ``rel_tol`` (default 1e-6). No number in the prediction or in the
    gold scores 0.0.

    Example:
        >>> import dspy
        >>> ex = dspy.Example(input="x", output="1234").with_inputs("input")
        >>> NumericMatch()(ex, dspy.Prediction(output="The total is 1,234.0 USD"))
        1.0
    """

    name = "numeric_match"

    def __init__(
        self,
        field: str | Sequence[str] | None = None,
        *,
        rel_tol: float = 1e-6,
    ) -> None:
        super().__init__(field, threshold=1.0)
        if rel_tol < 0:
            raise ValueError(f"rel_tol must be >= 0, got {rel_tol}")
        self.rel_tol = rel_tol

    def score_value(self, predicted: Any, gold: Any) -> float:
        pred, ref = parse_number(predicted), parse_number(gold)
        if pred is None or ref is None:
            return 0.0
        return 1.0 if math.isclose(pred, ref, rel_tol=self.rel_tol, abs_tol=0.0) else 0.0


_EXACT_MATCH = ExactMatch()
_CONTAINS = Contains()
_TOKEN_F1 = TokenF1()
_NUMERIC_MATCH = NumericMatch()


def exact_match(example: Any, prediction: Any, trace: Any = None) -> float | bool:
    """Normalised exact match over the example's label fields.

    Args:
        example: Gold ``dspy.Example``; ``example.accepted`` may list alternatives.
        prediction: The program's ``dspy.Prediction``.
        trace: DSPy trace; when not ``None`` a bool (``score >= 1.0``) is returned.

    Returns:
        Score in ``[0, 1]`` (mean over label fields), or a bool in trace mode.

    Example:
        >>> import dspy
        >>> ex = dspy.Example(input="x", output="Yes").with_inputs("input")
        >>> exact_match(ex, dspy.Prediction(output=" 'yes!' "))
        1.0
    """
    return _EXACT_MATCH(example, prediction, trace)


def contains(example: Any, prediction: Any, trace: Any = None) -> float | bool:
    """Whole-word containment of the normalised gold in the prediction.

    Args:
        example: Gold ``dspy.Example``; ``example.accepted`` may list alternatives.
        prediction: The program's ``dspy.Prediction``.
        trace: DSPy trace; when not ``None`` a bool (``score >= 1.0``) is returned.

    Returns:
        Score in ``[0, 1]`` (mean over label fields), or a bool in trace mode.

    Example:
        >>> import dspy
        >>> ex = dspy.Example(input="x", output="shark").with_inputs("input")
        >>> contains(ex, dspy.Prediction(output="The shark is larger."))
        1.0
    """
    return _CONTAINS(example, prediction, trace)


def token_f1(example: Any, prediction: Any, trace: Any = None) -> float | bool:
    """SQuAD-style token F1 (best over gold and accepted alternatives).

    Args:
        example: Gold ``dspy.Example``; ``example.accepted`` may list alternatives.
        prediction: The program's ``dspy.Prediction``.
        trace: DSPy trace; when not ``None`` a bool (``score >= 0.66``) is returned.

    Returns:
        Score in ``[0, 1]`` (mean over label fields), or a bool in trace mode.

    Example:
        >>> import dspy
        >>> ex = dspy.Example(input="x", output="red apple").with_inputs("input")
        >>> token_f1(ex, dspy.Prediction(output="apple"))
        0.6666666666666666
    """
    return _TOKEN_F1(example, prediction, trace)


def numeric_match(example: Any, prediction: Any, trace: Any = None) -> float | bool:
    """Compare the first number of prediction and gold (relative tolerance 1e-6).

    Args:
        example: Gold ``dspy.Example``; ``example.accepted`` may list alternatives.
        prediction: The program's ``dspy.Prediction``.
        trace: DSPy trace; when not ``None`` a bool (``score >= 1.0``) is returned.

    Returns:
        Score in ``[0, 1]`` (mean over label fields), or a bool in trace mode.

    Example:
        >>> import dspy
        >>> ex = dspy.Example(input="x", output="7").with_inputs("input")
        >>> numeric_match(ex, dspy.Prediction(output="seven"))
        1.0
    """
    return _NUMERIC_MATCH(example, prediction, trace)
