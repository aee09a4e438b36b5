"""The answer rule (constrained, calibrated) kept in DSPy's own program state.

The rule rides on the predictor's own LM (``Predict.lm``, an ``AnswerRuleEngine``), which
``Predict.dump_state`` writes into ``program.json``: a process with DSPy, the task LM's engine and the
adapter, and none of dspy-ext's compile code, loads it and answers by the same rule.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import dspy
import pytest

from dspy_ext.adapters import PlainAdapter
from dspy_ext.lm import CallMeter, metering
from dspy_ext.lm.answer_rule import AnswerMode, AnswerRule, AnswerRuleEngine, answer_rule_lm, answer_rule_of
from dspy_ext.prompt_state import program_fingerprint
from dspy_ext.search.answers import answer_targets, answer_variant
from dspy_ext.search.candidate import Candidate, PredictorPrompt

LABELS = ("negative", "positive")
WORKTREE = Path(__file__).resolve().parents[1]


def constrained_rule(prior: tuple[float, ...] | None = None) -> AnswerRule:
    mode = AnswerMode.CALIBRATED if prior else AnswerMode.CONSTRAINED
    return AnswerRule(mode, "output", LABELS, LABELS, prior)


def test_the_rule_round_trips_through_predict_state_and_changes_the_fingerprint(fake_lm):
    # The fake model's free reply is "great!"; by likelihood "positive" wins unless calibrated away.
    scores = {"negative": -2.0, "positive": -1.0}
    lm = fake_lm(lambda messages: "great!", scorer=lambda messages, reply: scores.get(reply, -9.0))
    predictor = dspy.Predict("input -> output")
    free_fingerprint = program_fingerprint(predictor)
    predictor.lm = answer_rule_lm(constrained_rule())
    assert program_fingerprint(predictor) != free_fingerprint
    state = json.loads(json.dumps(predictor.dump_state()))
    assert state["lm"]["engine"]["state"]["answer_rule"]["labels"] == list(LABELS)  # visible in program.json
    loaded = dspy.Predict("input -> output")
    loaded.load_state(state, allow_unsafe_lm_state=True)
    assert answer_rule_of(loaded) == constrained_rule()
    meter = CallMeter()
    with dspy.context(lm=lm, adapter=PlainAdapter()), metering(meter):
        assert loaded(input="a film").output == "positive"
    assert meter.calls == 1 and lm.engine.calls == 0  # one forward pass, nothing generated
    # Calibrated: a prompt that favours "positive" on content-free inputs is corrected.
    loaded.lm = answer_rule_lm(constrained_rule(prior=(0.1, 0.9)))
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        assert loaded(input="a film").output == "negative"


def test_bad_rules_and_a_missing_task_lm_fail_clearly(fake_lm):
    with pytest.raises(ValueError, match="at least 2 distinct labels"):
        AnswerRule(AnswerMode.CONSTRAINED, "output", ("a",), ("a",))
    with pytest.raises(ValueError, match="needs a prior"):
        AnswerRule(AnswerMode.CALIBRATED, "output", LABELS, LABELS)
    with pytest.raises(ValueError, match="lacks"):
        AnswerRuleEngine.load_state({"answer_rule": {"mode": "constrained"}})
    predictor = dspy.Predict("input -> output")
    predictor.lm = answer_rule_lm(constrained_rule())
    with pytest.raises(Exception, match="task LM configured around it"), dspy.context(adapter=PlainAdapter()):
        predictor(input="a film")


def test_every_predictor_with_a_closed_label_set_gets_its_own_rule(fake_lm):
    class TwoSteps(dspy.Module):
        def __init__(self):
            super().__init__()
            self.topic = dspy.Predict("input -> topic")
            self.summary = dspy.Predict("input, topic -> output")

        def forward(self, input):
            return self.summary(input=input, topic=self.topic(input=input).topic)

    rows = [
        dspy.Example(input=f"r{i}", topic=["film", "food"][i % 2], output=LABELS[i % 2 == 0]).with_inputs("input")
        for i in range(20)
    ]
    targets = answer_targets(TwoSteps(), rows)
    assert {n: t.labels for n, t in targets.items()} == {"topic": ("film", "food"), "summary": LABELS}
    lm = fake_lm(
        lambda messages: "food", scorer=lambda messages, reply: -1.0 if reply in ("food", "positive") else -3.0
    )
    candidate = Candidate.from_program(TwoSteps())
    variant = answer_variant(candidate, TwoSteps(), targets, AnswerMode.CALIBRATED, lm=lm, adapter=PlainAdapter())
    assert variant.answers == {"topic": "calibrated", "summary": "calibrated"}
    program = variant.apply(TwoSteps())
    rules = {name: answer_rule_of(p) for name, p in program.named_predictors()}
    assert rules["topic"].labels == ("film", "food") and rules["summary"].prior is not None
    assert len(lm.engine.score_requests) == 6  # three content-free inputs per predictor


_FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import dspy
    from dspy_ext.adapters import PlainAdapter
    from dspy_ext.lm.llama import LlamaCppEngine

    path, rows = sys.argv[1], json.loads(sys.argv[2])
    program = dspy.Predict(dspy.Signature("input -> output", "placeholder"))
    program.load(path, allow_unsafe_lm_state=True)
    engine = LlamaCppEngine()
    dspy.configure(lm=dspy.LM(engine.model_id, engine=engine, temperature=0.0, cache=False), adapter=PlainAdapter())
    outputs = [program(input=row).output for row in rows]
    compile_code = sorted(
        m for m in sys.modules
        if m.split(".")[:2] in (["dspy_ext", p] for p in ("search", "optimizers", "evaluation", "experiment", "registry"))
    )
    print(json.dumps({"outputs": outputs, "compile_code": compile_code}))
    """
)


_FRESH_FAKE_PROCESS = textwrap.dedent(
    """
    import json, sys
    import dspy
    from dspy_ext.adapters import PlainAdapter
    from support.biased_world import biased_lm

    path, rows = sys.argv[1], json.loads(sys.argv[2])
    program = dspy.Predict(dspy.Signature("input -> output", "placeholder"))
    program.load(path, allow_unsafe_lm_state=True)
    dspy.configure(lm=biased_lm(), adapter=PlainAdapter())
    outputs = [program(input=row).output for row in rows]
    compile_code = sorted(
        m for m in sys.modules
        if m.split(".")[:2] in (["dspy_ext", p] for p in ("search", "optimizers", "evaluation", "experiment", "registry"))
    )
    print(json.dumps({"outputs": outputs, "compile_code": compile_code}))
    """
)


def test_a_demo_search_compile_that_chose_calibration_answers_the_same_in_a_fresh_process(tmp_path):
    from dspy_ext.optimizers import DemoSearch
    from dspy_ext.prompt_state import compile_record

    from support.biased_world import biased_lm, review

    student = dspy.Predict(dspy.Signature("input -> output", "Say positive or negative."))
    train, val, test = [review(i) for i in range(40)], [review(i) for i in range(100, 130)], range(200, 220)
    lm = biased_lm("fake/biased-compile")
    exact = lambda example, prediction, trace=None: float(prediction.output == example.output)
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        program = DemoSearch(exact, max_lm_calls=400, seed=0, num_threads=1).compile(
            student, trainset=train, valset=val
        )
        expected = [program(input=review(i).input).output for i in test]
    result = compile_record(program).search
    assert result.answers == {"self": "calibrated"} and result.calibration == "contextual"
    assert expected == [review(i).output for i in test]  # calibrated: every row right
    path = tmp_path / "program.json"
    program.save(str(path))
    saved = json.loads(path.read_text())["lm"]["engine"]["state"]["answer_rule"]
    assert saved["mode"] == "calibrated" and saved["prior"][1] > saved["prior"][0]  # the prompt leans positive
    done = subprocess.run(
        [sys.executable, "-c", _FRESH_FAKE_PROCESS, str(path), json.dumps([review(i).input for i in test])],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": f"{WORKTREE}:{WORKTREE / 'tests'}", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    fresh = json.loads(done.stdout.strip().splitlines()[-1])
    assert fresh["compile_code"] == []
    assert fresh["outputs"] == expected


@pytest.mark.embedded
def test_embedded_calibrated_program_answers_the_same_after_load_in_a_fresh_process(local_lm, tmp_path):
    from dspy_ext.data import load_task, split_train_val

    task = load_task("sentiment")
    train, test = split_train_val(task.train, 24, 20, seed=0)
    student = dspy.Predict(dspy.Signature("input -> output", task.instructions[0]))
    candidate = Candidate({"self": PredictorPrompt(task.instructions[0], 0, tuple(d.toDict() for d in train[:4]))})
    targets = answer_targets(student, train)
    with dspy.context(lm=local_lm, adapter=PlainAdapter()):
        variant = answer_variant(
            candidate, student, targets, AnswerMode.CALIBRATED, lm=local_lm, adapter=PlainAdapter()
        )
        program = variant.apply(student)
        expected = [program(input=row.input).output for row in test]
    assert set(expected) <= set(targets["self"].labels)
    path = tmp_path / "program.json"
    program.save(str(path))
    saved = json.loads(path.read_text())["lm"]["engine"]["state"]["answer_rule"]
    assert saved["mode"] == "calibrated" and len(saved["prior"]) == len(saved["labels"])
    done = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, str(path), json.dumps([row.input for row in test])],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(WORKTREE), "PATH": "/usr/bin:/bin", "DSPY_CACHEDIR": str(tmp_path / "cache")},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    fresh = json.loads(done.stdout.strip().splitlines()[-1])
    assert fresh["compile_code"] == []
    assert fresh["outputs"] == expected


@pytest.mark.embedded
def test_embedded_export_of_a_calibrated_program_has_runtime_parity_on_100_rows(local_lm, tmp_path, capsys):
    from dspy_ext.cli import main
    from dspy_ext.data import load_task
    from dspy_ext.export import load
    from programs import Transform

    task = load_task("sentiment")
    student = Transform(instructions=task.baseline_instruction)
    demos = tuple(d.toDict() for d in task.train[:3])
    candidate = Candidate({"predict": PredictorPrompt(task.baseline_instruction, 0, demos)})
    targets = answer_targets(student, task.train)
    variant = answer_variant(candidate, student, targets, AnswerMode.CALIBRATED, lm=local_lm, adapter=PlainAdapter())
    state = tmp_path / "program.json"
    variant.apply(student).save(str(state))
    out = tmp_path / "sentiment.prompt.json"
    argv = [str(state), "--out", str(out), "--task", "sentiment", "--lm", "local", "--no-cache"]
    code = main(["export", *argv, "--verify", "--limit", "100", "--json", "--threads", "1"])
    result = json.loads([line for line in capsys.readouterr().out.splitlines() if line.strip()][-1])
    assert code == 0, result
    assert result["n"] == 100 and result["passed"] and result["rows_differing"] == 0
    rule = load(out).label_rule("predict")
    assert rule["labels"] == list(targets["predict"].labels) and len(rule["prior"]) == len(rule["labels"])
    assert rule["replies"] and load(out).predictor("predict")["lm"] is None
