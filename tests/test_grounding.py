"""Instruction constraints read off training outputs."""

from __future__ import annotations

from dspy_ext.data.grounding import grounded_instruction, output_constraints


def test_closed_label_sets_are_named_sorted():
    assert output_constraints(["positive", "negative", "positive"], labels=("positive", "negative")) == [
        "Answer with exactly one of: negative, positive.",
        "Write the answer in lowercase.",
    ]


def test_word_counts_exact_at_most_and_none_for_long_outputs():
    assert output_constraints(["a cat", "the dog"]) == [
        "Answer with exactly two words.",
        "Write the answer in lowercase.",
    ]
    assert output_constraints(["Cat", "big Dog", "a Red Fox"]) == ["Answer with at most three words."]
    assert output_constraints(["The cat was seen by the dog.", "Dogs bark."]) == []


def test_casing_upper_and_mixed_and_digits():
    assert output_constraints(["A", "B"]) == ["Answer with exactly one word.", "Write the answer in uppercase."]
    assert output_constraints(["3", "14"]) == ["Answer with exactly one word."]
    assert output_constraints([]) == [] and output_constraints(["", None]) == []


def test_grounded_instruction_appends_only_what_is_new():
    assert grounded_instruction("Pluralize the noun", ["cats", "dogs"]) == (
        "Pluralize the noun. Answer with exactly one word. Write the answer in lowercase."
    )
    already = "Pluralize. Answer with exactly one word. Write the answer in lowercase."
    assert grounded_instruction(already, ["cats", "dogs"]) is None
    assert grounded_instruction("Translate.", ["Le chat noir est là.", "Il pleut beaucoup."]) is None
