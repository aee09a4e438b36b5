"""Multi-criteria metrics, regression guards in every optimizer and around DSPy's, and repeated rollouts."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

import dspy
import pytest

from dspy_ext.adapters import PlainAdapter
from dspy_ext.evaluation import (
    CriteriaMetric,
    ErrorKind,
    Evaluator,
    criteria,
    criteria_of,
    feedback_of,
    measure,
    metric_value,
)
from dspy_ext.prompt_state import compile_record
from dspy_ext.registry import build_optimizer
from dspy_ext.search import AcceptanceGate, RegressionGuard, parse_guards
from dspy_ext.search.regression import one_sided_sign_flip
from metrics import contains_text, exact_match, matches, max_words, not_contains, one_of, valid_json
from programs import Transform

from support.fake_world import BASELINE_INSTRUCTION, dataset, write_task
from support.guard_world import guard_metric, guard_world_lm

OURS = ["ape", "opro", "evoprompt-ga", "evoprompt-de", "protegi"]


def ex(output: str = "positive") -> dspy.Example:
    return dspy.Example(input="A fine film.", output=output).with_inputs("input")


# ---- the checks in metrics/ ----------------------------------------------------------------------------


def test_form_checks() -> None:
    e = ex()
    assert one_of(["positive", "negative"])(e, dspy.Prediction(output=" Positive. ")) == 1.0
    assert one_of(["positive", "negative"])(e, dspy.Prediction(output="neutral")) == 0.0
    assert max_words(2)(e, dspy.Prediction(output="very positive")) == 1.0
    assert max_words(2)(e, dspy.Prediction(output="very positive indeed"), trace=[]) is False
    assert matches(r"ITEM-\d+")(e, dspy.Prediction(output="ITEM-12\n")) == 1.0
    assert contains_text("film")(e, dspy.Prediction(output="A FILM")) == 1.0
    assert not_contains("sure")(e, dspy.Prediction(output="Sure, positive")) == 0.0
    assert valid_json()(e, dspy.Prediction(output='```json\n{"a": 1}\n```')) == 1.0
    assert valid_json()(e, dspy.Prediction(output="{a: 1}")) == 0.0
    # A named field; a missing field fails; with no label fields every predicted field is checked.
    assert max_words(1, field="label")(e, dspy.Prediction(output="a b", label="x")) == 1.0
    assert max_words(1, field="label")(e, dspy.Prediction(output="x")) == 0.0
    assert max_words(1)(dspy.Example(input="q").with_inputs("input"), dspy.Prediction(a="x", b="y z")) == 0.5
    with pytest.raises(ValueError, match="one_of needs at least one label"):
        one_of([])
    with pytest.raises(ValueError, match="invalid regular expression"):
        matches("(")
    with pytest.raises(ValueError, match="n >= 1"):
        max_words(0)


# ---- criteria metrics ------------------------------------------------------------------------------------


def test_criteria_metric_is_a_float_for_dspy_and_every_criterion_for_the_evaluator() -> None:
    metric = criteria(
        correct=exact_match,
        format=one_of(["positive", "negative"]),
        short=max_words(1),
        weights={"correct": 2, "format": 1, "short": 1},
    )
    assert metric.criteria == ["correct", "format", "short"]
    m = metric.measure(ex(), dspy.Prediction(output="negative"))
    assert m.criteria == {"correct": 0.0, "format": 1.0, "short": 1.0} and m.score == pytest.approx(0.5)
    assert m.feedback == "correct: scored 0.00"
    assert metric(ex(), dspy.Prediction(output="negative")) == pytest.approx(0.5)
    # With a trace (bootstrapping), a demo is kept only when every part passes.
    assert metric(ex(), dspy.Prediction(output="positive"), trace=[]) is True
    assert metric(ex(), dspy.Prediction(output="positive!!! yes"), trace=[]) is False
    bad = metric.measure(ex(), dspy.Prediction(output="It is positive"))
    assert bad.feedback == (
        "correct: scored 0.00; format: expected one of: positive, negative; short: expected at most 1 word"
    )
    with pytest.raises(ValueError, match="weights name \\['tone'\\]"):
        criteria(correct=exact_match, weights={"tone": 1})
    with pytest.raises(ValueError, match="at least one named part"):
        criteria()
    with pytest.raises(ValueError, match="criterion 'format' is str"):
        criteria(format="one_of")


def test_what_a_metric_may_return() -> None:
    gepa_form = dspy.Prediction(score=0.25, criteria={"a": 1, "b": False}, feedback="b failed")
    assert criteria_of(gepa_form) == {"a": 1.0, "b": 0.0} and feedback_of(gepa_form) == "b failed"
    assert metric_value(gepa_form) == 0.25
    assert metric_value({"a": 1.0, "b": 0.0}) == 0.5 and criteria_of(0.5) == {"score": 0.5}
    assert measure(lambda e, p: dspy.Prediction(score=1.0, feedback="fine"), ex(), None).feedback == "fine"
    assert measure(lambda e, p: dspy.Prediction(score=1.0, feedback="fine"), ex(), None).criteria is None
    with pytest.raises(TypeError, match="criterion 'a' is str"):
        criteria_of({"a": "high"})
    with pytest.raises(TypeError, match="expected bool, a number, a mapping"):
        metric_value("yes")
    # Wrapping a criteria metric (as tune does) keeps its own objective unless told otherwise.
    wrapped = CriteriaMetric(guard_metric)
    e = dataset(1)[0]
    assert wrapped(e, dspy.Prediction(output="Sure, the answer is ITEM-0")) == pytest.approx(0.9)
    assert CriteriaMetric(guard_metric, primary="format")(e, dspy.Prediction(output="ITEM-0")) == 1.0


def test_the_evaluator_keeps_criteria_and_feedback_per_row_and_in_its_cache() -> None:
    lm = guard_world_lm()
    program = Transform(instructions="Handle the request at level 6.")
    rows = dataset(8)
    evaluator = Evaluator(guard_metric, num_threads=2)
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        first = evaluator.evaluate(program, rows)
        again = evaluator.evaluate(program, rows)
    # Level 6, no demos: items 0-5 of every 8 are answered, all in a sentence.
    assert first.criteria_names == ["correct", "format"]
    assert first.criteria_means() == {"correct": 75.0, "format": 0.0}
    assert again.cache_hits == 8 and again.criteria_means() == first.criteria_means()
    assert again.rows[0].criteria == {"correct": 1.0, "format": 0.0}
    assert again.rows[0].feedback == "format: expected at most 1 word"
    assert again.rows[6].feedback == "correct: scored 0.00; format: expected at most 1 word"
    assert first.to_dict()["criteria"] == {"correct": 75.0, "format": 0.0}
    assert first.criteria_cis()["format"].mean == 0.0 and first.example_criteria[0] == {"correct": 1.0, "format": 0.0}


def test_a_metric_that_raises_is_still_a_metric_error() -> None:
    def broken(example, prediction, trace=None):
        raise RuntimeError("boom")

    metric = criteria(correct=exact_match, broken=broken)
    with dspy.context(lm=guard_world_lm(), adapter=PlainAdapter()):
        report = Evaluator(metric).evaluate(Transform(instructions=BASELINE_INSTRUCTION), dataset(3))
    assert report.errors[ErrorKind.METRIC.value] == 3 and not report.scored and report.criteria_means() == {}


# ---- the guard itself ------------------------------------------------------------------------------------


def test_deterministic_guard_is_paired_and_exact() -> None:
    guard = RegressionGuard({"format": 0.0, "correct": 10.0})
    ref = {k: {"format": 1.0, "correct": 0.0} for k in "abcd"}
    cand = {
        "a": {"format": 1.0, "correct": 1.0},
        "b": {"format": 0.0, "correct": 1.0},
        "c": {"format": 1.0, "correct": 1.0},
        "x": {"format": 0.0, "correct": 0.0},
    }
    verdict = guard.check(ref, cand)  # paired on a, b, c only: row x has no reference
    assert verdict.n == 3 and set(verdict.broken) == {"format"}
    assert verdict.broken["format"].drop == pytest.approx(100 / 3)
    assert verdict.to_log()["broken"]["format"]["tolerance"] == 0.0
    assert guard.check(ref, {k: {"format": 1.0, "correct": 0.0} for k in "abcd"}).ok
    # One row of ten lost: 10 points, within a tolerance of 10.
    same = {k: {"correct": 1.0} for k in "bcdefghij"}
    assert RegressionGuard({"correct": 10.0}).check({"a": {"correct": 1.0}} | same, {"a": {"correct": 0.0}} | same).ok


def test_stochastic_guard_does_not_take_noise_for_a_regression() -> None:
    guard = RegressionGuard({"format": 0.0}, stochastic=True)
    ref = {str(i): {"format": 0.6} for i in range(10)}
    noisy = {str(i): {"format": 0.6 + (0.1 if i % 2 else -0.15)} for i in range(10)}  # mean drop 2.5 points
    assert ref["0"]["format"] * 100 - noisy["0"]["format"] * 100 > 0
    verdict = guard.check(ref, noisy)
    assert verdict.ok and verdict.checks["format"].drop > 0 and verdict.checks["format"].p_value > 0.05
    real = {str(i): {"format": 0.2} for i in range(10)}
    broken = guard.check(ref, real)
    assert not broken.ok and broken.checks["format"].p_value < 0.01
    assert one_sided_sign_flip([0.1] * 40) < 0.001 and one_sided_sign_flip([-0.1, 0.1]) == 1.0


def test_guard_names_and_tolerances_are_checked() -> None:
    assert parse_guards(["format=0", "short=2"]) == {"format": 0.0, "short": 2.0}
    for bad, message in (
        (["format"], "expected CRITERION=POINTS"),
        (["a=1", "a=2"], "given twice"),
        ({"a": 101}, "outside 0-100"),
        ({"a": "x"}, "not a number of points"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_guards(bad)
    with pytest.raises(
        ValueError, match="guards name tone, which the metric does not return \\(criteria: correct, format, score\\)"
    ):
        build_optimizer("ape", guard_metric, guards={"tone": 0})


# ---- every dspy-ext optimizer --------------------------------------------------------------------------


def compile_world(name: str, *, guards: dict | None, seed: int = 0, budget: int = 360) -> tuple[dspy.Module, list]:
    lm = guard_world_lm()
    train, val = dataset(30), dataset(16, start=200)
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        handle = build_optimizer(name, guard_metric, budget=budget, seed=seed, num_threads=1, guards=guards)
        program = handle.compile(Transform(instructions=BASELINE_INSTRUCTION), trainset=train, valset=val)
    return program, val


def means_on(program: dspy.Module, rows: list) -> dict[str, float]:
    with dspy.context(lm=guard_world_lm(), adapter=PlainAdapter()):
        return Evaluator(guard_metric).evaluate(program, rows).criteria_means()


@pytest.mark.parametrize("name", OURS)
def test_a_candidate_that_breaks_a_guard_is_never_selected(name: str) -> None:
    student = means_on(Transform(instructions=BASELINE_INSTRUCTION), dataset(16, start=200))
    # Seed 2: every method finds a verbose (level >= 5) instruction.
    free, val = compile_world(name, guards=None, seed=2)
    # Unguarded, the optimizer adopts a verbose instruction: a higher objective, no format left.
    assert means_on(free, val)["format"] < student["format"]
    guarded, val = compile_world(name, guards={"format": 0.0}, seed=2)
    result = compile_record(guarded).search
    assert means_on(guarded, val)["format"] >= student["format"]
    rejected = [t for t in result.trials if t.get("guard") and not t["guard"]["ok"]]
    assert rejected and all("format" in t["guard"]["broken"] for t in rejected)
    assert all(t["guard"]["broken"]["format"]["drop"] > 0 for t in rejected)
    assert not any(t["key"] == result.best["key"] for t in rejected)
    report = result.guard_report
    assert report["criteria"]["format"]["broken"] is False and report["rejected"]["format"] >= 1
    assert report["criteria"]["format"]["reference"]["mean"] == student["format"]


@pytest.mark.parametrize(("name", "seed"), list(itertools.product(OURS, [1, 2])))
def test_at_tolerance_zero_no_guarded_criterion_falls_below_the_student_on_val(name: str, seed: int) -> None:
    student = means_on(Transform(instructions=BASELINE_INSTRUCTION), dataset(16, start=200))
    program, val = compile_world(name, guards={"format": 0.0, "correct": 0.0}, seed=seed, budget=240)
    compiled = means_on(program, val)
    assert all(compiled[c] >= student[c] for c in ("format", "correct")), (compiled, student)


def test_a_choice_that_cannot_be_checked_returns_the_reference() -> None:
    # A budget too small to check another choice on the whole valset: the reference comes back, which is the
    # student with its labeled demos (what a user has for free), never a choice that was not checked.
    program, val = compile_world("ape", guards={"format": 0.0}, budget=40)
    result = compile_record(program).search
    assert program.predict.signature.instructions == BASELINE_INSTRUCTION
    assert result.best["origin"] in ("student", "final:student") or result.guard_report["fallback"] is not None
    assert program.predict.demos  # the labeled demo set of the search's reference, not the zero-shot student
    student = means_on(Transform(instructions=BASELINE_INSTRUCTION), val)
    assert means_on(program, val)["format"] >= student["format"]


def test_a_student_with_its_own_demos_is_the_reference_as_given() -> None:
    # The same cut-short budget: the student comes back with its own demos, not with the search's demo set 0.
    own = dataset(3, start=500)
    student = Transform(instructions=BASELINE_INSTRUCTION)
    student.predict.demos = list(own)
    train, val = dataset(30), dataset(16, start=200)
    with dspy.context(lm=guard_world_lm(), adapter=PlainAdapter()):
        handle = build_optimizer("ape", guard_metric, budget=40, seed=0, num_threads=1, guards={"format": 0.0})
        program = handle.compile(student, trainset=train, valset=val)
    assert compile_record(program).search.guard_report["fallback"] is not None
    assert [d["input"] for d in program.predict.demos] == [d.input for d in own]
    assert program.predict.signature.instructions == BASELINE_INSTRUCTION


# ---- DSPy's optimizers, through the registry ---------------------------------------------------------------


def test_the_dspy_gate_returns_the_student_when_the_compiled_program_breaks_a_guard() -> None:
    student = Transform(instructions="Handle the request at level 5.")  # verbose already: demos raise correctness
    train, val = dataset(20), dataset(12, start=300)
    lm = guard_world_lm()
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        free = build_optimizer("labeled", guard_metric, config={"k": 3}).compile(student, trainset=train, valset=val)
        handle = build_optimizer("labeled", guard_metric, config={"k": 3}, guards={"correct": 0.0})
        assert handle.gate is not None
        gated = handle.compile(student, trainset=train, valset=val)
    # Demos raise correctness: the gate accepts; format is not guarded here.
    assert (
        gated.predict.demos
        and compile_record(gated).gate["accepted"]
        and compile_record(gated).gate["returned"] == "compiled"
    )
    assert free.predict.demos


def test_the_dspy_gate_picks_the_best_guarded_candidate_or_the_student() -> None:
    student = Transform(instructions=BASELINE_INSTRUCTION)
    verbose = Transform(instructions="Handle the request at level 8.")
    concise = Transform(instructions="Handle the request at level 4.")
    rows = dataset(12, start=400)
    gate = AcceptanceGate(guard_metric, {"format": 0.0}, num_threads=1)
    with dspy.context(lm=guard_world_lm(), adapter=PlainAdapter()):
        verbose.candidate_programs = [{"score": 0.9, "program": verbose}, {"score": 0.8, "program": concise}]
        chosen = gate.check(student, verbose, rows)
        assert chosen is concise and compile_record(chosen).gate["returned"] == "candidate 1 of the optimizer"
        assert compile_record(chosen).gate["compiled_verdict"]["broken"]["format"]["drop"] == 100.0
        lone = Transform(instructions="Handle the request at level 8.")
        back = gate.check(student, lone, rows)
    assert back is not student and back.predict.signature.instructions == BASELINE_INSTRUCTION
    assert compile_record(back).gate["returned"] == "student" and compile_record(student) is None


def test_bfsrs_and_mipro_behind_the_gate_keep_the_format() -> None:
    train, val = dataset(24), dataset(12, start=500)
    for name, config in (("bfsrs", {"num_candidate_programs": 3}), ("mipro", {"num_candidates": 3, "num_trials": 4})):
        with dspy.context(lm=guard_world_lm(), adapter=PlainAdapter()):
            program = build_optimizer(
                name,
                guard_metric,
                config=config,
                guards={"format": 0.0},
                num_threads=1,
                n_train=len(train),
                n_val=len(val),
            ).compile(Transform(instructions=BASELINE_INSTRUCTION), trainset=train, valset=val)
        assert means_on(program, val)["format"] == 100.0, name
        assert compile_record(program).gate["criteria"]["format"]["broken"] is False


# ---- repeats: stochastic failures --------------------------------------------------------------------------


def flaky_lm() -> dspy.LM:
    """Answers item i right on every other call when i is odd (a model that is right only sometimes)."""
    from support import fake_world

    counts: dict[str, int] = {}
    lock = threading.Lock()

    def respond(messages):
        last = messages[-1]["content"]
        with lock:
            counts[last] = counts.get(last, 0) + 1
            n = counts[last]
        task = fake_world._TASK.match(last.strip())
        if task and int(task.group(1)) % 2 == 1:
            return f"ITEM-{task.group(1)}" if n % 2 else "unknown"
        return fake_world.respond(messages)

    from dspy_ext.lm.fake import FakeEngine

    return dspy.LM(f"fake/flaky-{next(fake_world._ids)}", engine=FakeEngine(respond), cache=False)


def test_repeats_give_pass_rates_and_name_the_rows_that_pass_only_sometimes() -> None:
    program = Transform(instructions="Handle the request at level 8.")
    with dspy.context(lm=flaky_lm(), adapter=PlainAdapter()):
        report = Evaluator(exact_match).evaluate(program, dataset(6), repeats=4, temperature=0.7)
    assert report.pass_rates == [1.0, 0.5, 1.0, 0.5, 1.0, 0.5]
    assert report.flaky == [1, 3, 5] and report.to_dict()["flaky"] == [1, 3, 5]
    assert report.ci.mean == pytest.approx(75.0)


def test_compile_run_with_guards_and_repeats_writes_the_tables(tmp_path: Path) -> None:
    from dspy_ext.experiment import RunSettings, run
    from dspy_ext.export import export

    settings = RunSettings(
        data=str(write_task(tmp_path / "task", n_train=40, n_test=16)),
        metric="support.guard_world:guard_metric",
        optimizer="opro",
        budget=240,
        train=24,
        val=12,
        adapter="plain",
        threads=1,
        guards={"format": 0},
        out=str(tmp_path / "run"),
    )
    result = run(settings, lm=guard_world_lm())
    summary = json.loads((tmp_path / "run" / "run.json").read_text())
    assert set(summary["criteria"]) == {"correct", "format"}
    assert summary["criteria"]["format"]["compiled"] >= summary["criteria"]["format"]["student"]
    assert set(summary["val_criteria"]) == {"correct", "format"}
    report = summary["guard_report"]
    assert report["val"]["criteria"]["format"]["broken"] is False and report["test"]["kept"] is True
    assert "## Regression guards" in (tmp_path / "run" / "report.md").read_text()
    with dspy.context(lm=guard_world_lm(), adapter=PlainAdapter()):
        artifact = export(result.program, tmp_path / "a.json")
    assert artifact.metadata["guard_report"]["tolerances"] == {"format": 0.0}

    repeated = run(settings.with_changes(repeats=3, guards={}, out=str(tmp_path / "run3")), lm=guard_world_lm())
    assert repeated.summary.figures.repeats["k"] == 3 and repeated.test.repeats == 3


def test_cli_compile_with_guards_and_evaluate_with_repeats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dspy_ext.cli import main

    task = str(write_task(tmp_path / "task", n_train=40, n_test=12))
    argv = [
        "compile",
        "--data",
        task,
        "--metric",
        "support.guard_world:guard_metric",
        "--optimizer",
        "labeled",
        "--train",
        "16",
        "--val",
        "8",
        "--adapter",
        "plain",
        "--guard",
        "format=0",
        "--guard",
        "correct=5",
        "--out",
        str(tmp_path / "run"),
        "--json",
    ]
    capsys.readouterr()
    assert main(argv, lm=guard_world_lm()) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["criteria"]) == {"correct", "format"}
    assert summary["guard_report"]["tolerances"] == {"format": 0.0, "correct": 5.0}
    assert summary["guard_report"]["val"]["returned"] == "compiled"  # demos add correctness, keep the format
    assert main([*argv[:-1], "--restart"], lm=guard_world_lm()) == 0  # the same run again, as text
    out = capsys.readouterr().out
    assert "criterion" in out and "guards {'format': 0.0, 'correct': 5.0}: test kept" in out
    assert (
        main(["compile", "--data", task, "--guard", "format", "--out", str(tmp_path / "x")], lm=guard_world_lm()) == 2
    )
    assert "expected CRITERION=POINTS" in capsys.readouterr().err
    assert (
        main(
            [
                "evaluate",
                "--data",
                task,
                "--metric",
                "support.guard_world:guard_metric",
                "--adapter",
                "plain",
                "--repeats",
                "2",
                "--limit",
                "4",
                "--json",
            ],
            lm=guard_world_lm(),
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["criteria"] == {"correct": 0.0, "format": 100.0} and result["flaky_rows"] == []


# ---- on the embedded model ---------------------------------------------------------------------------------


@pytest.mark.embedded
def test_guarded_compile_on_the_embedded_model(local_lm: dspy.LM) -> None:
    from dspy_ext.data import load_task

    task = load_task("sentiment")
    train, val = task.train[:12], task.train[12:20]
    metric = criteria(correct=exact_match, format=one_of(["positive", "negative"]))
    student = Transform(instructions="Classify the sentiment of the review as positive or negative.")
    with dspy.context(lm=local_lm, adapter=PlainAdapter()):
        before = Evaluator(metric).evaluate(student, val).criteria_means()
        program = build_optimizer(
            "ape",
            metric,
            budget=60,
            seed=0,
            num_threads=1,
            guards={"format": 0.0},
            config={"num_candidates": 2, "steps": 0, "minibatch_size": 4},
        ).compile(student, trainset=train, valset=val)
        after = Evaluator(metric).evaluate(program, val).criteria_means()
    assert after["format"] >= before["format"]
    assert set(compile_record(program).search.guard_report["criteria"]) >= {"correct", "format"}
