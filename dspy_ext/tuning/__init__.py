"""Optuna-driven search: tune which optimizer runs and its hyperparameters, in persistent studies.

* :class:`OptunaSearch` - the teleprompter: each trial samples an optimizer and
  its knobs, compiles, scores on the devset in minibatches (pruned trials are
  recorded as pruned) and stores everything in the study;
* :class:`SearchSpace` / :func:`load_space` - the space, in Python or YAML, with
  per-method defaults, checked before any trial runs;
* :class:`TPEFinalSelector` - candidate-level TPE over (instruction, demo set)
  per predictor, usable as the final selection of APE, OPRO, EvoPrompt and ProTeGi;
* :class:`CriteriaMetric` - metrics returning several named criteria (Pareto or
  constraints against the student's own values);
* :mod:`dspy_ext.tuning.storage` - SQLite/PostgreSQL storage with heartbeats and
  retry of trials whose process died.

Optuna itself is imported only when a study is opened.
"""

from __future__ import annotations

from dspy_ext.tuning.criteria import CriteriaMetric, criteria_of
from dspy_ext.tuning.search import OptunaSearch, TuneSession, is_feasible, trial_record
from dspy_ext.tuning.selector import TPEFinalSelector
from dspy_ext.tuning.space import (
    DEFAULT_METHOD_SPACES,
    DEFAULT_OPTIMIZERS,
    Choice,
    Fixed,
    Float,
    Int,
    Param,
    SearchSpace,
    SearchSpaceError,
    TrialPlan,
    load_space,
)
from dspy_ext.tuning.storage import dashboard_command, default_storage_url

__all__ = [
    "DEFAULT_METHOD_SPACES",
    "DEFAULT_OPTIMIZERS",
    "Choice",
    "CriteriaMetric",
    "Fixed",
    "Float",
    "Int",
    "OptunaSearch",
    "Param",
    "SearchSpace",
    "SearchSpaceError",
    "TPEFinalSelector",
    "TrialPlan",
    "TuneSession",
    "criteria_of",
    "dashboard_command",
    "default_storage_url",
    "is_feasible",
    "load_space",
    "trial_record",
]
