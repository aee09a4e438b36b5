"""Small statistics for noisy evaluations: means with 95% confidence intervals.

Scores here are few (a handful of repeats or seeds), so intervals use
Student's t; the quantile table avoids a SciPy dependency for one number.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

# Two-sided 95% quantiles of Student's t by degrees of freedom.
_T95 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    11: 2.201,
    12: 2.179,
    13: 2.160,
    14: 2.145,
    15: 2.131,
    16: 2.120,
    17: 2.110,
    18: 2.101,
    19: 2.093,
    20: 2.086,
    25: 2.060,
    30: 2.042,
    40: 2.021,
    60: 2.000,
    120: 1.980,
}


def t95(df: int) -> float:
    """The two-sided 95% t quantile for ``df`` degrees of freedom (conservative between rows)."""
    if df < 1:
        raise ValueError("need at least 2 values for an interval")
    for key in sorted(_T95):
        if df <= key:
            return _T95[key]
    return 1.960


@dataclass(frozen=True)
class MeanCI:
    """A mean with the half-width of its 95% confidence interval (same units)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def __str__(self) -> str:
        return f"{self.mean:.1f} ± {self.half_width:.1f}" if self.n > 1 else f"{self.mean:.1f}"


def mean_ci(values: Sequence[float]) -> MeanCI:
    """Mean and t-based 95% CI half-width of ``values`` (half-width 0 for one value).

    Example:
        >>> str(mean_ci([70.0, 74.0, 72.0]))
        '72.0 ± 5.0'
    """
    if not values:
        raise ValueError("mean_ci needs at least one value")
    mean = statistics.fmean(values)
    if len(values) == 1:
        return MeanCI(mean, 0.0, 1)
    half = t95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return MeanCI(mean, half, len(values))
