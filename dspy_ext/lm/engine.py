"""The engine base class: one model call, metered.

DSPy 3.4 engines implement ``complete(Request) -> Response``; DSPy keeps the
cache, retries and history. :class:`MeteredEngine` adds what an optimizer
needs on top: every call is reserved with the active meters first (so a
budget is a hard cap) and its token usage is reported afterwards.
Subclasses implement :meth:`MeteredEngine.generate` only.
"""

from __future__ import annotations

import abc
import threading
from dataclasses import dataclass

from dspy.lm15 import Message, Request, Response, TextPart, Usage, response_to_events

from dspy_ext.lm.metering import active_meters


@dataclass(frozen=True)
class Generation:
    """What a backend produced for one request."""

    text: str
    input_tokens: int
    output_tokens: int
    finish_reason: str = "stop"


def request_messages(request: Request) -> list[dict[str, str]]:
    """Flatten a DSPy request into OpenAI-style ``{"role", "content"}`` dicts."""
    messages: list[dict[str, str]] = []
    if request.system is not None:
        system = request.system if isinstance(request.system, str) else "".join(
            getattr(part, "text", "") or "" for part in request.system
        )
        messages.append({"role": "system", "content": system})
    messages.extend({"role": m.role, "content": m.text or ""} for m in request.messages)
    return messages


_last = threading.local()


def pop_finish_reason() -> str | None:
    """The finish reason of the last engine call made in this thread, then forget it.

    ``None`` when no dspy-ext engine ran since the last pop (e.g. a DSPy cache
    hit, or an LM with another engine). Proposal guards use it to reject
    instructions that were cut off at ``max_tokens``.
    """
    reason = getattr(_last, "finish_reason", None)
    _last.finish_reason = None
    return reason


class MeteredEngine(abc.ABC):
    """Base class of dspy-ext engines: meters every call, then generates.

    Example:
        >>> class Echo(MeteredEngine):
        ...     def generate(self, request):
        ...         last = request_messages(request)[-1]["content"]
        ...         return Generation(text=last, input_tokens=1, output_tokens=1)
        >>> lm = dspy.LM("fake/echo-v1", engine=Echo())  # doctest: +SKIP
    """

    @abc.abstractmethod
    def generate(self, request: Request) -> Generation:
        """Run the model once for ``request``."""

    def complete(self, request: Request) -> Response:
        meters = active_meters()
        reserved = []
        try:
            for meter in meters:
                meter.reserve()
                reserved.append(meter)
        except BaseException:
            for meter in reserved:
                meter.release()
            raise
        try:
            generation = self.generate(request)
        except BaseException:
            for meter in meters:
                meter.record(None, None, failed=True)
            raise
        for meter in meters:
            meter.record(generation.input_tokens, generation.output_tokens)
        _last.finish_reason = generation.finish_reason
        return Response(
            id=None,
            model=request.model,
            message=Message.assistant([TextPart(generation.text)]),
            finish_reason=generation.finish_reason,
            usage=Usage(input_tokens=generation.input_tokens, output_tokens=generation.output_tokens),
        )

    def stream(self, request: Request):
        return response_to_events(self.complete(request))

    def close(self) -> None:
        """Engines here hold no connection; subclasses free what they own."""
