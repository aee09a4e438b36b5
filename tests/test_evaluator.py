"""Tests for ``dspy_ext.evaluation``: scores, the score cache, sampling, repeats, errors, budgets."""

from __future__ import annotations

import contextlib
import itertools
import random
import signal
import threading
import time

import dspy
import pytest
from dspy.lm15 import Request

from dspy_ext.adapters import PlainAdapter
from dspy_ext.evaluation import ErrorKind, Evaluator, mean_ci, metric_value
from dspy_ext.lm import CallMeter, FakeEngine, Generation
from dspy_ext.prompt_state import program_fingerprint


def examples(n: int, output: str = "ok") -> list[dspy.Example]:
    return [dspy.Example(input=f"x{i}", output=output).with_inputs("input") for i in range(n)]


def exact(example: dspy.Example, prediction: dspy.Prediction, trace=None) -> bool:
    return prediction.output == example.output


def user_input(messages: list[dict[str, str]]) -> str:
    """The ``Input:`` value of the last user message (PlainAdapter's format)."""
    return messages[-1]["content"].removeprefix("Input: ")


def even_ok(messages: list[dict[str, str]]) -> str:
    """``ok`` for x0, x2, ...; ``bad`` for x1, x3, ..."""
    return "ok" if int(user_input(messages)[1:]) % 2 == 0 else "bad"


def predict(instructions: str = "Reply ok.") -> dspy.Predict:
    return dspy.Predict(dspy.Signature("input -> output", instructions))


def plain(lm: dspy.LM):
    return dspy.context(lm=lm, adapter=PlainAdapter())


# --- scores -------------------------------------------------------------------------


def test_score_n_and_errors(fake_lm) -> None:
    lm = fake_lm(even_ok)
    with plain(lm):
        report = Evaluator(exact).evaluate(predict(), examples(6))
    assert report.score == 50.0  # 0-100 scale
    assert report.n_examples == 6 and report.repeats == 1 and report.complete
    assert report.errors == {
        "lm_error": 0,
        "context_overflow": 0,
        "parse_error": 0,
        "metric_error": 0,
        "program_error": 0,
    }
    assert report.usage.calls == lm.engine.calls == 6
    assert [r.index for r in report.rows] == list(range(6))
    assert [r.score for r in report.rows] == [1.0, 0.0] * 3
    assert report.rows[1].prediction == {"output": "bad"}
    assert report.example_scores == [1.0, 0.0] * 3
    summary = report.to_dict()
    assert summary["score"] == 50.0 and summary["n"] == 6 and summary["lm_calls"] == 6
    assert summary["scored_rows"] == 6 and summary["budget_exhausted"] is False
    assert summary["input_tokens"] > 0 and summary["output_tokens"] == 6


def test_metric_may_return_bool_number_or_prediction(fake_lm) -> None:
    lm = fake_lm(lambda messages: "ok")
    metrics = {
        True: lambda ex, pred: True,
        0.25: lambda ex, pred: 0.25,
        0.5: lambda ex, pred: dspy.Prediction(score=0.5),
    }
    for expected, metric in metrics.items():
        with plain(lm):
            report = Evaluator(metric).evaluate(predict(), examples(2))
        assert report.score == 100.0 * expected
    assert metric_value(dspy.Prediction(score=1)) == 1.0
    with pytest.raises(TypeError, match="str"):
        metric_value("yes")


def test_evaluation_does_not_modify_the_program(fake_lm) -> None:
    program = predict()
    program.demos = [dspy.Example(input="d", output="ok")]
    before = program_fingerprint(program)
    with plain(fake_lm(lambda messages: "ok")):
        Evaluator(exact, num_threads=2).evaluate(program, examples(4))
    assert program_fingerprint(program) == before


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_threads"):
        Evaluator(exact, num_threads=0)
    with pytest.raises(ValueError, match="repeats"):
        Evaluator(exact).evaluate(predict(), examples(1), repeats=0)


# --- the score cache -------------------------------------------------------------------


def test_second_evaluation_is_served_from_the_score_cache(fake_lm) -> None:
    lm = fake_lm(even_ok)
    evaluator = Evaluator(exact, num_threads=4)
    program = predict()
    with plain(lm):
        first = evaluator.evaluate(program, examples(8))
        second = evaluator.evaluate(program, examples(8))
        # A structurally identical copy has the same prompt state: also cached.
        third = evaluator.evaluate(program.deepcopy(), examples(8))
    assert first.usage.calls == 8 and first.cache_hits == 0
    assert second.usage.calls == 0 and second.cache_hits == 8
    assert third.usage.calls == 0 and third.cache_hits == 8
    assert lm.engine.calls == 8
    assert second.score == first.score == 50.0
    assert [(r.index, r.score, r.prediction) for r in second.rows] == [
        (r.index, r.score, r.prediction) for r in first.rows
    ]


def test_new_instruction_or_demos_invalidate_the_score_cache(fake_lm) -> None:
    lm = fake_lm(even_ok)
    evaluator = Evaluator(exact)
    program = predict("Reply ok.")
    with plain(lm):
        evaluator.evaluate(program, examples(4))
        program.signature = program.signature.with_instructions("Reply with ok, always.")
        changed = evaluator.evaluate(program, examples(4))
        program.demos = [dspy.Example(input="d", output="ok")]
        with_demo = evaluator.evaluate(program, examples(4))
        again = evaluator.evaluate(program, examples(4))
    assert (changed.usage.calls, changed.cache_hits) == (4, 0)
    assert (with_demo.usage.calls, with_demo.cache_hits) == (4, 0)
    assert (again.usage.calls, again.cache_hits) == (0, 4)
    assert lm.engine.requests[4][0]["content"] == "Reply with ok, always."


def test_new_examples_are_run_and_seen_ones_are_not(fake_lm) -> None:
    lm = fake_lm(even_ok)
    evaluator = Evaluator(exact)
    program = predict()
    with plain(lm):
        evaluator.evaluate(program, examples(4))
        report = evaluator.evaluate(program, examples(6))
    assert (report.usage.calls, report.cache_hits) == (2, 4)
    assert len(report.rows) == 6


def test_score_cache_can_be_turned_off(fake_lm) -> None:
    lm = fake_lm(even_ok)
    evaluator = Evaluator(exact, cache=False)
    with plain(lm):
        evaluator.evaluate(predict(), examples(3))
        report = evaluator.evaluate(predict(), examples(3))
    assert (report.usage.calls, report.cache_hits) == (3, 0)


def test_different_lm_is_not_served_from_the_cache(fake_lm) -> None:
    evaluator = Evaluator(exact)
    with plain(fake_lm(even_ok)):
        evaluator.evaluate(predict(), examples(3))
    with plain(fake_lm(lambda messages: "ok")):  # another model string
        report = evaluator.evaluate(predict(), examples(3))
    assert (report.usage.calls, report.score) == (3, 100.0)


def test_temperature_change_is_not_served_from_the_cache(fake_lm) -> None:
    lm = fake_lm(even_ok)
    evaluator = Evaluator(exact)
    with plain(lm):
        evaluator.evaluate(predict(), examples(3))  # the LM's own temperature
        sampled = evaluator.evaluate(predict(), examples(3), temperature=0.9)
    assert sampled.usage.calls == 3


# --- minibatches ------------------------------------------------------------------------


def test_minibatch_sampling_is_seeded() -> None:
    data = examples(50)
    state = random.getstate()
    first = Evaluator.sample(data, 10, random.Random(7))
    second = Evaluator.sample(data, 10, random.Random(7))
    other = Evaluator.sample(data, 10, random.Random(8))
    assert random.getstate() == state  # the global RNG is untouched
    assert [e.input for e in first] == [e.input for e in second]
    assert [e.input for e in first] != [e.input for e in other]
    assert len({e.input for e in first}) == 10  # without replacement
    # Successive draws from one RNG continue its stream.
    rng_a, rng_b = random.Random(1), random.Random(1)
    assert [Evaluator.sample(data, 5, rng_a) for _ in range(3)] == [Evaluator.sample(data, 5, rng_b) for _ in range(3)]


def test_minibatch_larger_than_data_is_all_data_in_order() -> None:
    data = examples(4)
    assert Evaluator.sample(data, 4, random.Random(0)) == data
    assert Evaluator.sample(data, 10, random.Random(0)) == data


# --- repeats ------------------------------------------------------------------------------


class RecordingEngine(FakeEngine):
    """A FakeEngine that also records each request's sampling temperature."""

    def __init__(self, responder) -> None:
        super().__init__(responder)
        self.temperatures: list[float | None] = []

    def generate(self, request: Request) -> Generation:
        self.temperatures.append(request.config.temperature)
        return super().generate(request)


def test_repeats_give_rows_per_example_and_a_ci() -> None:
    calls = itertools.count()
    engine = RecordingEngine(lambda messages: "ok" if next(calls) % 3 == 0 else "bad")
    # DSPy's response cache is on: only distinct rollout ids keep repeats apart.
    lm = dspy.LM("fake/test-repeats", engine=engine, cache=True)
    with plain(lm):
        report = Evaluator(exact).evaluate(predict(), examples(4), repeats=3, temperature=0.7)
    assert len(report.rows) == 12 and report.complete
    assert sorted((r.index, r.repeat) for r in report.rows) == [(i, k) for i in range(4) for k in range(3)]
    assert engine.calls == 12 and report.usage.calls == 12
    assert engine.temperatures == [0.7] * 12
    # Calls run repeat by repeat: 1 0 0 1 | 0 0 1 0 | 0 1 0 0
    assert report.repeat_scores == [50.0, 25.0, 25.0]
    ci = report.ci
    assert ci == mean_ci([50.0, 25.0, 25.0])
    assert ci.n == 3 and ci.mean == pytest.approx(100 / 3) and ci.half_width > 0
    assert report.score == pytest.approx(100 / 3)
    assert report.to_dict()["ci95"] == round(ci.half_width, 2)
    assert report.example_scores == pytest.approx([1 / 3] * 4)  # each example got one "ok"


def test_single_repeat_ci_is_across_examples(fake_lm) -> None:
    with plain(fake_lm(even_ok)):
        report = Evaluator(exact).evaluate(predict(), examples(4))
    assert report.ci == mean_ci([100.0, 0.0, 100.0, 0.0])


# --- error classes -------------------------------------------------------------------------


def test_lm_error_is_excluded_from_the_score(fake_lm) -> None:
    lm = fake_lm(lambda messages: "ok", fail_when=lambda messages: user_input(messages) == "x1")
    evaluator = Evaluator(exact)
    with plain(lm):
        report = evaluator.evaluate(predict(), examples(4))
    assert report.errors["lm_error"] == 1
    failed = report.rows[1]
    assert (failed.error, failed.score, failed.prediction) == (ErrorKind.LM, None, None)
    assert "fake engine was told to fail" in failed.message
    assert report.score == 100.0 and len(report.scored) == 3
    assert report.usage.calls == 4 and report.usage.failed_calls == 1
    # LM failures are not cached: the next evaluation retries only that row.
    with plain(lm):
        again = evaluator.evaluate(predict(), examples(4))
    assert (again.usage.calls, again.cache_hits) == (1, 3)


def test_metric_error_is_reported_apart(fake_lm) -> None:
    def metric(example, prediction, trace=None):
        if example.input == "x2":
            raise KeyError("gold label missing")
        return True

    with plain(fake_lm(lambda messages: "ok")):
        report = Evaluator(metric).evaluate(predict(), examples(4))
    assert report.errors["metric_error"] == 1
    row = report.rows[2]
    assert (row.error, row.score, row.prediction) == (ErrorKind.METRIC, None, {"output": "ok"})
    assert "KeyError" in row.message
    assert report.score == 100.0 and len(report.scored) == 3


def test_empty_reply_is_a_parse_error_scored_zero(fake_lm) -> None:
    lm = fake_lm(lambda messages: "" if user_input(messages) == "x0" else "ok")
    with plain(lm):
        report = Evaluator(exact).evaluate(predict(), examples(4))
    assert report.errors["parse_error"] == 1
    row = report.rows[0]
    assert (row.error, row.score) == (ErrorKind.PARSE, 0.0)
    assert report.score == 75.0 and len(report.scored) == 4  # the parse error counts as 0


def test_missing_field_in_two_output_signature_is_a_parse_error(fake_lm) -> None:
    lm = fake_lm(lambda messages: "Answer: 4")  # no reasoning, no line to fall back on
    program = dspy.Predict(dspy.Signature("input -> reasoning, output", "Think, then answer."))
    with plain(lm):
        report = Evaluator(exact).evaluate(program, examples(2))
    assert report.errors["parse_error"] == 2
    assert [r.score for r in report.rows] == [0.0, 0.0]
    assert report.score == 0.0


def test_program_error_is_reported_apart(fake_lm) -> None:
    class Buggy(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.predict = predict()

        def forward(self, input: str) -> dspy.Prediction:
            prediction = self.predict(input=input)
            if input == "x3":
                raise ZeroDivisionError("bug in forward")
            return prediction

    with plain(fake_lm(lambda messages: "ok")):
        report = Evaluator(exact).evaluate(Buggy(), examples(4))
    assert report.errors == {
        "lm_error": 0,
        "context_overflow": 0,
        "parse_error": 0,
        "metric_error": 0,
        "program_error": 1,
    }
    assert report.rows[3].error is ErrorKind.PROGRAM and report.rows[3].score is None
    assert report.score == 100.0


# --- budgets ---------------------------------------------------------------------------------


def test_budget_exhaustion_returns_a_partial_report(fake_lm) -> None:
    lm = fake_lm(even_ok)
    evaluator = Evaluator(exact)
    budget = CallMeter(max_calls=3)
    with plain(lm):
        report = evaluator.evaluate(predict(), examples(10), meter=budget)
    assert report.budget_exhausted and not report.complete
    assert lm.engine.calls == 3 and budget.calls == 3 and report.usage.calls == 3
    assert [(r.index, r.score) for r in report.rows] == [(0, 1.0), (1, 0.0), (2, 1.0)]
    assert report.errors == {
        "lm_error": 0,
        "context_overflow": 0,
        "parse_error": 0,
        "metric_error": 0,
        "program_error": 0,
    }
    assert report.to_dict()["budget_exhausted"] is True
    # The finished rows were cached: a new budget pays only for the rest.
    with plain(lm):
        rest = evaluator.evaluate(predict(), examples(10), meter=CallMeter(max_calls=100))
    assert (rest.usage.calls, rest.cache_hits) == (7, 3)
    assert rest.complete and not rest.budget_exhausted and rest.score == 50.0


def test_budget_already_spent_runs_nothing(fake_lm) -> None:
    lm = fake_lm(even_ok)
    with plain(lm):
        report = Evaluator(exact, num_threads=4).evaluate(predict(), examples(5), meter=CallMeter(max_calls=0))
    assert report.budget_exhausted and report.rows == [] and lm.engine.calls == 0
    assert report.score == 0.0


# --- Ctrl-C ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _sigint_raises_keyboard_interrupt():
    """SIGINT turns into ``KeyboardInterrupt`` in this block, whatever the test runner's own disposition.

    A runner started in the background of a script ignores SIGINT (see tests/test_compare_workers.py).
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(signal.SIGINT, previous)


class _CtrlC:
    """A responder that answers ``ok`` and, once ``after`` calls were made, sends SIGINT to the main thread
    as a terminal's Ctrl-C does (once)."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.engine: FakeEngine | None = None
        self._sent = threading.Event()
        self._main = threading.main_thread().ident

    def __call__(self, messages: list[dict[str, str]]) -> str:
        if self.engine.calls >= self.after and not self._sent.is_set():
            self._sent.set()
            signal.pthread_kill(self._main, signal.SIGINT)
        return "ok"


def _settled(engine: FakeEngine, latency: float) -> int:
    """The engine's call count once the rows still in flight have finished (they run on after the interrupt)."""
    calls = -1
    while calls != engine.calls:
        calls = engine.calls
        time.sleep(4 * latency)
    return calls


def test_ctrl_c_with_threads_cancels_the_queued_rows(fake_lm) -> None:
    """A Ctrl-C while the main thread waits on the pool stops the evaluation at once: the queued rows are
    cancelled and no running worker starts another, instead of every queued row being run first."""
    threads, rows, after, latency = 4, 40, 8, 0.05
    ctrl_c = _CtrlC(after)
    lm = fake_lm(ctrl_c, latency=latency)
    ctrl_c.engine = lm.engine
    evaluator = Evaluator(exact, num_threads=threads)
    meter = CallMeter()
    with plain(lm), _sigint_raises_keyboard_interrupt(), pytest.raises(KeyboardInterrupt):
        evaluator.evaluate(predict(), examples(rows), meter=meter)
    calls = _settled(lm.engine, latency)
    # At most the calls in flight when the signal came and one more row per thread that had just started.
    assert after <= calls <= after + 2 * threads
    assert meter.calls == calls  # every call made is counted
    # The rows finished before (and during) the interrupt stay in the score cache: a new run pays for the rest.
    with plain(lm):
        rest = evaluator.evaluate(predict(), examples(rows))
    assert rest.complete and rest.score == 100.0
    assert rest.cache_hits >= threads and rest.cache_hits + rest.usage.calls == rows


def test_interrupt_raised_in_a_worker_cancels_the_queued_rows(fake_lm) -> None:
    """A KeyboardInterrupt out of a worker's row reaches the caller without the queued rows being run."""
    threads, rows, after, latency = 4, 40, 8, 0.02

    def interrupt(messages: list[dict[str, str]]) -> str:
        if user_input(messages) == f"x{after - 1}":
            raise KeyboardInterrupt
        return "ok"

    lm = fake_lm(interrupt, latency=latency)
    with plain(lm), pytest.raises(KeyboardInterrupt):
        Evaluator(exact, num_threads=threads).evaluate(predict(), examples(rows))
    assert _settled(lm.engine, latency) <= after + 2 * threads
