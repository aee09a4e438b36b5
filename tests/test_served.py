"""Served models: budgets, token counts, resume and endpoint errors against a real OpenAI-compatible server.

llama.cpp's server (``llama-cpp-python[server]``) runs on loopback with the embedded SmolLM2 file; a
counting proxy in front of it counts, from the server's side of the client, every completion request and
the usage the server reported.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import dspy
import pytest

from dspy_ext.cli import main
from dspy_ext.lm import EndpointError, ServedEngine, check_endpoint, make_lm
from dspy_ext.lm.metering import CallMeter, metering
from dspy_ext.prompt_state import compile_record

from support.served import MODEL_ALIAS, CountingProxy, free_port, server_available
from support.slices import task_slice

pytestmark = [
    pytest.mark.embedded,
    pytest.mark.skipif(not server_available(), reason="needs llama-cpp-python[server]"),
]


def _compile_argv(folder: Path, out: Path, base: str, *extra: str) -> list[str]:
    return [
        "compile",
        "--data",
        str(folder),
        "--lm",
        f"openai/{MODEL_ALIAS}",
        "--api-base",
        base,
        "--adapter",
        "plain",
        "--val",
        "10",
        "--train",
        "20",
        "--seed",
        "0",
        "--out",
        str(out),
        "--json",
        *extra,
    ]


def test_make_lm_runs_a_served_model_on_a_metered_engine(proxy: CountingProxy) -> None:
    lm = make_lm(f"openai/{MODEL_ALIAS}", api_base=proxy.base, api_key="sk-local", cache=False, max_tokens=8)
    assert isinstance(lm.engine, ServedEngine)
    meter = CallMeter(max_calls=2)
    with metering(meter):
        lm("Say hi")
        lm("Say bye")
        with pytest.raises(Exception, match="budget"):
            lm("Say nothing")
    assert proxy.requests == 2  # the third call was refused before it reached the server
    snapshot = meter.snapshot()
    assert snapshot.calls == 2
    assert (snapshot.input_tokens, snapshot.output_tokens) == (proxy.input_tokens, proxy.output_tokens)
    assert snapshot.input_tokens > 0 and snapshot.output_tokens > 0


def test_compile_budget_holds_on_the_server_side_and_counts_match(proxy: CountingProxy, tmp_path: Path, capsys) -> None:
    folder = task_slice(tmp_path / "slice", n_train=30, n_test=4)
    out = tmp_path / "run"
    capsys.readouterr()
    code = main(_compile_argv(folder, out, proxy.base, "--optimizer", "ape", "--budget", "30", "--threads", "4"))
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["budget_enforced"] is True
    assert 0 < summary["lm_calls"] <= 30
    journal_lines = (out / "calls.jsonl").read_text().splitlines()
    assert len(journal_lines) >= summary["lm_calls"] - summary["replayed_calls"] > 0
    # The compile's calls plus the scoring after it (test, baseline, zero-shot, val, student val).
    scoring = proxy.requests - summary["lm_calls"]
    assert 0 <= scoring <= 4 * 3 + 10 * 2
    assert summary["tokens"] > 0

    # Running the same command again replays the journal: no compile call reaches the server twice.
    before = proxy.requests
    capsys.readouterr()
    assert main(_compile_argv(folder, out, proxy.base, "--optimizer", "ape", "--budget", "30", "--threads", "4")) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["replayed_calls"] == again["lm_calls"]
    assert proxy.requests - before <= scoring  # only the scoring ran again (its own cache is not the journal)


def test_user_built_lm_is_metered_by_the_optimizer(proxy: CountingProxy, tmp_path: Path) -> None:
    from dspy_ext import APE
    from dspy_ext.adapters import PlainAdapter
    from dspy_ext.data import load_task, split_train_val
    from metrics import exact_match
    from programs import Transform

    lm = dspy.LM(f"openai/{MODEL_ALIAS}", api_base=proxy.base, api_key="sk-local", cache=False)
    task = load_task("sentiment")
    train, val = split_train_val(task.train, 20, 10, seed=0)
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        compiled = APE(exact_match, max_lm_calls=25, seed=0, num_threads=4).compile(
            Transform(instructions=task.baseline_instruction), trainset=train, valset=val
        )
    assert compile_record(compiled).search is not None
    assert 0 < proxy.requests <= 25


@pytest.mark.parametrize("case", ["closed_port", "refused_key", "unknown_model"])
def test_a_wrong_endpoint_fails_fast_with_one_line(case: str, server: str, tmp_path: Path, capsys) -> None:
    folder = task_slice(tmp_path / "slice", n_train=30, n_test=4)
    proxy = CountingProxy(server, status=401) if case == "refused_key" else None
    base = {"closed_port": f"http://127.0.0.1:{free_port()}/v1", "unknown_model": server}.get(case) or proxy.base
    argv = _compile_argv(folder, tmp_path / "run", base, "--optimizer", "ape", "--budget", "30")
    if case == "unknown_model":
        argv[argv.index(f"openai/{MODEL_ALIAS}")] = "openai/no-such-model"
    started = time.monotonic()
    try:
        code = main(argv)
    finally:
        if proxy is not None:
            proxy.close()
    assert code == 2
    assert time.monotonic() - started < 30
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    expected = {"closed_port": "connection refused", "refused_key": "API key", "unknown_model": "no-such-model"}
    assert expected[case] in err[0] and base in err[0]
    if proxy is not None:
        assert proxy.requests == 0  # nothing was spent


def test_check_endpoint_accepts_the_served_model(server: str) -> None:
    check_endpoint(make_lm(f"openai/{MODEL_ALIAS}", api_base=server, api_key="sk-local"))
    with pytest.raises(EndpointError, match="not served"):
        check_endpoint(make_lm("openai/other", api_base=server, api_key="sk-local"))


def test_max_cost_stops_the_compile_at_the_cap_and_usd_matches_the_usage(
    proxy: CountingProxy, tmp_path: Path, capsys
) -> None:
    folder = task_slice(tmp_path / "slice", n_train=30, n_test=4)
    price = {"input_per_1m": 1000.0, "output_per_1m": 4000.0}  # dear, so that a few calls reach the cap
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"price": price}))
    argv = _compile_argv(folder, tmp_path / "run", proxy.base, "--optimizer", "ape", "--budget", "60")
    argv += ["--config", str(config), "--max-cost", "1.0", "--threads", "1"]
    capsys.readouterr()
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    expected = (
        summary["input_tokens"] * price["input_per_1m"] + summary["output_tokens"] * price["output_per_1m"]
    ) / 1e6
    assert summary["usd"] == pytest.approx(expected, abs=1e-6)
    assert summary["cost_cap_reached"] is True
    assert summary["lm_calls"] < 60  # stopped by dollars, not by calls
    one_call_at_most = (4096 * price["input_per_1m"] + 512 * price["output_per_1m"]) / 1e6
    assert 1.0 <= summary["usd"] <= 1.0 + one_call_at_most
    assert summary["input_tokens"] + summary["output_tokens"] <= proxy.input_tokens + proxy.output_tokens
    assert (tmp_path / "run" / "program.json").exists()  # the best program so far was kept


def test_an_unknown_price_is_reported_as_unknown(proxy: CountingProxy) -> None:
    lm = make_lm(f"openai/{MODEL_ALIAS}", api_base=proxy.base, api_key="sk-local", cache=False, max_tokens=4)
    meter = CallMeter()
    with metering(meter):
        lm("Say hi")
    assert meter.snapshot().usd is None  # smollm2 is in no price list


def test_faults_on_the_wire_are_retried_within_the_budget_and_counted_apart(
    server: str, tmp_path: Path, capsys
) -> None:
    folder = task_slice(tmp_path / "slice", n_train=30, n_test=4)
    faulty = CountingProxy(server, faults=0.2, seed=3)
    argv = _compile_argv(folder, tmp_path / "run", faulty.base, "--optimizer", "ape", "--budget", "30")
    argv += ["--threads", "2", "--lm-timeout", "4"]
    capsys.readouterr()
    try:
        assert main(argv) == 0
    finally:
        faulty.close()
    summary = json.loads(capsys.readouterr().out)
    assert sum(faulty.injected.values()) > 0
    assert summary["lm_calls"] <= 30  # every try counted, retries included
    assert summary["failed_calls"] > 0  # the faulted tries, apart from the answered ones
    assert summary["failed_calls"] <= summary["lm_calls"]
