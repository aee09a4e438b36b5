"""MLflow tracking of a comparison and of a study: a parent run with a child run per cell or trial.

The store is MLflow's SQL store on a SQLite file, read back with ``MlflowClient``; the compiles and
trials run on the fake worlds (``support.fake_world``, ``tune_fake``).
"""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import pytest

from dspy_ext.cli import main

import tune_fake as F
from support.fake_world import fake_world_lm, write_task
from support.mlflow_server import MlflowServer

pytest.importorskip("mlflow")

PARENT_TAG = "mlflow.parentRunId"
COMPARE_FILES = {"results.md", "results.csv", "score_vs_calls.png", "results.json"}
CELL_FILES = {"program.json", "report.md", "trials.jsonl", "run.json", "settings.yaml", "prompt.json"}


def _client(store: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=store)


#: A 2 x 2 comparison of APE and labeled few-shot on the fake world (``--optimizers ape,labeled ...``).
FAKE_COMPARE = {"optimizers": "ape,labeled", "budget": 40, "seeds": 2, "train": 10, "val": 8, "threads": 1}


def compare_argv(task_folder: Path, out: Path, *extra: str) -> list[str]:
    flags = [item for key, value in FAKE_COMPARE.items() for item in (f"--{key}", str(value))]
    return ["compare", "--data", str(task_folder), *flags, "--adapter", "plain", "--out", str(out), *extra]


def check_comparison(store: str, experiment: str, out: Path, tmp_path: Path) -> None:
    """One finished parent run of ``out``'s comparison, one finished child per cell, the parent's artifacts."""
    client = _client(store)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.info.run_name == out.name
    assert parent.data.tags["dspy_ext.kind"] == "compare"
    assert parent.data.params["optimizers"] == '["ape", "labeled"]' and parent.data.params["seeds"] == "2"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == COMPARE_FILES
    results = json.loads((out / "results.json").read_text())
    for row in results["summary"]:
        assert parent.data.metrics[f"test_mean/{row['optimizer']}"] == row["test_mean"]
    children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["ape-s0", "ape-s1", "labeled-s0", "labeled-s1"]
    rows = {(row["optimizer"], row["seed"]): row for row in results["rows"]}
    for child in children:
        assert child.info.status == "FINISHED"
        row = rows[(child.data.params["optimizer"], int(child.data.params["seed"]))]
        assert (
            child.data.metrics["test_score"] == row["test_score"] and child.data.metrics["lm_calls"] == row["lm_calls"]
        )
        assert CELL_FILES - {"trials.jsonl"} <= {a.path for a in client.list_artifacts(child.info.run_id)}
    plot = client.download_artifacts(parent.info.run_id, "score_vs_calls.png", dst_path=str(tmp_path))
    assert Path(plot).read_bytes() == (out / "score_vs_calls.png").read_bytes()


def test_a_comparison_is_a_parent_run_with_a_child_run_per_cell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # MLflow keeps a SQL store's artifacts in ./mlruns
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    task_folder = write_task(tmp_path / "items", n_train=40, n_test=16)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "cmp"
    lm_name = "fake/world-mlflow-compare"  # one model name: the second comparison finds its cells done
    assert main(compare_argv(task_folder, out, "--mlflow", store), lm=fake_world_lm(name=lm_name)) == 0
    text = capsys.readouterr().out
    check_comparison(store, "items", out, tmp_path)
    client = _client(store)
    (parent,) = [r for r in client.search_runs(["1"]) if PARENT_TAG not in r.data.tags]
    assert f"MLflow run {parent.info.run_id} in {store}, with a child run per cell" in text
    # The cells' compile runs have what a compile's own run has: APE's trial metrics stepped by calls.
    ape = client.search_runs(["1"], filter_string="params.optimizer = 'ape'")
    assert len(ape) == 2 and all(client.get_metric_history(r.info.run_id, "trial/val/score") for r in ape)
    # A resumed comparison is a new parent run with no child: its cells were done earlier.
    again_argv = compare_argv(task_folder, out, "--mlflow", store, "--mlflow-experiment", "again")
    assert main(again_argv, lm=fake_world_lm(name=lm_name)) == 0
    again = client.search_runs([client.get_experiment_by_name("again").experiment_id])
    assert len(again) == 1 and again[0].info.status == "FINISHED" and again[0].data.metrics["cells"] == 4


def test_a_study_is_a_parent_run_with_a_child_run_per_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import dspy_ext.lm

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setattr(dspy_ext.lm, "make_lm", lambda name="local", **kw: F.make_lm())
    task = F.write_task(tmp_path / "items")
    space = tmp_path / "space.yaml"
    space.write_text("optimizers:\n  labeled:\n    k: {int: [0, 3]}\npruner: none\neval_minibatch: 5\n")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["tune", "--data", str(task), "--adapter", "plain", "--space", str(space)]
    argv += ["--storage", str(tmp_path / "optuna.db"), "--train", "20", "--val", "10", "--threads", "1"]
    assert main([*argv, "--trials", "3", "--mlflow", store]) == 0
    assert "with a child run per trial" in capsys.readouterr().out
    assert main([*argv, "--trials", "5", "--mlflow", store, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    client = _client(store)
    runs = client.search_runs([client.get_experiment_by_name("items").experiment_id])
    parents = sorted((r for r in runs if PARENT_TAG not in r.data.tags), key=lambda r: r.info.start_time)
    assert len(parents) == 2 and all(p.data.tags["dspy_ext.kind"] == "tune" for p in parents)
    assert all(p.info.run_name == "tune-items" and p.info.status == "FINISHED" for p in parents)
    assert parents[1].data.metrics["best_value"] == summary["best_value"]
    assert parents[1].data.metrics["trials"] == 5
    assert {"summary.json", "tune.png", "best_program.json", "settings.yaml"} <= {
        a.path for a in client.list_artifacts(parents[1].info.run_id)
    }
    import optuna

    study = optuna.load_study(study_name="tune-items", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    trials = {t.number: t for t in study.trials}
    # Each run of the study has a child per trial it finished: 3, then the 2 more.
    for parent, numbers in zip(parents, ([0, 1, 2], [3, 4])):
        children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
        assert sorted(r.info.run_name for r in children) == [f"trial-{n}" for n in numbers]
        for child in children:
            trial = trials[int(child.data.tags["dspy_ext.trial_number"])]
            assert child.info.status == "FINISHED"
            assert child.data.params == {key: str(value) for key, value in trial.params.items()}
            assert child.data.metrics["value"] == trial.value
            assert child.data.metrics["lm_calls"] == trial.user_attrs["lm_calls"]


def test_a_comparison_logged_to_a_real_mlflow_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``dspy-ext compare --mlflow http://127.0.0.1:PORT`` against ``mlflow server`` (SQLite store, artifacts folder)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    task_folder = write_task(tmp_path / "items", n_train=40, n_test=16)
    out = tmp_path / "cmp"
    with MlflowServer(tmp_path / "server") as server:
        argv = compare_argv(task_folder, out, "--mlflow", server.uri, "--mlflow-experiment", "served")
        assert main(argv, lm=fake_world_lm()) == 0
        assert f"in {server.uri}, with a child run per cell" in capsys.readouterr().out
        check_comparison(server.uri, "served", out, tmp_path)
        # The artifacts went through the server into its artifacts folder, not into this folder.
        stored = {p.name for p in (tmp_path / "server" / "artifacts").rglob("*") if p.is_file()}
        assert stored >= COMPARE_FILES | CELL_FILES and not (tmp_path / "mlruns").exists()


def test_a_run_file_tracking_key_on_a_server_that_is_down_costs_the_comparison_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    with socket.socket() as probe:  # a port nothing listens on: bound, then released
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "run.yaml").write_text(f"tracking:\n  mlflow: http://127.0.0.1:{port}\n")
    task_folder = write_task(tmp_path / "items", n_train=40, n_test=16)
    argv = compare_argv(task_folder, tmp_path / "cmp", "--config", str(tmp_path / "run.yaml"), "--json")
    with caplog.at_level(logging.WARNING):
        assert main(argv, lm=fake_world_lm()) == 0
    warnings = [r.getMessage() for r in caplog.records if r.name == "dspy_ext.experiment.mlflow_tracking"]
    assert len(warnings) == 1, warnings  # not one more per cell
    assert f"MLflow tracking at http://127.0.0.1:{port} is off for this comparison" in warnings[0]
    assert len(json.loads((tmp_path / "cmp" / "results.json").read_text())["rows"]) == 4
