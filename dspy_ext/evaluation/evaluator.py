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
* repeated sampling (``repeats`` rollouts at ``temperature`` > 0) with a mean
  and 95% confidence interval;
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

from dspy_ext.evaluation.stats import MeanCI, mean_ci
from dspy_ext.lm.errors import context_overflow_in
from dspy_ext.lm.metering import CallMeter, UsageSnapshot, find_budget_exhausted, metering
from dspy_ext.prompt_state import content_hash, demo_to_dict, program_fingerprint

logger = logging.getLogger(__name__)

Metric = Callable[..., Any]


class ErrorKind(str, enum.Enum):
    """Why a row has no ordinary score."""

    LM = "lm_error"            # the LM or its transport failed (not the prompt's fault)
    CONTEXT = "context_overflow"  # the prompt does not fit the model's context window
    PARSE = "parse_error"      # the reply could not be parsed into the output fields: scores 0
    METRIC = "metric_error"    # the metric raised
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


def metric_value(value: Any) -> float:
    """Turn a metric's return (bool, number, or ``dspy.Prediction(score=...)``) into a float."""
    if isinstance(value, dspy.Prediction) or hasattr(value, "score"):
        value = value.score
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    raise TypeError(f"metric returned {type(value).__name__}; expected bool, a number or Prediction(score=...)")


def example_key(example: dspy.Example) -> str:
    """A stable key of an example's content."""
    return content_hash(demo_to_dict(example))


@dataclass
class RowResult:
    """The outcome of one (example, repeat)."""

    index: int
    repeat: int
    score: float | None
    prediction: dict[str, Any] | None = None
    error: ErrorKind | None = None
    message: str = ""


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
        return [
            (sum(by_index[i]) / len(by_index[i])) if i in by_index else None for i in range(self.n_examples)
        ]

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

    def to_dict(self) -> dict[str, Any]:
        ci = self.ci
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
        }


def _run_context_key() -> str:
    lm = dspy.settings.lm
    adapter = dspy.settings.adapter
    lm_id = (getattr(lm, "model", None), tuple(sorted((getattr(lm, "kwargs", None) or {}).items())))
    adapter_id = (type(adapter).__name__, sorted(vars(adapter).items()) if adapter is not None else None)
    return content_hash([lm_id, adapter_id])


class Evaluator:
    """Scores programs on examples; one instance per (metric, run).

    Args:
        metric: ``metric(example, prediction, trace=None)`` returning a bool,
            number in [0, 1] or ``dspy.Prediction(score=...)``.
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
        jobs = [(i, k) for k in range(repeats) for i in range(len(examples))]
        rows: list[RowResult] = []
        hits = 0
        pending = []
        for i, k in jobs:
            key = (*base_key, example_key(examples[i]), k)
            cached = self._cache.get(key) if self.use_cache else None
            if cached is not None:
                rows.append(RowResult(i, k, cached.score, cached.prediction, cached.error, cached.message))
                hits += 1
            else:
                pending.append((i, k, key))

        own = CallMeter()
        stop = threading.Event()

        def run(i: int, k: int, key: tuple) -> RowResult | None:
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
                row = self._score_row(program, examples[i], i, k)
            if row is None:  # budget exhausted
                stop.set()
                return None
            if self.use_cache and row.error in (None, ErrorKind.PARSE):
                with self._cache_lock:
                    self._cache[key] = row
            return row

        bar = None
        if self.progress and pending:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(pending), desc=desc, leave=False)
        with metering(own):
            with metering(meter) if meter is not None else contextlib.nullcontext():
                if self.num_threads == 1 or len(pending) <= 1:
                    for i, k, key in pending:
                        row = run(i, k, key)
                        if row is not None:
                            rows.append(row)
                        if bar is not None:
                            bar.update(1)
                        if stop.is_set():
                            break
                else:
                    with ThreadPoolExecutor(self.num_threads) as pool:
                        futures = [pool.submit(contextvars.copy_context().run, run, i, k, key) for i, k, key in pending]
                        for future in futures:
                            row = future.result()
                            if row is not None:
                                rows.append(row)
                            if bar is not None:
                                bar.update(1)
        if bar is not None:
            bar.close()
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
        failures = {k: v for k, v in report.errors.items() if v}
        if failures:
            first = next(r for r in rows if r.error is not None)
            logger.warning("%s: %s (first: %s: %s)", desc, failures, first.error.value, first.message[:200])
        return report

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
            score = metric_value(self.metric(example, prediction))
        except Exception as exc:
            return RowResult(i, k, None, _jsonable(outputs), ErrorKind.METRIC, f"{type(exc).__name__}: {exc}")
        return RowResult(i, k, score, _jsonable(outputs))


def _jsonable(outputs: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v) for k, v in outputs.items()}
