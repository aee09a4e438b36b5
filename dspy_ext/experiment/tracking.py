"""Tracking a compile in an experiment tracker: the :class:`Tracker` the experiment calls, and its no-op default.

:func:`~dspy_ext.experiment.run` calls its tracker at two points, and at a third when the compile fails:

* :meth:`Tracker.start` - the run folder is claimed and the settings are resolved; nothing is spent yet;
* :meth:`Tracker.finish` - ``run.json``, ``report.md``, ``program.json`` and ``trials.jsonl`` are written;
* :meth:`Tracker.fail` - the compile raised (a model that stopped answering, an interrupt, a bug).

A tracker only reads what the run computed: tracking never changes a score, a call or a file of the
run folder, and a tracker that cannot reach its store says so once and lets the compile finish.
:func:`open_tracker` gives the tracker the settings ask for: :class:`NoTracker` without ``tracking``,
an :class:`~dspy_ext.experiment.mlflow_tracking.MlflowTracker` with ``tracking.mlflow``.

Example:
    >>> settings = RunSettings(task="sentiment", tracking={"mlflow": "sqlite:///mlflow.db"})  # doctest: +SKIP
    >>> run(settings)  # one MLflow run in the experiment "sentiment"                       # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import dspy

from dspy_ext.experiment.components import Components
from dspy_ext.experiment.settings import RunSettings
from dspy_ext.experiment.summary import RunSummary


@dataclass(frozen=True)
class CompileStart:
    """What a tracker is told before the compile: the resolved settings and where the run writes.

    Attributes:
        settings: The run's resolved settings (``settings.yaml``).
        task: The task's name (the default experiment name).
        config: The optimizer's resolved config (every key, defaults filled in).
        data_hash: The fingerprint of the train and val rows (``run.json``'s ``data_hash``).
        folder: The run folder.
    """

    settings: RunSettings
    task: str
    config: dict[str, Any]
    data_hash: str
    folder: Path


@dataclass(frozen=True)
class CompileEnd:
    """What a tracker is told once the run folder is complete.

    Attributes:
        summary: The run's summary (``run.json``).
        program: The compiled program.
        folder: The run folder (``program.json``, ``report.md``, ``trials.jsonl``, ...).
        components: The task, LM and adapter the program runs with (for its prompt artifact).
    """

    summary: RunSummary
    program: dspy.Module
    folder: Path
    components: Components


@runtime_checkable
class Tracker(Protocol):
    """Records one compile elsewhere (an MLflow run, ...); never raises for a store it cannot reach."""

    def start(self, start: CompileStart) -> None:
        """Open the record of the compile and store its settings."""

    def finish(self, end: CompileEnd) -> None:
        """Store the compile's trials, figures, files and program, and close its record."""

    def fail(self, error: BaseException) -> None:
        """Close the record of a compile that raised ``error``."""


class NoTracker:
    """The default tracker: records nothing."""

    def start(self, start: CompileStart) -> None:
        return None

    def finish(self, end: CompileEnd) -> None:
        return None

    def fail(self, error: BaseException) -> None:
        return None


def open_tracker(settings: RunSettings) -> Tracker:
    """The tracker ``settings.tracking`` asks for (:class:`NoTracker` when it is ``None``).

    Raises:
        SettingsError: ``tracking.mlflow`` is given and MLflow is not installed (the message names the extra).
    """
    if settings.tracking is None:
        return NoTracker()
    from dspy_ext.experiment.mlflow_tracking import MlflowTracker

    return MlflowTracker(settings.tracking)


@contextlib.contextmanager
def tracked(tracker: Tracker, start: CompileStart) -> Iterator[None]:
    """Start ``tracker`` on the compile; tell it when the block raises (the error goes on)."""
    tracker.start(start)
    try:
        yield
    except BaseException as exc:
        tracker.fail(exc)
        raise
