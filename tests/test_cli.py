"""Tests for the ``dspy-ext`` command line (``dspy_ext.cli.main``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dspy_ext.cli import main
from dspy_ext.data import available_tasks

TRAIN = [
    ("A triumph of wit and warmth.", "positive"),
    ("Tedious, shapeless and far too long.", "negative"),
    ("The cast is a pure delight.", "positive"),
    ("A grim slog with nothing to say.", "negative"),
]
# Sentences written for this test, so no other test's cached replies can match.
TEST = [
    ("An utterly charming little film about two bakers.", "positive"),
    ("The plot about the bakers collapses into tedium.", "negative"),
    ("I smiled at the bakers from start to finish.", "positive"),
    ("A forgettable story about forgettable bakers.", "negative"),
]


def write_jsonl(path: Path, rows: list[tuple[str, str]]) -> None:
    path.write_text("".join(json.dumps({"input": i, "output": o}) + "\n" for i, o in rows), encoding="utf-8")


@pytest.fixture
def task_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "bakers"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", TRAIN)
    write_jsonl(folder / "test.jsonl", TEST)
    (folder / "instructions.json").write_text(json.dumps(["Say whether the review is positive or negative."]))
    return folder


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out  # --json prints exactly one JSON object
    return json.loads(out[0])


@pytest.mark.embedded
def test_evaluate_json_on_a_data_folder(task_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["evaluate", "--data", str(task_folder), "--limit", "3", "--demos", "3", "--threads", "1", "--json"]
    result = run_json(capsys, argv)  # 3 model calls
    assert {"score", "n", "lm_calls", "errors"} <= set(result)
    assert 0.0 <= result["score"] <= 100.0
    assert result["n"] == 3 and result["lm_calls"] == 3
    assert result["errors"] == {
        "lm_error": 0,
        "context_overflow": 0,
        "parse_error": 0,
        "metric_error": 0,
        "program_error": 0,
    }
    assert result["task"] == "bakers" and result["split"] == "test" and result["demos"] == 3
    assert result["adapter"] == "PlainAdapter" and result["lm"].startswith("local/SmolLM2-135M-Instruct")
    assert result["complete"] is True and result["budget_exhausted"] is False

    # The same command again is served by DSPy's response cache: no model calls, same score.
    again = run_json(capsys, argv)
    assert (again["lm_calls"], again["score"]) == (0, result["score"])

    # --no-cache calls the model again (3 calls); greedy decoding gives the same score.
    fresh = run_json(capsys, [*argv, "--no-cache"])
    assert fresh["lm_calls"] == 3 and fresh["n"] == 3


@pytest.mark.embedded
def test_evaluate_text_output(task_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Same prompts as the JSON test's first run: served from DSPy's cache when run after it.
    argv = ["evaluate", "--data", str(task_folder), "--limit", "3", "--demos", "3", "--threads", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("bakers [test] transform · local/SmolLM2-135M-Instruct")
    assert "PlainAdapter · 3 demos" in out
    assert "(n=3, repeats=1)" in out
    assert "errors: none" in out


def test_malformed_jsonl_exits_2_naming_file_and_line(task_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = task_folder / "test.jsonl"
    bad.write_text('{"input": "fine", "output": "positive"}\n{"input": "broken", "output": }\n', encoding="utf-8")
    assert main(["evaluate", "--data", str(task_folder), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("dspy-ext evaluate: error: ")
    assert f"{bad}, line 2: invalid JSON" in captured.err
    assert "Traceback" not in captured.err


def test_missing_required_column_exits_2(task_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (task_folder / "train.jsonl").write_text('{"input": "a", "output": "b"}\n{"text": "c"}\n', encoding="utf-8")
    assert main(["evaluate", "--data", str(task_folder)]) == 2
    err = capsys.readouterr().err
    assert str(task_folder / "train.jsonl") in err and "line 2" in err and "'input'" in err


def test_unknown_task_exits_2_listing_tasks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--task", "no_such_task", "--json"]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'no_such_task'" in err
    for name in available_tasks():
        assert name in err
    assert {"sentiment", "first_word_letter", "larger_animal", "singular_to_plural"} <= set(available_tasks())


def test_bad_repeats_exits_2(task_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--data", str(task_folder), "--repeats", "0"]) == 2
    assert "--repeats must be >= 1" in capsys.readouterr().err


def test_task_or_data_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate"]) == 2
    assert "give exactly one of task (a built-in task name) or data" in capsys.readouterr().err


def test_missing_local_model_file_exits_2(
    task_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-model.gguf"
    assert main(["evaluate", "--data", str(task_folder), "--lm", f"local:{missing}", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"model file not found: {missing}" in captured.err
