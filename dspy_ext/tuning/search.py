"""``OptunaSearch``: tune which optimizer to run and its hyperparameters, as an Optuna study.

Each trial samples an optimizer and its knobs from a :class:`SearchSpace`,
compiles the student with it (through :func:`dspy_ext.registry.build_optimizer`),
then scores the result on the devset in minibatches, reporting each as an
intermediate value so Optuna's pruner can stop a hopeless trial early (a
pruned trial is recorded as PRUNED, never as a score). The best trial's program
is returned.

The study lives in Optuna storage (default: ``runs/tune/optuna.db``), so

* running again with the same ``study_name`` continues it (``n_trials`` is the
  study's target: trials already finished count);
* any number of processes or machines can work on one study at the same time
  (Optuna's own distributed mode: each runs :meth:`TuneSession.optimize` on the
  same storage URL);
* a process killed mid-trial loses only that trial: heartbeats mark it stale
  and it is re-queued with the same parameters (see :mod:`dspy_ext.tuning.storage`).

Every trial stores, as user attributes: the optimizer and its config, the best
instruction and demos of every predictor, its scores (per criterion), LM calls,
tokens, seconds, the worker that ran it and the file its program was saved to
(``<study dir>/trials/trial-NNNN.json``); the best program is also written to
``<study dir>/best_program.json``.

Objectives
----------
A metric may return several named criteria (see :mod:`dspy_ext.tuning.criteria`):

* ``single``: maximise the primary criterion (the first, or ``primary=``);
* ``pareto``: maximise every criterion jointly (Optuna multi-objective); the
  Pareto front is reported and the returned program is the front's best on the
  primary criterion. Optuna cannot prune multi-objective trials, so none are;
* ``constraints``: maximise the primary criterion subject to *no other
  criterion falling below the student's own value on the devset* (minus
  ``constraint_tolerance``). A candidate that improves one criterion while
  breaking another is infeasible and can never be returned;
* ``auto`` (default): ``single`` for one criterion, ``constraints`` for several.

Example:
    >>> search = OptunaSearch(exact_match, space={"optimizers": ["ape", "bfsrs"], "budget": 60},
    ...                       n_trials=12, study_name="sentiment")                       # doctest: +SKIP
    >>> program = search.compile(student, trainset=train, valset=dev)                    # doctest: +SKIP
    >>> program.dspy_ext_tune["best_value"], program.dspy_ext_tune["n_trials"]            # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import socket
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dspy
from dspy.teleprompt import Teleprompter

from dspy_ext.data import dataset_fingerprint
from dspy_ext.evaluation import Evaluator
from dspy_ext.lm.metering import CallMeter, metering
from dspy_ext.prompt_state import demo_to_dict, predictors
from dspy_ext.tuning.criteria import CriteriaMetric
from dspy_ext.tuning.space import OBJECTIVES, SearchSpace, load_space
from dspy_ext.tuning.storage import MEMORY, display_url, make_storage, normalize_url, study_dir

logger = logging.getLogger(__name__)

STUDY_ATTR = "dspy_ext_tune"


def _optuna():
    """Optuna, imported lazily (DSPy rule 8), with its chatty logging and experimental warnings quieted."""
    import optuna

    if logger.getEffectiveLevel() > logging.INFO:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class OptunaSearch(Teleprompter):
    """Tune the optimizer and its hyperparameters with Optuna (see the module docstring).

    Args:
        metric: ``metric(example, prediction, trace=None)``: one value, or several named criteria.
        space: A :class:`SearchSpace`, its dict form, a YAML/JSON file or ``None`` (ape, opro, bfsrs with
            their default ranges).
        n_trials: Target number of finished (complete or pruned) trials in the study, resumed ones included.
        storage: A database URL, a ``.db`` path, ``"memory"``, or ``None`` for ``runs/tune/optuna.db``.
        study_name: The study; the same name continues it.
        seed: Seeds the optimizers, the sampler (offset per worker) and the devset order.
        num_threads: Evaluation threads.
        objective: ``auto``, ``single``, ``pareto`` or ``constraints`` (default: the space's, else ``auto``).
        primary: The primary criterion (default: the metric's first).
        constraint_tolerance: How far (0-100 scale) a criterion may fall below the baseline in ``constraints`` mode.
        prompt_model: LM that writes instructions, for the optimizers that have one.
        out_dir: Where trial programs, the best program and reports go (default: next to the study).
        heartbeat_interval: Seconds between heartbeats (``None``: off).
        grace_period: Seconds without a heartbeat before a trial counts as dead (default ``2 x interval``).
        max_retry: Re-queues of a dead trial.
        timeout: Stop starting trials after this many seconds (per process).
        enqueue: Parameter sets to run first when the study is new, e.g. ``[{"optimizer": "bfsrs"}]``.
        worker_index: Offsets the sampler's seed so that workers do not draw the same parameters.
    """

    def __init__(
        self,
        metric: Callable[..., Any],
        *,
        space: SearchSpace | dict[str, Any] | str | Path | None = None,
        n_trials: int = 12,
        storage: str | None = None,
        study_name: str = "dspy-ext-tune",
        seed: int = 0,
        num_threads: int = 4,
        objective: str | None = None,
        primary: str | None = None,
        constraint_tolerance: float = 0.0,
        prompt_model: dspy.BaseLM | None = None,
        out_dir: str | Path | None = None,
        heartbeat_interval: int | None = 10,
        grace_period: int | None = None,
        max_retry: int | None = 2,
        timeout: float | None = None,
        enqueue: Sequence[dict[str, Any]] | None = None,
        worker_index: int = 0,
    ) -> None:
        super().__init__()
        if n_trials < 1:
            raise ValueError("n_trials must be >= 1")
        self.space = load_space(space)
        objective = objective or self.space.objective or "auto"
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        if constraint_tolerance < 0:
            raise ValueError("constraint_tolerance must be >= 0")
        self.metric = metric
        self.n_trials = n_trials
        self.storage_url = normalize_url(storage)
        self.study_name = study_name
        self.seed = seed
        self.num_threads = num_threads
        self.objective = objective
        self.primary = primary
        self.constraint_tolerance = constraint_tolerance
        self.prompt_model = prompt_model
        self.out_dir = Path(out_dir).resolve() if out_dir else study_dir(self.storage_url, study_name)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.max_retry = max_retry
        self.timeout = timeout
        self.enqueue = list(enqueue or [])
        self.worker_index = worker_index

    def compile(self, student: dspy.Module, *, trainset: list[dspy.Example], valset: list[dspy.Example] | None = None,
                **kwargs: Any) -> dspy.Module:
        """Run (or continue) the study and return the best trial's program.

        Args:
            student: The program to optimize (not modified).
            trainset: Examples the optimizers train on.
            valset: The devset every trial is scored on (default: 40% of ``trainset``, seeded).

        Returns:
            The best trial's program; ``program.dspy_ext_tune`` holds :meth:`TuneSession.summary`.
        """
        session = self.open(student, trainset=trainset, valset=valset)
        session.optimize()
        session.save_best()
        program = session.best_program()
        program.dspy_ext_tune = session.summary()
        return program

    def open(self, student: dspy.Module, *, trainset: list[dspy.Example],
             valset: list[dspy.Example] | None = None) -> TuneSession:
        """Create or load the study (scoring the student on the devset once, for a new study)."""
        if not trainset:
            raise ValueError("trainset is empty")
        trainset = list(trainset)
        if not valset:
            shuffled = list(trainset)
            random.Random(self.seed).shuffle(shuffled)
            cut = max(1, int(len(shuffled) * 0.4))
            valset, trainset = shuffled[:cut], shuffled[cut:] or shuffled[:cut]
        if dspy.settings.lm is None:
            raise ValueError("no LM: dspy.configure(lm=...) or use dspy.context(lm=...)")
        return TuneSession(self, student, trainset, list(valset))


class TuneSession:
    """One process's handle on a study: runs trials and reads results. Made by :meth:`OptunaSearch.open`."""

    def __init__(self, search: OptunaSearch, student: dspy.Module, trainset: list[dspy.Example],
                 devset: list[dspy.Example]) -> None:
        optuna = _optuna()
        self.search = search
        self.student = student
        self.trainset = trainset
        self.devset = devset
        self.space = search.space
        self.storage_url = search.storage_url
        self.out_dir = search.out_dir
        self.worker = worker_id()
        self.run_lm_calls = 0
        self._programs: dict[int, dspy.Module] = {}
        self.storage = make_storage(self.storage_url, heartbeat_interval=search.heartbeat_interval,
                                    grace_period=search.grace_period, max_retry=search.max_retry)
        data_hash = dataset_fingerprint(trainset + devset)
        existing = self.storage_url != MEMORY and search.study_name in optuna.study.get_all_study_names(self.storage)
        info = None
        if existing:
            study = optuna.load_study(study_name=search.study_name, storage=self.storage)
            info = study.user_attrs.get(STUDY_ATTR)
        if info is None:
            info = self._new_study_info(data_hash)
        else:
            self._check_compatible(info, data_hash)
        self.info = info
        self.criteria: list[str] = info["criteria"]
        self.primary: str = info["primary"]
        self.objective: str = info["objective"]
        self.baseline: dict[str, Any] = info["baseline"]
        directions = ["maximize"] * (len(self.criteria) if self.objective == "pareto" else 1)
        # Optuna < 5 has no Trial.set_constraint: constraints reach TPE through constraints_func.
        legacy = self.objective == "constraints" and not _has_set_constraint()
        sampler = self.space.make_sampler(search.seed + 1000 * search.worker_index,
                                          constraints_func=_constraints_from_attrs if legacy else None)
        self.study = optuna.create_study(study_name=search.study_name, storage=self.storage, directions=directions,
                                         sampler=sampler, pruner=self.space.make_pruner(), load_if_exists=True)
        if STUDY_ATTR not in self.study.user_attrs:
            self.study.set_user_attr(STUDY_ATTR, info)
            for params in search.enqueue:
                self.study.enqueue_trial(params, skip_if_exists=True)
        order = list(range(len(devset)))
        random.Random(search.seed).shuffle(order)
        self.dev_order = order

    # ---- the study's identity ---------------------------------------------------------------------
    def _new_study_info(self, data_hash: str) -> dict[str, Any]:
        """Score the student on the devset (the baseline) and fix the criteria and objective."""
        cm = CriteriaMetric(self.search.metric, self.search.primary)
        meter = CallMeter()
        with metering(meter), contextlib.redirect_stdout(sys.stderr):
            report = Evaluator(cm, num_threads=self.search.num_threads).evaluate(self.student, self.devset,
                                                                               desc="baseline")
        self.run_lm_calls += meter.calls
        criteria = list(cm.criteria) or ["score"]
        primary = cm.primary or criteria[0]
        objective = self.search.objective
        if objective == "auto":
            objective = "single" if len(criteria) == 1 else "constraints"
        if objective in ("pareto", "constraints") and len(criteria) < 2:
            raise ValueError(f"objective {objective!r} needs a metric returning several criteria; "
                             f"this one returns only {criteria}")
        means = cm.means(self.devset)
        return {
            "version": 1,
            "space": self.space.to_dict(),
            "data_hash": data_hash,
            "n_train": len(self.trainset),
            "n_dev": len(self.devset),
            "objective": objective,
            "criteria": criteria,
            "primary": primary,
            "constraint_tolerance": self.search.constraint_tolerance,
            "seed": self.search.seed,
            "baseline": {"criteria": means, "score": round(report.score, 4), "lm_calls": meter.calls,
                         "errors": {k: v for k, v in report.errors.items() if v}},
            "out_dir": str(self.out_dir) if self.out_dir else None,
        }

    def _check_compatible(self, info: dict[str, Any], data_hash: str) -> None:
        name = self.search.study_name
        hint = "; use another study name (--study) for a new study"
        if json.dumps(info.get("space"), sort_keys=True, default=str) != self.space.fingerprint():
            raise ValueError(f"study {name!r} was created with another search space{hint}")
        if info.get("data_hash") != data_hash:
            raise ValueError(f"study {name!r} was created on other train/dev data (a different task, split, "
                             f"sizes or seed){hint}")
        wanted = self.search.objective
        if wanted != "auto" and wanted != info.get("objective"):
            raise ValueError(f"study {name!r} uses objective {info.get('objective')!r}, not {wanted!r}{hint}")

    # ---- running trials -----------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Trials of the study by state (``all`` = every trial, resumed and retried ones included)."""
        optuna = _optuna()
        trials = self.study.get_trials(deepcopy=False)
        by_state = {s.name.lower(): 0 for s in optuna.trial.TrialState}
        for t in trials:
            by_state[t.state.name.lower()] += 1
        return {"all": len(trials), **by_state, "finished": by_state["complete"] + by_state["pruned"]}

    def optimize(self, n_trials: int | None = None, *, callbacks: Sequence[Callable[..., None]] = (),
                 max_trials: int | None = None) -> int:
        """Run trials in this process until the study has ``n_trials`` finished trials (default: the search's).

        Args:
            n_trials: The study's target of finished trials.
            callbacks: Optuna callbacks ``(study, frozen_trial)`` run after each of this process's trials.
            max_trials: At most this many trials in this process (for splitting work between workers).

        Returns:
            The number of trials this call ran.
        """
        optuna = _optuna()
        target = n_trials or self.search.n_trials
        remaining = target - self.counts()["finished"]
        if max_trials is not None:
            remaining = min(remaining, max_trials)
        if remaining <= 0:
            return 0
        before = len(self.study.get_trials(deepcopy=False))
        from optuna.study import MaxTrialsCallback
        from optuna.trial import TrialState

        stop = MaxTrialsCallback(target, states=(TrialState.COMPLETE, TrialState.PRUNED))
        self.study.optimize(self._objective, n_trials=remaining, timeout=self.search.timeout,
                            catch=(Exception,), callbacks=[stop, *callbacks], gc_after_trial=False)
        return len(self.study.get_trials(deepcopy=False)) - before

    def _objective(self, trial: Any) -> Any:
        optuna = _optuna()
        from dspy_ext.adapters import make_adapter
        from dspy_ext.registry import build_optimizer
        from dspy_ext.tuning.selector import TPEFinalSelector

        plan = self.space.suggest(trial)
        trial.set_user_attr("optimizer", plan.optimizer)
        trial.set_user_attr("config", plan.config)
        trial.set_user_attr("plan", {k: v for k, v in plan.to_dict().items() if k != "config"})
        trial.set_user_attr("worker", self.worker)
        lm = dspy.settings.lm
        if plan.task_temperature is not None:
            lm = lm.copy(temperature=plan.task_temperature)
        adapter = make_adapter(plan.adapter) if plan.adapter else dspy.settings.adapter
        meter = CallMeter()
        started = time.perf_counter()
        usage_at_compile = None
        try:
            with dspy.context(lm=lm, adapter=adapter), metering(meter), contextlib.redirect_stdout(sys.stderr):
                optimizer_metric = CriteriaMetric(self.search.metric, self.primary)
                handle = build_optimizer(plan.optimizer, optimizer_metric, config=plan.config, budget=plan.budget,
                                         seed=self.search.seed, num_threads=self.search.num_threads,
                                         n_train=len(self.trainset), n_val=len(self.devset),
                                         prompt_model=self.search.prompt_model)
                if plan.final_selection == "tpe":
                    handle.optimizer.final_selector = TPEFinalSelector(plan.final_trials, seed=self.search.seed)
                compiled = self._in_student_shape(handle.compile(self.student, trainset=self.trainset,
                                                                 valset=self.devset))
                usage_at_compile = meter.snapshot()
                self._record_program(trial, compiled)
                values = self._score_on_dev(trial, compiled, optuna)
        finally:
            usage = meter.snapshot()
            self.run_lm_calls += usage.calls
            compile_calls = (usage_at_compile or usage).calls
            trial.set_user_attr("lm_calls", usage.calls)
            trial.set_user_attr("compile_lm_calls", compile_calls)
            trial.set_user_attr("eval_lm_calls", usage.calls - compile_calls)
            trial.set_user_attr("tokens", usage.total_tokens)
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
        self._programs[trial.number] = compiled
        return values

    def _in_student_shape(self, compiled: dspy.Module) -> dspy.Module:
        """A copy of the student carrying ``compiled``'s prompts, predictor by predictor.

        Some optimizers hang extra programs on their result (BootstrapFewShotWithRandomSearch's
        ``candidate_programs``); every trial's program is saved and compared in the student's own shape.
        """
        program = self.student.deepcopy()
        found = dict(predictors(compiled))
        for name, predictor in predictors(program):
            source = found.get(name)
            if source is not None:
                predictor.signature = source.signature
                predictor.demos = list(source.demos)
        if hasattr(compiled, "dspy_ext_result"):
            program.dspy_ext_result = compiled.dspy_ext_result
        return program

    def _record_program(self, trial: Any, compiled: dspy.Module) -> None:
        instructions, demos = {}, {}
        for name, predictor in predictors(compiled):
            instructions[name] = predictor.signature.instructions
            demos[name] = [demo_to_dict(d) for d in predictor.demos]
        trial.set_user_attr("instructions", instructions)
        trial.set_user_attr("demos", demos)
        trial.set_user_attr("n_demos", {k: len(v) for k, v in demos.items()})
        result = getattr(compiled, "dspy_ext_result", None)
        if result is not None:
            trial.set_user_attr("search_val_score", result.val_score)
        if self.out_dir is not None:
            path = self.out_dir / "trials" / f"trial-{trial.number:04d}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            compiled.save(str(path))
            trial.set_user_attr("program_file", str(path))

    def _score_on_dev(self, trial: Any, compiled: dspy.Module, optuna: Any) -> Any:
        """Score on the devset in minibatches, reporting intermediate values; prune when told to."""
        cm = CriteriaMetric(self.search.metric, self.primary)
        evaluator = Evaluator(cm, num_threads=self.search.num_threads)
        pruning = self.objective != "pareto" and self.space.pruner.get("type", "median") != "none"
        wilcoxon = self.space.pruner.get("type") == "wilcoxon"
        size = self.space.eval_minibatch
        scores: dict[int, float] = {}
        errors = 0
        scored_examples: list[dspy.Example] = []
        for step, start in enumerate(range(0, len(self.dev_order), size)):
            chunk = self.dev_order[start:start + size]
            examples = [self.devset[i] for i in chunk]
            report = evaluator.evaluate(compiled, examples, desc=f"trial {trial.number} dev")
            errors += sum(report.errors.values())
            for row in report.scored:
                scores[chunk[row.index]] = row.score
            scored_examples += examples
            if not pruning or start + size >= len(self.dev_order):
                continue
            if wilcoxon:
                for i in chunk:
                    if i in scores:
                        trial.report(100.0 * scores[i], step=i)
            else:
                trial.report(_mean100(scores.values()), step=step)
            if trial.should_prune():
                means = cm.means(scored_examples)
                trial.set_user_attr("scores", {"dev": _mean100(scores.values()), "dev_rows": len(scored_examples),
                                               "dev_n": len(self.devset), "criteria": means, "pruned_at_step": step})
                raise optuna.TrialPruned(f"dev score {_mean100(scores.values()):.1f} after {len(scored_examples)} "
                                         f"rows")
        means = cm.means(self.devset)
        primary_value = means.get(self.primary, _mean100(scores.values()))
        trial.set_user_attr("scores", {"dev": primary_value, "dev_rows": len(self.devset), "dev_n": len(self.devset),
                                       "criteria": means, "errors": errors})
        if self.objective == "pareto":
            return [means.get(c, 0.0) for c in self.criteria]
        if self.objective == "constraints":
            base = self.baseline["criteria"]
            violations = {}
            for c in self.criteria:
                if c == self.primary:
                    continue
                violation = round(base.get(c, 0.0) - self.search.constraint_tolerance - means.get(c, 0.0), 6)
                violations[c] = violation
                if _has_set_constraint():
                    trial.set_constraint(f"{c}>=baseline", violation)
            trial.set_user_attr("constraints", violations)
            trial.set_user_attr("feasible", all(v <= 0 for v in violations.values()))
        return primary_value

    # ---- reading results ----------------------------------------------------------------------------
    def best_trial(self) -> Any | None:
        """The best complete trial (feasible, in ``constraints`` mode); ``None`` if there is none.

        Single objective: highest value, then the earlier trial (a later trial with the same
        parameters may show 0 LM calls only because DSPy's cache answered it).
        Pareto: the front's trial with the best primary criterion.
        """
        optuna = _optuna()
        complete = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if self.objective == "pareto":
            front = self.pareto_front()
            k = self.criteria.index(self.primary)
            return max(front, key=lambda t: (t.values[k], sum(t.values), -t.number)) if front else None
        feasible = [t for t in complete if is_feasible(t)]
        if not feasible:
            return None
        return max(feasible, key=lambda t: (t.value, -t.number))

    def pareto_front(self) -> list[Any]:
        """The Pareto-optimal complete trials (``pareto`` mode), by trial number."""
        if self.objective != "pareto":
            return []
        return sorted(self.study.best_trials, key=lambda t: t.number)

    def best_program(self) -> dspy.Module:
        """The best trial's program (from this process, its saved file, or its stored prompts)."""
        best = self.best_trial()
        if best is None:
            raise RuntimeError(f"study {self.search.study_name!r} has no complete"
                               f"{' feasible' if self.objective == 'constraints' else ''} trial yet")
        return self.program_of(best)

    def program_of(self, trial: Any) -> dspy.Module:
        if trial.number in self._programs:
            return self._programs[trial.number]
        path = trial.user_attrs.get("program_file")
        program = self.student.deepcopy()
        if path and Path(path).exists():
            program.load(path)
            return program
        # Another machine's trial: rebuild from the stored instructions and demos.
        instructions = trial.user_attrs.get("instructions") or {}
        demos = trial.user_attrs.get("demos") or {}
        for name, predictor in predictors(program):
            if name in instructions:
                predictor.signature = predictor.signature.with_instructions(instructions[name])
            predictor.demos = [dspy.Example(**d) for d in demos.get(name, [])]
        return program

    def save_best(self) -> Path | None:
        """Write the best program (and its trial's record) next to the study; return the program's path."""
        best = self.best_trial()
        if best is None or self.out_dir is None:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "best_program.json"
        self.program_of(best).save(str(path))
        (self.out_dir / "best_trial.json").write_text(json.dumps(trial_record(best), indent=2, default=str) + "\n")
        return path

    def total_lm_calls(self) -> int:
        """LM calls of every trial in the study plus the baseline scoring."""
        return sum(int(t.user_attrs.get("lm_calls", 0)) for t in self.study.get_trials(deepcopy=False)) + int(
            self.baseline.get("lm_calls", 0))

    def summary(self, top: int = 5) -> dict[str, Any]:
        """The study in one JSON-ready dict (``best_value``, ``n_trials``, ``n_pruned``, ``study``, ``storage``, ...)."""
        counts = self.counts()
        best = self.best_trial()
        primary_index = self.criteria.index(self.primary) if self.objective == "pareto" else 0
        best_value = None
        if best is not None:
            best_value = best.values[primary_index] if self.objective == "pareto" else best.value
        out: dict[str, Any] = {
            "study": self.search.study_name,
            "storage": display_url(self.storage_url),
            "objective": self.objective,
            "criteria": self.criteria,
            "primary": self.primary,
            "best_value": best_value,
            "best_values": dict(zip(self.criteria, best.values)) if best is not None and self.objective == "pareto"
            else (best.user_attrs.get("scores", {}).get("criteria") if best is not None else None),
            "best_trial": trial_record(best) if best is not None else None,
            "baseline": self.baseline,
            "n_trials": counts["all"],
            "n_complete": counts["complete"],
            "n_pruned": counts["pruned"],
            "n_failed": counts["fail"],
            "n_running": counts["running"],
            "n_waiting": counts["waiting"],
            "target_trials": self.search.n_trials,
            "total_lm_calls": self.total_lm_calls(),
            "out_dir": str(self.out_dir) if self.out_dir else None,
            "top_trials": [trial_record(t, brief=True) for t in self.top_trials(top)],
        }
        if self.objective == "pareto":
            out["pareto_front"] = [{"number": t.number, "values": dict(zip(self.criteria, t.values)),
                                    "optimizer": t.user_attrs.get("optimizer")} for t in self.pareto_front()]
        if self.objective == "constraints":
            out["n_infeasible"] = sum(1 for t in self.study.get_trials(deepcopy=False)
                                      if t.state.name == "COMPLETE" and not is_feasible(t))
        return out

    def top_trials(self, k: int = 5) -> list[Any]:
        """The ``k`` best complete trials (feasible first), then pruned ones by their partial score."""
        optuna = _optuna()
        trials = self.study.get_trials(deepcopy=False)
        primary_index = self.criteria.index(self.primary) if self.objective == "pareto" else 0

        def key(t: Any) -> tuple:
            complete = t.state == optuna.trial.TrialState.COMPLETE
            value = (t.values[primary_index] if complete else t.user_attrs.get("scores", {}).get("dev", -math.inf))
            return (complete, is_feasible(t), value if value is not None else -math.inf, -t.number)

        ranked = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
        return sorted(ranked, key=key, reverse=True)[:k]


def is_feasible(trial: Any) -> bool:
    """Whether a trial meets every constraint (always, when there are none)."""
    constraints = getattr(trial, "constraints", None)
    if constraints:
        return all(v <= 0 for v in constraints.values())
    violations = trial.user_attrs.get("constraints") or {}
    return all(v <= 0 for v in violations.values())


def trial_record(trial: Any, *, brief: bool = False) -> dict[str, Any]:
    """A trial as a JSON-ready dict."""
    attrs = trial.user_attrs
    record = {
        "number": trial.number,
        "state": trial.state.name.lower(),
        "value": trial.value if trial.values is not None and len(trial.values) == 1 else None,
        "values": list(trial.values) if trial.values is not None else None,
        "optimizer": attrs.get("optimizer") or trial.params.get("optimizer"),
        "params": {k: v for k, v in trial.params.items() if k != "optimizer"},
        "scores": attrs.get("scores"),
        "feasible": is_feasible(trial),
        "lm_calls": attrs.get("lm_calls"),
        "tokens": attrs.get("tokens"),
        "seconds": attrs.get("seconds"),
        "retry_of": trial.system_attrs.get("failed_trial"),
    }
    if not brief:
        record.update({"config": attrs.get("config"), "plan": attrs.get("plan"),
                       "instructions": attrs.get("instructions"), "n_demos": attrs.get("n_demos"),
                       "compile_lm_calls": attrs.get("compile_lm_calls"), "eval_lm_calls": attrs.get("eval_lm_calls"),
                       "worker": attrs.get("worker"), "program_file": attrs.get("program_file"),
                       "constraints": attrs.get("constraints")})
    return record


def _mean100(values: Any) -> float:
    values = list(values)
    return round(100.0 * statistics.fmean(values), 4) if values else 0.0


def _has_set_constraint() -> bool:
    import optuna

    return hasattr(optuna.trial.Trial, "set_constraint")


def _constraints_from_attrs(trial: Any) -> list[float]:
    return list((trial.user_attrs.get("constraints") or {}).values()) or [0.0]
