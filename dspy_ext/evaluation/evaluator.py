"""The evaluator every dspy-ext optimizer uses.

It scores a program on examples with threads and keeps what DSPy's
``Evaluate`` does not:

* a score cache keyed by (prompt state of the program, LM, adapter, example,
  repeat), so re-scoring a candidate on rows it has seen costs nothing;
* exact LM-call and token counts under threads (see :mod:`dspy_ext.lm.metering`);
* error classes: an LM/infrastructure failure, a prompt too long for the
  model's context window, an unparseable reply, a metric that raises and a
  program bug are counted apart. Only an unparseable reply scores 0 (the
  prompt caused it); the others are left out of the mean and reported, so a
  flaky LM cannot make a good candidate look bad;
* named criteria and feedback: a metric may return criteria (see
  :mod:`dspy_ext.evaluation.criteria`); the metric is called once per row and
  every criterion is kept per row and averaged per criterion;
* repeated sampling (``repeats`` rollouts at ``temperature`` > 0) with a mean
  and 95% confidence interval, per-row pass rates and the rows that pass only
  sometimes;
* a hard stop when the call budget runs out, keeping every finished row.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import dspy
from dspy.utils.exceptions import AdapterParseError, LMError

from dspy_ext.evaluation.criteria import measure
from dspy_ext.evaluation.stats import MeanCI, mean_ci
from dspy_ext.lm.errors import context_overflow_in
from dspy_ext.lm.metering import CallMeter, UsageSnapshot, find_budget_exhausted, metering
from dspy_ext.prompt_state import demo_to_dict, program_fingerprint, short_hash

logger = logging.getLogger(__name__)

Metric = Callable[..., Any]


class ErrorKind(str, enum.Enum):
    """Why a row has no ordinary score."""

    LM = "lm_error"  # the LM or its transport failed (not the prompt's fault)
    CONTEXT = "context_overflow"  # the prompt does not fit the model's context window
    PARSE = "parse_error"  # the reply could not be parsed into the output fields: scores 0
    METRIC = "metric_error"  # the metric raised
    PROGRAM = "program_error"  # any other exception inside the program


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def classify_error(exc: BaseException) -> ErrorKind:
    """Map an exception raised while running a program to an :class:`ErrorKind`."""
    chain = list(_chain(exc))
    if context_overflow_in(exc) is not None:
        return ErrorKind.CONTEXT
    if any(isinstance(e, AdapterParseError) for e in chain):
        return ErrorKind.PARSE
    if any(isinstance(e, (LMError, TimeoutError, ConnectionError)) for e in chain):
        return ErrorKind.LM
    return ErrorKind.PROGRAM


def example_key(example: dspy.Example) -> str:
    """A stable key of an example's content."""
    return short_hash(demo_to_dict(example))


@dataclass
class RowResult:
    """The outcome of one (example, repeat).

    Attributes:
        index: The example's position in the evaluated rows.
        repeat: The rollout (0 .. repeats - 1).
        score: The metric's scalar score (0-1), ``None`` when the row failed (see ``error``).
        prediction: The program's outputs.
        error: Why the row has no ordinary score.
        message: The error's one-line text.
        criteria: Every named criterion (0-1) when the metric returns several, else ``None``.
        feedback: The metric's text of feedback on this row, if any.
    """

    index: int
    repeat: int
    score: float | None
    prediction: dict[str, Any] | None = None
    error: ErrorKind | None = None
    message: str = ""
    criteria: dict[str, float] | None = None
    feedback: str | None = None


@dataclass
class EvaluationReport:
    """What an evaluation produced, including partial results when the budget ran out."""

    rows: list[RowResult]
    n_examples: int
    repeats: int
    usage: UsageSnapshot = field(default_factory=UsageSnapshot)
    seconds: float = 0.0
    cache_hits: int = 0
    budget_exhausted: bool = False

    @property
    def complete(self) -> bool:
        return len(self.rows) == self.n_examples * self.repeats

    @property
    def scored(self) -> list[RowResult]:
        return [r for r in self.rows if r.score is not None]

    @property
    def score(self) -> float:
        """Mean score on a 0-100 scale over rows that got a score (0.0 if none did)."""
        scored = self.scored
        return 100.0 * sum(r.score for r in scored) / len(scored) if scored else 0.0

    @property
    def errors(self) -> dict[str, int]:
        counts = Counter(r.error.value for r in self.rows if r.error is not None)
        return {kind.value: counts.get(kind.value, 0) for kind in ErrorKind}

    @property
    def example_scores(self) -> list[float | None]:
        """Per-example mean over repeats, 0-1 (``None`` where no repeat got a score)."""
        by_index: dict[int, list[float]] = {}
        for r in self.scored:
            by_index.setdefault(r.index, []).append(r.score)
        return [(sum(by_index[i]) / len(by_index[i])) if i in by_index else None for i in range(self.n_examples)]

    @property
    def repeat_scores(self) -> list[float]:
        """Score (0-100) of each repeat over the rows it scored."""
        out = []
        for k in range(self.repeats):
            rows = [r.score for r in self.scored if r.repeat == k]
            if rows:
                out.append(100.0 * sum(rows) / len(rows))
        return out

    @property
    def ci(self) -> MeanCI:
        """Mean and 95% CI: across repeats when there are several, else across examples."""
        if self.repeats > 1 and len(self.repeat_scores) > 1:
            return mean_ci(self.repeat_scores)
        values = [100.0 * r.score for r in self.scored]
        return mean_ci(values) if values else MeanCI(0.0, 0.0, 0)

    # ---- criteria ---------------------------------------------------------------------
    @property
    def criteria_names(self) -> list[str]:
        """The criteria the metric returned, in its order (``[]`` for a one-number metric)."""
        names: dict[str, None] = {}
        for r in self.scored:
            for name in r.criteria or ():
                names.setdefault(name)
        return list(names)

    def criteria_means(self) -> dict[str, float]:
        """Each criterion's mean on a 0-100 scale over the scored rows that report it."""
        out = {}
        for name in self.criteria_names:
            values = [r.criteria[name] for r in self.scored if r.criteria and name in r.criteria]
            out[name] = 100.0 * sum(values) / len(values)
        return out

    def criteria_cis(self) -> dict[str, MeanCI]:
        """Each criterion's mean and 95% CI (0-100) over examples (per-example means over repeats)."""
        per_example = self.example_criteria
        out = {}
        for name in self.criteria_names:
            values = [100.0 * c[name] for c in per_example if c is not None and name in c]
            out[name] = mean_ci(values) if values else MeanCI(0.0, 0.0, 0)
        return out

    @property
    def example_criteria(self) -> list[dict[str, float] | None]:
        """Per-example criteria, each the mean over the example's scored repeats (``None``: none scored).

        A one-number metric gives ``{"score": ...}`` per example, so guards can name ``score``.
        """
        sums: dict[int, dict[str, list[float]]] = {}
        for r in self.scored:
            values = r.criteria if r.criteria is not None else {"score": r.score}
            slot = sums.setdefault(r.index, {})
            for name, v in values.items():
                slot.setdefault(name, []).append(v)
        return [
            {name: sum(v) / len(v) for name, v in sums[i].items()} if i in sums else None
            for i in range(self.n_examples)
        ]

    def row(self, index: int, repeat: int = 0) -> RowResult | None:
        """The result of example ``index`` at rollout ``repeat`` (``None`` if it was never run)."""
        return next((r for r in self.rows if r.index == index and r.repeat == repeat), None)

    # ---- repeats ------------------------------------------------------------------------
    @property
    def pass_rates(self) -> list[float | None]:
        """Per example, the share of its scored repeats that passed (score >= 1), ``None`` if none scored."""
        by_index: dict[int, list[float]] = {}
        for r in self.scored:
            by_index.setdefault(r.index, []).append(r.score)
        return [
            sum(1 for s in by_index[i] if s >= 1.0) / len(by_index[i]) if i in by_index else None
            for i in range(self.n_examples)
        ]

    @property
    def flaky(self) -> list[int]:
        """Indices of the examples that pass on some repeats but not on all (stochastic failures)."""
        return [i for i, rate in enumerate(self.pass_rates) if rate is not None and 0.0 < rate < 1.0]

    def to_dict(self) -> dict[str, Any]:
        ci = self.ci
        extra: dict[str, Any] = {}
        means = self.criteria_means()
        if means:
            extra["criteria"] = {name: round(v, 2) for name, v in means.items()}
        if self.repeats > 1:
            extra["pass_rates"] = [None if r is None else round(r, 3) for r in self.pass_rates]
            extra["flaky"] = self.flaky
        return {
            "score": round(self.score, 2),
            "ci95": round(ci.half_width, 2),
            "n": self.n_examples,
            "repeats": self.repeats,
            "scored_rows": len(self.scored),
            "lm_calls": self.usage.calls,
            "input_tokens": self.usage.input_tokens,
            "output_tokens": self.usage.output_tokens,
            "seconds": round(self.seconds, 2),
            "cache_hits": self.cache_hits,
            "errors": self.errors,
            "complete": self.complete,
            "budget_exhausted": self.budget_exhausted,
            **extra,
        }


def _run_context_key() -> str:
    lm = dspy.settings.lm
    adapter = dspy.settings.adapter
    lm_id = (getattr(lm, "model", None), tuple(sorted((getattr(lm, "kwargs", None) or {}).items())))
    adapter_id = (type(adapter).__name__, sorted(vars(adapter).items()) if adapter is not None else None)
    return short_hash([lm_id, adapter_id])


class Evaluator:
    """Scores programs on examples; one instance per (metric, run).

    Args:
        metric: ``metric(example, prediction, trace=None)`` returning a bool, a number in [0, 1],
            a mapping of criteria or ``dspy.Prediction(score=..., criteria=..., feedback=...)``
            (see :mod:`dspy_ext.evaluation.criteria`); it is called once per row.
        num_threads: Worker threads.
        progress: Show a tqdm progress bar (on stderr).
        cache: Keep scores keyed by prompt state and example.

    Example:
        >>> evaluator = Evaluator(exact_match, num_threads=4)       # doctest: +SKIP
        >>> report = evaluator.evaluate(program, devset)             # doctest: +SKIP
        >>> report.score, report.usage.calls, report.errors          # doctest: +SKIP
    """

    def __init__(self, metric: Metric, *, num_threads: int = 1, progress: bool = False, cache: bool = True) -> None:
        if num_threads < 1:
            raise ValueError("num_threads must be >= 1")
        self.metric = metric
        self.num_threads = num_threads
        self.progress = progress
        self.use_cache = cache
        self._cache: dict[tuple, RowResult] = {}
        self._cache_lock = threading.Lock()

    @staticmethod
    def sample(examples: Sequence[dspy.Example], size: int, rng: random.Random) -> list[dspy.Example]:
        """A minibatch of ``size`` examples drawn without replacement with the caller's RNG."""
        if size >= len(examples):
            return list(examples)
        return rng.sample(list(examples), size)

    def evaluate(
        self,
        program: dspy.Module,
        examples: Sequence[dspy.Example],
        *,
        repeats: int = 1,
        temperature: float | None = None,
        meter: CallMeter | None = None,
        desc: str = "evaluate",
    ) -> EvaluationReport:
        """Score ``program`` on ``examples``.

        Args:
            program: The program to run (it is not modified).
            examples: Examples with input keys set.
            repeats: Rollouts per example; with ``repeats > 1`` each repeat uses
                its own ``rollout_id`` so DSPy's cache does not collapse them.
            temperature: LM temperature for the rollouts (``None``: the LM's own).
            meter: An extra meter to charge (e.g. a search budget); the report's
                own usage is always counted.
            desc: Label of the progress bar.

        Returns:
            An :class:`EvaluationReport`; ``budget_exhausted`` is set (and the
            report partial) when a meter's budget ran out.
        """
        if repeats < 1:
            raise ValueError("repeats must be >= 1")
        start = time.perf_counter()
        base_key = (program_fingerprint(program), _run_context_key(), temperature)
        rows, pending = self._cached_rows(base_key, examples, repeats)
        hits = len(rows)
        own = CallMeter()
        stop = threading.Event()

        def run(i: int, k: int, key: tuple) -> RowResult | None:
            return self._run_row(program, examples[i], i, k, key, repeats, temperature, stop)

        with metering(own), metering(meter) if meter is not None else contextlib.nullcontext():
            rows.extend(self._run_pending(run, pending, stop, desc))
        rows.sort(key=lambda r: (r.repeat, r.index))
        report = EvaluationReport(
            rows=rows,
            n_examples=len(examples),
            repeats=repeats,
            usage=own.snapshot(),
            seconds=time.perf_counter() - start,
            cache_hits=hits,
            budget_exhausted=stop.is_set(),
        )
        _warn_failures(report, desc)
        return report

    def _cached_rows(
        self, base_key: tuple, examples: Sequence[dspy.Example], repeats: int
    ) -> tuple[list[RowResult], list[tuple[int, int, tuple]]]:
        """The rows this evaluator scored before (copies), and ``(index, repeat, key)`` of the others."""
        rows: list[RowResult] = []
        pending = []
        for k in range(repeats):
            for i in range(len(examples)):
                key = (*base_key, example_key(examples[i]), k)
                cached = self._cache.get(key) if self.use_cache else None
                if cached is not None:
                    rows.append(
                        RowResult(
                            i,
                            k,
                            cached.score,
                            cached.prediction,
                            cached.error,
                            cached.message,
                            cached.criteria,
                            cached.feedback,
                        )
                    )
                else:
                    pending.append((i, k, key))
        return rows, pending

    def _run_row(
        self,
        program: dspy.Module,
        example: dspy.Example,
        i: int,
        k: int,
        key: tuple,
        repeats: int,
        temperature: float | None,
        stop: threading.Event,
    ) -> RowResult | None:
        """Score one rollout under its own ``rollout_id``/temperature and cache it; ``None`` once ``stop`` is set.

        ``stop`` is set when the budget ran out or the evaluation was interrupted (see :meth:`_run_threaded`).
        """
        if stop.is_set():
            return None
        lm_ctx = {}
        if repeats > 1 or temperature is not None:
            lm = dspy.settings.lm
            overrides = {"rollout_id": k} if repeats > 1 else {}
            if temperature is not None:
                overrides["temperature"] = temperature
            lm_ctx = {"lm": lm.copy(**overrides)}
        with dspy.context(**lm_ctx):
            row = self._score_row(program, example, i, k)
        if row is None:  # budget exhausted
            stop.set()
            return None
        if self.use_cache and row.error in (None, ErrorKind.PARSE):
            with self._cache_lock:
                self._cache[key] = row
        return row

    def _run_pending(
        self,
        run: Callable[[int, int, tuple], RowResult | None],
        pending: list[tuple[int, int, tuple]],
        stop: threading.Event,
        desc: str,
    ) -> list[RowResult]:
        """Run the pending rollouts (in a thread pool when ``num_threads > 1``), with a progress bar if asked."""
        bar = None
        if self.progress and pending:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(pending), desc=desc, leave=False)
        try:
            if self.num_threads > 1 and len(pending) > 1:
                return self._run_threaded(run, pending, stop, bar)
            rows: list[RowResult] = []
            for i, k, key in pending:
                row = run(i, k, key)
                if row is not None:
                    rows.append(row)
                if bar is not None:
                    bar.update(1)
                if stop.is_set():
                    break
            return rows
        finally:
            if bar is not None:
                bar.close()

    def _run_threaded(
        self,
        run: Callable[[int, int, tuple], RowResult | None],
        pending: list[tuple[int, int, tuple]],
        stop: threading.Event,
        bar: Any,
    ) -> list[RowResult]:
        """Run the pending rollouts in a thread pool; an interrupt (Ctrl-C) cancels the queued ones and goes up at once.

        On a ``KeyboardInterrupt`` (or another ``BaseException`` that is not an ``Exception``) while this
        thread waits, or out of a worker, the queued rows are cancelled and ``stop`` is set, so a worker
        that takes a row after that makes no call for it. The rows in flight finish in the background
        (their calls already counted by the meters, their rows kept in the score cache); the pool is not
        waited for (the interpreter joins its threads at exit). No signal handler is installed.
        """
        rows: list[RowResult] = []
        pool = ThreadPoolExecutor(self.num_threads)
        try:
            futures = [pool.submit(contextvars.copy_context().run, run, i, k, key) for i, k, key in pending]
            for future in futures:
                row = future.result()
                if row is not None:
                    rows.append(row)
                if bar is not None:
                    bar.update(1)
        except Exception:
            pool.shutdown(wait=True)
            raise
        except BaseException:
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return rows

    def _score_row(self, program: dspy.Module, example: dspy.Example, i: int, k: int) -> RowResult | None:
        try:
            prediction = program(**example.inputs())
        except Exception as exc:  # classified below; never silently scored
            if find_budget_exhausted(exc) is not None:
                return None
            kind = classify_error(exc)
            # An overflow keeps its own one-line message (token counts), not DSPy's wrapper text.
            message = f"{type(exc).__name__}: {exc}"
            if kind is ErrorKind.CONTEXT:
                overflow = context_overflow_in(exc)
                message = str(getattr(overflow, "message", None) or overflow)
            return RowResult(i, k, 0.0 if kind is ErrorKind.PARSE else None, None, kind, message)
        outputs = dict(prediction.items()) if hasattr(prediction, "items") else {"value": prediction}
        try:
            measured = measure(self.metric, example, prediction)
        except Exception as exc:
            return RowResult(i, k, None, _jsonable(outputs), ErrorKind.METRIC, f"{type(exc).__name__}: {exc}")
        return RowResult(
            i, k, measured.score, _jsonable(outputs), criteria=measured.criteria, feedback=measured.feedback
        )


def _warn_failures(report: EvaluationReport, desc: str) -> None:
    """Log the error counts of a report with some failed rows, and the first failure."""
    failures = {k: v for k, v in report.errors.items() if v}
    if failures:
        first = next(r for r in report.rows if r.error is not None)
        logger.warning("%s: %s (first: %s: %s)", desc, failures, first.error.value, first.message[:200])


def _jsonable(outputs: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v) for k, v in outputs.items()
    }
