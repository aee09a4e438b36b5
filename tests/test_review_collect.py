"""Collecting outputs to review: N inputs x K samples into the store, resumable; unlabelled inputs files."""

from __future__ import annotations

import itertools
from pathlib import Path

import dspy
import pytest

from dspy_ext.adapters import PlainAdapter
from dspy_ext.data import load_task
from dspy_ext.review import InputsFileError, ReviewStore, collect, load_inputs_jsonl, prompt_version
from programs import Transform


def test_k_samples_per_input_are_recorded_and_a_rerun_reuses_them(fake_lm) -> None:
    counter = itertools.count()
    # Odd calls answer differently, so the K samples of an input disagree.
    lm = fake_lm(lambda messages: "positive" if next(counter) % 2 == 0 else "negative")
    program = Transform(instructions="Classify the sentiment.")
    rows = [dspy.Example(input=f"review {i}", output="positive").with_inputs("input") for i in range(3)]
    store = ReviewStore(":memory:")
    with dspy.context(adapter=PlainAdapter()):
        summary = collect(program, rows, store=store, input_keys=("input",), output_keys=("output",), samples=2, lm=lm)
    assert (summary.new_outputs, summary.reused, summary.errors) == (6, 0, [])
    assert summary.prompt_version == prompt_version(program)
    items = store.items()
    assert len(items) == 6 and {i.output_text for i in items} == {"positive", "negative"}
    assert all(i.gold == {"output": "positive"} and i.prompt_versions == [summary.prompt_version] for i in items)
    assert lm.engine.calls == 6
    with dspy.context(adapter=PlainAdapter()):
        again = collect(program, rows, store=store, input_keys=("input",), output_keys=("output",), samples=2, lm=lm)
    assert (again.new_outputs, again.reused, lm.engine.calls) == (0, 6, 6)
    # A new prompt that makes the same outputs adds samples, not items: their grades carry over.
    store.set_grade(items[0].key, "good")
    program.predict.signature = program.predict.signature.with_instructions("Say positive or negative.")
    with dspy.context(adapter=PlainAdapter()):
        third = collect(program, rows[:1], store=store, input_keys=("input",), output_keys=("output",), lm=lm)
    assert third.prompt_version != summary.prompt_version and third.new_outputs == 1
    assert len(store.items()) <= 7 and store.item(items[0].key).grade == "good"


def test_a_failing_sample_is_reported_and_the_rest_goes_on(fake_lm) -> None:
    lm = fake_lm(lambda messages: "fine", fail_when=lambda messages: "bad row" in messages[-1]["content"])
    store = ReviewStore(":memory:")
    rows = [{"input": "good row"}, {"input": "bad row"}]
    with dspy.context(adapter=PlainAdapter()):
        summary = collect(Transform(), rows, store=store, input_keys=("input",), lm=lm)
    assert summary.new_outputs == 1 and len(summary.errors) == 1 and "row 2 sample 0" in summary.errors[0]
    assert store.items()[0].gold is None


def test_unlabelled_inputs_file(tmp_path: Path) -> None:
    path = tmp_path / "inputs.jsonl"
    path.write_text('{"input": "first"}\n\n{"input": "second", "output": "known"}\n')
    assert load_inputs_jsonl(path, ["input"]) == [{"input": "first"}, {"input": "second", "output": "known"}]
    path.write_text('{"input": "first"}\n{"text": "no input"}\n')
    with pytest.raises(InputsFileError, match=r"inputs.jsonl, line 2: missing input field\(s\) \['input'\]"):
        load_inputs_jsonl(path, ["input"])
    path.write_text('{"input": "first"\n')
    with pytest.raises(InputsFileError, match="line 1: not valid JSON"):
        load_inputs_jsonl(path, ["input"])
    with pytest.raises(InputsFileError, match="no such inputs file"):
        load_inputs_jsonl(tmp_path / "missing.jsonl", ["input"])


@pytest.mark.embedded
def test_collect_on_the_embedded_model(local_lm) -> None:
    task = load_task("sentiment")
    store = ReviewStore(":memory:")
    program = Transform(instructions=task.baseline_instruction)
    program.predict.demos = task.train[:3]
    with dspy.context(adapter=PlainAdapter()):
        summary = collect(
            program,
            task.test[:3],
            store=store,
            input_keys=task.input_keys,
            output_keys=task.output_keys,
            samples=2,
            temperature=0.8,
            lm=local_lm,
        )
    assert summary.new_outputs == 6 and not summary.errors
    samples = [s for i in {it.input_id for it in store.items()} for s in store.samples_of_input(i)]
    assert len(samples) == 6 and all(item.gold for item in store.items())
    assert all(item.output_text.strip() for item in store.items())


@pytest.mark.embedded
def test_cli_collects_from_a_run_folder_and_from_a_state_file(tmp_path: Path, capsys, monkeypatch) -> None:
    import json

    from dspy_ext.cli import main
    from programs import build_program

    monkeypatch.setenv("DSPY_EXT_LLAMA_THREADS", "1")
    task = load_task("sentiment")
    program = build_program(
        "transform",
        input_keys=task.input_keys,
        output_keys=task.output_keys,
        instructions="Answer positive or negative.",
    )
    program.predict.demos = task.train[:3]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    program.save(str(run_dir / "program.json"))
    (run_dir / "run.json").write_text(json.dumps({"task": "sentiment", "program": "transform"}))

    assert main(["review", str(run_dir), "--n", "2", "--samples", "2", "--no-serve", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["store"] == str(run_dir / "review.sqlite") and result["collect"]["new_outputs"] == 4
    assert result["collect"]["prompt_version"] == prompt_version(program)
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text('{"input": "I loved every minute."}\n{"input": "Dull and far too long."}\n')
    store = tmp_path / "s.sqlite"
    argv = [
        "review",
        "--task",
        "sentiment",
        "--state",
        str(run_dir / "program.json"),
        "--inputs",
        str(inputs),
        "--store",
        str(store),
        "--no-serve",
        "--json",
    ]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["collect"]["new_outputs"] == 2
    assert main(argv) == 0  # run again: resumed, nothing made twice
    assert json.loads(capsys.readouterr().out)["collect"]["reused"] == 2
    with ReviewStore(store) as s:
        assert sorted(i.inputs["input"] for i in s.items()) == ["Dull and far too long.", "I loved every minute."]
        assert all(i.gold is None for i in s.items())  # unlabelled inputs have no gold
    assert main(["review", "--task", "sentiment", "--state", str(tmp_path / "missing.json"), "--no-serve"]) == 2
    assert "no such file" in capsys.readouterr().err
