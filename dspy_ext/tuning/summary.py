"""What a tuning study found and what one tune did, typed; ``to_dict()`` is ``summary.json``.

:class:`StudySummary` is :meth:`StudyResults.summary <dspy_ext.tuning.results.StudyResults.summary>`
(the study, whoever ran its trials); :class:`TuneSummary` adds what one :func:`~dspy_ext.tuning.tune`
did (this run's trials, the data, the best program's file and test scores, the plot). Their
``to_dict()`` keeps the keys and order ``summary.json`` has always had.

Example:
    >>> result = tune(settings)                                                    # doctest: +SKIP
    >>> result.summary.best_value, result.summary.n_trials, result.summary.test    # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True, kw_only=True)
class StudySummary:
    """The study in figures: its best trial, counts, spend and top trials.

    ``best_trial`` and ``top_trials`` are trial records (:func:`~dspy_ext.tuning.results.trial_record`);
    ``pareto_front`` is set in ``pareto`` studies, ``n_infeasible`` in ``constraints`` ones.
    """

    study: str
    storage: str
    objective: str
    criteria: list[str]
    primary: str
    best_value: float | None
    best_values: dict[str, float] | None
    best_trial: dict[str, Any] | None
    #: The student on the devset: ``criteria`` means, ``score``, ``lm_calls`` and ``errors``.
    baseline: dict[str, Any]
    #: Every trial, whatever its state.
    n_trials: int
    n_complete: int
    n_pruned: int
    n_failed: int
    n_running: int
    n_waiting: int
    target_trials: int
    total_lm_calls: int
    #: The trials' USD (``None``: a price is unknown).
    total_usd: float | None
    #: What the cost cap counted (unknown prices as 0).
    spent_usd: float
    out_dir: str | None
    top_trials: list[dict[str, Any]]
    pareto_front: list[dict[str, Any]] | None = None
    n_infeasible: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The study's part of ``summary.json``."""
        optional = ("pareto_front", "n_infeasible")
        out = {f.name: getattr(self, f.name) for f in fields(StudySummary) if f.name not in optional}
        for name in optional:
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


@dataclass(frozen=True)
class TuneTest:
    """The best program and the student on the task's test split."""

    test_score: float
    baseline_test_score: float
    test_n: int
    test_lm_calls: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "test_score": self.test_score,
            "baseline_test_score": self.baseline_test_score,
            "test_n": self.test_n,
            "test_lm_calls": self.test_lm_calls,
        }


@dataclass(frozen=True, kw_only=True)
class TuneSummary(StudySummary):
    """What :func:`~dspy_ext.tuning.tune` did: the study's summary plus this run's figures (``summary.json``)."""

    n_trials_this_run: int
    workers: int
    task: str
    lm: str
    adapter: str
    train: int
    val: int
    seconds_this_run: float
    max_cost: float | None
    cost_cap_reached: bool
    #: ``best_program.json`` (``None``: no complete feasible trial yet).
    best_program: str | None
    #: The test scores (``None``: not scored).
    test: TuneTest | None
    #: ``tune.png`` (``None``: not drawn).
    plot: str | None
    #: The ``optuna-dashboard`` command that opens the study.
    dashboard: str

    @classmethod
    def of(cls, study: StudySummary, **this_run: Any) -> TuneSummary:
        """``study`` with this run's figures."""
        return cls(**{f.name: getattr(study, f.name) for f in fields(StudySummary)}, **this_run)

    def to_dict(self) -> dict[str, Any]:
        """``summary.json``: the same keys, values and order the file has always had."""
        return {
            **super().to_dict(),
            "n_trials_this_run": self.n_trials_this_run,
            "workers": self.workers,
            "task": self.task,
            "lm": self.lm,
            "adapter": self.adapter,
            "train": self.train,
            "val": self.val,
            "seconds_this_run": self.seconds_this_run,
            "max_cost": self.max_cost,
            "cost_cap_reached": self.cost_cap_reached,
            "best_program": self.best_program,
            **(self.test.to_dict() if self.test is not None else {}),
            "plot": self.plot,
            "dashboard": self.dashboard,
        }
