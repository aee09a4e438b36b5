"""A deterministic fake engine for unit tests and overhead benchmarks.

It runs no model: a *responder* function maps the chat messages to a reply.
Optional latency emulates a remote API (the thread-scaling benchmark sleeps
200 ms per call); optional failures emulate an LM that errors.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from dspy.lm15 import Request

from dspy_ext.lm.engine import Generation, MeteredEngine, request_messages

Responder = Callable[[list[dict[str, str]]], str]


class FakeLMError(RuntimeError):
    """Raised by :class:`FakeEngine` when told to fail."""


class FakeEngine(MeteredEngine):
    """Answers with ``responder(messages)``; counts calls itself as well.

    Args:
        responder: Maps the flattened chat messages to the reply text.
        latency: Seconds to sleep per call (outside any lock, like an API).
        fail_when: Optional predicate on the messages; when true the call
            raises :class:`FakeLMError`.

    Example:
        >>> engine = FakeEngine(lambda messages: "positive")
        >>> lm = dspy.LM("fake/constant-v1", engine=engine)  # doctest: +SKIP
    """

    def __init__(
        self,
        responder: Responder,
        *,
        latency: float = 0.0,
        fail_when: Callable[[list[dict[str, str]]], bool] | None = None,
    ) -> None:
        self.responder = responder
        self.latency = latency
        self.fail_when = fail_when
        self.requests: list[list[dict[str, str]]] = []
        self._lock = threading.Lock()

    @property
    def calls(self) -> int:
        return len(self.requests)

    def generate(self, request: Request) -> Generation:
        messages = request_messages(request)
        with self._lock:
            self.requests.append(messages)
        if self.latency:
            time.sleep(self.latency)
        if self.fail_when is not None and self.fail_when(messages):
            raise FakeLMError("fake engine was told to fail on this request")
        text = self.responder(messages)
        prompt_words = sum(len(m["content"].split()) for m in messages)
        return Generation(text=text, input_tokens=prompt_words, output_tokens=len(text.split()))
