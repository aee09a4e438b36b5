"""Two worker processes on one study in a real PostgreSQL server (Optuna's own distributed mode).

The server is started here with ``initdb``/``pg_ctl`` on a free loopback port
(Debian's ``postgresql`` package; ``.ci/run`` installs it); the test is skipped
only when no PostgreSQL binaries exist. ``dspy-ext tune --workers 2`` runs with
the fake LM (see :mod:`tune_fake`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pg_server import PostgresServer, find_binaries

import tune_fake as F

HERE = Path(__file__).resolve().parent

pytestmark = [
    pytest.mark.skipif(find_binaries() is None, reason="PostgreSQL binaries (initdb, pg_ctl) are not installed"),
    pytest.mark.skipif(importlib.util.find_spec("psycopg2") is None, reason="psycopg2 is not installed"),
]


def test_two_workers_share_one_postgres_study(tmp_path: Path) -> None:
    import dspy
    import optuna

    from dspy_ext.adapters import PlainAdapter
    from dspy_ext.evaluation import Evaluator
    from metrics import exact_match

    task = F.write_task(tmp_path / "items")
    space = tmp_path / "space.yaml"
    space.write_text("optimizers:\n  labeled:\n    k: {int: [0, 3]}\npruner: none\neval_minibatch: 5\n")
    env = {
        **os.environ,
        "PYTHONPATH": str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "DSPY_EXT_TUNE_FAKE": "1",
        "DSPY_EXT_TUNE_FAKE_LATENCY": "0.02",
    }
    with PostgresServer() as pg:
        url = pg.create_database("optuna")
        cmd = [
            sys.executable,
            str(HERE / "tune_fake.py"),
            "cli",
            "tune",
            "--data",
            str(task),
            "--adapter",
            "plain",
            "--space",
            str(space),
            "--storage",
            url,
            "--study",
            "shared",
            "--trials",
            "8",
            "--workers",
            "2",
            "--train",
            "20",
            "--val",
            "10",
            "--threads",
            "1",
            "--heartbeat",
            "2",
            "--out",
            str(tmp_path / "out"),
            "--json",
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads(proc.stdout)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name="shared", storage=url)
        trials = study.get_trials(deepcopy=False)
        best_value = study.best_value

    # Both processes worked on the study.
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2
    # No trial is duplicated: numbers and ids are unique, each trial ran once in one worker and
    # finished; the two workers together stopped at the target (Optuna may overshoot by workers - 1).
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert len({t._trial_id for t in trials}) == len(trials)
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert 8 <= len(trials) <= 9
    files = [t.user_attrs["program_file"] for t in trials]
    assert len(set(files)) == len(files) and all(Path(f).exists() for f in files)
    # The best value is the same everywhere: the CLI's summary, Optuna's study, the best trial's stored
    # scores, and a fresh evaluation of the saved best program.
    assert summary["n_trials"] == len(trials) and summary["workers"] == 2 and summary["study"] == "shared"
    assert summary["storage"] == url
    assert summary["best_value"] == best_value == max(t.value for t in trials)
    best = summary["best_trial"]
    assert best["value"] == best["scores"]["dev"] == best_value
    from dspy_ext.data import load_task, split_train_val

    data = load_task(data=str(task), seed=0)
    _, dev = split_train_val(data.train, 20, 10, seed=0)
    program = F.student()
    program.load(summary["best_program"])
    with dspy.context(lm=F.make_lm(), adapter=PlainAdapter()):
        rescored = Evaluator(exact_match, num_threads=1).evaluate(program, dev)
    assert rescored.score == best_value
