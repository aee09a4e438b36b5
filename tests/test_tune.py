"""``OptunaTuner``, its tuning space, pruning, objectives, candidate-level TPE in a trial and ``dspy-ext tune``.

Everything runs on the fake world of :mod:`tune_fake` (LabeledFewShot with k
demos scores k/5; four or more demos make the model chatty).
"""

from __future__ import annotations

import json
from pathlib import Path

import dspy
import optuna
import pytest

from dspy_ext.adapters import PlainAdapter
from dspy_ext.prompt_state import compile_record
from dspy_ext.search.final_selection import CandidateTPE
from dspy_ext.tuning import (
    DEFAULT_METHOD_SPACES,
    Choice,
    CriteriaMetric,
    Int,
    OptunaTuner,
    Param,
    TuningSpace,
    TuningSpaceError,
    criteria_of,
    load_space,
)
from dspy_ext.tuning.strategies import NoPruning

import tune_fake as F


@pytest.fixture
def world():
    with dspy.context(lm=F.make_lm(), adapter=PlainAdapter()):
        yield


def labeled_space(**top) -> dict:
    return {**F.LABELED_SPACE, **top}


def params(k: int) -> dict:
    return {"optimizer": "labeled", "labeled.k": k}


# ---- the tuning space ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, message",
    [
        (
            {"optimizers": {"ape": {"num_candidates": {"int": [0, 5]}}}},
            "optimizers.ape.num_candidates: 0 (low end of [0, 5]) is not allowed: Input should be greater than or equal to 1",
        ),
        (
            {"optimizers": {"ape": {"num_candidates": 0}}},
            "optimizers.ape.num_candidates: 0 (fixed value) is not allowed",
        ),
        (
            {"optimizers": {"evoprompt-ga": {"population_size": [2, 4]}}},
            "optimizers.evoprompt-ga.population_size: 2 (option of [2, 4]) is not allowed",
        ),
        ({"optimizers": {"ape": {"top_k": {"int": [4, 2]}}}}, "optimizers.ape.top_k: empty range [4, 2] (low > high)"),
        (
            {"optimizers": {"ape": {"num_candidates": {"float": [1, 4]}}}},
            "is not allowed: Input should be a valid integer",
        ),
        ({"optimizers": {"opro": {"temperature": {"float": [0.0, 1.0], "log": True}}}}, "a log range needs low > 0"),
        ({"optimizers": {"ape": {"nonsense": 3}}}, "optimizers.ape.nonsense: unknown parameter for ape (valid: "),
        ({"optimizers": {"bfsrs": {"final_selection": "tpe"}}}, "bfsrs does not"),
        ({"optimizers": {"ape": {"final_selection": ["halving", "best"]}}}, "'best' (option of"),
        ({"optimizers": {"ape": {"budget": 0}}}, "optimizers.ape.budget: 0 (fixed value) must be a whole number >= 1"),
        ({"optimizers": ["ape", "mystery"]}, "optimizers.mystery: unknown optimizer"),
        ({"optimizers": []}, "optimizers: empty"),
        ({"budget": 0}, "budget: must be a whole number >= 1"),
        ({"eval_minibatch": 0}, "eval_minibatch: must be a whole number >= 1"),
        ({"pruner": "hyperband"}, "pruner.type: must be one of median, wilcoxon, none"),
        (
            {"pruner": {"type": "median", "p_threshold": 0.1}},
            "pruner.p_threshold: unknown option for the median pruner",
        ),
        ({"sampler": "grid"}, "sampler.type: must be one of tpe, random"),
        ({"common": {"adapter": ["plain", "xml"]}}, "common.adapter: 'xml' (option of"),
        ({"common": {"temperature": 0.5}}, "common.temperature: unknown common knob"),
        ({"objective": "lexicographic"}, "objective: must be one of"),
        ({"optimisers": ["ape"]}, "optimisers: unknown top-level key"),
    ],
)
def test_invalid_spaces_are_rejected_with_the_reason(raw: dict, message: str) -> None:
    with pytest.raises(TuningSpaceError) as info:
        TuningSpace.from_dict(raw)
    assert message in str(info.value)
    assert str(info.value).startswith("invalid search space: ")


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(TuningSpaceError) as info:
        TuningSpace.from_dict({"optimizers": {"ape": {"num_candidates": 0, "top_k": {"int": [3, 1]}}}, "budget": -1})
    assert len(info.value.problems) == 3


def test_defaults_per_method_and_overrides_merge(tmp_path: Path) -> None:
    space = TuningSpace.default()
    assert list(space.methods) == ["ape", "opro", "bfsrs"]
    assert space.methods["ape"]["num_candidates"] == Int(3, 8)
    path = tmp_path / "space.yaml"
    path.write_text(
        "optimizers:\n  ape:\n    num_candidates: {int: [2, 4]}\n    top_k: 2\n  labeled:\nbudget: 30\npruner: none\n"
    )
    loaded = load_space(path)
    assert loaded.methods["ape"]["num_candidates"] == Int(2, 4)  # overridden
    assert loaded.methods["ape"]["top_k"].kind == "fixed"  # fixed
    assert loaded.methods["ape"]["induce_temperature"].kind == "float"  # default kept
    assert loaded.methods["labeled"]["k"] == Int(1, 6)  # null -> the method's defaults
    assert loaded.budget == 30 and loaded.pruner == NoPruning({"type": "none"})
    # Python and YAML declare the same space.
    python = TuningSpace.from_dict(
        {
            "optimizers": {"ape": {"num_candidates": Int(2, 4), "top_k": 2}, "labeled": None},
            "budget": 30,
            "pruner": "none",
        }
    )
    assert python.fingerprint() == loaded.fingerprint()
    json_path = tmp_path / "space.json"
    json_path.write_text(json.dumps(loaded.to_dict()))
    assert load_space(json_path).fingerprint() == loaded.fingerprint()
    bad = tmp_path / "bad.yaml"
    bad.write_text("optimizers: [ape\n")
    with pytest.raises(TuningSpaceError, match="not valid YAML"):
        load_space(bad)


def test_default_ranges_are_read_from_each_optimizers_config_model() -> None:
    from dspy_ext.registry import REGISTRY

    for name, spec in REGISTRY.items():
        params = dict(DEFAULT_METHOD_SPACES[name])
        # Only dspy-ext's instruction searches get the final-selection knob.
        assert (params.pop("final_selection", None) == Choice(["halving", "tpe"])) is spec.final_selector, name
        assert params and params == {k: Param.parse(v, k) for k, v in spec.config_model.tuning_ranges().items()}
    # Every end of every default range is a value the optimizer's own config accepts.
    assert list(TuningSpace.default(list(REGISTRY)).methods) == list(REGISTRY)
    ours = ", ".join(name for name, spec in REGISTRY.items() if spec.final_selector)
    with pytest.raises(TuningSpaceError, match=f"only dspy-ext's own optimizers \\({ours}\\)"):
        TuningSpace.from_dict({"optimizers": {"mipro": {"final_trials": 4}}})


def test_a_sampled_plan_is_a_valid_config() -> None:
    import optuna

    space = TuningSpace.from_dict(
        {"optimizers": {"ape": {"final_selection": Choice(["tpe"]), "budget": 50}}, "common": {"adapter": "plain"}}
    )
    study = optuna.create_study(direction="maximize")
    plan = space.suggest(study.ask())
    assert plan.optimizer == "ape" and plan.budget == 50 and plan.final_selection == "tpe" and plan.adapter == "plain"
    assert 3 <= plan.config["num_candidates"] <= 8 and plan.config["minibatch_size"] in (5, 10)


def test_invalid_space_is_rejected_before_any_trial(tmp_path: Path, world) -> None:
    with pytest.raises(TuningSpaceError, match="labeled.k: -1"):
        OptunaTuner(
            F.accuracy, space={"optimizers": {"labeled": {"k": {"int": [-1, 3]}}}}, storage=str(tmp_path / "s.db")
        )
    assert not (tmp_path / "s.db").exists()


def test_criteria_of() -> None:
    assert criteria_of(True) == {"score": 1.0}
    assert criteria_of({"a": True, "b": 0.5}) == {"a": 1.0, "b": 0.5}
    assert criteria_of(dspy.Prediction(score=0.5, feedback="ok", brevity=1)) == {"score": 0.5, "brevity": 1.0}
    with pytest.raises(TypeError, match="criterion 'a'"):
        criteria_of({"a": "high"})


# ---- trials, pruning, persistence -------------------------------------------------------------------------


def test_trials_store_program_scores_and_costs(tmp_path: Path, world) -> None:
    tuner = OptunaTuner(
        F.accuracy,
        space=labeled_space(),
        n_trials=3,
        storage=str(tmp_path / "s.db"),
        study_name="attrs",
        num_threads=1,
        enqueue=[params(3), params(1)],
    )
    program = tuner.compile(F.student(), trainset=F.trainset(), valset=F.devset())
    summary = compile_record(program).tune
    assert summary.n_trials == 3 and summary.study == "attrs"
    assert summary.storage == "sqlite:///" + str((tmp_path / "s.db").resolve())
    best = summary.best_trial
    assert best["value"] == summary.best_value == max(t["value"] for t in summary.top_trials)
    assert best["instructions"] == {"predict": F.STUDENT_INSTRUCTION}
    assert best["n_demos"]["predict"] == best["params"]["labeled.k"]
    assert best["lm_calls"] == 20 and best["eval_lm_calls"] == 20 and best["tokens"] > 0
    assert Path(best["program_file"]).exists()
    # The returned program is the best trial's; a fresh load from its file scores the same.
    assert len(program.predict.demos) == best["params"]["labeled.k"]
    trial_one = next(t for t in summary.top_trials if t["params"]["labeled.k"] == 1)
    assert trial_one["value"] == 20.0 and trial_one["scores"]["criteria"] == {"score": 20.0}
    assert summary.baseline["criteria"] == {"score": 0.0}


def test_pruned_trials_are_recorded_as_pruned(tmp_path: Path, world) -> None:
    space = labeled_space(pruner={"type": "median", "n_startup_trials": 2, "n_warmup_steps": 0}, eval_minibatch=4)
    tuner = OptunaTuner(
        F.accuracy,
        space=space,
        n_trials=5,
        storage="memory",
        num_threads=1,
        enqueue=[params(5), params(4), params(0), params(1), params(5)],
    )
    session = tuner.open(F.student(), trainset=F.trainset(), valset=F.devset())
    session.optimize()
    trials = {t.number: t for t in session.study.trials}
    assert [trials[n].state.name for n in range(5)] == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED", "COMPLETE"]
    for n in (2, 3):
        pruned = trials[n]
        assert pruned.intermediate_values  # minibatch scores were reported
        scores = pruned.user_attrs["scores"]
        assert scores["dev_rows"] < scores["dev_n"] == 20 and scores["pruned_at_step"] == 0
        assert pruned.user_attrs["eval_lm_calls"] == 4  # one minibatch of 4 rows, not 20
    assert trials[0].intermediate_values == {0: 100.0, 1: 100.0, 2: 100.0, 3: 100.0}
    summary = session.results.summary()
    assert summary.n_pruned == 2 and summary.n_complete == 3 and summary.n_trials == 5
    assert summary.best_value == 100.0  # a pruned trial never counts as the best


@pytest.mark.skipif(__import__("importlib").util.find_spec("scipy") is None, reason="WilcoxonPruner needs scipy")
def test_wilcoxon_pruner_gets_per_example_values(world) -> None:
    space = labeled_space(pruner={"type": "wilcoxon", "p_threshold": 0.2}, eval_minibatch=5)
    tuner = OptunaTuner(
        F.accuracy, space=space, n_trials=2, storage="memory", num_threads=1, enqueue=[params(5), params(0)]
    )
    session = tuner.open(F.student(), trainset=F.trainset(), valset=F.devset())
    session.optimize()
    first, second = session.study.trials
    assert sorted(first.intermediate_values) == sorted(session.dev_order[:15])  # steps are example ids
    assert second.state.name == "PRUNED"


def test_rerun_continues_the_study_and_rejects_another_space(tmp_path: Path, world) -> None:
    storage = str(tmp_path / "s.db")
    first = OptunaTuner(
        F.accuracy, space=labeled_space(), n_trials=2, storage=storage, study_name="again", num_threads=1
    )
    s1 = first.open(F.student(), trainset=F.trainset(), valset=F.devset())
    s1.optimize()
    values = {t.number: t.value for t in s1.study.trials}
    second = OptunaTuner(
        F.accuracy, space=labeled_space(), n_trials=4, storage=storage, study_name="again", num_threads=1
    )
    s2 = second.open(F.student(), trainset=F.trainset(), valset=F.devset())
    assert s2.optimize() == 2
    assert {t.number: t.value for t in s2.study.trials if t.number in values} == values
    assert s2.results.summary().n_trials == 4
    assert s2.optimize() == 0  # the target is reached
    other = OptunaTuner(
        F.accuracy, space=labeled_space(eval_minibatch=7), n_trials=4, storage=storage, study_name="again"
    )
    with pytest.raises(ValueError, match="another search space.*another study name"):
        other.open(F.student(), trainset=F.trainset(), valset=F.devset())
    with pytest.raises(ValueError, match="other train/dev data"):
        second.open(F.student(), trainset=F.trainset(29), valset=F.devset())


# ---- several criteria ------------------------------------------------------------------------------


def test_constraints_reject_a_candidate_that_breaks_another_criterion(world) -> None:
    # k=4 is the most accurate (80) but chatty: brevity drops from the student's 100 to 20
    # (only its "unknown" answers are one word).
    tuner = OptunaTuner(
        F.two_criteria,
        space=labeled_space(),
        n_trials=3,
        storage="memory",
        num_threads=1,
        objective="constraints",
        enqueue=[params(4), params(3), params(2)],
    )
    session = tuner.open(F.student(), trainset=F.trainset(), valset=F.devset())
    session.optimize()
    summary = session.results.summary()
    assert summary.objective == "constraints" and summary.criteria == ["accuracy", "brevity"]
    assert summary.baseline["criteria"] == {"accuracy": 0.0, "brevity": 100.0}
    by_k = {t.params["labeled.k"]: t for t in session.study.trials}
    assert by_k[4].value == 80.0 > by_k[3].value == 60.0 > by_k[2].value == 40.0
    assert by_k[4].constraints == {"brevity>=baseline": 80.0}  # 80 points below the student's brevity
    assert by_k[3].constraints == {"brevity>=baseline": 0.0}
    assert by_k[4].user_attrs["feasible"] is False and by_k[3].user_attrs["feasible"] is True
    assert summary.best_trial["params"]["labeled.k"] == 3 and summary.best_value == 60.0
    assert summary.n_infeasible == 1
    assert session.study.best_trial.number == by_k[3].number  # Optuna agrees
    assert len(session.results.best_program().predict.demos) == 3


def test_pareto_reports_the_front(world) -> None:
    tuner = OptunaTuner(
        F.two_criteria,
        space=labeled_space(),
        n_trials=4,
        storage="memory",
        num_threads=1,
        objective="pareto",
        enqueue=[params(4), params(3), params(2), params(5)],
    )
    session = tuner.open(F.student(), trainset=F.trainset(), valset=F.devset())
    session.optimize()
    summary = session.results.summary()
    assert summary.objective == "pareto" and len(session.study.directions) == 2
    front = {p["number"]: p["values"] for p in summary.pareto_front}
    # (accuracy, brevity): k=4 (80, 20), k=3 (60, 100), k=5 (100, 0) trade off; k=2 (40, 100) is dominated by k=3.
    assert front == {
        0: {"accuracy": 80.0, "brevity": 20.0},
        1: {"accuracy": 60.0, "brevity": 100.0},
        3: {"accuracy": 100.0, "brevity": 0.0},
    }
    assert summary.best_trial["number"] == 3 and summary.best_value == 100.0
    assert summary.best_values == {"accuracy": 100.0, "brevity": 0.0}
    assert summary.n_pruned == 0  # Optuna does not prune multi-objective trials


def test_several_criteria_need_a_matching_objective(world) -> None:
    tuner = OptunaTuner(F.accuracy, space=labeled_space(), n_trials=1, storage="memory", objective="pareto")
    with pytest.raises(ValueError, match="needs a metric returning several criteria"):
        tuner.open(F.student(), trainset=F.trainset(), valset=F.devset())
    cm = CriteriaMetric(F.two_criteria, primary="brevity")
    ex = F.item(3)
    assert cm(ex, dspy.Prediction(output="ITEM-3 indeed")) == 0.0 and cm.criteria == ["accuracy", "brevity"]
    assert cm.means() == {"accuracy": 100.0, "brevity": 0.0}


# ---- candidate-level TPE as the final selection ------------------------------------------------------------


@pytest.mark.parametrize("method", ["ape", "opro", "evoprompt-ga", "protegi"])
def test_tpe_final_selector_in_our_optimizers(method: str, world) -> None:
    from dspy_ext.registry import build_optimizer

    storage = optuna.storages.InMemoryStorage()
    selector = CandidateTPE(n_trials=8, minibatch_size=5, full_eval_steps=3, storage=storage, study_name="final")
    handle = build_optimizer(
        method,
        F.accuracy,
        budget=90,
        seed=0,
        num_threads=1,
        final_selector=selector,
        config={"minibatch_size": 5, "steps": 1, "max_bootstrapped_demos": 1},
    )
    program = handle.compile(F.student(), trainset=F.trainset(), valset=F.devset(10))
    result = compile_record(program).search
    assert result.lm_calls <= 90 and result.val_score is not None
    study = optuna.load_study(study_name="final", storage=storage)
    assert study.trials and set(study.trials[0].params) == {"0_predictor_instruction", "0_predictor_demos"}
    finals = [row for row in result.trials if row["origin"] == "final:tpe"]
    assert finals  # the final choice was made by TPE trials
    full = [row for row in finals if row["n"] == 10]
    assert result.val_score == max(row["score"] for row in full)
    assert program.predict.signature.instructions == result.best["instructions"]["predict"]


def test_tpe_selector_picks_the_best_combination_when_affordable(world) -> None:
    from dspy_ext import APE

    storage = optuna.storages.InMemoryStorage()
    selector = CandidateTPE(n_trials=40, minibatch_size=10, storage=storage, study_name="final")
    ape = APE(
        F.accuracy,
        max_lm_calls=400,
        seed=0,
        steps=0,
        num_candidates=4,
        minibatch_size=5,
        num_threads=1,
        max_bootstrapped_demos=1,
        final_selector=selector,
    )
    program = ape.compile(F.student(), trainset=F.trainset(), valset=F.devset(10))
    # every combination is scored on the whole valset (minibatch = valset): the winner is the true best
    study = optuna.load_study(study_name="final", storage=storage)
    combos = {
        t.params["0_predictor_instruction"] * 10 + t.params["0_predictor_demos"]: t.value
        for t in study.trials
        if t.value is not None
    }
    assert compile_record(program).search.val_score == max(combos.values())
    assert len(combos) == len(study.trials[0].distributions["0_predictor_instruction"].choices) * len(
        study.trials[0].distributions["0_predictor_demos"].choices
    )


def test_a_trial_with_tpe_final_selection_runs_candidate_level_tpe(world) -> None:
    space = {
        "optimizers": {
            "ape": {
                "final_selection": "tpe",
                "final_trials": 6,
                "num_candidates": 2,
                "top_k": 2,
                "steps": 0,
                "minibatch_size": 5,
                "max_bootstrapped_demos": 0,
                "max_labeled_demos": 1,
                "induce_temperature": 0.7,
            }
        },
        "budget": 120,
        "pruner": "none",
        "eval_minibatch": 5,
    }
    tuner = OptunaTuner(F.accuracy, space=space, n_trials=1, storage="memory", num_threads=1)
    session = tuner.open(F.student(), trainset=F.trainset(), valset=F.devset(10))
    assert session.optimize() == 1
    trial = session.study.trials[0]
    assert trial.state.name == "COMPLETE" and trial.user_attrs["plan"]["final_selection"] == "tpe"
    origins = {row["origin"] for row in compile_record(session.runner.programs[0]).search.trials}
    assert "final:tpe" in origins  # the final choice was made by candidate-level TPE trials
    assert not any(o.startswith("final:") and o != "final:tpe" for o in origins)  # and not by successive halving


def test_the_library_leaves_process_state_alone(world) -> None:
    """Logging levels, warnings filters and stdout are the application's: a study changes none of them."""
    import logging
    import sys
    import warnings

    import optuna  # its import configures its own logger; what matters is what a study does afterwards

    levels = {name: logging.getLogger(name).level for name in ("optuna", "dspy", "dspy_ext")}
    filters, stdout = list(warnings.filters), sys.stdout
    tuner = OptunaTuner(F.accuracy, space=labeled_space(), n_trials=2, storage="memory", num_threads=1)
    tuner.compile(F.student(), trainset=F.trainset(), valset=F.devset())
    assert {name: logging.getLogger(name).level for name in levels} == levels
    assert optuna.logging.get_verbosity() == levels["optuna"]
    assert warnings.filters == filters and sys.stdout is stdout


# ---- the command line ------------------------------------------------------------------------------


def test_cli_tune_json_resume_and_files(tmp_path: Path, monkeypatch, capsys) -> None:
    import dspy_ext.lm
    from dspy_ext.cli import main

    monkeypatch.setattr(dspy_ext.lm, "make_lm", lambda name="local", **kw: F.make_lm())
    task = F.write_task(tmp_path / "items")
    space = tmp_path / "space.yaml"
    space.write_text("optimizers:\n  labeled:\n    k: {int: [0, 3]}\npruner: none\neval_minibatch: 5\n")
    argv = [
        "tune",
        "--data",
        str(task),
        "--adapter",
        "plain",
        "--space",
        str(space),
        "--storage",
        str(tmp_path / "optuna.db"),
        "--train",
        "20",
        "--val",
        "10",
        "--threads",
        "1",
        "--json",
    ]
    assert main([*argv, "--trials", "3"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert {"best_value", "n_trials", "n_pruned", "study", "storage"} <= set(first)
    assert first["study"] == "tune-items" and first["n_trials"] == 3 and first["n_trials_this_run"] == 3
    assert first["storage"].startswith("sqlite:///") and first["n_pruned"] == 0
    assert first["dashboard"] == f"optuna-dashboard {first['storage']} --host 127.0.0.1 --port 8080"
    assert Path(first["plot"]).read_bytes()[:4] == b"\x89PNG"
    assert Path(first["best_program"]).exists() and (tmp_path / "tune-items" / "summary.json").exists()
    assert first["test_n"] == 10 and first["best_value"] == first["best_trial"]["value"]
    assert main([*argv, "--trials", "5"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["n_trials"] == 5 and second["n_trials_this_run"] == 2  # resumed: the first 3 count
    assert second["total_lm_calls"] > first["total_lm_calls"]
    # Text mode: the table of top trials, the plot and the dashboard command.
    assert main([a for a in argv if a != "--json"] + ["--trials", "5", "--no-test"]) == 0
    text = capsys.readouterr().out
    assert "state" in text and "optimizer" in text and "dashboard: optuna-dashboard sqlite:///" in text
    assert "best: trial" in text and "plot: " in text


def test_cli_rejects_an_invalid_space(tmp_path: Path, monkeypatch, capsys) -> None:
    import dspy_ext.lm
    from dspy_ext.cli import main

    monkeypatch.setattr(dspy_ext.lm, "make_lm", lambda name="local", **kw: F.make_lm())
    space = tmp_path / "space.yaml"
    space.write_text("optimizers:\n  ape:\n    num_candidates: {int: [0, 4]}\n")
    code = main(
        [
            "tune",
            "--data",
            str(F.write_task(tmp_path / "t")),
            "--space",
            str(space),
            "--storage",
            str(tmp_path / "o.db"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "dspy-ext tune: error: invalid search space: optimizers.ape.num_candidates: 0 (low end of [0, 4])" in err
    assert not (tmp_path / "o.db").exists()


def test_cli_tune_run_file_flags_override_and_stored_settings_resume(tmp_path: Path, monkeypatch, capsys) -> None:
    import dspy_ext.lm
    from dspy_ext.cli import main

    monkeypatch.setattr(dspy_ext.lm, "make_lm", lambda name="local", **kw: F.make_lm())
    task = F.write_task(tmp_path / "items")
    space = tmp_path / "space.yaml"
    space.write_text("optimizers:\n  labeled:\n    k: {int: [0, 3]}\npruner: none\neval_minibatch: 5\n")
    run_file = tmp_path / "run.yaml"
    run_file.write_text(
        f"data: {task}\nadapter: plain\nspace: {space}\nstorage: {tmp_path / 'optuna.db'}\n"
        "study: from-file\ntrials: 2\ntrain: 20\nval: 10\nthreads: 1\ntest: false\n"
    )
    assert main(["tune", "--config", str(run_file), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["study"] == "from-file" and first["n_trials"] == 2 == first["n_trials_this_run"]
    assert (first["train"], first["val"], first["adapter"]) == (20, 10, "PlainAdapter")
    assert "test_score" not in first  # test: false, from the file
    # A flag overrides its key; every other key of the file stands.
    assert main(["tune", "--config", str(run_file), "--trials", "3", "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["study"] == "from-file" and second["n_trials"] == 3 and second["n_trials_this_run"] == 1
    assert second["storage"] == first["storage"] and "test_score" not in second
    # The study folder's settings.yaml is a run file that resumes the same study, from any folder.
    stored = Path(second["out_dir"]) / "settings.yaml"
    assert stored.parent == tmp_path / "from-file"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["tune", "--config", str(stored), "--trials", "4", "--json"]) == 0
    third = json.loads(capsys.readouterr().out)
    assert (third["study"], third["storage"], third["n_trials"], third["n_trials_this_run"]) == (
        "from-file",
        first["storage"],
        4,
        1,
    )
    # A misspelt key in the run file is one line naming it, before anything runs.
    run_file.write_text(f"data: {task}\ntrails: 3\n")
    assert main(["tune", "--config", str(run_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dspy-ext tune: error: invalid settings in {run_file}: trails: unknown key"]


def test_cli_tune_several_workers_need_a_shared_storage(tmp_path: Path, monkeypatch, capsys) -> None:
    import dspy_ext.lm
    from dspy_ext.cli import main

    calls = []
    monkeypatch.setattr(dspy_ext.lm, "make_lm", lambda name="local", **kw: calls.append(name) or F.make_lm())
    code = main(
        [
            "tune",
            "--data",
            str(F.write_task(tmp_path / "t")),
            "--storage",
            "memory",
            "--workers",
            "2",
            "--optimizers",
            "labeled",
        ]
    )
    assert code == 2 and not calls  # refused before any LM is made
    assert capsys.readouterr().err.strip() == (
        "dspy-ext tune: error: workers > 1 needs a shared storage (a SQLite file or a database URL), not memory"
    )


@pytest.mark.embedded
def test_tune_on_the_embedded_model(tmp_path: Path, local_lm) -> None:
    """A two-trial study on the real model: the summary, the saved best program and a re-score agree."""
    from dspy_ext.evaluation import Evaluator
    from dspy_ext.experiment import TuneSettings
    from dspy_ext.tuning import tune

    settings = TuneSettings(
        task="sentiment",
        optimizers=["labeled"],
        trials=2,
        train=10,
        val=8,
        threads=1,
        storage=str(tmp_path / "optuna.db"),
        study="embedded",
        test=False,
    )
    result = tune(settings, lm=local_lm)  # 8 baseline rows + 2 trials x 8 dev rows, at most 24 model calls
    summary = result.summary
    assert summary.lm.startswith("local/SmolLM2-135M-Instruct") and summary.adapter == "PlainAdapter"
    assert summary.n_trials == summary.n_complete == 2 and summary.total_lm_calls <= 24
    values = [t.value for t in result.session.study.trials]
    assert summary.best_value == max(values) and 0.0 <= summary.best_value <= 100.0
    best = summary.best_trial
    program = result.job.student.deepcopy()
    program.load(summary.best_program)
    assert len(program.predict.demos) == best["n_demos"]["predict"] == best["params"]["labeled.k"]
    with result.job.components.context():
        rescored = Evaluator(result.job.components.metric, num_threads=1).evaluate(program, result.job.devset)
    assert round(rescored.score, 4) == summary.best_value  # greedy decoding: the same score again
    assert json.loads((tmp_path / "embedded" / "summary.json").read_text())["best_value"] == summary.best_value


# ---- the study's cost cap (--max-cost) -------------------------------------------------------------------


def _priced_lm(input_per_1m: float) -> dspy.LM:
    from dspy_ext.lm import Price

    lm = F.make_lm()
    lm.engine.price = Price(input_per_1m=input_per_1m, output_per_1m=0.0)
    return lm


def test_max_cost_caps_the_whole_study_and_is_kept_across_runs(tmp_path: Path) -> None:
    lm = _priced_lm(1000.0)  # $0.001 per prompt word: a devset row with k demos costs a few cents
    cap = 1.0  # a labeled trial scoring 20 devset rows costs $0.3-0.6
    kwargs = dict(space=labeled_space(), n_trials=8, storage=str(tmp_path / "s.db"), study_name="cap")
    tuner = OptunaTuner(F.accuracy, **kwargs, num_threads=1, enqueue=[params(1), params(2), params(0)], max_cost=cap)
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        session = tuner.open(F.student(), trainset=F.trainset(), valset=F.devset())
        baseline_calls = lm.engine.calls
        session.optimize()
    trials = [t for t in session.study.get_trials(deepcopy=False) if t.state.name != "WAITING"]
    assert 2 <= len(trials) < 8  # the cap stopped the study long before its 8 trials
    # Every trial's spend is recorded; the last one was stopped while scoring, so it is failed, never scored.
    stopped = trials[-1]
    assert stopped.state.name == "FAIL" and stopped.user_attrs["stopped"].startswith("cost cap")
    assert all(t.state.name == "COMPLETE" and t.user_attrs["usd"] > 0 for t in trials[:-1])
    largest_call = 0.001 * max(sum(len(m["content"].split()) for m in r) for r in lm.engine.requests)
    summary = session.results.summary()
    assert cap <= summary.spent_usd <= cap + largest_call
    assert summary.total_usd == pytest.approx(sum(t.user_attrs["usd"] for t in trials), abs=1e-6)
    assert summary.total_usd == pytest.approx(
        0.001 * sum(sum(len(m["content"].split()) for m in r) for r in lm.engine.requests[baseline_calls:]), abs=1e-6
    )
    assert summary.best_trial["usd"] > 0 and summary.best_value is not None  # the best trial so far
    # The cap is the study's: a later run of the same study with the same cap starts no trial.
    again = OptunaTuner(F.accuracy, **kwargs, num_threads=1, max_cost=cap)
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        calls = lm.engine.calls
        assert again.open(F.student(), trainset=F.trainset(), valset=F.devset()).optimize() == 0
    assert lm.engine.calls == calls


def test_trials_of_an_unknown_price_show_unknown_usd(world) -> None:
    from dspy_ext.tuning.report import top_trials_table

    dspy.settings.lm.engine.price = None
    tuner = OptunaTuner(F.accuracy, space=labeled_space(), n_trials=2, storage="memory", num_threads=1)
    session = tuner.open(F.student(), trainset=F.trainset(), valset=F.devset())
    session.optimize()
    assert session.results.summary().total_usd is None
    table = top_trials_table(session.results)
    assert table.splitlines()[0].split()[:7] == ["#", "state", "optimizer", "dev", "%", "LM", "calls"]
    assert all(" unknown " in line for line in table.splitlines()[1:])


def test_cli_tune_max_cost_shows_the_usd_spent(tmp_path: Path, monkeypatch, capsys) -> None:
    import dspy_ext.lm
    from dspy_ext.cli import main

    monkeypatch.setattr(dspy_ext.lm, "make_lm", lambda name="local", **kw: _priced_lm(1000.0))
    task = F.write_task(tmp_path / "items")
    space = tmp_path / "space.yaml"
    space.write_text("optimizers:\n  labeled:\n    k: {int: [0, 3]}\npruner: none\neval_minibatch: 5\n")
    argv = ["tune", "--data", str(task), "--adapter", "plain", "--space", str(space), "--threads", "1"]
    argv += ["--storage", str(tmp_path / "optuna.db"), "--train", "20", "--val", "10", "--trials", "6"]
    assert main([*argv, "--max-cost", "0.5", "--no-test", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["max_cost"] == 0.5 and summary["cost_cap_reached"] and summary["n_trials"] < 6
    assert 0.5 <= summary["spent_usd"] < 0.6 and summary["total_usd"] == pytest.approx(summary["spent_usd"])
    assert main([*argv, "--max-cost", "0.5", "--no-test"]) == 0
    text = capsys.readouterr().out
    assert f"trials' USD {summary['total_usd']:.4f} (cost cap $0.5: reached)" in text
    assert "USD" in text.splitlines()[2]  # the table of top trials has a USD column
