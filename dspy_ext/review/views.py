"""What the review page shows: view models of an item and its neighbours, rendered by Jinja2 templates.

Jinja2 autoescaping is on for every template (and for template strings), so an output such as
``<script>alert(1)</script>`` shows as text; the page's script only ever sets ``textContent``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from dspy_ext.review.alignment import AlignmentCache, AlignmentReport
from dspy_ext.review.options import ReviewOptions
from dspy_ext.review.records import Criterion, ReviewItem
from dspy_ext.review.sampling import NO_SIGNAL, Signal, SignalIndex
from dspy_ext.review.store import ReviewStore

TEMPLATES = Path(__file__).parent / "templates"


def _as_context(view: Any) -> dict[str, Any]:
    """A view dataclass as template variables (its fields, not copied deeper)."""
    return {f.name: getattr(view, f.name) for f in fields(view)}


@dataclass(frozen=True)
class SampleGroup:
    """The K samples one prompt version made for the item's input, with their pass rate."""

    version: str
    samples: list[dict[str, Any]]
    k: int
    graded: int
    good: int
    pass_rate: str


@dataclass(frozen=True)
class PromptView:
    """A prompt version that made the item, with its predictors' instructions joined by ``|``."""

    version: str
    instruction: str


@dataclass(frozen=True)
class CheckView:
    """One candidate check's result on the item (``None``: an LM judge not run on it)."""

    check: str
    result: bool | None
    chosen: bool


@dataclass(frozen=True)
class EarlierOutput:
    """An earlier output of the same input (another prompt version), shown next to a changed one."""

    item: ReviewItem
    versions: list[str]


@dataclass(frozen=True)
class PageView:
    """What every page's header shows: progress, filters, criteria, and the token for writes."""

    title: str
    token: str
    reviewed: int
    total: int
    filter: str
    filters: list[tuple[str, str]]
    criteria: list[Criterion]
    can_use_lm: bool
    threshold: float


@dataclass(frozen=True)
class ItemView:
    """One item's page: the item, its input's samples, its prompts, checks, earlier outputs and why it is shown.

    ``state`` is the page script's initial state (JSON in the page).
    """

    item: ReviewItem
    samples: list[SampleGroup]
    prompts: list[PromptView]
    auto: dict[int, list[CheckView]]
    before: list[EarlierOutput]
    signal: Signal
    state: dict[str, Any]


class ReviewViews:
    """Builds and renders the review pages and the JSON view of an item.

    Args:
        store: The review store.
        index: The informativeness of the items.
        alignment: Refreshed before an item page reads the chosen checks.
        options: The page's settings.
    """

    def __init__(
        self, store: ReviewStore, index: SignalIndex, alignment: AlignmentCache, options: ReviewOptions
    ) -> None:
        self.store, self.index, self.alignment, self.options = store, index, alignment, options
        self.templates = Environment(
            loader=FileSystemLoader(str(TEMPLATES)),
            autoescape=select_autoescape(default=True, default_for_string=True),
        )

    def render(self, name: str, context: dict[str, Any]) -> str:
        """Render template ``name`` with ``context``."""
        return self.templates.get_template(name).render(**context)

    # ---- pages --------------------------------------------------------------------------------
    def page(self, filter_name: str) -> PageView:
        """The header of every page under ``filter_name``."""
        reviewed, total = self.store.progress()
        criteria = self.store.criteria()
        filters = [("unreviewed", "unreviewed"), ("all", "all"), ("bad", "bad"), ("good", "good")]
        if self.options.changed_since:
            filters.insert(0, ("changed", "changed outputs"))
        filters += [(f"crit:{c.id}", f"fails: {c.name}") for c in criteria]
        return PageView(
            title=self.options.title,
            token=self.options.token,
            reviewed=reviewed,
            total=total,
            filter=filter_name,
            filters=filters,
            criteria=criteria,
            can_use_lm=self.options.lm is not None,
            threshold=self.options.threshold,
        )

    def page_context(self, filter_name: str) -> dict[str, Any]:
        """The template variables of a page's header."""
        return _as_context(self.page(filter_name))

    def criteria_context(self, filter_name: str, report: AlignmentReport) -> dict[str, Any]:
        """The template variables of the criteria page."""
        return {
            **self.page_context(filter_name),
            "report": report,
            "criteria_by_id": {c.id: c for c in self.store.criteria()},
        }

    def item_context(self, key: str, filter_name: str) -> dict[str, Any]:
        """The template variables of an item page; :class:`ReviewError` for an unknown key."""
        self.alignment.refresh(self.options.threshold)
        item = self.store.item(key)
        page = self.page(filter_name)
        view = ItemView(
            item=item,
            samples=self._sample_groups(item),
            prompts=self._prompts(item),
            auto=self._checks(item, page.criteria),
            before=self._earlier_outputs(item),
            signal=self.index.signals().get(item.key, NO_SIGNAL),
            state=self._script_state(item, filter_name, page.criteria),
        )
        return {**_as_context(page), **_as_context(view)}

    # ---- the parts of an item page -------------------------------------------------------------
    def _sample_groups(self, item: ReviewItem) -> list[SampleGroup]:
        by_version: dict[str, list[dict[str, Any]]] = {}
        for sample in self.store.samples_of_input(item.input_id):
            by_version.setdefault(sample["prompt_version"], []).append(sample)
        groups = []
        for version, rows in by_version.items():
            graded = [r for r in rows if r["grade"]]
            good = sum(r["grade"] == "good" for r in graded)
            pass_rate = f"{good / len(graded):.0%}" if graded else "n/a"
            groups.append(SampleGroup(version, rows, len(rows), len(graded), good, pass_rate))
        return groups

    def _prompts(self, item: ReviewItem) -> list[PromptView]:
        prompts = []
        for version in item.prompt_versions:
            raw = self.store.get_meta(f"prompt:{version}")
            instruction = ""
            if raw:
                state = json.loads(raw)
                instruction = " | ".join(str(p.get("instructions", "")) for p in state.values())
            prompts.append(PromptView(version, instruction))
        return prompts

    def _checks(self, item: ReviewItem, criteria: list[Criterion]) -> dict[int, list[CheckView]]:
        auto: dict[int, list[CheckView]] = {}
        for criterion in criteria:
            for check in criterion.checks:
                result = (
                    self.store.check_results(check.id).get(item.key)
                    if check.spec.needs_lm
                    else check.spec.passes(item.output_text)
                )
                auto.setdefault(criterion.id, []).append(
                    CheckView(str(check.spec), result, check.id == criterion.chosen_check_id)
                )
        return auto

    def _earlier_outputs(self, item: ReviewItem) -> list[EarlierOutput]:
        if not self.options.changed_since:
            return []
        before = []
        for key_before in self.store.changed_outputs(self.options.changed_since).get(item.key, []):
            earlier = self.store.item(key_before)
            before.append(EarlierOutput(earlier, [v[:12] for v in earlier.prompt_versions]))
        return before

    @staticmethod
    def _script_state(item: ReviewItem, filter_name: str, criteria: list[Criterion]) -> dict[str, Any]:
        return {
            "key": item.key,
            "grade": item.grade,
            "reason": item.reason or "",
            "correction": item.correction or "",
            "filter": filter_name,
            "criteria": [{"id": c.id, "name": c.name, "mark": item.judgements.get(c.id)} for c in criteria],
        }

    # ---- JSON ---------------------------------------------------------------------------------
    def item_json(self, item: ReviewItem) -> dict[str, Any]:
        """An item as the JSON API answers it, with the review's progress and the time it was saved."""
        reviewed, total = self.store.progress()
        return {
            "key": item.key,
            "grade": item.grade,
            "reason": item.reason,
            "correction": item.correction,
            "judgements": {str(k): v for k, v in item.judgements.items()},
            "inputs": item.inputs,
            "outputs": item.outputs,
            "gold": item.gold,
            "prompt_versions": item.prompt_versions,
            "reviewed": reviewed,
            "total": total,
            "saved_at": time.time(),
        }
