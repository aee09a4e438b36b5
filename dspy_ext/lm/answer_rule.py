"""The answer rule of a predictor with a closed label set, kept in DSPy's own program state.

A small model asked for one of a few labels often answers with something else,
or prefers one label whatever the input. The answer rule says how such a
predictor answers:

* ``free``: the model generates its reply (DSPy's default; nothing is stored);
* ``constrained``: every allowed label is scored as the reply and the most
  likely one is the answer (one forward pass per call, nothing generated);
* ``calibrated``: constrained, with each label's probability divided by the
  prompt's bias on content-free inputs (contextual calibration, the ``prior``).

A constrained or calibrated rule rides on the predictor's own LM
(``Predict.lm``): a ``dspy.LM`` on an :class:`AnswerRuleEngine` that holds the
rule and scores the labels with the LM configured around the call
(``dspy.configure(lm=...)`` or ``dspy.context(lm=...)``). ``Predict.dump_state``
writes that LM, engine and rule included, into ``program.json``; loading it
with ``program.load(path, allow_unsafe_lm_state=True)`` (DSPy imports the
engine class by its path, which it allows only for trusted files) gives a
program that answers by the same rule, in any process with DSPy and this module.

Example:
    >>> rule = AnswerRule(AnswerMode.CONSTRAINED, "output", ("negative", "positive"),
    ...                   ("Output: negative", "Output: positive"))
    >>> predictor.lm = answer_rule_lm(rule)                     # doctest: +SKIP
    >>> with dspy.context(lm=make_lm("local")):                 # doctest: +SKIP
    ...     predictor(input="A gorgeous, witty film.").output
    'positive'
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dspy
from dspy.lm15 import Message, Request, Response, TextPart, Usage

from dspy_ext import runtime
from dspy_ext.lm.engine import request_messages
from dspy_ext.lm.likelihood import LikelihoodUnavailable, choice_engine, continuation_scores, supports_likelihood

__all__ = [
    "ENGINE_CLASS_PATH",
    "AnswerMode",
    "AnswerRule",
    "AnswerRuleEngine",
    "answer_rule_lm",
    "answer_rule_of",
    "only_answer_rule_lms",
    "scoring_lm",
]

# A label the prompt never predicts on content-free inputs must not divide by zero (runtime.choose_label's floor).
_FLOOR = 1e-6


class AnswerMode(str, enum.Enum):
    """How a predictor with a closed label set answers (see the module docstring)."""

    FREE = "free"
    CONSTRAINED = "constrained"
    CALIBRATED = "calibrated"


@dataclass(frozen=True)
class AnswerRule:
    """A constrained or calibrated answer rule of one predictor.

    Attributes:
        mode: :attr:`AnswerMode.CONSTRAINED` or :attr:`AnswerMode.CALIBRATED`.
        field: The output field the rule answers.
        labels: The allowed labels, in order.
        replies: The assistant text of each label, as the predictor's adapter writes it (what is
            scored after the prompt, and returned as the reply of the chosen label).
        prior: The prompt's label probabilities on content-free inputs (calibrated only).
    """

    mode: AnswerMode
    field: str
    labels: tuple[str, ...]
    replies: tuple[str, ...]
    prior: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", AnswerMode(self.mode))
        if self.mode is AnswerMode.FREE:
            raise ValueError("a free answer is no rule: leave the predictor's LM unset")
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"an answer rule needs at least 2 distinct labels, got {list(self.labels)}")
        if len(self.replies) != len(self.labels) or not all(isinstance(r, str) and r for r in self.replies):
            raise ValueError("an answer rule needs one non-empty reply text per label")
        if (self.mode is AnswerMode.CALIBRATED) != (self.prior is not None):
            raise ValueError("a calibrated rule needs a prior, and only a calibrated rule has one")
        if self.prior is not None and (len(self.prior) != len(self.labels) or min(self.prior) < 0):
            raise ValueError("the prior needs one non-negative probability per label")

    @property
    def label_rule(self) -> dict[str, Any]:
        """The rule as an exported artifact's ``label_rule`` (applied by :func:`dspy_ext.runtime.choose_label`)."""
        prior = None if self.prior is None else [float(p) for p in self.prior]
        return {"field": self.field, "labels": list(self.labels), "prior": prior, "method": "likelihood"}

    def choose(self, label_logprobs: Sequence[float]) -> int:
        """The index of the answer among the labels, given each label's log-probability as the reply."""
        label = runtime.choose_label(self.label_rule, label_scores=dict(zip(self.labels, label_logprobs)))
        return self.labels.index(label)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "field": self.field,
            "labels": list(self.labels),
            "replies": list(self.replies),
            "prior": None if self.prior is None else [round(float(p), 6) for p in self.prior],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnswerRule:
        """The rule :meth:`to_dict` wrote (a clear ``ValueError`` names what is missing or wrong)."""
        if not isinstance(data, dict):
            raise ValueError(f"an answer rule is a JSON object, got {type(data).__name__}")
        missing = [k for k in ("mode", "field", "labels", "replies") if k not in data]
        if missing:
            raise ValueError(f"the answer rule lacks {missing}")
        prior = data.get("prior")
        return cls(
            AnswerMode(data["mode"]),
            str(data["field"]),
            tuple(str(label) for label in data["labels"]),
            tuple(data["replies"]),
            None if prior is None else tuple(float(p) for p in prior),
        )

    @staticmethod
    def prior_from(probs: Sequence[float]) -> tuple[float, ...]:
        """Mean content-free label probabilities, floored and renormalised."""
        floored = [max(float(p), _FLOOR) for p in probs]
        total = math.fsum(floored)
        return tuple(p / total for p in floored)


class AnswerRuleEngine:
    """A DSPy engine that answers with the label its :class:`AnswerRule` chooses.

    Each call scores every label's reply after the request's messages with the LM configured
    around the call (``dspy.settings.lm``: it must be able to score given replies, as the embedded
    model and a served model whose endpoint returns prompt log-probabilities can). That scoring is
    one forward pass, counted and capped by the active call meters and journaled like any call. A
    served LM that cannot score but can generate under a label enum (``response_format``) answers
    a constrained rule that way; a calibrated rule then falls back to constrained.

    Args:
        rule: The answer rule.
    """

    def __init__(self, rule: AnswerRule) -> None:
        self.answer_rule = rule

    def complete(self, request: Request) -> Response:
        lm = dspy.settings.lm
        if lm is None or isinstance(getattr(lm, "engine", None), AnswerRuleEngine):
            raise LikelihoodUnavailable(
                "a predictor with an answer rule needs a task LM configured around it "
                "(dspy.configure(lm=...) or dspy.context(lm=...)) to score its labels"
            )
        rule, messages = self.answer_rule, request_messages(request)
        if not supports_likelihood(lm) and choice_engine(lm) is not None:
            label = choice_engine(lm).generate_choice(messages, rule.labels, field=rule.field)
            text, evaluated = rule.replies[rule.labels.index(label)], 0
        else:
            scores = continuation_scores(lm, messages, rule.replies, end_of_turn=False)
            text = rule.replies[rule.choose([s.logprob for s in scores])]
            evaluated = sum(s.evaluated_tokens for s in scores)
        return Response(
            id=None,
            model=request.model,
            message=Message.assistant([TextPart(text)]),
            finish_reason="stop",
            usage=Usage(input_tokens=evaluated, output_tokens=0),
        )

    def close(self) -> None:
        """Nothing to release: the scoring LM is the caller's."""

    def dump_state(self) -> dict[str, Any]:
        """The rule, as ``program.json`` keeps it (DSPy calls this when it saves the predictor's LM)."""
        return {"answer_rule": self.answer_rule.to_dict()}

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> AnswerRuleEngine:
        """The engine :meth:`dump_state` described (DSPy calls this when it loads the predictor's LM)."""
        if not isinstance(state, dict) or "answer_rule" not in state:
            raise ValueError("an AnswerRuleEngine state needs its 'answer_rule'")
        return cls(AnswerRule.from_dict(state["answer_rule"]))


def answer_rule_lm(rule: AnswerRule) -> dspy.LM:
    """The predictor LM that applies ``rule`` (set it as ``predictor.lm``).

    DSPy's cache is off for it: its answers depend on the LM configured around each call, which
    its cache key cannot see; the scoring calls themselves are metered and journaled as usual.
    """
    tag = runtime.compute_hash(rule.to_dict())[:12]
    return dspy.LM(
        f"dspy-ext/answer-rule-{rule.mode.value}-{tag}",
        engine=AnswerRuleEngine(rule),
        cache=False,
        num_retries=0,
        temperature=0.0,
    )


def scoring_lm(predictor: Any) -> dspy.BaseLM | None:
    """The predictor's own LM for scoring its replies (``None`` for an answer-rule LM, which scores with the
    LM configured around the call)."""
    return None if answer_rule_of(predictor) is not None else getattr(predictor, "lm", None)


def answer_rule_of(predictor: Any) -> AnswerRule | None:
    """The answer rule ``predictor`` carries on its own LM (``None``: it answers freely)."""
    engine = getattr(getattr(predictor, "lm", None), "engine", None)
    return engine.answer_rule if isinstance(engine, AnswerRuleEngine) else None


#: How DSPy names this engine class in a saved LM state (``module:qualname``).
ENGINE_CLASS_PATH = f"{AnswerRuleEngine.__module__}:{AnswerRuleEngine.__qualname__}"

_UNSAFE_LM_KEYS = ("api_base", "base_url", "model_list")


def only_answer_rule_lms(program_state: dict[str, Any]) -> bool:
    """Whether every predictor LM saved in ``program_state`` (a ``program.save("x.json")`` state) is an
    answer-rule LM, and at least one is: loading it with ``allow_unsafe_lm_state=True`` then imports
    only :class:`AnswerRuleEngine` and restores no endpoint."""
    entries = [program_state] if "signature" in program_state else list(program_state.values())  # a bare Predict
    lms = [e.get("lm") for e in entries if isinstance(e, dict) and e.get("lm") is not None]
    return bool(lms) and all(_is_answer_rule_lm(lm) for lm in lms)


def _is_answer_rule_lm(state: Any) -> bool:
    if not isinstance(state, dict) or any(k in state for k in _UNSAFE_LM_KEYS):
        return False
    engine = state.get("engine")
    return (
        state.get("_dspy_lm_class", "dspy.clients.lm.LM") == "dspy.clients.lm.LM"
        and isinstance(engine, dict)
        and engine.get("class") == ENGINE_CLASS_PATH
    )
