"""The shared instruction-search strategy: one loop for APE, OPRO, EvoPrompt and ProTeGi.

A method is a subclass that says how it *proposes* candidates and how it
*selects* which to keep, with a typed config model (its settings, written
once) and, if it needs one, a typed per-run state; everything else is here:

1. demo sets are built with DSPy's bootstrapping (``max_bootstrapped_demos``,
   ``max_labeled_demos``);
2. the method's initial candidates are admitted and selected;
3. ``steps`` rounds of propose -> admit (guards, dedupe) -> select run on
   training minibatches, changing one predictor's instruction per step;
4. the final program is chosen on the valset over (instruction x demo set) by
   a :class:`~dspy_ext.search.final_selection.FinalSelector` given at
   construction (successive halving by default), with the student's own
   instruction always among the contenders.

``max_lm_calls`` is a hard cap on task and prompt-model calls together. The
search phase gets ``1 - final_share`` of it; when any cap is hit the best
candidate so far is returned, with a warning. The compile around the loop
(valset, models, meters, trial log, result) is
:class:`~dspy_ext.search.teleprompter.SearchTeleprompter`'s.
"""

from __future__ import annotations

import abc
import logging
import math
from typing import Any, ClassVar, Generic, TypeVar

import dspy

from dspy_ext.lm.metering import metering
from dspy_ext.prompt_state import predictors
from dspy_ext.search.candidate import Candidate
from dspy_ext.search.config import InstructionSearchConfig
from dspy_ext.search.context import demo_set_context_fit, fitting_demo_set
from dspy_ext.search.demo_start import race_demo_start, race_rows_for, with_demos
from dspy_ext.search.demos import DemoSet, build_demo_sets, labeled_demo_set
from dspy_ext.search.final_selection import FinalSelector, SuccessiveHalving, final_contenders, with_demo_set
from dspy_ext.search.options import Capabilities, CompileOptions, GuardMode, MetricForm
from dspy_ext.search.plan import CallPlan, MetaPromptCalls, PlanInputs
from dspy_ext.search.reasons import Rejection
from dspy_ext.search.regression import RegressionGuard
from dspy_ext.search.result import SearchResult
from dspy_ext.search.run import SearchRun, SearchStopped
from dspy_ext.search.teleprompter import SearchTeleprompter
from dspy_ext.search.typical import format_pairs

__all__ = ["InstructionSearch", "SearchResult", "format_pairs"]

#: A method's per-run state (``None`` for methods that need none).
StateT = TypeVar("StateT")

logger = logging.getLogger(__name__)


class InstructionSearch(SearchTeleprompter, Generic[StateT]):
    """Base class of the instruction-search teleprompters.

    A method's settings are its :attr:`config_model` (defaults and bounds written once); they are
    given as keyword arguments and validated here, and read as ``self.config.<name>``. The shared
    settings (:class:`~dspy_ext.search.options.CompileOptions`) are given as keywords or as
    ``options=``; an instruction search uses all of them:

    * ``final_selector`` chooses the returned (instruction x demo set) among the final contenders
      (default: :class:`~dspy_ext.search.final_selection.SuccessiveHalving`);
    * ``feedback`` (a person's critiques) reaches the methods that use them (ProTeGi as gradients,
      OPRO and EvoPrompt in their meta-prompts);
    * ``guards`` ``{criterion: points}``: the most points (0-100) a criterion of the metric may drop
      against ``guard_reference`` (default: the student) on the same rows. A candidate that breaks
      one is never selected, and its rejection is logged in the trial log; if the final choice breaks
      one on the valset, the reference program is returned. See :mod:`dspy_ext.search.regression`.

    Args:
        metric: ``metric(example, prediction, trace=None)``.
        **settings: The method's settings (see its config model, e.g. ``steps``, ``minibatch_size``,
            ``max_labeled_demos``, ``final_candidates``, ``final_share``), the shared settings, and
            ``meta_prompts`` (overrides of the meta-prompt Signatures, by role).

    Raises:
        ValueError: A bad or unknown setting (the message names it and lists the valid ones).
    """

    method: ClassVar[str] = "search"
    config_model: ClassVar[type[InstructionSearchConfig]] = InstructionSearchConfig
    capabilities: ClassVar[Capabilities] = Capabilities(
        enforces_budget=True, final_selector=True, guards=GuardMode.IN_SEARCH, metric=MetricForm.RAW
    )
    config: InstructionSearchConfig

    def __init__(self, metric: Any, **settings: Any) -> None:
        super().__init__(metric, **settings)
        self.final_selector: FinalSelector = self.options.final_selector or SuccessiveHalving()

    def _check_options(self, options: CompileOptions) -> None:
        super()._check_options(options)
        if options.guards:
            from dspy_ext.evaluation import criteria_names

            known = criteria_names(self.metric)
            if known is not None:
                RegressionGuard(options.guards).validate(known)  # a misspelt guard fails here, before any call

    # ---- what a method defines --------------------------------------------------------
    def new_state(self, run: SearchRun) -> StateT:
        """The method's state for one compile, made before :meth:`initial` (default: none)."""
        return None  # type: ignore[return-value]

    @abc.abstractmethod
    def initial(self, run: SearchRun, state: StateT, seed_candidate: Candidate) -> list[Candidate]:
        """Initial candidates (the seed candidate is scored separately)."""

    @abc.abstractmethod
    def propose(self, run: SearchRun, state: StateT, population: list[Candidate], step: int) -> list[Candidate]:
        """New candidates for step ``step`` (admitted through ``run.admit``)."""

    @abc.abstractmethod
    def select(
        self, run: SearchRun, state: StateT, population: list[Candidate], children: list[Candidate]
    ) -> list[Candidate]:
        """Score as needed and return the next population."""

    def projected_calls(self, n_predictors: int, n_val: int) -> int:
        """A rough count of the calls a run without a cap would make (logged before running)."""
        return 0

    def planned_asks(self, n_predictors: int) -> tuple[MetaPromptCalls, ...]:
        """The prompt model's calls of a run without a cap, by meta-prompt (part of :meth:`projected_calls`)."""
        return ()

    def plan(self, inputs: PlanInputs) -> CallPlan:
        """The calls a compile expects to make under :attr:`max_lm_calls`, by role (see :class:`CallPlan`).

        The task side adds the bootstrapping of the demo sets (at most one program call per pool row
        and demo set) to the search's own :meth:`projected_calls`.
        """
        c = self.config
        n_predictors = inputs.n_predictors
        bootstrap = 0
        if c.max_bootstrapped_demos > 0 and c.num_demo_sets > 1:
            pool = min(inputs.n_train, 4 * c.max_bootstrapped_demos + 4)
            bootstrap = (c.num_demo_sets - 1) * pool * n_predictors
        asks = self.planned_asks(n_predictors)
        prompt = sum(a.calls for a in asks)
        task = (
            max(0, self.projected_calls(n_predictors, inputs.n_val) - prompt) + bootstrap + self._planned_start(inputs)
        )
        demos = max(c.max_labeled_demos, c.max_bootstrapped_demos)  # bootstrapped sets are topped up with labeled
        return CallPlan(task, asks, demos).capped(self.max_lm_calls)

    def _planned_start(self, inputs: PlanInputs) -> int:
        """Task calls of the demo start's race at most: every demo set on every raced row."""
        c = self.config
        if not c.demo_start or c.max_labeled_demos == 0:
            return 0
        n_sets = len(c.demo_start) + 1
        rows = race_rows_for(
            n_sets,
            cap=self.search_cap(),
            share=c.demo_start_share,
            max_rows=c.demo_start_rows,
            n_val=inputs.n_val,
            round_rows=DEMO_START_ROUND,
        )
        return n_sets * rows * self.options.eval_repeats * inputs.n_predictors

    def search_cap(self) -> int:
        """The search phase's share of the budget (``1 - final_share``; the rest is the final selection's)."""
        return max(1, int(self.max_lm_calls * (1.0 - self.config.final_share)))

    def minibatch_size(self) -> int:
        return self.config.minibatch_size

    # ---- the loop ---------------------------------------------------------------------
    def search(self, run: SearchRun, student: dspy.Module) -> Candidate:
        """Demo sets, initial candidates, ``steps`` rounds, the final selection and the guards' check."""
        self._announce(run)
        seed_candidate = self._search_phase(run, student)
        try:
            best = self._final_selection(run, seed_candidate)
        except SearchStopped:
            run.mark_exhausted()
            best = None
        if best is None:
            validated = run.store.best_validated()
            ranked = run.store.ranked()
            best = validated.candidate if validated else ranked[0].candidate if ranked else seed_candidate
            logger.warning(
                "%s: LM-call budget of %d used up; returning the best candidate so far", self.method, self.max_lm_calls
            )
        if run.regression is not None:
            best = self._guarded_choice(run, student, best)
        return best

    def _announce(self, run: SearchRun) -> None:
        search_cap = run.search_meter.max_calls or 0
        projected = self.projected_calls(len(run.predictor_names()), len(run.valset))
        logger.info(
            "%s: projected about %d LM calls without a cap; cap %d (search %d, final %d)",
            self.method,
            projected,
            self.max_lm_calls,
            search_cap,
            self.max_lm_calls - search_cap,
        )
        if projected > self.max_lm_calls:
            logger.info("%s: the cap will cut the run short; the best candidate so far is returned", self.method)

    def _search_phase(self, run: SearchRun, student: dspy.Module) -> Candidate:
        """The demo sets, the initial candidates and the search steps; returns the student's own prompts."""
        seed_candidate = Candidate.from_program(student, origin="student")
        with metering(run.search_meter):
            try:
                free_baseline = self._build_demo_sets(run, student)
                seed_candidate = with_demo_set(seed_candidate, run, 0, origin="student")
                if self.options.guard_reference is None:
                    # Guards compare with what a user has for free: the student with its labeled demos. A
                    # student that brings its own demos is that program already; it is the reference as given.
                    own_demos = all(p.demos for _, p in predictors(student))
                    run.set_reference(Candidate.from_program(student, origin="student") if own_demos else free_baseline)
                state = self.new_state(run)
                initial = [seed_candidate] + [c for c in self.initial(run, state, seed_candidate) if c is not None]
                population = self.select(run, state, [], _unique(initial))
                for step in range(self.config.steps):
                    run.begin_step(step + 1)
                    children = [c for c in self.propose(run, state, population, step) if c is not None]
                    population = self.select(run, state, population, _unique(children))
            except SearchStopped:
                run.mark_exhausted()
                logger.warning(
                    "%s: search budget (%d calls) used up at step %d; continuing with the best so far",
                    self.method,
                    run.search_meter.max_calls,
                    run.step,
                )
        return seed_candidate

    def _reference_candidate(self, run: SearchRun, student: dspy.Module) -> Candidate:
        """The guards' reference as prompts of the student (the student's own when the shapes differ)."""
        own = Candidate.from_program(student, origin="reference")
        if self.options.guard_reference is None:
            return run.reference_candidate or own
        reference = Candidate.from_program(self.options.guard_reference, origin="reference")
        return reference if set(reference.prompts) == set(own.prompts) else own

    def _guarded_choice(self, run: SearchRun, student: dspy.Module, best: Candidate) -> Candidate:
        """``best`` if it keeps every guard on the whole valset, else the best fully checked one or the reference's.

        The check is paired, on every valset row both were scored on; rows already scored come from the
        evaluator's cache. A choice that cannot be checked (the budget ran out) is not returned either.
        """
        fallback = self._reference_candidate(run, student)
        if best.key == fallback.key:
            return best
        report = run.evaluate(best, run.valset, split="val")
        if report.budget_exhausted:
            run.mark_exhausted()
        record = run.store.get(best.key)
        if not report.budget_exhausted and record.val_guarded and record.val_reliable:
            return best
        checked = [
            r
            for r in run.store.records()
            if r.val_n >= len(run.valset) and r.val_score is not None and r.val_reliable and r.val_guarded and r.guarded
        ]
        if checked:
            # The best choice that was checked against every guard on the whole valset.
            runner_up = min(checked, key=lambda r: (-r.val_score, r.order)).candidate
            if runner_up.key != best.key:
                logger.warning(
                    "%s: the final choice could not be kept (%s); returning the best fully checked one",
                    self.method,
                    "budget" if report.budget_exhausted else "guard or failed rows",
                )
                run.fall_back("the final choice failed its check; the best fully checked candidate was returned")
                return runner_up
        if report.budget_exhausted:
            run.fall_back("the budget ran out before the choice could be checked on the whole valset")
        elif not record.val_reliable:
            run.fall_back("most of the choice's valset rows failed")
        else:
            run.fall_back(
                "the choice breaks a guard on the valset: "
                + ", ".join(f"{name} -{drop:.1f}" for name, drop in record.val_guard_breaks.items())
            )
        logger.warning("%s: returning the reference program's prompts: %s", self.method, run.guard_fallback)
        return fallback

    def _guard_report(self, run: SearchRun, best: Candidate, fallback: Candidate) -> dict[str, Any]:
        """Every criterion on the valset, reference against the returned program (see :class:`SearchResult`)."""
        from dspy_ext.evaluation import example_key

        assert run.regression is not None
        keys = [example_key(ex) for ex in run.valset]
        reference_rows = run.reference_rows
        reference = {k: reference_rows[k] for k in keys if k in reference_rows}
        if best.key == fallback.key:
            compiled = reference
        else:
            scored = run.store.get(best.key).val_criteria if best.key in run.store else {}
            compiled = {k: scored[k] for k in keys if k in scored}
        return {
            "reference": "student" if self.options.guard_reference is None else "guard_reference",
            "tolerances": dict(self.options.guards),
            "stochastic": run.regression.stochastic,
            "repeats": run.repeats,
            "split": "val",
            "n": len(set(reference) & set(compiled)),
            "criteria": run.regression.report(reference, compiled),
            "rejected": run.guard_rejections,
            "fallback": run.guard_fallback,
        }

    def _build_demo_sets(self, run: SearchRun, student: dspy.Module) -> Candidate:
        """The run's demo sets: the demo start (set 0), then the bootstrapped ones; returns the free baseline."""
        c = self.config
        first, free_baseline = self._demo_start(run, student)
        run.add_demo_set(first)
        if c.max_bootstrapped_demos > 0 and c.num_demo_sets > 1:
            self._bootstrap_demo_sets(run, student, first)
        used = {id(ex) for ex in run.trainset if any(ex.toDict() == d for demos in first.values() for d in demos)}
        pool = [ex for ex in run.trainset if id(ex) not in used]
        run.set_search_pool(pool or list(run.trainset))
        return free_baseline

    def _demo_start(self, run: SearchRun, student: dspy.Module) -> tuple[DemoSet, Candidate]:
        """Demo set 0 and the free baseline's candidate (see :mod:`~dspy_ext.search.demo_start`).

        Without ``demo_start`` (or with ``max_labeled_demos=0``) set 0 is ``max_labeled_demos`` random
        labeled demos drawn with the run's RNG, and it is the baseline the guards compare with.
        """
        c = self.config
        names = run.predictor_names()
        fit = lambda s: fitting_demo_set(s, lambda d: self._fits(run, student, d))
        if not c.demo_start or c.max_labeled_demos == 0:
            first = fit(labeled_demo_set(names, run.trainset, c.max_labeled_demos, run.rng))
            return first, with_demos(student, first, "student")
        first, baseline, report = race_demo_start(
            run,
            student,
            counts=c.demo_start,
            max_rows=c.demo_start_rows,
            share=c.demo_start_share,
            round_rows=DEMO_START_ROUND,
            seed=self.seed,
            fit=fit,
        )
        run.report(demo_start=report.to_dict())
        return first, with_demos(student, baseline, "baseline")

    def _bootstrap_demo_sets(self, run: SearchRun, student: dspy.Module, first: DemoSet) -> None:
        """Demo sets 1.. bootstrapped by DSPy, taught by set 0 (those that do not fit are set aside)."""
        c = self.config
        teacher = with_demos(student, first, "teacher").apply(student)
        # Bootstrapping stops at the first successes; a bounded pool keeps
        # a model that rarely succeeds from spending the search budget here.
        pool = run.rng.sample(run.trainset, min(len(run.trainset), 4 * c.max_bootstrapped_demos + 4))
        with dspy.context(lm=run.models.task_lm, adapter=run.models.task_adapter):
            more = build_demo_sets(
                student,
                pool,
                self.metric,
                num_sets=c.num_demo_sets,
                max_bootstrapped_demos=c.max_bootstrapped_demos,
                max_labeled_demos=c.max_labeled_demos,
                rng=run.rng,
                teacher=teacher,
            )
        before = run.demo_sets
        for demo_set in [s for s in more[1:] if s not in before and self._fits(run, student, s)]:
            run.add_demo_set(demo_set)

    #: A demo set is dropped when more than this share of sampled training inputs overflow the context with it.
    OVERFLOW_TOLERANCE = 0.1

    def _fits(self, run: SearchRun, student: dspy.Module, demo_set: DemoSet) -> bool:
        """Whether ``demo_set`` leaves room in the context for typical training inputs (see :mod:`.context`)."""
        fit = demo_set_context_fit(
            student, demo_set, run.trainset, lm=run.models.task_lm, adapter=run.models.task_adapter
        )
        if fit.overflowing <= self.OVERFLOW_TOLERANCE * fit.checked:
            return True
        run.reject(Rejection.DEMO_SET_OVERFLOW)
        logger.warning(
            "%s: a demo set was set aside: %d of %d sampled prompts overflow (%s)",
            self.method,
            fit.overflowing,
            fit.checked,
            fit.message(),
        )
        return False

    def _final_selection(self, run: SearchRun, seed_candidate: Candidate) -> Candidate | None:
        """The final selector's choice among the leading instruction sets (student's included) x demo sets."""
        contenders = final_contenders(run, seed_candidate, self.config.final_candidates + 1)
        return self.final_selector.select(run, seed_candidate, contenders)

    def result_fields(self, run: SearchRun, student: dspy.Module, best: Candidate) -> dict[str, Any]:
        """The valset scores of the returned prompts and of the student's, and the guard report."""
        record = run.store.get(best.key) if best.key in run.store else None
        own = Candidate.from_program(student).instructions
        baseline = [
            r
            for r in run.store.records()
            if r.val_score is not None
            and r.candidate.instructions == own
            and r.candidate.demo_sets == dict.fromkeys(best.prompts, 0)
        ]
        return {
            "demo_start": run.outcome.get("demo_start"),
            "val_score": record.val_score if record else None,
            "baseline_val_score": baseline[0].val_score if baseline else None,
            "guard_report": self._guard_report(run, best, self._reference_candidate(run, student))
            if run.regression is not None
            else None,
        }

    # ---- helpers for methods ------------------------------------------------------------
    @staticmethod
    def top(run: SearchRun, candidates: list[Candidate], k: int) -> list[Candidate]:
        """The ``k`` best of ``candidates`` by accumulated search score; any that breaks a guard ranks last."""

        def key(c: Candidate):
            record = run.store.get(c.key) if c.key in run.store else None
            mean = record.mean if record and record.mean is not None else -math.inf
            broken = bool(record and (record.guard_breaks or record.val_guard_breaks))
            return (broken, -mean, record.order if record else math.inf)

        return sorted(candidates, key=key)[:k]


#: Valset rows per round of the demo start's race.
DEMO_START_ROUND = 10


def _unique(candidates: list[Candidate]) -> list[Candidate]:
    seen: set[str] = set()
    out = []
    for c in candidates:
        if c.key not in seen:
            seen.add(c.key)
            out.append(c)
    return out
