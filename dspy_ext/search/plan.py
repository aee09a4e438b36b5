"""What a compile expects to spend, before it runs: LM calls by role, from the optimizer's own plan.

An optimizer's :class:`CallPlan` counts the calls a run *without a cap* would make, apart for the
task model (the program's own calls: evaluations, bootstrapping, likelihood scoring) and the prompt
model, whose calls are named by the meta-prompt they send (:class:`MetaPromptCalls`: ``induce`` x 6,
``paraphrase`` x 6, ...), and the demos a task prompt typically carries. :meth:`CallPlan.capped` cuts
it to a call budget the optimizer enforces. ``dspy-ext compile --dry-run`` turns a plan into calls,
tokens and dollars by rendering each meta-prompt as its optimizer does and measuring the task's
prompts (:mod:`dspy_ext.experiment.projection`).

Example:
    >>> plan = CallPlan(task_calls=300, asks=(MetaPromptCalls("induce", 12), MetaPromptCalls("paraphrase", 8)), demos=3)
    >>> plan.prompt_calls
    20
    >>> plan.capped(160).task_calls, [a.calls for a in plan.capped(160).asks]
    (150, [6, 4])
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["INSTRUCTION_REPLY_TOKENS", "CallPlan", "MetaPromptCalls", "PlanInputs"]

#: Tokens a one-instruction reply (an induction, paraphrase, crossover, edit ...) is expected to take: a stated
#: typical length (one instruction of about 45 words), well under the proposal cap of 150
#: (``search.run.PROPOSAL_MAX_TOKENS``, the most any reply can take). ``docs/benchmarks.md`` (issue 17) gives
#: what the served SmolLM2-135M really wrote per meta-prompt kind.
INSTRUCTION_REPLY_TOKENS = 60


@dataclass(frozen=True)
class MetaPromptCalls:
    """Calls of one meta-prompt on the prompt model.

    Attributes:
        role: The meta-prompt's role (``induce``, ``trajectory``, ``diagnose``, ...; see
            :data:`~dspy_ext.meta_prompts.DEFAULT_META_PROMPTS`), or the name of a prompt of one of DSPy's
            optimizers (e.g. ``mipro.propose_instruction``), which dspy-ext does not render.
        calls: How many times it is sent.
        reply_tokens: Tokens one reply is expected to take (at most the ask's ``max_tokens``).
        prompt_tokens: Tokens of one such prompt when it is not one dspy-ext renders (DSPy's own
            prompts); ``None``: measured by rendering the role's meta-prompt.
    """

    role: str
    calls: int
    reply_tokens: int = INSTRUCTION_REPLY_TOKENS
    prompt_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.calls < 0 or self.reply_tokens < 0:
            raise ValueError(f"a meta-prompt's calls and reply tokens cannot be negative: {self}")


@dataclass(frozen=True)
class PlanInputs:
    """What an optimizer's plan depends on beyond its own settings.

    Attributes:
        n_predictors: Predictors of the student.
        n_train: Training rows.
        n_val: Validation rows.
        n_labels: Labels of the task's closed label set (``None``: open outputs, or not known).
        served_likelihood: The task model scores by ``/completions`` requests, one per scored reply (a
            served engine), instead of one forward pass per row (the embedded engine).
        likelihood_probe: Before its first scoring request the task model's endpoint is probed once (one
            request), because whether it can score was not declared.
    """

    n_predictors: int
    n_train: int = 0
    n_val: int = 0
    n_labels: int | None = None
    served_likelihood: bool = False
    likelihood_probe: bool = False


@dataclass(frozen=True)
class CallPlan:
    """The LM calls a compile expects to make.

    Attributes:
        task_calls: Calls of the task model (one per predictor call of the program, or per scoring request).
        asks: The prompt model's calls, by meta-prompt.
        demos: Demos a typical task prompt carries (its size depends on them).
    """

    task_calls: int
    asks: tuple[MetaPromptCalls, ...] = ()
    demos: float = 0.0

    def __post_init__(self) -> None:
        if self.task_calls < 0:
            raise ValueError(f"a call plan cannot be negative: {self}")

    @property
    def prompt_calls(self) -> int:
        """Calls of the prompt model, all meta-prompts together."""
        return sum(a.calls for a in self.asks)

    @property
    def calls(self) -> int:
        return self.task_calls + self.prompt_calls

    def capped(self, max_calls: int | None) -> CallPlan:
        """This plan under a hard cap of ``max_calls`` (both roles, and each meta-prompt, cut in proportion)."""
        if max_calls is None or self.calls <= max_calls:
            return self
        prompt = round(self.prompt_calls * max_calls / self.calls)
        return CallPlan(max_calls - prompt, _shares(self.asks, prompt), self.demos)


def _shares(asks: tuple[MetaPromptCalls, ...], total: int) -> tuple[MetaPromptCalls, ...]:
    """``asks`` scaled to ``total`` calls in proportion (largest remainders get the rounding)."""
    before = sum(a.calls for a in asks)
    if before == 0:
        return asks
    exact = [a.calls * total / before for a in asks]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(asks)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return tuple(replace(a, calls=n) for a, n in zip(asks, counts) if n > 0)
