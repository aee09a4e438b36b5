"""A throwaway PostgreSQL server for tests: ``initdb`` + ``pg_ctl`` in a temp folder, on a free loopback port.

Uses Debian's ``postgresql`` package (``.ci/run`` installs it): the binaries are
looked up on ``PATH``, in ``/usr/local/bin`` and in ``/usr/lib/postgresql/*/bin``.
PostgreSQL refuses to run as root, so as root the server runs as the
``postgres`` user (or ``nobody``) through ``runuser``.

Example:
    >>> with PostgresServer() as pg:                    # doctest: +SKIP
    ...     url = pg.create_database("optuna")          # postgresql+psycopg2://postgres@127.0.0.1:PORT/optuna
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def find_binaries() -> dict[str, str] | None:
    """Paths of ``initdb``, ``pg_ctl`` and ``postgres``, or ``None`` if PostgreSQL is not installed."""
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d] + ["/usr/local/bin"]
    dirs += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for folder in dirs:
        paths = {name: os.path.join(folder, name) for name in ("initdb", "pg_ctl", "postgres")}
        if all(os.access(p, os.X_OK) for p in paths.values()):
            return paths
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> str | None:
    """The user to run the server as (``None``: the current, non-root user)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists")


class PostgresServer:
    """Start a private PostgreSQL server in ``base`` (default: a new temp folder); stop and delete it on exit."""

    def __init__(self, base: str | Path | None = None) -> None:
        binaries = find_binaries()
        if binaries is None:
            raise FileNotFoundError("PostgreSQL binaries (initdb, pg_ctl, postgres) not found")
        self.bin = binaries
        # A fresh folder directly under the temp dir, so that a non-root server user can reach it.
        self.base = Path(base) if base is not None else Path(tempfile.mkdtemp(prefix="dspy-ext-pg-"))
        self.data = self.base / "pgdata"
        self.sockets = self.base / "sock"
        self.log = self.base / "postgres.log"
        self.port = _free_port()
        self.user = _run_as()
        self.started = False

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", self.user, "--", *args] if self.user else list(args)

    def __enter__(self) -> PostgresServer:
        self.base.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir(exist_ok=True)
        if self.user:
            info = pwd.getpwnam(self.user)
            for path in (self.base, self.sockets):
                os.chown(path, info.pw_uid, info.pw_gid)
        subprocess.run(
            self._cmd(
                self.bin["initdb"], "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"
            ),
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            self._cmd(
                self.bin["pg_ctl"], "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"
            ),
            check=True,
            capture_output=True,
            text=True,
            timeout=90,
        )
        self.started = True
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import psycopg2

        deadline = time.time() + 30
        while True:
            try:
                psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres").close()
                return
            except psycopg2.OperationalError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)

    def create_database(self, name: str) -> str:
        """Create database ``name``; return its SQLAlchemy URL."""
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{name}"

    def __exit__(self, *exc: object) -> None:
        if self.started:
            subprocess.run(
                self._cmd(self.bin["pg_ctl"], "-D", str(self.data), "-m", "immediate", "-w", "stop"),
                capture_output=True,
                text=True,
                timeout=60,
            )
            self.started = False
        shutil.rmtree(self.base, ignore_errors=True)
