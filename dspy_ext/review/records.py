"""The records a review store holds and hands out: items, criteria, labeled examples, critiques.

Every record here is plain data, built by the store's parts (:mod:`~dspy_ext.review.items`,
:mod:`~dspy_ext.review.labels`, :mod:`~dspy_ext.review.criteria_store`) and read by the page,
the alignment report and the optimizers. The helpers name items (:func:`item_key`,
:func:`input_id`), show their fields as text (:func:`fields_text`) and check the text a
reviewer writes (:func:`checked_text`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dspy_ext.prompt_state import short_hash
from dspy_ext.review.criteria import CheckSpec

GRADES = ("good", "bad")
MAX_TEXT = 20_000


class ReviewError(ValueError):
    """A review action that cannot be done (unknown item, Bad without a reason, bad label row...)."""


def input_id(inputs: Mapping[str, Any]) -> str:
    """The key of an input: a hash of its fields."""
    return short_hash(dict(inputs), 16)


def item_key(inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> str:
    """The key of an item: a hash of the input and the output (not of the prompt version)."""
    return short_hash({"input": dict(inputs), "output": dict(outputs)}, 24)


def fields_text(values: Mapping[str, Any]) -> str:
    """Fields as one text: the value alone for one field, ``name: value`` lines for several."""
    if len(values) == 1:
        return str(next(iter(values.values())))
    return "\n".join(f"{k}: {v}" for k, v in values.items())


def json_value(value: Any) -> Any:
    """A prediction value as JSON data, as the store holds it (objects such as pydantic models become their text)."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
    return value


def checked_text(value: Any, what: str, limit: int = MAX_TEXT) -> str:
    """``value`` stripped, once it is known to be text of at most ``limit`` characters.

    Raises:
        ReviewError: ``value`` is not a string, or is longer than ``limit``.
    """
    if not isinstance(value, str):
        raise ReviewError(f"{what} must be text, got {type(value).__name__}")
    if len(value) > limit:
        raise ReviewError(f"{what} is {len(value)} characters (max {limit})")
    return value.strip()


@dataclass
class ReviewItem:
    """One distinct output for one input, with its human labels.

    Attributes:
        key: Hash of input + output.
        input_id: Hash of the input.
        inputs: Input fields.
        outputs: Output fields.
        gold: Gold output fields, when the data has them.
        seq: Insertion order (1-based).
        grade: ``"good"``, ``"bad"`` or ``None`` (not reviewed).
        reason: The reviewer's critique (required for Bad).
        correction: A corrected output text.
        judgements: Criterion id -> passed, as marked by the reviewer.
        prompt_versions: The prompt versions that made this output.
    """

    key: str
    input_id: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    gold: dict[str, Any] | None
    seq: int
    grade: str | None = None
    reason: str | None = None
    correction: str | None = None
    judgements: dict[int, bool] = field(default_factory=dict)
    prompt_versions: list[str] = field(default_factory=list)

    @property
    def input_text(self) -> str:
        return fields_text(self.inputs)

    @property
    def output_text(self) -> str:
        return fields_text(self.outputs)

    @property
    def gold_text(self) -> str | None:
        return fields_text(self.gold) if self.gold else None

    @property
    def reviewed(self) -> bool:
        return self.grade is not None

    def corrected_outputs(self) -> dict[str, Any] | None:
        """The correction as output fields, or ``None`` when there is none or it cannot be read."""
        if not self.correction:
            return None
        names = list(self.outputs)
        if len(names) == 1:
            return {names[0]: self.correction}
        values: dict[str, Any] = {}
        for line in self.correction.splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() in names:
                values[name.strip()] = value.strip()
        return values if set(values) == set(names) else None


@dataclass(frozen=True)
class ItemSummary:
    """The navigation fields of an item (no JSON decoded)."""

    key: str
    input_id: str
    seq: int
    grade: str | None


@dataclass(frozen=True)
class CandidateCheck:
    """A candidate automatic check of a criterion."""

    id: int
    criterion_id: int
    spec: CheckSpec


@dataclass
class Criterion:
    """A criterion with its current version and candidate checks.

    Attributes:
        id: Stable id (a rename keeps it).
        name: Short name.
        description: One-line description (what a good output does).
        version: Incremented on every edit.
        archived: Hidden from the page; its judgements stay.
        checks: Candidate automatic checks.
        chosen_check_id: The candidate the last alignment report chose, if any.
    """

    id: int
    name: str
    description: str
    version: int
    archived: bool
    checks: list[CandidateCheck]
    chosen_check_id: int | None

    @property
    def chosen_check(self) -> CandidateCheck | None:
        return next((c for c in self.checks if c.id == self.chosen_check_id), None)


@dataclass(frozen=True)
class LabeledExample:
    """An output a person accepted (Good) or corrected: usable as a labeled example."""

    inputs: dict[str, Any]
    outputs: dict[str, Any]
    corrected: bool
    item_key: str


@dataclass(frozen=True)
class Critique:
    """A Bad grade with its reason (a textual gradient for an optimizer)."""

    inputs: dict[str, Any]
    output: dict[str, Any]
    reason: str
    correction: str | None
    failed_criteria: tuple[str, ...]
    prompt_versions: tuple[str, ...]
    item_key: str


@dataclass(frozen=True)
class ImportSummary:
    """What :meth:`ReviewStore.import_jsonl` did."""

    rows: int
    added_items: int
    graded: int
    skipped_graded: int


def labeled_examples_of(items: Iterable[ReviewItem]) -> list[LabeledExample]:
    """Corrected outputs (whatever their grade) and Good outputs, in item order."""
    examples = []
    for item in items:
        corrected = item.corrected_outputs()
        if corrected is not None:
            examples.append(LabeledExample(item.inputs, corrected, True, item.key))
        elif item.grade == "good":
            examples.append(LabeledExample(item.inputs, item.outputs, False, item.key))
    return examples


def critiques_of(items: Iterable[ReviewItem], criterion_names: Mapping[int, str]) -> list[Critique]:
    """The Bad items as critiques, naming the criteria the reviewer marked failed."""
    return [
        Critique(
            item.inputs,
            item.outputs,
            item.reason or "",
            item.correction,
            tuple(criterion_names[cid] for cid, ok in item.judgements.items() if not ok and cid in criterion_names),
            tuple(item.prompt_versions),
            item.key,
        )
        for item in items
        if item.grade == "bad"
    ]
