"""The two levers on a served model: constrained decoding (``response_format``) and likelihood scoring (``logprobs``).

llama.cpp's server (``llama-cpp-python[server]``) runs on loopback with the embedded SmolLM2 file; a
counting proxy in front of it counts every completion request from the server's side of the client,
so each test checks that what the meter charged is what reached the server.
"""

from __future__ import annotations

import dspy
import pytest

from dspy_ext.adapters import PlainAdapter
from dspy_ext.evaluation.constrained import LabelConstrained, LabelRule
from dspy_ext.evaluation.likelihood import gold_reply, predictor_messages
from dspy_ext.lm import make_lm
from dspy_ext.lm.likelihood import LikelihoodUnavailable, continuation_scores, supports_likelihood
from dspy_ext.lm.metering import CallMeter, metering
from dspy_ext.lm.served import CHATML, ServedEngine
from dspy_ext.prompt_state import compile_record

from support.served import MODEL_ALIAS, ChatOnlyProxy, CountingProxy, server_available

pytestmark = [
    pytest.mark.embedded,
    pytest.mark.skipif(not server_available(), reason="needs llama-cpp-python[server]"),
]

LABELS = ("positive", "negative")
#: |served - embedded| log-probability of the same reply: measured up to 4.2e-7 (float32 logits, same file).
TOLERANCE = 1e-4


def _served(base: str) -> dspy.LM:
    return make_lm(f"openai/{MODEL_ALIAS}", api_base=base, api_key="sk-local", cache=False, max_tokens=64)


def _sentiment(n: int) -> tuple[dspy.Predict, list[dspy.Example]]:
    from dspy_ext.data import load_task

    task = load_task("sentiment")
    return dspy.Predict(dspy.Signature("input -> output", task.instructions[0])), list(task.test[:n])


def _assert_metered_like_the_server(meter: CallMeter, proxy: CountingProxy) -> None:
    usage = meter.snapshot()
    assert usage.calls == proxy.requests > 0
    assert (usage.input_tokens, usage.output_tokens) == (proxy.input_tokens, proxy.output_tokens)


def test_constrained_decoding_via_response_format_returns_only_allowed_labels(proxy: CountingProxy) -> None:
    predict, rows = _sentiment(5)
    program = LabelConstrained(predict, LabelRule("output", LABELS), method="constrained")
    meter = CallMeter()
    with dspy.context(lm=_served(proxy.base), adapter=PlainAdapter()), metering(meter):
        predictions = [program(**row.inputs()) for row in rows]
    assert all(p.output in LABELS for p in predictions)
    assert all(sorted(p.label_probs) == [0.0, 1.0] for p in predictions)  # generated, not scored
    _assert_metered_like_the_server(meter, proxy)
    # OpenAI's json_schema form is refused once by llama-cpp-python's server (a failed, charged try,
    # not retried); the engine then keeps to {"type": "json_object", "schema": ...}: one request a row.
    assert meter.snapshot().failed_calls == 1 and proxy.requests == len(rows) + 1


def test_likelihood_scoring_via_completions_echo_logprobs_matches_the_embedded_model(
    proxy: CountingProxy, local_lm: dspy.LM
) -> None:
    predict, rows = _sentiment(2)
    served = _served(proxy.base)
    meter = CallMeter()
    with dspy.context(adapter=PlainAdapter()):
        replies = [gold_reply(predict, {"output": label}) for label in LABELS]
        messages = [predictor_messages(predict, row.inputs()) for row in rows]
        with metering(meter):
            assert supports_likelihood(served)  # the probe: one metered one-token request
            remote = [continuation_scores(served, m, replies, end_of_turn=False) for m in messages]
            long_reply = [continuation_scores(served, messages[0], ["quite positive"], end_of_turn=True)]
        local = [continuation_scores(local_lm, m, replies, end_of_turn=False) for m in messages]
        local_long = [continuation_scores(local_lm, messages[0], ["quite positive"], end_of_turn=True)]
    for got, want in zip(remote + long_reply, local + local_long, strict=True):
        assert [s.n_tokens for s in got] == [s.n_tokens for s in want]
        assert all(abs(a.logprob - b.logprob) < TOLERANCE for a, b in zip(got, want, strict=True))
        assert all(s.logprob < 0 for s in got)
    assert long_reply[0][0].n_tokens == local_long[0][0].n_tokens >= 3  # two words and the end of turn
    _assert_metered_like_the_server(meter, proxy)
    assert proxy.requests == 1 + len(rows) * len(LABELS) + 1  # probe, one request per (row, label), the long reply


def _small_demo_search(base: str, *, max_lm_calls: int, draws_per_count: int):
    """DemoSearch on 12 train / 4 val sentiment rows through the endpoint at ``base``; its result."""
    from dspy_ext.data import load_task, split_train_val
    from dspy_ext.optimizers.demo_search import DemoSearch

    task = load_task("sentiment")
    train, val = split_train_val(task.train, 12, 4, seed=0)
    predict = dspy.Predict(dspy.Signature("input -> output", task.instructions[0]))
    settings = {"demo_counts": (3,), "draws_per_count": draws_per_count, "screen_rows": 2, "race_rows": 2}
    with dspy.context(lm=_served(base), adapter=PlainAdapter()):
        program = DemoSearch(
            lambda ex, pred, trace=None: pred.output == ex.output,
            max_lm_calls=max_lm_calls,
            seed=0,
            num_threads=1,
            **settings,
        ).compile(predict, trainset=train, valset=val)
    return compile_record(program).search


def test_demo_search_falls_back_to_accuracy_where_the_endpoint_has_no_completions(server: str) -> None:
    proxy = ChatOnlyProxy(server)
    try:
        lm = _served(proxy.base)
        assert not supports_likelihood(lm) and proxy.refused == 1  # decided once, by one probe
        with pytest.raises(LikelihoodUnavailable, match="404"):
            continuation_scores(lm, [{"role": "user", "content": "hi"}], ["hello"])
        result = _small_demo_search(proxy.base, max_lm_calls=16, draws_per_count=1)
    finally:
        proxy.close()
    assert result.screening == "accuracy"
    assert "cannot score a given reply (HTTP 404)" in result.screening_note and proxy.base in result.screening_note
    assert proxy.refused == 2  # one probe per engine; no scoring request was sent
    assert 0 < result.lm_calls <= 16


def test_demo_search_screens_by_accuracy_when_the_endpoint_stops_scoring_midway(server: str) -> None:
    # The probe and the first arm's screen (2 rows x 2 labels) are answered, then /completions is gone.
    proxy = ChatOnlyProxy(server, completions_allowed=1 + 2 * len(LABELS))
    try:
        result = _small_demo_search(proxy.base, max_lm_calls=30, draws_per_count=2)
    finally:
        proxy.close()
    assert result.screening == "accuracy" and "stopped midway" in result.screening_note
    assert "HTTP 404" in result.screening_note and proxy.refused == 1  # unavailable from then on
    assert {a["screened_by"] for a in result.racing} <= {"accuracy", ""}
    assert any(r.get("objective") == "label_prob" for r in result.trials)  # the screen before the stop
    assert result.lm_calls == proxy.requests <= 30


def test_chatml_renders_the_prompt_the_server_scores() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    prompt = CHATML.render(messages)
    assert prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert CHATML.plain(prompt) == "system\nBe brief.\nuser\nHi\nassistant\n"


def test_an_lm_without_an_endpoint_cannot_score_and_sends_nothing() -> None:
    engine = ServedEngine(dspy.LM("openai/gpt-4o-mini", api_key="sk-none"))
    reason = engine.likelihood_unavailable()
    assert reason is not None and "api_base" in reason
    declared_off = ServedEngine(dspy.LM("openai/m", api_base="http://127.0.0.1:9/v1", api_key="x"), likelihood=False)
    assert declared_off.likelihood_unavailable() == "likelihood=False was declared"


def test_scoring_and_label_requests_replay_from_the_run_journal(proxy: CountingProxy, tmp_path) -> None:
    """Probe, scores, the refused json_schema try and the label requests: a re-run sends none and counts the same."""
    from dspy_ext.lm.journal import journaled

    predict, rows = _sentiment(2)
    program = LabelConstrained(predict, LabelRule("output", LABELS), method="constrained")
    runs = []
    for _ in range(2):
        sent, meter = proxy.requests, CallMeter()
        lm = _served(proxy.base)  # a fresh engine, as in a new process: it probes and learns the schema form again
        with dspy.context(lm=lm, adapter=PlainAdapter()), journaled(tmp_path / "calls.jsonl") as journal:
            replies = [gold_reply(predict, {"output": label}) for label in LABELS]
            with metering(meter):
                scores = [continuation_scores(lm, predictor_messages(predict, r.inputs()), replies) for r in rows]
                labels = [program(**row.inputs()).output for row in rows]
        runs.append((scores, labels, meter.snapshot(), proxy.requests - sent, journal.replayed_calls))
    (scores, labels, usage, sent, replayed), again = runs
    # probe + one request per (row, label) + the refused json_schema try + one label request a row
    assert sent == usage.calls == 1 + len(rows) * len(LABELS) + 1 + len(rows) and usage.failed_calls == 1
    assert replayed == 0
    assert again == (scores, labels, usage, 0, usage.calls)


def test_a_template_whose_end_of_turn_the_server_does_not_show_is_refused_before_any_scoring_request(
    proxy: CountingProxy,
) -> None:
    from dspy_ext.lm.served import ChatTemplate

    odd = ChatTemplate("odd-eot", CHATML.turn, CHATML.assistant_cue, "</end>", CHATML.special)
    lm = _served(proxy.base)
    lm.engine.chat_template = odd
    messages = [{"role": "user", "content": "Input: A fine film."}]
    assert supports_likelihood(lm) and proxy.requests == 1  # the probe found the reply, not the end of turn
    assert not supports_likelihood(lm, end_of_turn=True) and proxy.requests == 1
    with pytest.raises(LikelihoodUnavailable, match="end of turn"):
        continuation_scores(lm, messages, ["positive"], end_of_turn=True)
    assert proxy.requests == 1  # refused before a request
    assert continuation_scores(lm, messages, ["positive"], end_of_turn=False)[0].logprob < 0


def test_answer_rules_on_a_served_model_without_logprobs_fall_back_to_a_constrained_enum(server: str, tmp_path) -> None:
    from dspy_ext.lm.answer_rule import AnswerMode, answer_rule_of
    from dspy_ext.search.answers import answer_modes, answer_targets, answer_variant
    from dspy_ext.search.candidate import Candidate

    proxy = ChatOnlyProxy(server)
    try:
        lm = _served(proxy.base)
        predict, rows = _sentiment(4)
        modes, note = answer_modes(lm, ["free", "constrained", "calibrated"])
        assert modes == (AnswerMode.CONSTRAINED,) and "calibration needs label probabilities" in note
        targets = answer_targets(predict, rows)
        variant = answer_variant(
            Candidate.from_program(predict), predict, targets, modes[0], lm=lm, adapter=PlainAdapter()
        )
        program = variant.apply(predict)
        program.save(str(tmp_path / "program.json"))
        loaded = dspy.Predict(dspy.Signature("input -> output", "placeholder"))
        loaded.load(str(tmp_path / "program.json"), allow_unsafe_lm_state=True)
        assert answer_rule_of(loaded) == answer_rule_of(program)
        meter = CallMeter()
        with dspy.context(lm=lm, adapter=PlainAdapter()), metering(meter):
            outputs = [p(**row.inputs()).output for p in (program, loaded) for row in rows]
    finally:
        proxy.close()
    assert set(outputs) <= set(targets["self"].labels) and outputs[:4] == outputs[4:]
    # One JSON-schema enum request a row (plus the refused json_schema form, once), all metered.
    assert meter.snapshot().calls == 2 * len(rows) + 1


def test_a_cut_race_on_a_served_model_counts_a_request_per_label_for_rule_arms(proxy: CountingProxy) -> None:
    """At 30 calls the race cannot take every contender: the constrained variant keeps its seat, priced at a
    scoring request per label per row, so it finishes the valset; the server saw exactly what was reported."""
    sent = proxy.requests
    result = _small_demo_search(proxy.base, max_lm_calls=30, draws_per_count=1)
    raced = [r for r in result.racing if r["val_rows"]]
    assert [r["answer"] for r in raced] == ["free", "constrained"] and raced[0]["origin"] == "incumbent"
    assert all(r["val_rows"] == 4 for r in raced)  # no arm cut off mid-valset
    assert result.lm_calls == proxy.requests - sent <= 30
