"""What a compile is expected to spend, before it runs: calls, tokens and dollars, by task and prompt model.

:func:`project` turns the optimizer's own :class:`~dspy_ext.search.plan.CallPlan` into a
:class:`Projection` with the measured sizes of this task's prompts. The task model's: the student's
prompt with as many labeled demos as the plan says, rendered by the run's adapter for sampled training
rows, and the gold replies. The prompt model's, one meta-prompt at a time: each meta-prompt the plan
names (``induce``, ``trajectory``, ``crossover``, ``diagnose``, ...) is rendered by the prompt model's
adapter with the inputs its optimizer fills it with (the task's training pairs, the student's
instruction, OPRO's scored history at the run's mean length, ...:
:meth:`~dspy_ext.search.SearchTeleprompter.typical_inputs`), and its reply is the plan's expected
length for that meta-prompt. Prompts of DSPy's optimizers, which dspy-ext does not render, carry their
sizes in the plan. Tokens are counted with the model's tokenizer where the engine has one (the embedded
model), else estimated (4 characters a token). Nothing is sent to a model.

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
from dspy_ext.search.context import active_adapter, prompt_messages
from dspy_ext.search.plan import CallPlan, MetaPromptCalls
from dspy_ext.search.teleprompter import SearchTeleprompter
from dspy_ext.search.typical import TypicalAsk, shared_inputs

__all__ = ["MetaPromptProjection", "Projection", "RoleProjection", "price_of", "project"]

#: Training rows whose prompts are measured.
SAMPLED_ROWS = 8


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
class MetaPromptProjection:
    """Expected spend of one meta-prompt on the prompt model: its calls and the tokens of each call.

    Attributes:
        role: The meta-prompt (``induce``, ``trajectory``, ...; see :class:`~dspy_ext.search.plan.MetaPromptCalls`).
        calls: How many times it is sent.
        prompt_tokens: Tokens of one prompt, as measured (or as the plan states, for DSPy's own prompts).
        reply_tokens: Tokens of one reply, as the plan expects.
    """

    role: str
    calls: int
    prompt_tokens: int
    reply_tokens: int


@dataclass(frozen=True)
class Projection:
    """Expected spend of a compile.

    Attributes:
        task: The task model's calls (the program's own), tokens and USD.
        prompt: The prompt model's (the meta-prompts together).
        known: ``False`` when the optimizer has no plan: the figures are then the call budget at the
            measured prompt sizes, an upper bound only where the optimizer enforces the budget.
        meta_prompts: The prompt model's calls, one entry per meta-prompt.
    """

    task: RoleProjection
    prompt: RoleProjection
    known: bool = True
    meta_prompts: tuple[MetaPromptProjection, ...] = ()

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
            "by_meta_prompt": [asdict(m) for m in self.meta_prompts],
        }


def project(
    plan: CallPlan | None,
    *,
    student: dspy.Module,
    train: list[dspy.Example],
    lm: dspy.BaseLM,
    budget: int | None,
    seed: int = 0,
    prompt_lm: dspy.BaseLM | None = None,
    optimizer: Any = None,
) -> Projection:
    """The calls, tokens and USD of ``plan`` (``None``: the call budget, all on the task model).

    Call inside the run's ``dspy.context`` so that the run's adapter renders the prompts.

    Args:
        plan: The optimizer's plan.
        student, train: The program and its training rows.
        lm: The task model.
        budget: The call budget (the figures when there is no plan).
        seed: Seeds the sampled rows.
        prompt_lm: The prompt model (default: ``lm``), whose tokenizer, adapter and price its calls use.
        optimizer: The built optimizer; one of dspy-ext's fills its meta-prompts as its search does
            (others get the shared ``induce`` form).
    """
    known = plan is not None
    plan = plan or CallPlan(budget or 0, (), min(3, len(train)))
    prompt_lm = prompt_lm or lm
    rows = random.Random(seed).sample(train, min(SAMPLED_ROWS, len(train)))
    task_in, task_out = _task_sizes(student, train, rows, active_adapter(lm), lm, round(plan.demos))
    ask = TypicalAsk(student, train, seed)
    asks = tuple(_meta_prompt(planned, ask, prompt_lm, optimizer) for planned in plan.asks if planned.calls)
    price, prompt_price = price_of(lm), price_of(prompt_lm)
    prompt_in = sum(a.calls * a.prompt_tokens for a in asks)
    prompt_out = sum(a.calls * a.reply_tokens for a in asks)
    return Projection(
        task=_role(plan.task_calls, plan.task_calls * task_in, plan.task_calls * task_out, price),
        prompt=_role(plan.prompt_calls, prompt_in, prompt_out, prompt_price),
        known=known,
        meta_prompts=asks,
    )


def _role(calls: int, input_tokens: float, output_tokens: float, price: Price | None) -> RoleProjection:
    input_tokens, output_tokens = round(input_tokens), round(output_tokens)
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


def _meta_prompt(planned: MetaPromptCalls, ask: TypicalAsk, prompt_lm: Any, optimizer: Any) -> MetaPromptProjection:
    """One meta-prompt of the plan, measured: rendered as its optimizer fills it, unless the plan gives its size.

    A role dspy-ext has no meta-prompt for (nor a size) is measured as an instruction induction.
    """
    if planned.prompt_tokens is not None:
        return MetaPromptProjection(planned.role, planned.calls, planned.prompt_tokens, planned.reply_tokens)
    ours = isinstance(optimizer, SearchTeleprompter)
    signatures = optimizer.meta_prompts if ours else DEFAULT_META_PROMPTS
    role = planned.role if planned.role in signatures else "induce"
    fields = optimizer.typical_inputs(planned, ask) if ours and role == planned.role else shared_inputs(role, ask)
    messages = prompt_messages(active_adapter(prompt_lm), signatures[role], [], fields)
    return MetaPromptProjection(
        planned.role, planned.calls, count_prompt_tokens(prompt_lm, messages), planned.reply_tokens
    )


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
