"""The JSONL label format: one reviewed output per line, to move labels between stores and tools.

One object per line::

    {"input": {"input": "A gorgeous film."},      # dict of input fields (a string means {"input": s})
     "output": {"output": "positive"},            # dict of output fields (a string means {"output": s})
     "gold": {"output": "positive"},              # optional
     "grade": "good",                             # "good", "bad" or null (also accepted: pass/fail, 1/0, true/false)
     "reason": "…",                               # required when grade is bad
     "correction": "…",                           # optional corrected output text
     "criteria": {"one word": true},              # optional: criterion name -> passed
     "prompt_versions": ["3f2a…"]}                # optional: prompt versions that made the output

:func:`read_label_file` checks a whole file before anything is written; :class:`LabelImport` then
writes its rows into a store's parts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dspy_ext.review.criteria_store import CriterionBook
from dspy_ext.review.items import ItemTable
from dspy_ext.review.labels import LabelBook
from dspy_ext.review.records import ImportSummary, ReviewError, ReviewItem, item_key

_KEYS = ("input", "output", "gold", "grade", "reason", "correction", "criteria", "prompt_versions")

_GRADE_WORDS = {
    "good": "good",
    "pass": "good",
    "passed": "good",
    "up": "good",
    "thumbs_up": "good",
    "yes": "good",
    "bad": "bad",
    "fail": "bad",
    "failed": "bad",
    "down": "bad",
    "thumbs_down": "bad",
    "no": "bad",
}


@dataclass(frozen=True)
class LabelRow:
    """One line of a label file, checked: the fields of an output and what a reviewer said about it.

    Attributes:
        inputs: Input fields.
        outputs: Output fields.
        gold: Gold output fields, if known.
        grade: ``"good"``, ``"bad"`` or ``None``.
        reason: The critique (present for a Bad grade).
        correction: A corrected output text.
        criteria: Criterion name -> passed.
        prompt_versions: The prompt versions that made the output.
    """

    inputs: dict[str, Any]
    outputs: dict[str, Any]
    gold: dict[str, Any] | None
    grade: str | None
    reason: str | None
    correction: str | None
    criteria: dict[str, bool]
    prompt_versions: list[str]

    @classmethod
    def of_item(cls, item: ReviewItem, criterion_names: Mapping[int, str]) -> LabelRow:
        """The row of a stored item (its marks under the criteria's current names)."""
        marks = {criterion_names[cid]: ok for cid, ok in item.judgements.items() if cid in criterion_names}
        return cls(
            item.inputs,
            item.outputs,
            item.gold,
            item.grade,
            item.reason,
            item.correction,
            marks,
            item.prompt_versions,
        )

    def to_json(self) -> dict[str, Any]:
        """The row as the JSON object of one line."""
        return {
            "input": self.inputs,
            "output": self.outputs,
            "gold": self.gold,
            "grade": self.grade,
            "reason": self.reason,
            "correction": self.correction,
            "criteria": self.criteria,
            "prompt_versions": self.prompt_versions,
        }


def write_label_file(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write label rows (JSON objects) one per line as UTF-8; returns the number of rows."""
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_label_file(path: str | Path) -> list[LabelRow]:
    """Read and check every line of a label file (blank lines are skipped).

    Raises:
        ReviewError: A line that is not a valid label row (the message names the line), or a file that
            is not UTF-8.
    """
    rows = []
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    rows.append(parse_label_row(line, f"{path}, line {number}"))
    except UnicodeDecodeError as exc:
        raise ReviewError(f"{path}: not UTF-8 text (byte {exc.start}); a label file is UTF-8 JSONL") from None
    return rows


def parse_label_row(line: str, where: str) -> LabelRow:
    """One line of a label file as a :class:`LabelRow`; :class:`ReviewError` names ``where`` it is wrong."""
    row = _json_object(line, where)
    grade = _grade(row.get("grade"), where)
    reason = _optional_string(row, "reason", where)
    if grade == "bad" and not (reason or "").strip():
        raise ReviewError(f"{where}: a bad grade needs a reason")
    correction = _optional_string(row, "correction", where)
    criteria = row.get("criteria") or {}
    if not isinstance(criteria, dict) or not all(isinstance(v, bool) for v in criteria.values()):
        raise ReviewError(f"{where}: criteria must be an object of name -> true/false")
    versions = row.get("prompt_versions") or []
    if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
        raise ReviewError(f"{where}: prompt_versions must be a list of strings")
    gold = row.get("gold")
    return LabelRow(
        inputs=_fields(row["input"], "input", where, "input"),
        outputs=_fields(row["output"], "output", where, "output"),
        gold=_fields(gold, "output", where, "gold") if gold is not None else None,
        grade=grade,
        reason=reason,
        correction=correction,
        criteria=criteria,
        prompt_versions=versions,
    )


def json_object_line(
    line: str, where: str, error: type[Exception], expected: str = "expected a JSON object"
) -> dict[str, Any]:
    """One JSONL line's object; else ``error`` naming ``where`` (``expected`` says what a line should be)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise error(f"{where}: not valid JSON: {exc.msg}") from None
    if not isinstance(row, dict):
        raise error(f"{where}: {expected}")
    return row


def _json_object(line: str, where: str) -> dict[str, Any]:
    """The line's JSON object, once it has ``input`` and ``output`` and no unknown key."""
    row = json_object_line(line, where, ReviewError)
    for required in ("input", "output"):
        if required not in row:
            raise ReviewError(f"{where}: missing {required!r} (a row needs input and output)")
    unknown = set(row) - set(_KEYS)
    if unknown:
        raise ReviewError(f"{where}: unknown keys {sorted(unknown)}")
    return row


def _optional_string(row: Mapping[str, Any], name: str, where: str) -> str | None:
    value = row.get(name)
    if value is not None and not isinstance(value, str):
        raise ReviewError(f"{where}: {name} must be a string or null")
    return value


def _grade(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "good" if value else "bad"
    if isinstance(value, (int, float)) and value in (0, 1):
        return "good" if value == 1 else "bad"
    if isinstance(value, str) and value.strip().lower() in _GRADE_WORDS:
        return _GRADE_WORDS[value.strip().lower()]
    raise ReviewError(f"{where}: grade {value!r} is not one of good/bad (or pass/fail, 1/0, true/false, null)")


def _fields(value: Any, default_name: str, where: str, what: str) -> dict[str, Any]:
    if isinstance(value, str):
        return {default_name: value}
    if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
        return value
    raise ReviewError(f"{where}: {what!r} must be a non-empty object of fields or a string")


class LabelImport:
    """Writes checked label rows into a store's items, labels and criteria.

    Args:
        items: Where each row's output is recorded (under each of its prompt versions, or ``"imported"``).
        labels: Where its grade, reason, correction and marks go.
        criteria: Where a criterion the store does not have yet is created (matched by name, any case).
        overwrite: Replace grades already in the store (default: keep them, count as skipped).
        client: Recorded as the writer.
    """

    def __init__(
        self, items: ItemTable, labels: LabelBook, criteria: CriterionBook, *, overwrite: bool, client: str
    ) -> None:
        self.items, self.labels, self.criteria = items, labels, criteria
        self.overwrite, self.client = overwrite, client

    def run(self, rows: list[LabelRow]) -> ImportSummary:
        """Write ``rows`` in order; returns what was done."""
        added = graded = skipped = 0
        criterion_ids = {c.name.lower(): c.id for c in self.criteria.criteria()}
        for row in rows:
            known = self.items.exists(item_key(row.inputs, row.outputs))
            key = self._record(row)
            added += not known
            if self.items.item(key).grade is not None and not self.overwrite:
                skipped += 1
                continue
            graded += self._label(key, row, criterion_ids)
        return ImportSummary(rows=len(rows), added_items=added, graded=graded, skipped_graded=skipped)

    def _record(self, row: LabelRow) -> str:
        """Record the row's output once per prompt version; returns the item key."""
        for version in row.prompt_versions or ["imported"]:
            key = self.items.add_output(row.inputs, row.outputs, prompt_version=version, sample_index=0, gold=row.gold)
        return key

    def _label(self, key: str, row: LabelRow, criterion_ids: dict[str, int]) -> bool:
        """Write the row's labels on the item; returns whether it carried a grade."""
        client = self.client
        if row.grade is not None:
            self.labels.set_grade(key, row.grade, row.reason, client=client)
        elif row.reason is not None:
            self.labels.set_reason(key, row.reason, client=client)
        if row.correction is not None:
            self.labels.set_correction(key, row.correction, client=client)
        for name, passed in row.criteria.items():
            if name.lower() not in criterion_ids:
                criterion_ids[name.lower()] = self.criteria.add_criterion(name).id
            self.labels.set_judgement(key, criterion_ids[name.lower()], passed, client=client)
        return row.grade is not None
