"""EvalGen alignment against a small fixed label set, counted by hand."""

from __future__ import annotations

import pytest

from dspy_ext.review import CheckSpec, ReviewStore, align

# (input, output, grade); the hand counts below refer to these rows by number 1..8.
ROWS = [
    ("a", "positive", "good"),  # 1
    ("b", "negative", "good"),  # 2
    ("c", "Positive.", "good"),  # 3
    ("d", "The sentiment is positive", "bad"),  # 4
    ("e", "neg", "bad"),  # 5
    ("f", "I think it is negative", "bad"),  # 6
    ("g", "positive", "good"),  # 7
    ("h", "unsure", "bad"),  # 8
]


@pytest.fixture
def labelled() -> tuple[ReviewStore, list[str], int]:
    store = ReviewStore(":memory:")
    keys = []
    for text, output, grade in ROWS:
        key = store.add_output({"input": text}, {"output": output}, prompt_version="v1")
        store.set_grade(key, grade, "not a bare label" if grade == "bad" else None)
        keys.append(key)
    store.add_output({"input": "unlabelled"}, {"output": "whatever words"}, prompt_version="v1")  # not counted
    crit = store.add_criterion("label", "answers with exactly one label")
    for check in ("one_of:positive,negative", "max_words:1", "contains:positive"):
        store.add_check(crit.id, CheckSpec.parse(check))
    return store, keys, crit.id


def by_check(report) -> dict[str, tuple]:
    return {
        c.check: (c.failed_bad, c.n_bad, c.coverage, c.failed_good, c.n_good, c.false_failure_rate, c.chosen)
        for c in report.criteria[0].candidates
    }


def test_coverage_and_false_failure_rate_match_a_hand_count(labelled) -> None:
    store, _, crit_id = labelled
    report = align(store, threshold=0.25)
    # one_of fails 3,4,5,6,8: Bad 4,5,6,8 -> 4/4; Good 3 -> 1/4.
    # max_words:1 fails 4,6: Bad 2/4; Good 0/4.
    # contains:positive fails 2,5,6,8: Bad 5,6,8 -> 3/4; Good 2 -> 1/4.
    assert by_check(report) == {
        "one_of:positive,negative": (4, 4, 1.0, 1, 4, 0.25, True),
        "max_words:1": (2, 4, 0.5, 0, 4, 0.0, False),
        "contains:positive": (3, 4, 0.75, 1, 4, 0.25, False),
    }
    assert report.criteria[0].labelled == 8 and (report.reviewed, report.total) == (8, 9)
    chosen = store.criteria()[0].chosen_check
    assert str(chosen.spec) == "one_of:positive,negative"
    # A stricter threshold rules out both checks that fail a Good output.
    assert str(store.criterion(crit_id).chosen_check.spec) == "one_of:positive,negative"
    align(store, threshold=0.2)
    assert str(store.criterion(crit_id).chosen_check.spec) == "max_words:1"


def test_an_explicit_criterion_mark_overrides_the_overall_grade(labelled) -> None:
    store, keys, crit_id = labelled
    store.set_judgement(keys[7], crit_id, True)  # row 8 is Bad overall, but not for this criterion
    report = align(store, threshold=0.25)
    # Bad for the criterion: 4,5,6; Good: 1,2,3,7,8.
    assert by_check(report) == {
        "one_of:positive,negative": (3, 3, 1.0, 2, 5, 0.4, False),
        "max_words:1": (2, 3, 2 / 3, 0, 5, 0.0, True),
        "contains:positive": (2, 3, 2 / 3, 2, 5, 0.4, False),
    }


def test_lm_checks_count_only_stored_verdicts(labelled) -> None:
    store, keys, crit_id = labelled
    judge = store.add_check(crit_id, CheckSpec.parse("judge"))
    store.record_check_results(judge, {keys[0]: True, keys[3]: False, keys[4]: None})
    entry = next(c for c in align(store).criteria[0].candidates if c.check == "judge")
    assert (entry.failed_bad, entry.n_bad, entry.failed_good, entry.n_good, entry.unknown) == (1, 1, 0, 1, 6)


def test_no_check_is_chosen_without_both_kinds_of_grade() -> None:
    store = ReviewStore(":memory:")
    key = store.add_output({"input": "x"}, {"output": "y"}, prompt_version="v1")
    store.set_grade(key, "good")
    crit = store.add_criterion("c", check=CheckSpec.parse("max_words:5"))
    entry = align(store).criteria[0]
    assert entry.candidates[0].coverage is None and entry.chosen_check_id is None
    assert store.criterion(crit.id).chosen_check is None
    with pytest.raises(ValueError, match="threshold"):
        align(store, threshold=1.5)
