"""Served models get the embedded model's guarantees on whole runs: kill -9 and resume, parity, two models.

Against llama.cpp's real OpenAI-compatible server on loopback (one per module), with counting proxies in
front of it that count, on the server side of the client, every completion request and its usage:

* a compile killed with SIGKILL midway resumes from its call journal, spends no more than its budget over
  both runs (plus the calls in flight at the kill), and returns the program an uninterrupted run returns;
* ``demo-search`` on the served model and on the embedded engine, same task, seed, budget and adapter;
* a separate prompt model on its own endpoint, with four threads: the cap holds over both endpoints and the
  optimizer's reported calls and tokens are the servers' counts.

Everything is greedy (``make_lm``'s default temperature 0) and small, because the server answers one
request at a time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import dspy
import pytest

from dspy_ext.cli import main
from dspy_ext.prompt_state import compile_record

from support.served import MODEL_ALIAS, CountingProxy, server_available
from support.slices import task_slice

pytestmark = [
    pytest.mark.embedded,
    pytest.mark.skipif(not server_available(), reason="needs llama-cpp-python[server]"),
]

TRAIN, VAL, TEST = 12, 6, 4
THREADS = 2


def _argv(folder: Path, out: Path, lm: str, *extra: str, api_base: str | None = None) -> list[str]:
    argv = ["compile", "--data", str(folder), "--lm", lm, "--adapter", "plain", "--no-cache"]
    argv += ["--val", str(VAL), "--train", str(TRAIN), "--seed", "0", "--out", str(out), "--json", *extra]
    return argv + (["--api-base", api_base] if api_base else [])


def _served(folder: Path, out: Path, base: str, *extra: str) -> list[str]:
    return _argv(folder, out, f"openai/{MODEL_ALIAS}", *extra, api_base=base)


def _program(out: Path) -> dict[str, Any]:
    state = json.loads((out / "program.json").read_text())
    state.pop("metadata", None)  # library versions, not the program
    return state


def _compile(argv: list[str], capsys) -> dict[str, Any]:
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _kill_midway(argv: list[str], proxy: CountingProxy, after: int, cwd: Path) -> int:
    """Run ``dspy-ext`` in a subprocess, SIGKILL it once ``after`` requests reached the proxy; the requests then."""
    env = {**os.environ, "DSPY_CACHEDIR": str(cwd / "dspy_cache")}
    process = subprocess.Popen(
        [sys.executable, "-m", "dspy_ext", *argv], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 600
        while proxy.requests < after:
            assert process.poll() is None, f"the run ended before the kill: {process.stderr.read()[-2000:]!r}"
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(30)
    assert process.returncode == -signal.SIGKILL
    # The server finishes the dead client's requests first (one at a time; its model list waits behind them).
    with urllib.request.urlopen(proxy.base + "/models", timeout=300):
        pass
    return proxy.requests


def test_a_served_compile_killed_midway_resumes_within_its_budget_to_the_same_program(
    server: str, tmp_path: Path, capsys
) -> None:
    folder = task_slice(tmp_path / "slice", n_train=TRAIN + VAL, n_test=TEST)
    budget = 18
    extra = ("--optimizer", "ape", "--budget", str(budget), "--threads", str(THREADS))

    # The reference: the same compile, uninterrupted, into another folder.
    whole = CountingProxy(server)
    try:
        reference = _compile(_served(folder, tmp_path / "whole", whole.base, *extra), capsys)
        scoring = whole.requests - reference["lm_calls"]  # test, baseline, zero-shot and val rows; no cache
    finally:
        whole.close()
    assert reference["replayed_calls"] == 0 and 0 < reference["lm_calls"] <= budget and scoring > 0

    proxy = CountingProxy(server)
    out = tmp_path / "run"
    try:
        before_kill = _kill_midway(_served(folder, out, proxy.base, *extra), proxy, budget // 3, tmp_path)
        journal = out / "calls.jsonl"
        answered = len(journal.read_text().splitlines())
        assert 0 < answered <= before_kill
        with journal.open("a") as torn:
            torn.write('{"key": "0f3a", "record": {"respo')  # what a kill in the middle of a write leaves
        resumed = _compile(_served(folder, out, proxy.base, *extra), capsys)
        after = proxy.requests
    finally:
        proxy.close()

    assert resumed["replayed_calls"] > 0
    assert resumed["lm_calls"] <= budget
    compile_requests = before_kill + (after - before_kill - scoring)
    assert compile_requests <= budget + THREADS  # at most the calls in flight at the kill are paid twice
    for line in journal.read_text().splitlines():
        json.loads(line)  # the torn line was dropped, not glued to the next reply
    assert _program(out) == _program(tmp_path / "whole")
    assert resumed["test_score"] == reference["test_score"]


def test_demo_search_on_the_served_model_matches_the_embedded_engine(
    proxy: CountingProxy, tmp_path: Path, capsys
) -> None:
    folder = task_slice(tmp_path / "slice", n_train=TRAIN + VAL, n_test=TEST)
    extra = ("--optimizer", "demo-search", "--budget", "16", "--threads", "1")
    served = _compile(_served(folder, tmp_path / "served", proxy.base, *extra), capsys)
    local = _compile(_argv(folder, tmp_path / "local", "local", *extra), capsys)
    print(f"demo-search test score: served {served['test_score']}, embedded {local['test_score']}")
    assert _program(tmp_path / "served") == _program(tmp_path / "local")
    assert (served["test_score"], served["val_score"]) == (local["test_score"], local["val_score"])
    # The served engine spends one metered request deciding whether the endpoint scores likelihoods.
    assert 0 < local["lm_calls"] <= served["lm_calls"] <= local["lm_calls"] + 1


def test_a_prompt_model_on_its_own_endpoint_with_four_threads_stays_in_one_cap(server: str) -> None:
    from dspy_ext.adapters import PlainAdapter
    from dspy_ext.data import load_task, split_train_val
    from dspy_ext.optimizers import APE
    from metrics import exact_match
    from programs import Transform

    task_proxy, prompt_proxy = CountingProxy(server), CountingProxy(server)
    task = load_task("sentiment")
    train, val = split_train_val(task.train, TRAIN, VAL, seed=0)
    task_lm = dspy.LM(f"openai/{MODEL_ALIAS}", api_base=task_proxy.base, api_key="sk-local", cache=False)
    prompt_lm = dspy.LM(f"openai/{MODEL_ALIAS}", api_base=prompt_proxy.base, api_key="sk-local", cache=False)
    try:
        with dspy.context(lm=task_lm, adapter=PlainAdapter()):
            optimizer = APE(exact_match, max_lm_calls=60, num_threads=4, prompt_model=prompt_lm, seed=0)
            compiled = optimizer.compile(Transform(instructions=task.baseline_instruction), trainset=train, valset=val)
    finally:
        task_proxy.close()
        prompt_proxy.close()
    result = compile_record(compiled).search
    assert prompt_proxy.requests > 0 and task_proxy.requests > 0
    assert task_proxy.requests + prompt_proxy.requests <= 60
    assert result.lm_calls == task_proxy.requests + prompt_proxy.requests
    served_tokens = sum(p.input_tokens + p.output_tokens for p in (task_proxy, prompt_proxy))
    assert result.tokens == served_tokens > 0
