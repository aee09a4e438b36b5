"""``dspy-ext compare --storage URL --workers N`` on a real PostgreSQL server: cells as the trials of one study.

The server is a throwaway one (:mod:`pg_server`, as in the tune test); the compiles
run on the fake world (:mod:`compare_fake`), in worker processes of their own.
Each cell's fake calls take a little time, so that a worker can be killed mid-cell.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pg_server import PostgresServer, find_binaries

from dspy_ext.cli import main

import compare_fake
from support.fake_world import write_task

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "compare_fake.py"
OPTIMIZERS = "ape,bfs,labeled"
SEEDS = 2
CELLS = {f"{name}-s{seed}" for name in OPTIMIZERS.split(",") for seed in range(SEEDS)}


def needs_postgres(test):
    test = pytest.mark.skipif(find_binaries() is None, reason="PostgreSQL binaries (initdb, pg_ctl) are not installed")(
        test
    )
    return pytest.mark.skipif(importlib.util.find_spec("psycopg2") is None, reason="psycopg2 is not installed")(test)


def grid(task: Path, out: Path, *extra: str) -> list[str]:
    """The comparison every test runs: 3 optimizers x 2 seeds on the fake task."""
    flags = f"--optimizers {OPTIMIZERS} --seeds {SEEDS} --budget 40 --train 10 --val 10 --threads 1 --adapter plain"
    return ["compare", "--data", str(task), *flags.split(), "--out", str(out), *extra]


def env(latency: float) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "DSPY_EXT_COMPARE_FAKE": "1",
        "DSPY_EXT_COMPARE_FAKE_LATENCY": str(latency),
    }


def trials(url: str) -> list:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name="grid", storage=url).get_trials(deepcopy=False)
    except KeyError:  # the first worker has not created the study yet
        return []


def cell_trials(url: str) -> list:
    return [t for t in trials(url) if "cell" in t.user_attrs]


def table_rows(folder: Path) -> tuple[list[dict[str, str]], list[str]]:
    """``results.csv`` and the lines of ``results.md``, without wall times (the one thing that may differ)."""
    with (folder / "results.csv").open() as f:
        rows = [{k: v for k, v in row.items() if k != "seconds_mean"} for row in csv.DictReader(f)]
    lines, wall = [], None
    for line in (folder / "results.md").read_text().splitlines():
        columns = line.split("|")
        if "wall s" in columns[1:-1] or " wall s " in columns:
            wall = columns.index(" wall s ")
        if not line.startswith("|"):
            wall = None
        lines.append("|".join(c for i, c in enumerate(columns) if i != wall))
    return rows, lines


@needs_postgres
def test_two_workers_compute_every_cell_once_and_tabulate_like_one_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    task = write_task(tmp_path / "items", n_train=40, n_test=24)
    with PostgresServer() as pg:
        url = pg.create_database("compare")
        cmd = [sys.executable, str(SCRIPT), *grid(task, tmp_path / "dist", "--storage", url, "--study", "grid")]
        proc = subprocess.run(
            [*cmd, "--workers", "2", "--heartbeat", "2", "--json"],
            env={**env(0.02), "DSPY_EXT_COMPARE_FAKE_MEET": f"{tmp_path / 'meet'}:2"},  # both hold a cell
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        distributed = json.loads(proc.stdout)
        done = cell_trials(url)
        spares = [t for t in trials(url) if "cell" not in t.user_attrs]
        # The report from the storage alone, in a folder that has none of the comparison's files.
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        report = subprocess.run(
            [sys.executable, "-m", "dspy_ext", "compare", "--report", "--storage", url, "--out", "rep", "--json"],
            env=env(0.0),
            cwd=fresh,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert report.returncode == 0, report.stderr[-3000:]

    # Every cell was computed exactly once: one trial each, complete; both processes took cells.
    assert sorted(t.user_attrs["cell"] for t in done) == sorted(CELLS)
    assert all(t.state.name == "COMPLETE" for t in done)
    assert len({t.user_attrs["worker"] for t in done}) == 2
    assert all(t.state.name == "PRUNED" for t in spares)  # a race for the last cell computes nothing
    assert {f"{r['optimizer']}-s{r['seed']}" for r in distributed["rows"]} == CELLS and not distributed["failed"]
    # Each finished cell keeps its run.json in the study.
    assert all(t.user_attrs["run"]["optimizer"] == t.user_attrs["cell"].rsplit("-s", 1)[0] for t in done)

    # The same grid in one process, without a storage, gives the same tables.
    code = main(grid(task, tmp_path / "single", "--json"), lm=compare_fake.make_lm())
    assert code == 0
    single = json.loads(capsys.readouterr().out)
    assert table_rows(tmp_path / "single") == table_rows(tmp_path / "dist")
    assert [r["test_score"] for r in single["rows"]] == [r["test_score"] for r in distributed["rows"]]

    # --report rebuilt the same tables, the plot and every cell's run.json from the storage alone.
    rebuilt = fresh / "rep"
    assert json.loads(report.stdout)["rows"] == distributed["rows"]
    assert (rebuilt / "results.md").read_text() == (tmp_path / "dist" / "results.md").read_text()
    assert (rebuilt / "results.csv").read_text() == (tmp_path / "dist" / "results.csv").read_text()
    assert (rebuilt / "score_vs_calls.png").stat().st_size > 0
    assert {p.parent.name for p in rebuilt.glob("runs/*/run.json")} == CELLS


def wait_for(what: str, check, timeout: float = 300.0):
    """Poll ``check()`` until it returns something truthy (a test fails after ``timeout`` s, not a timed assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


def running_cell(url: str, pid: int) -> str | None:
    """The cell that process ``pid`` is running, if any."""
    for t in cell_trials(url):
        if t.state.name == "RUNNING" and str(t.user_attrs.get("worker", "")).endswith(f":{pid}"):
            return t.user_attrs["cell"]
    return None


@needs_postgres
def test_a_killed_workers_cell_is_taken_again_and_resumes_from_its_journal(tmp_path: Path) -> None:
    task = write_task(tmp_path / "items", n_train=40, n_test=24)
    out = tmp_path / "shared"  # both "machines" share one disk: the killed cell's journal is there
    with PostgresServer() as pg:
        url = pg.create_database("compare")
        cmd = [sys.executable, str(SCRIPT), *grid(task, out, "--storage", url, "--study", "grid", "--heartbeat", "1")]
        # The victim's calls are slow, so that it is still mid-cell once the survivor has started; the first
        # call of each waits for the other's, so both hold a cell however slowly they start.
        meet = {"DSPY_EXT_COMPARE_FAKE_MEET": f"{tmp_path / 'meet'}:2"}
        victim = subprocess.Popen(cmd, env={**env(0.3), **meet}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            first = wait_for("the first worker's cell", lambda: running_cell(url, alive(victim).pid))
            survivor = subprocess.Popen(
                [*cmd, "--json"], env={**env(0.02), **meet}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            # Kill the first worker mid-cell, once its cell's journal holds calls.
            wait_for("journaled calls in the first worker's cell", lambda: _journaled(out, first) and alive(victim))
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            stdout, stderr = survivor.communicate(timeout=900)
        finally:
            for proc in (victim, locals().get("survivor")):
                if proc is not None and proc.poll() is None:
                    proc.kill()
        assert survivor.returncode == 0, stderr[-3000:]
        done = cell_trials(url)

    (killed,) = [t.user_attrs["cell"] for t in done if t.state.name == "FAIL"]
    assert killed == first == "ape-s0"  # the first cell queued, the one it was running
    by_cell = {name: [t for t in done if t.user_attrs["cell"] == name] for name in CELLS}
    complete = {name: [t for t in ts if t.state.name == "COMPLETE"] for name, ts in by_cell.items()}
    assert all(len(ts) == 1 for ts in complete.values())  # every cell finished exactly once
    # The killed cell: its trial failed when the heartbeats stopped, and the survivor finished it ...
    assert [t.state.name for t in by_cell[killed]] == ["FAIL", "COMPLETE"]
    assert complete[killed][0].user_attrs["worker"].endswith(f":{survivor.pid}")
    # ... resuming from the calls the killed worker had journaled, not starting over.
    assert complete[killed][0].user_attrs["run"]["replayed_calls"] > 0
    result = json.loads(stdout)
    assert {f"{r['optimizer']}-s{r['seed']}" for r in result["rows"]} == CELLS and not result["failed"]


def alive(proc: subprocess.Popen) -> subprocess.Popen:
    """``proc``, or a failure if it has exited already (then what the test waits for can never happen)."""
    if proc.poll() is not None:
        raise AssertionError(f"the worker {proc.args[-1]} exited early with code {proc.returncode}")
    return proc


def _journaled(out: Path, cell: str | None) -> str | None:
    """``cell`` if its run folder's call journal holds at least a few calls."""
    if cell is None:
        return None
    journal = out / "runs" / cell / "calls.jsonl"
    return cell if journal.exists() and len(journal.read_text().splitlines()) >= 5 else None


def test_the_lock_of_a_worker_found_gone_on_another_host_is_released(tmp_path: Path) -> None:
    """On a shared disk, a lost machine's run-folder lock names a host the lock cannot check; the study can."""
    from dspy_ext.compare.distributed import release_lost_lock
    from dspy_ext.files import RunFolderLock, RunFolderLocked

    folder = tmp_path / "runs" / "ape-s0"
    folder.mkdir(parents=True)
    (folder / "run.lock").write_text(json.dumps({"pid": 4242, "host": "lost-machine", "started": "2026-12-04"}))
    with pytest.raises(RunFolderLocked, match="lost-machine"):
        RunFolderLock(folder).acquire()
    release_lost_lock(folder, "other-machine:4242")  # not the lost worker's lock: kept
    assert (folder / "run.lock").exists()
    release_lost_lock(folder, "lost-machine:4242")
    with RunFolderLock(folder) as lock:
        assert lock.held


#: Runs its arguments as a command with SIGINT at its default disposition and unblocked, as a terminal gives its
#: foreground job, in the same process (``exec``). A test runner started in the background of a script (``pytest &``,
#: ``nohup pytest &``, a CI launcher) ignores SIGINT, and an ignored signal stays ignored across ``fork`` and
#: ``exec``: the command's Python then never turns a Ctrl-C into ``KeyboardInterrupt``, and it is dropped.
_WITH_SIGINT = (
    "import os, signal, sys\n"
    "signal.signal(signal.SIGINT, signal.SIG_DFL)\n"
    "signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])\n"
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def interruptible(cmd: list[str]) -> list[str]:
    """``cmd`` started so that a Ctrl-C (SIGINT) reaches it, whatever the test runner's own SIGINT disposition."""
    return [sys.executable, "-c", _WITH_SIGINT, *cmd]


def ctrl_c_in_the_first_cell(cmd: list[str], url: str, out: Path) -> tuple[int, str]:
    """Start ``cmd`` (a compare on the study ``url``), send it Ctrl-C mid-cell; its exit code and stderr."""
    import optuna

    optuna.storages.RDBStorage(url)  # the schema, before the test polls the file
    proc = subprocess.Popen(
        interruptible(cmd), env=env(0.1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        # The first cell (ape-s0, the longest): five cells are still to run, so the process cannot finish them
        # all between the check and the signal, however slow the check is on a busy machine.
        first_cell = lambda: _journaled(out, "ape-s0" if running_cell(url, proc.pid) == "ape-s0" else None)
        wait_for("the first cell with journaled calls", first_cell)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, stderr


def test_an_interrupted_cell_is_queued_again_and_the_next_run_resumes_it(tmp_path: Path) -> None:
    """Ctrl-C fails the running trial (Optuna never retries that); the cell is queued again for the next run."""
    task = write_task(tmp_path / "items", n_train=40, n_test=24)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    cmd = [sys.executable, str(SCRIPT), *grid(task, tmp_path / "out", "--storage", url, "--study", "grid")]
    returncode, stderr = ctrl_c_in_the_first_cell(cmd, url, tmp_path / "out")
    assert returncode == 130, stderr[-3000:]
    (interrupted,) = [t.user_attrs["cell"] for t in cell_trials(url) if t.state.name == "FAIL"]
    assert [t.state.name for t in cell_trials(url) if t.user_attrs["cell"] == interrupted] == ["FAIL", "WAITING"]

    again = subprocess.run([*cmd, "--json"], env=env(0.0), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    complete = [t for t in cell_trials(url) if t.state.name == "COMPLETE"]
    assert sorted(t.user_attrs["cell"] for t in complete) == sorted(CELLS)  # each cell once
    (resumed,) = [t for t in complete if t.user_attrs["cell"] == interrupted]
    assert resumed.user_attrs["run"]["replayed_calls"] > 0
    assert not json.loads(again.stdout)["failed"]


def test_ctrl_c_reaches_the_command_when_the_test_runner_ignores_sigint(tmp_path: Path) -> None:
    """The Ctrl-C test holds under a test runner started in the background of a script (SIGINT ignored).

    Such a runner's children inherit the ignored SIGINT; started as they were, the compare ran its whole grid
    and exited 0 (the full-suite failures of the test above). This test process ignores SIGINT as that runner does.
    """
    task = write_task(tmp_path / "items", n_train=40, n_test=24)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    cmd = [sys.executable, str(SCRIPT), *grid(task, tmp_path / "out", "--storage", url, "--study", "grid")]
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        returncode, stderr = ctrl_c_in_the_first_cell(cmd, url, tmp_path / "out")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert returncode == 130, stderr[-3000:]
    assert [t.state.name for t in cell_trials(url) if t.user_attrs["cell"] == "ape-s0"] == ["FAIL", "WAITING"]


def test_bad_distribution_settings_get_one_line_naming_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    task = write_task(tmp_path / "items", n_train=40, n_test=24)
    lm = compare_fake.make_lm()
    missing = tmp_path / "none.db"
    cases = [
        (grid(task, tmp_path / "a", "--workers", "2"), "more than one worker process needs a storage"),
        (grid(task, tmp_path / "a", "--storage", "memory"), "must be a .db file or a database URL"),
        (grid(task, tmp_path / "a", "--storage", "study.txt"), "neither a database URL"),
        (["compare", "--report"], "give --storage URL"),
        (["compare", "--report", "--storage", str(missing)], "no such database file"),
    ]
    for argv, message in cases:
        assert main(argv, lm=lm) == 2
        assert message in capsys.readouterr().err
    assert not missing.exists()  # a report never creates a storage
    # A study holds one comparison: the same study with another budget is refused, naming the cells.
    db = str(tmp_path / "study.db")
    assert main(grid(task, tmp_path / "a", "--storage", db, "--seeds", "1"), lm=lm) == 0
    capsys.readouterr()
    assert main(grid(task, tmp_path / "b", "--storage", db, "--seeds", "1", "--budget", "30"), lm=lm) == 2
    assert "other settings or data for ape-s0, bfs-s0, labeled-s0" in capsys.readouterr().err


@pytest.mark.embedded
def test_two_workers_on_the_embedded_model_score_each_cell_once_as_one_process_does(
    tmp_path: Path, local_lm, capsys: pytest.CaptureFixture[str]
) -> None:
    from support.slices import task_slice

    folder = task_slice(tmp_path / "slice", n_train=20, n_test=8)
    flags = [
        "--optimizers",
        "labeled",
        "--seeds",
        "2",
        "--train",
        "10",
        "--val",
        "5",
        "--threads",
        "1",
        "--adapter",
        "plain",
    ]
    url = f"sqlite:///{tmp_path / 'cells.db'}"
    command = [sys.executable, "-m", "dspy_ext", "compare", "--data", str(folder), *flags]
    dist = subprocess.run(
        [*command, "--out", str(tmp_path / "dist"), "--storage", url, "--workers", "2", "--json"],
        env={**os.environ, "PYTHONPATH": str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert dist.returncode == 0, dist.stderr[-3000:]
    distributed = json.loads(dist.stdout)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    (study,) = optuna.get_all_study_summaries(url)
    done = [t for t in optuna.load_study(study_name=study.study_name, storage=url).trials if "cell" in t.user_attrs]
    assert sorted(t.user_attrs["cell"] for t in done) == ["labeled-s0", "labeled-s1"]  # each cell once
    assert all(t.state.name == "COMPLETE" for t in done)

    assert main(["compare", "--data", str(folder), *flags, "--out", str(tmp_path / "one"), "--json"], lm=local_lm) == 0
    single = json.loads(capsys.readouterr().out)
    assert [r["test_score"] for r in distributed["rows"]] == [r["test_score"] for r in single["rows"]]
    assert table_rows(tmp_path / "dist") == table_rows(tmp_path / "one")
