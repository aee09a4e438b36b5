"""The typed run summary: ``to_dict()`` is ``run.json`` key for key and in order, ``from_dict`` reads it back."""

from __future__ import annotations

import json
from pathlib import Path

from dspy_ext.compare.runner import ROW_FIELDS, cell_row
from dspy_ext.experiment import RunSettings, RunSummary, run
from dspy_ext.experiment.summary import Spend, StoppedSummary

from support.fake_world import fake_world_lm, write_task

#: ``run.json``'s keys, in the order the file has always had them.
RUN_KEYS = [
    "task", "program", "metric", "optimizer", "seed", "budget", "budget_enforced", "config", "lm", "adapter",
    "train", "val", "test", "val_score", "test_score", "baseline_test_score", "baseline", "zero_shot_test_score",
    "lm_calls", "failed_calls", "tokens", "input_tokens", "output_tokens", "usd", "by_role", "projection",
    "max_cost", "cost_cap_reached", "seconds", "budget_exhausted", "replayed_calls", "test_errors", "data_hash",
    "out",
]  # fmt: skip


def _run(tmp_path: Path, **changes) -> object:
    folder = write_task(tmp_path / "items", n_train=40, n_test=16)
    settings = RunSettings.build(
        {
            "data": str(folder),
            "optimizer": "ape",
            "budget": 40,
            "train": 12,
            "val": 8,
            "threads": 1,
            "adapter": "plain",
            "out": str(tmp_path / "run"),
            **changes,
        }
    )
    return run(settings, lm=fake_world_lm())


def test_run_json_has_the_keys_in_their_order_and_reads_back(tmp_path: Path) -> None:
    result = _run(tmp_path, guards={"score": 0.0}, repeats=2)
    stored = json.loads((result.out / "run.json").read_text())
    assert list(stored) == [*RUN_KEYS, "search", "guard_report", "repeats"]
    assert list(result.summary.to_dict()) == list(stored)
    assert RunSummary.from_dict(stored) == result.summary
    assert RunSummary.from_dict(stored).to_dict() == stored
    summary = result.summary
    assert summary.scores.test == stored["test_score"] and summary.spend.lm_calls == stored["lm_calls"]
    assert summary.spend.role_calls("task") + summary.spend.role_calls("prompt") == summary.spend.lm_calls
    assert summary.figures.repeats["k"] == 2 and summary.figures.guard_report["tolerances"] == {"score": 0.0}
    # A comparison cell's row is the same figures under the same names.
    row = cell_row(summary)
    assert tuple(row) == ROW_FIELDS and all(row[k] == stored[k] for k in ROW_FIELDS)


def test_a_review_table_stands_where_the_metric_has_none_and_reads_back(tmp_path: Path) -> None:
    base = json.loads((_run(tmp_path).out / "run.json").read_text())
    review = {
        **base,
        "criteria": {"exact_match": {"student": 0.0, "compiled": 50.0}},
        "feedback": {"labeled": 3, "notes": []},
        "pinned": {"total": 1, "kept": 1, "broken": 0, "unscored": 0, "broken_items": []},
    }
    summary = RunSummary.from_dict(review)
    assert summary.figures.criteria is None and summary.criteria == review["criteria"]
    assert summary.to_dict() == review and list(summary.to_dict()) == list(review)


def test_an_older_run_json_without_spend_fields_reads_back_with_unknowns() -> None:
    old = {"task": "items", "optimizer": "ape", "seed": 0, "test_score": 50.0, "val_score": 40.0, "lm_calls": 12}
    summary = RunSummary.from_dict(old)
    assert summary.scores.test == 50.0 and summary.spend.usd is None and summary.spend.by_role == {}


def test_a_stopped_run_keeps_its_short_summary() -> None:
    spend = Spend.from_dict({"lm_calls": 3, "projection": {"calls": 40}})
    stopped = StoppedSummary(task="items", optimizer="ape", seed=0, stopped="gone", spend=spend, seconds=1.0, out="o")
    assert list(stopped.to_dict()) == [
        "task", "optimizer", "seed", "stopped", "lm_calls", "failed_calls", "tokens", "input_tokens",
        "output_tokens", "usd", "by_role", "projection", "seconds", "out",
    ]  # fmt: skip
