"""A study in an experiment tracker: each trial as a member of the study's record, and the study's figures.

``tune(settings)`` with ``settings.tracking`` records the study as one
:class:`~dspy_ext.experiment.tracking.GroupTracker` record (an MLflow parent run): after its trials,
each trial this run saw finish becomes a :class:`~dspy_ext.experiment.tracking.ChildRecord`
(:func:`trial_child`: its sampled params, its value and spend), and the study's figures and files
close the record (:func:`study_end`). Trials are read from the study, so the trials of every worker
process are recorded, each once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from dspy_ext.experiment.tracking import ChildRecord, GroupEnd
from dspy_ext.tuning.summary import TuneSummary

#: A finished trial's state, as the status of its record (a pruned trial was stopped early).
_STATUS: dict[str, Literal["FINISHED", "FAILED", "KILLED"]] = {
    "COMPLETE": "FINISHED",
    "PRUNED": "KILLED",
    "FAIL": "FAILED",
}

#: Files of the study's out dir stored with its record (those that exist).
STUDY_FILES = ("summary.json", "tune.png", "best_program.json", "best_trial.json", "settings.yaml")


def trial_child(trial: Any, criteria: list[str]) -> ChildRecord | None:
    """The record of a finished Optuna trial (``None`` for one still running or waiting).

    Params: the trial's sampled params (``optimizer`` and its knobs). Metrics: ``value`` (a study of
    several criteria: ``value/<criterion>`` each), the trial's ``lm_calls``, ``tokens``, ``usd`` and
    ``seconds`` when known, and its minibatch scores as ``intermediate/<step>``. Tags: its number,
    state and optimizer.
    """
    status = _STATUS.get(trial.state.name)
    if status is None:
        return None
    metrics: dict[str, float] = {}
    if trial.values is not None:
        if len(trial.values) == 1:
            metrics["value"] = trial.values[0]
        else:
            metrics.update({f"value/{name}": value for name, value in zip(criteria, trial.values)})
    attrs = trial.user_attrs
    for key in ("lm_calls", "tokens", "usd", "seconds"):
        if isinstance(attrs.get(key), (int, float)):
            metrics[key] = attrs[key]
    for step, value in sorted(trial.intermediate_values.items()):
        metrics[f"intermediate/{step}"] = value
    tags = {
        "dspy_ext.trial_number": str(trial.number),
        "dspy_ext.trial_state": trial.state.name.lower(),
        "dspy_ext.optimizer": str(attrs.get("optimizer") or trial.params.get("optimizer", "")),
    }
    return ChildRecord(f"trial-{trial.number}", dict(trial.params), metrics, status, tags)


def study_end(summary: TuneSummary, out_dir: Path | None) -> GroupEnd:
    """What a tracker stores of a finished tune: the study's counts, best value and test scores, its files."""
    metrics: dict[str, float] = {
        "trials": summary.n_trials,
        "complete_trials": summary.n_complete,
        "pruned_trials": summary.n_pruned,
        "failed_trials": summary.n_failed,
        "total_lm_calls": summary.total_lm_calls,
    }
    if summary.best_value is not None:
        metrics["best_value"] = summary.best_value
    if summary.test is not None:
        metrics["test_score"] = summary.test.test_score
        metrics["baseline_test_score"] = summary.test.baseline_test_score
    files = tuple(out_dir / name for name in STUDY_FILES) if out_dir is not None else ()
    return GroupEnd(metrics, files)
