"""``OptunaTuner``: tune which optimizer to run and its hyperparameters, as a persistent Optuna study.

Each trial samples an optimizer and its knobs from a :class:`~dspy_ext.tuning.space.TuningSpace`,
compiles the student with it and scores the result on the devset in minibatches,
so that Optuna's pruner can stop a hopeless trial early (see
:mod:`dspy_ext.tuning.objective`). The best trial's program is returned (see
:mod:`dspy_ext.tuning.results`).

The study lives in Optuna storage (default: ``runs/tune/optuna.db``), so

* running again with the same ``study_name`` continues it (``n_trials`` is the
  study's target: trials already finished count);
* any number of processes or machines can work on one study at the same time
  (Optuna's own distributed mode: each runs :meth:`TuneSession.optimize` on the
  same storage URL; :func:`dspy_ext.tuning.workers.run_workers` starts local ones);
* a process killed mid-trial loses only that trial: heartbeats mark it stale
  and it is re-queued with the same parameters (see :mod:`dspy_ext.tuning.storage`).

A study remembers what it was created with (:class:`StudyIdentity`: the space,
a fingerprint of the train/dev data, the objective, the criteria and the
student's own devset scores), and a later process that brings another space or
other data is refused instead of mixing incomparable trials.

Objectives
----------
A metric may return several named criteria (see :mod:`dspy_ext.evaluation.criteria`):

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
    >>> tuner = OptunaTuner(exact_match, space={"optimizers": ["ape", "bfsrs"], "budget": 60},
    ...                     n_trials=12, study_name="sentiment")                          # doctest: +SKIP
    >>> program = tuner.compile(student, trainset=train, valset=dev)                      # doctest: +SKIP
    >>> compile_record(program).tune.best_value, compile_record(program).tune.n_trials      # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dspy
from dspy.teleprompt import Teleprompter

from dspy_ext.data import dataset_fingerprint, default_valset
from dspy_ext.evaluation import Evaluator
from dspy_ext.evaluation.criteria import CriteriaMetric
from dspy_ext.lm.metering import CallMeter, metering
from dspy_ext.prompt_state import attach_record
from dspy_ext.search.autolog import follow_mlflow_autolog
from dspy_ext.search.feedback import SearchFeedback
from dspy_ext.tuning.objective import (
    TrialRunner,
    constraints_from_attrs,
    has_set_constraint,
    worker_id,
)
from dspy_ext.tuning.results import StudyResults
from dspy_ext.tuning.space import OBJECTIVES, TuningSpace, load_space
from dspy_ext.tuning.storage import MEMORY, make_storage, normalize_url, study_dir

logger = logging.getLogger(__name__)

#: The study's user attribute that holds its :class:`StudyIdentity`.
STUDY_ATTR = "dspy_ext_tune"
#: Share of the trainset held out as the devset when no valset is given.
DEFAULT_DEV_FRACTION = 0.4


class OptunaTuner(Teleprompter):
    """Tune the optimizer and its hyperparameters with Optuna (see the module docstring).

    Args:
        metric: ``metric(example, prediction, trace=None)``: one value, or several named criteria.
        space: A :class:`TuningSpace`, its dict form, a YAML/JSON file or ``None`` (ape, opro, bfsrs with
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
        feedback: A reviewer's critiques, given to every trial's optimizer that uses them.
        guards: Per-criterion guards (most points a criterion may drop) given to every trial's optimizer.
        max_cost: USD for the whole study, a hard cap on its trials' calls (compile and devset scoring, task
            and prompt model together; the trials of earlier runs count). No trial starts once it is spent,
            and the trial running then stops: a compile returns its best so far, a devset scoring cut short
            fails the trial (it is never scored on part of the devset). ``None``: no cap.
        cost_shares: Processes that share what is left of ``max_cost`` when they join (the workers of one
            tune), each getting an equal part, so that together they keep the cap.

    Raises:
        TuningSpaceError: The space cannot work (raised here, before any storage is touched).
        ValueError: ``n_trials < 1``, an unknown objective or a negative tolerance.

    Example:
        >>> tuner = OptunaTuner(exact_match, space="space.yaml", n_trials=20, storage="runs/tune/optuna.db")
        ...                                                                              # doctest: +SKIP
        >>> session = tuner.open(student, trainset=train, valset=dev)                   # doctest: +SKIP
        >>> session.optimize(); session.results.summary().best_value                    # doctest: +SKIP
    """

    def __init__(
        self,
        metric: Callable[..., Any],
        *,
        space: TuningSpace | dict[str, Any] | str | Path | None = None,
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
        feedback: SearchFeedback | None = None,
        guards: Mapping[str, float] | None = None,
        max_cost: float | None = None,
        cost_shares: int = 1,
    ) -> None:
        super().__init__()
        if max_cost is not None and not max_cost >= 0:
            raise ValueError(f"max_cost must be >= 0, got {max_cost}")
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
        self.feedback = feedback or None
        self.guards = dict(guards or {})
        self.max_cost = max_cost
        self.cost_shares = max(1, cost_shares)

    def compile(
        self,
        student: dspy.Module,
        *,
        trainset: list[dspy.Example],
        valset: list[dspy.Example] | None = None,
        **kwargs: Any,
    ) -> dspy.Module:
        """Run (or continue) the study and return the best trial's program.

        Args:
            student: The program to optimize (not modified).
            trainset: Examples the optimizers train on.
            valset: The devset every trial is scored on (default: 40% of ``trainset``, seeded).

        Returns:
            The best trial's program; its :func:`~dspy_ext.prompt_state.compile_record` ``.tune`` holds
            :meth:`StudyResults.summary`.
        """
        session = self.open(student, trainset=trainset, valset=valset)
        session.optimize()
        session.results.save_best()
        program = session.results.best_program()
        attach_record(program, tune=session.results.summary())
        return program

    def open(
        self, student: dspy.Module, *, trainset: list[dspy.Example], valset: list[dspy.Example] | None = None
    ) -> TuneSession:
        """Create or load the study (scoring the student on the devset once, for a new study).

        Raises:
            ValueError: An empty trainset, no configured LM, or a stored study this one is not compatible with.
        """
        if not trainset:
            raise ValueError("trainset is empty")
        trainset, valset = default_valset(trainset, valset, random.Random(self.seed), DEFAULT_DEV_FRACTION)
        if dspy.settings.lm is None:
            raise ValueError("no LM: dspy.configure(lm=...) or use dspy.context(lm=...)")
        return TuneSession(self, student, trainset, list(valset))


# A user's mlflow.dspy.autolog() that ran before this import covers the tuner too (see search.autolog).
follow_mlflow_autolog(OptunaTuner)


@dataclass
class StudyIdentity:
    """What a study was created with; stored in the study, checked by every process that joins it.

    Attributes:
        space: The normalized space (:meth:`TuningSpace.to_dict`).
        data_hash: Fingerprint of the train + dev examples.
        n_train: Training examples.
        n_dev: Devset examples.
        objective: ``single``, ``pareto`` or ``constraints`` (``auto`` resolved).
        criteria: The metric's criteria, in its order.
        primary: The criterion that ranks trials.
        constraint_tolerance: Allowed drop (0-100 scale) below the baseline in ``constraints`` mode.
        seed: The tuner's seed.
        baseline: The student on the devset: ``criteria`` means, ``score``, ``lm_calls`` and ``errors``.
        out_dir: Where the first process wrote the study's files.
        version: Format of this record.
    """

    space: dict[str, Any]
    data_hash: str
    n_train: int
    n_dev: int
    objective: str
    criteria: list[str]
    primary: str
    constraint_tolerance: float
    seed: int
    baseline: dict[str, Any] = field(default_factory=dict)
    out_dir: str | None = None
    version: int = 1

    def to_attr(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_attr(cls, raw: dict[str, Any]) -> StudyIdentity:
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def check_compatible(self, tuner: OptunaTuner, data_hash: str) -> None:
        """Refuse to join a study created with another space, other data or another objective.

        Raises:
            ValueError: Naming the difference and how to start a new study instead.
        """
        name = tuner.study_name
        hint = "; use another study name (--study) for a new study"
        if json.dumps(self.space, sort_keys=True, default=str) != tuner.space.fingerprint():
            raise ValueError(f"study {name!r} was created with another search space{hint}")
        if self.data_hash != data_hash:
            raise ValueError(
                f"study {name!r} was created on other train/dev data (a different task, split, sizes or seed){hint}"
            )
        if tuner.objective != "auto" and tuner.objective != self.objective:
            raise ValueError(f"study {name!r} uses objective {self.objective!r}, not {tuner.objective!r}{hint}")


def _stop_when_spent(purse: CallMeter, study: Any, trial: Any) -> None:
    """Optuna callback: stop this process's trials once its part of the cost cap is spent."""
    if purse.max_cost is not None and purse.snapshot().cost >= purse.max_cost:
        logger.warning(
            "study %s: the cost cap is reached after trial %d; no further trial starts", study.study_name, trial.number
        )
        study.stop()


def measure_identity(
    tuner: OptunaTuner, student: dspy.Module, trainset: list[dspy.Example], devset: list[dspy.Example], data_hash: str
) -> StudyIdentity:
    """Score the student on the devset (the baseline) and fix the criteria and objective of a new study.

    Raises:
        ValueError: ``pareto`` or ``constraints`` asked for with a metric that returns one criterion.
    """
    cm = CriteriaMetric(tuner.metric, tuner.primary)
    meter = CallMeter()
    with metering(meter):
        report = Evaluator(cm, num_threads=tuner.num_threads).evaluate(student, devset, desc="baseline")
    criteria = list(cm.criteria) or ["score"]
    primary = cm.primary or criteria[0]
    objective = tuner.objective
    if objective == "auto":
        objective = "single" if len(criteria) == 1 else "constraints"
    if objective in ("pareto", "constraints") and len(criteria) < 2:
        raise ValueError(
            f"objective {objective!r} needs a metric returning several criteria; this one returns only {criteria}"
        )
    baseline = {
        "criteria": cm.means(devset),
        "score": round(report.score, 4),
        "lm_calls": meter.calls,
        "errors": {k: v for k, v in report.errors.items() if v},
    }
    return StudyIdentity(
        space=tuner.space.to_dict(),
        data_hash=data_hash,
        n_train=len(trainset),
        n_dev=len(devset),
        objective=objective,
        criteria=criteria,
        primary=primary,
        constraint_tolerance=tuner.constraint_tolerance,
        seed=tuner.seed,
        baseline=baseline,
        out_dir=str(tuner.out_dir) if tuner.out_dir else None,
    )


class TuneSession:
    """One process's handle on a study: runs trials (:meth:`optimize`) and reads results (:attr:`results`).

    Made by :meth:`OptunaTuner.open`. Several sessions, in several processes or machines, may work on
    one study at the same time.

    Attributes:
        tuner: The :class:`OptunaTuner` that opened it.
        identity: The study's :class:`StudyIdentity`.
        study: The ``optuna.Study``.
        dev_order: The seeded order in which trials score the devset (minibatch by minibatch).
        results: The study's :class:`~dspy_ext.tuning.results.StudyResults`.

    Example:
        >>> session = OptunaTuner(metric, storage="memory").open(student, trainset=train, valset=dev)  # doctest: +SKIP
        >>> session.optimize(max_trials=2)                                                           # doctest: +SKIP
        2
    """

    def __init__(
        self, tuner: OptunaTuner, student: dspy.Module, trainset: list[dspy.Example], devset: list[dspy.Example]
    ) -> None:
        import optuna

        self.tuner = tuner
        storage = make_storage(
            tuner.storage_url,
            heartbeat_interval=tuner.heartbeat_interval,
            grace_period=tuner.grace_period,
            max_retry=tuner.max_retry,
        )
        data_hash = dataset_fingerprint(trainset + devset)
        identity = self._stored_identity(storage)
        if identity is None:
            identity = measure_identity(tuner, student, trainset, devset, data_hash)
        else:
            identity.check_compatible(tuner, data_hash)
        self.identity = identity
        directions = ["maximize"] * (len(identity.criteria) if identity.objective == "pareto" else 1)
        # Optuna < 5 has no Trial.set_constraint: constraints reach TPE through constraints_func.
        legacy = identity.objective == "constraints" and not has_set_constraint()
        sampler = tuner.space.make_sampler(
            tuner.seed + 1000 * tuner.worker_index, constraints_func=constraints_from_attrs if legacy else None
        )
        self.study = optuna.create_study(
            study_name=tuner.study_name,
            storage=storage,
            directions=directions,
            sampler=sampler,
            pruner=tuner.space.make_pruner(),
            load_if_exists=True,
        )
        if STUDY_ATTR not in self.study.user_attrs:
            self.study.set_user_attr(STUDY_ATTR, identity.to_attr())
            for params in tuner.enqueue:
                self.study.enqueue_trial(params, skip_if_exists=True)
        order = list(range(len(devset)))
        random.Random(tuner.seed).shuffle(order)
        self.dev_order = order
        self.runner = TrialRunner(tuner, identity, student, trainset, devset, dev_order=order, worker=worker_id())
        self.results = StudyResults(
            self.study,
            identity,
            student=student,
            storage_url=tuner.storage_url,
            target_trials=tuner.n_trials,
            out_dir=tuner.out_dir,
            programs=self.runner.programs,
        )

    def _stored_identity(self, storage: Any) -> StudyIdentity | None:
        import optuna

        tuner = self.tuner
        if tuner.storage_url == MEMORY or tuner.study_name not in optuna.study.get_all_study_names(storage):
            return None
        raw = optuna.load_study(study_name=tuner.study_name, storage=storage).user_attrs.get(STUDY_ATTR)
        return StudyIdentity.from_attr(raw) if raw is not None else None

    def optimize(
        self,
        n_trials: int | None = None,
        *,
        callbacks: Sequence[Callable[..., None]] = (),
        max_trials: int | None = None,
    ) -> int:
        """Run trials in this process until the study has ``n_trials`` finished trials (default: the tuner's).

        Args:
            n_trials: The study's target of finished trials.
            callbacks: Optuna callbacks ``(study, frozen_trial)`` run after each of this process's trials.
            max_trials: At most this many trials in this process (for splitting work between workers).

        Returns:
            The number of trials this call ran.
        """
        from optuna.study import MaxTrialsCallback
        from optuna.trial import TrialState

        target = n_trials or self.tuner.n_trials
        remaining = target - self.results.counts()["finished"]
        if max_trials is not None:
            remaining = min(remaining, max_trials)
        if remaining <= 0:
            return 0
        purse = self._purse()
        if purse is not None and purse.max_cost <= 0:
            logger.warning(
                "study %s: its cost cap of $%g is spent; no trial starts", self.tuner.study_name, self.tuner.max_cost
            )
            return 0
        before = len(self.study.get_trials(deepcopy=False))
        stop = MaxTrialsCallback(target, states=(TrialState.COMPLETE, TrialState.PRUNED))
        spent = [] if purse is None else [functools.partial(_stop_when_spent, purse)]
        with metering(purse) if purse is not None else contextlib.nullcontext():
            self.study.optimize(
                self.runner,
                n_trials=remaining,
                timeout=self.tuner.timeout,
                catch=(Exception,),
                callbacks=[stop, *spent, *callbacks],
                gc_after_trial=False,
            )
        return len(self.study.get_trials(deepcopy=False)) - before

    def _purse(self) -> CallMeter | None:
        """This process's part of what is left of the study's cost cap, as a meter (``None``: no cap)."""
        tuner = self.tuner
        if tuner.max_cost is None:
            return None
        left = max(0.0, tuner.max_cost - self.results.spent_usd())
        return CallMeter(max_cost=left / tuner.cost_shares)
