"""Regression guards: no criterion may drop by more than its tolerance against a reference program.

A guard maps criterion names to tolerances in points (0-100 scale):
``{"format": 0.0, "short": 2.0}`` means the format criterion may not drop at
all and ``short`` by at most 2 points, against the reference program (the
student by default). Drops are measured *paired*: on the rows both programs
were scored on, row by row.

* **Deterministic outputs** (one rollout per row at temperature 0): a
  candidate breaks the guard when its mean on the shared rows is below the
  reference's minus the tolerance. At tolerance 0 the returned program can
  never score below the reference on a guarded criterion.
* **Stochastic outputs** (temperature > 0 or several repeats): per-row values
  are means over the repeats, and a drop beyond the tolerance counts only when
  a one-sided paired sign-flip permutation test rejects "the mean drop is at
  most the tolerance" at level ``alpha``; sampling noise is not taken for a
  regression. Detecting a small real regression then needs enough rows x
  repeats: the report gives the p-value of every check.

The criterion ``score`` always exists: it is the metric's scalar objective, so
``{"score": 0}`` guards a one-number metric too.

:class:`RegressionGuard` works on per-row criteria keyed by row; the search
(:class:`~dspy_ext.search.run.SearchRun`) and the registry's acceptance gate
around DSPy's optimizers both use it.

Example:
    >>> guard = RegressionGuard({"format": 0.0})
    >>> ref = {"a": {"format": 1.0}, "b": {"format": 1.0}}
    >>> cand = {"a": {"format": 1.0}, "b": {"format": 0.0}}
    >>> verdict = guard.check(ref, cand)
    >>> verdict.ok, verdict.describe()
    (False, 'format dropped 50.0 points (tolerance 0.0) on 2 rows')
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dspy

from dspy_ext.evaluation import EvaluationReport, Evaluator, example_key, mean_ci, paired_test
from dspy_ext.lm.metering import CallMeter, metering
from dspy_ext.prompt_state import attach_record, program_fingerprint

logger = logging.getLogger(__name__)

#: Per-row criteria: row key -> criterion -> value in [0, 1].
RowCriteria = Mapping[str, Mapping[str, float]]

#: The criterion every metric has: its scalar objective.
SCORE = "score"

#: Below this many paired rows the sign-flip test enumerates every sign pattern exactly.
EXACT_LIMIT = 12

_EPS = 1e-9


def row_criteria(report: EvaluationReport, examples: Sequence[dspy.Example]) -> dict[str, dict[str, float]]:
    """``report``'s per-example criteria (means over repeats, plus ``score``) keyed by example.

    Examples with no scored repeat are left out.
    """
    per_example = report.example_criteria
    scores = report.example_scores
    out: dict[str, dict[str, float]] = {}
    for i, values in enumerate(per_example):
        if values is None:
            continue
        row = dict(values)
        if scores[i] is not None:
            row.setdefault(SCORE, scores[i])
        out[example_key(examples[i])] = row
    return out


def is_sampled(lm: Any, temperature: float | None) -> bool:
    """Whether ``lm``'s outputs are sampled: ``temperature`` (else the LM's own) is above 0."""
    lm_temperature = (getattr(lm, "kwargs", None) or {}).get("temperature") or 0.0
    return (temperature if temperature is not None else lm_temperature) > 0


def one_sided_sign_flip(diffs: Sequence[float], *, n_resamples: int = 2000, seed: int = 0) -> float:
    """P-value of "the mean of ``diffs`` is <= 0" against "> 0", by sign-flip permutation.

    Under the null each paired difference is as likely to have either sign. The p-value is the share
    of sign patterns whose mean is at least the observed one (exact for up to :data:`EXACT_LIMIT`
    rows, else ``n_resamples`` random patterns with the usual +1 correction).

    Example:
        >>> round(one_sided_sign_flip([1.0] * 6), 4)
        0.0156
        >>> one_sided_sign_flip([0.0, 0.0])
        1.0
    """
    n = len(diffs)
    if n == 0:
        return 1.0
    observed = sum(diffs) / n
    if observed <= 0:
        return 1.0
    if n <= EXACT_LIMIT:
        hits = sum(
            1
            for signs in itertools.product((1, -1), repeat=n)
            if sum(s * d for s, d in zip(signs, diffs, strict=True)) / n >= observed - _EPS
        )
        return hits / 2**n
    rng = random.Random(seed)
    hits = sum(
        1 for _ in range(n_resamples) if sum(d if rng.random() < 0.5 else -d for d in diffs) / n >= observed - _EPS
    )
    return (hits + 1) / (n_resamples + 1)


@dataclass(frozen=True)
class CriterionCheck:
    """One criterion of one candidate against the reference, on their shared rows.

    Attributes:
        criterion: The criterion's name.
        reference: The reference's mean (0-100) on the shared rows.
        candidate: The candidate's mean (0-100) on the same rows.
        n: Shared rows.
        tolerance: Points the criterion may drop (``None``: not guarded).
        p_value: One-sided p-value of a drop beyond the tolerance (stochastic guards only).
        broken: The drop exceeds the tolerance (significantly, for stochastic guards).
    """

    criterion: str
    reference: float
    candidate: float
    n: int
    tolerance: float | None
    p_value: float | None
    broken: bool

    @property
    def drop(self) -> float:
        """Points lost against the reference (negative: a gain)."""
        return self.reference - self.candidate

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": round(self.reference, 2),
            "candidate": round(self.candidate, 2),
            "drop": round(self.drop, 2),
            "tolerance": self.tolerance,
            "n": self.n,
            "p_value": None if self.p_value is None else round(self.p_value, 4),
            "broken": self.broken,
        }


@dataclass(frozen=True)
class GuardVerdict:
    """Every guarded criterion of one candidate: ``ok`` when none is broken."""

    checks: dict[str, CriterionCheck]

    @property
    def ok(self) -> bool:
        return not self.broken

    @property
    def broken(self) -> dict[str, CriterionCheck]:
        return {name: c for name, c in self.checks.items() if c.broken}

    @property
    def n(self) -> int:
        return max((c.n for c in self.checks.values()), default=0)

    def describe(self) -> str:
        """One line: each broken criterion with its drop and tolerance (``"ok"`` when none)."""
        if self.ok:
            return "ok"
        return (
            "; ".join(
                f"{c.criterion} dropped {c.drop:.1f} points (tolerance {c.tolerance:.1f})"
                + (f", p={c.p_value:.3f}" if c.p_value is not None else "")
                for c in self.broken.values()
            )
            + f" on {self.n} rows"
        )

    def to_log(self) -> dict[str, Any]:
        """The trial log's ``guard`` entry: ``ok``, rows, and every broken criterion with its drop."""
        return {
            "ok": self.ok,
            "n": self.n,
            "broken": {
                name: {
                    "drop": round(c.drop, 2),
                    "tolerance": c.tolerance,
                    "reference": round(c.reference, 2),
                    "candidate": round(c.candidate, 2),
                    **({"p_value": round(c.p_value, 4)} if c.p_value is not None else {}),
                }
                for name, c in self.broken.items()
            },
        }


class RegressionGuard:
    """Rejects programs whose guarded criteria drop beyond their tolerance against a reference.

    Args:
        tolerances: ``{criterion: points}`` (0-100 scale, >= 0); ``score`` names the scalar objective.
        stochastic: Outputs are sampled (temperature > 0 or repeats > 1): a drop counts only when a
            one-sided paired sign-flip test finds it significant at ``alpha``.
        alpha: Significance level of the stochastic test.
        n_resamples: Random sign patterns when there are more than :data:`EXACT_LIMIT` rows.
        seed: Seed of those patterns.

    Raises:
        ValueError: No tolerances, a name that is not text, or a tolerance outside [0, 100].

    Example:
        >>> guard = RegressionGuard({"format": 0.0, "short": 2.0})
        >>> guard.validate(["correct", "format", "short"])
        >>> guard.validate(["correct"])
        Traceback (most recent call last):
        ...
        ValueError: guards name format, short, which the metric does not return (criteria: correct, score)
    """

    def __init__(
        self,
        tolerances: Mapping[str, float],
        *,
        stochastic: bool = False,
        alpha: float = 0.05,
        n_resamples: int = 2000,
        seed: int = 0,
    ) -> None:
        self.tolerances = parse_guards(tolerances)
        if not self.tolerances:
            raise ValueError("a regression guard needs at least one criterion, e.g. {'format': 0}")
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        self.stochastic = stochastic
        self.alpha = alpha
        self.n_resamples = n_resamples
        self.seed = seed

    def validate(self, names: Iterable[str]) -> None:
        """Check that every guarded criterion is one the metric returns (``score`` always is).

        Raises:
            ValueError: One line naming the unknown guards and the metric's criteria.
        """
        known = [*dict.fromkeys(names)]
        if SCORE not in known:
            known.append(SCORE)
        unknown = [name for name in self.tolerances if name not in known]
        if unknown:
            raise ValueError(
                f"guards name {', '.join(unknown)}, which the metric does not return (criteria: {', '.join(known)})"
            )

    def _paired(self, reference: RowCriteria, candidate: RowCriteria, name: str) -> list[tuple[float, float]]:
        return [
            (reference[k][name], candidate[k][name])
            for k in reference
            if k in candidate and name in reference[k] and name in candidate[k]
        ]

    def check_one(self, name: str, pairs: Sequence[tuple[float, float]], tolerance: float | None) -> CriterionCheck:
        """Check one criterion on paired (reference, candidate) values in [0, 1]."""
        n = len(pairs)
        ref = 100.0 * sum(a for a, _ in pairs) / n if n else 0.0
        cand = 100.0 * sum(b for _, b in pairs) / n if n else 0.0
        if tolerance is None or n == 0:
            return CriterionCheck(name, ref, cand, n, tolerance, None, False)
        beyond = ref - cand > tolerance + _EPS
        if not self.stochastic:
            return CriterionCheck(name, ref, cand, n, tolerance, None, beyond)
        diffs = [a - b - tolerance / 100.0 for a, b in pairs]
        p = one_sided_sign_flip(diffs, n_resamples=self.n_resamples, seed=self.seed)
        return CriterionCheck(name, ref, cand, n, tolerance, p, beyond and p < self.alpha)

    def check(self, reference: RowCriteria, candidate: RowCriteria) -> GuardVerdict:
        """Every guarded criterion of ``candidate`` against ``reference`` on their shared rows."""
        return GuardVerdict(
            {
                name: self.check_one(name, self._paired(reference, candidate, name), tol)
                for name, tol in self.tolerances.items()
            }
        )

    def report(
        self, reference: RowCriteria, candidate: RowCriteria, *, labels: tuple[str, str] = ("reference", "compiled")
    ) -> dict[str, Any]:
        """Every criterion, guarded or not: both means with a 95% CI, the paired drop and test.

        Returns:
            ``{criterion: {reference: {mean, ci95}, compiled: {mean, ci95}, drop, n, p_value (two-sided
            paired test), tolerance, broken}}``; the two keys are ``labels``.
        """
        names = list(dict.fromkeys(name for rows in (reference, candidate) for row in rows.values() for name in row))
        names = [n for n in names if n != SCORE] + [SCORE]
        out: dict[str, Any] = {}
        for name in names:
            pairs = self._paired(reference, candidate, name)
            if not pairs:
                continue
            check = self.check_one(name, pairs, self.tolerances.get(name))
            a = mean_ci([100.0 * x for x, _ in pairs])
            b = mean_ci([100.0 * y for _, y in pairs])
            test = paired_test([x for x, _ in pairs], [y for _, y in pairs])
            out[name] = {
                labels[0]: {"mean": round(a.mean, 2), "ci95": round(a.half_width, 2)},
                labels[1]: {"mean": round(b.mean, 2), "ci95": round(b.half_width, 2)},
                "drop": round(check.drop, 2),
                "n": check.n,
                "p_value": round(test.p_value, 4),
                "tolerance": check.tolerance,
                "broken": check.broken,
                **({"p_one_sided": round(check.p_value, 4)} if check.p_value is not None else {}),
            }
        return out


def parse_guards(value: Mapping[str, Any] | Iterable[str] | None) -> dict[str, float]:
    """Guards from a mapping ``{name: points}`` or ``"name=points"`` strings (the CLI's ``--guard``).

    Raises:
        ValueError: A malformed entry, a repeated name, or a tolerance that is not a number in [0, 100].

    Example:
        >>> parse_guards(["format=0", "short=2.5"])
        {'format': 0.0, 'short': 2.5}
    """
    if value is None:
        return {}
    if isinstance(value, str):
        value = [value]
    items: list[tuple[Any, Any]] = []
    if isinstance(value, Mapping):
        items = list(value.items())
    else:
        seen: set[str] = set()
        for entry in value:
            name, sep, points = str(entry).partition("=")
            if not sep or not name.strip():
                raise ValueError(f"guard {entry!r}: expected CRITERION=POINTS, e.g. format=0")
            if name.strip() in seen:
                raise ValueError(f"guard {name.strip()!r} is given twice")
            seen.add(name.strip())
            items.append((name.strip(), points.strip()))
    out: dict[str, float] = {}
    for name, points in items:
        if not isinstance(name, str) or not name:
            raise ValueError(f"guard names must be criterion names, got {name!r}")
        try:
            tolerance = float(points)
        except (TypeError, ValueError):
            raise ValueError(f"guard {name!r}: tolerance {points!r} is not a number of points") from None
        if not (0.0 <= tolerance <= 100.0) or math.isnan(tolerance):
            raise ValueError(f"guard {name!r}: tolerance {tolerance} is outside 0-100 points")
        out[name] = tolerance
    return out


class AcceptanceGate:
    """Guards around any optimizer: after its compile, the compiled program must keep every guard.

    The student and the compiled program are scored on the same rows (the valset) per criterion.
    If a guard breaks, the gate returns the best candidate that keeps every guard, among those the
    optimizer exposes (``candidate_programs``, best first, as DSPy's BootstrapFewShotWithRandomSearch
    and MIPROv2 attach them), else the student. The returned program carries the gate's report
    (``compile_record(program).gate``).

    Args:
        metric: The task metric (criteria as in :mod:`dspy_ext.evaluation.criteria`).
        guards: ``{criterion: points}``.
        num_threads: Evaluation threads.
        repeats: Rollouts per row (the stochastic test when above 1).
        temperature: Task-LM temperature of the gate's rollouts (``None``: the LM's own; above 0, the
            stochastic test).
        max_candidates: At most this many of the optimizer's other candidates are tried.

    Example:
        >>> gate = AcceptanceGate(metric, {"format": 0.0})                        # doctest: +SKIP
        >>> program = gate.check(student, dspy.MIPROv2(metric).compile(student, trainset=train), val)  # doctest: +SKIP
        >>> compile_record(program).gate["returned"]                              # doctest: +SKIP
        'student'
    """

    def __init__(
        self,
        metric: Any,
        guards: Mapping[str, float],
        *,
        num_threads: int = 4,
        repeats: int = 1,
        temperature: float | None = None,
        max_candidates: int = 8,
        seed: int = 0,
    ) -> None:
        self.metric = metric
        self.guards = parse_guards(guards)
        if not self.guards:
            raise ValueError("an acceptance gate needs at least one guard, e.g. {'format': 0}")
        if repeats < 1:
            raise ValueError("repeats must be >= 1")
        self.num_threads = num_threads
        self.repeats = repeats
        self.temperature = temperature
        self.max_candidates = max_candidates
        self.seed = seed

    def _guard(self) -> RegressionGuard:
        sampled = is_sampled(dspy.settings.lm, self.temperature)
        return RegressionGuard(self.guards, stochastic=sampled or self.repeats > 1, seed=self.seed)

    def check(self, student: dspy.Module, compiled: dspy.Module, rows: Sequence[dspy.Example]) -> dspy.Module:
        """The compiled program if it keeps every guard on ``rows``, else the best guarded candidate or the student.

        Raises:
            ValueError: ``rows`` is empty, or a guard names a criterion the metric does not return.
        """
        if not rows:
            raise ValueError("the acceptance gate needs rows to score (a valset)")
        scoring = _GateScoring(self, list(rows))
        reference = scoring.criteria_on(student, "student")
        if reference:
            scoring.guard.validate(next(iter(reference.values())))
        compiled_rows = scoring.criteria_on(compiled, "compiled")
        verdict = scoring.guard.check(reference, compiled_rows)
        chosen, chosen_rows, returned = compiled, compiled_rows, "compiled"
        tried: list[dict[str, Any]] = []
        if not verdict.ok:
            chosen, chosen_rows, returned = self._replacement(scoring, student, compiled, reference, tried)
            logger.warning(
                "acceptance gate: the compiled program breaks a guard (%s); returning the %s",
                verdict.describe(),
                returned,
            )
        if chosen is student:
            chosen = copy.deepcopy(student)  # the caller's student is never annotated
        attach_record(
            chosen,
            gate={
                "accepted": verdict.ok,
                "returned": returned,
                "tolerances": dict(self.guards),
                "stochastic": scoring.guard.stochastic,
                "repeats": self.repeats,
                "split": "val",
                "n": len(scoring.rows),
                "compiled_verdict": verdict.to_log(),
                "candidates_tried": tried,
                "criteria": scoring.guard.report(reference, chosen_rows),
                "lm_calls": scoring.meter.calls,
            },
        )
        return chosen

    def _replacement(
        self,
        scoring: _GateScoring,
        student: dspy.Module,
        compiled: dspy.Module,
        reference: dict[str, dict[str, float]],
        tried: list[dict[str, Any]],
    ) -> tuple[dspy.Module, dict[str, dict[str, float]], str]:
        """The optimizer's first other candidate that keeps every guard, else the student (``tried`` is filled)."""
        seen = {program_fingerprint(compiled), program_fingerprint(student)}
        for entry in _candidates(compiled)[: self.max_candidates]:
            program = entry["program"]
            fingerprint = program_fingerprint(program)
            if fingerprint in seen:
                continue
            seen.add(fingerprint)
            rows_of = scoring.criteria_on(program, f"candidate{len(tried)}")
            other = scoring.guard.check(reference, rows_of)
            tried.append({"optimizer_score": entry.get("score"), "guard": other.to_log()})
            if other.ok:
                return program, rows_of, f"candidate {len(tried)} of the optimizer"
        return student, reference, "student"


class _GateScoring:
    """One gate check's guard, evaluator and meter: per-row criteria of a program on the gate's rows."""

    def __init__(self, gate: AcceptanceGate, rows: list[dspy.Example]) -> None:
        self.gate = gate
        self.rows = rows
        self.guard = gate._guard()
        self.evaluator = Evaluator(gate.metric, num_threads=gate.num_threads)
        self.meter = CallMeter()

    def criteria_on(self, program: dspy.Module, label: str) -> dict[str, dict[str, float]]:
        with metering(self.meter):
            report = self.evaluator.evaluate(
                program, self.rows, repeats=self.gate.repeats, temperature=self.gate.temperature, desc=f"gate:{label}"
            )
        return row_criteria(report, self.rows)


def _candidates(program: dspy.Module) -> list[dict[str, Any]]:
    """The candidates an optimizer attached to its result, best first (``[]`` when it attached none)."""
    found = getattr(program, "candidate_programs", None)
    if not isinstance(found, list):
        return []
    out = []
    for entry in found:
        if isinstance(entry, dict) and isinstance(entry.get("program"), dspy.Module):
            out.append(entry)
        elif isinstance(entry, dspy.Module):
            out.append({"program": entry})
    return out
