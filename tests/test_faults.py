"""Acceptance: a compile survives an LM that fails, hangs or errs persistently, within its budget.

The task and the fake model are ``tests/support/fake_world.py`` (instructions
and demos set the score); the faults come from the shipped
:class:`~dspy_ext.lm.faults.FaultInjectingEngine`, seeded. The optimizer is APE,
built through the registry as the CLI builds it.
"""

from __future__ import annotations

import itertools
import threading

import dspy
import pytest

from dspy_ext.adapters import PlainAdapter
from dspy_ext.lm import CallPolicy, FakeEngine, FaultInjectingEngine
from dspy_ext.prompt_state import compile_record
from dspy_ext.registry import build_optimizer

from support.fake_world import BASELINE_INSTRUCTION, dataset, respond

_ids = itertools.count()
BUDGET = 150
FAST_RETRIES = CallPolicy(max_retries=3, backoff=0.001, max_backoff=0.01)
# Error classes that are not the candidate's fault: left out of its score.
NOT_SCORED = ("lm_error", "context_overflow", "metric_error", "program_error")


def metric(example, prediction, trace=None) -> bool:
    return example.output == prediction.output


def compile_with(engine: FaultInjectingEngine, *, budget: int = BUDGET, threads: int = 2) -> dspy.Module:
    lm = dspy.LM(f"fake/faults-{next(_ids)}", engine=engine, cache=False)
    handle = build_optimizer(
        "ape",
        metric,
        budget=budget,
        seed=0,
        num_threads=threads,
        n_train=24,
        n_val=12,
        config={
            "num_candidates": 4,
            "top_k": 2,
            "minibatch_size": 6,
            "max_bootstrapped_demos": 0,
            "max_labeled_demos": 2,
            "num_demo_sets": 1,
        },
    )
    student = dspy.Predict(dspy.Signature("input -> output", BASELINE_INSTRUCTION))
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        return handle.compile(student, trainset=dataset(24), valset=dataset(12, 100))


def adopted_rows(program: dspy.Module) -> list[dict]:
    """The trial rows of the returned candidate (same instructions and demos)."""
    best = compile_record(program).search.best
    return [
        r
        for r in compile_record(program).search.trials
        if r["instructions"] == best["instructions"] and r.get("demo_set") == best.get("demo_set")
    ]


def scored_share(row: dict) -> float:
    return (row["n"] - sum(row["errors"].get(kind, 0) for kind in NOT_SCORED)) / row["n"]


def test_twenty_percent_failing_calls_are_retried_within_the_budget() -> None:
    engine = FaultInjectingEngine(FakeEngine(respond), fail=0.2, seed=7, call_policy=FAST_RETRIES)
    program = compile_with(engine)
    result = compile_record(program).search

    assert engine.injected["fail"] > 0.1 * engine.injected["tries"]  # faults really happened
    assert result.lm_calls <= BUDGET
    assert engine.injected["tries"] <= BUDGET  # retries count against the budget
    assert result.lm_calls == engine.injected["tries"]
    # Transient faults were absorbed by retries: the search ran and found a better instruction.
    assert result.val_score is not None and result.val_score > (result.baseline_val_score or 0.0)
    rows = adopted_rows(program)
    assert rows and all(scored_share(r) >= 0.5 for r in rows)


def test_persistent_failures_are_counted_apart_from_bad_candidates() -> None:
    # sticky: a request that draws a fault fails on every retry, like an outage for that input.
    engine = FaultInjectingEngine(FakeEngine(respond), fail=0.2, seed=3, sticky=True, call_policy=FAST_RETRIES)
    program = compile_with(engine)
    result = compile_record(program).search
    trials = result.trials

    assert result.lm_calls <= BUDGET and engine.injected["tries"] <= BUDGET
    failed_rows = sum(r["errors"].get("lm_error", 0) for r in trials)
    assert failed_rows > 0
    for row in trials:
        # The score is the mean over the rows that ran: an LM error is not a wrong answer.
        assert set(row["errors"]) <= {"lm_error", "parse_error"}
        assert 0.0 <= row["score"] <= 100.0
    rows = adopted_rows(program)
    assert rows and all(scored_share(r) >= 0.5 for r in rows)


def test_five_percent_hanging_calls_time_out_and_the_compile_finishes() -> None:
    timeout = 0.2
    engine = FaultInjectingEngine(
        FakeEngine(respond),
        hang=0.05,
        seed=11,
        hang_seconds=30.0,
        call_policy=CallPolicy(max_retries=2, backoff=0.001, timeout=timeout),
    )
    try:
        program = compile_with(engine)
        # Every hung try was abandoned at its timeout: the 30-s hangs are still blocked right now.
        still_hanging = sum(t.name == "dspy-ext-lm-call" for t in threading.enumerate())
    finally:
        engine.close()  # wakes the abandoned hung tries
    result = compile_record(program).search

    assert engine.injected["hang"] > 0 and still_hanging >= engine.injected["hang"]
    assert result.lm_calls <= BUDGET and engine.injected["tries"] <= BUDGET
    assert result.val_score is not None
    rows = adopted_rows(program)
    assert rows and all(scored_share(r) >= 0.5 for r in rows)


@pytest.mark.parametrize("threads", [1, 4])
def test_fault_runs_are_reproducible(threads: int) -> None:
    """Same seed, same faults, same program: the faults are drawn from the requests, not from a shared stream."""
    programs = []
    for _ in range(2):
        engine = FaultInjectingEngine(FakeEngine(respond), fail=0.2, garbage=0.05, seed=5, call_policy=FAST_RETRIES)
        programs.append((compile_with(engine, threads=threads), engine.injected))
    (first, faults_a), (second, faults_b) = programs
    assert compile_record(first).search.best == compile_record(second).search.best
    assert compile_record(first).search.lm_calls == compile_record(second).search.lm_calls
    if threads == 1:
        assert faults_a == faults_b


def test_retries_stop_at_the_budget() -> None:
    """Half the tries fail: retries eat the budget, the compile stops at the cap and returns the best so far."""
    engine = FaultInjectingEngine(FakeEngine(respond), fail=0.5, seed=2, call_policy=FAST_RETRIES)
    program = compile_with(engine, budget=40)
    result = compile_record(program).search

    assert result.budget_exhausted
    assert engine.injected["tries"] <= 40 and result.lm_calls <= 40
    assert isinstance(program, dspy.Predict)
