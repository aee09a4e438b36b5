"""A whole tune as one library call: :func:`tune` (what ``dspy-ext tune`` runs).

``tune(settings)`` opens (or resumes) the study, runs its remaining trials on
``settings.workers`` processes, saves the best program, scores it and the
student on the task's test split, draws ``tune.png`` and writes
``summary.json`` and ``settings.yaml`` next to the study. ``settings.yaml`` is
a run file: ``dspy-ext tune --config <out dir>/settings.yaml`` resumes the same
study.

Example:
    >>> from dspy_ext.experiment import TuneSettings
    >>> from dspy_ext.tuning import tune
    >>> result = tune(TuneSettings(task="sentiment", optimizers=["ape", "bfsrs"], trials=8, budget=60))
    ...                                                                                   # doctest: +SKIP
    >>> result.summary, result.program        # what summary.json holds, and the best trial's program  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy

from dspy_ext.evaluation import Evaluator
from dspy_ext.experiment import TuneSettings
from dspy_ext.experiment.tracking import GroupStart, GroupTracker, open_group_tracker, tracked
from dspy_ext.files import atomic_write_text
from dspy_ext.lm.metering import CallMeter, metering
from dspy_ext.tuning.job import TuneJob
from dspy_ext.tuning.report import save_plot
from dspy_ext.tuning.results import StudyResults
from dspy_ext.tuning.storage import dashboard_command, sqlite_path
from dspy_ext.tuning.study import TuneSession
from dspy_ext.tuning.summary import TuneSummary, TuneTest
from dspy_ext.tuning.tracking import study_end, trial_child
from dspy_ext.tuning.workers import TuneProgress, run_workers

logger = logging.getLogger(__name__)

#: The resolved settings, written next to the study (a run file that resumes it).
SETTINGS_FILE = "settings.yaml"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "tune.png"


@dataclass
class TuneResult:
    """What :func:`tune` did.

    Attributes:
        summary: A :class:`TuneSummary`: :meth:`StudyResults.summary` plus this run's figures
            (``n_trials_this_run``, ``workers``, ``task``, ``lm``, ``adapter``, ``train``, ``val``,
            ``seconds_this_run``, ``best_program``, test scores, ``plot``, ``dashboard``, ``max_cost``,
            ``cost_cap_reached``); :meth:`TuneSummary.to_dict` is ``summary.json``.
        job: The main process's :class:`TuneJob`.
        session: Its :class:`TuneSession`.
        failed_workers: Workers that exited with an error.
    """

    summary: TuneSummary
    job: TuneJob
    session: TuneSession
    failed_workers: list[str]

    @property
    def results(self) -> StudyResults:
        return self.session.results

    @property
    def program(self) -> dspy.Module | None:
        """The best trial's program (``None``: no complete feasible trial yet)."""
        return self.results.best_program() if self.results.best_trial() is not None else None


def tune(
    settings: TuneSettings,
    *,
    lm: dspy.BaseLM | None = None,
    progress: bool = False,
    on_progress: Callable[[TuneProgress], None] | None = None,
    worker_init: Callable[[], None] | None = None,
    tracker: GroupTracker | None = None,
) -> TuneResult:
    """Run (or resume) the tune of ``settings`` and write its files (see the module docstring); track it if asked.

    Args:
        settings: What to tune.
        lm: An LM to use instead of ``make_lm(settings.lm)`` (one process only: ``workers`` must be 1).
        progress: Show the evaluator's progress bars (test scoring) on stderr.
        on_progress: Called with a :class:`TuneProgress` as trials finish.
        worker_init: Called first in every worker process (see :func:`run_workers`).
        tracker: Where the study is tracked (default: what ``settings.tracking`` asks for): a parent
            record with the study's files, each trial that finished in this run a child record of it.

    Returns:
        A :class:`TuneResult`.

    Raises:
        TuningSpaceError: The space cannot work (before any storage, data or LM is touched).
        ValueError: Bad settings for this study (an LM object with several workers, an in-memory
            study with several workers, a stored study created with another space or other data).
    """
    if lm is not None and settings.workers > 1:
        raise ValueError("an LM object cannot be sent to worker processes; with workers > 1 give settings.lm")
    started = time.perf_counter()
    group = tracker if tracker is not None else open_group_tracker(settings.tracking)
    job = TuneJob.from_settings(settings, lm=lm)
    session = job.open()
    results = session.results
    trials_before = results.counts()["all"]
    seen = {trial.number for trial in results.study.get_trials(deepcopy=False) if trial.state.is_finished()}
    _write_settings(job, results.out_dir)
    start = GroupStart("tune", results.study_name, job.components.task.name, settings, results.out_dir)
    with tracked(group, start):
        failed = run_workers(job, session, on_progress=on_progress, worker_init=worker_init)
        summary = _summary(job, results, trials_before, started, progress=progress)
        if results.out_dir is not None:
            text = json.dumps(summary.to_dict(), indent=2, default=str) + "\n"
            atomic_write_text(results.out_dir / SUMMARY_FILE, text)
        _record_trials(group, results, seen)
        group.finish(study_end(summary, results.out_dir))
    return TuneResult(summary, job, session, failed)


def _record_trials(group: GroupTracker, results: StudyResults, seen: set[int]) -> None:
    """Each trial of the study that finished after ``seen`` (numbers of trials finished before), as a child record."""
    for trial in results.study.get_trials(deepcopy=False):
        child = trial_child(trial, results.criteria) if trial.number not in seen else None
        if child is not None:
            group.record(child)


def _summary(job: TuneJob, results: StudyResults, trials_before: int, started: float, *, progress: bool) -> TuneSummary:
    """What ``summary.json`` holds: the study's summary, this run's figures, the best program and its test scores."""
    settings = job.settings
    study = results.summary(top=settings.top)
    seconds = round(time.perf_counter() - started, 2)
    best_path = results.save_best()
    test = (
        score_on_test(job, results.best_program(), progress=progress)
        if results.best_trial() is not None and settings.test and job.components.task.test
        else None
    )
    return TuneSummary.of(
        study,
        n_trials_this_run=study.n_trials - trials_before,
        workers=settings.workers,
        task=job.components.task.name,
        lm=job.components.lm.model,
        adapter=job.components.adapter_name,
        train=len(job.trainset),
        val=len(job.devset),
        seconds_this_run=seconds,
        max_cost=settings.max_cost,
        cost_cap_reached=settings.max_cost is not None and study.spent_usd >= settings.max_cost,
        best_program=str(best_path) if best_path else None,
        test=test,
        plot=_plot(results),
        dashboard=dashboard_command(job.tuner.storage_url),
    )


def score_on_test(job: TuneJob, program: dspy.Module, *, progress: bool = False) -> TuneTest:
    """Score ``program`` and the student on the task's test split (scores 0-100)."""
    test_rows = job.components.task.test
    meter = CallMeter()
    evaluator = Evaluator(job.components.metric, num_threads=job.settings.threads, progress=progress)
    with job.components.context(), metering(meter):
        test = evaluator.evaluate(program, test_rows, desc="best on test")
        baseline = evaluator.evaluate(job.student, test_rows, desc="student on test")
    return TuneTest(
        test_score=round(test.score, 2),
        baseline_test_score=round(baseline.score, 2),
        test_n=len(test_rows),
        test_lm_calls=meter.calls,
    )


def _plot(results: StudyResults) -> str | None:
    if results.out_dir is None:
        return None
    try:
        path = save_plot(results, results.out_dir / PLOT_FILE)
    except Exception as exc:  # a plot must never lose a finished study's results
        logger.warning("could not draw the plot: %s", exc)
        return None
    return str(path) if path else None


def _write_settings(job: TuneJob, out_dir: Path | None) -> None:
    """The settings with the study, a SQLite storage, the space file and the out dir made explicit."""
    if out_dir is None:
        return
    settings, tuner = job.settings, job.tuner
    changes: dict[str, Any] = {"study": tuner.study_name, "out": str(out_dir)}
    if sqlite_path(tuner.storage_url) is not None:
        changes["storage"] = tuner.storage_url  # absolute: the same study from any folder
    if settings.space:
        changes["space"] = str(Path(settings.space).resolve())
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / SETTINGS_FILE, settings.with_changes(**changes).to_yaml())
