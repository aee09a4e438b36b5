"""Tests for the ``metrics`` package."""

from __future__ import annotations

import dspy
import pytest

from metrics import (
    METRICS,
    Contains,
    ExactMatch,
    NumericMatch,
    TokenF1,
    contains,
    exact_match,
    get_metric,
    normalize_text,
    numeric_match,
    parse_number,
    token_f1,
)


def ex(**fields: object) -> dspy.Example:
    return dspy.Example(**fields).with_inputs("input")


def pred(**fields: object) -> dspy.Prediction:
    return dspy.Prediction(**fields)


# --- normalize_text ---------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Hello  ", "hello"),
        ('"Positive."', "positive"),
        ("'yes!'", "yes"),
        ("\u201cQuoted\u201d?", "quoted"),
        ("a   b\t\nc", "a b c"),
        ("Done;,", "done"),
        ("\uff21\uff22\uff23", "abc"),  # full-width letters fold under NFKC
        ("dogs'", "dogs'"),  # a lone apostrophe is part of the word
        ("e.g. this", "e.g. this"),  # only trailing punctuation is stripped
        (None, ""),
        (42, "42"),
    ],
)
def test_normalize_text(raw: object, expected: str) -> None:
    assert normalize_text(raw) == expected


# --- exact_match --------------------------------------------------------------


def test_exact_match_normalises_case_punctuation_and_quotes() -> None:
    example = ex(input="x", output="Positive")
    assert exact_match(example, pred(output=' "positive." ')) == 1.0
    assert exact_match(example, pred(output="negative")) == 0.0
    assert exact_match(example, pred(output="positive sentiment")) == 0.0


def test_exact_match_accepts_alternatives() -> None:
    example = ex(input="x", output="cacti", accepted=["cactuses", "Cactus plants"])
    assert exact_match(example, pred(output="Cactuses")) == 1.0
    assert exact_match(example, pred(output="cactus plants.")) == 1.0
    assert exact_match(example, pred(output="cactus")) == 0.0


def test_accepted_is_not_a_scored_field() -> None:
    # Without the exclusion, "accepted" would be a label field and halve the score.
    example = ex(input="x", output="a", accepted=["b"])
    assert exact_match(example, pred(output="a")) == 1.0


def test_missing_prediction_field_scores_zero() -> None:
    example = ex(input="x", output="a")
    assert exact_match(example, pred(answer="a")) == 0.0
    assert exact_match(example, pred(output=None)) == 0.0
    assert token_f1(example, pred()) == 0.0
    assert numeric_match(example, pred()) == 0.0
    assert contains(example, pred()) == 0.0


def test_multiple_label_fields_are_averaged() -> None:
    example = ex(input="x", city="Paris", country="France")
    assert exact_match(example, pred(city="paris", country="France")) == 1.0
    assert exact_match(example, pred(city="paris", country="Spain")) == 0.5
    assert exact_match(example, pred(city="paris")) == 0.5


def test_field_specific_instance() -> None:
    example = ex(input="x", answer="42", explanation="because")
    metric = ExactMatch(field="answer")
    assert metric(example, pred(answer="42", explanation="no")) == 1.0
    assert metric(example, pred(explanation="because")) == 0.0
    both = ExactMatch(field=["answer", "explanation"])
    assert both(example, pred(answer="42", explanation="no")) == 0.5


def test_accepted_dict_gives_alternatives_per_field() -> None:
    example = ex(input="x", a="one", b="two", accepted={"a": ["1"]})
    assert exact_match(example, pred(a="1", b="two")) == 1.0
    assert exact_match(example, pred(a="one", b="2")) == 0.5


def test_accepted_list_is_ignored_with_several_fields() -> None:
    example = ex(input="x", a="one", b="two", accepted=["1"])
    assert exact_match(example, pred(a="1", b="two")) == 0.5


def test_trace_mode_returns_bool() -> None:
    example = ex(input="x", output="yes")
    assert exact_match(example, pred(output="Yes"), trace=[]) is True
    assert exact_match(example, pred(output="no"), trace=[]) is False
    two = ex(input="x", a="1", b="2")
    # Half right is not good enough to keep a bootstrapped demo.
    assert exact_match(two, pred(a="1", b="3"), trace=[]) is False


def test_example_without_inputs_falls_back_to_output_field() -> None:
    example = dspy.Example(input="x", output="yes")  # no with_inputs()
    assert exact_match(example, pred(output="yes")) == 1.0


def test_metrics_work_inside_dspy_evaluate() -> None:
    lm = dspy.utils.DummyLM([{"output": "Positive."}, {"output": "neutral"}])
    program = dspy.Predict("input -> output")
    devset = [ex(input="a", output="positive"), ex(input="b", output="negative")]
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        result = dspy.Evaluate(devset=devset, metric=exact_match, num_threads=1, display_progress=False)(program)
    assert result.score == pytest.approx(50.0)


# --- contains -----------------------------------------------------------------


def test_contains_whole_words() -> None:
    example = ex(input="x", output="cat")
    assert contains(example, pred(output="The answer is: Cat.")) == 1.0
    assert contains(example, pred(output="concatenate")) == 0.0
    assert contains(example, pred(output="cats")) == 0.0
    assert contains(ex(input="x", output="New York"), pred(output="I love new   york!")) == 1.0


def test_contains_uses_accepted_and_trace() -> None:
    example = ex(input="x", output="shark", accepted=["great white"])
    assert contains(example, pred(output="A great white is bigger")) == 1.0
    assert contains(example, pred(output="a whale"), trace=object()) is False
    assert Contains(field="output")(example, pred(output="shark!"), trace=[]) is True


def test_contains_empty_gold_only_matches_empty_prediction() -> None:
    example = ex(input="x", output="")
    assert contains(example, pred(output="anything")) == 0.0
    assert contains(example, pred(output="  ")) == 1.0


# --- token_f1 -------------------------------------------------------------


def test_token_f1_values() -> None:
    example = ex(input="x", output="the black cat")
    assert token_f1(example, pred(output="The black cat.")) == 1.0
    assert token_f1(example, pred(output="black cat")) == pytest.approx(0.8)
    assert token_f1(example, pred(output="dog")) == 0.0
    # Repeated tokens count once per occurrence in the gold.
    assert token_f1(ex(input="x", output="a b"), pred(output="a a")) == pytest.approx(0.5)


def test_token_f1_ignores_inner_punctuation_and_takes_best_alternative() -> None:
    example = ex(input="x", output="red, green", accepted=["crimson and emerald"])
    assert token_f1(example, pred(output="red green")) == 1.0
    assert token_f1(example, pred(output="crimson emerald")) == pytest.approx(0.8)


def test_token_f1_trace_threshold() -> None:
    example = ex(input="x", output="a b c")
    # F1 of "a b" against "a b c" is 0.8; of "a" it is 0.5.
    assert token_f1(example, pred(output="a b"), trace=[]) is True
    assert token_f1(example, pred(output="a"), trace=[]) is False
    assert TokenF1(threshold=0.9)(example, pred(output="a b"), trace=[]) is False
    with pytest.raises(ValueError):
        TokenF1(threshold=1.5)


# --- numeric_match ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("42", 42.0),
        ("The answer is -7.", -7.0),
        ("1,234,567 people", 1234567.0),
        ("costs 3.50 dollars", 3.5),
        (".5", 0.5),
        ("\u221212", -12.0),  # Unicode minus sign
        ("covid-19", 19.0),  # a hyphen after a word is not a sign
        ("2e3", 2000.0),
        ("twelve", 12.0),
        ("Zero apples", 0.0),
        ("one of 5", 5.0),  # digits win over number words
        ("no number here", None),
        ("", None),
        (None, None),
        (3, 3.0),
    ],
)
def test_parse_number(text: object, value: float | None) -> None:
    assert parse_number(text) == value


def test_numeric_match() -> None:
    example = ex(input="x", output="1234")
    assert numeric_match(example, pred(output="It is 1,234.")) == 1.0
    assert numeric_match(example, pred(output="1234.0000001")) == 1.0  # within 1e-6 relative
    assert numeric_match(example, pred(output="1235")) == 0.0
    assert numeric_match(example, pred(output="none")) == 0.0
    assert numeric_match(ex(input="x", output="-3"), pred(output="minus -3 degrees")) == 1.0
    assert numeric_match(ex(input="x", output="7"), pred(output="seven")) == 1.0


def test_numeric_match_tolerance_accepted_and_trace() -> None:
    example = ex(input="x", output="100", accepted=["1e2", "99.5"])
    assert numeric_match(example, pred(output="99.5")) == 1.0
    strict = NumericMatch(rel_tol=0.0)
    assert strict(ex(input="x", output="0.3"), pred(output="0.30000000000000004")) == 0.0
    loose = NumericMatch(rel_tol=0.01)
    assert loose(ex(input="x", output="100"), pred(output="100.5")) == 1.0
    assert numeric_match(example, pred(output="100"), trace=[]) is True
    assert numeric_match(example, pred(output="101"), trace=[]) is False


def test_numeric_match_gold_without_number_scores_zero() -> None:
    assert numeric_match(ex(input="x", output="n/a"), pred(output="n/a 3")) == 0.0


# --- registry ----------------------------------------------------------------


def test_registry_contents_and_lookup() -> None:
    assert set(METRICS) == {"exact_match", "contains", "token_f1", "numeric_match"}
    assert get_metric("exact_match") is exact_match
    assert get_metric("Token-F1") is token_f1
    field_metric = get_metric("numeric_match", field="answer")
    assert isinstance(field_metric, NumericMatch)
    assert field_metric(ex(input="x", answer="5"), pred(answer="5.0")) == 1.0


def test_registry_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError) as info:
        get_metric("bleu")
    message = str(info.value)
    assert "bleu" in message
    for name in METRICS:
        assert name in message


def test_metric_names_for_reports() -> None:
    assert ExactMatch().__name__ == "exact_match"
    assert ExactMatch(field="answer").__name__ == "exact_match[answer]"
    with pytest.raises(ValueError):
        ExactMatch(field=[])
