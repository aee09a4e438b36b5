"""Spend by role, the dry-run projection, the circuit breaker and unmetered LMs (fake engine)."""

from __future__ import annotations

import json
from pathlib import Path

import dspy
import pytest

from dspy_ext.cli import main
from dspy_ext.experiment import RunSettings, SettingsError, run
from dspy_ext.experiment.run import dry_run
from dspy_ext.lm import (
    CallMeter,
    CallPolicy,
    FakeEngine,
    ModelUnavailable,
    call_policy,
    find_budget_exhausted,
    lm_role,
    metering,
)
from dspy_ext.lm.metering import with_role
from dspy_ext.registry import REGISTRY, build_optimizer
from dspy_ext.search.plan import CallPlan, MetaPromptCalls

from support.fake_world import dying_lm, fake_world_lm, respond, write_task


@pytest.fixture
def task_folder(tmp_path: Path) -> Path:
    return write_task(tmp_path / "items", n_train=40, n_test=16)


def _settings(task_folder: Path, out: Path, **changes) -> RunSettings:
    values = {
        "data": str(task_folder),
        "optimizer": "ape",
        "budget": 40,
        "train": 12,
        "val": 8,
        "threads": 1,
        "adapter": "plain",
        "out": str(out),
    }
    return RunSettings(**{**values, **changes})


# ---- roles ------------------------------------------------------------------------------------


def test_a_meter_counts_each_role_apart_and_the_roles_add_up_to_the_total() -> None:
    lm = fake_world_lm()
    meter = CallMeter()
    with metering(meter), dspy.context(lm=lm):
        lm("a task call")
        with lm_role("prompt"):
            lm("a proposal")
        with_role(lm, "prompt")("another proposal")
    roles = meter.by_role()
    assert (roles["task"].calls, roles["prompt"].calls) == (1, 2)
    total = meter.snapshot()
    assert roles["task"].total_tokens + roles["prompt"].total_tokens == total.total_tokens > 0


def test_a_compile_reports_its_spend_by_task_and_prompt_model(task_folder: Path, tmp_path: Path) -> None:
    lm = fake_world_lm()
    result = run(_settings(task_folder, tmp_path / "run"), lm=lm)
    roles = result.summary.to_dict()["by_role"]
    assert roles["prompt"]["calls"] > 0 and roles["task"]["calls"] > 0
    assert roles["task"]["calls"] + roles["prompt"]["calls"] == result.summary.spend.lm_calls == 40
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Spend: projected" in report and "| prompt |" in report


def test_dspy_optimizers_count_their_prompt_model_as_such(task_folder: Path, tmp_path: Path) -> None:
    settings = _settings(
        task_folder, tmp_path / "copro", optimizer="copro", optimizer_config={"breadth": 2, "depth": 1}
    )
    result = run(settings, lm=fake_world_lm())
    assert result.summary.spend.role_calls("prompt") > 0


# ---- plans and the projection -------------------------------------------------------------------


def test_a_plan_is_cut_to_the_budget_in_proportion() -> None:
    asks = (MetaPromptCalls("induce", 12), MetaPromptCalls("paraphrase", 8))
    capped = CallPlan(300, asks, 3).capped(160)
    assert capped == CallPlan(150, (MetaPromptCalls("induce", 6), MetaPromptCalls("paraphrase", 4)), 3)
    assert CallPlan(30, asks[:1]).capped(None) == CallPlan(30, asks[:1])
    with pytest.raises(ValueError):
        CallPlan(-1)


@pytest.mark.parametrize("name", ["ape", "opro", "evoprompt-ga", "protegi", "demo-search", "copro"])
def test_optimizers_that_keep_the_budget_plan_within_it(name: str) -> None:
    handle = build_optimizer(name, lambda e, p, t=None: 1.0, budget=120, n_train=30, n_val=20)
    plan = handle.plan(dspy.Predict("text -> label"))
    assert plan is not None and plan.task_calls > 0
    if REGISTRY[name].enforces_budget:
        assert plan.calls <= 120


def test_the_dry_run_makes_no_call_and_projects_tokens_from_the_prompts(task_folder: Path, tmp_path: Path) -> None:
    lm = fake_world_lm()
    projection = dry_run(_settings(task_folder, tmp_path / "dry"), lm=lm)
    assert lm.engine.calls == 0
    assert not (tmp_path / "dry").exists()  # no run folder either
    assert projection.known and projection.calls <= 40
    assert projection.prompt.calls > 0 and projection.task.input_tokens > projection.task.calls
    assert projection.usd == 0.0  # the fake engine's price is 0, so the projection is priced


def test_the_dry_run_on_the_command_line_prints_the_projection(task_folder: Path, tmp_path: Path, capsys) -> None:
    lm = fake_world_lm()
    argv = ["compile", "--data", str(task_folder), "--optimizer", "opro", "--budget", "50", "--train", "12"]
    code = main([*argv, "--val", "8", "--adapter", "plain", "--dry-run", "--json"], lm=lm)
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["dry_run"] is True and lm.engine.calls == 0
    assert out["calls"] == out["by_role"]["task"]["calls"] + out["by_role"]["prompt"]["calls"] <= 50


def test_the_projection_is_close_to_what_a_compile_spends(task_folder: Path, tmp_path: Path) -> None:
    result = run(_settings(task_folder, tmp_path / "run"), lm=fake_world_lm())
    projected, spent = result.summary.spend.projection, result.summary.spend
    assert projected["calls"] == pytest.approx(spent.lm_calls, rel=0.25)
    assert projected["tokens"] == pytest.approx(spent.tokens, rel=0.5)


# ---- a model that stops answering ---------------------------------------------------------------


def test_the_breaker_stops_calls_after_failed_tries_in_a_row() -> None:
    lm = dying_lm(answers=1)
    meter = CallMeter(max_failures_in_a_row=3)
    with metering(meter), call_policy(CallPolicy(max_retries=0)):
        lm("answered")
        for _ in range(5):
            try:
                lm("fails")
            except Exception as exc:
                stop = find_budget_exhausted(exc)
        assert isinstance(stop, ModelUnavailable) and "ConnectionRefusedError" in str(stop)
    assert meter.snapshot().failed_calls == 3  # nothing reached the model after the breaker opened


def test_an_error_the_model_answers_does_not_open_the_breaker() -> None:
    lm = dspy.LM("fake/refusing-v1", engine=FakeEngine(respond, fail_when=lambda m: True), cache=False)
    meter = CallMeter(max_failures_in_a_row=2)
    with metering(meter), call_policy(CallPolicy(max_retries=0)):
        for _ in range(4):
            with pytest.raises(Exception) as caught:
                lm("a request the model refuses, e.g. a prompt too long")
            assert find_budget_exhausted(caught.value) is None
    assert meter.outage is None and meter.snapshot().failed_calls == 4


def test_a_compile_whose_model_stops_answering_keeps_the_best_program(task_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(ModelUnavailable, match="stopped answering.*program.json"):
        run(_settings(task_folder, out, budget=200, lm_retries=0), lm=dying_lm(answers=30))
    stopped = json.loads((out / "run.json").read_text())
    assert "stopped answering" in stopped["stopped"] and stopped["lm_calls"] < 200
    assert (out / "program.json").exists()


def test_the_command_line_names_the_outage_and_exits_1(task_folder: Path, tmp_path: Path, capsys) -> None:
    argv = ["compile", "--data", str(task_folder), "--optimizer", "ape", "--budget", "200", "--train", "12"]
    argv += ["--val", "8", "--adapter", "plain", "--lm-retries", "0", "--out", str(tmp_path / "r")]
    code = main(argv, lm=dying_lm(answers=10))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("dspy-ext compile: stopped: the model stopped answering")


# ---- an LM that cannot be metered ---------------------------------------------------------------


class _OwnLM(dspy.BaseLM):
    """A user's own LM class: dspy-ext sees none of its calls."""

    def __init__(self) -> None:
        super().__init__("own/lm")

    def forward(self, prompt=None, messages=None, **kwargs):
        raise AssertionError("never called")


def test_an_unmetered_lm_is_refused_unless_allowed(task_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="allow-unmetered"):
        run(_settings(task_folder, tmp_path / "run"), lm=_OwnLM())
    assert not (tmp_path / "run" / "calls.jsonl").exists()
