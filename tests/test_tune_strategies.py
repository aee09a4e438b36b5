"""Pruner and sampler settings of a tuning space: parsed from a name or a mapping, built into Optuna's objects."""

from __future__ import annotations

import optuna
import pytest

from dspy_ext.tuning import TuningSpace
from dspy_ext.tuning.strategies import (
    InvalidSetting,
    MedianPruning,
    NoPruning,
    RandomSampling,
    TPESampling,
    WilcoxonPruning,
    parse_pruner,
    parse_sampler,
)


@pytest.mark.parametrize(
    ("raw", "cls", "built"),
    [
        ("median", MedianPruning, optuna.pruners.MedianPruner),
        ({"type": "wilcoxon", "p_threshold": 0.2}, WilcoxonPruning, optuna.pruners.WilcoxonPruner),
        ("none", NoPruning, optuna.pruners.NopPruner),
        ({"n_warmup_steps": 3}, MedianPruning, optuna.pruners.MedianPruner),  # no type: median
    ],
)
def test_a_pruner_is_parsed_from_its_name_and_builds_an_optuna_pruner(raw, cls, built) -> None:
    setting = parse_pruner(raw)
    assert type(setting) is cls and not setting.problems()
    assert isinstance(setting.build(), built) and isinstance(setting.build(), optuna.pruners.BasePruner)
    assert setting.to_dict() == ({"type": raw} if isinstance(raw, str) else raw)  # stored as written


def test_a_sampler_is_parsed_and_seeded() -> None:
    tpe, rnd = parse_sampler({"type": "tpe", "n_startup_trials": 8}), parse_sampler("random")
    assert isinstance(tpe, TPESampling) and isinstance(rnd, RandomSampling)
    assert isinstance(tpe.build(0), optuna.samplers.TPESampler) and isinstance(
        rnd.build(0), optuna.samplers.RandomSampler
    )
    assert tpe.build(0)._n_startup_trials == 8


def test_the_space_round_trips_its_settings_through_json() -> None:
    space = TuningSpace.from_dict({"optimizers": ["ape"], "pruner": "none", "sampler": {"type": "random"}})
    again = TuningSpace.from_dict(space.to_dict())
    assert again.pruner == space.pruner == NoPruning({"type": "none"}) and again.fingerprint() == space.fingerprint()
    assert space.to_dict()["pruner"] == {"type": "none"} and space.to_dict()["sampler"] == {"type": "random"}


def test_an_unknown_name_is_an_invalid_setting_with_its_reason() -> None:
    bad = parse_pruner("hyperband")
    assert isinstance(bad, InvalidSetting)
    assert bad.problems() == ["pruner.type: must be one of median, wilcoxon, none, got 'hyperband'"]
