"""Resumable compiles: kill -9 mid-compile, run the same command again, lose nothing but what was in flight."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dspy_ext.cli import main
from dspy_ext.experiment import RunSettings, SettingsError, run

from support.fake_world import fake_world_lm, write_task
from support.slices import task_slice

REPO = Path(__file__).resolve().parents[1]
FAKE_CLI = REPO / "tests" / "support" / "fake_cli.py"


def trial_calls(folder: Path) -> int:
    """LM calls the trial log has recorded so far (task-model calls of every evaluation)."""
    path = folder / "trials.jsonl"
    if not path.exists():
        return 0
    total = 0
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError, KeyError):  # the line being written
            total += json.loads(line)["lm_calls"]
    return total


def kill_midway(argv: list[str], folder: Path, *, at_calls: int, timeout: float = 300) -> None:
    """Start ``argv``, SIGKILL it once the trial log shows ``at_calls`` calls; fail if it ends first."""
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "DSPY_EXT_LLAMA_THREADS": "1"},
    )
    deadline = time.monotonic() + timeout
    try:
        while trial_calls(folder) < at_calls:
            if proc.poll() is not None:
                pytest.fail(f"the compile ended before it could be killed: {proc.stderr.read().decode()[-800:]}")
            if time.monotonic() > deadline:
                pytest.fail("the compile did not reach the kill point in time")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (folder / "run.json").exists()  # it really was cut short


def fake_compile_argv(task_folder: Path, out: Path, *, latency: float = 0.0) -> list[str]:
    return [
        sys.executable,
        str(FAKE_CLI),
        "--latency",
        str(latency),
        "compile",
        "--data",
        str(task_folder),
        "--optimizer",
        "ape",
        "--budget",
        "120",
        "--train",
        "20",
        "--val",
        "10",
        "--threads",
        "1",
        "--adapter",
        "plain",
        "--seed",
        "0",
        "--out",
        str(out),
        "--json",
    ]


def test_kill_9_then_resume_returns_the_uninterrupted_program(tmp_path: Path) -> None:
    task_folder = write_task(tmp_path / "items", n_train=40, n_test=16)
    whole = tmp_path / "whole"
    done = subprocess.run(fake_compile_argv(task_folder, whole), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    uninterrupted = json.loads(done.stdout)

    cut = tmp_path / "cut"
    kill_midway(fake_compile_argv(task_folder, cut, latency=0.02), cut, at_calls=50)
    journaled = len((cut / "calls.jsonl").read_text().splitlines())
    assert 0 < journaled < uninterrupted["lm_calls"]
    assert (cut / "run.lock").exists()  # the killed process's lock is left behind, and taken over below

    again = subprocess.run(fake_compile_argv(task_folder, cut), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = json.loads(again.stdout)
    assert resumed["lm_calls"] == uninterrupted["lm_calls"] <= 120  # replayed calls count: the total holds
    assert resumed["replayed_calls"] >= journaled - 2  # at most the calls in flight were lost
    assert (cut / "program.json").read_text() == (whole / "program.json").read_text()
    for key in ("test_score", "val_score", "tokens"):
        assert resumed[key] == uninterrupted[key], key
    seconds = ("seconds",)
    assert {k: v for k, v in resumed["search"].items() if k not in seconds} == {
        k: v for k, v in uninterrupted["search"].items() if k not in seconds
    }


def same_lm():
    """A fresh fake LM with the same model name (the name is part of a run's identity)."""
    return fake_world_lm(name="fake/world-resume")


def test_other_settings_in_the_same_folder_are_refused_or_restarted(tmp_path: Path) -> None:
    task_folder = write_task(tmp_path / "items", n_train=40, n_test=16)
    settings = RunSettings(
        data=str(task_folder),
        optimizer="ape",
        budget=40,
        train=12,
        val=8,
        threads=1,
        adapter="plain",
        out=str(tmp_path / "run"),
    )
    first = run(settings, lm=same_lm())
    with pytest.raises(SettingsError, match=r"holds another run \(budget: 40 -> 30\); pass --restart"):
        run(settings.with_changes(budget=30), lm=same_lm())
    restarted = run(settings.with_changes(budget=30), lm=same_lm(), restart=True)
    assert restarted.summary.replayed_calls == 0 and restarted.summary.spend.lm_calls <= 30
    # The same settings again: everything is replayed, nothing reaches the model.
    lm = same_lm()
    again = run(settings.with_changes(budget=30), lm=lm)
    assert again.summary.replayed_calls == again.summary.spend.lm_calls == restarted.summary.spend.lm_calls
    assert again.summary.scores.test == restarted.summary.scores.test
    assert first.summary.budget == 40


def test_changed_data_in_the_same_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    task_folder = write_task(tmp_path / "items", n_train=40, n_test=16)
    argv = [
        "compile",
        "--data",
        str(task_folder),
        "--optimizer",
        "labeled",
        "--train",
        "12",
        "--val",
        "8",
        "--adapter",
        "plain",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(argv, lm=same_lm()) == 0
    write_task(task_folder, n_train=40, n_test=12)  # the test split changed
    capsys.readouterr()
    assert main(argv, lm=same_lm()) == 2
    assert "test changed" in capsys.readouterr().err
    assert main([*argv, "--restart"], lm=same_lm()) == 0


def test_a_second_process_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    task_folder = write_task(tmp_path / "items", n_train=40, n_test=16)
    out = tmp_path / "run"
    proc = subprocess.Popen(
        fake_compile_argv(task_folder, out, latency=0.5), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while trial_calls(out) < 5:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        other = subprocess.run(
            fake_compile_argv(task_folder, out), cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert other.returncode == 2
        assert "dspy-ext compile: error:" in other.stderr and str(proc.pid) in other.stderr
    finally:
        proc.kill()
        proc.wait(timeout=30)


@pytest.mark.embedded
def test_embedded_kill_9_resume_stays_within_the_budget(tmp_path: Path, local_lm) -> None:
    """SmolLM2: kill a ``--budget 120`` compile at about half its budget, run it again: at most 120 calls in all."""
    folder = task_slice(tmp_path / "sentiment-slice", n_train=40, n_test=10)
    out = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "dspy_ext",
        "compile",
        "--data",
        str(folder),
        "--optimizer",
        "ape",
        "--budget",
        "120",
        "--train",
        "20",
        "--val",
        "10",
        "--threads",
        "1",
        "--seed",
        "0",
        "--out",
        str(out),
        "--json",
    ]
    kill_midway(argv, out, at_calls=50, timeout=600)
    journaled = len((out / "calls.jsonl").read_text().splitlines())
    again = subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "DSPY_EXT_LLAMA_THREADS": "1"}
    )
    assert again.returncode == 0, again.stderr[-2000:]
    summary = json.loads(again.stdout)
    assert summary["lm_calls"] <= 120
    assert summary["replayed_calls"] >= journaled - 2 > 0
