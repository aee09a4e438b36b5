"""What one run found, typed: scores, spend, criteria, review figures; ``to_dict()`` is ``run.json``.

:class:`RunSummary` is :attr:`RunResult.summary <dspy_ext.experiment.run.RunResult.summary>`; its
parts are small frozen dataclasses (:class:`Scores`, :class:`Spend`, :class:`CriteriaFigures`,
:class:`ReviewFigures`). :meth:`RunSummary.to_dict` gives ``run.json`` key for key, in its order, and
:meth:`RunSummary.from_dict` reads one back (older folders may lack keys: those are ``None``).

Example:
    >>> result = run(RunSettings(task="sentiment", optimizer="ape", budget=60))     # doctest: +SKIP
    >>> result.summary.scores.test, result.summary.spend.lm_calls                     # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dspy_ext.lm.metering import CallMeter


@dataclass(frozen=True)
class RoleSpend:
    """The calls, tokens and USD of one model role (``task`` or ``prompt``)."""

    calls: int = 0
    failed_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    usd: float | None = None

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "failed_calls": self.failed_calls,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "usd": self.usd,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoleSpend:
        """A role's spend from JSON; missing counters (older records) are 0, a missing USD unknown."""
        return cls(
            calls=int(data.get("calls") or 0),
            failed_calls=int(data.get("failed_calls") or 0),
            input_tokens=int(data.get("input_tokens") or 0),
            output_tokens=int(data.get("output_tokens") or 0),
            usd=data.get("usd"),
        )


@dataclass(frozen=True)
class Spend:
    """A compile's calls, tokens and USD, in all and by role, with what was projected before it ran."""

    lm_calls: int
    failed_calls: int
    tokens: int
    input_tokens: int
    output_tokens: int
    usd: float | None
    by_role: dict[str, RoleSpend]
    #: :meth:`~dspy_ext.experiment.projection.Projection.to_dict` of the projection made before the run.
    projection: dict[str, Any]

    @classmethod
    def measure(cls, meter: CallMeter, projection: Any) -> Spend:
        """What ``meter`` counted, with ``projection`` (a :class:`~dspy_ext.experiment.projection.Projection`)."""
        usage = meter.snapshot()
        return cls(
            lm_calls=usage.calls,
            failed_calls=usage.failed_calls,
            tokens=usage.total_tokens,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            usd=usage.usd,
            by_role={
                role: RoleSpend(u.calls, u.failed_calls, u.input_tokens, u.output_tokens, u.usd)
                for role, u in meter.by_role().items()
            },
            projection=projection.to_dict(),
        )

    def role_calls(self, role: str) -> int:
        """The calls of ``role`` (0 when it made none)."""
        part = self.by_role.get(role)
        return part.calls if part is not None else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "lm_calls": self.lm_calls,
            "failed_calls": self.failed_calls,
            "tokens": self.tokens,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "usd": self.usd,
            "by_role": {role: part.to_dict() for role, part in self.by_role.items()},
            "projection": self.projection,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Spend:
        roles = data.get("by_role") or {}
        return cls(
            lm_calls=data.get("lm_calls") or 0,
            failed_calls=data.get("failed_calls") or 0,
            tokens=data.get("tokens") or 0,
            input_tokens=data.get("input_tokens") or 0,
            output_tokens=data.get("output_tokens") or 0,
            usd=data.get("usd"),
            by_role={role: RoleSpend.from_dict(part) for role, part in roles.items() if isinstance(part, dict)},
            projection=data.get("projection") or {},
        )


@dataclass(frozen=True)
class Scores:
    """The test, validation and baseline scores (0-100) of a run."""

    val: float
    test: float
    baseline_test: float
    #: What the baseline is, in words (the labeled-demo student).
    baseline: str
    zero_shot_test: float

    @property
    def gain(self) -> float:
        """Points of the compiled program over the labeled-demo baseline on the test split."""
        return self.test - self.baseline_test

    def to_dict(self) -> dict[str, Any]:
        return {
            "val_score": self.val,
            "test_score": self.test,
            "baseline_test_score": self.baseline_test,
            "baseline": self.baseline,
            "zero_shot_test_score": self.zero_shot_test,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scores:
        return cls(
            val=data.get("val_score"),
            test=data.get("test_score"),
            baseline_test=data.get("baseline_test_score"),
            baseline=data.get("baseline", "the student with labeled demos"),
            zero_shot_test=data.get("zero_shot_test_score"),
        )


@dataclass(frozen=True)
class CriteriaFigures:
    """The per-criterion tables, the guard report and the repeated-rollout figures of a run (each optional).

    Attributes:
        criteria: ``{criterion: {"student": mean, "compiled": mean}}`` on the test split.
        val_criteria: The same on the validation rows.
        guard_report: ``tolerances``, ``val`` (the compile's report) and ``test`` (measured by the run).
        repeats: Pass rates, mean with CI and the rows that pass only sometimes.
    """

    criteria: dict[str, dict[str, float]] | None = None
    val_criteria: dict[str, dict[str, float]] | None = None
    guard_report: dict[str, Any] | None = None
    repeats: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.criteria:
            out["criteria"] = self.criteria
            out["val_criteria"] = self.val_criteria
        if self.guard_report is not None:
            out["guard_report"] = self.guard_report
        if self.repeats is not None:
            out["repeats"] = self.repeats
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CriteriaFigures:
        return cls(
            criteria=data.get("criteria"),
            val_criteria=data.get("val_criteria"),
            guard_report=data.get("guard_report"),
            repeats=data.get("repeats"),
        )


@dataclass(frozen=True)
class ReviewFigures:
    """What a compile from human review (``--feedback``) reports.

    Attributes:
        criteria: The review's table on the test split (student vs compiled); ``run.json`` shows it only
            when the run's metric has no criteria of its own.
        feedback: What the review gave (:meth:`~dspy_ext.experiment.feedback.FeedbackMerge.summary`).
        pinned: The pinned cases' check (outputs graded Good, re-run on the compiled program).
    """

    criteria: dict[str, dict[str, float]]
    feedback: dict[str, Any]
    pinned: dict[str, Any]


@dataclass(frozen=True)
class RunSummary:
    """What ``run.json`` holds, typed; :meth:`to_dict` is the file's content (same keys, same order).

    ``spend``, ``seconds`` and ``budget_exhausted`` are the compile's alone (test scoring excluded).
    """

    task: str
    program: str
    metric: str
    optimizer: str
    seed: int
    budget: int
    budget_enforced: bool
    #: The optimizer's resolved settings.
    config: dict[str, Any]
    lm: str
    adapter: str
    #: Rows of the train, val and test splits.
    train: int
    val: int
    test: int
    scores: Scores
    spend: Spend
    max_cost: float | None
    cost_cap_reached: bool
    seconds: float
    budget_exhausted: bool
    replayed_calls: int
    test_errors: dict[str, int]
    data_hash: str
    #: The run folder.
    out: str
    #: The dspy-ext search's own summary (``None`` for DSPy's optimizers).
    search: dict[str, Any] | None = None
    figures: CriteriaFigures = field(default_factory=CriteriaFigures)
    review: ReviewFigures | None = None

    @property
    def criteria(self) -> dict[str, dict[str, float]]:
        """The per-criterion table shown for the run: its metric's, else the review's (``{}``: none)."""
        if self.figures.criteria:
            return self.figures.criteria
        return self.review.criteria if self.review is not None else {}

    def to_dict(self) -> dict[str, Any]:
        """``run.json``: the same keys, values and order the file has always had."""
        out: dict[str, Any] = {
            "task": self.task,
            "program": self.program,
            "metric": self.metric,
            "optimizer": self.optimizer,
            "seed": self.seed,
            "budget": self.budget,
            "budget_enforced": self.budget_enforced,
            "config": self.config,
            "lm": self.lm,
            "adapter": self.adapter,
            "train": self.train,
            "val": self.val,
            "test": self.test,
            **self.scores.to_dict(),
            **self.spend.to_dict(),
            "max_cost": self.max_cost,
            "cost_cap_reached": self.cost_cap_reached,
            "seconds": self.seconds,
            "budget_exhausted": self.budget_exhausted,
            "replayed_calls": self.replayed_calls,
            "test_errors": self.test_errors,
            "data_hash": self.data_hash,
            "out": self.out,
        }
        if self.search is not None:
            out["search"] = self.search
        out.update(self.figures.to_dict())
        if self.review is not None:
            if not self.figures.criteria:  # the run's own table is kept; a one-number metric gets the review's
                out["criteria"] = self.review.criteria
            out["feedback"] = self.review.feedback
            out["pinned"] = self.review.pinned
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSummary:
        """A summary from ``run.json`` (keys an older run did not record are ``None``)."""
        figures = CriteriaFigures.from_dict(data)
        review = None
        if "pinned" in data:
            review = ReviewFigures(
                criteria=data.get("criteria") or {}, feedback=data.get("feedback") or {}, pinned=data["pinned"]
            )
            if figures.val_criteria is None:  # the table is the review's, not the metric's
                figures = CriteriaFigures(None, None, figures.guard_report, figures.repeats)
        return cls(
            task=data.get("task"),
            program=data.get("program"),
            metric=data.get("metric"),
            optimizer=data.get("optimizer"),
            seed=data.get("seed"),
            budget=data.get("budget"),
            budget_enforced=data.get("budget_enforced"),
            config=data.get("config"),
            lm=data.get("lm"),
            adapter=data.get("adapter"),
            train=data.get("train"),
            val=data.get("val"),
            test=data.get("test"),
            scores=Scores.from_dict(data),
            spend=Spend.from_dict(data),
            max_cost=data.get("max_cost"),
            cost_cap_reached=data.get("cost_cap_reached"),
            seconds=data.get("seconds"),
            budget_exhausted=data.get("budget_exhausted"),
            replayed_calls=data.get("replayed_calls"),
            test_errors=data.get("test_errors"),
            data_hash=data.get("data_hash"),
            out=data.get("out"),
            search=data.get("search"),
            figures=figures,
            review=review,
        )


@dataclass(frozen=True)
class StoppedSummary:
    """The ``run.json`` of a run stopped by a model that stopped answering: why, and what was spent."""

    task: str | None
    optimizer: str
    seed: int
    stopped: str
    spend: Spend
    seconds: float
    out: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "optimizer": self.optimizer,
            "seed": self.seed,
            "stopped": self.stopped,
            **self.spend.to_dict(),
            "seconds": self.seconds,
            "out": self.out,
        }
