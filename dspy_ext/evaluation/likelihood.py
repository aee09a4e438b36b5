"""Likelihood scoring of a program: a continuous score per row, with the gold output forced.

Accuracy on 50 validation rows moves in steps of 2 points and is 0/1 per row.
The log-probability the model gives the *gold* output (APE's score) is
continuous and costs one forward pass per row with nothing generated. For a
closed label set the same pass scores every allowed label, which gives the
label the model prefers (constrained decoding, see
:mod:`dspy_ext.evaluation.constrained`), the probability of the gold label
among the labels, and its margin over the best other label; a
:class:`~dspy_ext.evaluation.calibration.LabelPrior` corrects those for the
model's label bias without another pass.

Scope: programs with exactly one predictor (``dspy.Predict``), rendered by the
configured adapter (measured with ``PlainAdapter``). An LM whose engine cannot
score falls back to the metric through the shared :class:`Evaluator`; the
report says so in ``note``.

Example:
    >>> scorer = LikelihoodEvaluator(labels=("negative", "positive"), metric=exact_match)  # doctest: +SKIP
    >>> with dspy.context(lm=make_lm("local"), adapter=PlainAdapter()):                      # doctest: +SKIP
    ...     report = scorer.evaluate(program, valset)
    >>> report.score("label_prob"), report.label_accuracy()                                  # doctest: +SKIP
    (0.61, 72.0)
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dspy

from dspy_ext.lm.answer_rule import scoring_lm
from dspy_ext.lm.likelihood import (
    LikelihoodUnavailable,
    continuation_scores,
    likelihood_engine,
    log_softmax,
)
from dspy_ext.lm.metering import (
    CallMeter,
    UsageSnapshot,
    find_budget_exhausted,
    metering,
)
from dspy_ext.prompt_state import predictors

logger = logging.getLogger(__name__)

__all__ = [
    "OBJECTIVES",
    "LikelihoodEvaluator",
    "LikelihoodObjective",
    "LikelihoodReport",
    "LikelihoodRow",
    "ScoringMode",
    "gold_reply",
    "predictor_messages",
    "single_predictor",
]


class LikelihoodObjective(str, enum.Enum):
    """A per-row score of a :class:`LikelihoodReport` (see :meth:`LikelihoodReport.row_scores`)."""

    AUTO = "auto"  # label_prob with a label set, else gold_logprob
    GOLD_LOGPROB = "gold_logprob"
    LABEL_PROB = "label_prob"
    MARGIN = "margin"
    LABEL_ACCURACY = "label_accuracy"


class ScoringMode(str, enum.Enum):
    """How a :class:`LikelihoodReport` was scored: by likelihood, or by the metric when the LM cannot score."""

    LIKELIHOOD = "likelihood"
    METRIC = "metric"


#: The names of the per-row scores a :class:`LikelihoodReport` can give (``"auto"`` picks one of them).
OBJECTIVES = tuple(o.value for o in LikelihoodObjective if o is not LikelihoodObjective.AUTO)


def single_predictor(program: dspy.Module) -> tuple[str, dspy.Predict]:
    """The one ``Predict`` of ``program``.

    Raises:
        ValueError: The program has no predictor or several.
    """
    found = predictors(program)
    if len(found) != 1:
        raise ValueError(
            f"likelihood scoring needs a program with exactly one predictor, this one has {len(found)}"
            + (f" ({', '.join(name for name, _ in found)})" if found else "")
        )
    return found[0]


def _adapter(adapter: dspy.Adapter | None) -> dspy.Adapter:
    adapter = adapter or dspy.settings.adapter
    if adapter is None:
        raise ValueError("no adapter is configured; likelihood scoring renders the prompt with one (PlainAdapter)")
    return adapter


def predictor_messages(
    predictor: dspy.Predict, inputs: dict[str, Any], adapter: dspy.Adapter | None = None
) -> list[dict[str, str]]:
    """The chat messages the adapter sends for ``predictor`` on ``inputs`` (demos included)."""
    messages = _adapter(adapter).format(predictor.signature, list(predictor.demos), dict(inputs))
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def gold_reply(predictor: dspy.Predict, outputs: dict[str, Any], adapter: dspy.Adapter | None = None) -> str:
    """The assistant text the adapter writes for ``outputs`` (what a demo's answer looks like)."""
    return str(_adapter(adapter).format_assistant_message_content(predictor.signature, dict(outputs)))


@dataclass(frozen=True)
class LikelihoodRow:
    """Likelihood scores of one example.

    Attributes:
        index: Position in the evaluated examples.
        gold_logprob: Log-probability of the gold reply (end of turn included).
        gold_tokens: Tokens of the gold reply.
        label_logprobs: Log-probability of each allowed label, in the report's
            label order (``None`` without a label set).
        gold_label: Index of the gold output among the labels (``None`` if it
            is not one of them).
    """

    index: int
    gold_logprob: float
    gold_tokens: int
    label_logprobs: tuple[float, ...] | None = None
    gold_label: int | None = None

    @property
    def gold_mean_logprob(self) -> float:
        """Log-probability per token of the gold reply."""
        return self.gold_logprob / max(1, self.gold_tokens)

    def label_probs(self, prior: Any | None = None) -> list[float]:
        """Probabilities of the labels, normalised over the set; calibrated by ``prior`` when given.

        Args:
            prior: A :class:`~dspy_ext.evaluation.calibration.LabelPrior` (or
                anything with ``calibrate(label_logprobs) -> probs``).
        """
        if self.label_logprobs is None:
            raise ValueError("this row was scored without a label set")
        if prior is not None:
            return list(prior.calibrate(self.label_logprobs))
        return [math.exp(v) for v in log_softmax(self.label_logprobs)]

    def predicted(self, prior: Any | None = None) -> int:
        """Index of the most probable label (ties: the first)."""
        probs = self.label_probs(prior)
        return max(range(len(probs)), key=probs.__getitem__)

    def margin(self, prior: Any | None = None) -> float:
        """p(gold) minus the best other label's probability (-1 when the gold is not a label)."""
        probs = self.label_probs(prior)
        if self.gold_label is None:
            return -1.0
        others = [p for i, p in enumerate(probs) if i != self.gold_label]
        return probs[self.gold_label] - (max(others) if others else 0.0)


@dataclass
class LikelihoodReport:
    """Per-row likelihood scores of one program (or metric scores, in the fallback).

    Attributes:
        rows: One :class:`LikelihoodRow` per example (empty in the fallback).
        labels: The label set the rows were scored on, if any.
        mode: ``"likelihood"``, or ``"metric"`` when the LM could not score.
        note: Why the metric was used (empty otherwise).
        metric_scores: Per-row metric scores in the fallback (0-1, ``None`` = no score).
        usage: Forward passes (counted as calls) and tokens.
        seconds: Wall time.
        budget_exhausted: A meter ran out; the report holds the rows done before.
    """

    rows: list[LikelihoodRow]
    labels: tuple[str, ...] | None
    mode: ScoringMode = ScoringMode.LIKELIHOOD
    note: str = ""
    metric_scores: list[float | None] | None = None
    usage: UsageSnapshot = field(default_factory=UsageSnapshot)
    seconds: float = 0.0
    budget_exhausted: bool = False

    def row_scores(
        self, objective: LikelihoodObjective | str = LikelihoodObjective.AUTO, prior: Any | None = None
    ) -> list[float]:
        """A continuous score per row (higher is better).

        Args:
            objective: ``"gold_logprob"`` (mean log-probability per token of the
                gold reply), ``"label_prob"`` (probability of the gold among the
                labels), ``"margin"`` (that minus the best other label),
                ``"label_accuracy"`` (1 if the most probable label is the gold),
                or ``"auto"``: ``label_prob`` with a label set, else ``gold_logprob``.
                In the metric fallback every objective gives the metric's scores.
            prior: Calibrates the label objectives (see :meth:`LikelihoodRow.label_probs`).

        Returns:
            The scores, in row order.
        """
        if self.mode == ScoringMode.METRIC:
            return [s for s in (self.metric_scores or []) if s is not None]
        if objective == LikelihoodObjective.AUTO:
            objective = (LikelihoodObjective.LABEL_PROB if self.labels else LikelihoodObjective.GOLD_LOGPROB).value
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; expected one of {', '.join(OBJECTIVES)} or 'auto'")
        if objective == LikelihoodObjective.GOLD_LOGPROB:
            return [r.gold_mean_logprob for r in self.rows]
        if not self.labels:
            raise ValueError(f"objective {objective!r} needs a label set; this report has none")
        if objective == LikelihoodObjective.LABEL_PROB:
            return [r.label_probs(prior)[r.gold_label] if r.gold_label is not None else 0.0 for r in self.rows]
        if objective == LikelihoodObjective.MARGIN:
            return [r.margin(prior) for r in self.rows]
        return [float(r.gold_label is not None and r.predicted(prior) == r.gold_label) for r in self.rows]

    def score(self, objective: LikelihoodObjective | str = LikelihoodObjective.AUTO, prior: Any | None = None) -> float:
        """Mean of :meth:`row_scores` (``-inf`` when no row was scored)."""
        values = self.row_scores(objective, prior)
        return sum(values) / len(values) if values else float("-inf")

    def label_accuracy(self, prior: Any | None = None) -> float:
        """Accuracy (0-100) of choosing the most probable label: constrained decoding, no generation."""
        return 100.0 * self.score(LikelihoodObjective.LABEL_ACCURACY, prior) if self.rows else 0.0

    def predictions(self, prior: Any | None = None) -> list[str]:
        """The chosen label of every row."""
        if not self.labels:
            raise ValueError("this report has no label set")
        return [self.labels[r.predicted(prior)] for r in self.rows]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mode": ScoringMode(self.mode).value,
            "note": self.note,
            "n": len(self.rows) if self.mode == ScoringMode.LIKELIHOOD else len(self.metric_scores or []),
            "forward_passes": self.usage.calls,
            "input_tokens": self.usage.input_tokens,
            "seconds": round(self.seconds, 2),
            "budget_exhausted": self.budget_exhausted,
        }
        if self.mode == ScoringMode.LIKELIHOOD and self.rows:
            out["gold_logprob"] = round(self.score(LikelihoodObjective.GOLD_LOGPROB), 4)
            if self.labels:
                out["labels"] = list(self.labels)
                out["label_prob"] = round(self.score(LikelihoodObjective.LABEL_PROB), 4)
                out["label_accuracy"] = round(self.label_accuracy(), 2)
        elif self.mode == ScoringMode.METRIC:
            out["metric"] = round(100.0 * self.score(), 2) if self.metric_scores else 0.0
        return out


class LikelihoodEvaluator:
    """Scores a single-predictor program by the likelihood of the gold outputs.

    Args:
        labels: A closed label set for the (single) output field: each row then
            scores every label in the same pass. ``None`` scores the gold only.
        metric: Used through :class:`~dspy_ext.evaluation.Evaluator` when the
            LM cannot score (the report's ``mode`` is then ``"metric"``).
            Without a metric that case raises :class:`LikelihoodUnavailable`.
        end_of_turn: Score the end-of-turn token after each reply. ``None``
            (default): not for a label set (the choice among labels then works
            like a grammar that allows only the labels: one forward pass, and a
            one-token label costs no further decoding), yes for the gold reply
            alone (a reply that goes on after the gold text is not the gold).

    Example:
        >>> report = LikelihoodEvaluator().evaluate(program, valset)   # doctest: +SKIP
        >>> report.score("gold_logprob")                                # doctest: +SKIP
        -0.83
    """

    def __init__(
        self,
        labels: Sequence[str] | None = None,
        *,
        metric: Callable[..., Any] | None = None,
        end_of_turn: bool | None = None,
    ) -> None:
        if labels is not None:
            labels = tuple(str(label) for label in labels)
            if len(labels) < 2 or len(set(labels)) != len(labels) or not all(labels):
                raise ValueError(f"labels must be at least 2 distinct non-empty strings, got {list(labels)}")
        self.labels = labels
        self.metric = metric
        self.end_of_turn = (labels is None) if end_of_turn is None else end_of_turn

    def evaluate(
        self,
        program: dspy.Module,
        examples: Sequence[dspy.Example],
        *,
        meter: CallMeter | None = None,
    ) -> LikelihoodReport:
        """Score ``program`` on ``examples`` (one forward pass per example).

        Args:
            program: A program with one predictor; it is not modified.
            examples: Examples with their inputs and gold outputs.
            meter: An extra meter to charge (e.g. a search budget).

        Returns:
            A :class:`LikelihoodReport`; partial, with ``budget_exhausted`` set,
            when a meter ran out.

        Raises:
            LikelihoodUnavailable: The LM cannot score and no metric was given.
            ValueError: Several predictors, or labels with several output fields.
        """
        name, predictor = single_predictor(program)
        lm = scoring_lm(predictor) or dspy.settings.lm
        try:
            likelihood_engine(lm, end_of_turn=self.end_of_turn)
        except LikelihoodUnavailable as exc:
            if self.metric is None:
                raise
            return self._metric_fallback(program, examples, meter, str(exc))
        outputs = list(predictor.signature.output_fields)
        if self.labels is not None and len(outputs) != 1:
            raise ValueError(f"a label set needs one output field; predictor {name!r} has {outputs}")
        adapter = _adapter(None)
        label_replies = [gold_reply(predictor, {outputs[0]: label}, adapter) for label in self.labels or ()]
        own = CallMeter()
        rows: list[LikelihoodRow] = []
        exhausted = False
        start = time.perf_counter()
        with metering(own), metering(meter) if meter is not None else contextlib.nullcontext():
            for index, example in enumerate(examples):
                try:
                    rows.append(self._score_example(lm, predictor, adapter, outputs, label_replies, index, example))
                except Exception as exc:
                    if find_budget_exhausted(exc) is not None:
                        exhausted = True
                        break
                    raise
        return LikelihoodReport(
            rows=rows,
            labels=self.labels,
            usage=own.snapshot(),
            seconds=time.perf_counter() - start,
            budget_exhausted=exhausted,
        )

    def _score_example(
        self,
        lm: Any,
        predictor: dspy.Predict,
        adapter: Any,
        outputs: list[str],
        label_replies: list[str],
        index: int,
        example: dspy.Example,
    ) -> LikelihoodRow:
        """One forward pass: the log-probability of every label (and of the gold reply if it is none of them)."""
        gold = {key: example[key] for key in outputs}
        reply = gold_reply(predictor, gold, adapter)
        gold_label = None
        if self.labels is not None:
            gold_label = next((i for i, label in enumerate(self.labels) if _same(label, gold[outputs[0]])), None)
        candidates = label_replies + ([] if gold_label is not None else [reply])
        messages = predictor_messages(predictor, example.inputs().toDict(), adapter)
        scores = continuation_scores(lm, messages, candidates, end_of_turn=self.end_of_turn)
        gold_score = scores[gold_label] if gold_label is not None else scores[-1]
        return LikelihoodRow(
            index=index,
            gold_logprob=gold_score.logprob,
            gold_tokens=gold_score.n_tokens,
            label_logprobs=tuple(s.logprob for s in scores[: len(label_replies)]) if self.labels else None,
            gold_label=gold_label,
        )

    def _metric_fallback(
        self, program: dspy.Module, examples: Sequence[dspy.Example], meter: CallMeter | None, reason: str
    ) -> LikelihoodReport:
        from dspy_ext.evaluation.evaluator import Evaluator

        note = f"likelihood scoring unavailable ({reason}); scored with the metric instead"
        logger.info(note)
        report = Evaluator(self.metric).evaluate(program, examples, meter=meter, desc="likelihood-fallback")
        return LikelihoodReport(
            rows=[],
            labels=self.labels,
            mode=ScoringMode.METRIC,
            note=note,
            metric_scores=report.example_scores,
            usage=report.usage,
            seconds=report.seconds,
            budget_exhausted=report.budget_exhausted,
        )


def _same(label: str, value: Any) -> bool:
    return label.strip().lower() == str(value).strip().lower()
