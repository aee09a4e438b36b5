"""Retries, timeouts and injected faults in the engine layer (dspy_ext.lm.retry, errors, faults)."""

from __future__ import annotations

import itertools
import threading
from collections import Counter

import dspy
import pytest
from dspy import lm15
from dspy.lm15 import Message, Request, Response, TextPart, Usage
from dspy.utils.exceptions import LMError

from dspy_ext.adapters import PlainAdapter
from dspy_ext.evaluation import Evaluator
from dspy_ext.lm import (
    CallMeter,
    CallPolicy,
    ContextOverflowError,
    FakeEngine,
    FaultInjectingEngine,
    InjectedFault,
    LMCallTimeout,
    LMRetriesExhausted,
    call_policy,
    find_budget_exhausted,
    is_transient_error,
    metering,
    with_faults,
)
from dspy_ext.lm.faults import ERROR_KINDS

_ids = itertools.count()
FAST = CallPolicy(max_retries=3, backoff=0.001, max_backoff=0.005)


def lm_on(engine, **kwargs) -> dspy.LM:
    return dspy.LM(f"fake/reliability-{next(_ids)}", engine=engine, cache=False, **kwargs)


def chain(exc: BaseException | None):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


# ---- what is transient -------------------------------------------------------------------------


class _HTTPStatusError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


class APIConnectionError(Exception):
    """Named like the openai/litellm class; matched by name, never imported."""


@pytest.mark.parametrize(
    "error",
    [
        lm15.RateLimitError("slow down", status=429),
        lm15.ServerError("unavailable", status=503),
        lm15.TimeoutError("timed out"),
        lm15.TransportError("reset"),
        TimeoutError("read timed out"),
        ConnectionResetError("connection reset by peer"),
        BrokenPipeError(),
        LMCallTimeout(2.0),
        _HTTPStatusError(429),
        _HTTPStatusError(502),
        APIConnectionError("boom"),
    ],
)
def test_transient_errors_are_recognised(error: BaseException) -> None:
    assert is_transient_error(error)
    wrapped = RuntimeError("wrapper")
    wrapped.__cause__ = error
    assert is_transient_error(wrapped)  # found along the cause chain


@pytest.mark.parametrize(
    "error",
    [
        ValueError("bad prompt"),
        lm15.AuthError("bad key"),
        lm15.InvalidRequestError("bad request", status=400),
        _HTTPStatusError(400),
        _HTTPStatusError(501),
        ContextOverflowError(5000, 4096),
        LMRetriesExhausted(4, TimeoutError()),
        InjectedFault("permanent"),
    ],
)
def test_permanent_errors_are_not_retried(error: BaseException) -> None:
    assert not is_transient_error(error)


# ---- the policy ----------------------------------------------------------------------------------


def test_backoff_doubles_is_capped_and_jittered() -> None:
    fixed = CallPolicy(backoff=0.5, max_backoff=3.0, jitter=0.0)
    assert [fixed.delay(k) for k in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    jittered = CallPolicy(backoff=1.0, max_backoff=30.0, jitter=0.5)
    draws = [jittered.delay(2) for _ in range(200)]
    assert all(2.0 <= d <= 4.0 for d in draws) and len(set(draws)) > 100  # in [wait/2, wait], spread out
    hinted = lm15.RateLimitError("slow down", retry_after=2.5)
    assert fixed.delay(0, hinted) == 2.5  # the provider's Retry-After wins over a shorter backoff
    assert fixed.delay(0, lm15.RateLimitError("x", retry_after=600.0)) == 3.0  # but not past max_backoff


@pytest.mark.parametrize(
    "bad",
    [
        {"max_retries": -1},
        {"max_retries": 1.5},
        {"backoff": -1.0},
        {"max_backoff": float("inf")},
        {"jitter": 1.5},
        {"timeout": 0},
        {"timeout": float("nan")},
    ],
)
def test_bad_policies_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        CallPolicy(**bad)


# ---- retries in the engine layer ----------------------------------------------------------------


def test_transient_failures_are_retried_and_every_try_is_charged() -> None:
    engine = FaultInjectingEngine(FakeEngine(lambda m: "ok"), fail=0.5, seed=1, call_policy=FAST)
    lm = lm_on(engine)
    meter = CallMeter()
    answers = []
    with metering(meter):
        for i in range(30):
            try:
                answers.append(lm(f"question {i}")[0])
            except LMError:
                answers.append(None)
    assert engine.injected["fail"] > 10
    assert meter.calls == engine.injected["tries"] == engine.inner.calls + engine.injected["fail"]
    assert meter.snapshot().failed_calls == engine.injected["fail"]
    assert answers.count("ok") >= 27  # 0.5**4: about 2 of 30 fail four times in a row


def test_a_persistent_transient_error_gives_up_after_max_retries_and_dspy_does_not_retry_again() -> None:
    engine = FaultInjectingEngine(FakeEngine(lambda m: "ok"), fail=1.0, errors=("rate_limit",), call_policy=FAST)
    lm = lm_on(engine, num_retries=3)  # DSPy's own retries stay on
    meter = CallMeter()
    with metering(meter), pytest.raises(LMError) as info:
        lm("hello")
    exhausted = next(e for e in chain(info.value) if isinstance(e, LMRetriesExhausted))
    assert exhausted.tries == 4 and "RateLimitError" in str(exhausted)
    assert engine.injected["tries"] == 4 == meter.calls  # 1 + 3 retries, not 4 x 4


def test_a_permanent_error_is_raised_at_once() -> None:
    engine = FaultInjectingEngine(FakeEngine(lambda m: "ok"), fail=1.0, errors=("fatal",), call_policy=FAST)
    with pytest.raises(LMError) as info:
        lm_on(engine)("hello")
    assert any(isinstance(e, InjectedFault) for e in chain(info.value))
    assert engine.injected["tries"] == 1


def test_retries_stop_when_the_budget_is_used_up() -> None:
    engine = FaultInjectingEngine(FakeEngine(lambda m: "ok"), fail=1.0, call_policy=FAST)
    meter = CallMeter(max_calls=2)
    with metering(meter), pytest.raises(Exception) as info:
        lm_on(engine)("hello")
    assert find_budget_exhausted(info.value) is not None
    assert meter.calls == 2 == engine.injected["tries"]


def test_a_call_policy_block_overrides_the_engine_policy_in_worker_threads() -> None:
    engine = FaultInjectingEngine(FakeEngine(lambda m: "ok"), fail=1.0, call_policy=FAST)
    program = dspy.Predict("input -> output")
    examples = [dspy.Example(input=f"x{i}", output="ok").with_inputs("input") for i in range(6)]
    evaluator = Evaluator(lambda ex, pred, trace=None: True, num_threads=3, cache=False)
    with dspy.context(lm=lm_on(engine), adapter=PlainAdapter()), call_policy(CallPolicy(max_retries=1, backoff=0.001)):
        report = evaluator.evaluate(program, examples)
    assert engine.injected["tries"] == 12  # 2 tries per row, not the engine's 4
    assert report.errors["lm_error"] == 6 and report.scored == []


# ---- timeouts ----------------------------------------------------------------------------------


def test_a_hanging_call_times_out_is_retried_and_charged() -> None:
    engine = FaultInjectingEngine(
        FakeEngine(lambda m: "ok"),
        hang=1.0,
        hang_seconds=30.0,
        call_policy=CallPolicy(max_retries=1, backoff=0.001, timeout=0.05),
    )
    meter = CallMeter()
    try:
        with metering(meter), pytest.raises(LMError) as info:
            lm_on(engine)("hello")
        # Both tries were abandoned at their timeout: their 30-s hangs are still blocked right now.
        assert sum(t.name == "dspy-ext-lm-call" and t.is_alive() for t in threading.enumerate()) >= 2
    finally:
        engine.close()
    assert any(isinstance(e, LMCallTimeout) for e in chain(info.value))
    assert meter.calls == 2 and meter.snapshot().failed_calls == 2


def test_a_slow_call_within_its_timeout_succeeds_and_its_thread_context_is_kept() -> None:
    seen = []

    def responder(messages):
        seen.append(threading.current_thread().name)
        return "ok"

    engine = FakeEngine(responder, latency=0.02, call_policy=CallPolicy(timeout=5.0))
    meter = CallMeter()
    with metering(meter):
        assert lm_on(engine)("hello") == ["ok"]
    assert seen == ["dspy-ext-lm-call"] and meter.snapshot().failed_calls == 0


@pytest.mark.embedded
def test_embedded_model_stops_generating_at_its_timeout(local_lm: dspy.LM) -> None:
    meter = CallMeter()
    with metering(meter), call_policy(CallPolicy(max_retries=0, timeout=0.3)), pytest.raises(LMError) as info:
        local_lm.copy(cache=False)("Write a very long story about a dragon and a knight.", max_tokens=400)
    assert any(isinstance(e, LMCallTimeout) for e in chain(info.value))
    # The generation itself stopped (no abandoned thread holds the model): its lock is free at once.
    assert local_lm.engine._lock.acquire(blocking=False)
    local_lm.engine._lock.release()
    assert meter.calls == 1
    # The model is usable right after.
    assert local_lm.copy(cache=False)("Say hi.", max_tokens=5)[0]


# ---- the fault engine -----------------------------------------------------------------------------


def _request(text: str) -> Request:
    return Request(model="m", messages=(Message.user(text),))


def test_fault_shares_follow_the_settings_and_are_seeded() -> None:
    def faults(seed: int) -> list[str | None]:
        engine = FaultInjectingEngine(FakeEngine(lambda m: "ok"), fail=0.2, hang=0.05, garbage=0.1, seed=seed)
        return [engine.fault_for(engine._draw(_request(f"q{i}"))) for i in range(4000)]

    first = faults(0)
    counts = Counter(first)
    assert abs(counts["fail"] / 4000 - 0.2) < 0.03
    assert abs(counts["hang"] / 4000 - 0.05) < 0.015
    assert abs(counts["garbage"] / 4000 - 0.1) < 0.02
    assert faults(0) == first and faults(1) != first


def test_a_retried_request_gets_a_fresh_draw_unless_sticky() -> None:
    fresh = FaultInjectingEngine(FakeEngine(lambda m: "ok"), fail=0.5, seed=0)
    sticky = FaultInjectingEngine(FakeEngine(lambda m: "ok"), fail=0.5, seed=0, sticky=True)
    fresh_draws = {fresh.fault_for(fresh._draw(_request("same"))) for _ in range(20)}
    sticky_draws = {sticky.fault_for(sticky._draw(_request("same"))) for _ in range(20)}
    assert fresh_draws == {"fail", None}
    assert len(sticky_draws) == 1


def test_every_error_kind_is_raised_as_documented() -> None:
    for kind in ERROR_KINDS:
        engine = FaultInjectingEngine(
            FakeEngine(lambda m: "ok"), fail=1.0, errors=(kind,), call_policy=CallPolicy(max_retries=0)
        )
        with pytest.raises(LMError) as info:
            lm_on(engine)("hello")
        causes = list(chain(info.value))
        if kind == "fatal":
            assert any(isinstance(e, InjectedFault) for e in causes)
        else:
            assert any(isinstance(e, LMRetriesExhausted) for e in causes)


def test_garbage_replies_are_scored_as_unparseable_or_wrong_never_crash() -> None:
    engine = FaultInjectingEngine(FakeEngine(lambda m: "ok"), garbage=1.0, seed=4)
    examples = [dspy.Example(input=f"x{i}", output="ok").with_inputs("input") for i in range(40)]
    evaluator = Evaluator(lambda ex, pred, trace=None: ex.output == pred.output, cache=False)
    with dspy.context(lm=lm_on(engine), adapter=PlainAdapter()):
        report = evaluator.evaluate(dspy.Predict("input -> output"), examples)
    assert engine.injected["garbage"] == 40 and engine.inner.calls == 0
    assert report.score == 0.0
    assert report.errors["parse_error"] > 0 and report.errors["program_error"] == 0
    assert len(report.rows) == 40


def test_bad_fault_settings_are_refused() -> None:
    inner = FakeEngine(lambda m: "ok")
    with pytest.raises(ValueError, match="at most 1"):
        FaultInjectingEngine(inner, fail=0.6, hang=0.6)
    with pytest.raises(ValueError, match="fail"):
        FaultInjectingEngine(inner, fail=-0.1)
    with pytest.raises(ValueError, match="errors"):
        FaultInjectingEngine(inner, fail=0.1, errors=("teapot",))
    with pytest.raises(TypeError, match="engine"):
        FaultInjectingEngine(object())


class _PlainEngine:
    """A DSPy engine that is not a dspy-ext engine (complete only)."""

    def __init__(self) -> None:
        self.calls = 0

    def complete(self, request: Request) -> Response:
        self.calls += 1
        return Response(
            id=None,
            model=request.model,
            message=Message.assistant([TextPart("plain")]),
            finish_reason="stop",
            usage=Usage(input_tokens=3, output_tokens=1),
        )


def test_any_dspy_engine_can_be_wrapped_and_gets_metering_and_retries() -> None:
    engine = FaultInjectingEngine(_PlainEngine(), fail=0.5, seed=9, call_policy=FAST)
    meter = CallMeter()
    with metering(meter):
        replies = [lm_on(engine)(f"q{i}")[0] for i in range(10)]
    assert replies == ["plain"] * 10
    assert meter.calls == engine.injected["tries"] and engine.inner.calls == 10
    assert meter.snapshot().input_tokens == 30


def test_with_faults_wraps_an_lm_under_its_own_cache_name() -> None:
    base = lm_on(FakeEngine(lambda m: "ok", context_window=50), temperature=0.0)
    flaky = with_faults(base, fail=0.3, seed=2)
    assert isinstance(flaky.engine, FaultInjectingEngine) and flaky.engine.inner is base.engine
    assert flaky.model != base.model and "faults" in flaky.model
    assert flaky.kwargs["temperature"] == 0.0
    assert flaky.engine.context_window == 50
    with pytest.raises(TypeError, match="engine"):
        with_faults(dspy.LM("openai/gpt-4o-mini"))


@pytest.mark.embedded
def test_faults_in_front_of_the_embedded_model(local_lm: dspy.LM) -> None:
    flaky = with_faults(local_lm, fail=0.3, seed=0, call_policy=FAST)
    flaky.cache = False
    meter = CallMeter()
    with metering(meter):
        replies = [flaky(f"Say the number {i}.", max_tokens=8)[0] for i in range(8)]
    assert all(isinstance(r, str) and r for r in replies)
    assert flaky.engine.injected["fail"] > 0
    assert meter.calls == flaky.engine.injected["tries"]
