"""Likelihood scoring: the log-probability of a given reply under the model, with nothing generated.

An engine that can do it implements ``score_continuations(messages, continuations,
*, end_of_turn) -> list[ContinuationScore]``: the chat messages are rendered
with the model's chat template (up to the assistant cue), each continuation is
appended as the assistant's reply, and one forward pass reads the
log-probability of every reply token. The embedded llama.cpp engine and the
fake engine implement it, and so does a served model on an OpenAI-compatible
endpoint whose ``/completions`` returns prompt log-probabilities (``echo`` +
``logprobs``, e.g. llama.cpp's server; see :class:`dspy_ext.lm.served.ServedEngine`).
Hosted chat APIs do not (they return the log-probabilities of tokens they
*generate*, not of a given reply), and :func:`score_continuations` raises
:class:`LikelihoodUnavailable` for them, with the reason.

Every call is one "forward pass": it is reserved on the active call meters like
an LM call, so a budget caps scoring and generation together, and it goes into
the run's call journal (:mod:`dspy_ext.lm.journal`), so a resumed compile
replays it instead of paying for it again. An engine that sends one request per
continuation (``meters_own_requests = True``, the served engine) reserves and
journals each request itself instead.

An engine may also offer constrained decoding of a closed label set
(:class:`ChoiceEngine`: ``generate_choice(messages, labels, *, field)``), which a
served model does through a JSON-schema ``response_format``.

Example:
    >>> lm = make_lm("local")                                            # doctest: +SKIP
    >>> messages = [{"role": "user", "content": "Input: A fine film."}]  # doctest: +SKIP
    >>> score_continuations(lm, messages, ["positive", "negative"])      # doctest: +SKIP
    [-0.41, -2.87]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from dspy_ext.lm.journal import active_journal
from dspy_ext.lm.metering import active_meters, reserve_all

__all__ = [
    "ChoiceEngine",
    "ContinuationScore",
    "LikelihoodEngine",
    "LikelihoodUnavailable",
    "choice_engine",
    "count_prompt_tokens",
    "likelihood_engine",
    "log_softmax",
    "score_continuations",
    "supports_likelihood",
]


#: The journal kind of one forward pass of an in-process engine (see :mod:`dspy_ext.lm.journal`).
SCORE_CALL = "score"


class LikelihoodUnavailable(RuntimeError):
    """The LM cannot score a given continuation (e.g. a remote chat API)."""


@dataclass(frozen=True)
class ContinuationScore:
    """The log-probability of one continuation.

    Attributes:
        logprob: Sum of the natural-log probabilities of its tokens (the
            end-of-turn token included when it was scored).
        n_tokens: Number of scored tokens (at least 1).
        evaluated_tokens: Prompt and reply tokens the engine had to process
            for it (what prefix reuse saves shows here).
    """

    logprob: float
    n_tokens: int
    evaluated_tokens: int = 0

    @property
    def mean_logprob(self) -> float:
        """Log-probability per token (comparable across replies of different length)."""
        return self.logprob / max(1, self.n_tokens)


@runtime_checkable
class LikelihoodEngine(Protocol):
    """An engine that can score given replies (see the module docstring)."""

    def score_continuations(
        self, messages: list[dict[str, str]], continuations: Sequence[str], *, end_of_turn: bool = True
    ) -> list[ContinuationScore]: ...


@runtime_checkable
class ChoiceEngine(Protocol):
    """An engine that can generate one of a closed set of labels (constrained decoding)."""

    def generate_choice(
        self, messages: list[dict[str, str]], labels: Sequence[str], *, field: str = "output"
    ) -> str: ...


def choice_engine(lm: Any) -> ChoiceEngine | None:
    """The engine of ``lm`` if it can generate under a label constraint, else ``None``."""
    engine = getattr(lm, "engine", None)
    return engine if isinstance(engine, ChoiceEngine) else None


def likelihood_engine(lm: Any, *, end_of_turn: bool = False) -> LikelihoodEngine:
    """The engine of ``lm`` if it can score continuations (a served engine is asked, see
    ``ServedEngine.likelihood_unavailable``: it may probe its endpoint once, with one metered request).

    Args:
        lm: A ``dspy.LM`` (or anything with an ``engine`` attribute).
        end_of_turn: Also require that it can score the end-of-turn token (what a gold reply
            scored alone needs; a label choice does not): a served endpoint whose probe showed no
            end of turn cannot.

    Returns:
        The engine.

    Raises:
        LikelihoodUnavailable: ``lm`` is ``None`` or its engine cannot score (the message says why).
    """
    if lm is None:
        raise LikelihoodUnavailable("no LM is configured; likelihood scoring needs one")
    engine = getattr(lm, "engine", None)
    if not isinstance(engine, LikelihoodEngine):
        name = getattr(lm, "model", type(lm).__name__)
        raise LikelihoodUnavailable(
            f"LM {name!r} cannot score a given reply (the embedded llama.cpp engine, the fake engine and a "
            "served model on an endpoint that returns prompt logprobs can); use the metric instead"
        )
    unavailable = getattr(engine, "likelihood_unavailable", None)
    reason = unavailable() if callable(unavailable) else None
    if not reason and end_of_turn:
        reason = getattr(engine, "end_of_turn_unavailable", None)
    if reason:
        raise LikelihoodUnavailable(reason)
    return engine


def supports_likelihood(lm: Any, *, end_of_turn: bool = False) -> bool:
    """Whether :func:`score_continuations` works for ``lm`` (with ``end_of_turn``, see :func:`likelihood_engine`)."""
    try:
        likelihood_engine(lm, end_of_turn=end_of_turn)
    except LikelihoodUnavailable:
        return False
    return True


def score_continuations(
    lm: Any,
    messages: list[dict[str, str]],
    continuations: Sequence[str],
    *,
    end_of_turn: bool = True,
    per_token: bool = False,
) -> list[float]:
    """Log-probabilities of ``continuations`` as the assistant's reply to ``messages``.

    Args:
        lm: A ``dspy.LM`` whose engine can score (see :func:`supports_likelihood`).
        messages: Chat messages (``{"role", "content"}``), as an adapter renders them.
        continuations: Candidate replies, e.g. the gold output or each allowed label.
        end_of_turn: Also score the end-of-turn token after each reply, so that
            ``"positive"`` is not credited for being the start of a longer
            sentence.
        per_token: Return the mean log-probability per token instead of the sum.

    Returns:
        One natural-log score per continuation, in order (all <= 0).

    Raises:
        LikelihoodUnavailable: The LM cannot score.
        ValueError: No continuations, or an empty one.
        BudgetExhausted: An active meter has no call left (nothing was run).

    Example:
        >>> score_continuations(lm, [{"role": "user", "content": "Input: cat"}], ["cats", "dogs"])  # doctest: +SKIP
        [-0.2, -6.1]
    """
    return [
        s.mean_logprob if per_token else s.logprob
        for s in continuation_scores(lm, messages, continuations, end_of_turn=end_of_turn)
    ]


def continuation_scores(
    lm: Any, messages: list[dict[str, str]], continuations: Sequence[str], *, end_of_turn: bool = True
) -> list[ContinuationScore]:
    """Like :func:`score_continuations`, with token counts (see :class:`ContinuationScore`)."""
    engine = likelihood_engine(lm)
    continuations = list(continuations)
    if not continuations:
        raise ValueError("give at least one continuation to score")
    if any(not isinstance(c, str) or not c for c in continuations):
        raise ValueError("continuations must be non-empty strings")
    if getattr(engine, "meters_own_requests", False):
        return engine.score_continuations(messages, continuations, end_of_turn=end_of_turn)
    journal = active_journal()
    key = None
    if journal is not None:
        request = {"model": getattr(lm, "model", None), "messages": messages, "continuations": continuations}
        key = journal.call_key(SCORE_CALL, {**request, "end_of_turn": end_of_turn})
        replayed = journal.replay_call(key)
        if replayed is not None:
            return [ContinuationScore(**row) for row in replayed["scores"]]
    meters = reserve_all(active_meters())
    try:
        scores = engine.score_continuations(messages, continuations, end_of_turn=end_of_turn)
    except BaseException:
        for meter in meters:
            meter.record(None, None, failed=True)
        raise
    evaluated = sum(s.evaluated_tokens for s in scores)
    for meter in meters:
        meter.record(evaluated, 0)
    if journal is not None:
        rows = [dataclasses.asdict(s) for s in scores]
        usage = {"input_tokens": evaluated, "output_tokens": 0, "cost": 0.0}
        journal.record_call(key, SCORE_CALL, {"scores": rows}, usage)
    return scores


def count_prompt_tokens(lm: Any, messages: list[dict[str, str]]) -> int:
    """Tokens of ``messages`` rendered for the model, up to the assistant cue.

    Exact for engines with a tokenizer (``count_prompt_tokens`` on the engine,
    e.g. the embedded model); otherwise an estimate of one token per 4
    characters plus 4 per message, which over-counts English text a little.

    Args:
        lm: A ``dspy.LM`` (or ``None`` for the estimate).
        messages: Chat messages.

    Returns:
        The token count.

    Example:
        >>> count_prompt_tokens(None, [{"role": "user", "content": "x" * 40}])
        14
    """
    engine = getattr(lm, "engine", None)
    counter = getattr(engine, "count_prompt_tokens", None)
    if callable(counter):
        return int(counter(messages))
    return sum(4 + math.ceil(len(m.get("content") or "") / 4) for m in messages)


def log_softmax(values: Sequence[float]) -> list[float]:
    """Normalise log-scores over a closed set: ``v - logsumexp(values)``.

    Example:
        >>> [round(math.exp(v), 2) for v in log_softmax([math.log(1), math.log(3)])]
        [0.25, 0.75]
    """
    if not values:
        return []
    top = max(values)
    total = top + math.log(sum(math.exp(v - top) for v in values))
    return [v - total for v in values]
