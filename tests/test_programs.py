"""Tests for the ``programs`` package (no real LM: ``DummyLM`` with ChatAdapter)."""

from __future__ import annotations

from pathlib import Path

import dspy
import pytest
from dspy.utils import DummyLM

from programs import (
    DEFAULT_INSTRUCTIONS,
    PROGRAMS,
    ChainOfThoughtProgram,
    Classify,
    DraftThenAnswer,
    Transform,
    build_program,
    match_label,
)


def run(program: dspy.Module, answers: list[dict[str, str]], **inputs: str) -> tuple[dspy.Prediction, DummyLM]:
    """Call ``program`` with scripted LM answers; return the prediction and the LM."""
    lm = DummyLM(answers)
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        prediction = program(**inputs)
    return prediction, lm


def predictor_names(program: dspy.Module) -> list[str]:
    return [name for name, _ in program.named_predictors()]


def system_prompt(lm: DummyLM, call: int = 0) -> str:
    return lm.history[call]["messages"][0]["content"]


# --- construction -------------------------------------------------------------


def test_transform_fields_and_predictor() -> None:
    program = Transform(("word", "hint"), ("plural",), "Write the plural.")
    assert predictor_names(program) == ["predict"]
    signature = program.predict.signature
    assert list(signature.input_fields) == ["word", "hint"]
    assert list(signature.output_fields) == ["plural"]
    assert signature.instructions == "Write the plural."


def test_default_instructions_and_string_keys() -> None:
    program = Transform("question", "answer")
    assert list(program.predict.signature.input_fields) == ["question"]
    assert program.predict.signature.instructions == DEFAULT_INSTRUCTIONS


def test_classify_output_desc_lists_labels() -> None:
    program = Classify(["positive", "negative"], instructions="Sentiment?")
    assert predictor_names(program) == ["predict"]
    field = program.predict.signature.output_fields["output"]
    assert field.json_schema_extra["desc"] == "one of: positive, negative"


def test_draft_then_answer_predictors_and_fields() -> None:
    program = DraftThenAnswer(("input",), ("output",), "Write the plural.")
    assert predictor_names(program) == ["draft", "answer"]
    draft, answer = program.draft.signature, program.answer.signature
    assert list(draft.input_fields) == ["input"]
    assert list(draft.output_fields) == ["notes"]
    assert "Write the plural." in draft.instructions
    assert "short notes" in draft.instructions
    assert list(answer.input_fields) == ["input", "notes"]
    assert list(answer.output_fields) == ["output"]
    assert answer.instructions == "Write the plural."


def test_chain_of_thought_program_fields() -> None:
    program = ChainOfThoughtProgram(("question",), ("answer",), "Answer it.")
    assert predictor_names(program) == ["cot.predict"]
    signature = program.cot.predict.signature
    assert list(signature.output_fields) == ["reasoning", "answer"]
    assert signature.instructions == "Answer it."


@pytest.mark.parametrize("cls", [Transform, DraftThenAnswer, ChainOfThoughtProgram])
def test_instances_do_not_share_signatures(cls: type[dspy.Module]) -> None:
    first = cls(instructions="First task.")
    before = {name: (p.signature, p.signature.instructions) for name, p in first.named_predictors()}
    second = cls(instructions="Second task.")
    for name, predictor in second.named_predictors():
        old_signature, old_instructions = before[name]
        assert predictor.signature is not old_signature
        # Building the second instance left the first one's prompt alone.
        assert dict(first.named_predictors())[name].signature.instructions == old_instructions
    assert "First task." in first.named_predictors()[0][1].signature.instructions
    assert "Second task." in second.named_predictors()[0][1].signature.instructions


def test_changing_one_instance_leaves_another_alone() -> None:
    first = Transform(instructions="Original.")
    second = Transform(instructions="Original.")
    # How optimizers set a new instruction: swap in a new signature class.
    first.predict.signature = first.predict.signature.with_instructions("Changed.")
    assert first.predict.signature.instructions == "Changed."
    assert second.predict.signature.instructions == "Original."


def test_classify_instances_keep_their_own_labels() -> None:
    first = Classify(["yes", "no"])
    second = Classify(["red", "green", "blue"])
    assert first.predict.signature.output_fields["output"].json_schema_extra["desc"] == "one of: yes, no"
    assert second.predict.signature.output_fields["output"].json_schema_extra["desc"] == "one of: red, green, blue"


def test_deepcopy_is_independent() -> None:
    program = DraftThenAnswer(instructions="Task.")
    clone = program.deepcopy()
    clone.answer.signature = clone.answer.signature.with_instructions("Other.")
    assert program.answer.signature.instructions == "Task."


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_keys": ()}, "at least one"),
        ({"input_keys": ("a", "a")}, "duplicate"),
        ({"input_keys": ("not valid",)}, "not a valid field name"),
        ({"input_keys": ("x",), "output_keys": ("x",)}, "both inputs and outputs"),
    ],
)
def test_bad_field_names(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Transform(**kwargs)


def test_reserved_names() -> None:
    with pytest.raises(ValueError, match="notes"):
        DraftThenAnswer(input_keys=("notes",))
    with pytest.raises(ValueError, match="reasoning"):
        ChainOfThoughtProgram(output_keys=("reasoning",))


def test_bad_labels() -> None:
    with pytest.raises(ValueError):
        Classify([])
    with pytest.raises(ValueError, match="unique"):
        Classify(["Yes", "yes"])
    with pytest.raises(ValueError, match="single string"):
        Classify("positive")


# --- end to end with DummyLM ------------------------------------------------


def test_transform_forward() -> None:
    program = Transform(("word",), ("plural",), "Write the plural of the word.")
    prediction, lm = run(program, [{"plural": "cats"}], word="cat")
    assert prediction.plural == "cats"
    assert len(lm.history) == 1
    assert "Write the plural of the word." in system_prompt(lm)
    assert "cat" in lm.history[0]["messages"][-1]["content"]


def test_draft_then_answer_forward_passes_notes() -> None:
    program = DraftThenAnswer(instructions="Write the plural.")
    prediction, lm = run(program, [{"notes": "regular noun, add s"}, {"output": "dogs"}], input="dog")
    assert prediction.output == "dogs"
    assert prediction.notes == "regular noun, add s"
    assert len(lm.history) == 2
    assert "short notes" in system_prompt(lm, 0)
    # The answer step sees the draft's notes as an input.
    assert "regular noun, add s" in lm.history[1]["messages"][-1]["content"]


def test_chain_of_thought_forward() -> None:
    program = ChainOfThoughtProgram(instructions="Which animal is larger?")
    prediction, _ = run(program, [{"reasoning": "Whales are huge.", "output": "whale"}], input="ant, whale")
    assert prediction.output == "whale"
    assert prediction.reasoning == "Whales are huge."


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("positive", "positive"),
        ("NEGATIVE", "negative"),
        ('"Positive."', "positive"),
        ("Negative, because the plot is weak", "negative"),
        ("The sentiment is positive", "positive"),
        ("neg", "negative"),
        ("unsure", "unsure"),  # no label matches: left unchanged for the metric to count
    ],
)
def test_classify_maps_output_to_label(raw: str, expected: str) -> None:
    program = Classify(["positive", "negative"], instructions="Sentiment?")
    prediction, _ = run(program, [{"output": raw}], input="Great film.")
    assert prediction.output == expected


def test_classify_custom_output_key() -> None:
    program = Classify(["Yes", "No"], input_keys=("question",), output_key="verdict")
    prediction, _ = run(program, [{"verdict": "yes."}], question="Is water wet?")
    assert prediction.verdict == "Yes"


def test_match_label_rules() -> None:
    labels = ["positive", "very positive", "negative"]
    assert match_label("Very positive!", labels) == "very positive"  # longest prefix wins
    assert match_label("I'd say negative, not positive", labels) == "negative"  # earliest wins
    assert match_label("p", ["positive", "pending"]) is None  # ambiguous prefix
    assert match_label("", labels) is None
    assert match_label(None, labels) is None


# --- registry ----------------------------------------------------------------


def test_registry_keys() -> None:
    assert {
        "transform": Transform,
        "classify": Classify,
        "two_step": DraftThenAnswer,
        "cot": ChainOfThoughtProgram,
    } == PROGRAMS


@pytest.mark.parametrize("name", ["transform", "two_step", "cot"])
def test_build_program(name: str) -> None:
    program = build_program(name, input_keys=("q",), output_keys=("a",), instructions="Do it.")
    assert isinstance(program, PROGRAMS[name])
    assert program.input_keys == ("q",)
    assert program.output_keys == ("a",)


def test_build_classify() -> None:
    program = build_program(
        "classify", input_keys=("input",), output_keys=("output",), instructions="Pick.", labels=["a", "b"]
    )
    assert isinstance(program, Classify)
    assert program.labels == ["a", "b"]
    assert program.predict.signature.instructions == "Pick."


def test_build_program_errors() -> None:
    with pytest.raises(ValueError) as info:
        build_program("react", input_keys=("input",), output_keys=("output",), instructions="x")
    for name in PROGRAMS:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="labels"):
        build_program("classify", input_keys=("input",), output_keys=("output",), instructions="x")
    with pytest.raises(ValueError, match="exactly one output"):
        build_program("classify", input_keys=("input",), output_keys=("a", "b"), instructions="x", labels=["y"])
    with pytest.raises(ValueError, match="only used by"):
        build_program("transform", input_keys=("input",), output_keys=("output",), instructions="x", labels=["y"])


@pytest.mark.parametrize(
    ("name", "answers"),
    [
        ("transform", [{"output": "cats"}, {"output": "dog"}]),
        ("two_step", [{"notes": "add s"}, {"output": "cats"}, {"notes": "add s"}, {"output": "dog"}]),
        ("cot", [{"reasoning": "r", "output": "cats"}, {"reasoning": "r", "output": "dog"}]),
    ],
)
def test_programs_run_under_evaluate(name: str, answers: list[dict[str, str]]) -> None:
    from metrics import exact_match

    program = build_program(name, input_keys=("input",), output_keys=("output",), instructions="Plural.")
    devset = [
        dspy.Example(input="cat", output="cats").with_inputs("input"),
        dspy.Example(input="dog", output="dogs").with_inputs("input"),
    ]
    evaluate = dspy.Evaluate(devset=devset, metric=exact_match, num_threads=1, display_progress=False)
    with dspy.context(lm=DummyLM(answers), adapter=dspy.ChatAdapter()):
        result = evaluate(program)
    assert result.score == pytest.approx(50.0)


@pytest.mark.parametrize("name", ["transform", "two_step", "cot"])
def test_save_and_load_restores_changed_instructions(name: str, tmp_path: Path) -> None:
    program = build_program(name, input_keys=("input",), output_keys=("output",), instructions="Original.")
    for _, predictor in program.named_predictors():
        predictor.signature = predictor.signature.with_instructions("Optimized.")
    path = tmp_path / "program.json"
    program.save(str(path))
    fresh = build_program(name, input_keys=("input",), output_keys=("output",), instructions="Original.")
    fresh.load(str(path))
    assert [p.signature.instructions for _, p in fresh.named_predictors()] == ["Optimized."] * len(
        fresh.named_predictors()
    )
