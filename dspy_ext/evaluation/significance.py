"""Paired significance tests: are two programs' scores on the same examples really different?

Both programs are scored on the same rows, so the test is *paired*: only the
rows on which they disagree carry information.

* :func:`mcnemar_exact` for 0/1 correctness: the exact two-sided binomial test
  on the discordant pairs (``b`` rows only A got right, ``c`` only B).
* :func:`paired_bootstrap` for graded scores: resample the per-row differences.
* :func:`paired_test` picks McNemar when every score is 0 or 1, else the bootstrap.

Standard library only.

Example:
    >>> round(mcnemar_exact(10, 0), 6)
    0.001953
    >>> paired_test([1, 1, 0, 1], [1, 1, 0, 1]).p_value
    1.0
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

ALPHA = 0.05


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs.

    Under the null hypothesis each discordant pair is equally likely to go
    either way, so ``min(b, c)`` is Binomial(``b + c``, 1/2); the p-value is
    twice its lower tail, capped at 1.

    Args:
        b: Pairs where only the first program is right.
        c: Pairs where only the second program is right.

    Returns:
        The p-value (1.0 when there are no discordant pairs).
    """
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be >= 0")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, n_resamples: int = 2000, seed: int = 0) -> float:
    """Two-sided paired-bootstrap p-value for ``mean(a) != mean(b)``.

    The per-row differences are resampled with replacement; the p-value is
    the share of resampled means at least as far from the observed mean
    difference as the observed difference is from 0 (the bootstrap
    distribution shifted to the null), with the usual +1 correction.

    Args:
        a: Scores of the first program, one per row.
        b: Scores of the second program on the same rows.
        n_resamples: Bootstrap resamples.
        seed: Seed of the private RNG.
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    n = len(diffs)
    if n == 0:
        return 1.0
    observed = sum(diffs) / n
    if all(d == diffs[0] for d in diffs):
        # No spread: either no difference at all, or the same difference on every row.
        return 1.0 if observed == 0 else 1.0 / (n_resamples + 1)
    rng = random.Random(seed)
    extreme = 0
    for _ in range(n_resamples):
        mean = sum(rng.choices(diffs, k=n)) / n
        if abs(mean - observed) >= abs(observed) - 1e-12:
            extreme += 1
    return (extreme + 1) / (n_resamples + 1)


@dataclass(frozen=True)
class PairedTest:
    """The result of a paired test of program A against program B.

    Scores are on a 0-1 scale; ``diff = mean_a - mean_b``. For McNemar,
    ``a_only``/``b_only`` are the discordant counts.
    """

    method: str
    n: int
    mean_a: float
    mean_b: float
    p_value: float
    a_only: int | None = None
    b_only: int | None = None
    alpha: float = ALPHA

    @property
    def diff(self) -> float:
        return self.mean_a - self.mean_b

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "n": self.n,
            "diff_points": round(100 * self.diff, 2),
            "p_value": self.p_value,
            "significant": self.significant,
            "a_only": self.a_only,
            "b_only": self.b_only,
        }


class PairedMethod(str, enum.Enum):
    """The test :func:`paired_test` runs: McNemar's exact test (0/1 scores), a paired bootstrap, or the fitting one."""

    AUTO = "auto"  # McNemar when every score is 0 or 1, else the bootstrap
    MCNEMAR = "mcnemar"
    BOOTSTRAP = "bootstrap"


def _is_binary(values: Sequence[float]) -> bool:
    return all(v in (0, 1) for v in values)


def paired_test(
    a: Sequence[float | None],
    b: Sequence[float | None],
    *,
    method: PairedMethod | str = PairedMethod.AUTO,
    alpha: float = ALPHA,
    n_resamples: int = 2000,
    seed: int = 0,
) -> PairedTest:
    """Test whether two programs differ on the same rows.

    Rows where either score is ``None`` (not scored, e.g. an LM failure) are dropped.

    Args:
        a: Per-row scores of program A (0-1).
        b: Per-row scores of program B on the same rows.
        method: ``"mcnemar"``, ``"bootstrap"`` or ``"auto"`` (McNemar when every
            score is 0 or 1).
        alpha: Significance level.
        n_resamples: Bootstrap resamples.
        seed: Bootstrap seed.

    Raises:
        ValueError: The sequences differ in length, ``method`` is unknown, or
            McNemar is asked for non-binary scores.
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    if method not in tuple(PairedMethod):
        raise ValueError(f"unknown method {method!r}; use auto, mcnemar or bootstrap")
    pairs = [(float(x), float(y)) for x, y in zip(a, b) if x is not None and y is not None]
    xs = [x for x, _ in pairs]
    ys = [y for _, y in pairs]
    n = len(pairs)
    mean_a = sum(xs) / n if n else 0.0
    mean_b = sum(ys) / n if n else 0.0
    binary = _is_binary(xs) and _is_binary(ys)
    if method == PairedMethod.MCNEMAR and not binary:
        raise ValueError("McNemar's test needs 0/1 scores; use method='bootstrap'")
    if method == PairedMethod.MCNEMAR or (method == PairedMethod.AUTO and binary):
        a_only = sum(1 for x, y in pairs if x > y)
        b_only = sum(1 for x, y in pairs if y > x)
        return PairedTest("mcnemar-exact", n, mean_a, mean_b, mcnemar_exact(a_only, b_only), a_only, b_only, alpha)
    p = paired_bootstrap(xs, ys, n_resamples=n_resamples, seed=seed)
    return PairedTest("paired-bootstrap", n, mean_a, mean_b, p, alpha=alpha)
