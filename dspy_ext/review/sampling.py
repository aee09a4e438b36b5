"""Which output to show next: informative picks alternating with random ones.

An unreviewed item is *informative* when a grade on it teaches the most:

* **checks disagree**: automatic checks fail it; as in EvalGen each failing
  check adds its pass rate over all outputs, so a failure of a check that
  usually passes counts most;
* **samples disagree**: the K samples of its input gave different outputs
  (adds the share of the other samples that differ from it), and more so when
  sibling outputs were already graded differently.

Even picks take the most informative item, odd picks a uniformly random one,
so that the graded sample stays an honest picture of all outputs (a review of
only the strange cases would overstate the failure rate).

Example:
    >>> sampler = NextItemSampler(seed=0)
    >>> signals = item_signals(store)                      # doctest: +SKIP
    >>> sampler.pick(unreviewed, pick_index=0, signals=signals).key   # doctest: +SKIP
    '9c1f…'
"""

from __future__ import annotations

import random
import threading
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dspy_ext.review.records import CandidateCheck, ItemSummary, ReviewItem
from dspy_ext.review.store import ReviewStore


@dataclass(frozen=True)
class Signal:
    """Why an item is informative: a score and the reasons, shown on the page."""

    score: float = 0.0
    reasons: tuple[str, ...] = field(default_factory=tuple)


NO_SIGNAL = Signal()


class SignalIndex:
    """Informativeness of every item, with the costly parts cached.

    Outputs never change for an item key and a check never changes for a check id, so
    each built-in check's outcome on each output is computed once; a page view then
    costs a few small queries, also with thousands of items. Thread-safe.

    Args:
        store: The review store.

    Example:
        >>> index = SignalIndex(store)           # doctest: +SKIP
        >>> index.signals()[key].reasons         # doctest: +SKIP
        ('fails max_words:1 (short), which passes 89%',)
    """

    def __init__(self, store: ReviewStore) -> None:
        self.store = store
        self._texts: dict[str, str] = {}
        self._outcomes: dict[int, dict[str, bool]] = {}
        self._lock = threading.Lock()

    def output_texts(self, keys: Sequence[str]) -> dict[str, str]:
        """Output text of each key (cached)."""
        with self._lock:
            missing = [k for k in keys if k not in self._texts]
            if missing:
                self._texts.update(self.store.output_texts(missing))
            return {k: self._texts[k] for k in keys if k in self._texts}

    def outcomes(self, check: CandidateCheck, keys: Sequence[str]) -> dict[str, bool | None]:
        """Key -> the check's pass/fail/None; built-in checks are cached, LM checks read from the store."""
        if check.spec.needs_lm:
            stored = self.store.check_results(check.id)
            return {k: stored.get(k) for k in keys}
        texts = self.output_texts(keys)
        with self._lock:
            cached = self._outcomes.setdefault(check.id, {})
            for key in keys:
                if key not in cached and key in texts:
                    cached[key] = check.spec.passes(texts[key])
            return {k: cached.get(k) for k in keys}

    def signals(self, items: Sequence[ItemSummary | ReviewItem] | None = None) -> dict[str, Signal]:
        """Item key -> :class:`Signal` for the informative ones of ``items`` (default: all in the store).

        Items without any signal are left out; read with ``signals.get(key, NO_SIGNAL)``.
        """
        items = list(items) if items is not None else self.store.summaries()
        if not items:
            return {}
        keys = [i.key for i in items]
        scores: dict[str, float] = defaultdict(float)
        reasons: dict[str, list[str]] = defaultdict(list)
        for criterion in self.store.criteria():
            for check in criterion.checks:
                outcomes = self.outcomes(check, keys)
                known = [v for v in outcomes.values() if v is not None]
                if not known:
                    continue
                pass_rate = sum(known) / len(known)
                for key, passed in outcomes.items():
                    if passed is False:
                        scores[key] += pass_rate
                        reasons[key].append(f"fails {check.spec} ({criterion.name}), which passes {pass_rate:.0%}")
        by_input: dict[str, list[ItemSummary | ReviewItem]] = defaultdict(list)
        for item in items:
            by_input[item.input_id].append(item)
        counts = self.store.sample_counts()
        for input_id, siblings in by_input.items():
            n_samples, distinct = counts.get(input_id, (len(siblings), len(siblings)))
            if distinct < 2 or n_samples < 2:
                continue
            grades = Counter(s.grade for s in siblings if s.grade)
            for item in siblings:
                scores[item.key] += (distinct - 1) / (n_samples - 1)
                reasons[item.key].append(f"its input's {n_samples} samples gave {distinct} different outputs")
                if len(grades) > 1:
                    scores[item.key] += 0.5
                    reasons[item.key].append("sibling outputs were graded both Good and Bad")
        # Only informative items are listed (look up with ``.get(key, NO_SIGNAL)``): building a thousand
        # empty signals for every page view would cost more than the rest of it.
        return {k: Signal(scores[k], tuple(reasons[k])) for k in scores}


def item_signals(store: ReviewStore, items: Sequence[ItemSummary | ReviewItem] | None = None) -> dict[str, Signal]:
    """Informativeness of every item from the store's checks and samples (no cache kept).

    Args:
        store: The review store.
        items: Its items (or summaries), if already loaded.

    Returns:
        Item key -> :class:`Signal` for the informative items (others are left out).
    """
    return SignalIndex(store).signals(items)


class NextItemSampler:
    """Alternate the most informative item (even picks) with a random one (odd picks).

    Args:
        seed: Seeds the random picks; pick ``n`` is reproducible for a given seed.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def pick(
        self, candidates: Sequence[ItemSummary | ReviewItem], pick_index: int, signals: Mapping[str, Signal]
    ) -> tuple[ItemSummary | ReviewItem | None, str]:
        """Choose the next item.

        Args:
            candidates: Items (or summaries) that may be shown (e.g. unreviewed ones).
            pick_index: How many picks this reviewer has had (decides informative vs random).
            signals: :func:`item_signals` output.

        Returns:
            ``(item, how)`` with ``how`` in ``{"informative", "random", "in order"}``; ``(None, "")`` when
            there is no candidate. An informative pick when no candidate has a signal falls back to order.
        """
        if not candidates:
            return None, ""
        if pick_index % 2 == 1:
            rng = random.Random(f"{self.seed}:{pick_index}")
            return rng.choice(list(candidates)), "random"
        best = max(candidates, key=lambda i: (signals.get(i.key, NO_SIGNAL).score, -i.seq))
        if signals.get(best.key, NO_SIGNAL).score > 0:
            return best, "informative"
        return min(candidates, key=lambda i: i.seq), "in order"
