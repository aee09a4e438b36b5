"""A person's critiques as plain data for the optimizers (no dependency on the review package).

The review store (:mod:`dspy_ext.review`) turns Bad grades with reasons into
:class:`HumanCritique` rows; an optimizer receives them in a :class:`SearchFeedback`
at construction (``feedback=``) and uses them in its own way:

* ProTeGi takes the reasons as its textual gradients before asking the LM for more;
* OPRO and EvoPrompt show them in their meta-prompts as failures the new instruction must fix;
* GEPA (through the registry) gets them as the metric's ``feedback`` text.

Example:
    >>> note = HumanCritique({"input": "Great film."}, {"output": "The sentiment is positive."},
    ...                      "answer with the label only")
    >>> feedback = SearchFeedback((note,))
    >>> print(feedback.render(feedback.critiques))
    Input: Great film.
    Rejected output: The sentiment is positive.
    Reviewer's reason: answer with the label only
    >>> feedback.reasons()
    ['answer with the label only']
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Critiques shown in one meta-prompt (OPRO, EvoPrompt): enough to name the failures, short enough for small models.
DEFAULT_SHOWN = 3
#: Characters of an input or output shown per critique.
TEXT_LIMIT = 300


def _fields_text(values: Mapping[str, Any], limit: int = TEXT_LIMIT) -> str:
    """Fields as one line: the value alone for one field, ``name: value`` joined by ``; `` for several."""
    if len(values) == 1:
        return str(next(iter(values.values())))[:limit]
    return "; ".join(f"{k}: {str(v)[:limit]}" for k, v in values.items())


@dataclass(frozen=True)
class HumanCritique:
    """One output a person graded Bad, with the reason.

    Attributes:
        inputs: The input fields.
        output: The rejected output fields.
        reason: What the person said is wrong.
        correction: The person's corrected output text, if any.
        failed_criteria: Names of the review criteria the person marked failed on it.
    """

    inputs: dict[str, Any]
    output: dict[str, Any]
    reason: str
    correction: str | None = None
    failed_criteria: tuple[str, ...] = ()

    def render(self) -> str:
        """The critique as meta-prompt text: input, rejected output, reason (and correction)."""
        lines = [
            f"Input: {_fields_text(self.inputs)}",
            f"Rejected output: {_fields_text(self.output)}",
            f"Reviewer's reason: {self.reason.strip()}",
        ]
        if self.correction:
            lines.append(f"Corrected output: {self.correction.strip()[:TEXT_LIMIT]}")
        return "\n".join(lines)


@dataclass(frozen=True)
class SearchFeedback:
    """The critiques an optimizer receives, with how many a meta-prompt shows.

    Args:
        critiques: Bad outputs with reasons, in the order the person gave them.
        shown: Critiques shown in one meta-prompt (OPRO, EvoPrompt).

    Raises:
        ValueError: A critique without a reason, or ``shown < 1``.
    """

    critiques: tuple[HumanCritique, ...] = field(default_factory=tuple)
    shown: int = DEFAULT_SHOWN

    def __post_init__(self) -> None:
        object.__setattr__(self, "critiques", tuple(self.critiques))
        if self.shown < 1:
            raise ValueError(f"shown must be >= 1, got {self.shown}")
        for number, critique in enumerate(self.critiques, 1):
            if not isinstance(critique, HumanCritique):
                raise ValueError(f"critique {number} is a {type(critique).__name__}, expected a HumanCritique")
            if not critique.reason.strip():
                raise ValueError(f"critique {number} has no reason: a critique is a Bad grade with a reason")

    def __bool__(self) -> bool:
        return bool(self.critiques)

    def __len__(self) -> int:
        return len(self.critiques)

    def reasons(self) -> list[str]:
        """The distinct reasons (case and spacing ignored), in first-given order."""
        seen: dict[str, str] = {}
        for critique in self.critiques:
            reason = " ".join(critique.reason.split())
            seen.setdefault(reason.lower(), reason)
        return list(seen.values())

    def with_reason(self, reason: str) -> list[HumanCritique]:
        """The critiques that gave ``reason`` (case and spacing ignored)."""
        wanted = " ".join(reason.split()).lower()
        return [c for c in self.critiques if " ".join(c.reason.split()).lower() == wanted]

    def sample(self, rng: random.Random, k: int | None = None) -> list[HumanCritique]:
        """``k`` critiques (default :attr:`shown`) with distinct reasons where possible, drawn with ``rng``."""
        k = self.shown if k is None else k
        by_reason: dict[str, list[HumanCritique]] = {}
        for critique in self.critiques:
            by_reason.setdefault(" ".join(critique.reason.split()).lower(), []).append(critique)
        groups = list(by_reason.values())
        rng.shuffle(groups)
        picked = [rng.choice(group) for group in groups[:k]]
        if len(picked) < k:  # fewer distinct reasons than slots: fill with other critiques
            rest = [c for c in self.critiques if c not in picked]
            picked += rng.sample(rest, min(k - len(picked), len(rest)))
        return picked

    def for_input(self, inputs: Mapping[str, Any]) -> list[HumanCritique]:
        """The critiques of outputs for exactly these input fields."""
        wanted = {k: str(v) for k, v in inputs.items()}
        return [c for c in self.critiques if {k: str(v) for k, v in c.inputs.items()} == wanted]

    @staticmethod
    def render(critiques: Sequence[HumanCritique]) -> str:
        """Critiques as meta-prompt text, one block each."""
        return "\n\n".join(c.render() for c in critiques)
