"""MLflow tracking of a compile: one MLflow run per compile, read back from a real tracking store.

The store is MLflow's own SQL store on a SQLite file (``sqlite:///<tmp>/mlflow.db``), read back with
``MlflowClient``; the compiles run on the fake world (``support.fake_world``), and once on the embedded model.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dspy
import pytest

import dspy_ext
from dspy_ext.adapters import PlainAdapter
from dspy_ext.cli import main
from dspy_ext.evaluation import Evaluator
from dspy_ext.experiment import RunResult, RunSettings, RunSummary, resolve_metric, run
from dspy_ext.experiment.mlflow_tracking import MISSING_EXTRA, final_metrics
from dspy_ext.lm.metering import ModelUnavailable

from support.fake_world import dataset, dying_lm, fake_world_lm, write_task
from support.slices import task_slice

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
RUN_FILES = {"program.json", "report.md", "trials.jsonl", "run.json", "settings.yaml", "prompt.json"}


def _client(store: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=store)


#: The fake-world compile every test here runs (``--optimizer ape --budget 40 ...`` on the command line).
FAKE_COMPILE = {"optimizer": "ape", "budget": 40, "train": 12, "val": 8, "threads": 1, "adapter": "plain"}


def _settings(task_folder: Path, out: Path, **changes) -> RunSettings:
    return RunSettings(data=str(task_folder), out=str(out), **{**FAKE_COMPILE, **changes})


def _copy_store(store_db: Path, folder: Path) -> str:
    """A tracking store in ``folder``: a copy of an empty, migrated one (MLflow's migrations take seconds)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(store_db, folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"


@dataclass
class Tracked:
    """A tracked compile on the fake world, the same compile untracked, and the store it went to."""

    store: str
    empty_store: Path
    folder: Path
    task_folder: Path
    result: RunResult
    plain: RunResult
    run_id: str


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tracked]:
    pytest.importorskip("mlflow")
    root = tmp_path_factory.mktemp("mlflow")
    empty = root / "empty" / "mlflow.db"
    empty.parent.mkdir()
    task_folder = write_task(root / "items", n_train=40, n_test=16)
    with pytest.MonkeyPatch.context() as patch:
        # MLflow keeps a SQL store's artifacts in ./mlruns, and its Default experiment's (the one autolog
        # writes to) where the store was created: every copy of the empty store keeps them under root.
        patch.chdir(root)
        _client(f"sqlite:///{empty}").search_experiments()  # creates and migrates the store
        store = _copy_store(empty, root)
        result = run(_settings(task_folder, root / "run", tracking={"mlflow": store}), lm=fake_world_lm())
        plain = run(_settings(task_folder, root / "plain"), lm=fake_world_lm())
        runs = _client(store).search_runs([_client(store).get_experiment_by_name("items").experiment_id])
        assert len(runs) == 1  # one compile, one MLflow run (the untracked one is not there)
        yield Tracked(store, empty, root / "run", task_folder, result, plain, runs[0].info.run_id)


def test_a_compile_is_one_mlflow_run_with_params_tags_and_files(tracked: Tracked) -> None:
    client = _client(tracked.store)
    mlrun = client.get_run(tracked.run_id)
    summary = tracked.result.summary
    assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == "run"
    params = mlrun.data.params
    assert (params["optimizer"], params["budget"], params["seed"], params["train"], params["val"]) == (
        "ape",
        "40",
        "0",
        "12",
        "8",
    )
    assert params["adapter"] == "plain" and params["data"] == str(tracked.task_folder)
    # The optimizer's resolved config, every key with its value, as run.json has it.
    config = {key.removeprefix("config."): value for key, value in params.items() if key.startswith("config.")}
    assert config == {key: json.dumps(value) for key, value in summary.config.items()}
    assert "tracking" not in params and "tracking.mlflow" not in params  # a URI may hold credentials
    tags = mlrun.data.tags
    assert tags["dspy_ext.version"] == dspy_ext.__version__
    assert tags["dspy_ext.data_hash"] == summary.data_hash and tags["dspy_ext.optimizer"] == "ape"
    assert tags["dspy_ext.run_folder"] == str(tracked.folder.resolve())
    assert {a.path for a in client.list_artifacts(tracked.run_id)} == RUN_FILES
    for name in ("program.json", "report.md", "trials.jsonl"):
        logged = Path(client.download_artifacts(tracked.run_id, name, dst_path=str(tracked.folder.parent)))
        assert logged.read_text() == (tracked.folder / name).read_text(), name
    prompt = dspy_ext.runtime.load(client.download_artifacts(tracked.run_id, "prompt.json"))
    assert list(prompt.names) == ["predict"] and prompt.metadata["test_score"] == summary.scores.test


def test_trial_metrics_are_stepped_by_the_lm_calls_spent_so_far(tracked: Tracked) -> None:
    client = _client(tracked.store)
    rows = [json.loads(line) for line in (tracked.folder / "trials.jsonl").read_text().splitlines()]
    assert {row["split"] for row in rows} == {"train", "val"}
    for split in ("train", "val"):
        mine = [row for row in rows if row["split"] == split]
        scores = client.get_metric_history(tracked.run_id, f"trial/{split}/score")
        best = client.get_metric_history(tracked.run_id, f"trial/{split}/best")
        steps = [m.step for m in scores]
        assert steps == [row["calls_so_far"] for row in mine] and steps == sorted(steps), split
        assert steps[0] > 0 and steps[-1] <= tracked.result.summary.spend.lm_calls
        assert [m.value for m in scores] == [row["score"] for row in mine]
        assert [m.value for m in best] == [max(row["score"] for row in mine[: i + 1]) for i in range(len(mine))]
    # A step is the whole compile's calls: prompt-model calls included, so steps grow faster than
    # the evaluations' own calls add up.
    evaluated = sum(row["lm_calls"] for row in rows)
    assert rows[-1]["calls_so_far"] >= evaluated


def test_final_metrics_are_the_run_summary(tracked: Tracked) -> None:
    metrics = _client(tracked.store).get_run(tracked.run_id).data.metrics
    summary = tracked.result.summary
    scores, spend = summary.scores, summary.spend
    assert {k: metrics[k] for k in ("val_score", "test_score", "baseline_test_score", "zero_shot_test_score")} == {
        "val_score": scores.val,
        "test_score": scores.test,
        "baseline_test_score": scores.baseline_test,
        "zero_shot_test_score": scores.zero_shot_test,
    }
    assert (metrics["lm_calls"], metrics["tokens"], metrics["usd"]) == (spend.lm_calls, spend.tokens, 0.0)
    assert metrics["task_calls"] + metrics["prompt_calls"] == spend.lm_calls and metrics["prompt_calls"] > 0


def test_tracking_changes_nothing_the_run_computes(tracked: Tracked) -> None:
    tracked_summary, plain_summary = tracked.result.summary.to_dict(), tracked.plain.summary.to_dict()
    for key in ("out", "seconds", "search", "lm"):  # each fake LM has a name of its own
        tracked_summary.pop(key), plain_summary.pop(key)
    assert tracked_summary == plain_summary
    assert tracked.result.program.dump_state() == tracked.plain.program.dump_state()
    assert {p.name for p in tracked.folder.iterdir()} == {p.name for p in (tracked.folder.parent / "plain").iterdir()}


def test_the_logged_program_loads_back_with_mlflow_and_scores_the_same(
    tracked: Tracked, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.dspy

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked.store)  # what runs:/ URIs resolve against
    saved = dict(dspy.settings.config)
    try:
        program = mlflow.dspy.load_model(f"runs:/{tracked.run_id}/program")
    finally:
        dspy.settings.configure(**saved)  # load_model configures DSPy globally with the saved settings
        mlflow.clear_active_model()  # and makes the loaded model MLflow's active one
    compiled = tracked.result.program
    assert program.predict.signature.instructions == compiled.predict.signature.instructions
    assert [dict(d) for d in program.predict.demos] == [dict(d) for d in compiled.predict.demos]
    test_rows = dataset(16, start=1000)  # the task's test split (write_task)
    with dspy.context(lm=fake_world_lm(), adapter=PlainAdapter()):
        report = Evaluator(resolve_metric("exact_match"), num_threads=1).evaluate(program, test_rows)
    assert report.n_examples == 16 and report.score == tracked.result.test.score


def test_an_unreachable_tracking_server_costs_one_warning_not_the_compile(
    tracked: Tracked, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as probe:  # a port nothing listens on: bound, then released
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = _settings(tracked.task_folder, tmp_path / "run", tracking={"mlflow": f"http://127.0.0.1:{port}"})
    with caplog.at_level(logging.WARNING):
        result = run(settings, lm=fake_world_lm())
    warnings = [r for r in caplog.records if r.name == "dspy_ext.experiment.mlflow_tracking"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert f"MLflow tracking at http://127.0.0.1:{port} is off for this compile" in warnings[0].getMessage()
    assert result.summary.scores == tracked.plain.summary.scores
    assert result.summary.spend.lm_calls == tracked.plain.summary.spend.lm_calls
    assert (tmp_path / "run" / "run.json").is_file() and (tmp_path / "run" / "report.md").is_file()


def test_a_compile_whose_model_stops_answering_is_a_failed_mlflow_run(
    tracked: Tracked, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = _copy_store(tracked.empty_store, tmp_path)
    settings = _settings(tracked.task_folder, tmp_path / "run", budget=200, lm_retries=0, tracking={"mlflow": store})
    with pytest.raises(ModelUnavailable):
        run(settings, lm=dying_lm(answers=30))
    client = _client(store)
    (mlrun,) = client.search_runs([client.get_experiment_by_name("items").experiment_id])
    assert mlrun.info.status == "FAILED" and "the model stopped answering" in mlrun.data.tags["dspy_ext.error"]
    assert mlrun.data.params["budget"] == "200"  # the params were logged before the compile started


def test_unknown_usd_is_left_out_and_each_criterion_is_a_metric(tracked: Tracked) -> None:
    data = tracked.result.summary.to_dict()
    data.update(
        usd=None,
        criteria={"format": {"student": 50.0, "compiled": 75.0}, "short answer": {"student": 10.0, "compiled": 20.0}},
        val_criteria={"format": {"student": 40.0, "compiled": 62.5}, "short answer": {"student": 0.0, "compiled": 5.0}},
    )
    metrics = {m.key: m.value for m in final_metrics(RunSummary.from_dict(data))}
    assert "usd" not in metrics and metrics["lm_calls"] == data["lm_calls"]
    assert (metrics["criterion/format/test"], metrics["criterion/format/val"]) == (75.0, 62.5)
    assert (metrics["criterion/short answer/test"], metrics["criterion/short answer/val"]) == (20.0, 5.0)


# ---- the command line -------------------------------------------------------------------------------


def _compile_argv(task_folder: Path, out: Path, *extra: str) -> list[str]:
    flags = [item for key, value in FAKE_COMPILE.items() for item in (f"--{key}", str(value))]
    return ["compile", "--data", str(task_folder), *flags, "--out", str(out), *extra]


def test_without_mlflow_the_flag_is_one_line_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError, as when not installed
    task_folder = write_task(tmp_path / "items", n_train=40, n_test=16)
    code = main(_compile_argv(task_folder, tmp_path / "run", "--mlflow", "sqlite:///x.db"), lm=fake_world_lm())
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"dspy-ext compile: error: {MISSING_EXTRA}"
    assert "pip install 'dspy-ext[mlflow]'" in err
    assert not (tmp_path / "run").exists()  # refused before anything was built or spent


def test_bare_mlflow_flag_reads_the_environment_and_a_folder_resumes_with_tracking_added(
    tracked: Tracked, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    store = _copy_store(tracked.empty_store, tmp_path / "env")
    argv = _compile_argv(tracked.task_folder, tmp_path / "run")
    lm_name = "fake/world-mlflow-resume"  # one model name: the second compile is the same run, resumed
    assert main([*argv, "--json"], lm=fake_world_lm(name=lm_name)) == 0
    first = json.loads(capsys.readouterr().out)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main([*argv, "--mlflow"], lm=fake_world_lm(name=lm_name)) == 2
    assert "MLFLOW_TRACKING_URI, which is not set" in capsys.readouterr().err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    assert main([*argv, "--mlflow", "--mlflow-experiment", "mine", "--json"], lm=fake_world_lm(name=lm_name)) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["replayed_calls"] == first["lm_calls"] and second["test_score"] == first["test_score"]
    runs = _client(store).search_runs([_client(store).get_experiment_by_name("mine").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert RunSettings.load(tmp_path / "run" / "settings.yaml").tracking.model_dump() == {
        "mlflow": store,
        "experiment": "mine",
    }


def test_a_run_file_tracking_key_and_a_flag_on_top(
    tracked: Tracked, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    store = _copy_store(tracked.empty_store, tmp_path / "file")
    (tmp_path / "run.yaml").write_text(f"tracking:\n  mlflow: {store}\n  experiment: from-file\n")
    argv = _compile_argv(tracked.task_folder, tmp_path / "run", "--config", str(tmp_path / "run.yaml"))
    assert main([*argv, "--mlflow-experiment", "from-flag"], lm=fake_world_lm()) == 0
    out = capsys.readouterr().out
    runs = _client(store).search_runs([_client(store).get_experiment_by_name("from-flag").experiment_id])
    assert len(runs) == 1 and f"MLflow run {runs[0].info.run_id} in {store}" in out
    assert _client(store).get_experiment_by_name("from-file") is None
    (tmp_path / "bad.yaml").write_text("tracking:\n  mlflow: ''\n")
    bad = _compile_argv(tracked.task_folder, tmp_path / "bad", "--config", str(tmp_path / "bad.yaml"))
    assert main(bad, lm=fake_world_lm()) == 2
    assert "tracking.mlflow: String should have at least 1 character" in capsys.readouterr().err


#: Runs a tracked compile of the fake world through the CLI in a fresh interpreter, with an audit hook on
#: every connection the process opens; prints what reached beyond loopback and whether MLflow's telemetry ran.
_AUDITED_COMPILE = """
import json, os, socket, sys, time
outside = []
def audit(event, args):
    if event == "socket.connect":
        sock, address = args
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1"):
            outside.append(repr(address))
    elif event == "socket.getaddrinfo" and args[0] not in (None, "localhost", "127.0.0.1", "::1"):
        outside.append(f"lookup {args[0]}")
sys.addaudithook(audit)
sys.path.insert(0, sys.argv[1])
from support.fake_world import fake_world_lm
from dspy_ext.cli import main
code = main(sys.argv[2:], lm=fake_world_lm())
import mlflow.telemetry
time.sleep(2)  # MLflow's telemetry works from background threads
print(json.dumps({"code": code, "outside": outside, "telemetry": mlflow.telemetry.get_telemetry_client() is not None}))
"""


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no CI or pytest variables (each turns MLflow's telemetry off itself)."""
    drop = {"PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def test_a_tracked_compile_reaches_nothing_beyond_the_machine(tracked: Tracked, tmp_path: Path) -> None:
    store = _copy_store(tracked.empty_store, tmp_path)
    argv = _compile_argv(tracked.task_folder, tmp_path / "run", "--mlflow", store)
    result = subprocess.run(
        [sys.executable, "-c", _AUDITED_COMPILE, str(TESTS), *argv],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"code": 0, "outside": [], "telemetry": False}
    assert "INFO mlflow" not in result.stderr  # MLflow's own chatter stays below warnings


#: A user's script: MLflow's DSPy autologging around a compile of APE and of DemoSearch, called from Python,
#: with dspy-ext imported before or after ``autolog()``; then autologging turned off and APE compiled again.
_AUTOLOG = """
import json, sys
sys.path.insert(0, sys.argv[1])
import dspy, mlflow
if sys.argv[2] == "before":
    import dspy_ext.optimizers
mlflow.dspy.autolog(log_compiles=True)
from dspy_ext.adapters import PlainAdapter
from dspy_ext.optimizers import APE, DemoSearch
from metrics import exact_match
from programs import Transform
from support.fake_world import BASELINE_INSTRUCTION, dataset, fake_world_lm
def compile(optimizer):
    student = Transform(instructions=BASELINE_INSTRUCTION)
    return optimizer.compile(student, trainset=dataset(12), valset=dataset(8, 100))
client = mlflow.MlflowClient()
def runs():
    found = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    return sorted(found, key=lambda r: r.info.start_time)
compiled = []
with dspy.context(lm=fake_world_lm(), adapter=PlainAdapter()):
    for optimizer in (APE(exact_match, max_lm_calls=30, num_threads=1), DemoSearch(exact_match, max_lm_calls=30)):
        compiled.append(compile(optimizer).predict.signature.instructions)
    logged = []
    for run in runs():
        best = json.load(open(client.download_artifacts(run.info.run_id, "best_model.json")))
        artifacts = sorted(a.path for a in client.list_artifacts(run.info.run_id))
        logged.append({"artifacts": artifacts, "status": run.info.status, "instructions": best["predict"]["signature"]["instructions"]})
    mlflow.dspy.autolog(disable=True)
    compile(APE(exact_match, max_lm_calls=30, num_threads=1))
print(json.dumps({"compiled": compiled, "logged": logged, "after_disable": len(runs())}))
"""


def test_mlflow_autolog_records_our_optimizers_compiles_whichever_is_imported_first(
    tracked: Tracked, tmp_path: Path
) -> None:
    """``mlflow.dspy.autolog`` patches ``compile`` on ``Teleprompter.__subclasses__()`` as they are at the call.

    ``SearchTeleprompter`` is such a direct subclass and every dspy-ext optimizer inherits its ``compile``,
    so imported first, each compile is one autologged run. Imported after, the class takes MLflow's patch
    when it is defined (``dspy_ext.search.autolog``): the same runs. ``autolog(disable=True)`` reverts it.
    """
    procs = {}
    for order in ("before", "after"):
        store = _copy_store(tracked.empty_store, tmp_path / order)
        env = _clean_env(MLFLOW_TRACKING_URI=store, MLFLOW_DISABLE_TELEMETRY="true")
        procs[order] = subprocess.Popen(
            [sys.executable, "-c", _AUTOLOG, str(TESTS), order],
            cwd=tmp_path / order,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    for order, proc in procs.items():
        out, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err[-3000:]
        report = json.loads(out.strip().splitlines()[-1])
        # One run per compile, APE's then DemoSearch's, with the best program and the data it was given.
        assert [run["artifacts"] for run in report["logged"]] == [
            ["best_model.json", "trainset.json", "valset.json"]
        ] * 2
        assert [run["status"] for run in report["logged"]] == ["FINISHED"] * 2, order
        assert [run["instructions"] for run in report["logged"]] == report["compiled"], order
        assert report["after_disable"] == 2, order  # autolog(disable=True) reverted our patch too


def test_importing_dspy_ext_imports_no_mlflow() -> None:
    """Following a user's ``autolog()`` costs nothing without it: dspy-ext does not import MLflow to look."""
    code = "import sys, dspy_ext.optimizers, dspy_ext.tuning, dspy_ext.cli; print('mlflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr[-2000:]


# ---- the embedded model ------------------------------------------------------------------------------


@pytest.mark.embedded
def test_embedded_compile_through_the_cli_is_one_finished_mlflow_run(
    tmp_path: Path, local_lm, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``dspy-ext compile --mlflow sqlite:///...`` with APE at a tiny budget on SmolLM2."""
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    folder = task_slice(tmp_path / "sentiment-slice", n_train=12, n_test=6)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["compile", "--data", str(folder), "--optimizer", "ape", "--budget", "16", "--train", "8", "--val", "4"]
    capsys.readouterr()
    code = main([*argv, "--out", str(tmp_path / "run"), "--mlflow", store, "--json"], lm=local_lm)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    client = _client(store)
    (mlrun,) = client.search_runs([client.get_experiment_by_name("sentiment-slice").experiment_id])
    assert mlrun.info.status == "FINISHED" and mlrun.data.params["optimizer"] == "ape"
    assert mlrun.data.metrics["test_score"] == summary["test_score"]
    assert mlrun.data.metrics["lm_calls"] == summary["lm_calls"] <= 16
    steps = [m.step for m in client.get_metric_history(mlrun.info.run_id, "trial/train/score")]
    assert steps and steps == sorted(steps) and steps[-1] <= summary["lm_calls"]
    assert {a.path for a in client.list_artifacts(mlrun.info.run_id)} == RUN_FILES
