"""The LM failures dspy-ext tells apart: transient, timed out, given up, context overflow.

* :func:`is_transient_error` decides what the engine layer retries: rate
  limits, timeouts, 5xx server errors and dropped connections, from DSPy's
  lm15 engines, from HTTP clients (by status code) and from Python itself.
* :class:`LMCallTimeout` is raised when one call runs past its timeout.
* :class:`LMRetriesExhausted` is raised when a transient error persisted
  through every retry. It is deliberately *not* one of DSPy's retryable types,
  so DSPy does not retry an already retried call again.
* :class:`ContextOverflowError` is raised before decoding when a prompt does
  not fit the model's context window. It is an ``lm15.ContextLengthError``, so
  DSPy reports it as ``ContextWindowExceededError``; the evaluator gives such a
  row the error class ``context_overflow``. It is also the DSPy-free runtime's
  :class:`dspy_ext.runtime.ContextOverflowError`, with the same message.

Example:
    >>> is_transient_error(ConnectionResetError())
    True
    >>> is_transient_error(ValueError("bad prompt"))
    False
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator

from dspy import lm15
from dspy.utils.exceptions import ContextWindowExceededError, is_retryable_lm_error

from dspy_ext import runtime

__all__ = [
    "ContextOverflowError",
    "LMCallTimeout",
    "LMRetriesExhausted",
    "context_overflow_in",
    "is_transient_error",
]

#: HTTP statuses worth another try: request timeout, too early, rate limit, and server errors
#: (501 Not Implemented and 505 are permanent).
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})

_TRANSIENT_LM15 = (lm15.RateLimitError, lm15.TimeoutError, lm15.ServerError, lm15.TransportError, lm15.LockTimeoutError)

# Well-known transient errors of HTTP/LLM client libraries, matched by class name so that none of
# them has to be imported (httpx, requests, openai, anthropic, litellm).
_TRANSIENT_CLASS_NAMES = frozenset(
    {
        "APIConnectionError",
        "APITimeoutError",
        "RateLimitError",
        "InternalServerError",
        "ServiceUnavailableError",
        "TimeoutException",
        "NetworkError",
        "ConnectError",
        "ReadError",
        "RemoteProtocolError",
        "ReadTimeout",
        "ConnectTimeout",
        "PoolTimeout",
        "ChunkedEncodingError",
    }
)


class LMCallTimeout(builtins.TimeoutError):
    """One LM call ran past its timeout (see ``CallPolicy.timeout``); it is retried like any timeout.

    Attributes:
        timeout: The limit in seconds.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(f"LM call timed out after {timeout:g} s")


class LMRetriesExhausted(RuntimeError):
    """A transient LM error persisted through every allowed try.

    The last error is the ``__cause__``. The evaluator counts the row as
    ``lm_error`` (left out of the mean).

    Attributes:
        tries: How many times the call was tried.
        last_error: The error of the last try.
    """

    def __init__(self, tries: int, last_error: BaseException) -> None:
        self.tries = tries
        self.last_error = last_error
        first_line = (str(last_error).strip().splitlines() or [""])[0]
        what = f"{type(last_error).__name__}: {first_line}" if first_line else type(last_error).__name__
        super().__init__(f"LM call failed {tries} time(s) with transient errors; last: {what}")


class ContextOverflowError(runtime.ContextOverflowError, lm15.ContextLengthError):
    """A prompt does not fit the model's context window; raised by an engine before anything is decoded.

    The engine's form of :class:`dspy_ext.runtime.ContextOverflowError` (one meaning: ``except
    runtime.ContextOverflowError`` catches both), and an ``lm15.ContextLengthError``, so DSPy
    reports it as ``ContextWindowExceededError``.

    Attributes:
        prompt_tokens: Tokens of the rendered prompt.
        context_window: The model's context window.
        reply_tokens: Tokens kept free for the reply.
        model_name: The model name, if known. ``model`` is ``None``: DSPy names the error after the
            LM that made the call.

    Example:
        >>> str(ContextOverflowError(2301, 2048, reply_tokens=1))[:78]
        'context overflow: the prompt has 2301 tokens + 1 reserved for the reply, 254 m'
    """

    def __init__(
        self, prompt_tokens: int, context_window: int, *, reply_tokens: int = 0, model: str | None = None
    ) -> None:
        runtime.ContextOverflowError.__init__(
            self, prompt_tokens, context_window, reply_tokens=reply_tokens, model=model
        )
        self.model = None  # DSPy's error wrapper reads `model` and would rename the failing LM
        self.model_name = model
        # lm15.ContextLengthError.__init__ would append several lines of advice: keep one line.
        lm15.LM15Error.__init__(self, str(self.args[0]))

    def __str__(self) -> str:
        return self.message


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def context_overflow_in(exc: BaseException | None) -> BaseException | None:
    """The context-overflow error behind ``exc`` (ours, lm15's or DSPy's), if any.

    Args:
        exc: An exception raised while running a program (DSPy wraps engine errors).

    Returns:
        The first overflow error along ``__cause__``/``__context__``, or ``None``.
    """
    for error in _chain(exc):
        if isinstance(error, (ContextOverflowError, lm15.ContextLengthError, ContextWindowExceededError)):
            return error
    return None


def is_transient_error(exc: BaseException) -> bool:
    """Whether ``exc`` is worth retrying: rate limit, timeout, 5xx or a dropped connection.

    Checked along the cause chain: lm15/DSPy retryable errors, Python's
    ``TimeoutError`` and ``ConnectionError`` (reset, refused, broken pipe), an
    HTTP status in :data:`TRANSIENT_STATUSES` (``status_code`` or ``status``
    attribute), and the transient error classes of common HTTP/LLM clients by
    name. A context overflow and :class:`LMRetriesExhausted` never are.

    Args:
        exc: The exception an engine raised.

    Returns:
        ``True`` when another try may succeed.

    Example:
        >>> is_transient_error(lm15.RateLimitError("slow down"))
        True
    """
    for error in _chain(exc):
        if isinstance(error, (LMRetriesExhausted, lm15.ContextLengthError, ContextWindowExceededError)):
            return False
        if isinstance(error, _TRANSIENT_LM15 + (builtins.TimeoutError, ConnectionError)):
            return True
        if isinstance(error, Exception) and is_retryable_lm_error(error):
            return True
        status = getattr(error, "status_code", None)
        if status is None:
            status = getattr(error, "status", None)
        if isinstance(status, int) and not isinstance(status, bool) and status in TRANSIENT_STATUSES:
            return True
        if any(cls.__name__ in _TRANSIENT_CLASS_NAMES for cls in type(error).__mro__):
            return True
    return False
