"""Which item a browser tab sees next: the filters of the page and the per-tab navigation state.

Under the ``unreviewed`` filter the next item comes from the :class:`~dspy_ext.review.NextItemSampler`
(informative picks alternating with random ones), skipping what the tab passed without grading; under
every other filter items come in insertion order.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from dspy_ext.review.alignment import AlignmentCache
from dspy_ext.review.guard import HttpError
from dspy_ext.review.options import ReviewOptions
from dspy_ext.review.records import ItemSummary
from dspy_ext.review.sampling import NextItemSampler, SignalIndex
from dspy_ext.review.store import ReviewStore

MAX_SKIPPED = 10_000
MAX_CLIENT_NAME = 64


@dataclass
class ClientState:
    """Per-tab navigation state: how many picks it had, which unreviewed items it skipped."""

    picks: int = 0
    skipped: set[str] = field(default_factory=set)


class ClientRegistry:
    """The navigation state of every tab, by its client name. Thread-safe."""

    def __init__(self) -> None:
        self._clients: dict[str, ClientState] = {}
        self._lock = threading.Lock()

    def state(self, name: str) -> ClientState:
        """The state of tab ``name`` (a new one on its first request)."""
        with self._lock:
            return self._clients.setdefault(name, ClientState())


class Navigator:
    """Filters the store's items and picks the next one for a tab.

    Args:
        store: The review store.
        index: The informativeness of the items (and the chosen checks' outcomes).
        sampler: Picks among unreviewed items.
        alignment: Refreshed before a ``crit:ID`` filter reads the chosen checks.
        options: The page's settings (``changed_since`` and the threshold).
    """

    def __init__(
        self,
        store: ReviewStore,
        index: SignalIndex,
        sampler: NextItemSampler,
        alignment: AlignmentCache,
        options: ReviewOptions,
    ) -> None:
        self.store, self.index, self.sampler = store, index, sampler
        self.alignment, self.options = alignment, options

    def filtered(self, items: list[ItemSummary], filter_name: str) -> list[ItemSummary]:
        """The items a filter keeps; :class:`HttpError` (400) for an unknown filter or criterion."""
        if filter_name == "unreviewed":
            return [i for i in items if i.grade is None]
        if filter_name == "all":
            return items
        if filter_name in ("bad", "good"):
            return [i for i in items if i.grade == filter_name]
        if filter_name == "changed":
            if not self.options.changed_since:
                raise HttpError(400, "filter 'changed' needs a prompt version to compare (dspy-ext review RUN)")
            changed = self.store.changed_outputs(self.options.changed_since)
            return [i for i in items if i.key in changed]
        if filter_name.startswith("crit:") and filter_name[5:].isdigit():
            return self._failing(items, int(filter_name[5:]))
        raise HttpError(400, f"unknown filter {filter_name!r} (unreviewed, all, bad, good, changed, crit:ID)")

    def _failing(self, items: list[ItemSummary], cid: int) -> list[ItemSummary]:
        """Items failing criterion ``cid``: marked failed by the reviewer, or (unmarked) failed by its chosen check."""
        criterion = next((c for c in self.store.criteria(include_archived=True) if c.id == cid), None)
        if criterion is None:
            raise HttpError(400, f"no criterion {cid}")
        marks = self.store.judgements_of(cid)
        chosen = criterion.chosen_check
        outcomes = self.index.outcomes(chosen, [i.key for i in items]) if chosen is not None else {}
        return [i for i in items if (not marks[i.key] if i.key in marks else outcomes.get(i.key) is False)]

    def next_key(self, filter_name: str, current: str | None, state: ClientState) -> tuple[str | None, str]:
        """The next item for a tab: the sampler over unreviewed items, file order for the other filters.

        Returns:
            ``(key or None, how it was picked)``.
        """
        if filter_name.startswith("crit:"):
            self.alignment.refresh(self.options.threshold)
        items = self.store.summaries()
        candidates = self.filtered(items, filter_name)
        if filter_name != "unreviewed":
            return self._in_order(items, candidates, current)
        if current:
            state.skipped.add(current)  # passing an unreviewed item without grading skips it this session
            if len(state.skipped) > MAX_SKIPPED:
                state.skipped.clear()
        fresh = [i for i in candidates if i.key not in state.skipped]
        if not fresh:
            state.skipped.clear()
            fresh = [i for i in candidates if i.key != current] or candidates
        signals = self.index.signals(items)
        chosen, how = self.sampler.pick(fresh, state.picks, signals)
        state.picks += 1
        return (chosen.key if chosen else None), how

    @staticmethod
    def _in_order(
        items: list[ItemSummary], candidates: list[ItemSummary], current: str | None
    ) -> tuple[str | None, str]:
        """The first candidate after ``current`` in insertion order (wrapping round to the first)."""
        if not candidates:
            return None, ""
        seqs = {i.key: i.seq for i in items}
        after = seqs.get(current or "", 0)
        following = [i for i in candidates if i.seq > after]
        return (following or candidates)[0].key, "in order"
