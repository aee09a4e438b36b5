"""Tests for ``dspy_ext.data``: loading, tasks, splits, fingerprints and data errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import dspy
import pytest

from dspy_ext.data import (
    BUILTIN_TASKS,
    GENERIC_INSTRUCTION,
    TASKS_DIR_ENV,
    DataError,
    TaskData,
    available_tasks,
    dataset_fingerprint,
    load_examples,
    load_task,
    split_train_val,
)
from dspy_ext.search.demos import closed_label_set


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def rows(n: int) -> list[dict[str, str]]:
    return [{"input": f"in{i}", "output": f"out{i}"} for i in range(n)]


def make_task_folder(
    folder: Path,
    n_train: int = 8,
    n_test: int | None = 3,
    instructions: list[str] | None = None,
) -> Path:
    folder.mkdir(parents=True)
    write_jsonl(folder / "train.jsonl", rows(n_train))
    if n_test is not None:
        write_jsonl(folder / "test.jsonl", [{"input": f"t{i}", "output": f"o{i}"} for i in range(n_test)])
    if instructions is not None:
        (folder / "instructions.json").write_text(json.dumps(instructions), encoding="utf-8")
    return folder


# --- built-in tasks -----------------------------------------------------------


def test_builtin_tasks_are_discovered() -> None:
    public = {"sentiment", "first_word_letter", "larger_animal", "singular_to_plural", "sentence_similarity"}
    held_out = {"active_to_passive", "negation", "translation_en-es", "antonyms"}  # docs/held_out_tasks.md
    assert set(BUILTIN_TASKS) == public | held_out
    for folder in BUILTIN_TASKS.values():
        assert (folder / "train.jsonl").is_file()
    assert (next(iter(BUILTIN_TASKS.values())).parent / "README.md").is_file()


def test_load_builtin_sentiment() -> None:
    task = load_task("sentiment")
    assert isinstance(task, TaskData)
    assert task.name == "sentiment"
    assert len(task.train) == 300
    assert len(task.test) == 100
    assert task.input_keys == ("input",)
    assert task.output_keys == ("output",)
    first = task.train[0]
    assert first.inputs().keys() == ["input"]
    assert first.labels().keys() == ["output"]
    assert {ex.output for ex in task.train} == {"positive", "negative"}
    assert task.baseline_instruction == task.instructions[0]
    assert "positive or negative" in task.baseline_instruction
    assert Path(task.source).name == "sentiment"


def test_sentence_similarity_has_six_labels_found_as_a_closed_set() -> None:
    task = load_task("sentence_similarity")
    assert (len(task.train), len(task.test)) == (300, 100)
    labels = [f"{n} - {w}" for n, w in enumerate(["definitely not", "probably not", "possibly", "probably"])]
    labels += ["4 - almost perfectly", "5 - perfectly"]
    assert {ex.output for ex in task.train} == {ex.output for ex in task.test} == set(labels)
    assert task.instructions and "0" in task.baseline_instruction and "5" in task.baseline_instruction
    student = dspy.Predict(dspy.Signature("input -> output", task.baseline_instruction))
    for seed in range(5):  # the train rows `dspy-ext compile` draws (50 by default) name all six: a closed set
        train, _ = split_train_val(task.train, 50, 50, seed=seed)
        found, field = closed_label_set(student, train)
        assert field == "output" and found is not None and set(found) == set(labels)


@pytest.mark.parametrize("name", ["first_word_letter", "larger_animal", "singular_to_plural"])
def test_load_other_builtin_tasks(name: str) -> None:
    task = load_task(name)
    assert (len(task.train), len(task.test)) == (300, 100)
    assert task.instructions
    assert all(ex.input and ex.output for ex in task.test)


def test_unknown_task_lists_available_names() -> None:
    with pytest.raises(ValueError) as info:
        load_task("no_such_task")
    message = str(info.value)
    assert "no_such_task" in message
    for name in BUILTIN_TASKS:
        assert name in message


def test_exactly_one_of_name_and_data(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        load_task()
    with pytest.raises(ValueError, match="exactly one"):
        load_task("sentiment", data=str(tmp_path))


def test_tasks_dir_env_adds_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_task_folder(tmp_path / "my_task", instructions=["Echo the number."])
    (tmp_path / "not_a_task").mkdir()  # no train.jsonl: not listed
    monkeypatch.setenv(TASKS_DIR_ENV, str(tmp_path))
    assert "my_task" in available_tasks()
    assert "not_a_task" not in available_tasks()
    assert "sentiment" in available_tasks()
    task = load_task("my_task")
    assert (len(task.train), len(task.test)) == (8, 3)
    assert task.baseline_instruction == "Echo the number."


# --- folders and single files -------------------------------------------------


def test_load_task_folder(tmp_path: Path) -> None:
    folder = make_task_folder(tmp_path / "echo", instructions=["  ", "Copy the input."])
    task = load_task(data=str(folder))
    assert task.name == "echo"
    assert (len(task.train), len(task.test)) == (8, 3)
    assert task.instructions == ["Copy the input."]  # blank instructions are dropped
    assert task.source == str(folder)


def test_folder_without_instructions_uses_generic_baseline(tmp_path: Path) -> None:
    task = load_task(data=make_task_folder(tmp_path / "plain"))
    assert task.instructions == []
    assert task.baseline_instruction == GENERIC_INSTRUCTION


def test_folder_without_test_file_is_split(tmp_path: Path) -> None:
    task = load_task(data=make_task_folder(tmp_path / "notest", n_train=8, n_test=None), seed=1)
    assert (len(task.train), len(task.test)) == (6, 2)


def test_folder_without_train_file_is_a_data_error(tmp_path: Path) -> None:
    folder = tmp_path / "empty_task"
    folder.mkdir()
    with pytest.raises(DataError, match=r"train\.jsonl"):
        load_task(data=str(folder))


def test_single_file_split_is_seeded(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "all.jsonl", rows(40))
    first = load_task(data=str(path), seed=3)
    again = load_task(data=str(path), seed=3)
    other = load_task(data=str(path), seed=4)
    assert first.name == "all"
    assert (len(first.train), len(first.test)) == (30, 10)
    inputs = [ex.input for ex in first.test]
    assert inputs == [ex.input for ex in again.test]
    assert inputs != [ex.input for ex in other.test]
    assert {ex.input for ex in first.train}.isdisjoint(inputs)
    assert {ex.input for ex in first.train} | set(inputs) == {f"in{i}" for i in range(40)}


def test_single_file_split_fraction_and_global_random_untouched(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "all.jsonl", rows(10))
    random.seed(123)
    expected = random.random()
    random.seed(123)
    task = load_task(data=path, test_fraction=0.5)
    assert random.random() == expected
    assert (len(task.train), len(task.test)) == (5, 5)
    with pytest.raises(ValueError, match="test_fraction"):
        load_task(data=path, test_fraction=1.0)


def test_single_file_with_custom_keys(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": f"q{i}", "answer": f"a{i}"} for i in range(4)])
    task = load_task(data=path, input_keys="question", output_keys=["answer"])
    assert task.input_keys == ("question",)
    assert task.train[0].inputs().keys() == ["question"]


# --- load_examples formats ---------------------------------------------------


def test_load_jsonl_keeps_extra_columns(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [{"input": "a", "output": "b", "accepted": ["B", "bee"]}, {"input": "c", "output": "d"}],
    )
    examples = load_examples(path)
    assert [ex.input for ex in examples] == ["a", "c"]
    assert examples[0].accepted == ["B", "bee"]
    # Arrow fills the absent column with null; it must not appear on the example.
    assert "accepted" not in examples[1]
    assert examples[0].inputs().keys() == ["input"]
    assert sorted(examples[0].labels().keys()) == ["accepted", "output"]


def test_load_json_list_and_csv_and_parquet(tmp_path: Path) -> None:
    data = [{"input": "007", "output": "1.10"}, {"input": "x, y", "output": "z"}]
    json_path = tmp_path / "d.json"
    json_path.write_text(json.dumps(data), encoding="utf-8")
    csv_path = tmp_path / "d.csv"
    csv_path.write_text('input,output\n007,1.10\n"x, y",z\n', encoding="utf-8")
    parquet_path = tmp_path / "d.parquet"
    import pandas as pd

    pd.DataFrame(data).to_parquet(parquet_path)
    for path in (json_path, csv_path, parquet_path):
        examples = load_examples(path)
        # CSV cells stay text: "007" is not turned into 7.
        assert [(ex.input, ex.output) for ex in examples] == [("007", "1.10"), ("x, y", "z")], path


def test_json_file_holding_json_lines(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "lines.json", rows(3))
    assert len(load_examples(path)) == 3


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "gaps.jsonl"
    path.write_text('{"input": "a", "output": "b"}\n\n{"input": "c", "output": "d"}\n', encoding="utf-8")
    assert [ex.input for ex in load_examples(path)] == ["a", "c"]


def test_local_files_need_no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    path = write_jsonl(tmp_path / "offline.jsonl", rows(2))
    assert len(load_examples(path)) == 2


def test_hub_name_offline_gives_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError) as info:
        load_examples("someone/some-dataset")
    message = str(info.value)
    assert "someone/some-dataset" in message
    assert "Hub" in message and "offline" in message


def test_overlapping_keys_rejected(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", rows(2))
    with pytest.raises(ValueError, match="both inputs and outputs"):
        load_examples(path, input_keys=("input",), output_keys=("input",))


# --- bad data -----------------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="empty") as info:
        load_examples(path)
    assert str(path) in str(info.value)
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        load_examples(blank)


def test_bad_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"input": "a", "output": "b"}\n{"input": "c", "output": "d"}\n{"input": "e", "output": }\n',
        encoding="utf-8",
    )
    with pytest.raises(DataError) as info:
        load_examples(path)
    error = info.value
    assert str(path) in str(error)
    assert "line 3" in str(error)
    assert error.line == 3


def test_bad_json_in_json_file_names_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"input": "a", "output": "b"},\n  {"input": "c" "output": "d"}\n]\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 3"):
        load_examples(path)


def test_missing_column_names_column_row_and_found_columns(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "missing.jsonl",
        [{"input": "a", "output": "b"}, {"input": "c", "output": "d"}, {"input": "e", "label": "f"}],
    )
    with pytest.raises(DataError) as info:
        load_examples(path)
    message = str(info.value)
    assert str(path) in message
    assert "'output'" in message
    assert "line 3" in message
    assert "input, label" in message


def test_null_required_value(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "null.jsonl", [{"input": "a", "output": "b"}, {"input": "c", "output": None}])
    with pytest.raises(DataError, match=r"line 2.*'output' is empty \(null\)"):
        load_examples(path)


def test_non_object_row(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "list.jsonl", [{"input": "a", "output": "b"}, ["c", "d"]])
    with pytest.raises(DataError, match=r"line 2.*expected a JSON object.*list"):
        load_examples(path)
    json_path = tmp_path / "list.json"
    json_path.write_text(json.dumps([{"input": "a", "output": "b"}, "oops"]), encoding="utf-8")
    with pytest.raises(DataError, match=r"row 2.*expected a JSON object.*str"):
        load_examples(json_path)


def test_csv_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("input,label\na,b\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_examples(path)
    message = str(info.value)
    assert str(path) in message
    assert "'output'" in message
    assert "input, label" in message


def test_csv_empty_cell_names_row(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("input,output\na,b\nc,\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"row 2.*'output' is empty"):
        load_examples(path)


def test_csv_header_only(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("input,output\n", encoding="utf-8")
    with pytest.raises(DataError, match="no data rows"):
        load_examples(path)


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("input\toutput\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_examples(path)
    message = str(info.value)
    assert ".txt" in message
    assert ".jsonl" in message and ".csv" in message


def test_nonexistent_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match="not found") as info:
        load_examples(path)
    assert str(path) in str(info.value)
    with pytest.raises(DataError, match="not found"):
        load_task(data=str(path))


def test_folder_passed_to_load_examples(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="folder"):
        load_examples(tmp_path)


def test_bad_instructions_file(tmp_path: Path) -> None:
    folder = make_task_folder(tmp_path / "t")
    (folder / "instructions.json").write_text('{"a": 1}', encoding="utf-8")
    with pytest.raises(DataError, match=r"instructions\.json"):
        load_task(data=folder)


def test_data_error_is_a_value_error() -> None:
    assert issubclass(DataError, ValueError)


# --- split_train_val ------------------------------------------------------------


def test_split_train_val_disjoint_and_seeded() -> None:
    pool = [dspy.Example(input=f"in{i}", output=str(i)).with_inputs("input") for i in range(50)]
    train, val = split_train_val(pool, 10, 15, seed=7)
    assert (len(train), len(val)) == (10, 15)
    train_ids = {ex.input for ex in train}
    val_ids = {ex.input for ex in val}
    assert train_ids.isdisjoint(val_ids)
    again_train, again_val = split_train_val(pool, 10, 15, seed=7)
    assert [ex.input for ex in again_train] == [ex.input for ex in train]
    assert [ex.input for ex in again_val] == [ex.input for ex in val]
    other_train, _ = split_train_val(pool, 10, 15, seed=8)
    assert [ex.input for ex in other_train] != [ex.input for ex in train]
    # The input list itself is not reordered.
    assert [ex.input for ex in pool] == [f"in{i}" for i in range(50)]


def test_split_train_val_rest() -> None:
    pool = [dspy.Example(input=str(i)) for i in range(20)]
    train, val = split_train_val(pool, 5, None, seed=0)
    assert (len(train), len(val)) == (5, 15)
    train2, val2 = split_train_val(pool, None, 4, seed=0)
    assert (len(train2), len(val2)) == (16, 4)
    assert {ex.input for ex in train2} | {ex.input for ex in val2} == {str(i) for i in range(20)}
    # The train subset for a seed does not depend on the validation size.
    assert [ex.input for ex in split_train_val(pool, 5, 3, seed=0)[0]] == [ex.input for ex in train]


def test_split_train_val_errors() -> None:
    pool = [dspy.Example(input=str(i)) for i in range(12)]
    with pytest.raises(ValueError, match="only 12 are available"):
        split_train_val(pool, 10, 5, seed=0)
    with pytest.raises(ValueError, match="only 12"):
        split_train_val(pool, None, 13, seed=0)
    with pytest.raises(ValueError, match="n_train"):
        split_train_val(pool, -1, 2, seed=0)
    with pytest.raises(ValueError, match="n_train or n_val"):
        split_train_val(pool, None, None, seed=0)


def test_split_builtin_task() -> None:
    task = load_task("larger_animal")
    train, val = split_train_val(task.train, 50, 100, seed=0)
    assert (len(train), len(val)) == (50, 100)
    with pytest.raises(ValueError, match="only 300"):
        split_train_val(task.train, 250, 100, seed=0)


# --- dataset_fingerprint ----------------------------------------------------------


def test_dataset_fingerprint_is_stable_and_sensitive() -> None:
    first = [
        dspy.Example(input="a", output="b").with_inputs("input"),
        dspy.Example(input="c", output="d").with_inputs("input"),
    ]
    same = [
        dspy.Example(output="b", input="a").with_inputs("input"),
        dspy.Example(input="c", output="d").with_inputs("input"),
    ]
    fp = dataset_fingerprint(first)
    assert len(fp) == 64 and all(ch in "0123456789abcdef" for ch in fp)
    assert fp == dataset_fingerprint(same)  # key order inside a row does not matter
    assert fp != dataset_fingerprint(list(reversed(first)))  # row order does
    assert fp != dataset_fingerprint([first[0], dspy.Example(input="c", output="D").with_inputs("input")])
    assert fp != dataset_fingerprint([ex.with_inputs("input", "output") for ex in first])


def test_dataset_fingerprint_of_loaded_task_is_reproducible() -> None:
    assert dataset_fingerprint(load_task("sentiment").test) == dataset_fingerprint(load_task("sentiment").test)
    assert dataset_fingerprint(load_task("sentiment").test) != dataset_fingerprint(load_task("larger_animal").test)


def test_dataset_fingerprint_known_value() -> None:
    # Pinned: metadata of earlier runs must still match after code changes.
    example = dspy.Example(input="a", output="b", accepted=["B"]).with_inputs("input")
    assert dataset_fingerprint([example]) == "ed6c8680d4679e4eacac66fc05bfbc8d506c49e6902b5747f1662cc77295773e"
