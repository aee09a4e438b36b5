"""What a compile expects to spend, before it runs: LM calls by role, from the optimizer's own plan.

An optimizer's :class:`CallPlan` counts the calls a run *without a cap* would make, apart for the
task model (the program's own calls: evaluations, bootstrapping) and the prompt model (calls that
write instructions), and the demos a task prompt typically carries. :meth:`CallPlan.capped` cuts it
to a call budget the optimizer enforces. ``dspy-ext compile --dry-run`` turns a plan into calls,
tokens and dollars with the measured sizes of the task's prompts
(:mod:`dspy_ext.experiment.projection`).

Example:
    >>> CallPlan(task_calls=300, prompt_calls=20, demos=3).capped(160)
    CallPlan(task_calls=150, prompt_calls=10, demos=3)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CallPlan:
    """The LM calls a compile expects to make.

    Attributes:
        task_calls: Calls of the task model (one per predictor call of the program).
        prompt_calls: Calls of the prompt model (instruction proposals, summaries, reflections).
        demos: Demos a typical task prompt carries (its size depends on them).
    """

    task_calls: int
    prompt_calls: int = 0
    demos: float = 0.0

    def __post_init__(self) -> None:
        if self.task_calls < 0 or self.prompt_calls < 0:
            raise ValueError(f"a call plan cannot be negative: {self}")

    @property
    def calls(self) -> int:
        return self.task_calls + self.prompt_calls

    def capped(self, max_calls: int | None) -> CallPlan:
        """This plan under a hard cap of ``max_calls`` (both roles cut in proportion)."""
        if max_calls is None or self.calls <= max_calls:
            return self
        prompt = round(self.prompt_calls * max_calls / self.calls)
        return CallPlan(max_calls - prompt, prompt, self.demos)
