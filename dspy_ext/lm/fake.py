"""A deterministic fake engine for unit tests and overhead benchmarks.

It runs no model: a *responder* function maps the chat messages to a reply.
Optional latency emulates a remote API (the thread-scaling benchmark sleeps
200 ms per call); optional failures emulate an LM that errors; an optional
context window (one token per word) emulates prompts that do not fit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from dspy.lm15 import Request

from dspy_ext.lm.engine import Generation, MeteredEngine, request_messages
from dspy_ext.lm.errors import ContextOverflowError
from dspy_ext.lm.likelihood import ContinuationScore
from dspy_ext.lm.metering import Price
from dspy_ext.lm.retry import CallPolicy

Responder = Callable[[list[dict[str, str]]], str]
#: Maps (messages, continuation) to the continuation's log-probability (<= 0).
Scorer = Callable[[list[dict[str, str]], str], float]


class FakeLMError(RuntimeError):
    """Raised by :class:`FakeEngine` when told to fail."""


class FakeEngine(MeteredEngine):
    """Answers with ``responder(messages)``; counts calls itself as well.

    Args:
        responder: Maps the flattened chat messages to the reply text.
        latency: Seconds to sleep per call (outside any lock, like an API).
        fail_when: Optional predicate on the messages; when true the call
            raises :class:`FakeLMError`.
        scorer: Log-probability of a continuation for likelihood scoring
            (:meth:`score_continuations`). Default: the responder's reply is the
            likely one (-0.05 per token), any other text is not (-1 per token, -3).
        context_window: Optional context size in tokens (one per word, see
            :meth:`count_prompt_tokens`); a longer prompt raises
            :class:`~dspy_ext.lm.errors.ContextOverflowError` before the
            responder runs, as the embedded model does.
        call_policy: Retries and timeout (see :class:`~dspy_ext.lm.retry.CallPolicy`).

    Example:
        >>> engine = FakeEngine(lambda messages: "positive")
        >>> lm = dspy.LM("fake/constant-v1", engine=engine)  # doctest: +SKIP
    """

    price = Price(0.0, 0.0)  # runs here: no bill

    def __init__(
        self,
        responder: Responder,
        *,
        latency: float = 0.0,
        fail_when: Callable[[list[dict[str, str]]], bool] | None = None,
        scorer: Scorer | None = None,
        context_window: int | None = None,
        call_policy: CallPolicy | None = None,
    ) -> None:
        if context_window is not None and (
            isinstance(context_window, bool) or not isinstance(context_window, int) or context_window < 1
        ):
            raise ValueError(f"context_window must be a positive integer or None, got {context_window!r}")
        self.responder = responder
        self.context_window = context_window
        if call_policy is not None:
            self.call_policy = call_policy
        self.latency = latency
        self.fail_when = fail_when
        self.scorer = scorer
        self.requests: list[list[dict[str, str]]] = []
        self.score_requests: list[tuple[list[dict[str, str]], tuple[str, ...]]] = []
        self._lock = threading.Lock()

    @property
    def calls(self) -> int:
        return len(self.requests)

    def generate(self, request: Request) -> Generation:
        messages = request_messages(request)
        if self.context_window is not None:
            prompt_tokens = self.count_prompt_tokens(messages)
            if prompt_tokens + 1 > self.context_window:  # like llama.cpp: room for one reply token at least
                raise ContextOverflowError(prompt_tokens, self.context_window, reply_tokens=1, model=request.model)
        with self._lock:
            self.requests.append(messages)
        if self.latency:
            time.sleep(self.latency)
        if self.fail_when is not None and self.fail_when(messages):
            raise FakeLMError("fake engine was told to fail on this request")
        text = self.responder(messages)
        prompt_words = sum(len(m["content"].split()) for m in messages)
        words = text.split()
        cap = request.config.max_tokens if request.config is not None else None
        if cap and len(words) > cap:
            # Cut off at max_tokens (one token per word), as a real model is: finish reason "length".
            return Generation(
                text=" ".join(words[:cap]), input_tokens=prompt_words, output_tokens=cap, finish_reason="length"
            )
        return Generation(text=text, input_tokens=prompt_words, output_tokens=len(words))

    def score_continuations(
        self, messages: list[dict[str, str]], continuations: Sequence[str], *, end_of_turn: bool = True
    ) -> list[ContinuationScore]:
        """Deterministic log-probabilities (see ``scorer``); one token per word, plus the end of turn."""
        with self._lock:
            self.score_requests.append((messages, tuple(continuations)))
        if self.fail_when is not None and self.fail_when(messages):
            raise FakeLMError("fake engine was told to fail on this request")
        reply = None if self.scorer is not None else self.responder(messages).strip()
        prompt_words = sum(len(m["content"].split()) for m in messages)
        scores = []
        for text in continuations:
            n_tokens = len(text.split()) + int(end_of_turn)
            if self.scorer is not None:
                logprob = float(self.scorer(messages, text))
            else:
                logprob = -0.05 * n_tokens if text.strip() == reply else -1.0 * n_tokens - 3.0
            scores.append(ContinuationScore(logprob, max(1, n_tokens), prompt_words + n_tokens))
        return scores

    def count_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        """One token per word of every message."""
        return sum(len(m["content"].split()) for m in messages)
