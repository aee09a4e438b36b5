"""Scoring programs: the shared evaluator, error classes and statistics."""

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
from dspy_ext.evaluation.stats import MeanCI, mean_ci, t95

__all__ = [
    "ErrorKind",
    "EvaluationReport",
    "Evaluator",
    "MeanCI",
    "RowResult",
    "classify_error",
    "example_key",
    "mean_ci",
    "metric_value",
    "t95",
]
