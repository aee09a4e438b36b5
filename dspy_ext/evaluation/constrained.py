"""Constrained output for closed label sets: answer with the allowed label the model finds most likely.

A 135M model asked for a sentiment often answers "The sentiment is positive."
or an unrelated word. When the output can only be one of a few labels (a
``Literal`` output field, or a task whose training outputs take a few values),
scoring each label as the reply and taking the most probable one removes those
failures, with no generation. On a served model whose endpoint cannot score a
given reply, the answer is generated under a JSON-schema enum of the labels
(``response_format``) instead, so it is still one of them (``method="constrained"``;
no label probabilities then, and no calibration). A :class:`LabelRule` records the choice (labels,
and a calibration prior if one was chosen) so that an exported artifact can
apply the same rule (``dspy_ext.runtime.choose_label``).

Example:
    >>> labels = infer_label_set(task.train)                     # ('negative', 'positive')
    >>> program = LabelConstrained(student, LabelRule("output", labels))    # doctest: +SKIP
    >>> program(input="A gorgeous, witty film.").output                     # doctest: +SKIP
    'positive'
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

import dspy

from dspy_ext.evaluation.calibration import LabelPrior
from dspy_ext.evaluation.likelihood import (
    gold_reply,
    predictor_messages,
    single_predictor,
)
from dspy_ext.lm.answer_rule import scoring_lm
from dspy_ext.lm.likelihood import (
    LikelihoodUnavailable,
    choice_engine,
    log_softmax,
    score_continuations,
    supports_likelihood,
)

__all__ = [
    "ChoiceMethod",
    "LabelChoice",
    "LabelConstrained",
    "LabelRule",
    "predict_label",
    "infer_label_set",
    "literal_labels",
]


def literal_labels(signature: type[dspy.Signature], field: str) -> tuple[str, ...] | None:
    """The members of a ``Literal[...]`` output field as strings, else ``None``."""
    annotation = signature.output_fields[field].annotation
    if get_origin(annotation) is Literal:
        return tuple(str(member) for member in get_args(annotation))
    return None


def infer_label_set(
    examples: Sequence[Any],
    field: str = "output",
    *,
    max_labels: int = 32,
    max_unseen: float = 0.05,
) -> tuple[str, ...] | None:
    """The closed label set of an output field, read off training examples, or ``None`` if it is open.

    The set is closed when it has at most ``max_labels`` values and the
    Good-Turing estimate of the chance that a new row carries an unseen value
    (values seen once / rows) is at most ``max_unseen``. Sentiment's
    ``positive``/``negative`` qualifies from a few rows; the 26 first letters
    need a few hundred rows; plurals never do.

    Args:
        examples: ``dspy.Example`` objects or dicts with ``field``.
        field: The output field.
        max_labels: Most distinct values a closed set may have.
        max_unseen: Largest tolerated chance of an unseen value.

    Returns:
        The labels sorted by frequency (then text), or ``None``.

    Example:
        >>> rows = [{"output": "pos"}] * 6 + [{"output": "neg"}] * 4
        >>> infer_label_set(rows)
        ('pos', 'neg')
    """
    values = [str(example[field]).strip() for example in examples if example[field] is not None]
    if len(values) < 2:
        return None
    counts = Counter(values)
    singletons = sum(1 for n in counts.values() if n == 1)
    if len(counts) < 2 or len(counts) > max_labels or singletons / len(values) > max_unseen:
        return None
    return tuple(sorted(counts, key=lambda v: (-counts[v], v)))


@dataclass(frozen=True)
class LabelRule:
    """How to choose a closed-set answer; JSON round-trips into an artifact (``label_rule``).

    Attributes:
        field: The output field.
        labels: Allowed labels, in order.
        prior: Calibration prior (one probability per label), or ``None``.
    """

    field: str
    labels: tuple[str, ...]
    prior: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"a label rule needs at least 2 distinct labels, got {list(self.labels)}")
        if self.prior is not None and (len(self.prior) != len(self.labels) or min(self.prior) < 0):
            raise ValueError("the prior needs one non-negative probability per label")

    @property
    def label_prior(self) -> LabelPrior | None:
        return None if self.prior is None else LabelPrior(self.labels, self.prior)

    def to_dict(self) -> dict[str, Any]:
        """The artifact form: ``{"field", "labels", "prior", "method": "likelihood"}``."""
        return {
            "field": self.field,
            "labels": list(self.labels),
            "prior": None if self.prior is None else [float(p) for p in self.prior],
            "method": ChoiceMethod.LIKELIHOOD.value,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelRule:
        prior = data.get("prior")
        return cls(str(data["field"]), tuple(data["labels"]), None if prior is None else tuple(prior))


class ChoiceMethod(str, enum.Enum):
    """How a closed-set answer is chosen: score every label, generate under a label enum, or whichever the LM can."""

    AUTO = "auto"
    LIKELIHOOD = "likelihood"
    CONSTRAINED = "constrained"


@dataclass(frozen=True)
class LabelChoice:
    """The outcome of :func:`predict_label`.

    Attributes:
        label: The chosen label.
        probs: Label probabilities (likelihood), or 1 for the generated label and 0 for the others
            (constrained decoding).
        method: :attr:`ChoiceMethod.LIKELIHOOD` or :attr:`ChoiceMethod.CONSTRAINED`.
    """

    label: str
    probs: tuple[float, ...]
    method: ChoiceMethod = ChoiceMethod.LIKELIHOOD


def predict_label(
    predictor: dspy.Predict,
    inputs: dict[str, Any],
    rule: LabelRule,
    *,
    lm: Any = None,
    method: ChoiceMethod | str = ChoiceMethod.AUTO,
) -> LabelChoice:
    """Answer ``predictor`` on ``inputs`` with one of the rule's labels.

    ``"likelihood"``: score every label as the reply and pick the most probable (one forward
    pass; each label costs its own few tokens after the shared prompt; on a served model one
    request per label). ``"constrained"``: generate the answer under a JSON-schema enum of the
    labels (one request; a served model only; the rule's prior is not applied). ``"auto"``:
    likelihood where the LM can score, else constrained decoding where its engine can.

    Args:
        predictor: The predictor (its instruction and demos make the prompt).
        inputs: Input field values.
        rule: Labels and optional calibration prior.
        lm: The LM (default: the predictor's, else the configured one).
        method: See above.

    Returns:
        The chosen label, the label probabilities and the method used.

    Raises:
        LikelihoodUnavailable: The LM can do neither (or not the ``method`` asked for).
    """
    lm = lm or scoring_lm(predictor) or dspy.settings.lm
    if method == ChoiceMethod.CONSTRAINED or (
        method == ChoiceMethod.AUTO and not supports_likelihood(lm) and choice_engine(lm)
    ):
        return _generate_label(predictor, inputs, rule, lm)
    replies = [gold_reply(predictor, {rule.field: label}) for label in rule.labels]
    # Like a grammar allowing only the labels: no end-of-turn token (see LikelihoodEvaluator).
    scores = score_continuations(lm, predictor_messages(predictor, inputs), replies, end_of_turn=False)
    prior = rule.label_prior
    probs = prior.calibrate(scores) if prior is not None else [math.exp(v) for v in log_softmax(scores)]
    best = max(range(len(probs)), key=probs.__getitem__)
    return LabelChoice(rule.labels[best], tuple(probs))


def _generate_label(predictor: dspy.Predict, inputs: dict[str, Any], rule: LabelRule, lm: Any) -> LabelChoice:
    engine = choice_engine(lm)
    if engine is None:
        name = getattr(lm, "model", type(lm).__name__)
        raise LikelihoodUnavailable(f"LM {name!r} cannot generate under a label constraint (served models can)")
    label = engine.generate_choice(predictor_messages(predictor, inputs), rule.labels, field=rule.field)
    return LabelChoice(label, tuple(float(label == other) for other in rule.labels), ChoiceMethod.CONSTRAINED)


class LabelConstrained(dspy.Module):
    """Run a single-predictor program with its answer chosen among allowed labels.

    The prediction holds the chosen label in the rule's field. The wrapped
    program's instruction and demos are untouched, so the score caches of the
    evaluator (keyed by prompt state) do not tell the two apart: evaluate a
    constrained program with its own :class:`~dspy_ext.evaluation.Evaluator`.

    Args:
        program: A program with exactly one predictor and that output field.
        rule: The :class:`LabelRule`.
        method: How the label is chosen (see :func:`predict_label`).

    Example:
        >>> constrained = LabelConstrained(student, LabelRule("output", ("negative", "positive")))  # doctest: +SKIP
    """

    def __init__(
        self, program: dspy.Module, rule: LabelRule, *, method: ChoiceMethod | str = ChoiceMethod.AUTO
    ) -> None:
        super().__init__()
        name, predictor = single_predictor(program)
        if rule.field not in predictor.signature.output_fields:
            raise ValueError(f"output field {rule.field!r} is not in predictor {name!r}")
        self.program = program
        self.rule = rule
        self.method = method

    @property
    def label_rules(self) -> dict[str, dict[str, Any]]:
        """``{predictor name: rule dict}``, what the exporter records as ``label_rule``."""
        return {single_predictor(self)[0]: self.rule.to_dict()}

    def forward(self, **inputs: Any) -> dspy.Prediction:
        _, predictor = single_predictor(self.program)
        choice = predict_label(predictor, inputs, self.rule, method=self.method)
        return dspy.Prediction(**{self.rule.field: choice.label}, label_probs=list(choice.probs))
