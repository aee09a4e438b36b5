"""``dspy-ext compare`` and ``tune`` against a real served model (llama.cpp's server on loopback).

The run file declares the model's price, so every call has a dollar figure; each cell's compile stops at the
cap (its best program so far is scored), and the comparison's tables show what each optimizer spent. A prompt
model on an endpoint of its own (``--prompt-lm``, ``--prompt-api-base``) gets every instruction-writing request
of every cell and trial, and only those.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from dspy_ext.cli import main

from support.served import MODEL_ALIAS, CountingProxy, server_available
from support.slices import task_slice

pytestmark = [
    pytest.mark.embedded,
    pytest.mark.skipif(not server_available(), reason="needs llama-cpp-python[server]"),
]

CAP = 0.05  # USD per compile: at $100 per million tokens, some 5 calls of ~115 tokens each


def test_compare_stops_every_cell_at_the_cost_cap_and_reports_usd(
    proxy: CountingProxy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = task_slice(tmp_path / "slice", n_train=20, n_test=4)
    run_file = tmp_path / "run.yaml"
    run_file.write_text(
        f"lm: openai/{MODEL_ALIAS}\napi_base: {proxy.base}\nadapter: plain\n"
        "price: {input_per_1m: 100.0, output_per_1m: 100.0}\n"
    )
    out = tmp_path / "cmp"
    argv = ["compare", "--config", str(run_file), "--data", str(folder), "--optimizers", "ape,opro"]
    argv += ["--seeds", "1", "--budget", "200", "--max-cost", str(CAP), "--train", "10", "--val", "5"]
    argv += ["--threads", "1", "--out", str(out), "--json"]
    capsys.readouterr()
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)

    for row in result["rows"]:
        journal = (out / "runs" / f"{row['optimizer']}-s0" / "calls.jsonl").read_text().splitlines()
        costs = [json.loads(line)["usage"]["cost"] for line in journal]
        # Stopped by the dollars, not the 200 calls: one thread, so over the cap by at most the call in flight.
        assert row["cost_cap_reached"] and row["lm_calls"] < 200, row
        assert CAP <= row["usd"] <= CAP + max(costs), (row["usd"], max(costs))
        assert row["usd"] == pytest.approx(sum(costs), abs=1e-6)
        split = row["by_role"]
        assert split["task"]["calls"] + split["prompt"]["calls"] == row["lm_calls"]
    assert proxy.requests == result["new_lm_calls"]  # compile and test scoring, every one seen by the server

    md = (out / "results.md").read_text()
    assert "| LM calls (task/prompt) | tokens | USD |" in md
    for row in result["summary"]:
        line = next(line for line in md.splitlines() if line.startswith(f"| {row['optimizer']} | "))
        assert f"{row['usd_mean']:.4f} (1/1 at the cap)" in line
    with open(out / "results.csv") as fh:
        assert all(float(r["usd_mean"]) >= CAP for r in csv.DictReader(fh))


def _prompt_model_argv(folder: Path, task_base: str, prompt_base: str) -> list[str]:
    argv = ["--data", str(folder), "--lm", f"openai/{MODEL_ALIAS}", "--api-base", task_base, "--adapter", "plain"]
    argv += ["--prompt-lm", f"openai/{MODEL_ALIAS}", "--prompt-api-base", prompt_base]
    return argv + ["--train", "10", "--val", "5", "--threads", "1", "--budget", "24", "--json"]


def test_compare_and_tune_send_the_prompt_models_requests_to_its_own_endpoint(
    proxy: CountingProxy, server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = task_slice(tmp_path / "slice", n_train=20, n_test=4)
    prompt_proxy = CountingProxy(server)
    try:
        argv = _prompt_model_argv(folder, proxy.base, prompt_proxy.base)
        capsys.readouterr()
        assert main(["compare", *argv, "--optimizers", "ape", "--seeds", "1", "--out", str(tmp_path / "cmp")]) == 0
        row = json.loads(capsys.readouterr().out)["rows"][0]
        assert prompt_proxy.requests == row["by_role"]["prompt"]["calls"] > 0
        assert row["by_role"]["task"]["calls"] + row["by_role"]["prompt"]["calls"] == row["lm_calls"] <= 24
        compared = prompt_proxy.requests

        study = ["--optimizers", "ape", "--trials", "1", "--no-test", "--storage", str(tmp_path / "optuna.db")]
        assert main(["tune", *argv, *study, "--out", str(tmp_path / "tune")]) == 0
        tuned = json.loads(capsys.readouterr().out)
    finally:
        prompt_proxy.close()
    assert prompt_proxy.requests > compared  # the trial's instructions were written at the prompt endpoint
    assert tuned["n_trials"] == 1 and tuned["total_lm_calls"] >= prompt_proxy.requests - compared
    assert "prompt_api_base: " + prompt_proxy.base in (tmp_path / "tune" / "settings.yaml").read_text()
