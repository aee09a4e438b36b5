"""Applying an artifact back onto a program: round trips, all-or-nothing failures, the embedded model."""

from __future__ import annotations

import json
from pathlib import Path

import dspy
import pytest

from dspy_ext.adapters import PlainAdapter
from dspy_ext.data import load_task
from dspy_ext.export import (
    ApplyError,
    ArtifactError,
    apply,
    export,
    load,
    runtime_program,
)
from dspy_ext.export.apply import answer_rule
from dspy_ext.lm.answer_rule import AnswerMode, AnswerRule, answer_rule_lm, answer_rule_of
from dspy_ext.prompt_state import program_state
from dspy_ext.runtime import compute_hash, loads
from programs import ChainOfThoughtProgram, DraftThenAnswer, Transform

pytestmark = pytest.mark.filterwarnings("ignore:Passing OpenAI-style message:DeprecationWarning")

BASELINE = "Output whether the sentiment of the input sentence is positive or negative."


def _compiled_transform() -> Transform:
    program = Transform(instructions=BASELINE)
    predictor = program.predict
    predictor.signature = predictor.signature.with_instructions("Tuned {instruction} with {{braces}}.")
    predictor.signature = predictor.signature.with_updated_fields("output", prefix="Sentiment:", desc="pos/neg")
    predictor.demos = [
        dspy.Example(input="Great {fun}", output="positive", augmented=True),
        {"input": "Dull", "output": "negative"},
    ]
    return program


def _compiled_two_step() -> DraftThenAnswer:
    program = DraftThenAnswer(instructions=BASELINE)
    program.draft.signature = program.draft.signature.with_instructions("Draft {notes}.")
    program.draft.demos = [dspy.Example(input="x", notes="n {1}")]
    program.answer.demos = [dspy.Example(input="x", notes="n", output="positive")]
    return program


def _compiled_cot() -> ChainOfThoughtProgram:
    program = ChainOfThoughtProgram(instructions=BASELINE)
    program.cot.predict.signature = program.cot.predict.signature.with_instructions("Think {then} answer.")
    program.cot.predict.demos = [dspy.Example(input="x", reasoning="because", output="negative")]
    return program


CASES = {
    "transform": (_compiled_transform, lambda: Transform(instructions=BASELINE)),
    "two_step": (_compiled_two_step, lambda: DraftThenAnswer(instructions=BASELINE)),
    "cot": (_compiled_cot, lambda: ChainOfThoughtProgram(instructions=BASELINE)),
}


@pytest.mark.parametrize(
    "adapter", [dspy.ChatAdapter(), dspy.JSONAdapter(), PlainAdapter()], ids=["chat", "json", "plain"]
)
@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_restores_program_state(tmp_path: Path, case: str, adapter: dspy.Adapter) -> None:
    compiled_factory, fresh_factory = CASES[case]
    compiled = compiled_factory()
    export(compiled, tmp_path / "a.json", adapter=adapter)
    fresh = fresh_factory()
    assert program_state(fresh) != program_state(compiled)
    applied = apply(tmp_path / "a.json", fresh)
    assert applied is fresh
    assert program_state(applied) == program_state(compiled)


def test_apply_does_not_leak_into_other_instances(tmp_path: Path) -> None:
    export(_compiled_transform(), tmp_path / "a.json", adapter=PlainAdapter())
    first = Transform(instructions=BASELINE)
    untouched = first.deepcopy()
    apply(load(tmp_path / "a.json"), first)
    assert first.predict.signature.instructions.startswith("Tuned")
    assert untouched.predict.signature.instructions == BASELINE
    assert Transform(instructions=BASELINE).predict.signature.instructions == BASELINE


def _assert_untouched(program: dspy.Module, before: dict) -> None:
    assert program_state(program) == before


def test_mismatched_predictor_names_change_nothing(tmp_path: Path) -> None:
    export(_compiled_transform(), tmp_path / "a.json", adapter=PlainAdapter())
    program = DraftThenAnswer(instructions=BASELINE)
    before = program_state(program)
    with pytest.raises(ApplyError, match=r"predictors do not match.*lacks \['predict'\]"):
        apply(tmp_path / "a.json", program)
    _assert_untouched(program, before)


def test_mismatched_fields_change_nothing(tmp_path: Path) -> None:
    export(_compiled_transform(), tmp_path / "a.json", adapter=PlainAdapter())
    program = Transform(input_keys=("text",), instructions=BASELINE)
    before = program_state(program)
    with pytest.raises(ApplyError, match=r"predictor 'predict': the artifact's input fields are \['input'\]"):
        apply(tmp_path / "a.json", program)
    _assert_untouched(program, before)


def test_mismatch_in_a_later_predictor_leaves_earlier_ones_untouched(tmp_path: Path) -> None:
    export(_compiled_two_step(), tmp_path / "a.json", adapter=dspy.ChatAdapter())
    program = DraftThenAnswer(instructions=BASELINE)
    program.answer.signature = program.answer.signature.with_updated_fields("output", type_=list[str])
    before = program_state(program)
    with pytest.raises(
        ApplyError,
        match="predictor 'answer': output field 'output' is str in the artifact but "
        r"list\[str\] in the program",
    ):
        apply(tmp_path / "a.json", program)
    _assert_untouched(program, before)  # 'draft' was checked first but not changed


def test_prompt_that_renders_differently_changes_nothing(tmp_path: Path) -> None:
    plain = dspy.Predict(dspy.Signature({"q": (str, dspy.InputField()), "score": (float, dspy.OutputField())}))
    export(plain, tmp_path / "a.json", adapter=dspy.ChatAdapter())
    constrained = dspy.Predict(
        dspy.Signature({"q": (str, dspy.InputField()), "score": (float, dspy.OutputField(ge=0, le=1))})
    )
    before = program_state(constrained)
    with pytest.raises(ApplyError, match="renders a different prompt than the artifact stores"):
        apply(tmp_path / "a.json", constrained)
    _assert_untouched(constrained, before)


def test_invalid_file_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    export(_compiled_transform(), path, adapter=PlainAdapter())
    data = json.loads(path.read_text(encoding="utf-8"))
    data["predictors"]["predict"]["instructions"] = "Be evil."
    path.write_text(json.dumps(data), encoding="utf-8")
    program = Transform(instructions=BASELINE)
    before = program_state(program)
    with pytest.raises(ArtifactError, match="content hash mismatch"):
        apply(path, program)
    _assert_untouched(program, before)


def test_runtime_program_answers_like_the_program(tmp_path: Path, fake_lm) -> None:
    lm = fake_lm(lambda messages: "Sentiment: positive" if "fun" in messages[-1]["content"] else "negative")
    compiled = _compiled_transform()
    art = export(compiled, tmp_path / "a.json", adapter=PlainAdapter(), lm=lm)
    runtime_backed = runtime_program(compiled, load(art.path))
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        for text in ("so much fun", "boring"):
            assert dict(runtime_backed(input=text).items()) == dict(compiled(input=text).items())
    first, second, third, fourth = lm.engine.requests
    assert first == second and third == fourth  # same messages through the runtime and through DSPy


def test_apply_restores_a_calibrated_answer_rule(tmp_path: Path, fake_lm) -> None:
    # The fake model's free reply is "great!"; by likelihood "positive" wins unless the prior corrects it.
    scores = {"negative": -2.0, "positive": -1.0}
    lm = fake_lm(lambda messages: "great!", scorer=lambda messages, reply: scores.get(reply, -9.0))
    rule = AnswerRule(AnswerMode.CALIBRATED, "output", ("negative", "positive"), ("negative", "positive"), (0.1, 0.9))
    compiled = _compiled_transform()
    compiled.predict.lm = answer_rule_lm(rule)
    export(compiled, tmp_path / "a.json", adapter=PlainAdapter())
    fresh = apply(tmp_path / "a.json", Transform(instructions=BASELINE))
    assert answer_rule_of(fresh.predict) == rule
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        assert fresh(input="a film").output == compiled(input="a film").output == "negative"
    # A rule without reply texts (a program's own label_rules) is the runtime's alone: no LM is set.
    data = json.loads((tmp_path / "a.json").read_text())
    del data["predictors"]["predict"]["label_rule"]["replies"]
    data["content_hash"] = compute_hash(data)
    assert answer_rule(loads(json.dumps(data)), "predict") is None


# --- the embedded model (9 LM calls) -----------------------------------------------------------


@pytest.mark.embedded
def test_embedded_round_trip_gives_identical_predictions(tmp_path: Path, local_lm) -> None:
    lm = local_lm.copy(cache=False)
    task = load_task("sentiment")
    compiled = dspy.LabeledFewShot(k=3).compile(Transform(instructions=task.baseline_instruction), trainset=task.train)
    adapter = PlainAdapter()
    with dspy.context(lm=lm, adapter=adapter):
        export(compiled, tmp_path / "sentiment.json", metadata={"optimizer": "LabeledFewShot", "seed": 0})
    fresh = apply(tmp_path / "sentiment.json", Transform(instructions=task.baseline_instruction))
    assert program_state(fresh) == program_state(compiled)
    rows = task.test[:3]
    runtime_backed = runtime_program(fresh, load(tmp_path / "sentiment.json"))
    with dspy.context(lm=lm, adapter=adapter):
        original = [compiled(**row.inputs()).output for row in rows]
        restored = [fresh(**row.inputs()).output for row in rows]
        through_runtime = [runtime_backed(**row.inputs()).output for row in rows]
    assert all(original)
    assert restored == original
    assert through_runtime == original
