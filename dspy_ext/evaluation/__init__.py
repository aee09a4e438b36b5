"""Scoring programs: the shared evaluator, error classes, statistics and paired significance tests."""

from __future__ import annotations

from dspy_ext.evaluation.evaluator import (
    ErrorKind,
    EvaluationReport,
    Evaluator,
    RowResult,
    classify_error,
    example_key,
    metric_value,
)
from dspy_ext.evaluation.significance import PairedTest, mcnemar_exact, paired_bootstrap, paired_test
from dspy_ext.evaluation.stats import MeanCI, mean_ci, t95

__all__ = [
    "ErrorKind",
    "EvaluationReport",
    "Evaluator",
    "MeanCI",
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
