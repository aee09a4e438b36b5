"""One trial of a tuning study: plan -> optimizer -> compile -> devset scoring (with pruning) -> constraints.

:class:`TrialRunner` is the Optuna objective. For one ``optuna.Trial`` it

1. samples a :class:`~dspy_ext.tuning.space.TrialPlan` (optimizer, config, budget, knobs);
2. builds the optimizer through :func:`dspy_ext.registry.build_optimizer` and compiles the student;
3. scores the result on the devset in minibatches (:class:`DevsetScorer`), reporting each as an
   intermediate value so that the pruner can stop a hopeless trial (raised as ``optuna.TrialPruned``,
   recorded as PRUNED, never as a score);
4. in ``constraints`` mode, records how far each secondary criterion fell below the student's.

Everything a trial did is stored as user attributes: the optimizer, its config and plan, the
best instruction and demos of every predictor, its scores (per criterion), LM calls (compile
and evaluation apart), tokens, seconds, the worker that ran it and the file its program was
saved to (``<out dir>/trials/trial-NNNN.json``).
"""

from __future__ import annotations

import logging
import os
import socket
import statistics
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import dspy

from dspy_ext.evaluation import Evaluator
from dspy_ext.evaluation.criteria import CriteriaMetric
from dspy_ext.lm.metering import CallMeter, CostCapReached, metering
from dspy_ext.prompt_state import compile_record, copy_record, demo_to_dict, predictors
from dspy_ext.tuning.space import TrialPlan

if TYPE_CHECKING:
    from dspy_ext.tuning.study import OptunaTuner, StudyIdentity

logger = logging.getLogger(__name__)


def worker_id() -> str:
    """``host:pid``: which process ran a trial."""
    return f"{socket.gethostname()}:{os.getpid()}"


class TrialRunner:
    """The Optuna objective of a study: runs one trial per call (see the module docstring).

    Args:
        tuner: The tuner (metric, space, seed, threads, prompt model, constraint tolerance).
        identity: The study's identity (objective, criteria, primary criterion, baseline).
        student: The program every trial compiles (never modified).
        trainset: What the optimizers train on.
        devset: What every trial is scored on.
        dev_order: The order of devset rows, minibatch by minibatch.
        worker: Stored with every trial this runner runs.

    Attributes:
        programs: The compiled program of every trial this runner finished, by trial number.
        lm_calls: LM calls of this runner's trials.
    """

    def __init__(
        self,
        tuner: OptunaTuner,
        identity: StudyIdentity,
        student: dspy.Module,
        trainset: list[dspy.Example],
        devset: list[dspy.Example],
        *,
        dev_order: Sequence[int],
        worker: str,
    ) -> None:
        self.tuner = tuner
        self.identity = identity
        self.student = student
        self.trainset = trainset
        self.devset = devset
        self.worker = worker
        self.scorer = DevsetScorer(tuner, identity, devset, dev_order)
        self.programs: dict[int, dspy.Module] = {}
        self.lm_calls = 0

    def __call__(self, trial: Any) -> float | list[float]:
        """Run ``trial``; its value (a list in ``pareto`` mode).

        Raises:
            optuna.TrialPruned: The pruner stopped the trial after a minibatch.
        """
        plan = self.tuner.space.suggest(trial)
        trial.set_user_attr("optimizer", plan.optimizer)
        trial.set_user_attr("config", plan.config)
        trial.set_user_attr("plan", {k: v for k, v in plan.to_dict().items() if k != "config"})
        trial.set_user_attr("worker", self.worker)
        meter = CallMeter()
        started = time.perf_counter()
        usage_at_compile = None
        try:
            with self._context(plan), metering(meter):
                compiled = in_student_shape(self.student, self._compile(plan))
                usage_at_compile = meter.snapshot()
                self._record_program(trial, compiled)
                values = self.scorer.score(trial, compiled)
        finally:
            usage = meter.snapshot()
            self.lm_calls += usage.calls
            compile_calls = (usage_at_compile or usage).calls
            trial.set_user_attr("lm_calls", usage.calls)
            trial.set_user_attr("compile_lm_calls", compile_calls)
            trial.set_user_attr("eval_lm_calls", usage.calls - compile_calls)
            trial.set_user_attr("tokens", usage.total_tokens)
            record_spend(trial, meter)
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
        self.programs[trial.number] = compiled
        return values

    def _context(self, plan: TrialPlan) -> Any:
        """The task LM (at the plan's temperature) and adapter of one trial."""
        from dspy_ext.adapters import make_adapter

        lm = dspy.settings.lm
        if plan.task_temperature is not None:
            lm = lm.copy(temperature=plan.task_temperature)
        adapter = make_adapter(plan.adapter) if plan.adapter else dspy.settings.adapter
        return dspy.context(lm=lm, adapter=adapter)

    def _compile(self, plan: TrialPlan) -> dspy.Module:
        from dspy_ext.registry import build_optimizer, get_spec

        tuner = self.tuner
        extra: dict[str, Any] = {}
        if tuner.feedback and get_spec(plan.optimizer).takes_feedback:
            extra["feedback"] = tuner.feedback
        if tuner.guards:
            extra["guards"] = tuner.guards
        if plan.final_selection == "tpe":
            from dspy_ext.search.final_selection import CandidateTPE

            extra["final_selector"] = CandidateTPE(plan.final_trials, seed=tuner.seed)
        handle = build_optimizer(
            plan.optimizer,
            CriteriaMetric(tuner.metric, self.identity.primary),
            config=plan.config,
            budget=plan.budget,
            seed=tuner.seed,
            num_threads=tuner.num_threads,
            n_train=len(self.trainset),
            n_val=len(self.devset),
            prompt_model=tuner.prompt_model,
            **extra,
        )
        return handle.compile(self.student, trainset=self.trainset, valset=self.devset)

    def _record_program(self, trial: Any, compiled: dspy.Module) -> None:
        instructions, demos = {}, {}
        for name, predictor in predictors(compiled):
            instructions[name] = predictor.signature.instructions
            demos[name] = [demo_to_dict(d) for d in predictor.demos]
        trial.set_user_attr("instructions", instructions)
        trial.set_user_attr("demos", demos)
        trial.set_user_attr("n_demos", {k: len(v) for k, v in demos.items()})
        record = compile_record(compiled)
        if record is not None and record.search is not None:
            trial.set_user_attr("search_val_score", record.search.val_score)
        out_dir = self.tuner.out_dir
        if out_dir is not None:
            path = out_dir / "trials" / f"trial-{trial.number:04d}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            compiled.save(str(path))
            trial.set_user_attr("program_file", str(path))


def record_spend(trial: Any, meter: CallMeter) -> None:
    """Store a trial's tokens in and out, its USD (``None``: a price is unknown) and its calls per role."""
    usage = meter.snapshot()
    trial.set_user_attr("input_tokens", usage.input_tokens)
    trial.set_user_attr("output_tokens", usage.output_tokens)
    trial.set_user_attr("usd", usage.usd)
    trial.set_user_attr("cost", round(usage.cost, 6))  # what the cost cap counted (unknown prices as 0)
    trial.set_user_attr("calls_by_role", {role: u.calls for role, u in meter.by_role().items()})


def in_student_shape(student: dspy.Module, compiled: dspy.Module) -> dspy.Module:
    """A copy of ``student`` carrying ``compiled``'s prompts, predictor by predictor.

    Some optimizers hang extra programs on their result (BootstrapFewShotWithRandomSearch's
    ``candidate_programs``); every trial's program is saved and compared in the student's own shape.
    """
    program = student.deepcopy()
    found = dict(predictors(compiled))
    for name, predictor in predictors(program):
        source = found.get(name)
        if source is not None:
            predictor.signature = source.signature
            predictor.demos = list(source.demos)
    copy_record(compiled, program)
    return program


class DevsetScorer:
    """Scores a trial's program on the devset, minibatch by minibatch, and lets the pruner stop it.

    Each minibatch (``space.eval_minibatch`` rows in ``dev_order``) is one intermediate value: the
    running mean (median pruner), or the per-row scores with the row's index as the step (Wilcoxon
    pruner, which compares trials row by row). ``pareto`` studies are never pruned (Optuna cannot).

    Args:
        tuner: The tuner (metric, space, threads, constraint tolerance).
        identity: The study's objective, criteria and baseline.
        devset: The devset.
        dev_order: The row order.
    """

    def __init__(
        self, tuner: OptunaTuner, identity: StudyIdentity, devset: list[dspy.Example], dev_order: Sequence[int]
    ) -> None:
        self.tuner = tuner
        self.identity = identity
        self.devset = devset
        self.dev_order = list(dev_order)

    def score(self, trial: Any, program: dspy.Module) -> float | list[float]:
        """The trial's value on the whole devset; stores ``scores`` (and ``constraints``) on the trial.

        Raises:
            optuna.TrialPruned: After a minibatch, when the pruner says so.
        """
        identity = self.identity
        cm = CriteriaMetric(self.tuner.metric, identity.primary)
        scores, errors = self._minibatches(trial, program, cm)
        means = cm.means(self.devset)
        primary_value = means.get(identity.primary, mean100(scores.values()))
        trial.set_user_attr(
            "scores",
            {
                "dev": primary_value,
                "dev_rows": len(self.devset),
                "dev_n": len(self.devset),
                "criteria": means,
                "errors": errors,
            },
        )
        if identity.objective == "pareto":
            return [means.get(c, 0.0) for c in identity.criteria]
        if identity.objective == "constraints":
            violations = constraint_violations(
                means,
                identity.baseline["criteria"],
                identity.criteria,
                identity.primary,
                self.tuner.constraint_tolerance,
            )
            if has_set_constraint():
                for criterion, violation in violations.items():
                    trial.set_constraint(f"{criterion}>=baseline", violation)
            trial.set_user_attr("constraints", violations)
            trial.set_user_attr("feasible", all(v <= 0 for v in violations.values()))
        return primary_value

    def _minibatches(self, trial: Any, program: dspy.Module, cm: CriteriaMetric) -> tuple[dict[int, float], int]:
        """Score every minibatch; per-row scores by devset index, and the error count."""
        import optuna

        space = self.tuner.space
        evaluator = Evaluator(cm, num_threads=self.tuner.num_threads)
        pruning = self.identity.objective != "pareto" and space.pruner.prunes
        size = space.eval_minibatch
        scores: dict[int, float] = {}
        errors = 0
        scored: list[dspy.Example] = []
        for step, start in enumerate(range(0, len(self.dev_order), size)):
            chunk = self.dev_order[start : start + size]
            examples = [self.devset[i] for i in chunk]
            report = evaluator.evaluate(program, examples, desc=f"trial {trial.number} dev")
            if report.budget_exhausted:
                # The study's cost cap stopped the scoring: a score on part of the devset is no score.
                trial.set_user_attr("stopped", "cost cap reached while scoring the devset")
                raise CostCapReached(self.tuner.max_cost or 0.0)
            errors += sum(report.errors.values())
            for row in report.scored:
                scores[chunk[row.index]] = row.score
            scored += examples
            if not pruning or start + size >= len(self.dev_order):
                continue
            if space.pruner.per_row:
                for i in chunk:
                    if i in scores:
                        trial.report(100.0 * scores[i], step=i)
            else:
                trial.report(mean100(scores.values()), step=step)
            if trial.should_prune():
                partial = mean100(scores.values())
                trial.set_user_attr(
                    "scores",
                    {
                        "dev": partial,
                        "dev_rows": len(scored),
                        "dev_n": len(self.devset),
                        "criteria": cm.means(scored),
                        "pruned_at_step": step,
                    },
                )
                raise optuna.TrialPruned(f"dev score {partial:.1f} after {len(scored)} rows")
        return scores, errors


def constraint_violations(
    means: dict[str, float], baseline: dict[str, float], criteria: Sequence[str], primary: str, tolerance: float
) -> dict[str, float]:
    """How far each secondary criterion is below the baseline minus ``tolerance`` (``<= 0``: satisfied).

    Example:
        >>> constraint_violations({"acc": 80.0, "brevity": 20.0}, {"acc": 0.0, "brevity": 100.0},
        ...                       ["acc", "brevity"], "acc", 0.0)
        {'brevity': 80.0}
    """
    return {c: round(baseline.get(c, 0.0) - tolerance - means.get(c, 0.0), 6) for c in criteria if c != primary}


def mean100(values: Any) -> float:
    """The mean of 0-1 scores on a 0-100 scale (0 for none)."""
    values = list(values)
    return round(100.0 * statistics.fmean(values), 4) if values else 0.0


def has_set_constraint() -> bool:
    """Whether this Optuna has ``Trial.set_constraint`` (Optuna 5)."""
    import optuna

    return hasattr(optuna.trial.Trial, "set_constraint")


def constraints_from_attrs(trial: Any) -> list[float]:
    """TPE's ``constraints_func`` for Optuna < 5: the violations stored on the trial."""
    return list((trial.user_attrs.get("constraints") or {}).values()) or [0.0]
