"""The settings every dspy-ext optimizer shares, and what an optimizer can do with them.

:class:`CompileOptions` holds the settings that are not an optimizer's own (its own are its config
model): the LM-call budget, the seed, threads, the models, rollouts, guards, a reviewer's
critiques, the trial-log folder, the progress bar and the final selector. It is frozen and checks
every value once, when it is made; the optimizers and the registry only read it.

:class:`Capabilities` says what an optimizer does with those settings (does it enforce the budget,
take a final selector, apply guards itself, which metric form it wants...). The registry reads it
off the optimizer's class, so an optimizer declares it once, next to its code.

Example:
    >>> options = CompileOptions(max_lm_calls=200, seed=3, guards=["format=0"])
    >>> options.guards, options.eval_repeats
    ({'format': 0.0}, 1)
    >>> CompileOptions(repeats=0)
    Traceback (most recent call last):
    ...
    ValueError: repeats must be >= 1, got 0
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dspy_ext.search.config import DEFAULT_BUDGET
from dspy_ext.search.feedback import SearchFeedback
from dspy_ext.search.regression import parse_guards

__all__ = ["Capabilities", "CompileOptions", "GuardMode", "MetricForm"]


@dataclass(frozen=True)
class CompileOptions:
    """The shared settings of one optimizer, validated once.

    Attributes:
        max_lm_calls: Hard cap on LM calls of a compile (task and prompt model together).
        seed: Seeds every random choice; ``0`` is a seed like any other.
        num_threads: Evaluation threads.
        task_model: LM that runs the program (``None``: ``dspy.settings.lm``).
        prompt_model: LM that writes instructions (``None``: the task model).
        repeats: Rollouts per row of every evaluation; selection uses the mean over them.
        eval_temperature: Task-LM temperature of the evaluations (``None``: the LM's own).
        guards: Regression guards ``{criterion: points}``, parsed (a mapping or ``"name=points"`` strings);
            see :mod:`dspy_ext.search.regression`.
        guard_reference: The program guards compare against (``None``: the student).
        guard_repeats: Rollouts per row when guards are set (evaluations then use ``max(repeats, guard_repeats)``).
        feedback: A person's critiques, for the optimizers that use them (``None``: none).
        log_dir: Folder for ``trials.jsonl`` (``None``: in memory only).
        progress: Show a progress bar with the best score and the calls used.
        final_selector: Chooses the returned program among the final contenders, for the optimizers
            whose final choice is pluggable (``None``: the optimizer's default).

    Raises:
        ValueError: A value out of range or of the wrong kind (the message names the setting).
    """

    max_lm_calls: int = DEFAULT_BUDGET
    seed: int = 0
    num_threads: int = 4
    task_model: Any = None
    prompt_model: Any = None
    repeats: int = 1
    eval_temperature: float | None = None
    guards: Mapping[str, float] | Iterable[str] | None = None
    guard_reference: Any = None
    guard_repeats: int = 1
    feedback: SearchFeedback | None = None
    log_dir: str | Path | None = None
    progress: bool = False
    final_selector: Any = None

    def __post_init__(self) -> None:
        for name in ("max_lm_calls", "num_threads", "repeats", "guard_repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_temperature is not None and self.eval_temperature < 0:
            raise ValueError(f"eval_temperature must be >= 0, got {self.eval_temperature}")
        if self.feedback is not None and not isinstance(self.feedback, SearchFeedback):
            raise ValueError(f"feedback must be a SearchFeedback, got {type(self.feedback).__name__}")
        self._check_programs()
        object.__setattr__(self, "guards", parse_guards(self.guards))
        object.__setattr__(self, "feedback", self.feedback or None)
        object.__setattr__(self, "log_dir", Path(self.log_dir) if self.log_dir else None)

    def _check_programs(self) -> None:
        import dspy

        from dspy_ext.search.final_selection import FinalSelector

        if self.final_selector is not None and not isinstance(self.final_selector, FinalSelector):
            raise ValueError(
                f"final_selector must have a select(run, seed_candidate, contenders) method, "
                f"got {type(self.final_selector).__name__}"
            )
        if self.guard_reference is not None and not isinstance(self.guard_reference, dspy.Module):
            raise ValueError(f"guard_reference must be a dspy.Module, got {type(self.guard_reference).__name__}")

    @property
    def eval_repeats(self) -> int:
        """Rollouts per row of every evaluation: ``max(repeats, guard_repeats)`` with guards, else ``repeats``."""
        return max(self.repeats, self.guard_repeats) if self.guards else self.repeats

    @property
    def trial_log_path(self) -> Path | None:
        """``log_dir/trials.jsonl`` (``None`` without a log folder)."""
        return self.log_dir / "trials.jsonl" if self.log_dir else None

    def replace(self, **changes: Any) -> CompileOptions:
        """A copy with ``changes`` (validated like a new one)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def split(cls, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``kwargs`` split into the shared settings (the fields of this class) and the rest."""
        names = {f.name for f in dataclasses.fields(cls)}
        shared = {k: v for k, v in kwargs.items() if k in names}
        return shared, {k: v for k, v in kwargs.items() if k not in names}


class GuardMode(str, enum.Enum):
    """How an optimizer keeps regression guards."""

    #: It checks every candidate against the guards itself (dspy-ext's instruction searches).
    IN_SEARCH = "in_search"
    #: It knows nothing of guards: the registry checks its result with an acceptance gate.
    GATE = "gate"


class MetricForm(str, enum.Enum):
    """The metric an optimizer is given by the registry."""

    #: The metric as written (criteria and feedback included).
    RAW = "raw"
    #: One float per row (:class:`~dspy_ext.registry.ScalarMetric`).
    SCALAR = "scalar"
    #: One float, or ``Prediction(score=, feedback=)`` when the metric has a feedback text (GEPA).
    SCALAR_FEEDBACK = "scalar_feedback"


@dataclass(frozen=True)
class Capabilities:
    """What an optimizer does with the shared settings; the registry builds and checks by these.

    Attributes:
        enforces_budget: ``max_lm_calls`` is a hard cap (else the budget maps to the optimizer's closest setting).
        final_selector: Its final choice is pluggable (``final_selector=``; also the tuning space's
            ``final_selection`` knob).
        guards: Whether it applies guards itself or is wrapped in an acceptance gate.
        metric: The metric form it is given.
        takes_feedback: It uses a person's critiques (``feedback=``).
        takes_valset: Its ``compile`` takes a ``valset``.
    """

    enforces_budget: bool = False
    final_selector: bool = False
    guards: GuardMode = GuardMode.GATE
    metric: MetricForm = MetricForm.SCALAR
    takes_feedback: bool = False
    takes_valset: bool = True

    def with_feedback(self) -> Capabilities:
        """These capabilities, plus taking a person's critiques."""
        return dataclasses.replace(self, takes_feedback=True)
