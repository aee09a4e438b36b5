"""The engine base class: one model call, metered.

DSPy 3.4 engines implement ``complete(Request) -> Response``; DSPy keeps the
cache and history. :class:`MeteredEngine` adds what an optimizer needs on
top: every try is reserved with the active meters first (so a budget is a
hard cap, retries included) and its token usage is reported afterwards;
transient errors are retried with backoff and jitter and slow calls time out
(see :mod:`dspy_ext.lm.retry`); a prompt that does not fit the context window
is refused before it costs anything. Subclasses implement
:meth:`MeteredEngine.generate` only.
"""

from __future__ import annotations

import abc
import contextvars
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from dspy.lm15 import Message, Request, Response, TextPart, Usage, response_to_events

from dspy_ext.lm.errors import ContextOverflowError, LMCallTimeout, LMRetriesExhausted
from dspy_ext.lm.metering import Price, active_meters, reserve_all
from dspy_ext.lm.retry import CallPolicy, active_call_policy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    """What a backend produced for one request."""

    text: str
    input_tokens: int
    output_tokens: int
    finish_reason: str = "stop"
    cost: float | None = None  # USD, when the backend knows it (the engine's ``price`` takes precedence)


def generation_of(response: Response) -> Generation:
    """What a DSPy engine's ``Response`` says of one try: text, token usage and finish reason."""
    usage = response.usage
    return Generation(
        text=response.text or "",
        input_tokens=int(getattr(usage, "input_tokens", 0) or 0),
        output_tokens=int(getattr(usage, "output_tokens", 0) or 0),
        finish_reason="length" if response.finish_reason == "length" else "stop",
    )


def request_messages(request: Request) -> list[dict[str, str]]:
    """Flatten a DSPy request into OpenAI-style ``{"role", "content"}`` dicts."""
    messages: list[dict[str, str]] = []
    if request.system is not None:
        system = (
            request.system
            if isinstance(request.system, str)
            else "".join(getattr(part, "text", "") or "" for part in request.system)
        )
        messages.append({"role": "system", "content": system})
    messages.extend({"role": m.role, "content": m.text or ""} for m in request.messages)
    return messages


_last = threading.local()
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("dspy_ext_call_deadline", default=None)


def call_deadline() -> float | None:
    """The ``time.monotonic()`` by which the running engine call must finish, or ``None``.

    Engines with ``cooperative_timeout = True`` read it inside
    :meth:`MeteredEngine.generate` and raise
    :class:`~dspy_ext.lm.errors.LMCallTimeout` themselves when they pass it.
    """
    return _deadline.get()


def pop_finish_reason() -> str | None:
    """The finish reason of the last engine call made in this thread, then forget it.

    ``None`` when no dspy-ext engine ran since the last pop (e.g. a DSPy cache
    hit, or an LM with another engine). Proposal guards use it to reject
    instructions that were cut off at ``max_tokens``.
    """
    reason = getattr(_last, "finish_reason", None)
    _last.finish_reason = None
    return reason


def pop_cost() -> float | None:
    """The USD of the last engine call made in this thread (``None``: unknown or none), then forget it.

    The call journal stores it with the reply, so a replayed call is charged what it cost.
    """
    cost = getattr(_last, "cost", None)
    _last.cost = None
    return cost


def note_finish_reason(reason: str | None) -> None:
    """Set what :func:`pop_finish_reason` returns next in this thread, for a reply served without the
    engine (a replay from a run's call journal), so a replayed reply reads exactly like the original."""
    _last.finish_reason = reason


class MeteredEngine(abc.ABC):
    """Base class of dspy-ext engines: meters every try, retries transient errors, then generates.

    Attributes:
        call_policy: This engine's retries and timeout (a
            :class:`~dspy_ext.lm.retry.CallPolicy`); a
            :func:`~dspy_ext.lm.retry.call_policy` block overrides it.
        cooperative_timeout: ``True`` when :meth:`generate` enforces
            :func:`call_deadline` itself; otherwise a call with a timeout runs
            in a helper thread that is abandoned when the time is up.

    Example:
        >>> class Echo(MeteredEngine):
        ...     def generate(self, request):
        ...         last = request_messages(request)[-1]["content"]
        ...         return Generation(text=last, input_tokens=1, output_tokens=1)
        >>> lm = dspy.LM("fake/echo-v1", engine=Echo())  # doctest: +SKIP
    """

    call_policy: CallPolicy | None = None
    cooperative_timeout: bool = False
    #: What a call costs (``None``: the backend's own estimate, else unknown).
    price: Price | None = None

    def cost_of(self, generation: Generation) -> float | None:
        """USD of one try: from :attr:`price`, else the backend's estimate, else ``None`` (unknown)."""
        if self.price is not None:
            return self.price.cost(generation.input_tokens, generation.output_tokens)
        return generation.cost

    @abc.abstractmethod
    def generate(self, request: Request) -> Generation:
        """Run the model once for ``request``.

        Raises:
            ContextOverflowError: The prompt does not fit the context window
                (raise it before decoding: the try is then not charged).
        """

    def complete(self, request: Request) -> Response:
        """Run ``request`` under the active call policy, charging every try to the active meters.

        Raises:
            BudgetExhausted: A meter has no call left (before the first try or a retry).
            LMRetriesExhausted: A transient error persisted through every retry.
            ContextOverflowError: The prompt does not fit (nothing is charged).
            Exception: Any other error of :meth:`generate`, unchanged.
        """
        generation, cost = self.metered(lambda timeout: self._generate_once(request, timeout))
        _last.finish_reason = generation.finish_reason
        _last.cost = cost
        return Response(
            id=None,
            model=request.model,
            message=Message.assistant([TextPart(generation.text)]),
            finish_reason=generation.finish_reason,
            usage=Usage(input_tokens=generation.input_tokens, output_tokens=generation.output_tokens),
        )

    def metered(
        self,
        attempt: Callable[[float | None], Generation],
        *,
        final: Callable[[BaseException], bool] = lambda exc: False,
    ) -> tuple[Generation, float | None]:
        """Run ``attempt(timeout)`` as one metered call: every try reserved first, transient errors retried.

        What :meth:`complete` does for a generation, for any other request an engine sends (a
        likelihood score, a constrained choice): the try is reserved on the active meters, its usage
        and cost recorded, and a transient error retried with backoff under the active call policy.

        Args:
            attempt: One try, given the policy's timeout; returns what the model reported.
            final: Errors never to retry even if they look transient (e.g. a refused request body).

        Returns:
            The generation and its cost in USD (``None``: unknown).
        """
        policy = active_call_policy(self)
        retry = 0
        while True:
            meters = reserve_all(active_meters())
            try:
                generation = attempt(policy.timeout)
            except ContextOverflowError:
                for meter in meters:
                    meter.release()  # refused before decoding: nothing was spent
                raise
            except BaseException as exc:
                transient = isinstance(exc, Exception) and not final(exc) and policy.retry_on(exc)
                # A refused or dropped connection, 429 or 5xx is a try the model did not answer: the breaker
                # counts it. A timeout is not counted: a busy server times out too, while it still answers.
                unanswered = transient and not isinstance(exc, LMCallTimeout)
                for meter in meters:
                    meter.record(None, None, failed=True, error=exc if unanswered else None)
                if not transient:
                    raise
                if retry >= policy.max_retries:
                    raise LMRetriesExhausted(retry + 1, exc) from exc
                wait = policy.delay(retry, exc)
                logger.info(
                    "transient LM error (%s: %s); retry %d of %d in %.2f s",
                    type(exc).__name__,
                    str(exc).split("\n", 1)[0][:200],
                    retry + 1,
                    policy.max_retries,
                    wait,
                )
                time.sleep(wait)
                retry += 1
                continue
            cost = self.cost_of(generation)
            for meter in meters:
                meter.record(generation.input_tokens, generation.output_tokens, cost=cost)
            return generation, cost

    def _generate_once(self, request: Request, timeout: float | None) -> Generation:
        if timeout is None:
            return self.generate(request)
        token = _deadline.set(time.monotonic() + timeout)
        try:
            if self.cooperative_timeout:
                return self.generate(request)
            return _run_with_timeout(self.generate, request, timeout)
        finally:
            _deadline.reset(token)

    def stream(self, request: Request):
        return response_to_events(self.complete(request))

    def close(self) -> None:
        """Engines here hold no connection; subclasses free what they own."""


def _run_with_timeout(generate, request: Request, timeout: float) -> Generation:
    """Run ``generate(request)`` in a helper thread; give up on it after ``timeout`` seconds.

    A Python thread cannot be stopped: a call that hangs keeps its (daemon)
    thread until it returns, and its result is dropped. The try is charged
    either way, as a provider bills a request the client stopped waiting for.
    """
    outcome: dict[str, object] = {}
    done = threading.Event()
    context = contextvars.copy_context()

    def target() -> None:
        try:
            outcome["value"] = context.run(generate, request)
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name="dspy-ext-lm-call", daemon=True).start()
    if not done.wait(timeout):
        raise LMCallTimeout(timeout)
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]
