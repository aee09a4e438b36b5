"""A throwaway MLflow tracking server for tests: ``mlflow server`` on a free loopback port.

Its backend store is a SQLite file and its artifacts a folder, both in ``base``; clients log
artifacts through the server (``--serve-artifacts``, MLflow's default). The server runs in a
process group of its own, which :meth:`MlflowServer.stop` ends.

Example:
    >>> with MlflowServer(tmp_path) as server:          # doctest: +SKIP
    ...     MlflowClient(tracking_uri=server.uri).search_experiments()
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

#: Seconds the server has to answer its health check (a first start migrates the store).
START_TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on ``127.0.0.1`` with its store and artifacts in ``base``; stopped on exit."""

    def __init__(self, base: Path) -> None:
        self.base = Path(base)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> MlflowServer:
        self.base.mkdir(parents=True, exist_ok=True)
        mlflow = Path(sys.executable).with_name("mlflow")
        argv = [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        argv += ["--backend-store-uri", f"sqlite:///{self.base / 'mlflow.db'}"]
        argv += ["--artifacts-destination", str(self.base / "artifacts")]
        # No telemetry, and no price list fetched by LiteLLM (which the server imports): nothing leaves the machine.
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        log = (self.base / "server.log").open("w")
        self.process = subprocess.Popen(
            argv, cwd=self.base, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._wait_healthy()
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.base / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(
            f"mlflow server did not answer in {START_TIMEOUT} s: {(self.base / 'server.log').read_text()[-3000:]}"
        )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # the server's own group: its workers too
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
