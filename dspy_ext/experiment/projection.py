"""What a compile is expected to spend, before it runs: calls, tokens and dollars, by task and prompt model.

:func:`project` turns the optimizer's own :class:`~dspy_ext.search.plan.CallPlan` into a
:class:`Projection` with the measured sizes of this task's prompts: the student's prompt with as many
labeled demos as the plan says, rendered by the run's adapter for sampled training rows, and the gold
replies; and for the prompt model, an instruction-induction meta-prompt. Tokens are counted with the
model's tokenizer where the engine has one (the embedded model), else estimated (4 characters a token).
Nothing is sent to the model.

``dspy-ext compile --dry-run`` prints it; after a real run, ``run.json`` and ``report.md`` show it next
to what was spent.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import asdict, dataclass
from typing import Any

import dspy

from dspy_ext.lm.likelihood import count_prompt_tokens
from dspy_ext.lm.metering import Price
from dspy_ext.meta_prompts import DEFAULT_META_PROMPTS
from dspy_ext.prompt_state import predictors
from dspy_ext.search.base import format_pairs
from dspy_ext.search.context import active_adapter, prompt_messages
from dspy_ext.search.plan import CallPlan

__all__ = ["Projection", "RoleProjection", "price_of", "project"]

#: Training rows whose prompts are measured.
SAMPLED_ROWS = 8
#: Tokens an instruction proposal is expected to take (proposals are capped at 150).
PROPOSAL_TOKENS = 60


@dataclass(frozen=True)
class RoleProjection:
    """Expected spend of one model role (task or prompt)."""

    calls: int
    input_tokens: int
    output_tokens: int
    usd: float | None  # None: the model's price is unknown

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class Projection:
    """Expected spend of a compile.

    Attributes:
        task: The task model's calls (the program's own), tokens and USD.
        prompt: The prompt model's (instruction proposals).
        known: ``False`` when the optimizer has no plan: the figures are then the call budget at the
            measured prompt sizes, an upper bound only where the optimizer enforces the budget.
    """

    task: RoleProjection
    prompt: RoleProjection
    known: bool = True

    @property
    def calls(self) -> int:
        return self.task.calls + self.prompt.calls

    @property
    def tokens(self) -> int:
        return self.task.tokens + self.prompt.tokens

    @property
    def usd(self) -> float | None:
        if self.task.usd is None or self.prompt.usd is None:
            return None
        return round(self.task.usd + self.prompt.usd, 6)

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "tokens": self.tokens,
            "usd": self.usd,
            "known": self.known,
            "by_role": {"task": asdict(self.task), "prompt": asdict(self.prompt)},
        }


def project(
    plan: CallPlan | None,
    *,
    student: dspy.Module,
    train: list[dspy.Example],
    lm: dspy.BaseLM,
    budget: int | None,
    seed: int = 0,
) -> Projection:
    """The calls, tokens and USD of ``plan`` (``None``: the call budget, all on the task model).

    Call inside the run's ``dspy.context`` so that the run's adapter renders the prompts.
    """
    known = plan is not None
    plan = plan or CallPlan(budget or 0, 0, min(3, len(train)))
    adapter = active_adapter(lm)
    rows = random.Random(seed).sample(train, min(SAMPLED_ROWS, len(train)))
    task_in, task_out = _task_sizes(student, train, rows, adapter, lm, round(plan.demos))
    prompt_in = _proposal_size(train, rows, adapter, lm) if plan.prompt_calls else 0
    price = price_of(lm)
    return Projection(
        task=_role(plan.task_calls, task_in, task_out, price),
        prompt=_role(plan.prompt_calls, prompt_in, PROPOSAL_TOKENS, price),
        known=known,
    )


def _role(calls: int, input_per_call: float, output_per_call: float, price: Price | None) -> RoleProjection:
    input_tokens, output_tokens = round(calls * input_per_call), round(calls * output_per_call)
    usd = None if price is None else round(price.cost(input_tokens, output_tokens), 6)
    return RoleProjection(calls, input_tokens, output_tokens, usd)


def _task_sizes(
    student: dspy.Module,
    train: list[dspy.Example],
    rows: list[dspy.Example],
    adapter: dspy.Adapter,
    lm: dspy.BaseLM,
    k: int,
) -> tuple[float, float]:
    """Mean tokens of one task call's prompt (with ``k`` demos) and of its reply, over predictors and rows."""
    prompts, replies = [], []
    for _, predictor in predictors(student):
        signature = predictor.signature
        for row in rows:
            demos = [ex.toDict() for ex in train if ex is not row][:k]
            outputs = {name: row.get(name, "") for name in signature.output_fields}
            prompt = prompt_messages(adapter, signature, demos, row)
            prompts.append(count_prompt_tokens(lm, prompt))
            reply = adapter.format_assistant_message_content(signature, outputs)
            replies.append(_reply_tokens(lm, prompt, reply))
    if not prompts:
        return 0.0, 0.0
    return statistics.fmean(prompts), statistics.fmean(replies)


def _reply_tokens(lm: Any, prompt: list[dict[str, str]], reply: str) -> int:
    """Tokens of ``reply`` as the model writes it after ``prompt`` (its end of turn included)."""
    replied = [*prompt, {"role": "assistant", "content": reply}]
    return max(1, count_prompt_tokens(lm, replied) - count_prompt_tokens(lm, prompt))


def _proposal_size(train: list[dspy.Example], rows: list[dspy.Example], adapter: dspy.Adapter, lm: Any) -> float:
    """Tokens of an instruction-induction meta-prompt showing five training pairs."""
    signature = DEFAULT_META_PROMPTS["induce"]
    pairs = rows[:5] or train[:5]
    fields = {"step": "input -> output", "examples": format_pairs(pairs)}
    return float(count_prompt_tokens(lm, prompt_messages(adapter, signature, [], fields)))


def price_of(lm: Any) -> Price | None:
    """What ``lm`` charges: its engine's declared price, else DSPy's bundled price list, else ``None``."""
    engine = getattr(lm, "engine", None)
    declared = getattr(engine, "price", None)
    if isinstance(declared, Price):
        return declared
    model = getattr(getattr(engine, "inner", None), "model", None) or getattr(lm, "model", None)
    if not model:
        return None
    per_input, per_output = _listed_cost(model, 1_000_000, 0), _listed_cost(model, 0, 1_000_000)
    if per_input is None or per_output is None:
        return None
    return Price(per_input, per_output)


def _listed_cost(model: str, input_tokens: int, output_tokens: int) -> float | None:
    """DSPy's estimate for a reply of this usage (its bundled price list; ``None`` where it has no price)."""
    from dspy.clients.costs import estimate_cost
    from dspy.lm15 import Message, Response, TextPart, Usage

    provider, _, name = model.rpartition("/")
    response = Response(
        id=None,
        model=name,
        message=Message.assistant([TextPart("")]),
        finish_reason="stop",
        usage=Usage(input_tokens=input_tokens, output_tokens=output_tokens),
    )
    try:
        cost, _details = estimate_cost(response, provider=provider or "openai", requested_model=name)
    except Exception:  # advisory, as in DSPy
        return None
    return cost
