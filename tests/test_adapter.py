"""Tests for ``dspy_ext.adapters``: PlainAdapter rendering and parsing, adapter selection."""

from __future__ import annotations

from typing import Literal

import dspy
import pytest
from dspy.adapters.utils import format_field_value
from dspy.utils.exceptions import AdapterParseError

from dspy_ext.adapters import ADAPTERS, PlainAdapter, default_adapter, field_prefix, make_adapter
from dspy_ext.data import load_task
from dspy_ext.evaluation import Evaluator
from metrics import exact_match
from programs import DraftThenAnswer
from programs.two_step import DRAFT_INSTRUCTIONS


class Sentiment(dspy.Signature):
    """Classify the sentiment of the review."""

    review: str = dspy.InputField()
    sentiment: str = dspy.OutputField()


class Rate(dspy.Signature):
    """Rate the items for the topic."""

    items: list[str] = dspy.InputField()
    topic: str = dspy.InputField(desc="what the items are about")
    label: Literal["Yes", "No"] = dspy.OutputField()
    score: int = dspy.OutputField()


COT = dspy.ChainOfThought("question -> answer").predict.signature  # reasoning, answer


def roles(messages: list[dict[str, str]]) -> list[str]:
    return [m["role"] for m in messages]


# --- rendering --------------------------------------------------------------------


def test_system_is_the_instruction_and_user_is_input_lines() -> None:
    messages = PlainAdapter().format(Sentiment, [], {"review": "Great fun."})
    assert messages == [
        {"role": "system", "content": "Classify the sentiment of the review."},
        {"role": "user", "content": "Review: Great fun."},
    ]


def test_default_input_field_prefix_is_input() -> None:
    signature = dspy.Signature("input -> output", "Do the task.")
    messages = PlainAdapter().format(signature, [], {"input": "cats"})
    assert messages[-1] == {"role": "user", "content": "Input: cats"}
    assert field_prefix(signature, "input") == "Input:"


def test_format_hint_adds_one_system_line() -> None:
    messages = PlainAdapter(format_hint=True).format(Sentiment, [], {"review": "x"})
    assert messages[0]["content"] == "Classify the sentiment of the review.\nReply with the sentiment only."


def test_demos_become_user_assistant_turns_in_order() -> None:
    demos = [
        dspy.Example(review="Loved it.", sentiment="positive"),
        {"review": "Boring.", "sentiment": "negative"},
    ]
    messages = PlainAdapter().format(Sentiment, demos, {"review": "Fine film."})
    assert roles(messages) == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in messages[1:]] == [
        "Review: Loved it.",
        "positive",
        "Review: Boring.",
        "negative",
        "Review: Fine film.",
    ]


def test_several_fields_and_list_values() -> None:
    demo = dspy.Example(items=["a", "b"], topic="letters", label="Yes", score=3)
    inputs = {"items": ["x", "y z"], "topic": "words"}
    messages = PlainAdapter().format(Rate, [demo], inputs)
    assert messages[0]["content"] == (
        "Rate the items for the topic.\nReply with one line per field: 'Label: ...', then 'Score: ...'."
    )
    # Values are rendered exactly as DSPy renders them (a list becomes JSON).
    items = format_field_value(Rate.input_fields["items"], ["x", "y z"])
    assert items == '["x", "y z"]'
    assert messages[1]["content"] == 'Items: ["a", "b"]\nTopic: letters'
    assert messages[2]["content"] == "Label: Yes\nScore: 3"
    assert messages[3]["content"] == f"Items: {items}\nTopic: words"
    # Field descriptions are not rendered: the prompt stays short for small models.
    assert all("what the items are about" not in m["content"] for m in messages)


def test_none_inputs_are_left_out() -> None:
    signature = dspy.Signature("question, context -> answer", "Answer.")
    messages = PlainAdapter().format(signature, [], {"question": "Why?", "context": None})
    assert messages[-1]["content"] == "Question: Why?"


def test_custom_prefix_is_used_with_a_colon() -> None:
    custom = Sentiment.with_updated_fields("review", prefix="Source text").with_updated_fields(
        "sentiment", prefix="Verdict:"
    )
    assert field_prefix(custom, "review") == "Source text:"
    assert field_prefix(custom, "sentiment") == "Verdict:"
    assert PlainAdapter().format(custom, [], {"review": "cat"})[-1]["content"] == "Source text: cat"
    assert PlainAdapter().parse(custom, "Verdict: good") == {"sentiment": "good"}


# --- parsing: one output field ----------------------------------------------------

SINGLE = dspy.Signature("input -> output")


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("positive", "positive"),
        ("Output: positive", "positive"),  # echoed prefix stripped
        ("output : positive", "positive"),
        ("**Output:** positive", "positive"),  # markdown decoration
        ("Answer: positive", "positive"),  # the generic answer label
        ("Output:\npositive", "positive"),  # label alone, value on the next line
        ("positive\nThe review praises the film.", "positive"),  # first line only
        ("\n\n  positive  \n", "positive"),
        ("```\npositive\n```", "positive"),  # code fence
        ("```text\npositive\n```", "positive"),
        ("output: a: b", "a: b"),  # only the first label is removed
        ("Outputs differ", "Outputs differ"),  # a word that starts like the label is kept
    ],
)
def test_parse_single_field(reply: str, expected: str) -> None:
    assert PlainAdapter().parse(SINGLE, reply) == {"output": expected}


def test_parse_single_uses_the_field_name_as_label() -> None:
    assert PlainAdapter().parse(Sentiment, "Sentiment: negative") == {"sentiment": "negative"}


@pytest.mark.parametrize("reply", ["", "   \n \n", "```\n```"])
def test_parse_empty_reply_raises(reply: str) -> None:
    with pytest.raises(AdapterParseError, match="empty"):
        PlainAdapter().parse(SINGLE, reply)


def test_literal_is_case_insensitive() -> None:
    class Label(dspy.Signature):
        """Classify."""

        input: str = dspy.InputField()
        output: Literal["positive", "negative"] = dspy.OutputField()

    adapter = PlainAdapter()
    assert adapter.parse(Label, "NEGATIVE.") == {"output": "negative"}
    assert adapter.parse(Label, "Output: 'Positive'") == {"output": "positive"}
    assert adapter.parse(Rate, "label: no\nscore: 4") == {"label": "No", "score": 4}


def test_typed_single_output_is_coerced() -> None:
    signature = dspy.Signature("input -> count: int")
    assert PlainAdapter().parse(signature, "Count: 12") == {"count": 12}


def test_literal_outside_the_options_raises_parse_error() -> None:
    class Label(dspy.Signature):
        """Classify."""

        input: str = dspy.InputField()
        output: Literal["positive", "negative"] = dspy.OutputField()

    with pytest.raises(AdapterParseError, match="output"):
        PlainAdapter().parse(Label, "maybe")


# --- parsing: several output fields -----------------------------------------------


def test_parse_multi_field_with_labels() -> None:
    adapter = PlainAdapter()
    assert adapter.parse(Rate, "Label: Yes\nScore: 7") == {"label": "Yes", "score": 7}
    assert adapter.parse(COT, "Reasoning: it rains\nso it is wet\nAnswer: wet") == {
        "reasoning": "it rains\nso it is wet",
        "answer": "wet",
    }
    # Labels may come in any order and with decoration.
    assert adapter.parse(COT, "**Answer:** 4\n**Reasoning:** 2+2") == {"reasoning": "2+2", "answer": "4"}


def test_missing_last_label_falls_back_to_last_line() -> None:
    parsed = PlainAdapter().parse(COT, "Reasoning: two plus two\nmakes four, so\n4")
    assert parsed == {"reasoning": "two plus two\nmakes four, so", "answer": "4"}


def test_missing_first_label_takes_the_preamble() -> None:
    parsed = PlainAdapter().parse(COT, "I add the numbers.\nAnswer: 4")
    assert parsed == {"reasoning": "I add the numbers.", "answer": "4"}


@pytest.mark.parametrize(
    "reply",
    [
        "Answer: 4",  # no reasoning at all
        "Reasoning: only one line",  # no answer and no line to fall back on
        "just some text\nwithout labels",
    ],
)
def test_missing_fields_raise_parse_error(reply: str) -> None:
    with pytest.raises(AdapterParseError, match="Missing output field"):
        PlainAdapter().parse(COT, reply)


def test_unparseable_typed_field_raises_parse_error() -> None:
    with pytest.raises(AdapterParseError, match="score"):
        PlainAdapter().parse(Rate, "Label: Yes\nScore: many")


# --- programs run unchanged with the adapter ---------------------------------------


def test_predict_runs_with_plain_adapter(fake_lm) -> None:
    lm = fake_lm(lambda messages: "Sentiment: positive")
    predict = dspy.Predict(Sentiment)
    predict.demos = [dspy.Example(review="Dull.", sentiment="negative")]
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        prediction = predict(review="A joy.")
    assert prediction.sentiment == "positive"
    assert lm.engine.requests == [
        [
            {"role": "system", "content": "Classify the sentiment of the review."},
            {"role": "user", "content": "Review: Dull."},
            {"role": "assistant", "content": "negative"},
            {"role": "user", "content": "Review: A joy."},
        ]
    ]


def test_chain_of_thought_runs_with_plain_adapter(fake_lm) -> None:
    lm = fake_lm(lambda messages: "Reasoning: 6 times 7.\nAnswer: 42")
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        prediction = dspy.ChainOfThought("question -> answer")(question="What is 6*7?")
    assert (prediction.reasoning, prediction.answer) == ("6 times 7.", "42")
    (messages,) = lm.engine.requests
    assert "Reply with one line per field: 'Reasoning: ...', then 'Answer: ...'." in messages[0]["content"]
    assert messages[-1] == {"role": "user", "content": "Question: What is 6*7?"}


def test_two_predictor_program_runs_with_plain_adapter(fake_lm) -> None:
    def responder(messages: list[dict[str, str]]) -> str:
        return "the review is upbeat" if DRAFT_INSTRUCTIONS in messages[0]["content"] else "positive"

    lm = fake_lm(responder)
    program = DraftThenAnswer(instructions="Say if the review is positive or negative.")
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        prediction = program(input="Loved every minute.")
    assert (prediction.output, prediction.notes) == ("positive", "the review is upbeat")
    draft, answer = lm.engine.requests
    assert draft[-1] == {"role": "user", "content": "Input: Loved every minute."}
    assert answer[0] == {"role": "system", "content": "Say if the review is positive or negative."}
    assert answer[-1] == {"role": "user", "content": "Input: Loved every minute.\nNotes: the review is upbeat"}


# --- selection ----------------------------------------------------------------------


def test_make_adapter_by_name() -> None:
    assert type(make_adapter("plain")) is PlainAdapter
    assert type(make_adapter("chat")) is dspy.ChatAdapter
    assert type(make_adapter("json")) is dspy.JSONAdapter
    assert set(ADAPTERS) == {"plain", "chat", "json"}


def test_make_adapter_unknown_name_lists_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown adapter 'xml'.*\['chat', 'json', 'plain'\]"):
        make_adapter("xml")


def test_default_adapter_is_plain_for_the_local_model(local_lm) -> None:
    assert isinstance(default_adapter(local_lm), PlainAdapter)
    assert isinstance(default_adapter(local_lm.copy(temperature=0.5)), PlainAdapter)


def test_default_adapter_is_dspy_default_elsewhere(fake_lm) -> None:
    assert default_adapter(dspy.LM("openai/gpt-4o-mini")) is None
    assert default_adapter(fake_lm(lambda messages: "x")) is None  # a custom engine is not "local"
    assert default_adapter(None) is None


# --- the real embedded model ----------------------------------------------------------


@pytest.mark.embedded
def test_plain_adapter_with_demos_beats_chat_adapter_on_the_small_model(local_lm) -> None:  # 20 calls
    task = load_task("sentiment")
    rows = task.test[:10]
    lm = local_lm.copy(max_tokens=48)
    evaluator = Evaluator(exact_match, num_threads=1, cache=False)

    plain = dspy.Predict(dspy.Signature("input -> output", task.baseline_instruction))
    plain.demos = task.train[:3]
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        plain_report = evaluator.evaluate(plain, rows)

    chat = dspy.Predict(dspy.Signature("input -> output", task.baseline_instruction))
    # No JSON fallback: one call per row, and the fallback scores 0 on this model as well.
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter(use_json_adapter_fallback=False)):
        chat_report = evaluator.evaluate(chat, rows)

    assert plain_report.usage.calls == 10 and chat_report.usage.calls == 10
    assert plain_report.score > 0
    assert chat_report.score == 0
    # The chat adapter's failures are unparseable replies (scored 0), not LM errors.
    assert chat_report.errors["lm_error"] == 0
    assert len(chat_report.scored) == 10


def test_fill_missing_supplies_fields_a_reply_leaves_out() -> None:
    sig = dspy.Signature("question -> answer, note")
    strict, lenient = PlainAdapter(), PlainAdapter(fill_missing={"note": "-"})
    with pytest.raises(AdapterParseError, match=r"Missing output field\(s\) \['answer', 'note'\]"):
        strict.parse(sig, "Paris")
    assert lenient.parse(sig, "Paris") == {"answer": "Paris", "note": "-"}
    # A field the reply does write is kept, never replaced by the fill value.
    assert lenient.parse(sig, "Answer: Paris\nNote: capital") == {"answer": "Paris", "note": "capital"}
    # Fields without a fill value are still required.
    with pytest.raises(AdapterParseError, match="Missing output field"):
        lenient.parse(sig, "Note: only a note")
