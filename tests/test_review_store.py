"""The review store on real SQLite: keys, grades, criteria versions, undo, persistence, JSONL round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dspy_ext.review import CheckError, CheckSpec, ReviewError, ReviewStore


@pytest.fixture
def store(tmp_path: Path) -> ReviewStore:
    with ReviewStore(tmp_path / "review.sqlite") as s:
        yield s


def add(store: ReviewStore, text: str, output: str, version: str = "v1", sample: int = 0, gold: str | None = None):
    return store.add_output(
        {"input": text},
        {"output": output},
        prompt_version=version,
        sample_index=sample,
        gold={"output": gold} if gold else None,
    )


def test_unchanged_output_under_new_prompt_keeps_its_grade(store: ReviewStore) -> None:
    key = add(store, "great film", "positive", "v1")
    store.set_grade(key, "good")
    assert add(store, "great film", "positive", "v2") == key  # same input + output: same item
    changed = add(store, "great film", "The sentiment is positive.", "v2", sample=1)
    assert changed != key
    item = store.item(key)
    assert item.grade == "good" and item.prompt_versions == ["v1", "v2"]
    assert store.progress() == (1, 2)  # the unchanged output is not asked again
    assert [i.key for i in store.items() if i.grade is None] == [changed]


def test_a_sample_slot_keeps_its_first_output(store: ReviewStore) -> None:
    first = add(store, "x", "a", "v1", sample=0)
    assert store.has_sample({"input": "x"}, "v1", 0) and not store.has_sample({"input": "x"}, "v1", 1)
    add(store, "x", "b", "v1", sample=0)  # a re-run that drew another output for the same slot
    samples = store.samples_of_input(store.item(first).input_id)
    assert [(s["sample_index"], s["item_key"]) for s in samples] == [(0, first)]


def test_bad_needs_a_reason_and_writes_are_per_field(store: ReviewStore) -> None:
    key = add(store, "x", "y")
    with pytest.raises(ReviewError, match="needs a reason"):
        store.set_grade(key, "bad")
    with pytest.raises(ReviewError, match="needs a reason"):
        store.set_grade(key, "bad", "   ")
    store.set_correction(key, "z")
    store.set_grade(key, "bad", "wrong label")
    with pytest.raises(ReviewError, match="cannot be emptied"):
        store.set_reason(key, "")
    item = store.set_grade(key, "good")  # no reason given: the reason and the correction stay
    assert (item.grade, item.reason, item.correction) == ("good", "wrong label", "z")
    with pytest.raises(ReviewError, match="grade must be one of"):
        store.set_grade(key, "meh")
    with pytest.raises(ReviewError, match="no review item"):
        store.set_grade("nope", "good")


def test_criteria_are_versioned_and_never_lose_grades(store: ReviewStore) -> None:
    key = add(store, "x", "positive")
    store.set_grade(key, "good")
    first = store.add_criterion("one word", "answers with a single word", CheckSpec.parse("max_words:1"))
    store.set_judgement(key, first.id, True)
    edited = store.update_criterion(first.id, description="answers with one lower-case word")
    assert edited.version == 2 and [v["version"] for v in store.criterion_history(first.id)] == [1, 2]
    second = store.add_criterion("label", "one of the labels", CheckSpec.parse("one_of:positive,negative"))
    item = store.item(key)
    assert item.grade == "good" and item.judgements == {first.id: True}
    assert [c.name for c in store.criteria()] == ["one word", "label"]
    with pytest.raises(ReviewError, match="already exists"):
        store.add_criterion("One Word")
    store.update_criterion(second.id, archived=True)
    assert [c.name for c in store.criteria()] == ["one word"]
    assert store.add_check(first.id, CheckSpec.parse("max_words:1")) == first.checks[0].id  # reused, not doubled


def test_undo_is_per_client_and_never_overwrites_another_clients_write(store: ReviewStore) -> None:
    key = add(store, "x", "y")
    store.set_grade(key, "good", client="tab-a")
    store.set_grade(key, "bad", "too long", client="tab-a")
    assert store.undo("tab-b") is None
    assert store.undo("tab-a") == key
    assert store.item(key).grade == "good" and store.item(key).reason is None
    store.set_reason(key, "fine", client="tab-a")
    store.set_reason(key, "fine, but terse", client="tab-b")
    with pytest.raises(ReviewError, match="changed since"):
        store.undo("tab-a")
    assert store.item(key).reason == "fine, but terse"
    crit = store.add_criterion("c")
    store.set_judgement(key, crit.id, False, client="tab-b")
    store.undo("tab-b")
    assert store.item(key).judgements == {}


def test_everything_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    with ReviewStore(path) as s:
        key = add(s, "x", "y")
        crit = s.add_criterion("short", "at most three words", CheckSpec.parse("max_words:3"))
        s.set_grade(key, "bad", "rambles")
        s.set_correction(key, "ok")
        s.set_judgement(key, crit.id, False)
    with ReviewStore(path) as s:
        item = s.item(key)
        assert (item.grade, item.reason, item.correction, item.judgements) == ("bad", "rambles", "ok", {crit.id: False})
        assert str(s.criteria()[0].checks[0].spec) == "max_words:3"


def test_read_api_for_optimizers(store: ReviewStore) -> None:
    good = add(store, "a", "positive")
    corrected = add(store, "b", "The answer is negative")
    bad = add(store, "c", "maybe")
    crit = store.add_criterion("label", "one of the labels")
    store.set_grade(good, "good")
    store.set_grade(corrected, "bad", "a sentence, not a label")
    store.set_correction(corrected, "negative")
    store.set_grade(bad, "bad", "not a label")
    store.set_judgement(bad, crit.id, False)
    examples = {e.inputs["input"]: (e.outputs, e.corrected) for e in store.labeled_examples()}
    assert examples == {"a": ({"output": "positive"}, False), "b": ({"output": "negative"}, True)}
    critiques = {c.inputs["input"]: c for c in store.critiques()}
    assert critiques["c"].reason == "not a label" and critiques["c"].failed_criteria == ("label",)
    assert critiques["b"].correction == "negative" and critiques["b"].prompt_versions == ("v1",)


def test_jsonl_round_trip_into_a_fresh_store(tmp_path: Path, store: ReviewStore) -> None:
    keys = [add(store, f"in {i}", f"out {i}", gold=f"gold {i}") for i in range(4)]
    crit = store.add_criterion("short")
    store.set_grade(keys[0], "good", "crisp")
    store.set_grade(keys[1], "bad", "wrong <b>label</b>")
    store.set_correction(keys[1], "fixed")
    store.set_judgement(keys[1], crit.id, False)
    store.set_judgement(keys[0], crit.id, True)
    path = tmp_path / "labels.jsonl"
    assert store.export_jsonl(path) == 4
    first = json.loads(path.read_text().splitlines()[0])
    assert set(first) == {"input", "output", "gold", "grade", "reason", "correction", "criteria", "prompt_versions"}
    with ReviewStore(tmp_path / "fresh.sqlite") as fresh:
        summary = fresh.import_jsonl(path)
        assert (summary.rows, summary.added_items, summary.graded) == (4, 4, 2)
        assert list(fresh.export_rows()) == list(store.export_rows())
        again = fresh.import_jsonl(path)  # grades already there are kept
        assert (again.added_items, again.skipped_graded) == (0, 2)


def test_import_accepts_other_tools_rows_and_rejects_bad_lines_whole(tmp_path: Path, store: ReviewStore) -> None:
    path = tmp_path / "other.jsonl"
    path.write_text(
        '{"input": "hello", "output": "hi", "grade": "pass"}\n'
        '{"input": "bye", "output": "ciao", "grade": 0, "reason": "Italian"}\n'
    )
    summary = store.import_jsonl(path)
    assert summary.graded == 2
    assert sorted((i.inputs["input"], i.grade) for i in store.items()) == [("bye", "bad"), ("hello", "good")]
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"input": "a", "output": "b", "grade": "good"}\n{"input": "c", "output": "d", "grade": "bad"}\n')
    with pytest.raises(ReviewError, match=r"broken.jsonl, line 2: a bad grade needs a reason"):
        store.import_jsonl(broken)
    assert len(store.items()) == 2  # nothing of the broken file was written
    broken.write_text('{"input": "a", "output": "b", "grade": "excellent"}\n')
    with pytest.raises(ReviewError, match="line 1: grade 'excellent'"):
        store.import_jsonl(broken)
    broken.write_text('{"input": "a"}\n')
    with pytest.raises(ReviewError, match="missing 'output'"):
        store.import_jsonl(broken)


@pytest.mark.parametrize(
    ("text", "output", "passes"),
    [
        ("one_of:positive, negative", " Positive ", True),
        ("one_of:positive,negative", "neutral", False),
        ("regex:^[a-z]+$", "positive", True),
        ("regex:^[a-z]+$", "The answer", False),
        ("max_words:2", "two words", True),
        ("max_words:2", "three words here", False),
        ("contains:sorry", "I am SORRY", True),
        ("not_contains:sorry", "I am SORRY", False),
        ("valid_json", '{"a": 1}', True),
        ("valid_json", "{a: 1}", False),
    ],
)
def test_built_in_checks(text: str, output: str, passes: bool) -> None:
    assert CheckSpec.parse(text).passes(output) is passes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("length:3", "unknown check 'length'"),
        ("regex:(", "does not compile"),
        ("max_words:many", "whole number"),
        ("contains:", "needs an argument"),
        ("one_of: , ", "needs an argument|at least one label"),
    ],
)
def test_bad_checks_are_refused_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(CheckError, match=message):
        CheckSpec.parse(text)
