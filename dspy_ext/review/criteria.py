"""Criteria checks: the built-in automatic checks, an LM judge, and criterion proposals.

A criterion is a yes/no quality of an output ("answers with one word", "no
apology"). It may carry *candidate checks* that decide it automatically; the
alignment report (:mod:`dspy_ext.review.alignment`) picks the candidate that
agrees best with the human grades.

Checks are written as one short text, ``kind`` or ``kind:argument``:

=====================  =========================================================
``one_of:a,b,c``       the stripped output is one of the labels (case-insensitive)
``regex:PATTERN``      ``re.search(PATTERN, output)`` finds a match
``max_words:N``        the output has at most N words
``contains:TEXT``      the output contains TEXT (case-insensitive)
``not_contains:TEXT``  the output does not contain TEXT (case-insensitive)
``valid_json``         the output parses as JSON
``judge``              an LM judges the output against the criterion's description
=====================  =========================================================

The LM judge and the criterion proposer are DSPy Signatures run on any ``dspy.LM``.
LM text is only ever read as data: it is never run or compiled as a pattern.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

import dspy

logger = logging.getLogger(__name__)

#: Kinds of check, with whether they take an argument.
CHECK_KINDS: dict[str, bool] = {
    "one_of": True,
    "regex": True,
    "max_words": True,
    "contains": True,
    "not_contains": True,
    "valid_json": False,
    "judge": False,
}

MAX_CHECK_ARGUMENT = 500
MAX_NAME = 60
MAX_DESCRIPTION = 300


class CheckError(ValueError):
    """A check text that cannot be used (unknown kind, missing or bad argument)."""


@dataclass(frozen=True)
class CheckSpec:
    """One automatic check, as data.

    Attributes:
        kind: A key of :data:`CHECK_KINDS`.
        argument: The argument text (``""`` for kinds without one).

    Example:
        >>> CheckSpec.parse("max_words:3").passes("two words")
        True
        >>> str(CheckSpec.parse("regex:^[a-z]+$"))
        'regex:^[a-z]+$'
    """

    kind: str
    argument: str = ""

    @classmethod
    def parse(cls, text: str) -> CheckSpec:
        """Read ``kind`` or ``kind:argument``; raise :class:`CheckError` naming the problem.

        Args:
            text: The check text, e.g. ``"one_of:positive,negative"``.

        Returns:
            The validated spec.
        """
        text = (text or "").strip()
        kind, sep, argument = text.partition(":")
        kind = kind.strip().lower().replace("-", "_")
        if kind not in CHECK_KINDS:
            raise CheckError(f"unknown check {kind!r}; use one of: {', '.join(CHECK_KINDS)} (e.g. regex:^[a-z]+$)")
        spec = cls(kind, argument if sep else "")
        spec.validate()
        return spec

    def validate(self) -> None:
        """Raise :class:`CheckError` if the argument does not fit the kind."""
        if self.kind not in CHECK_KINDS:
            raise CheckError(f"unknown check {self.kind!r}")
        needs = CHECK_KINDS[self.kind]
        if needs and not self.argument.strip():
            raise CheckError(f"check {self.kind!r} needs an argument, e.g. {self.kind}:...")
        if len(self.argument) > MAX_CHECK_ARGUMENT:
            raise CheckError(f"check argument is {len(self.argument)} characters (max {MAX_CHECK_ARGUMENT})")
        if self.kind == "regex":
            try:
                re.compile(self.argument)
            except re.error as exc:
                raise CheckError(f"regex {self.argument!r} does not compile: {exc}") from None
        elif self.kind == "max_words":
            if not self.argument.strip().isdigit():
                raise CheckError(f"max_words needs a whole number, got {self.argument!r}")
        elif self.kind == "one_of" and not self.labels():
            raise CheckError("one_of needs at least one label, e.g. one_of:positive,negative")

    def labels(self) -> list[str]:
        """The comma-separated labels of a ``one_of`` check, stripped and non-empty."""
        return [label.strip() for label in self.argument.split(",") if label.strip()]

    @property
    def needs_lm(self) -> bool:
        """Whether the check calls an LM (it is run on demand and its results are stored)."""
        return self.kind == "judge"

    def passes(self, output: str) -> bool:
        """Run a built-in check on an output text.

        Args:
            output: The output as shown to the reviewer.

        Returns:
            ``True`` when the output passes.

        Raises:
            CheckError: For ``judge``, which needs an LM (use :class:`LMJudge`).
        """
        text = output or ""
        if self.kind == "one_of":
            return text.strip().lower() in {label.lower() for label in self.labels()}
        if self.kind == "regex":
            return re.search(self.argument, text) is not None
        if self.kind == "max_words":
            return len(text.split()) <= int(self.argument.strip())
        if self.kind == "contains":
            return self.argument.lower() in text.lower()
        if self.kind == "not_contains":
            return self.argument.lower() not in text.lower()
        if self.kind == "valid_json":
            try:
                json.loads(text)
            except ValueError:
                return False
            return True
        raise CheckError("the judge check needs an LM: use LMJudge")

    def __str__(self) -> str:
        return f"{self.kind}:{self.argument}" if CHECK_KINDS.get(self.kind) else self.kind

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "argument": self.argument}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckSpec:
        spec = cls(str(data.get("kind", "")), str(data.get("argument", "")))
        spec.validate()
        return spec


class JudgeCriterion(dspy.Signature):
    """Decide whether the output meets the criterion. Answer yes if it does and no if it does not."""

    criterion: str = dspy.InputField(desc="the quality the output must have")
    task_input: str = dspy.InputField(desc="the input the output answers")
    output: str = dspy.InputField(desc="the output to judge")
    verdict: str = dspy.OutputField(desc="yes or no")


class ProposeCriterion(dspy.Signature):
    """A reviewer rejected an output and wrote why. Turn the reason into one general, checkable quality that every good output must have. Give it a short name of one to three words and a one-line description."""

    task_input: str = dspy.InputField(desc="the input the output answers")
    output: str = dspy.InputField(desc="the rejected output")
    critique: str = dspy.InputField(desc="the reviewer's reason for rejecting it")
    existing_criteria: str = dspy.InputField(desc="criteria that already exist; do not repeat them")
    name: str = dspy.OutputField(desc="short name of the new criterion")
    description: str = dspy.OutputField(desc="one line: what a good output does")


_YES = re.compile(r"^\W*(yes|pass|passes|true|meets|correct|y)\b", re.IGNORECASE)
_NO = re.compile(r"^\W*(no|fail|fails|false|does not|doesn't|incorrect|n)\b", re.IGNORECASE)


def read_verdict(text: str) -> bool | None:
    """A yes/no verdict from a judge's reply; ``None`` when it says neither.

    Example:
        >>> read_verdict("Yes, it is one word."), read_verdict("no"), read_verdict("maybe")
        (True, False, None)
    """
    if _YES.match(text or ""):
        return True
    if _NO.match(text or ""):
        return False
    return None


class LMJudge:
    """Judge outputs against a criterion's description with a DSPy Signature.

    Args:
        description: The criterion text the judge is given.
        lm: Any ``dspy.LM`` (the embedded model works, poorly).
        adapter: The adapter to run it with (``None``: the one configured in DSPy).
        signature: The judge Signature (swappable).

    Example:
        >>> judge = LMJudge("answers with one word", lm)   # doctest: +SKIP
        >>> judge.passes("Is this movie good?", "positive")  # doctest: +SKIP
        True
    """

    def __init__(
        self,
        description: str,
        lm: dspy.LM,
        adapter: dspy.Adapter | None = None,
        signature: type[dspy.Signature] = JudgeCriterion,
    ) -> None:
        self.description = description
        self.lm = lm
        self.adapter = adapter
        self.predict = dspy.Predict(signature)

    def passes(self, task_input: str, output: str) -> bool | None:
        """The judge's verdict; ``None`` when its reply is neither yes nor no or the call fails."""
        try:
            with dspy.context(lm=self.lm, **({"adapter": self.adapter} if self.adapter else {})):
                reply = self.predict(criterion=self.description, task_input=task_input, output=output)
        except Exception as exc:  # an LM or parse error is "no verdict", not a crash of the review
            logger.warning("LM judge gave no verdict: %s: %s", type(exc).__name__, exc)
            return None
        return read_verdict(str(reply.verdict))


@dataclass(frozen=True)
class ProposedCriterion:
    """A criterion proposed by the LM, for the person to accept, edit or discard."""

    name: str
    description: str


class ProposalError(ValueError):
    """The LM gave no usable criterion."""


def _clean_line(text: str, limit: int) -> str:
    line = next((ln.strip() for ln in str(text or "").splitlines() if ln.strip()), "")
    return line.strip(" \"'`*#-:.").strip()[:limit]


class CriterionProposer:
    """Propose a new criterion from a reviewer's critique of one output.

    Args:
        lm: Any ``dspy.LM``.
        adapter: The adapter to run it with (``None``: the one configured in DSPy).
        signature: The proposal Signature (swappable).

    Example:
        >>> proposer = CriterionProposer(lm)   # doctest: +SKIP
        >>> proposer.propose("Review: great film", "The sentiment is positive.", "should be one word", [])
        ProposedCriterion(name='One word', description='Answer with a single word.')
    """

    def __init__(
        self, lm: dspy.LM, adapter: dspy.Adapter | None = None, signature: type[dspy.Signature] = ProposeCriterion
    ) -> None:
        self.lm = lm
        self.adapter = adapter
        self.predict = dspy.Predict(signature)

    def propose(self, task_input: str, output: str, critique: str, existing: list[str]) -> ProposedCriterion:
        """Ask the LM for one criterion.

        Args:
            task_input: The input text.
            output: The rejected output.
            critique: The reviewer's reason.
            existing: Names (and descriptions) of existing criteria.

        Returns:
            A cleaned-up proposal (one line each, length-limited).

        Raises:
            ProposalError: Empty critique, LM failure, or an empty name.
        """
        if not critique.strip():
            raise ProposalError("write a reason first: the proposal is made from it")
        try:
            with dspy.context(lm=self.lm, **({"adapter": self.adapter} if self.adapter else {})):
                reply = self.predict(
                    task_input=task_input,
                    output=output,
                    critique=critique,
                    existing_criteria="; ".join(existing) or "(none)",
                )
        except Exception as exc:
            raise ProposalError(f"the LM gave no proposal: {type(exc).__name__}: {str(exc)[:200]}") from None
        name = _clean_line(reply.name, MAX_NAME)
        description = _clean_line(reply.description, MAX_DESCRIPTION) or critique.strip()[:MAX_DESCRIPTION]
        if not name:
            raise ProposalError("the LM's proposal had no name")
        return ProposedCriterion(name=name, description=description)
