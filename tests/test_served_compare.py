"""``dspy-ext compare --max-cost`` against a real served model (llama.cpp's server on loopback).

The run file declares the model's price, so every call has a dollar figure; each cell's compile stops at the
cap (its best program so far is scored), and the comparison's tables show what each optimizer spent.
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
