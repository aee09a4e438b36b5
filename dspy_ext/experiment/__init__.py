"""The experiment layer: one compile as a library call, settings as a run file, run folders read back.

* :class:`RunSettings` (and :class:`CompareSettings`, :class:`TuneSettings`): typed, validated
  settings with every default written once, loadable from a YAML/TOML/JSON run file;
* :func:`run`: compile, score on the test split, write the run folder;
* :func:`open_run`: read a run folder back (settings, task, LM, compiled program);
* :mod:`~dspy_ext.experiment.components`: programs and metrics by built-in name or import path.

The CLI only turns flags into settings and prints; research code calls this layer directly.

Example:
    >>> from dspy_ext.experiment import RunSettings, run
    >>> settings = RunSettings(task="sentiment", optimizer="ape", budget=100, seed=0, out="runs/ape")  # doctest: +SKIP
    >>> result = run(settings)                                                                        # doctest: +SKIP
    >>> result.summary.scores.test, result.program                                                    # doctest: +SKIP
"""

from __future__ import annotations

from dspy_ext.experiment.components import (
    ComponentError,
    Components,
    build_components,
    build_student,
    import_object,
    labeled_demos,
    load_program_state,
    resolve_metric,
)
from dspy_ext.experiment.folder import OpenedRun, open_run
from dspy_ext.experiment.report import render_report
from dspy_ext.experiment.run import RunResult, run
from dspy_ext.experiment.settings import (
    DEFAULT_BUDGET,
    CompareSettings,
    ExperimentSettings,
    RunSettings,
    SettingsError,
    TuneSettings,
    read_run_file,
)
from dspy_ext.experiment.summary import CriteriaFigures, ReviewFigures, RoleSpend, RunSummary, Scores, Spend

__all__ = [
    "DEFAULT_BUDGET",
    "CompareSettings",
    "ComponentError",
    "Components",
    "CriteriaFigures",
    "ExperimentSettings",
    "OpenedRun",
    "ReviewFigures",
    "RoleSpend",
    "RunResult",
    "RunSettings",
    "RunSummary",
    "Scores",
    "SettingsError",
    "Spend",
    "TuneSettings",
    "build_components",
    "build_student",
    "import_object",
    "labeled_demos",
    "load_program_state",
    "open_run",
    "read_run_file",
    "render_report",
    "resolve_metric",
    "run",
]
