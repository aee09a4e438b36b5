"""Answer rules as a dimension of the search: which predictors take a closed label set, and the rule variants of a
candidate (constrained, calibrated) that a search can race against its free-generation original.

A predictor qualifies when it has one output field whose values form a closed set: a ``Literal`` field, or a
field of the training examples with few distinct values (:func:`~dspy_ext.evaluation.constrained.infer_label_set`).
A constrained rule scores every label as the reply; a calibrated one also divides by the prompt's label bias on
content-free inputs (:data:`~dspy_ext.evaluation.calibration.CONTENT_FREE_INPUTS`, one forward pass each, counted
by the active meters). The rule rides on the predictor's own LM (:mod:`dspy_ext.lm.answer_rule`), so it is kept by
``program.save`` and applied by DSPy after ``program.load``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import dspy

from dspy_ext.evaluation.calibration import CONTENT_FREE_INPUTS
from dspy_ext.evaluation.constrained import infer_label_set, literal_labels
from dspy_ext.evaluation.likelihood import gold_reply, predictor_messages
from dspy_ext.lm.answer_rule import AnswerMode, AnswerRule
from dspy_ext.lm.likelihood import choice_engine, log_softmax, score_continuations, supports_likelihood
from dspy_ext.prompt_state import predictors
from dspy_ext.search.candidate import Candidate

__all__ = ["AnswerTarget", "answer_modes", "answer_targets", "answer_variant"]


@dataclass(frozen=True)
class AnswerTarget:
    """A predictor whose output takes a closed label set.

    Attributes:
        predictor: The predictor's name.
        field: Its one output field.
        labels: The closed label set (declared, else read off the training outputs).
    """

    predictor: str
    field: str
    labels: tuple[str, ...]


def answer_targets(student: dspy.Module, trainset: Sequence[dspy.Example]) -> dict[str, AnswerTarget]:
    """``{predictor name: AnswerTarget}`` for every predictor of ``student`` with a closed label set."""
    found: dict[str, AnswerTarget] = {}
    for name, predictor in predictors(student):
        outputs = list(predictor.signature.output_fields)
        if len(outputs) != 1:
            continue
        field = outputs[0]
        labels = literal_labels(predictor.signature, field)
        if labels is None and trainset and all(field in ex for ex in trainset):
            labels = infer_label_set(trainset, field)
        if labels:
            found[name] = AnswerTarget(name, field, tuple(labels))
    return found


def answer_modes(lm: dspy.BaseLM, wanted: Sequence[str]) -> tuple[tuple[AnswerMode, ...], str]:
    """The rule modes of ``wanted`` that ``lm`` can apply, and a note saying what was left out and why.

    Constrained and calibrated rules need label probabilities (an LM that scores given replies). A served
    model that cannot score but generates under a JSON-schema enum applies the constrained rule that way;
    calibration is then left out.
    """
    modes = tuple(AnswerMode(m) for m in wanted if AnswerMode(m) is not AnswerMode.FREE)
    if not modes or supports_likelihood(lm):
        return modes, ""
    name = getattr(lm, "model", type(lm).__name__)
    if choice_engine(lm) is not None:
        note = ""
        if AnswerMode.CALIBRATED in modes:
            note = f"calibration needs label probabilities, which {name!r} does not give: constrained only (JSON-schema enum)"
        return tuple(m for m in modes if m is AnswerMode.CONSTRAINED), note
    return (), f"answer rules need an LM that scores labels or generates under a label enum; {name!r} does neither"


def answer_variant(
    candidate: Candidate,
    student: dspy.Module,
    targets: dict[str, AnswerTarget],
    mode: AnswerMode,
    *,
    lm: dspy.BaseLM,
    adapter: dspy.Adapter,
) -> Candidate:
    """``candidate`` with a ``mode`` rule on every target predictor (a calibrated rule estimates its prior on
    content-free inputs with ``candidate``'s own instruction and demos: one forward pass per input and predictor).

    Raises:
        BudgetExhausted: A meter ran out while estimating a prior.
    """
    program = candidate.apply(student)
    found = dict(predictors(program))
    answers = {}
    for name, target in targets.items():
        predictor = found[name]
        replies = tuple(gold_reply(predictor, {target.field: label}, adapter) for label in target.labels)
        prior = (
            content_free_prior(predictor, replies, lm=lm, adapter=adapter) if mode is AnswerMode.CALIBRATED else None
        )
        answers[name] = AnswerRule(mode, target.field, target.labels, replies, prior)
    return candidate.with_answers(answers, origin=f"{candidate.origin}+{mode.value}", answer=mode.value)


def content_free_prior(
    predictor: dspy.Predict, replies: Sequence[str], *, lm: dspy.BaseLM, adapter: dspy.Adapter
) -> tuple[float, ...]:
    """The predictor's mean label probabilities on the content-free inputs (contextual calibration's ``p_cf``)."""
    totals = [0.0] * len(replies)
    for text in CONTENT_FREE_INPUTS:
        inputs = {name: text for name in predictor.signature.input_fields}
        messages = predictor_messages(predictor, inputs, adapter)
        scores = score_continuations(lm, messages, list(replies), end_of_turn=False)
        for i, value in enumerate(log_softmax(scores)):
            totals[i] += math.exp(value)
    return AnswerRule.prior_from([t / len(CONTENT_FREE_INPUTS) for t in totals])
