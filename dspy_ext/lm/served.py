"""API and served models (OpenAI, vLLM, Ollama, llama.cpp's server) on a metered engine.

DSPy's own engines (native lm15 or LiteLLM) do not report to dspy-ext's call
meters, so a budget would not hold for them. :func:`metered_lm` puts any
``dspy.LM`` behind a :class:`ServedEngine`: a
:class:`~dspy_ext.lm.engine.MeteredEngine` whose one try is one request through
the user's LM (its provider, endpoint and key untouched, DSPy's cache and
retries off). So on a served model, as on the embedded one:

* every try is reserved on the active meters first: the call cap is exact under
  threads, and retries count;
* the provider's token usage and finish reason are recorded;
* transient errors (429 with ``Retry-After``, 5xx, resets, timeouts) are retried
  with backoff under the active :class:`~dspy_ext.lm.retry.CallPolicy`;
* the run's call journal (DSPy's response cache slot) sees every reply, so a
  killed compile resumes without paying twice.

:func:`check_endpoint` asks an OpenAI-compatible endpoint for its model list
before anything is spent, so a closed port, an unknown host, a refused key or an
unknown model stops a command within seconds, with one line.

Example:
    >>> lm = make_lm("openai/smollm2", api_base="http://127.0.0.1:8765/v1", api_key="sk-local")  # doctest: +SKIP
    >>> isinstance(lm.engine, ServedEngine)                                                    # doctest: +SKIP
    True
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import urllib.error
import urllib.request
from typing import Any

import dspy
from dspy.lm15 import Request

from dspy_ext.lm.engine import Generation, MeteredEngine, generation_of
from dspy_ext.lm.metering import Price

__all__ = ["EndpointError", "ServedEngine", "check_endpoint", "endpoint_of", "metered_lm"]

# LiteLLM downloads its price list from the internet on first use unless told to read its bundled copy.
# This is an environment default for LiteLLM only (a user's own value is kept); nothing dspy-ext runs may
# reach the internet.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

#: Client settings of a ``dspy.LM`` that configure its connection (kept on the inner LM only).
_CLIENT_KEYS = ("api_key", "api_base", "base_url", "timeout", "organization", "api_version")


class EndpointError(ValueError):
    """The model's endpoint cannot be used: closed port, unknown host, refused key or unknown model.

    One line naming the endpoint and the cause (the CLI prints it and exits with code 2).
    """


class ServedEngine(MeteredEngine):
    """Runs each try as one request through a ``dspy.LM`` of any provider, metered like the embedded model.

    Args:
        inner: The user's LM (provider, endpoint, key). A copy with DSPy's response cache and
            retries off is kept, so that each try is exactly one request to the provider.
        price: What the model charges (a served model's, declared by you). ``None``: DSPy's
            estimate from the provider's usage and its bundled price list; unknown where that has
            no price (reported as unknown, never as 0).

    Attributes:
        inner: That copy.
    """

    def __init__(self, inner: dspy.LM, *, price: Price | None = None) -> None:
        if isinstance(getattr(inner, "engine", None), MeteredEngine):
            raise TypeError(f"{inner.model!r} already runs on a metered engine")
        self.inner = inner.copy(cache=False, num_retries=0)
        self.price = price

    def generate(self, request: Request) -> Generation:
        with dspy.context(disable_history=True, usage_tracker=None):
            response = self.inner(request)
        generation = generation_of(response)
        if self.price is not None:
            return generation
        return dataclasses.replace(generation, cost=self._estimate(response))

    def _estimate(self, response: Any) -> float | None:
        from dspy.clients.costs import estimate_cost

        provider, _, model = self.inner.model.rpartition("/")
        try:
            cost, _details = estimate_cost(response, provider=provider or "openai", requested_model=model)
        except Exception:  # advisory, as in DSPy: an unreadable price is unknown, never a failed call
            return None
        return cost

    def close(self) -> None:
        self.inner.close()


def metered_lm(lm: dspy.BaseLM, *, price: Price | None = None) -> dspy.BaseLM:
    """``lm`` on a :class:`ServedEngine`, if it is a ``dspy.LM`` on one of DSPy's own engines (``auto``,
    ``lm15``, ``litellm``); any other LM (on an engine object, dspy-ext's or your own, or a custom
    ``BaseLM``) is returned as it is.

    The result has the same model string and generation settings, so DSPy's cache key and the run's
    call journal are those of the original LM.

    Args:
        lm: Any LM.
        price: See :class:`ServedEngine`.
    """
    if not isinstance(lm, dspy.LM) or not isinstance(lm.engine, str):
        return lm
    kwargs = {k: v for k, v in lm.kwargs.items() if k not in _CLIENT_KEYS}
    engine = ServedEngine(lm, price=price)
    return dspy.LM(lm.model, model_type=lm.model_type, engine=engine, cache=lm.cache, num_retries=0, **kwargs)


def _user_lm(lm: dspy.LM) -> dspy.LM:
    """The LM that really sends the requests: a :class:`ServedEngine`'s inner LM, else ``lm`` itself."""
    engine = getattr(lm, "engine", None)
    return engine.inner if isinstance(engine, ServedEngine) else lm


def endpoint_of(lm: dspy.LM) -> tuple[str | None, str | None]:
    """The OpenAI-compatible base URL and API key ``lm`` sends to (``None`` where it does not say)."""
    inner = _user_lm(lm)
    kwargs = getattr(inner, "kwargs", {}) or {}
    base = kwargs.get("api_base") or kwargs.get("base_url")
    key = kwargs.get("api_key")
    if getattr(inner, "model", "").startswith("openai/"):
        base = base or os.environ.get("OPENAI_API_BASE") or os.environ.get("OPENAI_BASE_URL")
        key = key or os.environ.get("OPENAI_API_KEY")
    return base, key


def check_endpoint(lm: dspy.LM, *, timeout: float = 10.0) -> None:
    """Ask ``lm``'s OpenAI-compatible endpoint for ``GET /models``; raise one clear error if it cannot serve.

    No completion is requested, so nothing is spent. An LM without a declared endpoint (a hosted API on
    its default address) and an endpoint that does not list models are not checked.

    Raises:
        EndpointError: Connection refused, unknown host, no answer within ``timeout``, HTTP 401/403
            (the key), or a model list that does not hold the model.
    """
    base, key = endpoint_of(lm)
    if not base:
        return
    url = base.rstrip("/") + "/models"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            listing = json.loads(answer.read().decode("utf-8", "replace"))
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise EndpointError(f"{base}: the endpoint refused the API key (HTTP {exc.code})") from None
        return  # an endpoint without a model list: the first call will tell
    except (urllib.error.URLError, OSError) as exc:
        raise EndpointError(f"{base}: cannot reach the model endpoint ({_reason(exc, timeout)})") from None
    except ValueError:
        return  # not JSON: not an OpenAI-compatible listing
    _check_model_listed(_user_lm(lm).model, base, listing)


def _reason(exc: BaseException, timeout: float) -> str:
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return "unknown host"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"no answer within {timeout:g} s"
    return f"{type(reason).__name__}: {reason}"


def _check_model_listed(model: str, base: str, listing: Any) -> None:
    data = listing.get("data") if isinstance(listing, dict) else None
    served = [m.get("id") for m in data if isinstance(m, dict)] if isinstance(data, list) else []
    wanted = model.partition("/")[2] or model
    if served and wanted not in served:
        shown = ", ".join(str(s) for s in served[:10])
        raise EndpointError(f"{base}: model {wanted!r} is not served there (it serves: {shown})")
