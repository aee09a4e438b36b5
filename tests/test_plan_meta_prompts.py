"""Plans name the meta-prompts they send; the projection measures each as its optimizer renders it; DemoSearch
counts a served model's likelihood screen by request; a prompt model of its own (fake engine)."""

from __future__ import annotations

from pathlib import Path

import dspy
import pytest

from dspy_ext.experiment import RunSettings, SettingsError, run
from dspy_ext.experiment.projection import project
from dspy_ext.experiment.run import dry_run
from dspy_ext.lm import FakeEngine, metered_lm
from dspy_ext.lm.likelihood import count_prompt_tokens
from dspy_ext.optimizers import OPRO, DemoSearch, ProTeGi
from dspy_ext.registry import build_optimizer, plan_inputs
from dspy_ext.search.context import active_adapter, prompt_messages
from dspy_ext.search.plan import CallPlan, MetaPromptCalls, PlanInputs
from dspy_ext.search.run import PROPOSAL_MAX_TOKENS
from dspy_ext.search.typical import TypicalAsk

from support.fake_world import fake_world_lm, respond, write_task


def _metric(example, prediction, trace=None) -> float:
    return 1.0


def _rows(n: int, *, words: int = 3) -> list[dspy.Example]:
    labels = ["positive", "negative"]
    return [
        dspy.Example(text=" ".join(f"word{i}x{j}" for j in range(words)), label=labels[i % 2]).with_inputs("text")
        for i in range(n)
    ]


STUDENT = dspy.Predict(dspy.Signature("text -> label", "Label the sentiment of the text."))


@pytest.mark.parametrize("name", ["ape", "opro", "evoprompt-ga", "evoprompt-de", "protegi"])
def test_a_search_plans_each_meta_prompt_it_sends(name: str) -> None:
    handle = build_optimizer(name, _metric, budget=10_000, n_train=30, n_val=20)
    plan = handle.plan(STUDENT, _rows(30))
    roles = {a.role for a in plan.asks}
    assert roles and roles <= set(handle.optimizer.roles)
    assert plan.prompt_calls == sum(a.calls for a in plan.asks) > 0
    if name == "evoprompt-ga":
        assert "crossover" in roles and "differential" not in roles
    if name == "evoprompt-de":
        assert "differential" in roles and "crossover" not in roles


def test_a_capped_plan_keeps_every_meta_prompt_in_proportion() -> None:
    asks = (MetaPromptCalls("diagnose", 6, reply_tokens=150), MetaPromptCalls("edit", 12), MetaPromptCalls("x", 1))
    capped = CallPlan(200, asks).capped(73)
    assert capped.calls == 73 and capped.prompt_calls == 6  # 19 of 219 calls, of 73
    assert [(a.role, a.calls, a.reply_tokens) for a in capped.asks] == [("diagnose", 2, 150), ("edit", 4, 60)]


def _measured(optimizer, role: str, train: list[dspy.Example], lm: dspy.LM, calls: int = 10) -> int:
    """Tokens of the ``role`` meta-prompt as the projection measures it."""
    plan = CallPlan(0, (MetaPromptCalls(role, calls),))
    with dspy.context(lm=lm):
        projection = project(plan, student=STUDENT, train=train, lm=lm, budget=None, optimizer=optimizer)
    return projection.meta_prompts[0].prompt_tokens


def test_the_projection_renders_each_meta_prompt_with_the_tasks_training_pairs() -> None:
    lm = fake_world_lm()
    ape = build_optimizer("ape", _metric, budget=10_000, n_train=20, n_val=10).optimizer
    short, long = _rows(20, words=3), _rows(20, words=40)
    assert _measured(ape, "induce", long, lm) > _measured(ape, "induce", short, lm) + 100
    # The student's instruction is what a paraphrase shows: not the training rows.
    assert _measured(ape, "paraphrase", long, lm) == _measured(ape, "paraphrase", short, lm)
    # It is exactly the meta-prompt APE sends, filled as APE fills it.
    fields = ape.typical_inputs(MetaPromptCalls("induce", 1), TypicalAsk(STUDENT, long))
    messages = prompt_messages(active_adapter(lm), ape.meta_prompts["induce"], [], fields)
    assert _measured(ape, "induce", long, lm) == count_prompt_tokens(lm, messages)
    assert fields["examples"].count("Input:") == ape.config.pairs_per_induction


def test_opro_trajectory_prompt_carries_the_history_of_a_typical_step() -> None:
    lm = fake_world_lm()
    train = _rows(20)
    opro = OPRO(_metric, proposals_per_step=4, trajectory_size=20)
    one_step, many_steps = _measured(opro, "trajectory", train, lm, 4), _measured(opro, "trajectory", train, lm, 40)
    assert many_steps > one_step + 100  # later steps show more scored instructions
    fields = opro.typical_inputs(MetaPromptCalls("trajectory", 40), TypicalAsk(STUDENT, train))
    # 10 steps of 4: the history holds 1, 5, ..., 20 (capped) entries, 14 on average.
    assert fields["scored_instructions"].count("Instruction:") == 14
    assert fields["task_examples"].count("Input:") == opro.config.num_exemplars


def test_protegi_diagnoses_with_wrong_answers_and_expects_a_long_reply() -> None:
    protegi = ProTeGi(_metric, errors_per_gradient=3)
    asks = {a.role: a for a in protegi.planned_asks(1)}
    assert asks["diagnose"].reply_tokens == PROPOSAL_MAX_TOKENS > asks["edit"].reply_tokens
    fields = protegi.typical_inputs(asks["diagnose"], TypicalAsk(STUDENT, _rows(20)))
    assert fields["failures"].count("Model answered:") == 3
    assert set(protegi.typical_inputs(asks["edit"], TypicalAsk(STUDENT, _rows(20)))) == {
        "instruction",
        "failures",
        "problem",
    }


def test_demo_search_served_screen_costs_a_request_per_row_and_label_and_a_probe() -> None:
    settings = {"screen_rows": 20, "demo_counts": (3, 8), "draws_per_count": 2}
    search = DemoSearch(_metric, max_lm_calls=100_000, answer_rules=("free",), **settings)
    embedded = search.plan(PlanInputs(1, n_train=40, n_val=30, n_labels=3))
    # The answer rules race two more arms on the 30 val rows, and the calibrated prior scores 3 content-free inputs.
    with_rules = DemoSearch(_metric, max_lm_calls=100_000, **settings).plan(PlanInputs(1, 40, 30, 3))
    assert with_rules.task_calls == embedded.task_calls + 2 * 30 + 3
    served = search.plan(PlanInputs(1, n_train=40, n_val=30, n_labels=3, served_likelihood=True, likelihood_probe=True))
    arms, rows = 1 + 2 * 2, 20
    confirm = embedded.task_calls - arms * rows
    assert confirm > 0
    assert served.task_calls == arms * rows * 3 + 1 + confirm
    by_accuracy = DemoSearch(_metric, max_lm_calls=100_000, screen_by="accuracy", answer_rules=("free",), **settings)
    assert by_accuracy.plan(PlanInputs(1, 40, 30, 3, served_likelihood=True)).task_calls == embedded.task_calls


def test_the_plan_inputs_tell_a_served_task_model_from_the_embedded_kind() -> None:
    served = metered_lm(dspy.LM("openai/never-called", api_base="http://127.0.0.1:9/v1", api_key="x", cache=False))
    student = dspy.Predict("text -> label")
    inputs = plan_inputs(student, _rows(10), served)
    assert (inputs.n_labels, inputs.served_likelihood, inputs.likelihood_probe) == (2, True, True)
    fake = plan_inputs(student, _rows(10), fake_world_lm())
    assert (fake.n_labels, fake.served_likelihood, fake.likelihood_probe) == (2, False, False)
    declared = metered_lm(dspy.LM("openai/never", api_base="http://127.0.0.1:9/v1", api_key="x"), likelihood=True)
    assert plan_inputs(student, _rows(10), declared).likelihood_probe is False


def test_mipro_plans_its_proposer_prompts_with_stated_sizes() -> None:
    lm = fake_world_lm()
    with dspy.context(lm=lm):
        handle = build_optimizer("mipro", _metric, budget=200, n_train=50, n_val=30)
        plan = handle.plan(STUDENT, _rows(50), lm)
    calls = {a.role: a.calls for a in plan.asks}
    # 50 rows: the first batch of 10, four more, and the summary; per instruction two descriptions and the proposal.
    assert calls["mipro.dataset_summary"] == 6
    assert calls["mipro.describe"] == 2 * calls["mipro.propose_instruction"] > 0
    assert all(a.prompt_tokens and a.reply_tokens > PROPOSAL_MAX_TOKENS for a in plan.asks)


# ---- a prompt model of its own -------------------------------------------------------------------


def _settings(folder: Path, out: Path, **changes) -> RunSettings:
    values = {"data": str(folder), "optimizer": "ape", "budget": 30, "train": 12, "val": 8, "threads": 1}
    return RunSettings(**{**values, "adapter": "plain", "out": str(out), **changes})


def test_prompt_model_keys_need_a_prompt_model(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="prompt_lm"):
        _settings(tmp_path, tmp_path / "r", prompt_api_base="http://127.0.0.1:8000/v1")


def test_a_prompt_model_of_its_own_writes_the_instructions_and_is_projected(tmp_path: Path) -> None:
    folder = write_task(tmp_path / "items", n_train=40, n_test=8)
    task_lm, prompt_lm = fake_world_lm(), dspy.LM("fake/prompt-model", engine=FakeEngine(respond), cache=False)
    settings = _settings(folder, tmp_path / "run")
    projection = dry_run(settings, lm=task_lm, prompt_lm=prompt_lm)
    assert task_lm.engine.calls == prompt_lm.engine.calls == 0 and projection.prompt.calls > 0
    result = run(settings, lm=task_lm, prompt_lm=prompt_lm)
    roles = result.summary.to_dict()["by_role"]
    assert prompt_lm.engine.calls == roles["prompt"]["calls"] > 0  # every proposal went to the prompt model
    assert roles["task"]["calls"] + roles["prompt"]["calls"] == result.summary.spend.lm_calls <= 30
