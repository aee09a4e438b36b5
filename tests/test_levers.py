"""Tests for the small-model levers: likelihood scoring, constrained labels, calibration, demo sets.

Unit tests run on the deterministic fake engine; each mechanism also has one
test on the real embedded model (``@pytest.mark.embedded``).
"""

from __future__ import annotations

import math

import dspy
import pytest

from dspy_ext import runtime
from dspy_ext.adapters import PlainAdapter
from dspy_ext.data.demos import balanced_demos, fit_demos_to_context
from dspy_ext.evaluation.calibration import LabelPrior, estimate_label_prior
from dspy_ext.evaluation.constrained import (
    LabelConstrained,
    LabelRule,
    infer_label_set,
    literal_labels,
    predict_label,
)
from dspy_ext.evaluation.likelihood import (
    LikelihoodEvaluator,
    gold_reply,
    predictor_messages,
)
from dspy_ext.export.exporter import build_artifact
from dspy_ext.lm import BudgetExhausted, CallMeter, metering
from dspy_ext.lm.likelihood import (
    LikelihoodUnavailable,
    continuation_scores,
    count_prompt_tokens,
    log_softmax,
    score_continuations,
    supports_likelihood,
)

LABELS = ("negative", "positive")


def user_input(messages: list[dict[str, str]]) -> str:
    return messages[-1]["content"].removeprefix("Input: ")


def sentiment_examples() -> list[dspy.Example]:
    words = ["good", "bad", "good", "bad", "good", "bad"]
    return [
        dspy.Example(input=f"{w} film {i}", output="positive" if w == "good" else "negative").with_inputs("input")
        for i, w in enumerate(words)
    ]


def biased_scorer(messages: list[dict[str, str]], text: str) -> float:
    """A model that prefers 'positive' everywhere, but less so on bad inputs (a label bias to calibrate)."""
    value = user_input(messages)
    p_positive = 0.9 if value.startswith("good") else 0.6 if value.startswith("bad") else 0.75
    return math.log(p_positive if text == "positive" else 1.0 - p_positive)


def student(demos: list[dspy.Example] | None = None) -> dspy.Predict:
    predict = dspy.Predict(dspy.Signature("input -> output", "Say positive or negative."))
    predict.demos = list(demos or [])
    return predict


# ---- engine-level scoring -------------------------------------------------------------------------


def test_fake_scores_the_responders_reply_highest(fake_lm):
    lm = fake_lm(lambda messages: "positive")
    messages = [{"role": "user", "content": "Input: good"}]
    scores = score_continuations(lm, messages, ["positive", "negative", "the sentiment is positive"])
    assert scores[0] > scores[1] > scores[2]
    assert score_continuations(lm, messages, ["positive"], per_token=True)[0] == pytest.approx(-0.05)
    assert lm.engine.score_requests[0] == (messages, ("positive", "negative", "the sentiment is positive"))
    assert lm.engine.calls == 0  # nothing was generated


def test_scoring_is_metered_and_capped(fake_lm):
    lm = fake_lm(lambda messages: "positive")
    messages = [{"role": "user", "content": "Input: good"}]
    meter = CallMeter(max_calls=2)
    with metering(meter):
        continuation_scores(lm, messages, ["positive", "negative"])
        continuation_scores(lm, messages, ["positive"])
        with pytest.raises(BudgetExhausted):
            continuation_scores(lm, messages, ["positive"])
    assert meter.calls == 2 and meter.snapshot().input_tokens > 0
    assert len(lm.engine.score_requests) == 2


def test_lm_without_scoring_is_refused_clearly():
    lm = dspy.LM("openai/gpt-4o-mini", api_key="sk-test")
    assert not supports_likelihood(lm)
    with pytest.raises(LikelihoodUnavailable, match="cannot score a given reply"):
        score_continuations(lm, [{"role": "user", "content": "x"}], ["y"])
    with pytest.raises(LikelihoodUnavailable, match="no LM"):
        score_continuations(None, [], ["y"])


def test_bad_continuations_are_refused(fake_lm):
    lm = fake_lm(lambda messages: "x")
    with pytest.raises(ValueError, match="at least one"):
        score_continuations(lm, [{"role": "user", "content": "x"}], [])
    with pytest.raises(ValueError, match="non-empty"):
        score_continuations(lm, [{"role": "user", "content": "x"}], ["a", ""])


def test_log_softmax_and_token_estimate():
    probs = [math.exp(v) for v in log_softmax([0.0, math.log(3.0)])]
    assert probs == pytest.approx([0.25, 0.75])
    assert count_prompt_tokens(None, [{"role": "user", "content": "x" * 40}]) == 14


# ---- evaluation: likelihood mode ------------------------------------------------------------------


def test_likelihood_evaluator_gold_and_labels(fake_lm):
    lm = fake_lm(lambda messages: "positive", scorer=biased_scorer)
    rows = sentiment_examples()
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        report = LikelihoodEvaluator(LABELS).evaluate(student(), rows)
        gold_only = LikelihoodEvaluator().evaluate(student(), rows)
    assert report.mode == "likelihood" and len(report.rows) == 6
    assert report.usage.calls == 6  # one forward pass per row, all labels in it
    assert report.predictions() == ["positive"] * 6  # the bias wins without calibration
    assert report.label_accuracy() == pytest.approx(50.0)
    assert report.row_scores("label_prob")[:2] == pytest.approx([0.9, 0.4])
    assert report.row_scores("margin")[:2] == pytest.approx([0.8, -0.2])
    assert report.score() == pytest.approx(report.score("label_prob"))
    assert gold_only.rows[0].label_logprobs is None
    # Gold alone is scored with the end-of-turn token (2 fake tokens), labels without it (1 token).
    assert [r.gold_logprob for r in gold_only.rows] == pytest.approx([r.gold_logprob for r in report.rows])
    assert gold_only.score("gold_logprob") == pytest.approx(report.score("gold_logprob") / 2)
    with pytest.raises(ValueError, match="needs a label set"):
        gold_only.score("margin")
    assert report.to_dict()["label_accuracy"] == pytest.approx(50.0)


def test_likelihood_evaluator_falls_back_to_the_metric_with_a_note(fake_lm):
    class NoScoring:  # an engine with generation only (like a remote API)
        def __init__(self, inner):
            self.inner = inner

        def complete(self, request):
            return self.inner.complete(request)

    base = fake_lm(lambda messages: "positive")
    lm = dspy.LM("fake/no-scoring-v1", engine=NoScoring(base.engine), cache=False)
    rows = sentiment_examples()
    exact = lambda example, prediction, trace=None: prediction.output == example.output
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        report = LikelihoodEvaluator(LABELS, metric=exact).evaluate(student(), rows)
        with pytest.raises(LikelihoodUnavailable):
            LikelihoodEvaluator(LABELS).evaluate(student(), rows)
    assert report.mode == "metric" and "scored with the metric instead" in report.note
    assert report.score() == pytest.approx(0.5) and report.usage.calls == 6


def test_an_engine_that_cannot_score_the_end_of_turn_falls_back_before_any_pass(fake_lm):
    """A served endpoint whose probe showed no end of turn: gold replies fall back at once, label choices score."""
    lm = fake_lm(lambda messages: "positive")
    lm.engine.end_of_turn_unavailable = "no end-of-turn token among the prompt tokens"
    rows = sentiment_examples()
    exact = lambda example, prediction, trace=None: prediction.output == example.output
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        gold = LikelihoodEvaluator(metric=exact).evaluate(student(), rows)
        labels = LikelihoodEvaluator(LABELS, metric=exact).evaluate(student(), rows)
    assert gold.mode == "metric" and "no end-of-turn token" in gold.note
    assert labels.mode == "likelihood" and len(labels.rows) == len(rows)
    assert supports_likelihood(lm) and not supports_likelihood(lm, end_of_turn=True)


def test_likelihood_evaluator_refuses_programs_it_cannot_score(fake_lm):
    class Two(dspy.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = student(), student()

    with (
        dspy.context(lm=fake_lm(lambda m: "x"), adapter=PlainAdapter()),
        pytest.raises(ValueError, match="exactly one predictor, this one has 2"),
    ):
        LikelihoodEvaluator().evaluate(Two(), sentiment_examples())
    with pytest.raises(ValueError, match="at least 2 distinct"):
        LikelihoodEvaluator(("positive", "positive"))


def test_likelihood_evaluator_stops_at_the_budget_keeping_rows(fake_lm):
    lm = fake_lm(lambda messages: "positive")
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        report = LikelihoodEvaluator(LABELS).evaluate(student(), sentiment_examples(), meter=CallMeter(max_calls=4))
    assert report.budget_exhausted and len(report.rows) == 4


def test_prompt_is_the_adapters(fake_lm):
    demo = dspy.Example(input="nice", output="positive").with_inputs("input")
    predictor = student([demo])
    with dspy.context(adapter=PlainAdapter()):
        messages = predictor_messages(predictor, {"input": "awful"})
        assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
        assert messages[-1]["content"] == "Input: awful"
        assert gold_reply(predictor, {"output": "negative"}) == "negative"


# ---- calibration ----------------------------------------------------------------------------------


def test_contextual_calibration_removes_a_label_bias(fake_lm):
    lm = fake_lm(lambda messages: "positive", scorer=biased_scorer)
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        prior = estimate_label_prior(student(), LABELS)
        report = LikelihoodEvaluator(LABELS).evaluate(student(), sentiment_examples())
    assert prior.probs == pytest.approx((0.25, 0.75))
    assert prior.imbalance == pytest.approx(0.5)
    assert len(lm.engine.score_requests) == 3 + 6  # one pass per content-free input, then one per row
    assert {user_input(m) for m, _ in lm.engine.score_requests[:3]} == {"N/A", "", "[MASK]"}
    assert report.label_accuracy() == pytest.approx(50.0)
    assert report.label_accuracy(prior) == pytest.approx(100.0)


def test_label_prior_checks_its_input():
    with pytest.raises(ValueError, match="one probability per label"):
        LabelPrior(("a", "b"), (1.0,))
    with pytest.raises(ValueError, match="expected 2 label scores"):
        LabelPrior(("a", "b"), (0.5, 0.5)).calibrate([0.0])
    assert LabelPrior(("a", "b"), (0.5, 0.5)).calibrate([math.log(0.3), math.log(0.7)]) == pytest.approx([0.3, 0.7])


# ---- constrained output ---------------------------------------------------------------------------


def test_infer_label_set_closed_and_open():
    assert infer_label_set([{"output": "pos"}] * 6 + [{"output": "neg"}] * 4) == ("pos", "neg")
    plurals = [{"output": f"word{i}s"} for i in range(40)]
    assert infer_label_set(plurals) is None  # every value seen once: open
    letters = [{"output": c} for c in "abcdefghij" * 5] + [{"output": "z"}]  # 1 singleton in 51 rows
    assert infer_label_set(letters) is not None
    assert infer_label_set(letters, max_labels=5) is None
    assert literal_labels(dspy.Signature("input -> output: Literal['a', 'b']"), "output") == ("a", "b")
    assert literal_labels(dspy.Signature("input -> output"), "output") is None


def test_label_constrained_program_answers_with_a_label(fake_lm):
    # The free reply is a sentence; constrained decoding still answers with a label.
    def scorer(messages, text):
        return math.log(0.7 if (text == "negative") == user_input(messages).startswith("bad") else 0.3)

    lm = fake_lm(lambda messages: "The sentiment is positive.", scorer=scorer)
    program = LabelConstrained(student(), LabelRule("output", LABELS))
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        assert program(input="bad film").output == "negative"
        assert program(input="good film").output == "positive"
        choice = predict_label(student(), {"input": "bad film"}, LabelRule("output", LABELS, prior=(0.9, 0.1)))
    assert choice.label == "positive"  # a prior that expects 'negative' everywhere flips a weak preference
    assert lm.engine.calls == 0
    assert program.label_rules == {"program": LabelRule("output", LABELS).to_dict()}
    with pytest.raises(ValueError, match="not in predictor"):
        LabelConstrained(student(), LabelRule("answer", LABELS))
    with pytest.raises(ValueError, match="at least 2 distinct"):
        LabelRule("output", ("a",))
    rule = LabelRule("output", LABELS, prior=(0.2, 0.8))
    assert LabelRule.from_dict(rule.to_dict()) == rule


def test_label_rule_is_exported_and_applied_by_the_runtime():
    program = LabelConstrained(student(), LabelRule("output", LABELS, prior=(0.2, 0.8)))
    artifact = build_artifact(program, adapter=PlainAdapter())
    rule = artifact.data["predictors"]["program"]["label_rule"]
    assert rule == {"field": "output", "labels": list(LABELS), "prior": [0.2, 0.8], "method": "likelihood"}
    loaded = runtime.loads(artifact.to_json())
    assert loaded.data["predictors"]["program"]["label_rule"] == rule
    # With label scores the runtime applies the same calibrated argmax as the compile.
    assert runtime.choose_label(rule, label_scores={"negative": -1.2, "positive": -0.4}) == "negative"
    assert runtime.choose_label(dict(rule, prior=None), label_scores={"negative": -1.2, "positive": -0.4}) == "positive"
    # Without scores it maps a free reply to the closest label.
    assert runtime.choose_label(rule, reply="The sentiment is negative.") == "negative"
    assert runtime.choose_label(rule, reply="Positive!") == "positive"
    assert runtime.choose_label(rule, reply="negatve") == "negative"
    with pytest.raises(ValueError, match="lacks the label"):
        runtime.choose_label(rule, label_scores={"negative": -1.0})
    bad = dict(artifact.data)
    bad["predictors"] = {"program": dict(artifact.data["predictors"]["program"], label_rule=dict(rule, field="x"))}
    with pytest.raises(runtime.ArtifactError, match="label_rule.field"):
        runtime.validate(bad, check_hash=False)


# ---- demo sets -------------------------------------------------------------------------------------


def test_balanced_demos_alternate_labels():
    pool = [
        dspy.Example(input=str(i), output="positive" if i % 4 else "negative").with_inputs("input") for i in range(40)
    ]  # 3:1 imbalance
    demos = balanced_demos(pool, 8, seed=0, labels=LABELS)
    outputs = [d.output for d in demos]
    assert outputs.count("negative") == 4 and len({d.input for d in demos}) == 8
    assert all(a != b for a, b in zip(outputs[::2], outputs[1::2], strict=True))  # one of each label per round
    assert balanced_demos(pool, 8, seed=0, labels=LABELS) == demos  # seeded
    assert len(balanced_demos(pool, 5, seed=1)) == 5  # open outputs: a random draw
    assert [d.output for d in balanced_demos(pool, 30, seed=0, labels=LABELS)].count("negative") == 10
    with pytest.raises(ValueError, match="unknown demo order"):
        balanced_demos(pool, 3, seed=0, order="sorted")


def test_fit_demos_to_context_drops_the_last_demos(fake_lm):
    lm = fake_lm(lambda messages: "x")  # counts one token per word
    demos = [dspy.Example(input="w " * 30, output="positive").with_inputs("input") for _ in range(10)]
    with dspy.context(adapter=PlainAdapter()):
        kept = fit_demos_to_context(
            student(), demos, lm=lm, probe_inputs={"input": "w " * 30}, max_prompt_tokens=200, reserve_tokens=10
        )
    assert 0 < len(kept) < 10 and kept == demos[: len(kept)]


# ---- the real embedded model -----------------------------------------------------------------------


@pytest.mark.embedded
def test_embedded_likelihood_matches_generation_and_reuse(local_lm):
    from dspy_ext.lm.llama import LlamaCppEngine

    engine = local_lm.engine
    messages = [
        {"role": "system", "content": "Output whether the sentiment of the input sentence is positive or negative."},
        {"role": "user", "content": "Input: A gorgeous, witty film."},
        {"role": "assistant", "content": "positive"},
        {"role": "user", "content": "Input: Dull, lifeless and far too long."},
    ]
    scores = continuation_scores(local_lm, messages, ["positive", "negative", "The sentiment is negative."])
    assert all(s.logprob < 0 for s in scores) and scores[2].n_tokens > scores[0].n_tokens
    again = continuation_scores(local_lm, messages, ["positive", "negative"])
    assert again[0].evaluated_tokens < scores[0].evaluated_tokens  # the prompt came from the KV cache
    fresh = LlamaCppEngine(prefix_reuse=False).score_continuations(messages, ["positive", "negative"])
    assert [s.logprob for s in fresh] == pytest.approx([s.logprob for s in again], abs=1e-3)
    # The prompt tokens are exactly those a generation evaluates.
    reply = local_lm(messages=messages)[0]
    prompt = engine.prompt_tokens(messages)
    assert list(engine._llama.input_ids[: len(prompt)]) == prompt
    best = max(zip([s.logprob for s in again], ["positive", "negative"], strict=True))[1]
    assert reply.strip().lower().startswith(best)


@pytest.mark.embedded
def test_embedded_constrained_and_calibrated_sentiment(local_lm):
    demos = [
        dspy.Example(input="A gorgeous, witty film.", output="positive").with_inputs("input"),
        dspy.Example(input="Dull and lifeless.", output="negative").with_inputs("input"),
    ]
    program = student(demos)
    rows = [
        dspy.Example(input="A warm, funny and moving story.", output="positive").with_inputs("input"),
        dspy.Example(input="A tedious, badly acted mess.", output="negative").with_inputs("input"),
    ]
    with dspy.context(lm=local_lm, adapter=PlainAdapter()):
        prior = estimate_label_prior(program, LABELS)
        report = LikelihoodEvaluator(LABELS).evaluate(program, rows)
        constrained = LabelConstrained(program, LabelRule("output", LABELS, prior=prior.probs))
        answers = [constrained(input=row.input).output for row in rows]
    assert sum(prior.probs) == pytest.approx(1.0) and all(0 < p < 1 for p in prior.probs)
    assert set(answers) <= set(LABELS)
    # The uncalibrated 135M model may say 'positive' to both, but it finds the bad review more negative.
    assert report.rows[1].label_probs()[0] > report.rows[0].label_probs()[0]
    assert report.rows[1].label_probs(prior)[0] > report.rows[0].label_probs(prior)[0]
    assert all(-20 < r.gold_logprob < 0 for r in report.rows)


@pytest.mark.embedded
def test_embedded_demo_fit_counts_real_tokens(local_lm):
    from dspy_ext.data import load_task

    task = load_task("sentiment")
    demos = balanced_demos(task.train, 16, seed=0, labels=LABELS)
    probe = {"input": max((e.input for e in task.train), key=len)}
    with dspy.context(adapter=PlainAdapter()):
        messages = predictor_messages(student(demos), probe)
        tokens = count_prompt_tokens(local_lm, messages)
        kept = fit_demos_to_context(
            student(), demos, lm=local_lm, probe_inputs=probe, max_prompt_tokens=tokens - 1, reserve_tokens=0
        )
    assert 100 < tokens < 2048
    assert len(kept) == 15  # one demo less fits a window one token short
