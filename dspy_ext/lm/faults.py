"""An engine wrapper that makes a set share of LM calls fail, hang or return garbage.

Real LM APIs rate-limit, time out, drop connections, answer 5xx and
sometimes return nonsense. :class:`FaultInjectingEngine` puts those faults
in front of any engine, deterministically, so you can check that your own
set-up (retries, timeouts, budget, metric) survives them before a long run:

    >>> import dspy
    >>> from dspy_ext.lm import make_lm
    >>> from dspy_ext.lm.faults import with_faults
    >>> flaky = with_faults(make_lm("local"), fail=0.2, hang=0.05, seed=0)   # doctest: +SKIP
    >>> dspy.configure(lm=flaky)                                            # doctest: +SKIP

What happens to each try is drawn from a hash of (seed, request, how often
this request was tried before), never from a shared random stream: the same
run gives the same faults, also under threads, and a retried request gets a
fresh draw (as a real transient fault would). With ``sticky=True`` a request
that draws a fault gets it on every try (a persistent outage).

Faults:

* ``fail``: the try raises a transient error: rate limit (HTTP 429), server
  error (503), provider timeout or connection reset, mixed by default
  (``errors=``); ``errors=("fatal",)`` raises a non-transient
  :class:`InjectedFault` instead, which is not retried.
* ``hang``: the try blocks for ``hang_seconds`` (or until :meth:`close`),
  then answers normally; with a ``CallPolicy(timeout=...)`` it times out.
* ``garbage``: the try "succeeds" with junk text (empty, binary noise, a
  repeated token, cut-off JSON or markup) instead of the inner engine's reply.

The wrapper is a :class:`~dspy_ext.lm.engine.MeteredEngine`, so every try,
faulty or not, is charged to the active call meters and retried under the
active :class:`~dspy_ext.lm.retry.CallPolicy`, exactly as the faults of a real
API would be.
"""

from __future__ import annotations

import enum
import hashlib
import json
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

import dspy
from dspy import lm15
from dspy.lm15 import Request

from dspy_ext.lm.engine import Generation, MeteredEngine, generation_of, request_messages
from dspy_ext.lm.metering import Price
from dspy_ext.lm.retry import CallPolicy

__all__ = ["ERROR_KINDS", "Fault", "FaultInjectingEngine", "InjectedError", "InjectedFault", "with_faults"]


class InjectedError(str, enum.Enum):
    """An error a ``fail`` fault raises; all but :attr:`FATAL` are transient."""

    RATE_LIMIT = "rate_limit"
    SERVER = "server"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    FATAL = "fatal"


class Fault(str, enum.Enum):
    """What an injected fault does to one try: raise an error, hang, or reply with junk."""

    FAIL = "fail"
    HANG = "hang"
    GARBAGE = "garbage"


#: The errors ``fail`` can raise (the :class:`InjectedError` names); all but ``"fatal"`` are transient.
ERROR_KINDS = tuple(kind.value for kind in InjectedError)
_TRANSIENT_KINDS = tuple(kind.value for kind in InjectedError if kind is not InjectedError.FATAL)

_GARBAGE_FORMS = 5


class InjectedFault(RuntimeError):
    """A non-transient fault injected by :class:`FaultInjectingEngine` (``errors=("fatal",)``)."""


def _make_error(kind: str) -> Exception:
    if kind == InjectedError.RATE_LIMIT:
        return lm15.RateLimitError("injected fault: rate limited", status=429, retry_after=None)
    if kind == InjectedError.SERVER:
        return lm15.ServerError("injected fault: service unavailable", status=503)
    if kind == InjectedError.TIMEOUT:
        return lm15.TimeoutError("injected fault: the provider timed out", status=504)
    if kind == InjectedError.CONNECTION:
        return ConnectionResetError("injected fault: connection reset by peer")
    return InjectedFault("injected fault: permanent failure")


def _garbage(draw: int) -> str:
    """One of several kinds of junk reply, chosen and filled from ``draw``."""
    form = draw % _GARBAGE_FORMS
    noise = hashlib.sha256(str(draw).encode()).digest()
    if form == 0:
        return ""
    if form == 1:
        return noise.decode("latin-1")  # binary noise, control characters included
    if form == 2:
        return " ".join(["the"] * (8 + draw % 40))
    if form == 3:
        return '{"output": "' + noise.hex()[: 4 + draw % 20]  # JSON cut off mid-string
    return "<html><body>" + noise.hex()[:16] + "</body>"


class FaultInjectingEngine(MeteredEngine):
    """Wraps an engine and makes a set share of tries fail, hang or return garbage.

    Args:
        inner: The engine that answers when no fault is drawn: a dspy-ext
            engine (its ``generate`` is called, so a try is metered once) or
            any DSPy engine object with ``complete(Request) -> Response``.
        fail: Share of tries (0-1) that raise an error from ``errors``.
        hang: Share of tries that block for ``hang_seconds``, then answer.
        garbage: Share of tries that return junk text.
        seed: Seeds the draws.
        errors: Error kinds ``fail`` picks from (see :data:`ERROR_KINDS`).
        hang_seconds: How long a hung try blocks (cut short by :meth:`close`).
        sticky: A request that draws a fault gets it on every retry too.
        call_policy: Retries and timeout of this engine (see
            :class:`~dspy_ext.lm.retry.CallPolicy`).

    Attributes:
        injected: ``Counter`` of the faults injected so far (``fail``,
            ``hang``, ``garbage``) plus ``tries``.

    Example:
        >>> from dspy_ext.lm import FakeEngine
        >>> engine = FaultInjectingEngine(FakeEngine(lambda m: "positive"), fail=0.2, seed=1)
        >>> lm = dspy.LM("fake/flaky-v1", engine=engine)   # doctest: +SKIP
    """

    def __init__(
        self,
        inner: Any,
        *,
        fail: float = 0.0,
        hang: float = 0.0,
        garbage: float = 0.0,
        seed: int = 0,
        errors: Sequence[str] = _TRANSIENT_KINDS,
        hang_seconds: float = 60.0,
        sticky: bool = False,
        call_policy: CallPolicy | None = None,
    ) -> None:
        for name, share in (("fail", fail), ("hang", hang), ("garbage", garbage)):
            if not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be a share between 0 and 1, got {share!r}")
        if fail + hang + garbage > 1.0 + 1e-9:
            raise ValueError(f"fail + hang + garbage must be at most 1, got {fail + hang + garbage:g}")
        errors = tuple(errors)
        unknown = [kind for kind in errors if kind not in ERROR_KINDS]
        if not errors or unknown:
            raise ValueError(f"errors must be a non-empty choice of {list(ERROR_KINDS)}, got {list(errors)}")
        if not isinstance(hang_seconds, (int, float)) or hang_seconds < 0:
            raise ValueError(f"hang_seconds must be >= 0, got {hang_seconds!r}")
        if not (isinstance(inner, MeteredEngine) or callable(getattr(inner, "complete", None))):
            raise TypeError(f"inner must be an engine with complete(Request), got {type(inner).__name__}")
        self.inner = inner
        self.fail = float(fail)
        self.hang = float(hang)
        self.garbage = float(garbage)
        self.seed = seed
        self.errors = errors
        self.hang_seconds = float(hang_seconds)
        self.sticky = sticky
        if call_policy is not None:
            self.call_policy = call_policy
        self.injected: Counter[str] = Counter()
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._released = threading.Event()

    # -- what the wrapped model knows -------------------------------------------------------
    @property
    def price(self) -> Price | None:  # type: ignore[override]
        """The inner engine's price (a dspy-ext engine's), else ``None``."""
        return getattr(self.inner, "price", None)

    @property
    def context_window(self) -> int | None:
        """The inner engine's context window, if it reports one."""
        return getattr(self.inner, "context_window", None)

    def count_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """The inner engine's prompt-token count (``AttributeError`` if it has no tokenizer)."""
        return self.inner.count_prompt_tokens(messages)

    # -- the draw ---------------------------------------------------------------------------
    def _draw(self, request: Request) -> int:
        # The model string is left out: a copy of an LM under another name draws the same faults.
        key = json.dumps([request_messages(request), repr(request.config)], ensure_ascii=False)
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        with self._lock:
            tried = self._seen[digest]
            self._seen[digest] += 1
            self.injected["tries"] += 1
        attempt = 0 if self.sticky else tried
        return int.from_bytes(hashlib.sha256(f"{self.seed}|{digest}|{attempt}".encode()).digest()[:8], "big")

    def fault_for(self, draw: int) -> str | None:
        """Which :class:`Fault` (``"fail"``, ``"hang"``, ``"garbage"``), or ``None``, a draw stands for."""
        share = draw / 2.0**64
        for name, rate in ((Fault.FAIL, self.fail), (Fault.HANG, self.hang), (Fault.GARBAGE, self.garbage)):
            if share < rate:
                return name.value
            share -= rate
        return None

    def generate(self, request: Request) -> Generation:
        draw = self._draw(request)
        fault = self.fault_for(draw)
        if fault is not None:
            with self._lock:
                self.injected[fault] += 1
        if fault == Fault.FAIL:
            raise _make_error(self.errors[(draw >> 8) % len(self.errors)])
        if fault == Fault.GARBAGE:
            text = _garbage(draw >> 8)
            prompt_words = sum(len(m["content"].split()) for m in request_messages(request))
            return Generation(text=text, input_tokens=prompt_words, output_tokens=len(text.split()))
        if fault == Fault.HANG:
            self._released.wait(self.hang_seconds)
        return self._inner_generate(request)

    def _inner_generate(self, request: Request) -> Generation:
        if isinstance(self.inner, MeteredEngine):
            return self.inner.generate(request)
        return generation_of(self.inner.complete(request))

    def close(self) -> None:
        """Wake every hung try. The inner engine is left open: it is shared, not owned (close it yourself)."""
        self._released.set()


def with_faults(lm: dspy.LM, **settings: Any) -> dspy.LM:
    """A copy of ``lm`` whose engine injects faults (see :class:`FaultInjectingEngine`).

    The copy's model string names the fault settings, so DSPy's response
    cache (whose key ignores the engine) never mixes its replies with the
    original's. Only LMs built on an engine object can be wrapped (the
    embedded model, :class:`~dspy_ext.lm.FakeEngine`, your own engines).

    Args:
        lm: The LM to wrap.
        settings: The keyword arguments of :class:`FaultInjectingEngine` (``fail``, ``hang``,
            ``garbage``, ``seed``, ``errors``, ``hang_seconds``, ``sticky``, ``call_policy``).

    Returns:
        A new ``dspy.LM``; its ``engine`` is the :class:`FaultInjectingEngine`.

    Raises:
        TypeError: ``lm`` has no engine object.

    Example:
        >>> flaky = with_faults(make_lm("local"), fail=0.2, seed=0)   # doctest: +SKIP
    """
    inner = getattr(lm, "engine", None)
    if inner is None or isinstance(inner, str) or not callable(getattr(inner, "complete", None)):
        raise TypeError(f"{getattr(lm, 'model', lm)!r} has no engine object to wrap; build the LM with engine=")
    engine = FaultInjectingEngine(inner, **settings)
    tag = (
        f"faults-f{engine.fail:g}-h{engine.hang:g}-g{engine.garbage:g}-s{engine.seed}-{'-'.join(engine.errors)}"
        f"{'-sticky' if engine.sticky else ''}"
    )
    return dspy.LM(f"{lm.model}+{tag}", engine=engine, cache=lm.cache, **dict(lm.kwargs))
