"""A comparison spread over processes and machines: its cells are the trials of one Optuna study.

With ``storage`` set, :func:`run_distributed` (what ``dspy-ext compare --storage URL --workers N``
runs) puts every (optimizer, seed) cell into an Optuna study as one enqueued trial,
and each worker process takes the next waiting one. Optuna's RDB storage claims a
waiting trial for exactly one process, writes the running trial's heartbeats and,
when a worker dies (``kill -9``, a lost machine), marks its trial failed after
``2 x heartbeat`` seconds and queues the same cell again (the storage of
:mod:`dspy_ext.tuning.storage`). The worker that takes it again compiles in the
cell's run folder, so where the folders are on a shared disk the cell's call
journal replays the calls already made and the cell resumes; on a disk of its own
it starts that cell over.

The study holds everything the report needs: the comparison's settings and the
fingerprint of every cell (a process whose cells differ refuses to join), and for
each finished cell its row, its per-example test scores and its ``run.json``. So
:func:`report_from_storage` rebuilds the tables and the plot on any machine.

A trial Optuna creates when two workers race for the last waiting cell is a
*spare*: it is pruned at once, computes nothing, and is not a cell.

Example:
    >>> settings = CompareSettings(task="sentiment", optimizers=["ape", "opro"], seeds=3,
    ...                            storage="postgresql://host/db", workers=2)             # doctest: +SKIP
    >>> result = run_compare(settings)                                                   # doctest: +SKIP
    >>> report_from_storage("postgresql://host/db", None, Path("report"))["summary"]     # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import pickle
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dspy_ext.compare.report import Cell
from dspy_ext.compare.runner import _Cells, cell_from_json, cell_name, compare_meta, finish, open_cells
from dspy_ext.experiment import CompareSettings, SettingsError
from dspy_ext.files import LOCK_FILE_NAME, atomic_write_text
from dspy_ext.lm.metering import CallMeter, UsageSnapshot, metering
from dspy_ext.tuning.objective import worker_id
from dspy_ext.tuning.storage import display_url, make_storage, normalize_url, sqlite_path
from dspy_ext.tuning.workers import spawn_workers, stop_workers

logger = logging.getLogger(__name__)

#: The study's user attribute holding its :class:`CompareIdentity`.
STUDY_ATTR = "dspy_ext_compare"
#: The trial parameter (and user attribute) naming a trial's cell, ``OPTIMIZER-sSEED``.
CELL_PARAM = "cell"
#: Trial user attributes: the finished cell (row, test scores, fingerprint), its ``run.json``, the error of a
#: failed cell, the ``host:pid`` that ran it, its LM usage with scoring, and the mark of a spare trial.
RESULT_ATTR = "result"
RUN_ATTR = "run"
ERROR_ATTR = "error"
WORKER_ATTR = "worker"
USAGE_ATTR = "usage"
SPARE_ATTR = "spare"
#: Seconds between looks at the study while other workers hold the last cells.
POLL_SECONDS = 1.0
#: Seconds a joining process waits for the creating process to finish queueing the cells.
JOIN_SECONDS = 120.0


class CellFailed(Exception):
    """A cell's compile raised; its trial is marked failed with the error."""


@dataclass(frozen=True)
class CompareIdentity:
    """What a comparison's study holds about the comparison: written once, checked by every process that joins.

    Attributes:
        meta: The comparison as the tables describe it (:func:`~dspy_ext.compare.runner.compare_meta`).
        cells: Cell name -> :func:`~dspy_ext.compare.runner.cell_fingerprint`, in the order the cells are queued.
        version: Format of this record.
    """

    meta: dict[str, Any]
    cells: dict[str, str]
    version: int = 1

    @classmethod
    def of(cls, cells: _Cells) -> CompareIdentity:
        meta = compare_meta(cells.settings, cells.components, cells.seeds)
        return cls(meta, {cell_name(n, s): cells.fingerprint(n, s) for n, s in cells.jobs()})

    @classmethod
    def from_attr(cls, raw: dict[str, Any]) -> CompareIdentity:
        return cls(raw["meta"], raw["cells"], raw.get("version", 1))

    def check_joins(self, stored: CompareIdentity, study_name: str) -> None:
        """Refuse to join a study that holds another comparison.

        Raises:
            SettingsError: Naming what differs and how to start another study instead.
        """
        hint = f"; study {study_name!r} holds another comparison (use another --study for this one)"
        if list(self.cells) != list(stored.cells):
            raise SettingsError(f"invalid settings: other cells {sorted(self.cells)} than {sorted(stored.cells)}{hint}")
        changed = [name for name, fp in self.cells.items() if stored.cells[name] != fp]
        if changed:
            raise SettingsError(f"invalid settings: other settings or data for {', '.join(changed)}{hint}")


class CellStudy:
    """One process's handle on a comparison's study: take and run cells (:meth:`work`), read their :meth:`outcomes`.

    Made by :meth:`join` (to work on it) or :meth:`load` (to read it, e.g. for a report).
    """

    def __init__(self, study: Any, identity: CompareIdentity) -> None:
        self.study = study
        self.identity = identity

    @classmethod
    def join(cls, url: str, study_name: str, identity: CompareIdentity, *, heartbeat: int) -> CellStudy:
        """Create the study and queue every cell once, or join the study another process created.

        Raises:
            SettingsError: The study holds another comparison, or its cells never got queued.
        """
        import optuna

        storage = make_storage(url, heartbeat_interval=heartbeat)
        try:
            study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize")
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=study_name, storage=storage)
            cls._wait_for_identity(study, study_name).check_joins(identity, study_name)
            return cls(study, identity)
        # Only the process that created the study queues the cells: each cell is one trial.
        for name in identity.cells:
            study.enqueue_trial({CELL_PARAM: name}, user_attrs={CELL_PARAM: name})
        study.set_user_attr(STUDY_ATTR, asdict(identity))
        return cls(study, identity)

    @staticmethod
    def _wait_for_identity(study: Any, study_name: str) -> CompareIdentity:
        deadline = time.monotonic() + JOIN_SECONDS
        while STUDY_ATTR not in study.user_attrs:
            if time.monotonic() > deadline:
                raise SettingsError(f"invalid settings: study {study_name!r} is not a comparison (no cells queued)")
            time.sleep(POLL_SECONDS)
        return CompareIdentity.from_attr(study.user_attrs[STUDY_ATTR])

    @classmethod
    def load(cls, url: str, study_name: str | None) -> CellStudy:
        """Open a comparison's study to read it (``study_name=None``: the one comparison in the storage).

        Raises:
            SettingsError: No such study, or several comparisons and no name.
        """
        import optuna

        db = sqlite_path(url)
        if db is not None and not db.exists():
            raise SettingsError(f"invalid settings: storage: no such database file {db}")
        storage = make_storage(url, heartbeat_interval=None)
        names = [s.study_name for s in optuna.get_all_study_summaries(storage) if STUDY_ATTR in s.user_attrs]
        where = display_url(url)
        if study_name is None:
            if len(names) != 1:
                found = ", ".join(sorted(names)) or "none"
                raise SettingsError(f"invalid settings: name the study (--study); comparisons in {where}: {found}")
            study_name = names[0]
        if study_name not in names:
            raise SettingsError(f"invalid settings: {where} holds no comparison named {study_name!r}")
        study = optuna.load_study(study_name=study_name, storage=storage)
        return cls(study, CompareIdentity.from_attr(study.user_attrs[STUDY_ATTR]))

    def work(self, cells: _Cells) -> None:
        """Run waiting cells until none is waiting or running (a lost worker's cell is queued again and taken)."""
        import optuna
        from optuna.trial import TrialState

        while True:
            optuna.storages.fail_stale_trials(self.study)
            states = [t.state for t in self.study.get_trials(deepcopy=False)]
            if TrialState.WAITING not in states:
                if TrialState.RUNNING not in states:
                    return
                time.sleep(POLL_SECONDS)  # another worker holds a cell: it finishes it, or its heartbeat stops
                continue
            objective = lambda trial: self._run_trial(trial, cells)
            self.study.optimize(objective, n_trials=1, catch=(CellFailed,), gc_after_trial=False)

    def _run_trial(self, trial: Any, cells: _Cells) -> float:
        """The objective: run the trial's cell and store its results in the trial; its value is the test score."""
        import optuna

        name = trial.user_attrs.get(CELL_PARAM)
        if name is None:  # a trial Optuna made because another worker took the last waiting cell first
            trial.set_user_attr(SPARE_ATTR, True)
            raise optuna.TrialPruned("no waiting cell")
        trial.suggest_categorical(CELL_PARAM, list(self.identity.cells))
        optimizer, seed = _job_of(cells, name)
        lost = trial.user_attrs.get(WORKER_ATTR)  # set: a cell queued again after its worker's heartbeats stopped
        if lost:
            release_lost_lock(cells.run_dir(optimizer, seed), lost)
        trial.set_user_attr(WORKER_ATTR, worker_id())
        done = sum(t.state.name == "COMPLETE" for t in self.study.get_trials(deepcopy=False))
        own = CallMeter()
        tag = f"[{done + 1}/{len(self.identity.cells)}] {cells.components.task.name} · {optimizer} · seed {seed}"
        try:
            with metering(own):
                cell = cells.run(tag, optimizer, seed, own)
        except KeyboardInterrupt:
            # Optuna fails an interrupted trial and never queues it again: queue the cell for the next run.
            self.study.enqueue_trial({CELL_PARAM: name}, user_attrs={CELL_PARAM: name})
            raise
        usage = own.snapshot()
        trial.set_user_attr(USAGE_ATTR, {"calls": usage.calls, "tokens": usage.total_tokens, "usd": usage.usd})
        if cell is None:
            error = cells.failed[-1]["error"]
            trial.set_user_attr(ERROR_ATTR, error)
            raise CellFailed(f"{name}: {error}")
        fingerprint = self.identity.cells[name]
        trial.set_user_attr(
            RESULT_ATTR, {"fingerprint": fingerprint, "row": cell.row, "test_example_scores": cell.example_scores}
        )
        run_json = cells.run_dir(optimizer, seed) / "run.json"
        if run_json.exists():
            trial.set_user_attr(RUN_ATTR, json.loads(run_json.read_text()))
        return float(cell.row["test_score"])

    def outcomes(self) -> tuple[list[Cell], list[dict[str, Any]]]:
        """The finished cells (one per cell name) and the failed ones (``optimizer``, ``seed``, ``error``)."""
        from optuna.trial import TrialState

        trials = [t for t in self.study.get_trials(deepcopy=False) if CELL_PARAM in t.user_attrs]
        done: dict[str, Cell] = {}
        for t in trials:
            if t.state == TrialState.COMPLETE and RESULT_ATTR in t.user_attrs:
                done.setdefault(t.user_attrs[CELL_PARAM], cell_from_json(t.user_attrs[RESULT_ATTR]))
        open_ = {t.user_attrs[CELL_PARAM] for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)}
        failed = {}
        for t in trials:
            name = t.user_attrs[CELL_PARAM]
            if t.state == TrialState.FAIL and name not in done and name not in open_:
                failed[name] = t.user_attrs.get(ERROR_ATTR) or "its worker stopped (no heartbeat) too often"
        rows = [{**_split_name(name), "error": error} for name, error in failed.items()]
        return [done[name] for name in self.identity.cells if name in done], rows

    def usage_of(self, workers: set[str]) -> UsageSnapshot:
        """The LM usage (scoring included) of the cells that the processes ``workers`` (``host:pid``) ran."""
        calls, tokens, usd = 0, 0, 0.0
        priced = True
        for t in self.study.get_trials(deepcopy=False):
            usage = t.user_attrs.get(USAGE_ATTR)
            if usage and t.user_attrs.get(WORKER_ATTR) in workers:
                calls, tokens = calls + usage["calls"], tokens + usage["tokens"]
                priced = priced and usage["usd"] is not None
                usd += usage["usd"] or 0.0
        return UsageSnapshot(calls=calls, input_tokens=tokens, cost=usd, unpriced_calls=0 if priced else 1)


def release_lost_lock(folder: Path, worker: str) -> None:
    """Delete a run folder's lock if ``worker`` (``host:pid``) of another host holds it: the study found it gone.

    A lock of another host (a shared disk) is refused by the lock itself, which cannot check a process
    there, so the heartbeats decide instead. A lock of this host is left to the lock, which takes it over
    when its process is gone and refuses it while the process lives.
    """
    lock = folder / LOCK_FILE_NAME
    try:
        holder = json.loads(lock.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(holder, dict) or holder.get("host") == socket.gethostname():
        return
    if f"{holder.get('host')}:{holder.get('pid')}" == worker:
        logger.warning("%s: removing the run-folder lock of %s, whose heartbeats stopped", folder, worker)
        lock.unlink(missing_ok=True)


def _job_of(cells: _Cells, name: str) -> tuple[str, int]:
    for optimizer, seed in cells.jobs():
        if cell_name(optimizer, seed) == name:
            return optimizer, seed
    raise SettingsError(f"invalid settings: the study holds a cell {name!r} this comparison does not have")


def _split_name(name: str) -> dict[str, Any]:
    optimizer, _, seed = name.rpartition("-s")
    return {"optimizer": optimizer, "seed": int(seed)}


def study_name_of(settings: CompareSettings) -> str:
    """The study a comparison's cells go to: ``settings.study``, default ``compare-TASK``."""
    return settings.study or f"compare-{settings.source_name}"


def run_distributed(cells: _Cells, *, worker_init: Callable[[], None] | None = None) -> dict[str, Any]:
    """Work on the study of ``cells`` with ``settings.workers`` processes here, then write its report.

    This process creates the study (or joins it), starts ``workers - 1`` more processes on it, takes
    cells itself until none is left, and writes the report of every cell finished in the study, by
    whichever machine. The result is :func:`~dspy_ext.compare.runner.run_compare`'s; its ``new_*``
    figures are the usage of the cells this command's processes ran.

    Args:
        cells: The comparison's cells (:func:`~dspy_ext.compare.runner.open_cells`), ``settings.storage`` set.
        worker_init: Called first in every spawned worker process (a picklable callable).

    Raises:
        SettingsError: An in-memory storage, or a study of another comparison.
    """
    settings = cells.settings
    started = time.perf_counter()
    url = _storage_url(settings.storage)
    study = CellStudy.join(url, study_name_of(settings), CompareIdentity.of(cells), heartbeat=settings.heartbeat)
    resumed = len(study.outcomes()[0])
    procs = _spawn(settings, worker_init, _picklable(cells.log) or logger.info, cells.progress)
    try:
        study.work(cells)
        for proc in procs:
            proc.join()
    except KeyboardInterrupt:
        stop_workers(procs)
        raise
    for proc in procs:
        if proc.exitcode != 0:
            logger.warning(
                "worker %s exited with code %s; its finished cells are in the study", proc.name, proc.exitcode
            )
    workers = {worker_id(), *(f"{worker_id().rsplit(':', 1)[0]}:{p.pid}" for p in procs)}
    finished, failed = study.outcomes()
    return finish(study.identity.meta, cells.out, finished, failed, resumed, study.usage_of(workers), started)


def _storage_url(storage: str | None) -> str:
    try:
        url = normalize_url(storage)
    except ValueError as exc:
        raise SettingsError(f"invalid settings: storage: {exc}") from None
    if url == "memory":
        raise SettingsError("invalid settings: storage: a comparison's study must be a .db file or a database URL")
    return url


def _picklable(log: Callable[[str], None]) -> Callable[[str], None] | None:
    """``log`` if it can be sent to a worker process, else ``None``."""
    try:
        pickle.dumps(log)
    except Exception:
        return None
    return log


def _spawn(
    settings: CompareSettings, worker_init: Callable[[], None] | None, log: Callable[[str], None], progress: bool
) -> list[Any]:
    """``settings.workers - 1`` worker processes on the study."""
    return spawn_workers(
        settings.workers, _worker_main, lambda _index: (settings, worker_init, log, progress), "compare-worker"
    )


def _worker_main(
    settings: CompareSettings, worker_init: Callable[[], None] | None, log: Callable[[str], None], progress: bool
) -> None:
    """A worker process: join the comparison's study and run cells until none is left."""
    if worker_init is not None:
        worker_init()
    cells = open_cells(settings, log=log, progress=progress)
    identity = CompareIdentity.of(cells)
    CellStudy.join(
        _storage_url(settings.storage), study_name_of(settings), identity, heartbeat=settings.heartbeat
    ).work(cells)


def report_from_storage(storage: str, study_name: str | None, out: Path | None = None) -> dict[str, Any]:
    """Write a comparison's tables and plot from its study alone (no data, model or run folder needed).

    Args:
        storage: The study's storage URL or ``.db`` path.
        study_name: The study (``None``: the one comparison in ``storage``).
        out: Where the reports go (default ``runs/STUDY``).

    Returns:
        :func:`~dspy_ext.compare.runner.run_compare`'s result object (no LM calls: ``new_lm_calls`` is 0).

    Raises:
        SettingsError: A bad storage, no such study, or several comparisons and no name.
    """
    started = time.perf_counter()
    study = CellStudy.load(_storage_url(storage), study_name)
    out = out or Path("runs") / study.study.study_name
    finished, failed = study.outcomes()
    result = finish(study.identity.meta, out, finished, failed, 0, UsageSnapshot(), started)
    for name, run_json in _run_files(study):
        path = out / "runs" / name / "run.json"
        if not path.exists():  # a run folder of this machine keeps its own
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(run_json, indent=2, default=str) + "\n")
    return result


def _run_files(study: CellStudy) -> list[tuple[str, dict[str, Any]]]:
    """``(cell name, run.json)`` of every finished cell that stored one."""
    return [
        (t.user_attrs[CELL_PARAM], t.user_attrs[RUN_ATTR])
        for t in study.study.get_trials(deepcopy=False)
        if t.state.name == "COMPLETE" and RUN_ATTR in t.user_attrs and CELL_PARAM in t.user_attrs
    ]
