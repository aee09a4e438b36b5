"""Instruction constraints read off the training outputs, so even a tiny proposer states the answer format.

A 135M proposer cannot write "Answer with one of: negative, positive." from a
handful of examples, but code can: the closed label set, the word count and the
casing of the gold outputs are facts of the data. :func:`grounded_instruction`
appends them to an instruction as short sentences. Nothing is asked of an LM.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["output_constraints", "grounded_instruction"]

MAX_GROUNDED_WORDS = 3
"""Word counts above this are not stated: long free-text outputs have no useful word limit."""


def output_constraints(outputs: Sequence[Any], labels: Sequence[str] | None = None) -> list[str]:
    """Constraints every output satisfies, as instruction sentences.

    Args:
        outputs: The gold outputs of the training rows (one output field).
        labels: The closed label set, if the outputs take one (see
            :func:`dspy_ext.evaluation.constrained.infer_label_set`).

    Returns:
        Zero or more sentences: the label set, else the word count (when every output has at most
        :data:`MAX_GROUNDED_WORDS` words), and the casing (all lowercase or all uppercase).

    Example:
        >>> output_constraints(["cats", "dogs", "geese"])
        ['Answer with exactly one word.', 'Write the answer in lowercase.']
        >>> output_constraints(["positive", "negative"], labels=("positive", "negative"))
        ['Answer with exactly one of: negative, positive.', 'Write the answer in lowercase.']
    """
    texts = [str(o).strip() for o in outputs if o is not None and str(o).strip()]
    if not texts:
        return []
    sentences: list[str] = []
    if labels:
        sentences.append("Answer with exactly one of: " + ", ".join(sorted(labels)) + ".")
    else:
        counts = {len(t.split()) for t in texts}
        most = max(counts)
        if most <= MAX_GROUNDED_WORDS:
            unit = "word" if most == 1 else "words"
            number = ("one", "two", "three")[most - 1]
            exact = len(counts) == 1
            sentences.append(f"Answer with {'exactly' if exact else 'at most'} {number} {unit}.")
    cased = [t for t in texts if any(ch.isalpha() for ch in t)]
    if cased and all(t == t.lower() for t in cased):
        sentences.append("Write the answer in lowercase.")
    elif cased and all(t == t.upper() for t in cased):
        sentences.append("Write the answer in uppercase.")
    return sentences


def grounded_instruction(instruction: str, outputs: Sequence[Any], labels: Sequence[str] | None = None) -> str | None:
    """``instruction`` followed by the constraints of :func:`output_constraints`, or ``None`` if there are none.

    Sentences the instruction already contains are not repeated.

    Example:
        >>> grounded_instruction("Pluralize the noun.", ["cats", "dogs"])
        'Pluralize the noun. Answer with exactly one word. Write the answer in lowercase.'
    """
    base = instruction.rstrip()
    new = [s for s in output_constraints(outputs, labels) if s.lower() not in base.lower()]
    if not new:
        return None
    if base and base[-1] not in ".!?:":
        base += "."
    return " ".join([base, *new]).strip()
