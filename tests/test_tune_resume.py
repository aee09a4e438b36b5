"""A study survives ``kill -9``: completed trials stay, the in-flight one is re-run, the study goes on.

A subprocess runs :class:`OptunaTuner` on a SQLite study (heartbeat every
second); the test kills it with SIGKILL while a trial is running, waits out the
grace period and resumes the study in this process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dspy
import pytest

from dspy_ext.adapters import PlainAdapter
from dspy_ext.tuning import OptunaTuner

import tune_fake as F

HERE = Path(__file__).resolve().parent


def _trials(url: str, study: str) -> list | None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(url)
    try:
        if study not in optuna.study.get_all_study_names(storage):
            return None
        return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    except Exception:  # the victim may hold the write lock for a moment
        return None
    finally:
        storage.engine.dispose()


def test_kill_9_loses_at_most_the_running_trial(tmp_path: Path) -> None:
    url = "sqlite:///" + str(tmp_path / "study.db")
    env = {**os.environ, "PYTHONPATH": str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    victim = subprocess.Popen(
        [sys.executable, str(HERE / "tune_fake.py"), "study", url, "killed", "40", "0.03", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    try:
        while True:
            if victim.poll() is not None:
                pytest.fail(f"the study process ended early: {victim.stderr.read()[-2000:]}")
            trials = _trials(url, "killed") or []
            complete = [t for t in trials if t.state.name == "COMPLETE"]
            # a trial that has started its objective (its attributes are being written) and is far from done
            running = [t for t in trials if t.state.name == "RUNNING" and "worker" in t.user_attrs]
            if len(complete) >= 3 and running:
                break
            if time.time() > deadline:
                pytest.fail("the study process made no progress")
            time.sleep(0.05)
        os.kill(victim.pid, signal.SIGKILL)
    finally:
        if victim.poll() is None:
            victim.kill()
        victim.wait()
        victim.stderr.close()
    assert victim.returncode == -signal.SIGKILL

    before = _trials(url, "killed")
    done_before = {t.number: (t.params, t.value) for t in before if t.state.name == "COMPLETE"}
    killed = [t for t in before if t.state.name == "RUNNING"]
    assert len(killed) == 1  # exactly the in-flight trial is left hanging
    # Wait out the grace period (2 x the 1 s heartbeat). SQLite's CURRENT_TIMESTAMP has one-second
    # resolution, so 2.5 s can read as exactly 2 s, which is not yet stale: wait 4 s.
    time.sleep(4.0)

    target = len(done_before) + 3
    tuner = OptunaTuner(
        F.accuracy,
        space=F.LABELED_SPACE,
        n_trials=target,
        storage=url,
        study_name="killed",
        num_threads=1,
        heartbeat_interval=1,
    )
    with dspy.context(lm=F.make_lm(), adapter=PlainAdapter()):
        session = tuner.open(F.student(), trainset=F.trainset(), valset=F.devset())
        session.optimize()
    after = {t.number: t for t in session.study.get_trials(deepcopy=False)}
    # No completed trial is lost or changed.
    for number, (params, value) in done_before.items():
        assert after[number].state.name == "COMPLETE"
        assert (after[number].params, after[number].value) == (params, value)
    # The killed trial is marked failed and re-run with the same parameters.
    dead = after[killed[0].number]
    assert dead.state.name == "FAIL"
    retries = [t for t in after.values() if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE" and retries[0].params == killed[0].params
    # The study went on to its target; n_trials counts every trial, resumed ones included.
    summary = session.results.summary()
    assert summary.n_complete == target and summary.n_failed == 1 and summary.n_running == 0
    assert summary.n_trials == len(after) == target + 1
    assert summary.best_value == max(t.value for t in after.values() if t.state.name == "COMPLETE")
