"""Run a study's remaining trials on N local processes: this one and ``N - 1`` spawned workers.

Each worker is a fresh interpreter (the ``spawn`` start method: no forked LM
state or threads) that builds its own :class:`~dspy_ext.tuning.job.TuneJob` from
the same picklable :class:`~dspy_ext.experiment.TuneSettings` and joins the study
through its storage, which is why ``workers > 1`` needs a SQLite file or a
database URL. The remaining trials are split evenly; Optuna's
``MaxTrialsCallback`` stops everyone at the study's target (it may overshoot by
``workers - 1`` trials that were already running).

A worker that dies loses only its running trial (heartbeats re-queue it, see
:mod:`dspy_ext.tuning.storage`); Ctrl-C in this process terminates the workers.

Example:
    >>> job = TuneJob.from_settings(settings)                                    # doctest: +SKIP
    >>> failed = run_workers(job, job.open(), on_progress=print)                 # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dspy_ext.experiment import TuneSettings
from dspy_ext.tuning.job import TuneJob
from dspy_ext.tuning.results import StudyResults
from dspy_ext.tuning.study import TuneSession

logger = logging.getLogger(__name__)

#: Seconds between progress reports while waiting for the workers.
POLL_SECONDS = 2.0


@dataclass(frozen=True)
class TuneProgress:
    """Where a study stands, for a progress display.

    Attributes:
        finished: Complete + pruned trials in the study (every process's).
        target: The study's target of finished trials.
        best_value: The best trial's primary value (``None``: no complete feasible trial yet).
        best_number: The best trial's number.
        best_optimizer: The best trial's optimizer.
    """

    finished: int
    target: int
    best_value: float | None = None
    best_number: int | None = None
    best_optimizer: str | None = None

    @classmethod
    def of(cls, results: StudyResults, target: int) -> TuneProgress:
        best = results.best_trial()
        if best is None:
            return cls(results.counts()["finished"], target)
        return cls(
            results.counts()["finished"],
            target,
            best.values[results.primary_index],
            best.number,
            best.user_attrs.get("optimizer"),
        )


def run_workers(
    job: TuneJob,
    session: TuneSession,
    *,
    on_progress: Callable[[TuneProgress], None] | None = None,
    worker_init: Callable[[], None] | None = None,
) -> list[str]:
    """Run the study's remaining trials (up to ``settings.trials``) on ``settings.workers`` processes.

    Args:
        job: This process's job (its settings are sent to the workers).
        session: This process's session on the study.
        on_progress: Called with a :class:`TuneProgress` after each of this process's trials and every
            :data:`POLL_SECONDS` while waiting for the workers.
        worker_init: Called first in every worker process (a picklable callable, e.g. one that sets up
            the worker's logging); ``None``: nothing.

    Returns:
        The names of workers that exited with an error (their finished trials are in the study).

    Raises:
        KeyboardInterrupt: After terminating the workers.
    """
    settings = job.settings
    target = settings.trials

    def report(*_: Any) -> None:
        if on_progress is not None:
            on_progress(TuneProgress.of(session.results, target))

    remaining = max(0, target - session.results.counts()["finished"])
    per_worker = math.ceil(remaining / settings.workers)
    report()
    if not remaining:
        return []
    procs = _spawn(settings, per_worker, worker_init) if settings.workers > 1 else []
    try:
        job.optimize(session, max_trials=per_worker, callbacks=[report])
        while any(p.is_alive() for p in procs):
            report()
            for p in procs:
                p.join(timeout=POLL_SECONDS)
    except KeyboardInterrupt:
        stop_workers(procs)
        raise
    report()
    failed = [p.name for p in procs if p.exitcode not in (0, None)]
    if failed:
        logger.warning("worker(s) %s exited with an error; their finished trials are in the study", ", ".join(failed))
    return failed


def _spawn(settings: TuneSettings, max_trials: int, worker_init: Callable[[], None] | None) -> list[Any]:
    return spawn_workers(
        settings.workers, _worker_main, lambda index: (settings, index, max_trials, worker_init), "tune-worker"
    )


def stop_workers(procs: list[Any]) -> None:
    """Terminate the worker processes ``procs`` and wait for them (after Ctrl-C in the main process)."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.join()


def spawn_workers(workers: int, target: Callable[..., None], args: Callable[[int], tuple], name: str) -> list[Any]:
    """Start ``workers - 1`` processes ``target(*args(index))``, index 1, 2, ..., named ``NAME-INDEX``.

    Each is a fresh interpreter (the ``spawn`` start method: no forked LM state or threads), so
    ``target`` and its arguments must be picklable.
    """
    ctx = multiprocessing.get_context("spawn")
    procs = []
    for index in range(1, workers):
        proc = ctx.Process(target=target, args=args(index), name=f"{name}-{index}")
        proc.start()
        procs.append(proc)
    return procs


def _worker_main(
    settings: TuneSettings, worker_index: int, max_trials: int, worker_init: Callable[[], None] | None
) -> None:
    """A worker process: join the study and run up to ``max_trials`` trials."""
    if worker_init is not None:
        worker_init()
    job = TuneJob.from_settings(settings, worker_index=worker_index)
    job.optimize(job.open(), max_trials=max_trials)
