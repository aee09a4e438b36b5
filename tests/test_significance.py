"""Paired significance tests against known cases."""

from __future__ import annotations

import math

import pytest

from dspy_ext.evaluation.significance import mcnemar_exact, paired_bootstrap, paired_test


@pytest.mark.parametrize(
    ("b", "c", "expected"),
    [
        (10, 0, 0.001953125),  # 2 * 0.5**10
        (0, 10, 0.001953125),  # symmetric
        (5, 5, 1.0),  # capped at 1
        (0, 0, 1.0),  # no discordant pairs
        (1, 0, 1.0),
        (6, 0, 0.03125),  # the smallest n that reaches 0.05 with no opposite pair
        (5, 0, 0.0625),
        (8, 2, 0.109375),  # 2 * (1 + 10 + 45) / 1024
        (25, 10, 0.0166738478),  # 2 * sum_{k<=10} C(35, k) / 2**35 (R: binom.test(10, 35))
    ],
)
def test_mcnemar_exact_known_values(b: int, c: int, expected: float) -> None:
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-6)


def test_mcnemar_exact_matches_the_binomial_sum() -> None:
    n, k = 40, 12
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    assert mcnemar_exact(k, n - k) == pytest.approx(2 * tail)


def test_mcnemar_exact_handles_large_tables() -> None:
    assert mcnemar_exact(1200, 1100) == pytest.approx(0.0394, abs=0.002)  # normal approx z = 2.06
    assert mcnemar_exact(3000, 0) < 1e-300


def test_mcnemar_rejects_negative_counts() -> None:
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


def test_paired_test_uses_mcnemar_for_binary_scores() -> None:
    a = [1] * 10 + [1] * 20 + [0] * 5
    b = [0] * 10 + [1] * 20 + [0] * 5
    result = paired_test(a, b)
    assert result.method == "mcnemar-exact"
    assert (result.a_only, result.b_only, result.n) == (10, 0, 35)
    assert result.p_value == pytest.approx(0.001953125)
    assert result.significant
    assert result.diff == pytest.approx(10 / 35)
    assert result.to_dict()["diff_points"] == pytest.approx(28.57, abs=0.01)


def test_identical_vectors_are_never_significant() -> None:
    scores = [1, 0, 1, 1, 0, 1, 0, 0, 1, 1] * 5
    binary = paired_test(scores, list(scores))
    assert (binary.p_value, binary.significant, binary.diff) == (1.0, False, 0.0)
    graded = [0.5, 0.25, 1.0, 0.0, 0.75] * 8
    boot = paired_test(graded, list(graded))
    assert boot.method == "paired-bootstrap"
    assert (boot.p_value, boot.significant) == (1.0, False)


def test_rows_without_a_score_are_dropped() -> None:
    result = paired_test([1, None, 1, 0], [0, 1, None, 0])
    assert result.n == 2 and (result.a_only, result.b_only) == (1, 0)


def test_paired_bootstrap_separates_a_clear_difference_from_noise() -> None:
    a = [0.9, 0.8, 0.85, 0.95, 0.7, 0.9, 0.8, 0.75, 0.85, 0.9] * 4
    shifted = [x - 0.3 for x in a]
    assert paired_bootstrap(a, [x + 0.01 * ((i % 3) - 1) - 0.3 for i, x in enumerate(a)]) < 0.001
    # A constant shift on every row: as strong as the resamples can show.
    assert paired_bootstrap(a, shifted) == pytest.approx(1 / 2001)
    noise = [x + (0.1 if i % 2 else -0.1) for i, x in enumerate(a)]
    assert paired_bootstrap(a, noise) > 0.5
    result = paired_test(a, noise)
    assert result.method == "paired-bootstrap" and not result.significant


def test_paired_bootstrap_is_deterministic_for_a_seed() -> None:
    a = [0.2, 0.5, 0.9, 0.4, 0.6, 0.1, 0.8, 0.3]
    b = [0.3, 0.4, 0.7, 0.5, 0.5, 0.2, 0.6, 0.3]
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)


def test_method_choice_and_errors() -> None:
    assert paired_test([1, 0], [0, 0], method="bootstrap").method == "paired-bootstrap"
    with pytest.raises(ValueError, match="0/1 scores"):
        paired_test([0.5, 1], [0, 1], method="mcnemar")
    with pytest.raises(ValueError, match="differ in length"):
        paired_test([1, 0], [1])
    with pytest.raises(ValueError, match="unknown method"):
        paired_test([1], [1], method="t-test")
