"""Likelihood scoring goes through the run's call journal: recorded on the first run, replayed (and charged) on a re-run.

The served engine's own requests (scoring, probe, label schema) are covered on llama.cpp's server in
``test_served_levers.py``; the real embedded model at the end (``@pytest.mark.embedded``).
"""

from __future__ import annotations

import json

import dspy
import pytest
from test_demo_search import VAL, calls_of, compile_with, more_is_better, responder, student

from dspy_ext.adapters import PlainAdapter
from dspy_ext.evaluation.likelihood import LikelihoodEvaluator
from dspy_ext.lm.journal import journaled
from dspy_ext.lm.likelihood import continuation_scores
from dspy_ext.lm.metering import BudgetExhausted, CallMeter, metering
from dspy_ext.prompt_state import compile_record

MESSAGES = [{"role": "user", "content": "Input: good film 3"}]
LABELS = ["positive", "negative"]


def test_scores_are_journaled_then_replayed_and_charged_like_a_chat_replay(fake_lm, tmp_path) -> None:
    lm = fake_lm(lambda messages: "positive")
    path = tmp_path / "calls.jsonl"
    first = CallMeter()
    with journaled(path) as journal, metering(first):
        want = continuation_scores(lm, MESSAGES, LABELS)
        again = continuation_scores(lm, MESSAGES, LABELS)  # a repeat costs a pass, as it always did
    assert want == again and len(lm.engine.score_requests) == 2 and first.calls == 2
    assert journal.replayed_calls == 0
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["score", "score"] and rows[0]["key"] == rows[1]["key"]
    assert rows[0]["record"] == {"scores": [{"logprob": s.logprob, "n_tokens": s.n_tokens,
                                             "evaluated_tokens": s.evaluated_tokens} for s in want]}  # fmt: skip
    assert rows[0]["usage"] == {"input_tokens": sum(s.evaluated_tokens for s in want), "output_tokens": 0, "cost": 0.0}

    second, replays = CallMeter(), CallMeter()
    with journaled(path) as journal, metering(second):
        assert journal.earlier_calls == 2
        with metering(replays):
            assert continuation_scores(lm, MESSAGES, LABELS) == want
            assert continuation_scores(lm, MESSAGES, LABELS) == want
        assert len(lm.engine.score_requests) == 2  # both occurrences replayed
        continuation_scores(lm, MESSAGES, LABELS)  # a third occurrence was never made: it reaches the model
        continuation_scores(lm, MESSAGES, LABELS, end_of_turn=False)  # another request
    assert len(lm.engine.score_requests) == 4 and journal.replayed_calls == 2
    assert replays.snapshot() == first.snapshot()  # charged what the calls cost when they were made
    assert second.snapshot().calls == 4
    assert len(path.read_text().splitlines()) == 4  # the two new calls were appended


def test_a_replayed_score_past_the_budget_raises_and_stays_to_replay(fake_lm, tmp_path) -> None:
    lm = fake_lm(lambda messages: "positive")
    path = tmp_path / "calls.jsonl"
    with journaled(path):
        continuation_scores(lm, MESSAGES, LABELS)
    with journaled(path) as journal, metering(CallMeter(0)), pytest.raises(BudgetExhausted):
        continuation_scores(lm, MESSAGES, LABELS)
    assert journal.replayed_calls == 0
    with journaled(path) as journal:
        continuation_scores(lm, MESSAGES, LABELS)
    assert journal.replayed_calls == 1 and len(lm.engine.score_requests) == 1


def test_old_chat_rows_and_new_rows_share_a_journal(fake_lm, tmp_path) -> None:
    """A journal of chat rows only (the form before scoring was journaled) resumes; chat rows keep their form."""
    lm = fake_lm(lambda messages: "positive", cache=True)
    path = tmp_path / "calls.jsonl"
    with journaled(path):
        lm("q1")
    (old,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert set(old) == {"key", "record", "usage"}
    with journaled(path) as journal:
        lm("q1")
        continuation_scores(lm, MESSAGES, LABELS)
    assert journal.earlier_calls == 1 and journal.replayed_calls == 1 and lm.engine.calls == 1
    with journaled(path) as journal:
        lm("q1")
        continuation_scores(lm, MESSAGES, LABELS)
    assert journal.earlier_calls == 2 and journal.replayed_calls == 2
    assert lm.engine.calls == 1 and len(lm.engine.score_requests) == 1


def test_a_likelihood_evaluation_replays_with_the_same_scores(fake_lm, tmp_path) -> None:
    lm = fake_lm(responder(more_is_better))
    scorer = LikelihoodEvaluator(labels=("negative", "positive"))
    reports = []
    for _ in range(2):
        with dspy.context(lm=lm, adapter=PlainAdapter()), journaled(tmp_path / "calls.jsonl") as journal:
            reports.append((scorer.evaluate(student(), VAL[:6]), journal.replayed_calls))
    (first, replayed_first), (second, replayed_second) = reports
    assert len(lm.engine.score_requests) == 6 and replayed_first == 0
    assert replayed_second == second.usage.calls == first.usage.calls == 6
    assert second.rows == first.rows and second.usage.input_tokens == first.usage.input_tokens


def test_a_demo_search_compile_replays_every_call(fake_lm, tmp_path) -> None:
    """The compile that made 350 calls and journaled 150 (the scores were missing): now a re-run makes none."""
    lm = fake_lm(responder(more_is_better), cache=True)
    runs = []
    for _ in range(2):
        before = calls_of(lm)
        with journaled(tmp_path / "calls.jsonl") as journal:
            program = compile_with(lm)
        runs.append((compile_record(program).search, calls_of(lm) - before, journal.replayed_calls))
    (first, made_first, replayed_first), (second, made_second, replayed_second) = runs
    assert first.screening == "likelihood" and len(lm.engine.score_requests) > 0
    assert made_first == first.lm_calls and replayed_first == 0
    assert made_second == 0 and replayed_second == second.lm_calls == first.lm_calls
    assert len((tmp_path / "calls.jsonl").read_text().splitlines()) == first.lm_calls
    assert second.best == first.best and second.val_score == first.val_score
    assert [t["score"] for t in second.trials] == [t["score"] for t in first.trials]


# ---- the real embedded model -----------------------------------------------------------------------


@pytest.mark.embedded
def test_embedded_likelihood_screen_replays_with_zero_engine_calls(local_lm, tmp_path, monkeypatch) -> None:
    from dspy_ext.data import load_task

    task = load_task("sentiment")
    program = dspy.Predict(dspy.Signature("input -> output", task.instructions[0]))
    rows = list(task.test[:4])
    engine = local_lm.engine
    passes: list[int] = []
    real = engine.score_continuations
    monkeypatch.setattr(engine, "score_continuations", lambda *a, **k: passes.append(1) or real(*a, **k))
    scorer = LikelihoodEvaluator(labels=("positive", "negative"))
    reports = []
    for _ in range(2):
        made = len(passes)
        with dspy.context(lm=local_lm, adapter=PlainAdapter()), journaled(tmp_path / "calls.jsonl") as journal:
            report = scorer.evaluate(program, rows)
        reports.append((report, len(passes) - made, journal.replayed_calls))
    (first, made_first, replayed_first), (second, made_second, replayed_second) = reports
    assert (made_first, replayed_first, first.usage.calls) == (4, 0, 4)
    assert (made_second, replayed_second, second.usage.calls) == (0, 4, 4)
    assert second.rows == first.rows and second.usage.input_tokens == first.usage.input_tokens > 0
    assert second.score("label_prob") == first.score("label_prob")
    print(f"embedded replay: first {made_first} passes, second {made_second} passes, {replayed_second} replayed")


@pytest.mark.embedded
def test_embedded_demo_search_compile_replays_every_call(local_lm, tmp_path, monkeypatch) -> None:
    """SmolLM2: a likelihood-screening compile run twice on one journal; the second reaches the model 0 times."""
    from test_demo_search import compile_sentiment_slice

    engine = local_lm.engine
    made: list[str] = []
    for name in ("generate", "score_continuations"):
        real = getattr(engine, name)
        monkeypatch.setattr(engine, name, lambda *a, _real=real, _name=name, **k: made.append(_name) or _real(*a, **k))
    runs = []
    for _ in range(2):
        before = len(made)
        with journaled(tmp_path / "calls.jsonl") as journal:
            result = compile_record(compile_sentiment_slice(local_lm, max_lm_calls=40, demo_counts=(3,))).search
        runs.append((result, made[before:], journal.replayed_calls))
    (first, made_first, replayed_first), (second, made_second, replayed_second) = runs
    assert first.screening == "likelihood" and "score_continuations" in made_first
    assert len(made_first) == first.lm_calls and replayed_first == 0
    assert made_second == [] and replayed_second == second.lm_calls == first.lm_calls
    assert second.best == first.best and second.val_score == first.val_score
    assert [t["score"] for t in second.trials] == [t["score"] for t in first.trials]
    print(
        f"embedded demo-search: first {len(made_first)} engine calls ({made_first.count('score_continuations')} "
        f"scoring), journal {len((tmp_path / 'calls.jsonl').read_text().splitlines())} rows; "
        f"second {len(made_second)} engine calls, {replayed_second} replayed"
    )
