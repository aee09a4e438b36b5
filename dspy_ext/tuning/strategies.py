"""How a study prunes trials and samples parameters: typed settings that build Optuna's objects.

A space file names them (``pruner: median``, ``pruner: {type: wilcoxon, p_threshold: 0.2}``,
``sampler: {type: tpe, n_startup_trials: 4}``); :func:`parse_pruner` and :func:`parse_sampler` turn
that into a setting, whose ``build(...)`` returns the ``optuna.pruners.BasePruner`` or
``optuna.samplers.BaseSampler`` and whose ``to_dict()`` is the mapping as written (a study stores it).

Example:
    >>> parse_pruner("median").build()                          # doctest: +SKIP
    <optuna.pruners._median.MedianPruner object at ...>
    >>> parse_sampler({"type": "tpe", "n_startup_trials": 8}).build(seed=0)   # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class StudySetting:
    """A pruner or sampler setting: its ``type`` and options, as the space file wrote them."""

    #: The mapping as written (``{"type": name}`` for a bare name).
    spec: Mapping[str, Any]

    #: ``pruner`` or ``sampler``: the space key that holds it.
    role: ClassVar[str] = ""
    #: The ``type`` it is named by.
    kind: ClassVar[str] = ""
    #: The options it takes, besides ``type``.
    allowed: ClassVar[frozenset[str]] = frozenset()

    @property
    def options(self) -> dict[str, Any]:
        """The options given, without ``type``."""
        return {k: v for k, v in self.spec.items() if k != "type"}

    def to_dict(self) -> dict[str, Any]:
        """The mapping as written (what a study stores and compares)."""
        return dict(self.spec)

    def problems(self) -> list[str]:
        """Every reason this setting cannot work (empty when it can)."""
        allowed = ", ".join(sorted(self.allowed)) or "none"
        return [
            f"{self.role}.{k}: unknown option for the {self.kind} {self.role} (valid: {allowed})"
            for k in sorted(set(self.spec) - self.allowed - {"type"})
        ]


@dataclass(frozen=True)
class InvalidSetting(StudySetting):
    """A ``pruner`` or ``sampler`` entry that names nothing known; :meth:`problems` says why."""

    problem: str = ""

    def problems(self) -> list[str]:
        return [self.problem]

    def build(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError(self.problem)


# ---- pruners ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrunerSetting(StudySetting):
    """A pruner of a study's trials (see :func:`parse_pruner`)."""

    role: ClassVar[str] = "pruner"
    #: Whether it can stop a trial at all.
    prunes: ClassVar[bool] = True
    #: Whether it compares trials row by row (intermediate values per devset row, not running means).
    per_row: ClassVar[bool] = False

    def build(self) -> Any:
        """The ``optuna.pruners.BasePruner``."""
        raise NotImplementedError


_COUNTS = ("n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials", "n_startup_steps")
_AT_LEAST_ONE = ("interval_steps", "n_min_trials")


def _count_problems(setting: StudySetting, keys: tuple[str, ...] = _COUNTS) -> list[str]:
    """The options among ``keys`` that are not whole numbers (>= 1 for interval and minimum counts, else >= 0)."""
    problems = []
    for key in keys:
        value = setting.spec.get(key)
        least = 1 if key in _AT_LEAST_ONE else 0
        if value is not None and not (isinstance(value, int) and value >= least):
            problems.append(f"{setting.role}.{key}: must be a whole number >= {least}, got {value!r}")
    return problems


@dataclass(frozen=True)
class MedianPruning(PrunerSetting):
    """Optuna's median pruner over the running devset mean (default: 2 startup trials, 1 warm-up step)."""

    kind: ClassVar[str] = "median"
    allowed: ClassVar[frozenset[str]] = frozenset(
        {"n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials"}
    )

    def problems(self) -> list[str]:
        return super().problems() + _threshold_problems(self) + _count_problems(self)

    def build(self) -> Any:
        import optuna

        return optuna.pruners.MedianPruner(**{"n_startup_trials": 2, "n_warmup_steps": 1, **self.options})


@dataclass(frozen=True)
class WilcoxonPruning(PrunerSetting):
    """Optuna's Wilcoxon pruner, comparing a trial with the best row by row (default ``p_threshold`` 0.1)."""

    kind: ClassVar[str] = "wilcoxon"
    allowed: ClassVar[frozenset[str]] = frozenset({"p_threshold", "n_startup_steps"})
    per_row: ClassVar[bool] = True

    def problems(self) -> list[str]:
        problems = super().problems()
        if importlib.util.find_spec("scipy") is None:
            problems.append("pruner.type: the wilcoxon pruner needs scipy (pip install scipy); use 'median' without it")
        return problems + _threshold_problems(self) + _count_problems(self)

    def build(self) -> Any:
        import optuna

        return optuna.pruners.WilcoxonPruner(**{"p_threshold": 0.1, **self.options})


@dataclass(frozen=True)
class NoPruning(PrunerSetting):
    """No pruning: every trial scores the whole devset."""

    kind: ClassVar[str] = "none"
    prunes: ClassVar[bool] = False

    def problems(self) -> list[str]:
        return super().problems() + _threshold_problems(self) + _count_problems(self)

    def build(self) -> Any:
        import optuna

        return optuna.pruners.NopPruner()


def _threshold_problems(setting: StudySetting) -> list[str]:
    p = setting.spec.get("p_threshold")
    if p is not None and not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
        return [f"pruner.p_threshold: must be in [0, 1], got {p!r}"]
    return []


#: The pruners a space may name, by ``type``.
PRUNERS: dict[str, type[PrunerSetting]] = {cls.kind: cls for cls in (MedianPruning, WilcoxonPruning, NoPruning)}


# ---- samplers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplerSetting(StudySetting):
    """A sampler of a study's parameters (see :func:`parse_sampler`)."""

    role: ClassVar[str] = "sampler"

    def build(self, seed: int, *, constraints_func: Callable[..., Any] | None = None) -> Any:
        """The ``optuna.samplers.BaseSampler``, seeded."""
        raise NotImplementedError

    def problems(self) -> list[str]:
        return super().problems() + _count_problems(self, ("n_startup_trials",))


@dataclass(frozen=True)
class TPESampling(SamplerSetting):
    """Optuna's TPE sampler: multivariate, grouped, with a constant liar for parallel workers."""

    kind: ClassVar[str] = "tpe"
    allowed: ClassVar[frozenset[str]] = frozenset(
        {"n_startup_trials", "n_ei_candidates", "multivariate", "group", "constant_liar"}
    )

    def build(self, seed: int, *, constraints_func: Callable[..., Any] | None = None) -> Any:
        import optuna

        defaults: dict[str, Any] = {"n_startup_trials": 4, "multivariate": True, "group": True, "constant_liar": True}
        if constraints_func is not None:
            defaults["constraints_func"] = constraints_func
        return optuna.samplers.TPESampler(seed=seed, **{**defaults, **self.options})


@dataclass(frozen=True)
class RandomSampling(SamplerSetting):
    """Optuna's random sampler."""

    kind: ClassVar[str] = "random"

    def build(self, seed: int, *, constraints_func: Callable[..., Any] | None = None) -> Any:
        import optuna

        return optuna.samplers.RandomSampler(seed=seed)


#: The samplers a space may name, by ``type``.
SAMPLERS: dict[str, type[SamplerSetting]] = {cls.kind: cls for cls in (TPESampling, RandomSampling)}


# ---- parsing ------------------------------------------------------------------------------------


def _parse(raw: Any, role: str, known: Mapping[str, type[StudySetting]], default: str) -> StudySetting:
    if isinstance(raw, StudySetting):
        return raw
    spec = {"type": raw} if isinstance(raw, str) else raw
    if not isinstance(spec, Mapping):
        return InvalidSetting({}, problem=f"{role}: expected a name or a mapping with 'type', got {raw!r}")
    kind = spec.get("type", default)
    if kind not in known:
        return InvalidSetting(dict(spec), problem=f"{role}.type: must be one of {', '.join(known)}, got {kind!r}")
    return known[kind](dict(spec))


def parse_pruner(raw: Any) -> PrunerSetting:
    """The pruner a space names: a name, a mapping with ``type`` (default ``median``), or a setting.

    An entry that names no known pruner gives an :class:`InvalidSetting`, whose problem the space lists.
    """
    return _parse(raw, "pruner", PRUNERS, "median")  # type: ignore[return-value]


def parse_sampler(raw: Any) -> SamplerSetting:
    """The sampler a space names: a name, a mapping with ``type`` (default ``tpe``), or a setting."""
    return _parse(raw, "sampler", SAMPLERS, "tpe")  # type: ignore[return-value]
