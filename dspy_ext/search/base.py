"""The shared instruction-search teleprompter: one loop for APE, OPRO, EvoPrompt and ProTeGi.

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
candidate so far is returned, with a warning.
"""

from __future__ import annotations

import abc
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import dspy
from dspy.teleprompt import Teleprompter

from dspy_ext.data import default_valset
from dspy_ext.lm.metering import MAX_FAILURES_IN_A_ROW, CallMeter, metering
from dspy_ext.meta_prompts import DEFAULT_META_PROMPTS, FEEDBACK_ROLES, meta_prompt_labels, meta_prompt_texts
from dspy_ext.prompt_state import predictors
from dspy_ext.search.candidate import Candidate, PredictorPrompt
from dspy_ext.search.config import DEFAULT_BUDGET, InstructionSearchConfig
from dspy_ext.search.context import demo_set_context_fit
from dspy_ext.search.demos import DemoSet, build_demo_sets, labeled_demo_set
from dspy_ext.search.feedback import SearchFeedback
from dspy_ext.search.final_selection import FinalSelector, SuccessiveHalving, final_contenders, with_demo_set
from dspy_ext.search.guards import ProposalGuard
from dspy_ext.search.plan import CallPlan
from dspy_ext.search.regression import RegressionGuard, parse_guards
from dspy_ext.search.run import Models, SearchRun, SearchStopped
from dspy_ext.search.trial_log import TrialLog

#: A method's per-run state (``None`` for methods that need none).
StateT = TypeVar("StateT")

logger = logging.getLogger(__name__)


@dataclass
class SearchResult:
    """What a compile found; attached to the returned program as ``dspy_ext_result``."""

    method: str
    best: dict[str, Any]
    val_score: float | None
    baseline_val_score: float | None
    lm_calls: int
    tokens: int
    seconds: float
    budget_exhausted: bool
    n_candidates: int
    rejected: dict[str, int]
    demo_sets: int
    trials: list[dict[str, Any]] = field(repr=False, default_factory=list)
    #: With regression guards: every criterion, reference against the returned program on the valset
    #: (means with 95% CIs, the paired drop and test, tolerance, broken), the tolerances, and how many
    #: candidates each guard set aside (see :meth:`InstructionSearch._guard_report`).
    guard_report: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "trials"}


class InstructionSearch(Teleprompter, abc.ABC, Generic[StateT]):
    """Base class of the instruction-search teleprompters.

    A method's settings are its :attr:`config_model` (defaults and bounds written once); they are
    given as keyword arguments and validated here, and read as ``self.config.<name>``.

    Args:
        metric: ``metric(example, prediction, trace=None)``.
        max_lm_calls: Hard cap on LM calls (task + prompt model) for the compile.
        seed: Seeds every random choice; ``0`` is a seed like any other.
        num_threads: Evaluation threads.
        prompt_model: LM that writes instructions (default: the task model).
        task_model: LM that runs the program (default: ``dspy.settings.lm``).
        meta_prompts: Overrides of the meta-prompt Signatures, by role.
        log_dir: Folder for ``trials.jsonl`` (``None``: in memory only).
        progress: Show a progress bar with the best score and calls used.
        final_selector: Chooses the returned (instruction x demo set) among the final contenders
            (default: :class:`~dspy_ext.search.final_selection.SuccessiveHalving`).
        feedback: A person's critiques (Bad outputs with reasons) for the methods that use them
            (ProTeGi as gradients, OPRO and EvoPrompt in their meta-prompts); ``None``: none.
        guards: Regression guards ``{criterion: points}``: the most points (0-100) a criterion of the
            metric may drop against ``guard_reference`` on the same rows (``score`` is the objective).
            A candidate that breaks one is never selected, and its rejection is logged in the trial
            log; if the final choice breaks one on the valset, the reference program is returned.
            See :mod:`dspy_ext.search.regression`.
        guard_reference: The program guards compare against (default: the student).
        guard_repeats: Rollouts per row when guards are set (every evaluation then uses
            ``max(repeats, guard_repeats)``); with more than one the guard's test is the stochastic one.
        repeats: Rollouts per row of every evaluation; selection uses the mean over them.
        eval_temperature: Task-LM temperature of the evaluations (``None``: the LM's own). Guards use the
            stochastic test when it, or the task LM's own temperature, is above 0, or repeats exceed 1.
        **settings: The method's settings (see its config model, e.g. ``steps``, ``minibatch_size``,
            ``max_labeled_demos``, ``final_candidates``, ``final_share``).

    Raises:
        ValueError: A bad or unknown setting (the message names it and lists the valid ones).
    """

    method: ClassVar[str] = "search"
    #: Roles of :data:`DEFAULT_META_PROMPTS` this method uses.
    roles: ClassVar[tuple[str, ...]] = ()
    #: The method's settings: defaults, bounds and tuning ranges.
    config_model: ClassVar[type[InstructionSearchConfig]] = InstructionSearchConfig

    def __init__(
        self,
        metric: Any,
        *,
        max_lm_calls: int = DEFAULT_BUDGET,
        seed: int = 0,
        num_threads: int = 4,
        prompt_model: dspy.BaseLM | None = None,
        task_model: dspy.BaseLM | None = None,
        meta_prompts: dict[str, type[dspy.Signature]] | None = None,
        log_dir: str | Path | None = None,
        progress: bool = False,
        final_selector: FinalSelector | None = None,
        feedback: SearchFeedback | None = None,
        guards: dict[str, float] | None = None,
        guard_reference: dspy.Module | None = None,
        guard_repeats: int = 1,
        repeats: int = 1,
        eval_temperature: float | None = None,
        **settings: Any,
    ) -> None:
        super().__init__()
        if max_lm_calls < 1:
            raise ValueError("max_lm_calls must be >= 1")
        if num_threads < 1:
            raise ValueError("num_threads must be >= 1")
        unknown = set(meta_prompts or {}) - set(DEFAULT_META_PROMPTS)
        if unknown:
            raise ValueError(f"unknown meta-prompt roles {sorted(unknown)}; known: {sorted(DEFAULT_META_PROMPTS)}")
        if final_selector is not None and not isinstance(final_selector, FinalSelector):
            raise ValueError(
                f"final_selector must have a select(run, seed_candidate, contenders) method, "
                f"got {type(final_selector).__name__}"
            )
        self.config = self.config_model.resolve(settings, name=self.method)
        self.metric = metric
        self.max_lm_calls = max_lm_calls
        self.seed = seed
        self.num_threads = num_threads
        self.prompt_model = prompt_model
        self.task_model = task_model
        self.meta_prompts = {**DEFAULT_META_PROMPTS, **(meta_prompts or {})}
        self.log_dir = Path(log_dir) if log_dir else None
        self.progress = progress
        self.final_selector: FinalSelector = final_selector or SuccessiveHalving()
        if feedback is not None and not isinstance(feedback, SearchFeedback):
            raise ValueError(f"feedback must be a SearchFeedback, got {type(feedback).__name__}")
        self.feedback: SearchFeedback | None = feedback or None
        self.guards: dict[str, float] = parse_guards(guards)
        if guard_reference is not None and not isinstance(guard_reference, dspy.Module):
            raise ValueError(f"guard_reference must be a dspy.Module, got {type(guard_reference).__name__}")
        if guard_repeats < 1 or repeats < 1:
            raise ValueError("repeats and guard_repeats must be >= 1")
        if eval_temperature is not None and eval_temperature < 0:
            raise ValueError(f"eval_temperature must be >= 0, got {eval_temperature}")
        self.guard_reference = guard_reference
        self.guard_repeats = guard_repeats
        self.repeats = repeats
        self.eval_temperature = eval_temperature
        if self.guards:
            from dspy_ext.evaluation import criteria_names

            known = criteria_names(metric)
            if known is not None:
                RegressionGuard(self.guards).validate(known)  # a misspelt guard fails here, before any call

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

    def projected_prompt_calls(self, n_predictors: int) -> int:
        """How many of :meth:`projected_calls` go to the prompt model (instruction proposals)."""
        return 0

    def plan(self, n_predictors: int, n_train: int, n_val: int) -> CallPlan:
        """The calls a compile expects to make under :attr:`max_lm_calls`, by role (see :class:`CallPlan`).

        The task side adds the bootstrapping of the demo sets (at most one program call per pool row
        and demo set) to the search's own :meth:`projected_calls`.
        """
        c = self.config
        bootstrap = 0
        if c.max_bootstrapped_demos > 0 and c.num_demo_sets > 1:
            pool = min(n_train, 4 * c.max_bootstrapped_demos + 4)
            bootstrap = (c.num_demo_sets - 1) * pool * n_predictors
        prompt = self.projected_prompt_calls(n_predictors)
        task = max(0, self.projected_calls(n_predictors, n_val) - prompt) + bootstrap
        demos = max(c.max_labeled_demos, c.max_bootstrapped_demos)  # bootstrapped sets are topped up with labeled
        return CallPlan(task, prompt, demos).capped(self.max_lm_calls)

    def active_roles(self) -> tuple[str, ...]:
        """The meta-prompt roles of this compile: :attr:`roles`, plus their feedback variants with feedback."""
        if not self.feedback:
            return self.roles
        return self.roles + tuple(FEEDBACK_ROLES[r] for r in self.roles if r in FEEDBACK_ROLES)

    def feedback_role(self, role: str) -> str:
        """``role``'s variant that shows a person's critiques when this compile has feedback, else ``role``."""
        return FEEDBACK_ROLES.get(role, role) if self.feedback else role

    # ---- the loop ---------------------------------------------------------------------
    def compile(
        self,
        student: dspy.Module,
        *,
        trainset: list[dspy.Example],
        valset: list[dspy.Example] | None = None,
        **kwargs: Any,
    ) -> dspy.Module:
        """Search instructions (and demo sets) for every predictor of ``student``.

        Args:
            student: Any DSPy program; it is not modified.
            trainset: Training examples (proposals, demos, search minibatches).
            valset: Examples for the final choice; default: 40% of ``trainset``, seeded.

        Returns:
            A new program carrying the best prompts; ``program.dspy_ext_result`` holds a
            :class:`SearchResult`.
        """
        if kwargs.get("teacher") is not None:
            raise ValueError(f"{type(self).__name__} does not use a teacher program")
        if not trainset:
            raise ValueError("trainset is empty")
        rng = random.Random(self.seed)
        trainset, valset = default_valset(trainset, valset, rng)
        models = Models.resolve(self.task_model, self.prompt_model, method=self.method, max_lm_calls=self.max_lm_calls)
        total = CallMeter(self.max_lm_calls, max_failures_in_a_row=MAX_FAILURES_IN_A_ROW)
        search_cap = max(1, int(self.max_lm_calls * (1.0 - self.config.final_share)))
        search_meter = CallMeter(search_cap)
        log_path = self.log_dir / "trials.jsonl" if self.log_dir else None
        if log_path is not None and log_path.exists():
            log_path.unlink()
        meta_signatures = {r: self.meta_prompts[r] for r in self.active_roles()}
        # Inputs and labels alike: neither may be copied into the instruction (AdalFlow#434); nor may the
        # inputs and outputs of critiques shown in a meta-prompt.
        copied = [str(v) for ex in trainset for k, v in ex.items() if k != "accepted"]
        if self.feedback:
            copied += [str(v) for c in self.feedback.critiques for v in (*c.inputs.values(), *c.output.values())]
        guard = ProposalGuard(
            meta_texts=meta_prompt_texts(meta_signatures),
            meta_labels=meta_prompt_labels(meta_signatures),
            train_inputs=copied,
        )
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.max_lm_calls, desc=self.method, unit="call")
        repeats = max(self.repeats, self.guard_repeats) if self.guards else self.repeats
        regression = None
        if self.guards:
            lm_temperature = (getattr(models.task_lm, "kwargs", None) or {}).get("temperature") or 0.0
            sampled = (self.eval_temperature if self.eval_temperature is not None else lm_temperature) > 0
            regression = RegressionGuard(self.guards, stochastic=sampled or repeats > 1, seed=self.seed)
        run = SearchRun(
            method=self.method,
            student=student,
            trainset=trainset,
            valset=valset,
            metric=self.metric,
            models=models,
            seed=rng.randrange(2**31),
            base_seed=self.seed,
            total_meter=total,
            search_meter=search_meter,
            minibatch_size=self.config.minibatch_size,
            num_threads=self.num_threads,
            guard=guard,
            meta_prompts=self.meta_prompts,
            trial_log=TrialLog(log_path),
            progress=bar,
            regression=regression,
            reference=self.guard_reference,
            repeats=repeats,
            temperature=self.eval_temperature,
        )
        n_pred = len(run.predictor_names())
        if n_pred == 0:
            raise ValueError("the student has no dspy.Predict modules to optimize")
        projected = self.projected_calls(n_pred, len(valset))
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
        try:
            with metering(total):
                best, exhausted = self._run(run, student)
        finally:
            if bar is not None:
                bar.close()
        return self._finish(run, student, best, exhausted)

    def _run(self, run: SearchRun, student: dspy.Module) -> tuple[Candidate, bool]:
        exhausted = False
        seed_candidate = Candidate.from_program(student, origin="student")
        population: list[Candidate] = []
        with metering(run.search_meter):
            try:
                self._build_demo_sets(run, student)
                seed_candidate = with_demo_set(seed_candidate, run, 0, origin="student")
                if self.guard_reference is None:
                    # Guards compare with what a user has for free: the student with its labeled demos. A
                    # student that brings its own demos is that program already; it is the reference as given.
                    own_demos = all(p.demos for _, p in predictors(student))
                    reference = Candidate.from_program(student, origin="student") if own_demos else seed_candidate
                    run.reference = reference.apply(student)
                    run.reference_candidate = reference
                state = self.new_state(run)
                initial = [seed_candidate] + [c for c in self.initial(run, state, seed_candidate) if c is not None]
                population = self.select(run, state, [], _unique(initial))
                for step in range(self.config.steps):
                    run.step = step + 1
                    children = [c for c in self.propose(run, state, population, step) if c is not None]
                    population = self.select(run, state, population, _unique(children))
            except SearchStopped:
                exhausted = True
                logger.warning(
                    "%s: search budget (%d calls) used up at step %d; continuing with the best so far",
                    self.method,
                    run.search_meter.max_calls,
                    run.step,
                )
        try:
            best = self._final_selection(run, seed_candidate)
        except SearchStopped:
            exhausted = True
            best = None
        if best is None:
            validated = run.store.best_validated()
            ranked = run.store.ranked()
            best = validated.candidate if validated else ranked[0].candidate if ranked else seed_candidate
            logger.warning(
                "%s: LM-call budget of %d used up; returning the best candidate so far", self.method, self.max_lm_calls
            )
        if run.regression is not None:
            best, out_of_budget = self._guarded_choice(run, student, best)
            exhausted = exhausted or out_of_budget
        return best, exhausted or run.total_meter.exhausted

    def _reference_candidate(self, run: SearchRun, student: dspy.Module) -> Candidate:
        """The guards' reference as prompts of the student (the student's own when the shapes differ)."""
        own = Candidate.from_program(student, origin="reference")
        if self.guard_reference is None:
            return run.reference_candidate or own
        reference = Candidate.from_program(self.guard_reference, origin="reference")
        return reference if set(reference.prompts) == set(own.prompts) else own

    def _guarded_choice(self, run: SearchRun, student: dspy.Module, best: Candidate) -> tuple[Candidate, bool]:
        """``best`` if it keeps every guard on the whole valset, else the reference's prompts.

        The check is paired, on every valset row both were scored on; rows already scored come from the
        evaluator's cache. A choice that cannot be checked (the budget ran out) is not returned either.

        Returns:
            The candidate to return, and whether the budget ran out during the check.
        """
        fallback = self._reference_candidate(run, student)
        if best.key == fallback.key:
            return best, False
        report = run.evaluate(best, run.valset, split="val")
        record = run.store.get(best.key)
        if not report.budget_exhausted and record.val_guarded and record.val_reliable:
            return best, False
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
                run.guard_fallback = "the final choice failed its check; the best fully checked candidate was returned"
                return runner_up, report.budget_exhausted
        if report.budget_exhausted:
            run.guard_fallback = "the budget ran out before the choice could be checked on the whole valset"
        elif not record.val_reliable:
            run.guard_fallback = "most of the choice's valset rows failed"
        else:
            run.guard_fallback = "the choice breaks a guard on the valset: " + ", ".join(
                f"{name} -{drop:.1f}" for name, drop in record.val_guard_breaks.items()
            )
        logger.warning("%s: returning the reference program's prompts: %s", self.method, run.guard_fallback)
        return fallback, report.budget_exhausted

    def _guard_report(self, run: SearchRun, best: Candidate, fallback: Candidate) -> dict[str, Any]:
        """Every criterion on the valset, reference against the returned program (see :class:`SearchResult`)."""
        from dspy_ext.evaluation import example_key

        assert run.regression is not None
        keys = [example_key(ex) for ex in run.valset]
        reference = {k: run.reference_rows[k] for k in keys if k in run.reference_rows}
        if best.key == fallback.key:
            compiled = reference
        else:
            scored = run.store.get(best.key).val_criteria if best.key in run.store else {}
            compiled = {k: scored[k] for k in keys if k in scored}
        return {
            "reference": "student" if self.guard_reference is None else "guard_reference",
            "tolerances": dict(self.guards),
            "stochastic": run.regression.stochastic,
            "repeats": run.repeats,
            "split": "val",
            "n": len(set(reference) & set(compiled)),
            "criteria": run.regression.report(reference, compiled),
            "rejected": dict(run.guard_rejections),
            "fallback": run.guard_fallback,
        }

    def _build_demo_sets(self, run: SearchRun, student: dspy.Module) -> None:
        names = run.predictor_names()
        labeled_only = Candidate(
            {n: PredictorPrompt(i) for n, i in Candidate.from_program(student).instructions.items()}
        )
        first = self._fitting_labeled_set(
            run, student, labeled_demo_set(names, run.trainset, self.config.max_labeled_demos, run.rng)
        )
        run.demo_sets = [first]
        teacher = Candidate(
            {n: PredictorPrompt(p.instruction, 0, first[n]) for n, p in labeled_only.prompts.items()}
        ).apply(student)
        if self.config.max_bootstrapped_demos > 0 and self.config.num_demo_sets > 1:
            # Bootstrapping stops at the first successes; a bounded pool keeps
            # a model that rarely succeeds from spending the search budget here.
            pool = run.rng.sample(run.trainset, min(len(run.trainset), 4 * self.config.max_bootstrapped_demos + 4))
            with dspy.context(lm=run.models.task_lm, adapter=run.models.task_adapter):
                more = build_demo_sets(
                    student,
                    pool,
                    self.metric,
                    num_sets=self.config.num_demo_sets,
                    max_bootstrapped_demos=self.config.max_bootstrapped_demos,
                    max_labeled_demos=self.config.max_labeled_demos,
                    rng=run.rng,
                    teacher=teacher,
                )
            run.demo_sets += [s for s in more[1:] if s not in run.demo_sets and self._fits(run, student, s)]
        used = {id(ex) for ex in run.trainset if any(ex.toDict() == d for demos in first.values() for d in demos)}
        pool = [ex for ex in run.trainset if id(ex) not in used]
        run.search_pool = pool or list(run.trainset)

    #: A demo set is dropped when more than this share of sampled training inputs overflow the context with it.
    OVERFLOW_TOLERANCE = 0.1

    def _fits(self, run: SearchRun, student: dspy.Module, demo_set: DemoSet) -> bool:
        """Whether ``demo_set`` leaves room in the context for typical training inputs (see :mod:`.context`)."""
        fit = demo_set_context_fit(
            student, demo_set, run.trainset, lm=run.models.task_lm, adapter=run.models.task_adapter
        )
        if fit.overflowing <= self.OVERFLOW_TOLERANCE * fit.checked:
            return True
        run.rejected["demo_set_overflow"] = run.rejected.get("demo_set_overflow", 0) + 1
        logger.warning(
            "%s: a demo set was set aside: %d of %d sampled prompts overflow (%s)",
            self.method,
            fit.overflowing,
            fit.checked,
            fit.message(),
        )
        return False

    def _fitting_labeled_set(self, run: SearchRun, student: dspy.Module, demo_set: DemoSet) -> DemoSet:
        """The labeled demo set, with demos dropped from the end until typical inputs fit the context."""
        while any(demo_set.values()) and not self._fits(run, student, demo_set):
            demo_set = {name: demos[:-1] for name, demos in demo_set.items()}
        return demo_set

    def _final_selection(self, run: SearchRun, seed_candidate: Candidate) -> Candidate | None:
        """The final selector's choice among the leading instruction sets (student's included) x demo sets."""
        contenders = final_contenders(run, seed_candidate, self.config.final_candidates + 1)
        return self.final_selector.select(run, seed_candidate, contenders)

    def _finish(self, run: SearchRun, student: dspy.Module, best: Candidate, exhausted: bool) -> dspy.Module:
        program = best.apply(student)
        record = run.store.get(best.key) if best.key in run.store else None
        baseline = [
            r
            for r in run.store.records()
            if r.val_score is not None
            and r.candidate.instructions == Candidate.from_program(student).instructions
            and r.candidate.demo_sets == dict.fromkeys(best.prompts, 0)
        ]
        usage = run.total_meter.snapshot()
        program.dspy_ext_result = SearchResult(
            method=self.method,
            best=best.to_dict(),
            val_score=record.val_score if record else None,
            baseline_val_score=baseline[0].val_score if baseline else None,
            lm_calls=usage.calls,
            tokens=usage.total_tokens,
            seconds=round(time.perf_counter() - run.started, 2),
            budget_exhausted=exhausted,
            n_candidates=len(run.store),
            rejected=dict(run.rejected),
            demo_sets=len(run.demo_sets),
            trials=run.trial_log.rows,
            guard_report=self._guard_report(run, best, self._reference_candidate(run, student))
            if run.regression is not None
            else None,
        )
        logger.info(
            "%s: best val %.1f (baseline %s) with %d calls",
            self.method,
            program.dspy_ext_result.val_score or float("nan"),
            program.dspy_ext_result.baseline_val_score,
            usage.calls,
        )
        return program

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


def _unique(candidates: list[Candidate]) -> list[Candidate]:
    seen: set[str] = set()
    out = []
    for c in candidates:
        if c.key not in seen:
            seen.add(c.key)
            out.append(c)
    return out


def format_pairs(examples: list[dspy.Example], limit: int = 400) -> str:
    """Input/output pairs as compact text for meta-prompts."""
    lines = []
    for ex in examples:
        inputs = "; ".join(f"{v}" for v in ex.inputs().values())
        outputs = "; ".join(f"{v}" for k, v in ex.labels().items() if k != "accepted")
        lines.append(f"Input: {inputs[:limit]} -> Output: {outputs[:limit]}")
    return "\n".join(lines)
