"""Tracking a compile in an experiment tracker: the :class:`Tracker` the experiment calls, and its no-op default.

:func:`~dspy_ext.experiment.run` calls its tracker at two points, and at a third when the compile fails:

* :meth:`Tracker.start` - the run folder is claimed and the settings are resolved; nothing is spent yet;
* :meth:`Tracker.finish` - ``run.json``, ``report.md``, ``program.json`` and ``trials.jsonl`` are written;
* :meth:`Tracker.fail` - the compile raised (a model that stopped answering, an interrupt, a bug).

A comparison or a study is tracked by a :class:`GroupTracker`: one record of its own (an MLflow parent
run) with its settings, its tables and plots, and one child record per cell or trial: a cell's compile
is tracked by the :class:`Tracker` :meth:`GroupTracker.child` gives, a study's trial is a
:class:`ChildRecord`. :func:`open_group_tracker` gives the group tracker of a ``tracking`` setting.

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
from typing import Any, Literal, Protocol, runtime_checkable

import dspy

from dspy_ext.experiment.components import Components
from dspy_ext.experiment.settings import ExperimentSettings, RunSettings, TrackingSettings
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
    """The default tracker of a compile, a comparison and a study: records nothing (nor do its children)."""

    def start(self, start: CompileStart | GroupStart) -> None:
        return None

    def finish(self, end: CompileEnd | GroupEnd) -> None:
        return None

    def fail(self, error: BaseException) -> None:
        return None

    def child(self) -> NoTracker:
        return NoTracker()

    def record(self, child: ChildRecord) -> None:
        return None


@dataclass(frozen=True)
class GroupStart:
    """What a group tracker is told before a comparison or a study starts.

    Attributes:
        kind: ``compare`` or ``tune`` (the tag ``dspy_ext.kind``).
        name: The record's name (the comparison's folder, the study's name).
        task: The task's name (the default experiment name).
        settings: The comparison's or the study's settings (its params).
        folder: Where it writes its files (``None``: nowhere, an in-memory study).
    """

    kind: Literal["compare", "tune"]
    name: str
    task: str
    settings: ExperimentSettings
    folder: Path | None


@dataclass(frozen=True)
class GroupEnd:
    """What a group tracker is told once a comparison or a study is done.

    Attributes:
        metrics: Its figures (``test_mean/<optimizer>``, ``best_value``, ...).
        files: Its tables and plots, stored as artifacts (files that do not exist are left out).
    """

    metrics: dict[str, float]
    files: tuple[Path, ...]


@dataclass(frozen=True)
class ChildRecord:
    """One finished member of a group that is not a compile of its own (a study's trial).

    Attributes:
        name: The record's name (``trial-3``).
        params: What it tried (a trial's sampled params).
        metrics: What it scored (a trial's value, its LM calls).
        status: ``FINISHED``, ``FAILED`` or ``KILLED`` (a pruned trial).
        tags: More about it (``dspy_ext.state``, ...).
    """

    name: str
    params: dict[str, Any]
    metrics: dict[str, float]
    status: Literal["FINISHED", "FAILED", "KILLED"]
    tags: dict[str, str]


@runtime_checkable
class GroupTracker(Protocol):
    """Records a comparison or a study and its members elsewhere; never raises for a store it cannot reach."""

    def start(self, start: GroupStart) -> None:
        """Open the group's record and store its settings."""

    def child(self) -> Tracker:
        """A tracker whose compile is recorded as a member of the group (call it after :meth:`start`)."""

    def record(self, child: ChildRecord) -> None:
        """Store one member of the group that is not a compile (a study's trial)."""

    def finish(self, end: GroupEnd) -> None:
        """Store the group's figures and files, and close its record."""

    def fail(self, error: BaseException) -> None:
        """Close the record of a group that raised ``error``."""


def open_group_tracker(tracking: TrackingSettings | None) -> GroupTracker:
    """The group tracker ``tracking`` asks for (:class:`NoTracker` when it is ``None``).

    Raises:
        SettingsError: ``tracking.mlflow`` is given and MLflow is not installed (the message names the extra).
    """
    if tracking is None:
        return NoTracker()
    from dspy_ext.experiment.mlflow_tracking import MlflowGroupTracker

    return MlflowGroupTracker(tracking)


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
def tracked(tracker: Tracker | GroupTracker, start: CompileStart | GroupStart) -> Iterator[None]:
    """Start ``tracker`` on the compile, comparison or study; tell it when the block raises (the error goes on)."""
    tracker.start(start)
    try:
        yield
    except BaseException as exc:
        tracker.fail(exc)
        raise
