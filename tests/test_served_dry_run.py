"""On a real served model: the dry run sends nothing, nothing reaches the internet, and an endpoint that stops
answering mid-compile stops the compile with the best program so far (llama.cpp's server on loopback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dspy_ext.cli import main

from support.served import MODEL_ALIAS, CountingProxy, server_available
from support.slices import task_slice

pytestmark = [
    pytest.mark.embedded,
    pytest.mark.skipif(not server_available(), reason="needs llama-cpp-python[server]"),
]

#: Refuses every connection that does not go to loopback, and writes down where it would have gone.
_NO_INTERNET = """
import os, socket
_connect = socket.socket.connect
def _guarded(self, address):
    host = address[0] if isinstance(address, tuple) else str(address)
    if self.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1", "localhost"):
        with open(os.environ["DSPY_EXT_TEST_NET_LOG"], "a") as log:
            log.write(f"{host}\\n")
        raise OSError("no internet in this test")
    return _connect(self, address)
socket.socket.connect = _guarded
"""


def _argv(folder: Path, out: Path, base: str, *extra: str) -> list[str]:
    common = ["compile", "--data", str(folder), "--lm", f"openai/{MODEL_ALIAS}", "--api-base", base]
    return [*common, "--adapter", "plain", "--train", "12", "--val", "6", "--seed", "0", "--out", str(out), *extra]


def test_a_compile_with_no_network_tries_no_download_and_warns_of_none(proxy: CountingProxy, tmp_path: Path) -> None:
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(_NO_INTERNET)
    net_log = tmp_path / "net.log"
    env = {k: v for k, v in os.environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}
    env.update(
        PYTHONPATH=os.pathsep.join([str(guard), env.get("PYTHONPATH", "")]),
        DSPY_EXT_TEST_NET_LOG=str(net_log),
        OPENAI_API_BASE=proxy.base,  # DSPy then goes through LiteLLM, which would fetch its price list
        OPENAI_API_KEY="sk-local",
    )
    folder = task_slice(tmp_path / "data", n_train=20, n_test=4)
    argv = _argv(folder, tmp_path / "run", proxy.base, "--optimizer", "ape", "--budget", "6", "--json")
    done = subprocess.run(
        [sys.executable, "-m", "dspy_ext", *argv], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert not net_log.exists(), f"tried to reach: {net_log.read_text()}"
    for word in ("download", "cost map", "model_prices", "Failed to fetch"):
        assert word.lower() not in done.stderr.lower(), done.stderr[-2000:]
    assert json.loads(done.stdout)["lm_calls"] <= 6 and proxy.requests > 0


def test_the_dry_run_sends_no_completion_and_the_run_shows_it_next_to_the_actuals(
    proxy: CountingProxy, tmp_path: Path, capsys
) -> None:
    folder = task_slice(tmp_path / "data", n_train=20, n_test=4)
    argv = _argv(folder, tmp_path / "run", proxy.base, "--optimizer", "ape", "--budget", "12", "--json")
    capsys.readouterr()
    assert main([*argv, "--dry-run"]) == 0
    projected = json.loads(capsys.readouterr().out)
    assert proxy.requests == 0  # the endpoint check is a GET of the model list; no completion was asked for
    assert projected["calls"] == 12 and projected["by_role"]["prompt"]["calls"] > 0
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["projection"]["calls"] == projected["calls"]
    roles = summary["by_role"]
    assert roles["task"]["calls"] + roles["prompt"]["calls"] == summary["lm_calls"] <= 12
    assert "## Spend: projected" in (tmp_path / "run" / "report.md").read_text()


def test_an_endpoint_that_stops_answering_stops_the_compile_with_one_line(
    proxy: CountingProxy, tmp_path: Path, capsys
) -> None:
    def fail_after(n: int) -> None:
        while proxy.requests < n:
            time.sleep(0.05)
        proxy.status = 503  # every request from now on: the server is gone

    threading.Thread(target=fail_after, args=(10,), daemon=True).start()
    folder = task_slice(tmp_path / "data", n_train=20, n_test=4)
    out = tmp_path / "run"
    started = time.monotonic()
    code = main(_argv(folder, out, proxy.base, "--optimizer", "ape", "--budget", "200", "--threads", "2"))
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("dspy-ext compile: stopped: the model stopped answering")
    assert "program.json" in err[-1] and (out / "program.json").exists()
    stopped = json.loads((out / "run.json").read_text())
    assert stopped["failed_calls"] >= 12 and stopped["lm_calls"] < 200
    assert proxy.requests < 10 + 12 + 4  # the breaker opened after 12 failed tries (and 2 threads in flight)
    assert elapsed < 120, elapsed


def test_a_prompt_model_on_its_own_endpoint_gets_the_prompt_requests_and_the_dry_run_projects_them(
    proxy: CountingProxy, server: str, tmp_path: Path, capsys
) -> None:
    prompt_proxy = CountingProxy(server)  # the prompt model's own endpoint (the same server behind it)
    try:
        folder = task_slice(tmp_path / "data", n_train=20, n_test=4)
        prompt = ["--prompt-lm", f"openai/{MODEL_ALIAS}", "--prompt-api-base", prompt_proxy.base]
        argv = _argv(folder, tmp_path / "run", proxy.base, "--optimizer", "ape", "--budget", "12", *prompt, "--json")
        capsys.readouterr()
        assert main([*argv, "--dry-run"]) == 0
        projected = json.loads(capsys.readouterr().out)
        assert proxy.requests == prompt_proxy.requests == 0
        planned = projected["by_role"]["prompt"]["calls"]
        assert planned > 0 and {m["role"] for m in projected["by_meta_prompt"]} <= {"induce", "paraphrase"}
        assert main(argv) == 0
        summary = json.loads(capsys.readouterr().out)
    finally:
        prompt_proxy.close()
    roles = summary["by_role"]
    # Every prompt-model call went to its endpoint, and only those; the task endpoint had the rest (and the scoring).
    assert prompt_proxy.requests == roles["prompt"]["calls"] > 0
    assert proxy.requests >= roles["task"]["calls"] > 0
    assert summary["projection"]["by_role"]["prompt"]["calls"] == planned
    settings = (tmp_path / "run" / "settings.yaml").read_text()
    assert f"prompt_api_base: {prompt_proxy.base}" in settings
