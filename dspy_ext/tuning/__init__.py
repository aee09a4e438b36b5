"""Optuna-driven tuning: which optimizer runs and with which hyperparameters, in persistent studies.

* :class:`OptunaTuner` (:mod:`~dspy_ext.tuning.study`) - the teleprompter and the study's identity;
  :class:`TuneSession` is one process's handle on a study;
* :class:`TrialRunner` (:mod:`~dspy_ext.tuning.objective`) - one trial: plan, compile, devset scoring
  in minibatches with pruning, constraints;
* :class:`StudyResults` (:mod:`~dspy_ext.tuning.results`) - best trial, Pareto front, top trials,
  the summary and the best program;
* :class:`TuningSpace` / :func:`load_space` (:mod:`~dspy_ext.tuning.space`) - the space, in Python or
  YAML, with per-method defaults, checked before any trial runs;
* :func:`tune` (:mod:`~dspy_ext.tuning.runner`) - a whole tune from :class:`~dspy_ext.experiment.TuneSettings`,
  with :func:`~dspy_ext.tuning.workers.run_workers` running N worker processes on the study;
* :class:`CriteriaMetric` - metrics returning several named criteria (Pareto or
  constraints against the student's own values);
* :mod:`dspy_ext.tuning.storage` - SQLite/PostgreSQL storage with heartbeats and
  retry of trials whose process died.

Optuna itself is imported only when a study is opened.
"""

from __future__ import annotations

from dspy_ext.evaluation.criteria import CriteriaMetric, criteria_of
from dspy_ext.tuning.objective import TrialRunner
from dspy_ext.tuning.results import StudyResults, is_feasible, trial_record
from dspy_ext.tuning.runner import TuneJob, TuneResult, tune
from dspy_ext.tuning.space import (
    DEFAULT_METHOD_SPACES,
    DEFAULT_OPTIMIZERS,
    Choice,
    Fixed,
    Float,
    Int,
    Param,
    TrialPlan,
    TuningSpace,
    TuningSpaceError,
    load_space,
)
from dspy_ext.tuning.storage import dashboard_command, default_storage_url
from dspy_ext.tuning.study import OptunaTuner, StudyIdentity, TuneSession
from dspy_ext.tuning.summary import StudySummary, TuneSummary, TuneTest
from dspy_ext.tuning.workers import TuneProgress, run_workers

__all__ = [
    "DEFAULT_METHOD_SPACES",
    "DEFAULT_OPTIMIZERS",
    "Choice",
    "CriteriaMetric",
    "Fixed",
    "Float",
    "Int",
    "OptunaTuner",
    "Param",
    "StudyIdentity",
    "StudyResults",
    "StudySummary",
    "TrialPlan",
    "TrialRunner",
    "TuneJob",
    "TuneProgress",
    "TuneResult",
    "TuneSession",
    "TuneSummary",
    "TuneTest",
    "TuningSpace",
    "TuningSpaceError",
    "criteria_of",
    "dashboard_command",
    "default_storage_url",
    "is_feasible",
    "load_space",
    "run_workers",
    "trial_record",
    "tune",
]
