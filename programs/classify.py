"""Classification into a fixed label set, with tolerant label mapping."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import dspy

from programs._fields import FieldNames, build_signature, normalize_keys

__all__ = ["Classify", "match_label"]

logger = logging.getLogger(__name__)

_STRIP_CHARS = " \t\r\n\"'`.,;:!?()[]{}*_"


def _clean(text: str) -> str:
    """Lowercase and strip quotes, brackets, markdown emphasis and punctuation."""
    return " ".join(str(text).lower().split()).strip(_STRIP_CHARS)


def match_label(raw: Any, labels: Sequence[str]) -> str | None:
    """Map a raw model answer to one of ``labels``, case-insensitively.

    Tried in order: exact match (after stripping quotes and punctuation); the
    answer starts with a label (longest label wins, so "very positive" beats
    "positive"); the answer is a prefix of exactly one label; a label occurs as
    whole words in the answer (earliest occurrence wins, then the longest).

    Args:
        raw: The raw output value.
        labels: The allowed labels.

    Returns:
        The matching label as spelled in ``labels``, or ``None``.

    Example:
        >>> match_label("Sentiment: NEGATIVE.", ["positive", "negative"])
        'negative'
        >>> match_label("Positive review", ["positive", "negative"])
        'positive'
        >>> match_label("unsure", ["positive", "negative"]) is None
        True
    """
    if raw is None:
        return None
    answer = _clean(raw)
    if not answer:
        return None
    cleaned = [(_clean(label), label) for label in labels]
    for key, label in cleaned:
        if answer == key:
            return label
    # A label followed by a non-word character, e.g. "positive, because ...".
    starts = [(key, label) for key, label in cleaned if key and re.match(re.escape(key) + r"(?!\w)", answer)]
    if starts:
        return max(starts, key=lambda item: len(item[0]))[1]
    prefixed = [label for key, label in cleaned if key.startswith(answer)]
    if len(prefixed) == 1:
        return prefixed[0]
    found: list[tuple[int, int, str]] = []
    for key, label in cleaned:
        if not key:
            continue
        hit = re.search(r"(?<!\w)" + re.escape(key) + r"(?!\w)", answer)
        if hit:
            found.append((hit.start(), -len(key), label))
    if found:
        return min(found)[2]
    return None


class Classify(dspy.Module):
    """Pick one of a fixed set of labels with one predictor, ``self.predict``.

    The output field's description lists the labels ("one of: positive,
    negative"). After the call the raw output is mapped to the closest label
    with :func:`match_label`; if nothing matches, the raw output is left as is
    so the metric counts the miss.

    Args:
        labels: The allowed labels (non-empty, unique ignoring case).
        input_keys: Input field name(s).
        output_key: The single output field holding the label.
        instructions: Task instructions; ``None`` uses a generic default.

    Example:
        >>> program = Classify(["positive", "negative"], instructions="Classify the sentiment.")
        >>> program.predict.signature.output_fields["output"].json_schema_extra["desc"]
        'one of: positive, negative'
    """

    def __init__(
        self,
        labels: Sequence[str],
        input_keys: FieldNames = ("input",),
        output_key: str = "output",
        instructions: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(labels, str):
            raise ValueError("labels must be a sequence of strings, not a single string")
        clean_labels = [str(label).strip() for label in labels]
        if not clean_labels or any(not label for label in clean_labels):
            raise ValueError("labels must be a non-empty list of non-empty strings")
        lowered = [label.lower() for label in clean_labels]
        if len(set(lowered)) != len(lowered):
            raise ValueError(f"labels must be unique ignoring case: {clean_labels}")
        self.labels = clean_labels
        self.input_keys = normalize_keys(input_keys, "input_keys")
        (self.output_key,) = normalize_keys(output_key, "output_key")
        signature = build_signature(
            self.input_keys,
            (self.output_key,),
            instructions,
            output_descs={self.output_key: "one of: " + ", ".join(self.labels)},
        )
        self.predict = dspy.Predict(signature)

    def forward(self, **inputs: Any) -> dspy.Prediction:
        """Predict and map the output to a label.

        Args:
            **inputs: Values for the input fields.

        Returns:
            The prediction, its output field replaced by the matched label
            (unchanged if no label matched).
        """
        prediction = self.predict(**inputs)
        raw = prediction.get(self.output_key)
        label = match_label(raw, self.labels)
        if label is None:
            logger.debug("Classify: output %r matches none of %s", raw, self.labels)
        elif label != raw:
            prediction[self.output_key] = label
        return prediction
