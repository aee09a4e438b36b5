"""The review store: outputs, human grades, critiques, corrections and criteria in one SQLite file.

Keys. An *item* is one distinct output for one input; its key is a hash of the
input and the output. Every time a program makes that output it is recorded as
a *sample* row keyed by the input, the prompt version and the sample index, so
the store holds the (input, output, prompt version) occurrences, while the
grade belongs to the (input, output) pair: an output that is unchanged under a
new prompt keeps its grade and is never asked again.

Writes are per field (a grade never overwrites a reason another tab wrote) and
each runs in its own transaction under one lock; SQLite's WAL journal lets a
second process read meanwhile. Every change is logged in ``events`` so that
undo works per browser tab (``client``).

:class:`ReviewStore` is the one object callers use; it hands each job to a part:

* :class:`~dspy_ext.review.database.ReviewDatabase`: the file, its schema, transactions, settings;
* :class:`~dspy_ext.review.items.ItemTable`: items and samples;
* :class:`~dspy_ext.review.labels.LabelBook`: grades, reasons, corrections, criterion marks and undo;
* :class:`~dspy_ext.review.criteria_store.CriterionBook`: criteria versions, candidate checks, LM-check results;
* :mod:`~dspy_ext.review.codec`: the JSONL label format (:meth:`ReviewStore.export_jsonl`,
  :meth:`ReviewStore.import_jsonl`), described there.

Example:
    >>> store = ReviewStore(":memory:")
    >>> key = store.add_output({"input": "great"}, {"output": "positive"}, prompt_version="v1")
    >>> store.set_grade(key, "good").grade
    'good'
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from dspy_ext.review.codec import LabelImport, LabelRow, read_label_file, write_label_file
from dspy_ext.review.criteria import CheckSpec
from dspy_ext.review.criteria_store import CriterionBook
from dspy_ext.review.database import SCHEMA_VERSION, ReviewDatabase
from dspy_ext.review.items import ItemTable
from dspy_ext.review.labels import LabelBook
from dspy_ext.review.records import (
    GRADES,
    MAX_TEXT,
    CandidateCheck,
    Criterion,
    Critique,
    ImportSummary,
    ItemSummary,
    LabeledExample,
    ReviewError,
    ReviewItem,
    critiques_of,
    fields_text,
    input_id,
    item_key,
    labeled_examples_of,
)

__all__ = [
    "GRADES",
    "MAX_TEXT",
    "SCHEMA_VERSION",
    "CandidateCheck",
    "Criterion",
    "Critique",
    "ImportSummary",
    "ItemSummary",
    "LabeledExample",
    "ReviewError",
    "ReviewItem",
    "ReviewStore",
    "fields_text",
    "input_id",
    "item_key",
]


class ReviewStore:
    """The SQLite review store.

    Args:
        path: The SQLite file (created with its folder), or ``":memory:"``.

    Example:
        >>> store = ReviewStore("runs/review-sentiment.sqlite")   # doctest: +SKIP
        >>> store.progress()                                        # doctest: +SKIP
        (12, 40)
    """

    def __init__(self, path: str | Path) -> None:
        self._db = ReviewDatabase(path)
        self.path = self._db.path
        self._items = ItemTable(self._db)
        self._labels = LabelBook(self._db, self._items)
        self._criteria = CriterionBook(self._db)

    # ---- plumbing -----------------------------------------------------------------------
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ReviewStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_meta(self, key: str) -> str | None:
        """A free-form store setting (e.g. ``"task"``)."""
        return self._db.get_meta(key)

    def set_meta(self, key: str, value: str) -> None:
        self._db.set_meta(key, value)

    # ---- items --------------------------------------------------------------------------
    def add_output(
        self,
        inputs: Mapping[str, Any],
        outputs: Mapping[str, Any],
        *,
        prompt_version: str,
        sample_index: int = 0,
        gold: Mapping[str, Any] | None = None,
    ) -> str:
        """Record one output of a program run; an existing item (same input and output) is reused.

        Args:
            inputs: Input fields.
            outputs: Output fields.
            prompt_version: A hash of the prompt that made the output.
            sample_index: Which of the K samples this is.
            gold: Gold output fields, if known.

        Returns:
            The item key.
        """
        return self._items.add_output(inputs, outputs, prompt_version, sample_index, gold)

    def has_sample(self, inputs: Mapping[str, Any], prompt_version: str, sample_index: int) -> bool:
        """Whether this input already has an output for this prompt version and sample index."""
        return self._items.has_sample(inputs, prompt_version, sample_index)

    def item(self, key: str) -> ReviewItem:
        """One item with its labels, judgements and prompt versions; :class:`ReviewError` if unknown."""
        return self._items.item(key)

    def items(self) -> list[ReviewItem]:
        """All items in insertion order."""
        return self._items.items()

    def summaries(self) -> list[ItemSummary]:
        """Every item's key, input, order and grade, without decoding any JSON (fast navigation)."""
        return self._items.summaries()

    def output_texts(self, keys: Iterable[str] | None = None) -> dict[str, str]:
        """Item key -> output text (all items, or the given keys). Outputs never change for a key."""
        return self._items.output_texts(keys)

    def judgements_of(self, criterion_id: int) -> dict[str, bool]:
        """Item key -> the reviewer's pass/fail mark for one criterion."""
        return self._labels.judgements_of(criterion_id)

    def progress(self) -> tuple[int, int]:
        """``(reviewed, total)`` items."""
        return self._items.progress()

    def samples_of_input(self, input_id_: str) -> list[dict[str, Any]]:
        """The K samples of one input, per prompt version: ``{prompt_version, sample_index, item_key, grade}``."""
        return self._items.samples_of_input(input_id_)

    def latest_prompt_version(self) -> str | None:
        """The prompt version of the most recently recorded sample (``None`` for an empty store)."""
        return self._items.latest_prompt_version()

    def changed_outputs(self, version: str) -> dict[str, list[str]]:
        """The outputs prompt ``version`` changed: after-item key -> the before-item keys of the same input.

        An output of ``version`` is *changed* when another prompt version made some output for the
        same input but never this one. An unchanged output is the same item as before (same input,
        same output) and keeps its grade, so it is not listed. The before items come graded first,
        then in insertion order.

        Example:
            >>> store = ReviewStore(":memory:")
            >>> old = store.add_output({"input": "a"}, {"output": "x"}, prompt_version="v1")
            >>> new = store.add_output({"input": "a"}, {"output": "y"}, prompt_version="v2")
            >>> store.changed_outputs("v2") == {new: [old]}
            True
        """
        return self._items.changed_outputs(version)

    def sample_counts(self) -> dict[str, tuple[int, int]]:
        """Input id -> ``(samples, distinct outputs)`` over all prompt versions (for the sampler)."""
        return self._items.sample_counts()

    # ---- labels -------------------------------------------------------------------------
    def set_grade(self, key: str, grade: str | None, reason: str | None = None, *, client: str = "api") -> ReviewItem:
        """Grade an item Good or Bad (or clear it with ``None``); a Bad grade needs a reason.

        Args:
            key: The item key.
            grade: ``"good"``, ``"bad"`` or ``None``.
            reason: The critique; required for Bad unless the item already has one. ``None`` keeps the
                current reason.
            client: Who wrote it (a browser tab id), for undo.

        Returns:
            The updated item.
        """
        return self._labels.set_grade(key, grade, reason, client=client)

    def set_reason(self, key: str, reason: str, *, client: str = "api") -> ReviewItem:
        """Set the critique text; it cannot be emptied while the grade is Bad."""
        return self._labels.set_reason(key, reason, client=client)

    def set_correction(self, key: str, correction: str | None, *, client: str = "api") -> ReviewItem:
        """Set (or clear with ``""``/``None``) the corrected output text."""
        return self._labels.set_correction(key, correction, client=client)

    def set_judgement(self, key: str, criterion_id: int, passed: bool | None, *, client: str = "api") -> ReviewItem:
        """Mark a criterion passed/failed on an item (``None`` clears the mark)."""
        return self._labels.set_judgement(key, criterion_id, passed, client=client)

    def undo(self, client: str) -> str | None:
        """Revert ``client``'s last not yet undone change to an item.

        A change that another client has overwritten since is not reverted (that would
        lose the other client's write): :class:`ReviewError` says so.

        Returns:
            The key of the item changed back, or ``None`` when there is nothing to undo.
        """
        return self._labels.undo(client)

    # ---- criteria -----------------------------------------------------------------------
    def add_criterion(self, name: str, description: str = "", check: CheckSpec | None = None) -> Criterion:
        """Create a criterion (version 1), optionally with a first candidate check.

        Raises:
            ReviewError: Empty name or a name already used by an active criterion.
        """
        return self._criteria.add_criterion(name, description, check)

    def update_criterion(
        self,
        criterion_id: int,
        *,
        name: str | None = None,
        description: str | None = None,
        archived: bool | None = None,
    ) -> Criterion:
        """Edit a criterion; a new name or description makes a new version. Judgements are kept."""
        return self._criteria.update_criterion(criterion_id, name, description, archived)

    def criterion_history(self, criterion_id: int) -> list[dict[str, Any]]:
        """Every version of a criterion: ``{version, name, description, created_at}``."""
        return self._criteria.criterion_history(criterion_id)

    def add_check(self, criterion_id: int, spec: CheckSpec) -> int:
        """Add a candidate check to a criterion (an identical one is reused); returns its id."""
        return self._criteria.add_check(criterion_id, spec)

    def set_chosen_check(self, criterion_id: int, check_id: int | None) -> None:
        """Record the candidate the alignment report chose (``None``: none qualifies)."""
        self._criteria.set_chosen_check(criterion_id, check_id)

    def criterion(self, criterion_id: int) -> Criterion:
        """One criterion, archived or not; :class:`ReviewError` if unknown."""
        return self._criteria.criterion(criterion_id)

    def criteria(self, include_archived: bool = False) -> list[Criterion]:
        """Criteria in creation order, each with its candidate checks and chosen check."""
        return self._criteria.criteria(include_archived)

    def record_check_results(self, check_id: int, results: Mapping[str, bool | None]) -> None:
        """Store results of a check that needs an LM (item key -> passed, ``None`` = no verdict)."""
        self._criteria.record_check_results(check_id, results)

    def check_results(self, check_id: int) -> dict[str, bool | None]:
        """Stored results of an LM check: item key -> passed."""
        return self._criteria.check_results(check_id)

    # ---- read API for optimizers ----------------------------------------------------------
    def labeled_examples(self) -> list[LabeledExample]:
        """Good outputs, and corrected outputs (Good or Bad), as labeled examples.

        Example:
            >>> [dspy.Example(**e.inputs, **e.outputs).with_inputs(*e.inputs)
            ...  for e in store.labeled_examples()]   # doctest: +SKIP
        """
        return labeled_examples_of(self.items())

    def critiques(self) -> list[Critique]:
        """Bad outputs with their reasons, the criteria marked failed, and the prompt versions."""
        return critiques_of(self.items(), self._criterion_names())

    def _criterion_names(self) -> dict[int, str]:
        return {c.id: c.name for c in self.criteria(include_archived=True)}

    # ---- JSONL export / import -------------------------------------------------------------
    def export_rows(self) -> Iterator[dict[str, Any]]:
        """Every item as one label row (the format of :mod:`~dspy_ext.review.codec`)."""
        names = self._criterion_names()
        for item in self.items():
            yield LabelRow.of_item(item, names).to_json()

    def export_jsonl(self, path: str | Path) -> int:
        """Write every item as a label row; returns the number of rows."""
        return write_label_file(path, self.export_rows())

    def import_jsonl(self, path: str | Path, *, overwrite: bool = False, client: str = "import") -> ImportSummary:
        """Read label rows (e.g. exported from another tool) into the store.

        The whole file is checked before anything is written, so a bad line leaves
        the store as it was.

        Args:
            path: The JSONL file.
            overwrite: Replace grades already in the store (default: keep them, count as skipped).
            client: Recorded as the writer.

        Returns:
            An :class:`ImportSummary`.

        Raises:
            ReviewError: A line that is not a valid label row; the message names the line.
        """
        rows = read_label_file(path)
        return LabelImport(self._items, self._labels, self._criteria, overwrite=overwrite, client=client).run(rows)
