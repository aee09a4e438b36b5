"""``dspy-ext export``: sources, metadata, refusals and ``--verify`` (fake LM and the embedded model)."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import dspy
import pytest

from dspy_ext.cli import main
from dspy_ext.data import dataset_fingerprint, load_task
from dspy_ext.export import load
from programs import DraftThenAnswer, Transform

pytestmark = pytest.mark.filterwarnings("ignore:Passing OpenAI-style message:DeprecationWarning")


def run_cli(argv: list[str]) -> int:
    """Run ``dspy-ext export ARGV`` as the command line does."""
    return main(["export", *argv])


def fails(argv: list[str], capsys: pytest.CaptureFixture, pattern: str) -> None:
    """``dspy-ext export ARGV`` exits 2 with one error line matching ``pattern``, and prints nothing on stdout."""
    capsys.readouterr()  # what earlier commands printed
    assert run_cli(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("dspy-ext export: error: ") and len(captured.err.strip().splitlines()) == 1
    assert re.search(pattern, captured.err), captured.err


def _compiled(task_name: str = "sentiment") -> dspy.Module:
    task = load_task(task_name)
    student = Transform(instructions=task.baseline_instruction)
    return dspy.LabeledFewShot(k=3).compile(student, trainset=task.train)


@pytest.fixture
def program_json(tmp_path: Path) -> Path:
    path = tmp_path / "program.json"
    _compiled().save(str(path))
    return path


@pytest.fixture
def fake_local(monkeypatch: pytest.MonkeyPatch, fake_lm):
    """``--lm fake`` builds a deterministic fake LM; returns a dict holding the LMs made."""
    made: dict[str, dspy.LM] = {}
    state = {"responder": lambda messages: "positive" if len(messages[-1]["content"]) % 2 else "negative"}

    def make_lm(name: str = "local", **kwargs) -> dspy.LM:
        lm = fake_lm(lambda messages: state["responder"](messages))
        made[name] = lm
        return lm

    monkeypatch.setattr("dspy_ext.lm.make_lm", make_lm)
    made["_state"] = state
    return made


def _json_out(capsys: pytest.CaptureFixture) -> dict:
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    return json.loads(lines[-1])


def test_export_verify_json_with_a_fake_lm(tmp_path: Path, program_json: Path, fake_local, capsys) -> None:
    out = tmp_path / "out" / "sentiment.json"
    code = run_cli(
        [
            str(program_json),
            "--out",
            str(out),
            "--task",
            "sentiment",
            "--lm",
            "fake",
            "--adapter",
            "plain",
            "--verify",
            "--limit",
            "8",
            "--json",
        ]
    )
    assert code == 0
    result = _json_out(capsys)
    assert result["verified"] is True and result["passed"] is True
    assert result["n"] == 8
    assert result["dspy_score"] == result["runtime_score"]
    assert result["rows_differing"] == 0
    assert result["lm_calls"] == {"dspy": 8, "runtime": 8}
    art = load(out)
    assert art.names == ("predict",)
    assert len(art.predictor("predict")["demos"]) == 3
    assert art.metadata["data_hash"] == dataset_fingerprint(load_task("sentiment").train)
    markdown = out.with_suffix(".md").read_text(encoding="utf-8")
    assert art.content_hash in markdown and "⟦input:input⟧" in markdown


def test_run_folder_metadata_is_copied(tmp_path: Path, fake_local, capsys) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _compiled().save(str(run_dir / "program.json"))
    # The shape `dspy-ext compile` writes.
    (run_dir / "run.json").write_text(
        json.dumps(
            {
                "task": "sentiment",
                "optimizer": "ape",
                "seed": 0,
                "budget": 400,
                "config": {"pool": 8},
                "lm": "local/x",
                "adapter": "PlainAdapter",
                "val_score": 61.5,
                "test_score": 58.0,
                "baseline_test_score": 50.0,
                "data_hash": "d" * 64,
                "search": {"long": ["ignored"]},
            }
        ),
        encoding="utf-8",
    )
    out = tmp_path / "a.json"
    assert (
        run_cli(
            [str(run_dir), "--out", str(out), "--task", "sentiment", "--lm", "fake", "--adapter", "plain", "--json"]
        )
        == 0
    )
    result = _json_out(capsys)
    assert result["verified"] is False and result["dspy_score"] is None and result["runtime_score"] is None
    meta = load(out).metadata
    assert (meta["optimizer"], meta["optimizer_settings"], meta["seed"]) == ("ape", {"pool": 8}, 0)
    assert (meta["dev_score"], meta["test_score"], meta["baseline_test_score"]) == (61.5, 58.0, 50.0)
    assert (meta["data_hash"], meta["task"], meta["program"]) == ("d" * 64, "sentiment", "transform")
    assert "search" not in meta


def test_run_folder_generic_metadata_and_task_check(tmp_path: Path, fake_local, capsys) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _compiled().save(str(run_dir / "program.json"))
    (run_dir / "run.json").write_text(
        json.dumps(
            {
                "optimizer": "LabeledFewShot",
                "optimizer_settings": {"k": 3},
                "metadata": {"dev_score": 70.0},
            }
        ),
        encoding="utf-8",
    )
    out = tmp_path / "a.json"
    assert run_cli([str(run_dir), "--out", str(out), "--task", "sentiment", "--lm", "fake"]) == 0
    meta = load(out).metadata
    assert (meta["optimizer"], meta["optimizer_settings"], meta["dev_score"]) == ("LabeledFewShot", {"k": 3}, 70.0)
    assert load(out).predictor("predict")["adapter"] == "ChatAdapter"  # a non-local LM: DSPy's default
    (run_dir / "run.json").write_text(json.dumps({"task": "larger_animal"}), encoding="utf-8")
    fails(
        [str(run_dir), "--out", str(out), "--task", "sentiment", "--lm", "fake"],
        capsys,
        "run.json says the task is 'larger_animal'",
    )


def test_pickles_are_refused(tmp_path: Path, fake_local, capsys) -> None:
    pickle_file = tmp_path / "program.pkl"
    pickle_file.write_bytes(b"\x80\x04\x95 not to be loaded")
    fails(
        [str(pickle_file), "--out", str(tmp_path / "a.json"), "--task", "sentiment", "--lm", "fake"],
        capsys,
        "refusing to load a pickle",
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "program.pkl").write_bytes(b"\x80\x04")
    fails(
        [str(run_dir), "--out", str(tmp_path / "a.json"), "--task", "sentiment", "--lm", "fake"],
        capsys,
        r"no program.json \(it has \['program.pkl'\]: pickles are never loaded",
    )
    assert not (tmp_path / "a.json").exists()


def test_bad_sources_and_options(tmp_path: Path, program_json: Path, fake_local, capsys) -> None:
    base = ["--task", "sentiment", "--lm", "fake"]
    fails([str(tmp_path / "missing.json"), "--out", str(tmp_path / "a.json"), *base], capsys, "no such file or folder")
    fails([str(program_json), "--out", str(tmp_path / "a.pkl"), *base], capsys, "use a .json file name")
    broken = tmp_path / "broken.json"
    broken.write_text('{"predict": ', encoding="utf-8")
    fails([str(broken), "--out", str(tmp_path / "a.json"), *base], capsys, "not valid JSON")
    fails(
        [str(program_json), "--out", str(tmp_path / "a.json"), *base, "--program", "two_step"],
        capsys,
        r"holds predictors \['predict'\], but program two_step has "
        r"\['draft', 'answer'\]",
    )


def test_state_from_another_program_is_refused(tmp_path: Path, fake_local, capsys) -> None:
    path = tmp_path / "two_step.json"
    DraftThenAnswer(instructions="x").save(str(path))
    fails(
        [str(path), "--out", str(tmp_path / "a.json"), "--task", "sentiment", "--lm", "fake"],
        capsys,
        "pass the program and task the state was compiled with",
    )


def test_verify_fails_loudly_when_the_runtime_disagrees(tmp_path: Path, program_json: Path, fake_local, capsys) -> None:
    flip = itertools.count()
    fake_local["_state"]["responder"] = lambda messages: "positive" if next(flip) < 6 else "negative"
    argv = [
        str(program_json),
        "--out",
        str(tmp_path / "a.json"),
        "--task",
        "sentiment",
        "--lm",
        "fake",
        "--adapter",
        "plain",
        "--verify",
        "--limit",
        "6",
        "--threads",
        "1",
    ]
    assert run_cli(argv) == 1
    captured = capsys.readouterr()
    assert "VERIFY FAILED" in captured.err and "does NOT reproduce" in captured.err
    assert "verify sentiment/test n=6" in captured.out

    flip = itertools.count()
    fake_local["_state"]["responder"] = lambda messages: "positive" if next(flip) < 6 else "negative"
    assert run_cli([*argv, "--tolerance", "100"]) == 0


# --- the embedded model (10 LM calls) ----------------------------------------------------------


@pytest.mark.embedded
def test_embedded_export_verify_json(tmp_path: Path, program_json: Path, local_lm, capsys) -> None:
    out = tmp_path / "sentiment.json"
    code = run_cli(
        [
            str(program_json),
            "--out",
            str(out),
            "--task",
            "sentiment",
            "--lm",
            "local",
            "--no-cache",
            "--verify",
            "--limit",
            "5",
            "--json",
        ]
    )
    result = _json_out(capsys)
    assert code == 0, result
    assert result["n"] == 5
    assert result["dspy_score"] == result["runtime_score"]
    assert result["rows_differing"] == 0
    assert result["lm_calls"] == {"dspy": 5, "runtime": 5}
    assert load(out).predictor("predict")["adapter"] == "PlainAdapter"
    assert load(out).lm["model"].startswith("local/")
