"""Tests for ``dspy_ext.lm``: call metering, budgets, engines and the embedded model."""

from __future__ import annotations

import re

import dspy
import pytest
from dspy.lm15 import Request

from dspy_ext.adapters import PlainAdapter
from dspy_ext.data import load_task
from dspy_ext.evaluation import Evaluator
from dspy_ext.lm import (
    BudgetExhausted,
    CallMeter,
    CallPolicy,
    Generation,
    LlamaCppEngine,
    MeteredEngine,
    UsageSnapshot,
    active_meters,
    embedded_model_path,
    find_budget_exhausted,
    make_lm,
    metering,
    request_messages,
)
from dspy_ext.lm.llama import model_identity

# --- CallMeter ------------------------------------------------------------------


def test_meter_reserve_record_snapshot() -> None:
    meter = CallMeter()
    assert meter.snapshot() == UsageSnapshot()
    meter.reserve()
    meter.record(10, 3)
    meter.reserve()
    meter.record(None, None, failed=True)
    snap = meter.snapshot()
    assert snap == UsageSnapshot(calls=2, failed_calls=1, input_tokens=10, output_tokens=3)
    assert snap.total_tokens == 13 == meter.total_tokens
    assert meter.calls == 2
    assert meter.remaining is None and not meter.exhausted

    # A snapshot is a frozen copy: later calls do not change it.
    meter.reserve()
    meter.record(5, 1)
    assert snap.calls == 2
    assert meter.snapshot() - snap == UsageSnapshot(calls=1, failed_calls=0, input_tokens=5, output_tokens=1)


def test_meter_hard_cap() -> None:
    meter = CallMeter(max_calls=2)
    meter.reserve()
    meter.reserve()
    assert meter.exhausted and meter.remaining == 0
    with pytest.raises(BudgetExhausted) as info:
        meter.reserve()
    assert info.value.max_calls == 2
    assert "2 calls" in str(info.value)
    assert meter.calls == 2  # a refused call is not counted
    meter.release()
    assert meter.remaining == 1 and not meter.exhausted
    meter.reserve()
    assert meter.calls == 2


def test_meter_zero_and_negative_budget() -> None:
    with pytest.raises(BudgetExhausted):
        CallMeter(max_calls=0).reserve()
    with pytest.raises(ValueError, match="max_calls"):
        CallMeter(max_calls=-1)


def _echo_words(messages: list[dict[str, str]]) -> str:
    return "one two three"


def test_engine_respects_budget(fake_lm) -> None:
    lm = fake_lm(_echo_words)
    meter = CallMeter(max_calls=2)
    with metering(meter):
        lm("first")
        lm("second")
        with pytest.raises(Exception) as info:
            lm("third")
    assert lm.engine.calls == 2  # the third call never reached the model
    assert meter.calls == 2
    # DSPy wraps the engine's exception; the budget error is found in the chain.
    assert not isinstance(info.value, BudgetExhausted)
    found = find_budget_exhausted(info.value)
    assert isinstance(found, BudgetExhausted) and found.max_calls == 2


def test_metering_nests(fake_lm) -> None:
    lm = fake_lm(_echo_words)
    outer, inner = CallMeter(), CallMeter()
    assert active_meters() == ()
    with metering(outer) as got:
        assert got is outer
        lm("a")
        with metering(inner):
            assert active_meters() == (outer, inner)
            lm("b")
            lm("c")
        assert active_meters() == (outer,)
        lm("d")
    assert active_meters() == ()
    lm("e")  # no meter active: counted by the engine only
    assert (outer.calls, inner.calls, lm.engine.calls) == (4, 2, 5)
    assert inner.snapshot().output_tokens == 2 * 3
    assert outer.snapshot().output_tokens == 4 * 3


def test_inner_cap_releases_outer_reservation(fake_lm) -> None:
    lm = fake_lm(_echo_words)
    outer, inner = CallMeter(), CallMeter(max_calls=1)
    with metering(outer), metering(inner):
        lm("a")
        with pytest.raises(Exception) as info:
            lm("b")
    assert find_budget_exhausted(info.value) is not None
    assert (outer.calls, inner.calls, lm.engine.calls) == (1, 1, 1)


def test_outer_cap_applies_inside_inner_meter(fake_lm) -> None:
    lm = fake_lm(_echo_words)
    outer, inner = CallMeter(max_calls=1), CallMeter()
    with metering(outer), metering(inner):
        lm("a")
        with pytest.raises(Exception) as info:
            lm("b")
    assert find_budget_exhausted(info.value).max_calls == 1
    assert (outer.calls, inner.calls, lm.engine.calls) == (1, 1, 1)


def test_find_budget_exhausted_through_wrapped_chain() -> None:
    def wrapped() -> None:
        try:
            try:
                raise BudgetExhausted(5)
            except BudgetExhausted as exc:
                raise RuntimeError("LM call failed") from exc  # explicit __cause__
        except RuntimeError:
            raise ValueError("program failed")  # noqa: B904 - an implicit __context__ is what is tested

    with pytest.raises(ValueError) as info:
        wrapped()
    found = find_budget_exhausted(info.value)
    assert isinstance(found, BudgetExhausted) and found.max_calls == 5

    assert find_budget_exhausted(None) is None
    assert find_budget_exhausted(ValueError("unrelated")) is None

    # A cycle in the chain ends the search instead of looping forever.
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__context__, b.__context__ = b, a
    assert find_budget_exhausted(a) is None


def test_meter_is_shared_by_deepcopy() -> None:
    import copy

    meter = CallMeter()
    assert copy.deepcopy(meter) is meter


# --- threads --------------------------------------------------------------------


def _examples(n: int) -> list[dspy.Example]:
    return [dspy.Example(input=f"item {i}", output="ok").with_inputs("input") for i in range(n)]


def _ok(messages: list[dict[str, str]]) -> str:
    return "ok"


def _exact(example, prediction, trace=None) -> bool:
    return prediction.output == example.output


def test_call_counts_exact_with_8_threads(fake_lm) -> None:
    lm = fake_lm(_ok, latency=0.005)
    outer = CallMeter()
    evaluator = Evaluator(_exact, num_threads=8, cache=False)
    with dspy.context(lm=lm, adapter=PlainAdapter()), metering(outer):
        report = evaluator.evaluate(dspy.Predict("input -> output"), _examples(200))
    assert lm.engine.calls == 200
    assert report.usage.calls == 200
    assert outer.calls == 200
    assert report.score == 100.0 and len(report.rows) == 200 and report.complete
    # Every example went to the model exactly once.
    users = sorted(req[-1]["content"] for req in lm.engine.requests)
    assert users == sorted(f"Input: item {i}" for i in range(200))


@pytest.mark.parametrize("attempt", range(3))
def test_hard_cap_holds_with_8_threads(fake_lm, attempt: int) -> None:
    lm = fake_lm(_ok, latency=0.005)
    budget = CallMeter(max_calls=37)
    evaluator = Evaluator(_exact, num_threads=8, cache=False)
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        report = evaluator.evaluate(dspy.Predict("input -> output"), _examples(200), meter=budget)
    assert lm.engine.calls == 37
    assert budget.calls == 37 and budget.exhausted
    assert report.usage.calls == 37
    assert report.budget_exhausted and not report.complete
    # Each admitted call finished one row; those rows are kept.
    assert len(report.rows) == 37
    assert all(r.score == 1.0 and r.error is None for r in report.rows)


# --- MeteredEngine --------------------------------------------------------------


def test_fake_engine_reports_usage(fake_lm) -> None:
    lm = fake_lm(_echo_words)
    meter = CallMeter()
    with metering(meter):
        out = lm("how many words are here")
    assert out == ["one two three"]
    (messages,) = lm.engine.requests
    assert messages == [{"role": "user", "content": "how many words are here"}]
    assert meter.snapshot() == UsageSnapshot(calls=1, failed_calls=0, input_tokens=5, output_tokens=3)
    usage = lm.history[-1]["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (5, 3)


class _FixedUsage(MeteredEngine):
    """A minimal MeteredEngine: the subclass contract is just ``generate``."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.seen: list[list[dict[str, str]]] = []

    def generate(self, request: Request) -> Generation:
        self.seen.append(request_messages(request))
        if self.fail:
            raise ConnectionError("backend down")
        return Generation(text="fixed", input_tokens=7, output_tokens=2, finish_reason="stop")


def test_metered_engine_subclass_reports_usage_to_every_meter() -> None:
    engine = _FixedUsage()
    lm = dspy.LM("fake/fixed-usage-v1", engine=engine, cache=False)
    outer, inner = CallMeter(), CallMeter()
    with metering(outer), metering(inner):
        assert lm("x") == ["fixed"]
        assert lm("y") == ["fixed"]
    for meter in (outer, inner):
        # An engine without a price: its calls are counted as of unknown price, never as free.
        assert meter.snapshot() == UsageSnapshot(
            calls=2, failed_calls=0, input_tokens=14, output_tokens=4, unpriced_calls=2
        )
    assert lm.history[-1]["usage"]["prompt_tokens"] == 7


def test_metered_engine_counts_failed_calls() -> None:
    engine = _FixedUsage(fail=True)
    engine.call_policy = CallPolicy(max_retries=3, backoff=0.001)  # a dropped connection is retried
    lm = dspy.LM("fake/fixed-usage-failing-v1", engine=engine, cache=False, num_retries=0)
    meter = CallMeter()
    with metering(meter), pytest.raises(Exception) as info:
        lm("x")
    assert any(isinstance(e, ConnectionError) for e in _chain(info.value))
    assert meter.snapshot() == UsageSnapshot(calls=len(lm.engine.seen), failed_calls=len(lm.engine.seen))
    assert meter.calls == 4  # every try counts


def _chain(exc: BaseException | None):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def test_request_messages_flattens_system_and_turns(fake_lm) -> None:
    lm = fake_lm(_ok)
    predict = dspy.Predict(dspy.Signature("input -> output", "Be brief."))
    predict.demos = [dspy.Example(input="a", output="b")]
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        predict(input="c")
    assert lm.engine.requests[0] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Input: a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "Input: c"},
    ]


# --- the real embedded model (<= 10 calls in all) ------------------------------


def _sentiment_program(n_demos: int = 4) -> dspy.Predict:
    task = load_task("sentiment")
    predict = dspy.Predict(dspy.Signature("input -> output", task.baseline_instruction))
    predict.demos = task.train[:n_demos]
    return predict


@pytest.mark.embedded
def test_embedded_model_string_identifies_the_file(local_lm) -> None:
    path = embedded_model_path()
    assert re.fullmatch(rf"local/{re.escape(path.stem)}-[0-9a-f]{{10}}", local_lm.model)
    assert local_lm.model == model_identity(path)
    # Turning prefix reuse off changes the model string, so the two never share cache entries.
    assert make_lm("local", prefix_reuse=False).model == local_lm.model + "-noreuse"


@pytest.mark.embedded
@pytest.mark.parametrize(
    "prefix_reuse",
    # An identical prompt is processed afresh: llama-cpp-python's one-token replay of a fully cached
    # prompt could flip near-tied greedy choices.
    [False, True],
)
def test_embedded_greedy_is_deterministic(local_lm, prefix_reuse: bool) -> None:  # 2 calls each
    if prefix_reuse:
        # A fresh context, so the result does not depend on which tests ran before.
        engine = LlamaCppEngine(prefix_reuse=True)
        lm = dspy.LM(engine.model_id + "-fresh", engine=engine, cache=False, max_tokens=24, temperature=0.0)
    else:
        engine = None
        lm = make_lm("local", prefix_reuse=False, cache=False, max_tokens=24)
    try:
        first = lm("Name three colours.")
        second = lm("Name three colours.")
    finally:
        if engine is not None:
            engine.close()
    assert first[0].strip()
    assert first == second


@pytest.mark.embedded
def test_embedded_max_tokens_and_usage(local_lm) -> None:  # 1 call
    lm = local_lm.copy(cache=False)
    meter = CallMeter()
    with metering(meter):
        (text,) = lm("Write a long story about a dragon who learns to read.", max_tokens=5)
    snap = meter.snapshot()
    assert snap.calls == 1
    assert 0 < snap.output_tokens <= 5
    assert snap.input_tokens > 10  # the chat template plus the prompt
    assert text.strip()
    assert lm.history[-1]["usage"]["completion_tokens"] == snap.output_tokens


@pytest.mark.embedded
def test_embedded_stop_is_honoured(local_lm) -> None:  # 1 call
    lm = local_lm.copy(cache=False, max_tokens=80)
    (text,) = lm("Count from 1 to 20, one number per line.", stop=["5"])
    assert "4" in text  # it counted ...
    assert "5" not in text and "6" not in text  # ... and stopped at the stop string


@pytest.mark.embedded
def test_embedded_sampling_is_reproducible_per_seed(local_lm) -> None:  # 3 calls
    prompt = "Write a short poem about the sea."

    # Without prefix reuse, so the KV-cache replay bug above cannot interfere.
    base = make_lm("local", prefix_reuse=False, cache=False)

    def sample(seed: int) -> str:
        return base.copy(temperature=1.0, seed=seed, max_tokens=30)(prompt)[0]

    first = sample(1)
    assert sample(1) == first
    assert sample(2) != first


@pytest.mark.embedded
def test_embedded_prefix_reuse_gives_same_greedy_text(local_lm) -> None:  # 3 calls
    program = _sentiment_program(4)
    reuse = local_lm.copy(cache=False, max_tokens=16)
    no_reuse = make_lm("local", prefix_reuse=False, cache=False, max_tokens=16)
    assert no_reuse.engine is not reuse.engine and not no_reuse.engine.prefix_reuse
    with dspy.context(adapter=PlainAdapter()):
        with dspy.context(lm=reuse):
            program(input="A dull, lifeless film.")  # leaves the shared prefix in the KV cache
            with_reuse = program(input="A warm and wonderful movie.").output
        with dspy.context(lm=no_reuse):
            without_reuse = program(input="A warm and wonderful movie.").output
    assert with_reuse == without_reuse


def test_llama_threads_come_from_the_environment_and_bad_values_are_named(tmp_path, monkeypatch) -> None:
    weights = tmp_path / "tiny.gguf"
    weights.write_bytes(b"GGUF not really")  # the engine reads the file lazily: only its digest is taken here
    monkeypatch.setenv("DSPY_EXT_LLAMA_THREADS", "1")
    assert LlamaCppEngine(weights).n_threads == 1
    assert LlamaCppEngine(weights, n_threads=3).n_threads == 3  # an explicit argument wins
    monkeypatch.setenv("DSPY_EXT_LLAMA_THREADS", "two")
    with pytest.raises(ValueError, match="DSPY_EXT_LLAMA_THREADS must be a positive integer, got 'two'"):
        LlamaCppEngine(weights)
