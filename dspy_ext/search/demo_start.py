"""The demo start of an instruction search: the labeled demos its instructions are searched on.

On a small model the labeled demos decide most of the score, and a random
draw of 3 demos from a two-label task is all one label a quarter of the time;
the model then answers that label for every row, and no instruction rescues
it. Before any instruction is proposed, an instruction search therefore races
the free baseline (the student's instruction with the 3 random labeled demos
that ``dspy-ext compile`` reports as its baseline) against class-balanced
draws of each ``k`` in ``demo_start`` (the same draws as DemoSearch's, cut to
fit the context), on the first valset rows, with
:class:`~dspy_ext.search.final_selection.IncumbentRace`. A draw is chosen
only when it is at least as good as the baseline there, so the search never
starts below what a user has for free. The winner is the run's demo set 0:
every instruction is scored on it, and it is crossed with the bootstrapped
sets in the final selection.

The race takes at most ``demo_start_share`` of the search phase's calls; the
number of rows is cut to fit (a multiple of the racing round). When not even
one round fits, or the student brings its own demos, the start is the
baseline's draw and nothing is raced. Scores of the race are kept in the
evaluator's cache, so the final selection does not pay for those rows again.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dspy

from dspy_ext.data.demos import balanced_demos
from dspy_ext.prompt_state import demo_to_dict, predictors
from dspy_ext.search.candidate import Candidate, PredictorPrompt
from dspy_ext.search.demos import DemoSet, closed_label_set
from dspy_ext.search.final_selection import IncumbentRace
from dspy_ext.search.run import SearchRun

logger = logging.getLogger(__name__)

__all__ = ["BASELINE_DEMOS", "DemoStart", "baseline_draw", "race_demo_start", "race_rows_for", "with_demos"]

#: Cuts a demo set to fit the context window.
Fit = Callable[[DemoSet], DemoSet]

#: Labeled demos per predictor of the free baseline (``dspy-ext compile``'s ``baseline_test_score``).
BASELINE_DEMOS = 3


def baseline_draw(trainset: list[dspy.Example], seed: int, k: int = BASELINE_DEMOS) -> list[dspy.Example]:
    """The free baseline's labeled demos: ``k`` training rows drawn with ``random.Random(seed)``."""
    k = min(k, len(trainset))
    return random.Random(seed).sample(trainset, k) if k > 0 else []


@dataclass
class DemoStart:
    """Which demo set an instruction search started from, and what the race on val saw.

    Attributes:
        chosen: ``"baseline"`` or ``"balanced.k<N>"`` (``"random.k<N>"`` for open outputs).
        k: Demos per predictor of the chosen set.
        rows: Valset rows the race scored each arm on (0: nothing was raced).
        note: Why nothing was raced (empty otherwise).
        labels: The closed label set the balanced draws took in turn (``None``: open outputs).
        arms: Per arm: its name, demos, val rows scored, val score and why it was dropped.
    """

    chosen: str = "baseline"
    k: int = 0
    rows: int = 0
    note: str = ""
    labels: list[str] | None = None
    arms: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def race_demo_start(
    run: SearchRun,
    student: dspy.Module,
    *,
    counts: tuple[int, ...],
    max_rows: int,
    share: float,
    round_rows: int,
    seed: int,
    fit: Fit,
) -> tuple[DemoSet, DemoSet, DemoStart]:
    """The demo set an instruction search starts from (see the module docstring).

    Args:
        run: The search run (its valset, evaluator, store and meters).
        student: The program being optimized.
        counts: Demo counts ``k`` of the class-balanced draws raced against the baseline (at least one).
        max_rows: At most this many valset rows are raced.
        share: Largest share of the search phase's calls the race may take.
        round_rows: Valset rows per racing round.
        seed: The compile's seed (the baseline's draw and the balanced draws).
        fit: ``fit(demo_set) -> demo_set``: the set cut to fit the context.

    Returns:
        The chosen demo set, the free baseline's demo set, and the report of the race.
    """
    names = run.predictor_names()
    baseline = fit(_as_set(names, baseline_draw(run.trainset, seed)))
    labels, label_field = closed_label_set(student, run.trainset)
    report = DemoStart(k=_size(baseline), labels=list(labels) if labels else None)
    arms = _balanced_arms(run, names, counts, labels, label_field, seed, fit, exclude=baseline)
    cap = run.search_meter.max_calls or run.total_meter.max_calls
    rows = race_rows_for(
        len(arms) + 1, cap=cap, share=share, max_rows=max_rows, n_val=len(run.valset), round_rows=round_rows
    )
    if not arms or rows < round_rows:
        report.note = (
            "every balanced draw is the baseline's"
            if not arms
            else f"the budget cannot race {len(arms) + 1} demo sets on {round_rows} valset rows"
        )
        return baseline, baseline, report
    chosen = _race(run, student, baseline, arms, rows=rows, race_rows=round_rows, report=report)
    return chosen, baseline, report


def race_rows_for(n_sets: int, *, cap: int | None, share: float, max_rows: int, n_val: int, round_rows: int) -> int:
    """Valset rows the demo start races ``n_sets`` demo sets on: at most ``max_rows``, whole rounds of
    ``round_rows``, and ``n_sets`` x rows within ``share`` of ``cap`` calls (0: not one round fits)."""
    per_set = int(cap * share) // n_sets if cap else max_rows
    return min(max_rows, n_val, per_set) // round_rows * round_rows


def _race(
    run: SearchRun,
    student: dspy.Module,
    baseline: DemoSet,
    arms: list[tuple[str, int, DemoSet]],
    *,
    rows: int,
    race_rows: int,
    report: DemoStart,
) -> DemoSet:
    """Race the baseline (the incumbent) against ``arms`` on the first ``rows`` valset rows."""
    incumbent = with_demos(student, baseline, "start.baseline")
    contenders = [with_demos(student, demo_set, f"start.{name}", requested_k=k) for name, k, demo_set in arms]
    race = IncumbentRace(race_rows=race_rows, rows=rows)
    race.select(run, incumbent, contenders)
    sets = [("baseline", _size(baseline), baseline), *arms]
    report.rows = rows
    report.arms = [
        {
            "arm": name,
            "k": k,
            "val_rows": lane.complete_rows,
            "val": None if lane.val_mean is None else round(lane.val_mean, 2),
            "dropped": lane.dropped,
        }
        for (name, k, _), lane in zip(sets, race.lanes)
    ]
    name, k, demo_set = sets[race.chosen]
    report.chosen, report.k = name, k
    if race.exhausted:
        report.note = "the budget ran out during the race; the baseline's draw was kept"
    logger.info("%s: demo start %s (k=%d) after a race on %d valset rows", run.method, name, k, rows)
    return demo_set


def _balanced_arms(
    run: SearchRun,
    names: list[str],
    counts: tuple[int, ...],
    labels: tuple[str, ...] | None,
    label_field: str | None,
    seed: int,
    fit: Fit,
    *,
    exclude: DemoSet,
) -> list[tuple[str, int, DemoSet]]:
    """One class-balanced draw per ``k`` (random rows for open outputs), cut to fit; duplicates left out."""
    arms: list[tuple[str, int, DemoSet]] = []
    seen = [exclude]
    kind = "balanced" if labels else "random"
    for k in counts:
        demos = balanced_demos(
            run.trainset, min(k, len(run.trainset)), seed=seed, field=label_field or "output", labels=labels
        )
        demo_set = fit(_as_set(names, demos))
        if _size(demo_set) and demo_set not in seen:
            seen.append(demo_set)
            arms.append((f"{kind}.k{k}", _size(demo_set), demo_set))
    return arms


def _as_set(names: list[str], demos: list[dspy.Example]) -> DemoSet:
    dicts = tuple(demo_to_dict(d) for d in demos)
    return {name: dicts for name in names}


def _size(demo_set: DemoSet) -> int:
    return min((len(v) for v in demo_set.values()), default=0)


def with_demos(student: dspy.Module, demo_set: DemoSet, origin: str, **meta: Any) -> Candidate:
    """The student's own instructions with ``demo_set`` (as demo set 0) on every predictor."""
    prompts = {
        name: PredictorPrompt(p.signature.instructions, 0, demo_set.get(name, ())) for name, p in predictors(student)
    }
    return Candidate(prompts, (), origin, meta)
