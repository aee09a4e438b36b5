"""Language models for dspy-ext: the embedded local model, engines and metering.

``make_lm("local")`` gives a ready ``dspy.LM`` running the embedded
SmolLM2-135M-Instruct in-process; any other string goes to ``dspy.LM`` as is
(``"openai/gpt-4o-mini"``, ``"ollama_chat/llama3"``, ...).
"""

from __future__ import annotations

import threading
from pathlib import Path

import dspy

from dspy_ext.lm.engine import Generation, MeteredEngine, call_deadline, pop_finish_reason, request_messages
from dspy_ext.lm.errors import (
    ContextOverflowError,
    LMCallTimeout,
    LMRetriesExhausted,
    context_overflow_in,
    is_transient_error,
)
from dspy_ext.lm.fake import FakeEngine, FakeLMError
from dspy_ext.lm.faults import FaultInjectingEngine, InjectedFault, with_faults
from dspy_ext.lm.llama import EmbeddedModelMissing, LlamaCppEngine, embedded_model_path
from dspy_ext.lm.metering import (
    BudgetExhausted,
    CallMeter,
    CostCapReached,
    ModelUnavailable,
    Price,
    UsageSnapshot,
    active_meters,
    current_role,
    find_budget_exhausted,
    lm_role,
    metering,
)
from dspy_ext.lm.retry import DEFAULT_POLICY, CallPolicy, active_call_policy, call_policy
from dspy_ext.lm.served import EndpointError, ServedEngine, check_endpoint, endpoint_of, metered_lm

__all__ = [
    "DEFAULT_POLICY",
    "BudgetExhausted",
    "CallMeter",
    "CallPolicy",
    "CostCapReached",
    "ModelUnavailable",
    "ContextOverflowError",
    "EmbeddedModelMissing",
    "EndpointError",
    "FakeEngine",
    "FakeLMError",
    "FaultInjectingEngine",
    "Generation",
    "InjectedFault",
    "LMCallTimeout",
    "LMRetriesExhausted",
    "LlamaCppEngine",
    "MeteredEngine",
    "Price",
    "ServedEngine",
    "UsageSnapshot",
    "active_call_policy",
    "active_meters",
    "call_deadline",
    "call_policy",
    "check_endpoint",
    "context_overflow_in",
    "embedded_model_path",
    "endpoint_of",
    "find_budget_exhausted",
    "is_transient_error",
    "is_local_lm",
    "is_local_name",
    "make_lm",
    "metered_lm",
    "metering",
    "lm_role",
    "current_role",
    "pop_finish_reason",
    "request_messages",
    "with_faults",
]

LOCAL_PREFIX = "local"

# One llama context per (model file, prefix_reuse): loading is cheap, but two
# contexts on the same 2 cores would only fight each other.
_ENGINES: dict[tuple[str, bool], LlamaCppEngine] = {}
_ENGINES_LOCK = threading.Lock()


def _local_engine(model_path: str | None, prefix_reuse: bool) -> LlamaCppEngine:
    path = str(Path(model_path).resolve()) if model_path else str(embedded_model_path())
    with _ENGINES_LOCK:
        key = (path, prefix_reuse)
        if key not in _ENGINES:
            _ENGINES[key] = LlamaCppEngine(path, prefix_reuse=prefix_reuse)
        return _ENGINES[key]


def make_lm(
    name: str = LOCAL_PREFIX,
    *,
    temperature: float = 0.0,
    max_tokens: int | None = None,
    cache: bool = True,
    prefix_reuse: bool = True,
    **kwargs,
) -> dspy.LM:
    """Build a ready ``dspy.LM``.

    Args:
        name: ``"local"`` for the embedded SmolLM2-135M-Instruct,
            ``"local:/path/model.gguf"`` for another GGUF chat model, or any
            model string ``dspy.LM`` accepts.
        temperature: Default sampling temperature (0 = greedy).
        max_tokens: Default completion cap (``None``: the engine's default for
            local models, the provider's otherwise).
        cache: Use DSPy's response cache.
        prefix_reuse: Local models only: reuse the KV cache of a shared prefix.
        **kwargs: Passed on to ``dspy.LM`` (``api_base``, ``api_key``, ... for a served model); ``price``
            (a :class:`Price`) is the served model's, for dollar accounting and ``max_cost``.

    Returns:
        A ``dspy.LM`` on a metered engine: budgets, token counts, retries and
        the call journal hold for it. Local models are identified in the model
        string by file name and digest, because DSPy's cache key ignores the
        engine; any other model runs through :func:`metered_lm`.

    Example:
        >>> lm = make_lm("local")                   # doctest: +SKIP
        >>> dspy.configure(lm=lm, adapter=default_adapter(lm))  # doctest: +SKIP
    """
    if is_local_name(name):
        model_path = name.partition(":")[2] or None
        engine = _local_engine(model_path, prefix_reuse)
        model = engine.model_id if prefix_reuse else engine.model_id + "-noreuse"
        return dspy.LM(model, engine=engine, temperature=temperature, max_tokens=max_tokens, cache=cache, **kwargs)
    price = kwargs.pop("price", None)
    return metered_lm(dspy.LM(name, temperature=temperature, max_tokens=max_tokens, cache=cache, **kwargs), price=price)


def is_local_name(name: str) -> bool:
    """Whether the model string ``name`` names an in-process GGUF model (``local`` or ``local:/path``)."""
    return name == LOCAL_PREFIX or name.startswith(LOCAL_PREFIX + ":")


def is_local_lm(lm: dspy.BaseLM | None) -> bool:
    """Whether ``lm`` runs a small in-process model (where the plain adapter is the default)."""
    return lm is not None and isinstance(getattr(lm, "engine", None), LlamaCppEngine)
