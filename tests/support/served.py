"""A real OpenAI-compatible server for tests: llama.cpp's server on loopback, and a counting proxy in front.

``served_model()`` starts ``python -m llama_cpp.server`` with the embedded SmolLM2 file on a free
loopback port (the ``server`` extra of llama-cpp-python) and waits until ``GET /v1/models`` answers.
:class:`CountingProxy` forwards every request to it and counts, on the server side of the client, the
completion requests and the token usage the server reported; with ``status=401`` it answers every
request with that status instead (a refused key); with ``faults=0.2`` it answers a seeded fifth of the
completion requests with 429 + ``Retry-After``, a 500, a dropped connection, or a hang of ``HANG_SECONDS``.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

MODEL_ALIAS = "smollm2"
HANG_SECONDS = 8.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("fastapi") is not None


@contextlib.contextmanager
def served_model(log: Path) -> Iterator[str]:
    """Run llama.cpp's OpenAI-compatible server on loopback; yield its base URL (``.../v1``)."""
    from dspy_ext.lm import embedded_model_path

    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_model_path())]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", "1"]
    command += ["--model_alias", MODEL_ALIAS, "--verbose", "false"]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ})
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(base + "/models", timeout=2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"llama.cpp server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.3)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


class CountingProxy:
    """A loopback HTTP proxy that forwards to ``upstream`` and counts completion requests and usage.

    Attributes:
        requests: Completion requests (``POST .../completions``) that reached the proxy.
        input_tokens, output_tokens: The usage the server reported in its replies.
    """

    def __init__(self, upstream: str, *, status: int | None = None, faults: float = 0.0, seed: int = 0) -> None:
        self.upstream = urlsplit(upstream)
        self.status = status
        self.faults = faults
        self.injected: dict[str, int] = {"429": 0, "500": 0, "drop": 0, "hang": 0}
        self._rng = random.Random(seed)
        self.requests = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}{self.upstream.path}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _draw(self) -> str | None:
        """A fault for the next completion request (``None``: forward it), drawn with the seed."""
        with self._lock:
            if self._rng.random() >= self.faults:
                return None
            fault = self._rng.choice(sorted(self.injected))
            self.injected[fault] += 1
            return fault

    def _count(self, path: str, body: bytes) -> None:
        if not path.endswith("completions"):
            return
        try:
            usage = json.loads(body).get("usage") or {}
        except (ValueError, AttributeError):
            usage = {}
        with self._lock:
            self.input_tokens += int(usage.get("prompt_tokens") or 0)
            self.output_tokens += int(usage.get("completion_tokens") or 0)

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _forward(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if method == "POST" and self.path.endswith("completions"):
                    with proxy._lock:
                        proxy.requests += 1
                fault = proxy._draw() if method == "POST" else None
                if fault == "429":
                    self._reply(429, b'{"error": {"message": "rate limited"}}', retry_after="1")
                    return
                if fault == "500":
                    self._reply(500, b'{"error": {"message": "internal error"}}')
                    return
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault == "hang":
                    time.sleep(HANG_SECONDS)  # past the client's --lm-timeout
                if proxy.status is not None:
                    payload = json.dumps({"error": {"message": "Incorrect API key provided", "code": proxy.status}})
                    self._reply(proxy.status, payload.encode())
                    return
                connection = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=300)
                headers = {"Content-Type": self.headers.get("Content-Type", "application/json")}
                connection.request(method, self.path, body=body, headers=headers)
                answer = connection.getresponse()
                data = answer.read()
                connection.close()
                if answer.status == 200:
                    proxy._count(self.path, data)
                self._reply(answer.status, data)

            def _reply(self, status: int, data: bytes, retry_after: str | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._forward("GET")

            def do_POST(self) -> None:
                self._forward("POST")

        return Handler


class ChatOnlyProxy(CountingProxy):
    """A :class:`CountingProxy` whose endpoint has no text-completions route: ``POST .../v1/completions``
    answers 404 (as a chat-only API does), chat completions are forwarded.

    ``completions_allowed`` forwards that many ``/completions`` requests first (an endpoint that stops
    scoring midway, after the probe passed).

    Attributes:
        refused: The ``/completions`` requests answered with 404 (also counted in ``requests``).
        forwarded_completions: The ``/completions`` requests forwarded.
    """

    refused = 0
    forwarded_completions = 0

    def __init__(self, upstream: str, *, completions_allowed: int = 0, **kwargs) -> None:
        self.completions_allowed = completions_allowed
        super().__init__(upstream, **kwargs)

    def _handler(self):
        proxy = self
        forwarding = super()._handler()

        class Handler(forwarding):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                if self.path.endswith("/completions") and not self.path.endswith("/chat/completions"):
                    with proxy._lock:
                        forward = proxy.forwarded_completions < proxy.completions_allowed
                        proxy.forwarded_completions += int(forward)
                    if forward:
                        super().do_POST()
                        return
                    self.rfile.read(int(self.headers.get("Content-Length") or 0))
                    with proxy._lock:
                        proxy.requests += 1
                        proxy.refused += 1
                    self._reply(404, b'{"error": {"message": "Not Found"}}')
                    return
                super().do_POST()

        return Handler
