"""Contextual calibration (Zhao et al. 2021, "Calibrate Before Use") for closed label sets.

A small model given a prompt with demos often prefers one label whatever the
input (the majority or the last demo's label). Contextual calibration measures
that bias: it runs the prompt, demos included, on *content-free* inputs
("N/A", "", "[MASK]"), averages the label probabilities into a prior
``p_cf``, and divides every later label distribution by it (the paper's
``W = diag(p_cf)^-1``, ``b = 0``), renormalising. It is not always a gain, so
it is a per-program choice to make on validation data, not a switch.

Cost: one forward pass per content-free input (3 by default) per prompt.

Example:
    >>> prior = estimate_label_prior(program, ("negative", "positive"))   # doctest: +SKIP
    >>> prior.probs                                                       # doctest: +SKIP
    (0.18, 0.82)
    >>> report.label_accuracy(prior)                                      # doctest: +SKIP
    76.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dspy

from dspy_ext.evaluation.likelihood import (
    gold_reply,
    predictor_messages,
    single_predictor,
)
from dspy_ext.lm.answer_rule import scoring_lm
from dspy_ext.lm.likelihood import log_softmax, score_continuations

__all__ = ["CONTENT_FREE_INPUTS", "LabelPrior", "estimate_label_prior"]

#: The content-free inputs of the paper.
CONTENT_FREE_INPUTS = ("N/A", "", "[MASK]")

# Keeps a label the prompt never predicts from dividing by zero.
_FLOOR = 1e-6


@dataclass(frozen=True)
class LabelPrior:
    """A prompt's label bias, estimated on content-free inputs.

    Attributes:
        labels: The label set, in order.
        probs: The mean label probability on the content-free inputs (sums to 1).
    """

    labels: tuple[str, ...]
    probs: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.probs) or len(self.labels) < 2:
            raise ValueError(f"a prior needs one probability per label (>= 2 labels), got {self.labels}, {self.probs}")

    def calibrate(self, label_logprobs: Sequence[float]) -> list[float]:
        """Calibrated label probabilities: ``p / p_cf``, renormalised.

        Args:
            label_logprobs: Log-scores of the labels (any constant offset is fine).

        Returns:
            Probabilities summing to 1, in label order.

        Example:
            >>> prior = LabelPrior(("a", "b"), (0.2, 0.8))
            >>> [round(p, 2) for p in prior.calibrate([math.log(0.3), math.log(0.7)])]
            [0.63, 0.37]
        """
        if len(label_logprobs) != len(self.labels):
            raise ValueError(f"expected {len(self.labels)} label scores, got {len(label_logprobs)}")
        normalised = log_softmax(list(label_logprobs))
        shifted = [v - math.log(max(p, _FLOOR)) for v, p in zip(normalised, self.probs, strict=True)]
        return [math.exp(v) for v in log_softmax(shifted)]

    @property
    def imbalance(self) -> float:
        """Largest minus smallest prior probability (0 = no bias)."""
        return max(self.probs) - min(self.probs)

    def to_dict(self) -> dict[str, Any]:
        return {"labels": list(self.labels), "probs": [round(p, 6) for p in self.probs]}


def estimate_label_prior(
    program: dspy.Module,
    labels: Sequence[str],
    *,
    content_free: Sequence[str] = CONTENT_FREE_INPUTS,
    end_of_turn: bool = False,
) -> LabelPrior:
    """Estimate the label prior of ``program``'s prompt (instruction and demos) on content-free inputs.

    Every input field gets the content-free string; the label distributions
    (normalised over ``labels``) are averaged.

    Args:
        program: A single-predictor program; the configured (or its own) LM
            must support likelihood scoring.
        labels: The closed label set of the output field.
        content_free: The content-free input strings.
        end_of_turn: Score the end-of-turn token after each label (off by
            default, as in :class:`~dspy_ext.evaluation.likelihood.LikelihoodEvaluator`
            with a label set, whose scores the prior corrects).

    Returns:
        The :class:`LabelPrior`.

    Raises:
        LikelihoodUnavailable: The LM cannot score.
        ValueError: Fewer than 2 labels, no content-free input, or a program
            with several predictors or output fields.
    """
    labels = tuple(str(label) for label in labels)
    if len(labels) < 2:
        raise ValueError("calibration needs at least 2 labels")
    if not content_free:
        raise ValueError("give at least one content-free input")
    _, predictor = single_predictor(program)
    outputs = list(predictor.signature.output_fields)
    if len(outputs) != 1:
        raise ValueError(f"calibration needs one output field, the predictor has {outputs}")
    lm = scoring_lm(predictor) or dspy.settings.lm
    replies = [gold_reply(predictor, {outputs[0]: label}) for label in labels]
    totals = [0.0] * len(labels)
    for text in content_free:
        inputs = {name: text for name in predictor.signature.input_fields}
        scores = score_continuations(lm, predictor_messages(predictor, inputs), replies, end_of_turn=end_of_turn)
        for i, value in enumerate(log_softmax(scores)):
            totals[i] += math.exp(value)
    return LabelPrior(labels, tuple(t / len(content_free) for t in totals))
