"""Where studies live: Optuna RDB storage with heartbeats and retry of stale trials.

* The default is a SQLite file, ``runs/tune/optuna.db``; any SQLAlchemy URL
  Optuna accepts works too (``postgresql://user@host/db``, ``mysql+pymysql://...``),
  and a bare path ending in ``.db``/``.sqlite`` means a SQLite file.
* Every RDB storage gets a heartbeat: a running trial writes one every
  ``heartbeat_interval`` seconds, and a trial whose heartbeat is older than
  ``grace_period`` (a process killed with ``kill -9``, a lost machine) is marked
  failed by the next trial any worker starts, and re-queued once with the same
  parameters (Optuna's ``RetryFailedTrialCallback``, renamed
  ``RetryHeartbeatStaleTrialCallback`` in Optuna 5). So a killed process loses at
  most the trial it was running, and that trial is run again.
* ``"memory"`` gives an in-memory study (no persistence, no heartbeat).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path("runs") / "tune"
DEFAULT_DB = DEFAULT_DIR / "optuna.db"
MEMORY = "memory"


def default_storage_url() -> str:
    """``sqlite:////abs/path/runs/tune/optuna.db`` (absolute, so every worker and the dashboard agree)."""
    return sqlite_url(DEFAULT_DB)


def sqlite_url(path: str | Path) -> str:
    return "sqlite:///" + Path(path).resolve().as_posix()


def normalize_url(storage: str | None) -> str:
    """The storage URL for ``storage``: ``None`` -> the default SQLite file; a ``.db`` path -> a SQLite URL."""
    if storage is None or storage == "":
        return default_storage_url()
    if storage in (MEMORY, ":memory:"):
        return MEMORY
    if "://" not in storage:
        if Path(storage).suffix.lower() in (".db", ".sqlite", ".sqlite3"):
            return sqlite_url(storage)
        raise ValueError(
            f"storage {storage!r} is neither a database URL (sqlite:///..., postgresql://...) nor a .db file path"
        )
    if storage.startswith("sqlite:///") and not storage.startswith("sqlite:////") and ":memory:" not in storage:
        return sqlite_url(storage[len("sqlite:///") :])  # relative path -> absolute
    return storage


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL, else ``None``."""
    if url.startswith("sqlite:///") and ":memory:" not in url:
        return Path(url[len("sqlite:///") :])
    return None


def study_dir(url: str, study_name: str) -> Path | None:
    """Where a study's files go: next to a SQLite file, else ``runs/tune/<study>``; ``None`` in memory."""
    if url == MEMORY:
        return None
    db = sqlite_path(url)
    return (db.parent if db is not None else DEFAULT_DIR.resolve()) / _safe(study_name)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "study"


def make_storage(
    url: str, *, heartbeat_interval: int | None = 10, grace_period: int | None = None, max_retry: int | None = 2
) -> Any:
    """An Optuna storage for ``url`` (see the module docstring).

    Args:
        url: A normalized URL (:func:`normalize_url`) or ``"memory"``.
        heartbeat_interval: Seconds between heartbeats of a running trial (``None``: no heartbeat).
        grace_period: Seconds without a heartbeat after which a trial is stale (default ``2 x interval``).
        max_retry: How often a stale trial is re-queued (``None``: always).
    """
    import optuna
    from optuna.storages import RDBStorage

    if url == MEMORY:
        return optuna.storages.InMemoryStorage()
    db = sqlite_path(url)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if db is not None else {"pool_pre_ping": True}
    kwargs: dict[str, Any] = {}
    if heartbeat_interval:
        retry_cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
        kwargs = {
            "heartbeat_interval": int(heartbeat_interval),
            "grace_period": int(grace_period or 2 * heartbeat_interval),
        }
        if retry_cls is not None:  # Optuna >= 4.9
            kwargs["heartbeat_stale_trial_callback"] = retry_cls(max_retry=max_retry)
        else:
            kwargs["failed_trial_callback"] = optuna.storages.RetryFailedTrialCallback(max_retry=max_retry)
    # Heartbeats are an experimental Optuna API: its ExperimentalWarning is for the caller to filter (the CLI does).
    storage = RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
    if db is not None:
        _sqlite_wal(storage.engine)
    return storage


def _sqlite_wal(engine: Any) -> None:
    """Write-ahead logging for a SQLite study.

    Each trial writes a few dozen small transactions (user attributes, heartbeats);
    with the default rollback journal every one waits for an fsync, and readers
    block writers. In WAL mode with ``synchronous=NORMAL`` a commit is an append,
    other workers read while one writes, and a killed process loses nothing it
    committed (only a power cut may drop the last transactions).
    """
    from sqlalchemy import event

    def pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(engine, "connect", pragmas)
    engine.dispose()  # connections opened before the listener are replaced


def display_url(url: str) -> str:
    """``url`` with any password masked (for logs and JSON)."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        if ":" in creds:
            creds = creds.split(":", 1)[0] + ":***"
        return f"{scheme}://{creds}@{host}"
    return url


def dashboard_command(url: str, *, port: int = 8080, host: str = "127.0.0.1", artifact_dir: Path | None = None) -> str:
    """The exact ``optuna-dashboard`` command that opens the study's storage."""
    if url == MEMORY:
        return "(in-memory study: nothing for optuna-dashboard to open)"
    parts = ["optuna-dashboard", url, "--host", host, "--port", str(port)]
    if artifact_dir is not None:
        parts += ["--artifact-dir", str(artifact_dir)]
    return " ".join(shlex.quote(p) for p in parts)
