"""Scoring programs: the shared evaluator, error classes, multi-criteria metrics, statistics and paired tests."""

from __future__ import annotations

from dspy_ext.evaluation.criteria import (
    CriteriaMetric,
    Measurement,
    criteria,
    criteria_names,
    criteria_of,
    feedback_of,
    measure,
    metric_value,
)
from dspy_ext.evaluation.evaluator import (
    ErrorKind,
    EvaluationReport,
    Evaluator,
    RowResult,
    classify_error,
    example_key,
)
from dspy_ext.evaluation.significance import PairedMethod, PairedTest, mcnemar_exact, paired_bootstrap, paired_test
from dspy_ext.evaluation.stats import MeanCI, mean_ci, t95

__all__ = [
    "CriteriaMetric",
    "Measurement",
    "criteria",
    "criteria_names",
    "criteria_of",
    "feedback_of",
    "measure",
    "ErrorKind",
    "EvaluationReport",
    "Evaluator",
    "MeanCI",
    "PairedMethod",
    "PairedTest",
    "RowResult",
    "classify_error",
    "example_key",
    "mcnemar_exact",
    "mean_ci",
    "metric_value",
    "paired_bootstrap",
    "paired_test",
    "t95",
]
