"""The recipe for adding an optimizer, followed from outside the package.

1. Write a class on :class:`~dspy_ext.search.InstructionSearch` (or
   :class:`~dspy_ext.search.SearchTeleprompter` for another kind of search), with a ``method``
   name, a config model and ``initial``/``propose``/``select``.
2. Register it with one line: ``register(MyClass, description=...)``.

The optimizer is then known by name everywhere: ``build_optimizer``, ``dspy_ext.experiment.run``,
``dspy-ext compile --optimizer`` and ``dspy-ext compare``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import dspy
import pytest

from dspy_ext.adapters import PlainAdapter
from dspy_ext.cli import main
from dspy_ext.experiment import RunSettings, run
from dspy_ext.prompt_state import compile_record
from dspy_ext.registry import REGISTRY, build_optimizer, get_spec, register
from dspy_ext.search import CompileOptions, GuardMode, MetricForm

from support.fake_world import BASELINE_INSTRUCTION, dataset, fake_world_lm, write_task

TOY_MODULE = '''
from pydantic import Field

from dspy_ext.search import InstructionSearch, format_pairs
from dspy_ext.search.config import InstructionSearchConfig, tunable


class ToyConfig(InstructionSearchConfig):
    """The toy's settings."""

    steps: int = Field(default=1, ge=0)
    proposals: int = tunable(2, ge=1, tune={"int": [1, 3]})
    keep: int = Field(default=2, ge=1)


class Toy(InstructionSearch[None]):
    """Induce a few instructions, paraphrase the leader, keep the best."""

    method = "toy"
    roles = ("induce", "paraphrase")
    config_model = ToyConfig

    def initial(self, run, state, seed_candidate):
        name = run.predictor_names()[0]
        pairs = run.rng.sample(run.trainset, min(3, len(run.trainset)))
        proposals = run.ask("induce", self.config.proposals, step=run.step_description(name), examples=format_pairs(pairs))
        return [run.admit(p, seed_candidate, name, origin="toy.induce") for p in proposals]

    def propose(self, run, state, population, step):
        name = run.target(step)
        leader = population[0]
        proposals = run.ask("paraphrase", 1, instruction=leader.instruction(name))
        return [run.admit(p, leader, name, origin=f"toy.step{step + 1}") for p in proposals]

    def select(self, run, state, population, children):
        pool = population + children
        run.score(pool)
        return self.top(run, pool, self.config.keep)
'''


@pytest.fixture
def toy(tmp_path: Path) -> ModuleType:
    """The toy optimizer, in a module of its own outside the package, registered for the test only."""
    path = tmp_path / "toy_optimizer.py"
    path.write_text(textwrap.dedent(TOY_MODULE))
    spec = importlib.util.spec_from_file_location("toy_optimizer", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["toy_optimizer"] = module
    spec.loader.exec_module(module)
    register(module.Toy, description="a toy instruction search")  # the one registry line
    yield module
    REGISTRY.pop("toy", None)
    sys.modules.pop("toy_optimizer", None)


def metric(example, prediction, trace=None) -> bool:
    return example.output == prediction.output


def test_the_entry_comes_from_the_class(toy: ModuleType) -> None:
    spec = get_spec("toy")
    assert spec.config_model is toy.ToyConfig and spec.enforces_budget and spec.final_selector
    assert spec.guards is GuardMode.IN_SEARCH and spec.metric is MetricForm.RAW and not spec.takes_feedback
    assert spec.takes_valset
    with pytest.raises(ValueError, match="taken"):
        register(type("Other", (toy.Toy,), {"config_model": toy.ToyConfig.__base__}), description="clash")


def test_it_compiles_through_build_optimizer(toy: ModuleType) -> None:
    lm = fake_world_lm()
    student = dspy.Predict(dspy.Signature("input -> output", BASELINE_INSTRUCTION))
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        handle = build_optimizer("toy", metric, config={"proposals": 3}, budget=80, seed=0, num_threads=1)
        assert isinstance(handle.optimizer, toy.Toy) and handle.config.proposals == 3
        assert handle.plan(student) is not None
        program = handle.compile(student, trainset=dataset(20), valset=dataset(8, 100))
    result = compile_record(program).search
    assert result.method == "toy" and 0 < result.lm_calls <= 80
    origins = {row["origin"] for row in result.trials}
    assert "toy.induce" in origins and any(o.startswith("final:") for o in origins)
    # The same build from one CompileOptions.
    options = CompileOptions(max_lm_calls=80, seed=0, num_threads=1)
    with dspy.context(lm=fake_world_lm(), adapter=PlainAdapter()):
        again = build_optimizer("toy", metric, config={"proposals": 3}, options=options)
        second = again.compile(student, trainset=dataset(20), valset=dataset(8, 100))
    assert compile_record(second).search.best == result.best


def test_it_compiles_through_run_the_cli_and_compare(
    toy: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    task = write_task(tmp_path / "items", n_train=30, n_test=12)
    settings = RunSettings(
        data=str(task),
        optimizer="toy",
        budget=60,
        train=12,
        val=8,
        threads=1,
        adapter="plain",
        out=str(tmp_path / "run"),
    )
    result = run(settings, lm=fake_world_lm())
    assert result.summary.optimizer == "toy" and 0 < result.summary.spend.lm_calls <= 60

    common = ["--data", str(task), "--budget", "60", "--train", "12", "--val", "8", "--threads", "1"]
    capsys.readouterr()
    argv = ["compile", *common, "--optimizer", "toy", "--adapter", "plain", "--out", str(tmp_path / "cli"), "--json"]
    assert main(argv, lm=fake_world_lm()) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["optimizer"] == "toy"

    argv = ["compare", *common, "--optimizers", "toy,labeled", "--seeds", "1", "--adapter", "plain"]
    assert main([*argv, "--out", str(tmp_path / "cmp"), "--json"], lm=fake_world_lm()) == 0, capsys.readouterr().err
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["optimizer"] for r in rows] == ["toy", "labeled"]


def test_it_has_a_tuning_space(toy: ModuleType) -> None:
    """Registered after the tuning module was imported, it still gets its default ranges and the final-selection knob."""
    from dspy_ext.tuning.space import TuningSpace, default_method_space

    params = default_method_space("toy")
    assert {"proposals", "final_selection", "minibatch_size"} <= set(params)  # its own, the shared, the knob
    space = TuningSpace.from_dict({"optimizers": ["toy"]})
    assert "proposals" in space.methods["toy"]
