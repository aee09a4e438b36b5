"""The optimizer registry: validated configs and per-optimizer compile adapters.

Every entry is also run end to end on the fake world of
``tests/support/fake_world.py`` (a fake LM that answers task prompts and any
optimizer's meta-prompts), with a spy on the optimizer's ``compile`` to check
the arguments each adapter passes.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import dspy
import pytest

from dspy_ext.adapters import PlainAdapter
from dspy_ext.optimizers.ape import APEConfig
from dspy_ext.prompt_state import compile_record
from dspy_ext.registry import (
    REGISTRY,
    COPROConfig,
    MIPROConfig,
    build_optimizer,
    resolve_config,
)
from programs import build_program

from support.fake_world import BASELINE_INSTRUCTION, dataset, fake_world_lm

OURS = {"ape", "opro", "evoprompt-ga", "evoprompt-de", "protegi", "demo-search"}


def metric(example, prediction, trace=None) -> bool:
    return example.output == prediction.output


def student() -> dspy.Module:
    return build_program("transform", input_keys=("input",), output_keys=("output",), instructions=BASELINE_INSTRUCTION)


# ---- config validation -----------------------------------------------------------------------


def test_defaults_are_filled() -> None:
    config = resolve_config("ape")
    assert isinstance(config, APEConfig)
    assert config.model_dump() == {
        "steps": 2,
        "minibatch_size": 10,
        "max_bootstrapped_demos": 2,
        "max_labeled_demos": 3,
        "num_demo_sets": 3,
        "final_candidates": 3,
        "final_share": 0.35,
        "demo_start": (3, 8, 16),
        "demo_start_rows": 20,
        "demo_start_share": 0.4,
        "num_candidates": 6,
        "pairs_per_induction": 5,
        "top_k": 3,
        "variants_per_survivor": 1,
        "induce_temperature": 0.9,
    }
    copro = resolve_config("copro", {"depth": 3})
    assert isinstance(copro, COPROConfig)
    assert (copro.depth, copro.breadth, copro.init_temperature) == (3, None, 1.0)
    mipro = resolve_config("mipro", {"num_candidates": 4})
    assert isinstance(mipro, MIPROConfig) and mipro.auto == "light" and mipro.minibatch_size == 35


@pytest.mark.parametrize("name", list(REGISTRY))
def test_unknown_key_is_rejected_naming_it(name: str) -> None:
    with pytest.raises(ValueError) as info:
        resolve_config(name, {"bogus_setting": 1})
    message = str(info.value)
    assert f"'{name}'" in message
    assert "bogus_setting: unknown key" in message
    assert "valid keys:" in message


@pytest.mark.parametrize(
    ("name", "config", "key"),
    [
        ("ape", {"top_k": 0}, "top_k"),
        ("opro", {"temperature": "hot"}, "temperature"),
        ("evoprompt-ga", {"population_size": 2}, "population_size"),
        ("protegi", {"final_share": 1.0}, "final_share"),
        ("mipro", {"auto": "extreme"}, "auto"),
        ("copro", {"breadth": 1}, "breadth"),
        ("bfsrs", {"num_candidate_programs": 0}, "num_candidate_programs"),
        ("labeled", {"k": -1}, "k"),
        ("gepa", {"max_metric_calls": 0}, "max_metric_calls"),
        ("gepa", {"auto": "tiny"}, "auto"),
    ],
)
def test_bad_value_is_rejected_naming_the_key(name: str, config: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=rf"invalid config for optimizer '{name}': {key}: "):
        resolve_config(name, config)


def test_unknown_optimizer_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown optimizer 'nope'; choose one of ape, opro"):
        build_optimizer("nope", metric)


def test_build_rejects_bad_config_before_building() -> None:
    with pytest.raises(ValueError, match="unknown key"):
        build_optimizer("ape", metric, config={"top-k": 2})


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_entry_builds(name: str) -> None:
    with dspy.context(lm=fake_world_lm(), adapter=PlainAdapter()):
        handle = build_optimizer(name, metric, budget=120, seed=0, num_threads=2, n_train=10, n_val=10)
    assert handle.name == name
    assert handle.enforces_budget == (name in OURS)
    assert handle.config == resolve_config(name)
    assert callable(handle.optimizer.compile)
    if name in OURS:
        assert handle.optimizer.max_lm_calls == 120 and handle.optimizer.seed == 0


def test_budget_maps_to_dspy_settings() -> None:
    with dspy.context(lm=fake_world_lm()):
        gepa = build_optimizer("gepa", metric, budget=77)
        bfsrs = build_optimizer("bfsrs", metric, budget=100, n_train=10, n_val=10)
        copro = build_optimizer("copro", metric, budget=100, n_train=10, n_val=10)
        explicit = build_optimizer("copro", metric, budget=100, n_train=10, config={"breadth": 3})
        light = build_optimizer("gepa", metric, budget=77, config={"auto": "light"})
    assert gepa.optimizer.max_metric_calls == 77
    # GEPA's own preset sizes its metric calls; the budget does not override it.
    assert light.optimizer.auto == "light" and light.optimizer.max_metric_calls is None
    assert bfsrs.optimizer.num_candidate_sets == 100 // 10 - 3
    assert copro.optimizer.breadth == 100 // (2 * 11)
    assert explicit.optimizer.breadth == 3


# ---- per-optimizer adapters, end to end on the fake world ------------------------------------


def run_with_spy(name: str, **build_kwargs: Any) -> tuple[dict[str, Any], dspy.Module, dspy.LM, Any]:
    """Build ``name``, wrap its ``compile`` with a spy and compile on the fake world."""
    train, val = dataset(12), dataset(12, start=100)
    lm = fake_world_lm()
    calls: dict[str, Any] = {}
    with dspy.context(lm=lm, adapter=PlainAdapter()), contextlib.redirect_stdout(io.StringIO()):
        handle = build_optimizer(
            name,
            build_kwargs.pop("metric", metric),
            budget=60,
            seed=0,
            num_threads=2,
            n_train=len(train),
            n_val=len(val),
            **build_kwargs,
        )
        original = handle.optimizer.compile

        def spy(student, **kwargs):
            calls.update(kwargs)
            return original(student, **kwargs)

        handle.optimizer.compile = spy
        program = handle.compile(student(), trainset=train, valset=val)
    return calls, program, lm, handle


@pytest.mark.parametrize("name", sorted(OURS))
def test_our_optimizers_get_the_valset_and_keep_the_budget(name: str) -> None:
    calls, program, lm, _ = run_with_spy(name)
    assert len(calls["trainset"]) == 12 and len(calls["valset"]) == 12
    used = lm.engine.calls + len(lm.engine.score_requests)  # likelihood passes count as calls too
    assert 0 < used <= 60
    assert compile_record(program).search.lm_calls == used


def test_copro_gets_eval_kwargs_and_no_valset() -> None:
    calls, program, lm, handle = run_with_spy("copro")
    assert calls["eval_kwargs"] == {"num_threads": 2, "display_progress": False}
    assert "valset" not in calls and len(calls["trainset"]) == 12
    assert lm.engine.calls > 0
    # COPRO wrote a new instruction through the fake prompt model.
    assert program.predict.signature.instructions != BASELINE_INSTRUCTION


@pytest.mark.parametrize("name", ["bfs", "labeled", "simba"])
def test_train_only_optimizers_compile_without_valset(name: str) -> None:
    calls, program, lm, _ = run_with_spy(name)
    assert "valset" not in calls and len(calls["trainset"]) == 12
    if name == "labeled":
        assert len(program.predict.demos) == 3 and lm.engine.calls == 0
    if name == "bfs":
        assert program.predict.demos and lm.engine.calls > 0
    if name == "simba":
        assert calls["seed"] == 0


def test_bfsrs_gets_the_valset() -> None:
    calls, program, lm, _ = run_with_spy("bfsrs")
    assert len(calls["valset"]) == 12 and lm.engine.calls > 0


def test_mipro_gets_seed_zero_explicitly() -> None:
    calls, program, lm, handle = run_with_spy("mipro", config={"num_candidates": 2, "num_trials": 2})
    assert "seed" in calls and calls["seed"] == 0
    assert calls["num_trials"] == 2 and calls["minibatch"] is False  # 12 val rows < minibatch_size 35
    assert len(calls["valset"]) == 12
    assert handle.optimizer.seed == 0
    assert lm.engine.calls > 0


def test_gepa_gets_a_five_argument_metric_that_delegates() -> None:
    seen: list[tuple] = []

    def recording_metric(example, prediction, trace=None):
        seen.append((example, prediction, trace))
        return metric(example, prediction, trace)

    calls, program, lm, handle = run_with_spy("gepa", metric=recording_metric)
    assert len(calls["valset"]) == 12
    gepa_metric = handle.optimizer.metric_fn
    assert gepa_metric is not recording_metric
    # GEPA called it during the compile (with five arguments), it reached our metric, and GEPA's
    # reflection (JSONAdapter, answered by the fake) proposed an instruction that beat the baseline.
    assert seen and lm.engine.calls > 0
    assert "level" in program.predict.signature.instructions
    seen.clear()
    example = dataset(1)[0]
    good = dspy.Prediction(output=example.output)
    assert gepa_metric(example, good, None, "predict", None) is True
    assert gepa_metric(example, dspy.Prediction(output="no"), "trace", "predict", []) is False
    assert [s[2] for s in seen] == [None, "trace"]


def test_copro_survives_a_prompt_model_that_writes_only_the_instruction() -> None:
    """Small models answer COPRO's two-field proposer with one bare sentence; the plain adapter fills the prefix."""
    from dspy_ext.lm import FakeEngine

    from support.fake_world import respond

    def terse(messages: list[dict[str, str]]) -> str:
        reply = respond(messages)
        if "Reply with one line per field" in messages[0]["content"]:
            return reply.splitlines()[0].split(":", 1)[1].strip()  # the instruction alone, no labels, no prefix
        return reply

    lm = dspy.LM("fake/terse-copro", engine=FakeEngine(terse), cache=False)
    train = dataset(12)
    adapter = PlainAdapter()
    with dspy.context(lm=lm, adapter=adapter), contextlib.redirect_stdout(io.StringIO()):
        handle = build_optimizer("copro", metric, budget=60, seed=0, num_threads=2, n_train=len(train))
        program = handle.compile(student(), trainset=train)
        assert dspy.settings.adapter is adapter  # the lenient copy was only in force during compile
    assert adapter.fill_missing == {}
    assert program.predict.signature.instructions.startswith("Handle the request at level")
    # Under the strict adapter the same reply is a parse error naming the missing field.
    with (
        dspy.context(lm=lm, adapter=PlainAdapter()),
        pytest.raises(Exception, match="proposed_prefix_for_output_field"),
    ):
        dspy.Predict(dspy.teleprompt.copro_optimizer.BasicGenerateInstruction)(basic_instruction="Do it.")


# ---- each setting is written once -----------------------------------------------------------------


@pytest.mark.parametrize("name", list(REGISTRY))
def test_registry_constructor_and_tuning_space_agree(name: str) -> None:
    """The config model is the one source: the registry's defaults, the constructor's and the Optuna space's."""
    import inspect

    from dspy_ext.tuning.space import DEFAULT_METHOD_SPACES, Param

    spec = REGISTRY[name]
    defaults = spec.config_model()
    assert resolve_config(name) == defaults
    # The Optuna space's default ranges are the config model's, and every end of them is a valid value.
    ranges = spec.config_model.tuning_ranges()
    space = {k: v for k, v in DEFAULT_METHOD_SPACES[name].items() if k in spec.config_model.model_fields}
    assert space == {k: Param.parse(v, k) for k, v in ranges.items()}
    for key, param in space.items():
        for value, _ in param.probe_values():
            resolve_config(name, {key: value})
    if not spec.final_selector:
        return
    with dspy.context(lm=fake_world_lm(), adapter=PlainAdapter()):
        handle = build_optimizer(name, metric)
    # The constructor holds the same validated config, and declares no default of its own for any setting.
    assert handle.optimizer.config == defaults
    cls = type(handle.optimizer)
    parameters = {
        p for klass in cls.__mro__ if "__init__" in vars(klass) for p in inspect.signature(klass.__init__).parameters
    }
    assert not parameters & set(spec.config_model.model_fields), parameters & set(spec.config_model.model_fields)
    # A constructor keyword is validated by the same model.
    with pytest.raises(ValueError, match="invalid config for optimizer '.+': .*greater than or equal to"):
        cls(metric, **{next(iter(spec.config_model.model_fields)): -1})


def test_capabilities_are_named_fields_of_each_entry() -> None:
    from dspy_ext.search import GuardMode, MetricForm

    assert {n for n, s in REGISTRY.items() if s.takes_feedback} == {
        "protegi",
        "opro",
        "evoprompt-ga",
        "evoprompt-de",
        "gepa",
    }
    assert {n for n, s in REGISTRY.items() if s.final_selector} == OURS - {"demo-search"}
    assert {n for n, s in REGISTRY.items() if s.enforces_budget} == OURS
    assert {n for n, s in REGISTRY.items() if s.guards is GuardMode.IN_SEARCH} == OURS - {"demo-search"}
    assert {n for n, s in REGISTRY.items() if s.metric is MetricForm.RAW} == OURS - {"demo-search"}
    assert REGISTRY["gepa"].metric is MetricForm.SCALAR_FEEDBACK
    # DemoSearch is gated and scored like DSPy's optimizers: guards go through the acceptance gate.
    demo = REGISTRY["demo-search"]
    assert demo.guards is GuardMode.GATE and demo.metric is MetricForm.SCALAR and not demo.final_selector
    with dspy.context(lm=fake_world_lm(), adapter=PlainAdapter()):
        gated = build_optimizer("demo-search", metric, guards={"score": 0})
    assert gated.gate is not None and gated.optimizer.options.guards == {}
