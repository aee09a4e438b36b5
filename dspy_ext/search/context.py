"""Does a demo set leave room for the inputs? A check before a search adopts it.

A few-shot demo set is sent with every call, so demos that fill most of a
small model's context window (SmolLM2 runs with 4,096 tokens here) make every
longer input overflow: those rows then fail with ``context_overflow`` and the
candidate is judged on the short inputs only. :func:`demo_set_context_fit`
renders each predictor's prompt with the demo set and sampled training
inputs, exactly as the adapter will, and counts the tokens with the engine's
own tokenizer (chat template included) when it has one.

Example:
    >>> fit = demo_set_context_fit(student, demo_set, trainset)   # doctest: +SKIP
    >>> fit.fits, fit.prompt_tokens, fit.context_window           # doctest: +SKIP
    (False, 4410, 4096)
    >>> fit.message()                                              # doctest: +SKIP
    'context overflow: the prompt has 4410 tokens + 1 reserved for the reply, ...'
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import dspy

from dspy_ext.adapters import default_adapter
from dspy_ext.prompt_state import predictors
from dspy_ext.runtime import context_overflow_message
from dspy_ext.search.demos import DemoSet

__all__ = ["CHARS_PER_TOKEN_ESTIMATE", "ContextFit", "demo_set_context_fit", "fitting_demo_set", "token_counter"]

#: Without a tokenizer, tokens are estimated as characters / this (English text runs at about 4
#: characters per token; 3 over-counts, so an estimate errs toward "does not fit").
CHARS_PER_TOKEN_ESTIMATE = 3.0

Counter = Callable[[list[dict[str, str]]], int]


@dataclass(frozen=True)
class ContextFit:
    """How the longest sampled prompt of a demo set compares with the context window.

    Attributes:
        fits: Every sampled prompt fits (always ``True`` when the window is unknown).
        prompt_tokens: Tokens of the longest sampled prompt.
        context_window: The model's window, ``None`` when the engine reports none.
        reply_tokens: Tokens kept free for the reply.
        predictor: The predictor of the longest prompt.
        example_index: Index (in ``examples``) of the input of the longest prompt.
        overflowing: How many sampled (predictor, input) prompts do not fit.
        checked: How many prompts were counted.
        counted_by: ``"tokenizer"`` (the engine's) or ``"estimate"`` (characters).
    """

    fits: bool
    prompt_tokens: int
    context_window: int | None
    reply_tokens: int
    predictor: str | None
    example_index: int | None
    overflowing: int
    checked: int
    counted_by: Literal["tokenizer", "estimate"]

    def message(self) -> str:
        """The overflow message (the evaluator's and the runtime's wording), or ``""`` when it fits."""
        if self.fits or self.context_window is None:
            return ""
        return context_overflow_message(self.prompt_tokens, self.context_window, reply_tokens=self.reply_tokens)


def _estimate(messages: list[dict[str, str]]) -> int:
    return math.ceil(sum(len(m.get("content") or "") for m in messages) / CHARS_PER_TOKEN_ESTIMATE)


def token_counter(lm: dspy.BaseLM | None) -> tuple[Counter, Literal["tokenizer", "estimate"]]:
    """The prompt-token counter of ``lm``'s engine, or a character-based estimate.

    Args:
        lm: A ``dspy.LM``; its ``engine.count_prompt_tokens(messages)`` is used when present.

    Returns:
        ``(counter, "tokenizer" | "estimate")``.
    """
    count = getattr(getattr(lm, "engine", None), "count_prompt_tokens", None)
    if callable(count):
        return count, "tokenizer"
    return _estimate, "estimate"


def demo_set_context_fit(
    student: dspy.Module,
    demo_set: DemoSet,
    examples: Sequence[dspy.Example],
    *,
    lm: dspy.BaseLM | None = None,
    adapter: dspy.Adapter | None = None,
    sample_size: int = 20,
    reply_tokens: int = 1,
    context_window: int | None = None,
    rng: random.Random | None = None,
) -> ContextFit:
    """Render ``student``'s prompts with ``demo_set`` on sampled inputs: a :class:`ContextFit` against the window.

    Each predictor's prompt is built by the adapter's own ``format()`` from the predictor's signature,
    the demo set's demos for it and an example's inputs. Input fields an example lacks (those a later
    stage of a multi-step program receives from an earlier one) are left empty, so for such
    predictors the count is a lower bound.

    Args:
        student: The program the demo set is for.
        demo_set: ``{predictor name: demos}`` (predictors not in it keep their demos).
        examples: Where inputs are sampled from (usually the training set).
        lm: The task model (default ``dspy.settings.lm``): its engine's tokenizer
            and ``context_window`` are used.
        adapter: The adapter (default ``dspy.settings.adapter``, else dspy-ext's default for ``lm``).
        sample_size: How many examples to sample; the longest prompt among them decides.
        reply_tokens: Tokens that must stay free for the reply.
        context_window: Overrides the engine's window.
        rng: Draws the sample (default ``random.Random(0)``; all examples when there are few).

    Raises:
        ValueError: ``sample_size`` < 1 or ``reply_tokens`` < 0.
    """
    if sample_size < 1 or reply_tokens < 0:
        what = f"sample_size must be >= 1, got {sample_size}" if sample_size < 1 else ""
        raise ValueError(what or f"reply_tokens must be >= 0, got {reply_tokens}")
    lm = lm if lm is not None else dspy.settings.lm
    adapter = adapter or active_adapter(lm)
    window = (
        context_window if context_window is not None else getattr(getattr(lm, "engine", None), "context_window", None)
    )
    count, counted_by = token_counter(lm)
    pool = list(range(len(examples)))
    chosen = pool if len(pool) <= sample_size else sorted((rng or random.Random(0)).sample(pool, sample_size))
    sizes = _prompt_sizes(student, demo_set, examples, chosen, adapter, count)
    overflowing = sum(1 for tokens, _, _ in sizes if window is not None and tokens + reply_tokens > window)
    prompt_tokens, name, index = max(sizes, key=lambda s: s[0], default=(-1, None, None))
    return ContextFit(
        fits=overflowing == 0,
        prompt_tokens=max(prompt_tokens, 0),
        context_window=window,
        reply_tokens=reply_tokens,
        predictor=name,
        example_index=index,
        overflowing=overflowing,
        checked=len(sizes),
        counted_by=counted_by,
    )


def _prompt_sizes(
    student: dspy.Module,
    demo_set: DemoSet,
    examples: Sequence[dspy.Example],
    chosen: list[int],
    adapter: dspy.Adapter,
    count: Counter,
) -> list[tuple[int, str, int]]:
    """``(tokens, predictor, example index)`` of every predictor's prompt on every chosen input."""
    sizes = []
    for name, predictor in predictors(student):
        demos = [dict(d) for d in demo_set[name]] if name in demo_set else list(predictor.demos)
        signature = predictor.signature
        for index in chosen:
            tokens = int(count(prompt_messages(adapter, signature, demos, examples[index])))
            sizes.append((tokens, name, index))
    return sizes


def fitting_demo_set(demo_set: DemoSet, fits: Callable[[DemoSet], bool]) -> DemoSet:
    """``demo_set`` with demos dropped from the end of every predictor's list until ``fits`` says it fits.

    An empty set is returned as it is (it is not checked).

    Example:
        >>> fitting_demo_set({"p": ({"a": 1}, {"a": 2})}, lambda s: len(s["p"]) < 2)
        {'p': ({'a': 1},)}
    """
    while any(demo_set.values()) and not fits(demo_set):
        demo_set = {name: demos[:-1] for name, demos in demo_set.items()}
    return demo_set


def active_adapter(lm: dspy.BaseLM | None) -> dspy.Adapter:
    """The adapter a call of ``lm`` goes through here: the configured one, else dspy-ext's default for
    ``lm``, else DSPy's chat adapter."""
    return dspy.settings.adapter or default_adapter(lm) or dspy.ChatAdapter()


def prompt_messages(
    adapter: dspy.Adapter, signature: type[dspy.Signature], demos: Sequence[dict[str, Any]], row: Any
) -> list[dict[str, str]]:
    """The chat messages ``adapter`` sends for ``signature`` with ``demos`` on ``row``'s inputs, as text.

    Input fields ``row`` lacks are left empty.
    """
    inputs = {field: row.get(field, "") for field in signature.input_fields}
    return [
        {"role": m["role"], "content": _text(m.get("content"))} for m in adapter.format(signature, list(demos), inputs)
    ]


def _text(content: Any) -> str:
    """Message content as text (DSPy may use content blocks; only their text counts here)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(block.get("text", "")) if isinstance(block, dict) else str(block) for block in content)
    return "" if content is None else str(content)
