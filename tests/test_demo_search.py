"""DemoSearch: labeled demo sets x k, screened by likelihood, confirmed by racing.

The fake world: reviews ``"good film i"`` / ``"bad film i"`` with labels positive/negative. The fake
model answers row ``i`` correctly iff ``i % 16`` is below a *skill* set by the number of demos in the
prompt (``skill(n_demos)``), else it says the wrong label. The fake engine's default scorer gives the
reply it would generate the highest log-probability, so likelihood and accuracy agree, as they do on
sentiment with the embedded model (docs/benchmarks.md). Each test picks the skill curve it needs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import dspy
import pytest

from dspy_ext.adapters import PlainAdapter
from dspy_ext.lm import CallMeter, metering
from dspy_ext.lm.fake import FakeEngine
from dspy_ext.lm.likelihood import LikelihoodUnavailable
from dspy_ext.optimizers.demo_search import DemoSearch
from dspy_ext.prompt_state import compile_record
from dspy_ext.registry import build_optimizer, resolve_config

from support.reviews import TRAIN, VAL


def responder(skill: Callable[[int], int]) -> Callable[[list[dict[str, str]]], str]:
    def respond(messages: list[dict[str, str]]) -> str:
        text = messages[-1]["content"].removeprefix("Input: ")
        if text.count(" ") < 2:  # a content-free input (calibration's "N/A"): the model's bias
            return "negative"
        word, _, number = text.split(" ", 2)
        gold = "positive" if word == "good" else "negative"
        n_demos = sum(1 for m in messages[:-1] if m["role"] == "assistant")
        if int(number) % 16 < skill(n_demos):
            return gold
        return "negative" if gold == "positive" else "positive"

    return respond


def more_is_better(n_demos: int) -> int:
    return min(16, n_demos)


class NoScoring:
    """An engine that generates only, like a remote API: no likelihood screen."""

    def __init__(self, inner):
        self.inner = inner

    def complete(self, request):
        return self.inner.complete(request)


def student() -> dspy.Predict:
    return dspy.Predict(dspy.Signature("input -> output", "Say positive or negative."))


def exact(example, prediction, trace=None) -> bool:
    return prediction.output == example.output


def compile_with(lm: dspy.LM, **kwargs) -> dspy.Module:
    settings = {"max_lm_calls": 400, "seed": 0, "num_threads": 1, **kwargs}
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        return DemoSearch(exact, **settings).compile(student(), trainset=TRAIN, valset=VAL)


def calls_of(lm: dspy.LM) -> int:
    return lm.engine.calls + len(lm.engine.score_requests)


def test_finds_the_larger_demo_set_and_logs_every_trial(fake_lm, tmp_path):
    lm = fake_lm(responder(more_is_better))
    program = compile_with(lm, log_dir=tmp_path)
    result = compile_record(program).search
    assert result.screening == "likelihood" and result.screening_note == ""
    assert result.label_set == ["negative", "positive"] and result.balanced
    assert result.k == 16 and len(program.demos) == 16 and not result.chose_incumbent
    assert result.decoding == "generate" and result.calibration == "off"
    # Balanced: 8 of each label.
    assert sorted(d["output"] for d in program.demos).count("positive") == 8
    assert result.val_score > result.baseline_val_score
    assert result.lm_calls == calls_of(lm) <= 400
    rows = [json.loads(line) for line in (tmp_path / "trials.jsonl").read_text().splitlines()]
    assert rows == result.trials
    screens = [r for r in rows if r["split"] == "screen"]
    assert screens and all(r["objective"] == "label_prob" and r["n"] == 20 for r in screens)
    assert {r["k"] for r in screens} == {3, 8, 16}
    # Same shape as every search's trial log.
    shape = {"trial", "method", "step", "key", "instructions", "n_demos", "split", "n", "score", "lm_calls"}
    assert shape <= set(rows[0])
    # The instruction is the student's own.
    assert program.signature.instructions == "Say positive or negative."


def test_budget_is_a_hard_cap_forward_passes_included(fake_lm):
    for cap in (7, 45, 120):
        lm = fake_lm(responder(more_is_better))
        result = compile_record(compile_with(lm, max_lm_calls=cap)).search
        assert calls_of(lm) <= cap and result.lm_calls == calls_of(lm)
    assert result.budget_exhausted or result.lm_calls < cap
    # An outer meter (e.g. the run's) sees the same calls.
    lm = fake_lm(responder(more_is_better))
    outer = CallMeter()
    with metering(outer):
        result = compile_record(compile_with(lm, max_lm_calls=90)).search
    assert outer.calls == result.lm_calls == calls_of(lm) <= 90


def test_same_seed_same_search_other_seed_other_draws(fake_lm):
    def trace(seed: int) -> tuple:
        program = compile_with(fake_lm(responder(lambda n: (3 * n) % 11)), seed=seed)
        rows = [
            {k: v for k, v in r.items() if k not in ("time", "seconds")} for r in compile_record(program).search.trials
        ]
        return compile_record(program).search.best["key"], rows

    assert trace(0) == trace(0)
    assert trace(0)[1] != trace(1)[1]


@pytest.mark.parametrize("skill", [lambda n: 8 if n <= 3 else 2, lambda n: (5 * n + 3) % 13, lambda n: 6])
def test_never_worse_than_the_incumbent_on_val(fake_lm, skill):
    lm = fake_lm(responder(skill))
    program = compile_with(lm)
    result = compile_record(program).search
    assert result.baseline_val_score is not None
    assert result.val_score >= result.baseline_val_score  # tolerance 0: a deterministic engine
    # The same holds when the returned program is scored afresh.
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        fresh = sum(exact(ex, program(**ex.inputs())) for ex in VAL) / len(VAL) * 100
    assert fresh == pytest.approx(result.val_score)


def test_more_demos_hurting_keeps_the_incumbent(fake_lm):
    result = compile_record(compile_with(fake_lm(responder(lambda n: 12 if n <= 3 else 1)))).search
    assert result.chose_incumbent and result.k == 3
    dropped = [r for r in result.racing if r["dropped"]]
    assert dropped, "the race should drop the hopeless contenders early"


def test_an_lm_without_likelihood_screens_by_accuracy_with_a_note(fake_lm):
    base = fake_lm(responder(more_is_better))
    lm = dspy.LM("fake/demo-search-no-scoring", engine=NoScoring(base.engine), cache=False)
    result = compile_record(compile_with(lm)).search
    assert result.screening == "accuracy" and "cannot score" in result.screening_note
    assert not base.engine.score_requests and result.lm_calls == base.engine.calls <= 400
    assert result.val_score >= result.baseline_val_score
    assert any(r["split"] == "screen" for r in result.trials)


def test_an_lm_that_stops_scoring_midway_screens_every_arm_by_accuracy(fake_lm):
    class StopsScoring(FakeEngine):  # like a served endpoint that refuses scoring after its probe passed
        def score_continuations(self, messages, continuations, *, end_of_turn=True):
            if len(self.score_requests) >= 30:  # the request reaches the server, which refuses it
                self.score_requests.append((messages, tuple(continuations)))
                raise LikelihoodUnavailable("/completions refused a scoring request (HTTP 404)")
            return super().score_continuations(messages, continuations, end_of_turn=end_of_turn)

    engine = StopsScoring(responder(more_is_better))
    lm = dspy.LM("fake/demo-search-stops-scoring", engine=engine, cache=False)
    result = compile_record(compile_with(lm)).search
    assert result.screening == "accuracy" and "stopped midway" in result.screening_note
    assert "HTTP 404" in result.screening_note and not result.budget_exhausted
    assert len(engine.score_requests) == 31 and result.lm_calls == calls_of(lm) <= 400
    screens = [r for r in result.trials if r["split"] == "screen"]
    by_likelihood = [r for r in screens if r.get("objective") == "label_prob"]
    by_accuracy = [r for r in screens if "objective" not in r]
    # The arm screened by likelihood before the stop is screened again by accuracy, with every later arm.
    assert len(by_likelihood) == 1 and {r["key"] for r in by_likelihood} <= {r["key"] for r in by_accuracy}
    assert {a["screened_by"] for a in result.racing} <= {"accuracy", ""}
    assert result.k == 16 and result.val_score > result.baseline_val_score


def test_multi_predictor_programs_are_searched_by_accuracy(fake_lm):
    class TwoSteps(dspy.Module):
        def __init__(self):
            super().__init__()
            self.draft = dspy.Predict(dspy.Signature("input -> output", "Say positive or negative."))
            self.final = dspy.Predict(dspy.Signature("input -> output", "Say positive or negative."))

        def forward(self, input):
            self.draft(input=input)
            return self.final(input=input)

    lm = fake_lm(responder(more_is_better))
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        program = DemoSearch(exact, max_lm_calls=300, seed=0, num_threads=1).compile(
            TwoSteps(), trainset=TRAIN, valset=VAL
        )
    result = compile_record(program).search
    assert result.screening == "accuracy" and "one predictor" in result.screening_note
    assert len(program.draft.demos) == len(program.final.demos) == result.k
    assert result.val_score >= result.baseline_val_score and result.lm_calls <= 300


def test_demos_are_cut_to_the_context_window(fake_lm):
    lm = fake_lm(responder(more_is_better))
    program = compile_with(lm, max_prompt_tokens=90, reply_tokens=4, demo_counts=(16,))
    assert 0 < len(program.demos) < 16
    assert (
        lm.engine.count_prompt_tokens(PlainAdapter().format(program.signature, program.demos, {"input": "good film 1"}))
        <= 90
    )


def test_registry_builds_it_and_bad_settings_fail_clearly(fake_lm, tmp_path):
    handle = build_optimizer(
        "demo-search",
        exact,
        config={"demo_counts": [4, 8], "draws_per_count": 1},
        budget=200,
        seed=0,
        num_threads=1,
        log_dir=str(tmp_path),
    )
    assert handle.enforces_budget and handle.config.demo_counts == (4, 8)
    lm = fake_lm(responder(more_is_better))
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        program = handle.compile(student(), trainset=TRAIN, valset=VAL)
    assert compile_record(program).search.k == 8 and calls_of(lm) <= 200
    # The result is plain program state: it round-trips through program.json.
    path = tmp_path / "program.json"
    program.save(str(path))
    loaded = student()
    loaded.load(str(path))
    assert [d["input"] for d in loaded.demos] == [d["input"] for d in program.demos]
    with pytest.raises(ValueError, match="demo_counts"):
        resolve_config("demo-search", {"demo_counts": [0, 3]})
    with pytest.raises(ValueError, match="unknown key"):
        resolve_config("demo-search", {"ks": [3]})


# ---- the real embedded model -----------------------------------------------------------------------


def compile_sentiment_slice(lm: dspy.LM, **settings) -> dspy.Module:
    """DemoSearch on 24 train / 10 val sentiment rows with the task's instruction, small screen and race."""
    from dspy_ext.data import load_task, split_train_val

    task = load_task("sentiment")
    train, val = split_train_val(task.train, 24, 10, seed=0)
    predict = dspy.Predict(dspy.Signature("input -> output", task.instructions[0]))
    settings = {"seed": 0, "num_threads": 1, "draws_per_count": 1, "screen_rows": 5, "race_rows": 5, **settings}
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        return DemoSearch(exact, **settings).compile(predict, trainset=train, valset=val)


@pytest.mark.embedded
def test_embedded_demo_search_on_a_sentiment_slice(local_lm):
    program = compile_sentiment_slice(local_lm, max_lm_calls=80, demo_counts=(3, 8))
    result = compile_record(program).search
    assert result.screening == "likelihood" and result.label_set is not None
    assert result.lm_calls <= 80 and result.k in (3, 8)
    assert result.val_score is not None and result.val_score >= result.baseline_val_score
    screens = [r for r in result.trials if r["split"] == "screen"]
    assert screens and all(r["objective"] == "label_prob" and 0 < r["score"] <= 100 for r in screens)


def label_format_missing_lm(fake_lm) -> dspy.LM:
    """Free replies are sentences the exact metric rejects; scored, the right label is the likely one."""

    def gold(messages: list[dict[str, str]]) -> str:
        return "positive" if messages[-1]["content"].startswith("Input: good") else "negative"

    return fake_lm(
        lambda messages: f"I think it is {gold(messages)}.",
        scorer=lambda messages, reply: -0.1 if reply == gold(messages) else -2.0,
    )


def test_a_small_budget_races_only_the_arms_it_can_finish(fake_lm):
    # 30 val rows; at 150 calls the confirmation fits two arms: the incumbent and the best-screened set.
    # Racing four would cut every arm off mid-valset and force the incumbent.
    lm = fake_lm(responder(more_is_better))
    result = compile_record(compile_with(lm, max_lm_calls=150)).search
    raced = [r for r in result.racing if r["val_rows"]]
    assert len(raced) == 2 and all(r["val_rows"] == len(VAL) for r in raced)
    assert not result.chose_incumbent and result.val_score > result.baseline_val_score
    assert result.lm_calls <= 150
    # With one seat besides the incumbent, the best set races under the constrained rule: the rule whose
    # decision the likelihood screen scored.
    assert [r["answer"] for r in raced] == ["free", "constrained"] and raced[1]["origin"] != "incumbent"


def test_a_constrained_variant_keeps_its_seat_when_the_free_one_is_cut(fake_lm):
    # Free replies miss the label format: racing only the free arm would keep the incumbent.
    lm = label_format_missing_lm(fake_lm)
    result = compile_record(compile_with(lm, max_lm_calls=150)).search
    raced = [r for r in result.racing if r["val_rows"]]
    assert [r["answer"] for r in raced] == ["free", "constrained"]
    assert result.answers["self"] == "constrained" and result.val_score == 100.0 and result.lm_calls <= 150


def test_screen_by_accuracy_is_the_likelihood_ablation(fake_lm):
    lm = fake_lm(responder(more_is_better))
    # The screen alone: answer rules (which score labels) are another dimension.
    result = compile_record(compile_with(lm, screen_by="accuracy", answer_rules=("free",))).search
    assert result.screening == "accuracy" and "screen_by" in result.screening_note
    assert not lm.engine.score_requests  # nothing scored by likelihood
    assert result.k == 16 and result.val_score >= result.baseline_val_score
    with pytest.raises(ValueError, match="screen_by"):
        resolve_config("demo-search", {"screen_by": "vibes"})


def test_grounded_arms_carry_the_constraints_read_off_the_outputs(fake_lm):
    lm = fake_lm(responder(more_is_better))
    # Every grounded arm screened: no calls kept for the answer rules' priors.
    result = compile_record(compile_with(lm, grounded=True, answer_rules=("free",))).search
    grounded = [r for r in result.racing if r["origin"] == "demo-search.grounded"]
    # The incumbent's demos and the first draw of each k (3, 8, 16).
    assert len(grounded) == 4
    screens = [r for r in result.trials if r["split"] == "screen"]
    texts = {r["instructions"]["self"] if isinstance(r["instructions"], dict) else r["instructions"] for r in screens}
    expected = (
        "Say positive or negative. Answer with exactly one of: negative, positive. Write the answer in lowercase."
    )
    assert any(expected in str(t) for t in texts)
    assert result.val_score >= result.baseline_val_score
    # Off by default: no grounded arm.
    plain = compile_record(compile_with(fake_lm(responder(more_is_better)))).search
    assert not [r for r in plain.racing if r["origin"] == "demo-search.grounded"]


@pytest.mark.embedded
def test_embedded_grounded_instruction_is_screened_on_the_real_model(local_lm):
    program = compile_sentiment_slice(local_lm, max_lm_calls=60, demo_counts=(3,), grounded=True)
    result = compile_record(program).search
    grounded = [r for r in result.racing if r["origin"] == "demo-search.grounded"]
    assert grounded and all(r["screen"] is not None for r in grounded)
    assert result.lm_calls <= 60 and result.val_score >= result.baseline_val_score


# ---- the answer rule as a dimension of the search ---------------------------------------------------


def test_a_constrained_answer_wins_where_free_replies_miss_the_label_format(fake_lm):
    lm = label_format_missing_lm(fake_lm)
    result = compile_record(compile_with(lm)).search
    assert result.answers["self"] in ("constrained", "calibrated") and result.decoding == "likelihood"
    assert result.val_score == 100.0 and result.baseline_val_score == 0.0
    assert {r["answer"] for r in result.racing} == {"free", "constrained", "calibrated"}
    assert result.lm_calls == calls_of(lm) <= 400 and result.answer_note == ""
    # Off: the free arms only, as before the dimension existed.
    off = compile_record(compile_with(fake_lm(responder(more_is_better)), answer_rules=("free",))).search
    assert {r["answer"] for r in off.racing} == {"free"} and off.answers == {"self": "free"}
    with pytest.raises(ValueError, match="must include 'free'"):
        resolve_config("demo-search", {"answer_rules": ["constrained"]})


@pytest.mark.embedded
def test_embedded_demo_search_races_the_answer_rules_on_a_sentiment_slice(local_lm):
    meter = CallMeter()
    with metering(meter):
        program = compile_sentiment_slice(local_lm, max_lm_calls=60, demo_counts=(3,))
    result = compile_record(program).search
    raced = {r["answer"]: r for r in result.racing if r["val_rows"]}
    assert {"constrained", "calibrated"} <= set(raced) and result.answer_note == ""
    assert result.answers["self"] in raced and meter.calls == result.lm_calls <= 60
    assert result.val_score >= result.baseline_val_score


# ---- the blended screen: accuracy first, likelihood breaking ties -----------------------------------


def test_blend_orders_arms_tied_on_accuracy_by_likelihood_within_budget(fake_lm):
    def n_demos(messages: list[dict[str, str]]) -> int:
        return sum(1 for m in messages[:-1] if m["role"] == "assistant")

    respond = responder(lambda n: 12)  # every demo set answers the same rows: accuracy ties everywhere

    def scorer(messages: list[dict[str, str]], reply: str) -> float:
        # The reply it generates is the likely one; 8-demo prompts are the most confident.
        return 0.0 if reply == respond(messages) else (-3.0 if n_demos(messages) == 8 else -0.5)

    def screened(**settings) -> tuple[Any, list[dict]]:
        lm = fake_lm(respond, scorer=scorer)
        result = compile_record(compile_with(lm, **settings)).search
        assert result.lm_calls == calls_of(lm) <= settings.get("max_lm_calls", 400)
        raced = [r for r in result.racing if r["val_rows"] and r["answer"] == "free" and r["origin"] != "incumbent"]
        return result, raced

    # 800 calls: every arm is screened both ways and the race fits every contender.
    blend, raced = screened(screen_by="blend", max_lm_calls=800)
    assert blend.screening == "blend" and blend.screening_note == ""
    # The two best-screened (confirm_top=2) are the 8-demo sets; the preferred 16 joins them.
    assert sorted(r["requested_k"] for r in raced) == [8, 8, 16]
    arms = [r for r in blend.racing if r["origin"] != "incumbent" and r["answer"] == "free"]
    assert {r["screened_by"] for r in arms} == {"blend"} and len({r["screen"] for r in arms}) == 1
    assert all(r["screen_likelihood"] is not None for r in arms)
    # Both screens ran on the same rows: a likelihood and an accuracy trial per arm.
    screens = [r for r in blend.trials if r["split"] == "screen"]
    by_likelihood = [r["key"] for r in screens if r.get("objective") == "label_prob"]
    assert sorted(by_likelihood) == sorted(r["key"] for r in screens if "objective" not in r)
    # Accuracy alone cannot tell the sets apart: the first drawn (k=3, k=8) race.
    accuracy, raced = screened(screen_by="accuracy", max_lm_calls=800)
    assert sorted(r["requested_k"] for r in raced) == [3, 8, 16]
    for cap in (7, 45, 150, 400):
        screened(screen_by="blend", max_lm_calls=cap)


def test_blend_costs_both_screens_in_the_plan_and_falls_back_to_accuracy(fake_lm):
    from dspy_ext.search.plan import PlanInputs

    settings = {"max_lm_calls": 100_000, "demo_counts": (3, 8), "draws_per_count": 2, "answer_rules": ("free",)}
    plans = {
        s: DemoSearch(exact, screen_by=s, **settings).plan(PlanInputs(1, 40, 30, 2)).task_calls
        for s in ("likelihood", "accuracy", "blend")
    }
    arms = 1 + 2 * 2
    assert plans["blend"] == plans["likelihood"] + arms * 20 == plans["accuracy"] + arms * 20

    # An LM that cannot score: the blend is the accuracy screen, and says why.
    base = fake_lm(responder(more_is_better))
    lm = dspy.LM("fake/demo-search-blend-no-scoring", engine=NoScoring(base.engine), cache=False)
    result = compile_record(compile_with(lm, screen_by="blend")).search
    assert result.screening == "accuracy" and "cannot score" in result.screening_note
    assert not base.engine.score_requests and result.lm_calls == base.engine.calls <= 400
    assert {r["screened_by"] for r in result.racing} <= {"accuracy", ""}


@pytest.mark.embedded
def test_embedded_blend_screen_on_a_sentiment_slice(local_lm):
    meter = CallMeter()
    with metering(meter):
        program = compile_sentiment_slice(local_lm, max_lm_calls=80, demo_counts=(3, 8), screen_by="blend")
    result = compile_record(program).search
    assert result.screening == "blend" and result.screening_note == ""
    screened = [r for r in result.racing if r["screened_by"]]
    assert screened and all(r["screened_by"] == "blend" and r["screen_likelihood"] is not None for r in screened)
    screens = [r for r in result.trials if r["split"] == "screen"]
    assert {r.get("objective") for r in screens} == {"label_prob", None}
    assert meter.calls == result.lm_calls <= 80 and result.val_score >= result.baseline_val_score


def test_screen_on_train_scores_each_arm_on_training_rows_it_does_not_show(fake_lm):
    lm = fake_lm(responder(more_is_better))
    program = compile_with(lm, screen_on="train", answer_rules=("free",))
    result = compile_record(program).search
    val_inputs = {f"Input: {ex.input}" for ex in VAL}
    train_inputs = {f"Input: {ex.input}" for ex in TRAIN}
    assert lm.engine.score_requests
    for messages, _ in lm.engine.score_requests:
        asked = messages[-1]["content"]
        shown = {m["content"] for m in messages[:-1] if m["role"] == "user"}
        # A training row the prompt does not show as a demo, never a validation row the race scores again.
        assert asked in train_inputs and asked not in val_inputs and asked not in shown
    screens = [r for r in result.trials if r["split"] == "screen"]
    assert screens and all(r["n"] == 20 for r in screens)
    assert result.k == 16 and result.val_score > result.baseline_val_score
    assert result.lm_calls == calls_of(lm) <= 400


def test_screen_on_train_tops_up_with_val_rows_when_train_runs_short(fake_lm):
    lm = fake_lm(responder(more_is_better))
    # 20 screen rows, 16-demo arms on 24 training rows: 8 unused training rows, then 12 validation rows.
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        DemoSearch(exact, max_lm_calls=400, seed=0, num_threads=1, screen_on="train", answer_rules=("free",)).compile(
            student(), trainset=TRAIN[:24], valset=VAL
        )
    val_inputs = {f"Input: {ex.input}" for ex in VAL}
    sixteen = [m for m, _ in lm.engine.score_requests if sum(r["role"] == "assistant" for r in m) == 16]
    assert sixteen and sum(m[-1]["content"] in val_inputs for m in sixteen) == 12 * len(sixteen) // 20
    with pytest.raises(ValueError, match="screen_on"):
        resolve_config("demo-search", {"screen_on": "test"})


@pytest.mark.embedded
def test_embedded_screen_on_train_on_a_sentiment_slice(local_lm):
    program = compile_sentiment_slice(local_lm, max_lm_calls=80, demo_counts=(3, 8), screen_on="train")
    result = compile_record(program).search
    assert result.screening == "likelihood"
    screens = [r for r in result.trials if r["split"] == "screen"]
    assert screens and all(r["n"] == 5 and 0 < r["score"] <= 100 for r in screens)
    assert result.lm_calls <= 80 and result.val_score >= result.baseline_val_score
