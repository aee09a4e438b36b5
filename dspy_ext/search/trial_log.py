"""The trial log: one JSONL row per evaluated candidate, shared by every method."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dspy_ext.evaluation import EvaluationReport
from dspy_ext.lm.metering import CallMeter, UsageSnapshot
from dspy_ext.search.candidate import Candidate


@dataclass(frozen=True)
class Trial:
    """One row of a trial log, read back: what was scored, on which split, and the compile's calls by then.

    Attributes:
        trial: The row's number (0, 1, ...).
        split: ``train`` (a search minibatch), ``val``, or ``screen`` (DemoSearch's likelihood screen).
        score: The candidate's score on those rows.
        calls_so_far: The compile's LM calls when the row was logged (``None`` in logs written without a meter).
        time: When it was logged (seconds since the epoch).
    """

    trial: int
    split: str
    score: float
    calls_so_far: int | None
    time: float

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Trial:
        calls = row.get("calls_so_far")
        return cls(
            trial=int(row["trial"]),
            split=str(row["split"]),
            score=float(row["score"]),
            calls_so_far=None if calls is None else int(calls),
            time=float(row["time"]),
        )


def read_trials(path: str | Path) -> Iterator[Trial]:
    """The rows of the trial log ``path`` (a ``trials.jsonl``), in the order they were logged."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield Trial.from_row(json.loads(line))


class TrialLog:
    """Appends a row per evaluation to a JSONL file (and keeps rows in memory).

    Each row holds the candidate's instructions, demo sets, parents and origin
    (the method step that made it), the split and size it was scored on, its
    score and errors, the LM calls and tokens that evaluation cost, and (with a
    ``meter``) the compile's LM calls so far (``calls_so_far``).

    Args:
        path: JSONL file to append to, or ``None`` to keep rows in memory only.
        meter: The compile's meter, read for ``calls_so_far`` (``None``: the key is ``None``).
    """

    def __init__(self, path: str | Path | None = None, *, meter: CallMeter | None = None) -> None:
        self.path = Path(path) if path else None
        self.meter = meter
        self.rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    @classmethod
    def fresh(cls, path: str | Path | None, *, meter: CallMeter | None = None) -> TrialLog:
        """A log that starts empty: an earlier ``path`` (a previous compile's log) is deleted first."""
        if path is not None and Path(path).exists():
            Path(path).unlink()
        return cls(path, meter=meter)

    def record(
        self,
        candidate: Candidate,
        report: EvaluationReport,
        *,
        method: str,
        step: int,
        split: str,
        running_mean: float | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Log one evaluation of ``candidate`` and return the row."""
        return self.record_score(
            candidate,
            n=report.n_examples,
            score=report.score,
            usage=report.usage,
            seconds=report.seconds,
            errors=report.errors,
            cache_hits=report.cache_hits,
            method=method,
            step=step,
            split=split,
            running_mean=running_mean,
            **extra,
        )

    def record_score(
        self,
        candidate: Candidate,
        *,
        n: int,
        score: float,
        usage: UsageSnapshot,
        seconds: float,
        method: str,
        step: int,
        split: str,
        errors: dict[str, int] | None = None,
        cache_hits: int = 0,
        running_mean: float | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Log a score of ``candidate`` that is not an evaluation report (e.g. a likelihood screen)."""
        row = {
            "trial": len(self.rows),
            "time": round(time.time(), 3),
            "method": method,
            "step": step,
            **candidate.to_dict(),
            "split": split,
            "n": n,
            "score": round(score, 2),
            "running_mean": None if running_mean is None else round(running_mean, 2),
            "errors": {k: v for k, v in (errors or {}).items() if v},
            "lm_calls": usage.calls,
            "tokens": usage.total_tokens,
            "cache_hits": cache_hits,
            "seconds": round(seconds, 3),
            **extra,
        }
        with self._lock:
            row["calls_so_far"] = self.meter.calls if self.meter is not None else None
            self.rows.append(row)
            if self.path is not None:
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        return row
