"""``check_endpoint``'s wait: generous by default (a restarted server's first answer is slow), fast on a wrong endpoint."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dspy_ext.lm import EndpointError, check_endpoint, make_lm
from dspy_ext.lm.retry import CallPolicy, call_policy
from dspy_ext.lm.served import CHECK_TIMEOUT


def _lm(base: str):
    return make_lm("openai/smollm2", api_base=base, api_key="sk-local", cache=False)


def test_the_default_wait_is_generous_or_the_call_policys_when_longer(monkeypatch) -> None:
    import urllib.request

    waited: list[float] = []

    def fake_urlopen(request, timeout):
        waited.append(timeout)
        raise urllib.error.URLError(ConnectionRefusedError())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    lm = _lm("http://127.0.0.1:9/v1")
    for policy in (None, CallPolicy(timeout=4.0), CallPolicy(timeout=90.0)):
        with pytest.raises(EndpointError), call_policy(policy) if policy else contextlib.nullcontext():
            check_endpoint(lm)
    with pytest.raises(EndpointError):
        check_endpoint(lm, timeout=2.5)
    assert CHECK_TIMEOUT == 30.0 and waited == [30.0, 30.0, 90.0, 2.5]


def test_a_closed_port_fails_at_once() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(EndpointError, match="connection refused"):
        check_endpoint(_lm(f"http://127.0.0.1:{port}/v1"))
    assert time.monotonic() - started < 5


def test_a_refused_key_fails_at_once_and_a_silent_endpoint_waits_the_timeout() -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.server.silent:
                time.sleep(2)
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.silent = False
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        started = time.monotonic()
        with pytest.raises(EndpointError, match="refused the API key"):
            check_endpoint(_lm(base))
        assert time.monotonic() - started < 5
        server.silent = True
        with pytest.raises(EndpointError, match=r"no answer within 0.5 s"):
            check_endpoint(_lm(base), timeout=0.5)
    finally:
        server.shutdown()
        server.server_close()


def test_a_run_waits_for_the_model_list_as_long_as_its_lm_timeout(monkeypatch) -> None:
    from dspy_ext.experiment.components import build_components
    from dspy_ext.experiment.settings import ExperimentSettings

    class Slow(BaseHTTPRequestHandler):  # a server still busy with a killed run's completions
        def do_GET(self) -> None:
            time.sleep(1.0)
            body = b'{"object": "list", "data": [{"id": "smollm2", "object": "model"}]}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/v1"
    monkeypatch.setattr("dspy_ext.lm.served.CHECK_TIMEOUT", 0.3)
    try:
        with pytest.raises(EndpointError, match=r"no answer within 0.3 s"):
            build_components(ExperimentSettings(task="sentiment", lm="openai/smollm2", api_base=base))
        settings = ExperimentSettings(task="sentiment", lm="openai/smollm2", api_base=base, lm_timeout=5)
        assert build_components(settings).lm.model == "openai/smollm2"
    finally:
        server.shutdown()
        server.server_close()
