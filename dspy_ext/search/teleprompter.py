"""The one compile of dspy-ext's own optimizers: a strategy searches, everything around it is here.

:class:`SearchTeleprompter` validates the compile's inputs, splits off the valset (40% of the
trainset, seeded, when none is given), resolves the task and prompt models, and makes the
:class:`~dspy_ext.search.run.SearchRun` (RNG, meters, evaluator, trial log, proposal and
regression guards). It then calls the strategy's :meth:`~SearchTeleprompter.search`, under the
compile's hard cap of ``max_lm_calls``, and turns the candidate it returns into the compiled
program, which carries the result (:func:`dspy_ext.prompt_state.compile_record`).

A strategy defines :attr:`~SearchTeleprompter.method`, its config model, its
:attr:`~SearchTeleprompter.capabilities`, :meth:`~SearchTeleprompter.search` and
:meth:`~SearchTeleprompter.plan`; :class:`~dspy_ext.search.InstructionSearch` (APE, OPRO,
EvoPrompt, ProTeGi) and :class:`~dspy_ext.optimizers.DemoSearch` are the two.
"""

from __future__ import annotations

import abc
import logging
import random
import time
from typing import Any, ClassVar

import dspy
from dspy.teleprompt import Teleprompter

from dspy_ext.data import default_valset
from dspy_ext.lm.metering import metering
from dspy_ext.meta_prompts import DEFAULT_META_PROMPTS, FEEDBACK_ROLES, meta_prompt_labels, meta_prompt_texts
from dspy_ext.prompt_state import attach_record, predictors
from dspy_ext.search.autolog import follow_mlflow_autolog
from dspy_ext.search.candidate import Candidate
from dspy_ext.search.config import OptimizerConfig
from dspy_ext.search.options import Capabilities, CompileOptions, GuardMode
from dspy_ext.search.plan import CallPlan, MetaPromptCalls, PlanInputs
from dspy_ext.search.proposal_filter import ProposalFilter
from dspy_ext.search.result import SearchResult
from dspy_ext.search.run import Models, SearchRun
from dspy_ext.search.typical import TypicalAsk, shared_inputs

__all__ = ["SearchTeleprompter"]

logger = logging.getLogger(__name__)

#: Example fields that are never task content (a review's verdict): not guarded against copying.
NOT_CONTENT = frozenset({"accepted"})


class SearchTeleprompter(Teleprompter, abc.ABC):
    """Base class of dspy-ext's optimizers: one compile, a pluggable :meth:`search`.

    Args:
        metric: ``metric(example, prediction, trace=None)``.
        options: The shared settings as one :class:`CompileOptions`; or give them as keywords
            (``max_lm_calls=``, ``seed=``, ``num_threads=``, ``prompt_model=``, ``task_model=``,
            ``repeats=``, ``eval_temperature=``, ``guards=``, ``feedback=``, ``log_dir=``,
            ``progress=``, ``final_selector=``, ...), not both.
        meta_prompts: Overrides of the meta-prompt Signatures, by role.
        **settings: The method's own settings (see its config model) and the shared ones.

    Raises:
        ValueError: A bad or unknown setting (the message names it and lists the valid ones), or a
            shared setting the method cannot use (e.g. a final selector where the choice is not pluggable).
    """

    #: The optimizer's name (logged on every trial, and its registry name).
    method: ClassVar[str] = "search"
    #: The method's settings: defaults, bounds and tuning ranges.
    config_model: ClassVar[type[OptimizerConfig]] = OptimizerConfig
    #: What it does with the shared settings (the registry builds and checks by these).
    capabilities: ClassVar[Capabilities] = Capabilities(enforces_budget=True)
    #: The result it attaches to the compiled program.
    result_class: ClassVar[type[SearchResult]] = SearchResult
    #: Roles of :data:`DEFAULT_META_PROMPTS` this method uses.
    roles: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        metric: Any,
        *,
        options: CompileOptions | None = None,
        meta_prompts: dict[str, type[dspy.Signature]] | None = None,
        **settings: Any,
    ) -> None:
        super().__init__()
        shared, own = CompileOptions.split(settings)
        if options is not None and shared:
            raise ValueError(f"give the shared settings in options= or as keywords, not both: {sorted(shared)}")
        self.options = options if options is not None else CompileOptions(**shared)
        unknown = set(meta_prompts or {}) - set(DEFAULT_META_PROMPTS)
        if unknown:
            raise ValueError(f"unknown meta-prompt roles {sorted(unknown)}; known: {sorted(DEFAULT_META_PROMPTS)}")
        self.config = self.config_model.resolve(own, name=self.method)
        self.metric = metric
        self.meta_prompts = {**DEFAULT_META_PROMPTS, **(meta_prompts or {})}
        self._check_options(self.options)

    def _check_options(self, options: CompileOptions) -> None:
        """Refuse shared settings this method cannot use (see :attr:`capabilities`)."""
        caps = self.capabilities
        if options.final_selector is not None and not caps.final_selector:
            raise ValueError(f"{self.method} has no pluggable final selection (final_selector=)")
        if (options.guards or options.guard_reference is not None) and caps.guards is not GuardMode.IN_SEARCH:
            raise ValueError(
                f"{self.method} does not apply guards itself; build it with "
                "dspy_ext.registry.build_optimizer(..., guards=...) to check its result with an acceptance gate"
            )

    # ---- the shared settings, read ---------------------------------------------------------
    @property
    def max_lm_calls(self) -> int:
        """The compile's hard cap on LM calls (``options.max_lm_calls``)."""
        return self.options.max_lm_calls

    @property
    def seed(self) -> int:
        """The compile's seed (``options.seed``)."""
        return self.options.seed

    # ---- what a strategy defines -------------------------------------------------------------
    @abc.abstractmethod
    def search(self, run: SearchRun, student: dspy.Module) -> Candidate:
        """Search, and return the prompts the compiled program gets.

        Record a budget that ran out with ``run.mark_exhausted()``, and fields of the result
        beyond the shared ones with ``run.report(...)`` (or override :meth:`result_fields`).
        """

    @abc.abstractmethod
    def plan(self, inputs: PlanInputs) -> CallPlan:
        """The calls a compile expects to make under :attr:`max_lm_calls`, by role (see :class:`CallPlan`)."""

    def typical_inputs(self, planned: MetaPromptCalls, ask: TypicalAsk) -> dict[str, str]:
        """The input fields of a typical ``planned.role`` meta-prompt of this compile, as :meth:`search` fills
        them (what ``--dry-run`` measures). A method with its own meta-prompts fills those and defers here.

        Raises:
            ValueError: A role this optimizer does not send.
        """
        return shared_inputs(planned.role, ask)

    def search_cap(self) -> int | None:
        """LM calls of the search phase (the rest is kept for the final selection); ``None``: all of them."""
        return None

    def minibatch_size(self) -> int:
        """Examples per search minibatch (``run.minibatch()``)."""
        return 10

    def active_roles(self) -> tuple[str, ...]:
        """The meta-prompt roles of this compile: :attr:`roles`, plus their feedback variants with feedback."""
        if not self.options.feedback:
            return self.roles
        return self.roles + tuple(FEEDBACK_ROLES[r] for r in self.roles if r in FEEDBACK_ROLES)

    def feedback_role(self, role: str) -> str:
        """``role``'s variant that shows a person's critiques when this compile has feedback, else ``role``."""
        return FEEDBACK_ROLES.get(role, role) if self.options.feedback else role

    # ---- the compile ---------------------------------------------------------------------------
    def compile(
        self,
        student: dspy.Module,
        *,
        trainset: list[dspy.Example],
        valset: list[dspy.Example] | None = None,
        **kwargs: Any,
    ) -> dspy.Module:
        """Optimize the prompts of every predictor of ``student``.

        Args:
            student: Any DSPy program; it is not modified.
            trainset: Training examples (proposals, demos, search minibatches).
            valset: Examples for the final choice; default: 40% of ``trainset``, seeded.

        Returns:
            A new program carrying the best prompts; ``compile_record(program).search`` holds the
            method's :class:`SearchResult`.

        Raises:
            ValueError: An empty trainset, no task LM, a teacher, or a program without predictors.
        """
        if kwargs.get("teacher") is not None:
            raise ValueError(f"{type(self).__name__} does not use a teacher program")
        if not trainset:
            raise ValueError("trainset is empty")
        if not predictors(student):
            raise ValueError("the student has no dspy.Predict modules to optimize")
        run = self._start(student, trainset, valset)
        try:
            with metering(run.total_meter):
                best = self.search(run, student)
        finally:
            run.close()
        return self._finish(run, student, best)

    def _start(
        self, student: dspy.Module, trainset: list[dspy.Example], valset: list[dspy.Example] | None
    ) -> SearchRun:
        options = self.options
        rng = random.Random(options.seed)
        trainset, valset = default_valset(trainset, valset, rng)
        models = Models.resolve(
            options.task_model, options.prompt_model, method=self.method, max_lm_calls=options.max_lm_calls
        )
        return SearchRun(
            options,
            method=self.method,
            student=student,
            trainset=trainset,
            valset=valset,
            metric=self.metric,
            models=models,
            seed=rng.randrange(2**31),
            proposal_filter=self._proposal_filter(trainset),
            meta_prompts=self.meta_prompts,
            minibatch_size=self.minibatch_size(),
            search_cap=self.search_cap(),
        )

    def _proposal_filter(self, trainset: list[dspy.Example]) -> ProposalFilter:
        signatures = {r: self.meta_prompts[r] for r in self.active_roles()}
        # Inputs and labels alike: neither may be copied into the instruction (AdalFlow#434); nor may the
        # inputs and outputs of critiques shown in a meta-prompt.
        copied = [str(v) for ex in trainset for k, v in ex.items() if k not in NOT_CONTENT]
        if self.options.feedback:
            critiques = self.options.feedback.critiques
            copied += [str(v) for c in critiques for v in (*c.inputs.values(), *c.output.values())]
        return ProposalFilter(
            meta_texts=meta_prompt_texts(signatures), meta_labels=meta_prompt_labels(signatures), train_inputs=copied
        )

    def _finish(self, run: SearchRun, student: dspy.Module, best: Candidate) -> dspy.Module:
        program = best.apply(student)
        usage = run.total_meter.snapshot()
        fields: dict[str, Any] = {
            "method": self.method,
            "best": best.to_dict(),
            "val_score": None,
            "baseline_val_score": None,
            "lm_calls": usage.calls,
            "tokens": usage.total_tokens,
            "seconds": round(time.perf_counter() - run.started, 2),
            "budget_exhausted": run.exhausted,
            "n_candidates": len(run.store),
            "rejected": run.rejected,
            "demo_sets": len(run.demo_sets),
            "trials": run.trial_log.rows,
            **self.result_fields(run, student, best),
        }
        result = self.result_class(**fields)
        attach_record(program, search=result)
        self.log_result(result)
        return program

    def result_fields(self, run: SearchRun, student: dspy.Module, best: Candidate) -> dict[str, Any]:
        """The result's fields beyond the shared ones (default: what the search reported with ``run.report``)."""
        return run.outcome

    def log_result(self, result: SearchResult) -> None:
        """Log what the compile found (one line)."""
        logger.info(
            "%s: best val %.1f (baseline %s) with %d calls",
            self.method,
            result.val_score or float("nan"),
            result.baseline_val_score,
            result.lm_calls,
        )


# A user's mlflow.dspy.autolog() that ran before this import covers our optimizers too (see search.autolog).
follow_mlflow_autolog(SearchTeleprompter)
