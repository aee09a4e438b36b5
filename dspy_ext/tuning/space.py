"""The tuning space of :class:`~dspy_ext.tuning.OptunaTuner`: which optimizers, which knobs, which ranges.

A space is declared in plain Python or YAML/JSON with the same shape::

    optimizers:              # a list of names, or a mapping name -> parameter overrides
      ape:                   # parameters merge over the method's defaults (its config model's ranges)
        num_candidates: {int: [3, 8]}
        induce_temperature: {float: [0.5, 1.2]}
        final_selection: [halving, tpe]      # a list is a categorical choice
      opro: {}               # {} or null: the method's defaults
      bfsrs:
        num_candidate_programs: 4            # a scalar is a fixed value
    common:                  # knobs every trial gets
      adapter: plain
    budget: 80               # LM calls per trial (a hard cap for dspy-ext's optimizers)
    pruner: {type: median, n_startup_trials: 2, n_warmup_steps: 1}   # median | wilcoxon | none
    eval_minibatch: 10       # devset rows per intermediate value (the unit of pruning)
    sampler: {type: tpe, n_startup_trials: 4}                        # tpe | random

A parameter is one of ``{int: [low, high], step: 1, log: false}``,
``{float: [low, high], log: false}``, ``{choice: [...]}`` (or a bare list), or a
scalar (fixed). Parameter names are the optimizer's config keys in
:mod:`dspy_ext.registry` plus the tuning knobs ``budget``, ``final_selection``
(``halving`` = successive halving, ``tpe`` = candidate-level TPE; dspy-ext's
own optimizers only) and ``final_trials``. Each method's default ranges are
written once, on its config model's fields (``tunable(..., tune={"int": [3, 8]})``,
see :mod:`dspy_ext.search.config`), and read from there.

Every space is checked before any trial runs: each end of every range and
each choice is validated against the optimizer's pydantic config, so a range
that includes an unusable value (``num_candidates: {int: [0, 5]}``) is
rejected with a message naming the optimizer, the parameter and the reason.

Example:
    >>> space = TuningSpace.from_dict({"optimizers": {"ape": {"num_candidates": Int(2, 4)}, "bfsrs": None}})
    >>> sorted(space.methods)
    ['ape', 'bfsrs']
    >>> TuningSpace.from_dict({"optimizers": {"ape": {"num_candidates": Int(0, 4)}}})
    Traceback (most recent call last):
    ...
    dspy_ext.tuning.space.TuningSpaceError: invalid search space: optimizers.ape.num_candidates: 0 (low end of [0, 4]) is not allowed: Input should be greater than or equal to 1
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dspy_ext.registry import REGISTRY, resolve_config
from dspy_ext.tuning.strategies import (
    MedianPruning,
    PrunerSetting,
    SamplerSetting,
    TPESampling,
    parse_pruner,
    parse_sampler,
)

#: Knobs of a method that tune the trial rather than the optimizer's config.
TRIAL_KNOBS = ("budget", "final_selection", "final_trials")
FINAL_SELECTIONS = ("halving", "tpe")
#: Knobs every trial may get, whatever the method.
COMMON_KNOBS = ("adapter", "task_temperature")
OBJECTIVES = ("auto", "single", "pareto", "constraints")
DEFAULT_OPTIMIZERS = ("ape", "opro", "bfsrs")
DEFAULT_BUDGET = 80

_SCALARS = (str, int, float, bool, type(None))


class TuningSpaceError(ValueError):
    """A search space that cannot work; the message says where and why."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid search space: " + "; ".join(problems))


# ---- parameters -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One searchable (or fixed) value.

    Build with :func:`Int`, :func:`Float`, :func:`Choice` or :func:`Fixed`, or
    parse with :meth:`Param.parse`.
    """

    kind: str  # "int" | "float" | "choice" | "fixed"
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    value: Any = None

    # ---- construction ----
    @classmethod
    def parse(cls, raw: Any, where: str) -> Param:
        """Parse the YAML/JSON form (or pass a :class:`Param` through)."""
        if isinstance(raw, Param):
            return raw
        if isinstance(raw, (list, tuple)):
            return cls("choice", choices=tuple(raw))
        if isinstance(raw, Mapping):
            kinds = [k for k in ("int", "float", "choice") if k in raw]
            extra = set(raw) - {"int", "float", "choice", "step", "log"}
            if len(kinds) != 1 or extra:
                raise TuningSpaceError(
                    [
                        f"{where}: expected one of {{int: [low, high]}}, {{float: [low, high]}}, {{choice: [...]}} "
                        f"(optional step, log), a list or a scalar; got {raw!r}"
                    ]
                )
            kind = kinds[0]
            if kind == "choice":
                if "step" in raw or "log" in raw:
                    raise TuningSpaceError([f"{where}: step/log do not apply to a choice"])
                return cls("choice", choices=tuple(raw["choice"] or ()))
            bounds = raw[kind]
            if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
                raise TuningSpaceError([f"{where}: {kind} needs [low, high], got {bounds!r}"])
            return cls(kind, low=bounds[0], high=bounds[1], step=raw.get("step"), log=bool(raw.get("log", False)))
        if isinstance(raw, _SCALARS):
            return cls("fixed", value=raw)
        raise TuningSpaceError([f"{where}: cannot read {raw!r} as a parameter"])

    # ---- checks ----
    def shape_problems(self, where: str) -> list[str]:
        """Problems with the parameter itself (bounds, step, log, choice types)."""
        problems = []
        if self.kind in ("int", "float"):
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (self.low, self.high))
            if not numeric:
                return [f"{where}: bounds must be numbers, got [{self.low!r}, {self.high!r}]"]
            if self.kind == "int" and not all(float(v).is_integer() for v in (self.low, self.high)):
                problems.append(f"{where}: int bounds must be whole numbers, got [{self.low}, {self.high}]")
            if self.low > self.high:
                problems.append(f"{where}: empty range [{self.low}, {self.high}] (low > high)")
            if self.log and self.low <= 0:
                problems.append(f"{where}: a log range needs low > 0, got {self.low}")
            if self.step is not None:
                if not isinstance(self.step, (int, float)) or self.step <= 0:
                    problems.append(f"{where}: step must be > 0, got {self.step!r}")
                elif self.log:
                    problems.append(f"{where}: step and log cannot be combined")
                elif self.kind == "int" and not float(self.step).is_integer():
                    problems.append(f"{where}: an int step must be a whole number, got {self.step}")
        elif self.kind == "choice":
            if not self.choices:
                problems.append(f"{where}: a choice needs at least one option")
            bad = [c for c in self.choices if not isinstance(c, _SCALARS)]
            if bad:
                problems.append(f"{where}: choices must be strings, numbers, booleans or null, got {bad!r}")
            if len(set(map(repr, self.choices))) != len(self.choices):
                problems.append(f"{where}: duplicate options in {list(self.choices)!r}")
        return problems

    def probe_values(self) -> list[tuple[Any, str]]:
        """Values to validate, each with how it is named in an error (the ends of a range, every choice)."""
        if self.kind == "fixed":
            return [(self.value, "fixed value")]
        if self.kind == "choice":
            return [(c, f"option of {list(self.choices)!r}") for c in self.choices]
        cast = int if self.kind == "int" else float
        span = f"[{cast(self.low)}, {cast(self.high)}]"
        probes = [(cast(self.low), f"low end of {span}"), (cast(self.high), f"high end of {span}")]
        if self.kind == "float" and self.high > self.low and self.step is None:
            # A value inside the range catches a float range over an integer setting.
            probes.append((round(self.low + 0.37 * (self.high - self.low), 4), f"inside {span}"))
        return probes

    @property
    def searched(self) -> bool:
        return (
            self.kind != "fixed"
            and not (self.kind == "choice" and len(self.choices) == 1)
            and not (self.kind in ("int", "float") and self.low == self.high)
        )

    # ---- use ----
    def suggest(self, trial: Any, name: str) -> Any:
        """Draw the value for ``trial`` (fixed values are returned without touching the trial)."""
        if self.kind == "fixed":
            return self.value
        if self.kind == "choice":
            return trial.suggest_categorical(name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), step=self.step, log=self.log)

    def to_raw(self) -> Any:
        """The YAML/JSON form."""
        if self.kind == "fixed":
            return self.value
        if self.kind == "choice":
            return {"choice": list(self.choices)}
        raw: dict[str, Any] = {self.kind: [self.low, self.high]}
        if self.step is not None:
            raw["step"] = self.step
        if self.log:
            raw["log"] = True
        return raw


def Int(low: int, high: int, *, step: int | None = None, log: bool = False) -> Param:  # noqa: N802
    """An integer range ``[low, high]`` (both ends included)."""
    return Param("int", low=low, high=high, step=step, log=log)


def Float(low: float, high: float, *, step: float | None = None, log: bool = False) -> Param:  # noqa: N802
    """A float range ``[low, high]``."""
    return Param("float", low=low, high=high, step=step, log=log)


def Choice(options: list[Any] | tuple[Any, ...]) -> Param:  # noqa: N802
    """A categorical choice."""
    return Param("choice", choices=tuple(options))


def Fixed(value: Any) -> Param:  # noqa: N802
    """A fixed value."""
    return Param("fixed", value=value)


# ---- per-method defaults -----------------------------------------------------------------------


def default_method_space(name: str) -> dict[str, Param]:
    """Optimizer ``name``'s default ranges, read from its config model (each field's ``tune`` range).

    dspy-ext's instruction searches also get the ``final_selection`` knob (successive halving or
    candidate-level TPE), since their final selection is pluggable.

    Example:
        >>> default_method_space("labeled")
        {'k': Param(kind='int', low=1, high=6, step=None, log=False, choices=(), value=None)}
    """
    spec = REGISTRY[name]
    params = {key: Param.parse(raw, f"{name}.{key}") for key, raw in spec.config_model.tuning_ranges().items()}
    if spec.final_selector:
        params["final_selection"] = Choice(FINAL_SELECTIONS)
    return params


#: Sensible, budget-friendly ranges per method (from the registry's config models); a user's space merges over these.
DEFAULT_METHOD_SPACES: dict[str, dict[str, Param]] = {name: default_method_space(name) for name in REGISTRY}


# ---- the space ---------------------------------------------------------------------------------


@dataclass
class TrialPlan:
    """What one trial runs: an optimizer, its validated config and the trial knobs."""

    optimizer: str
    config: dict[str, Any]
    budget: int
    final_selection: str = "halving"
    final_trials: int | None = None
    adapter: str | None = None
    task_temperature: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TuningSpace:
    """A validated search space (see the module docstring for the format).

    Attributes:
        methods: ``{optimizer name: {parameter: Param}}`` with defaults merged in.
        common: Knobs every trial gets (``adapter``, ``task_temperature``).
        budget: Default LM calls per trial.
        pruner: The pruner (:class:`~dspy_ext.tuning.strategies.PrunerSetting`: median, wilcoxon or none).
        eval_minibatch: Devset rows per intermediate value.
        sampler: The sampler (:class:`~dspy_ext.tuning.strategies.SamplerSetting`: tpe or random).
        objective: ``auto``, ``single``, ``pareto`` or ``constraints`` (see :class:`~dspy_ext.tuning.OptunaTuner`).
    """

    methods: dict[str, dict[str, Param]]
    common: dict[str, Param] = field(default_factory=dict)
    budget: int = DEFAULT_BUDGET
    pruner: PrunerSetting = field(default_factory=lambda: MedianPruning({"type": "median"}))
    eval_minibatch: int = 10
    sampler: SamplerSetting = field(default_factory=lambda: TPESampling({"type": "tpe"}))
    objective: str | None = None

    # ---- parsing ----
    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> TuningSpace:
        """Parse and validate a space; raises :class:`TuningSpaceError` listing every problem."""
        raw = dict(raw or {})
        problems: list[str] = []
        known = {"optimizers", "common", "budget", "pruner", "eval_minibatch", "sampler", "objective"}
        for key in sorted(set(raw) - known):
            problems.append(f"{key}: unknown top-level key (valid: {', '.join(sorted(known))})")
        optimizers = raw.get("optimizers", list(DEFAULT_OPTIMIZERS))
        if isinstance(optimizers, str):
            optimizers = [o.strip() for o in optimizers.split(",") if o.strip()]
        if isinstance(optimizers, (list, tuple)):
            optimizers = dict.fromkeys(optimizers)
        if not isinstance(optimizers, Mapping):
            raise TuningSpaceError([f"optimizers: expected a list of names or a mapping, got {optimizers!r}"])
        if not optimizers:
            problems.append("optimizers: empty; name at least one of " + ", ".join(REGISTRY))
        methods: dict[str, dict[str, Param]] = {}
        for name, overrides in optimizers.items():
            if name not in REGISTRY:
                problems.append(f"optimizers.{name}: unknown optimizer (choose from {', '.join(REGISTRY)})")
                continue
            if overrides is not None and not isinstance(overrides, Mapping):
                problems.append(f"optimizers.{name}: expected a mapping of parameters, got {overrides!r}")
                continue
            params = default_method_space(name)  # read now: an optimizer registered after import has one too
            for key, value in (overrides or {}).items():
                try:
                    params[key] = Param.parse(value, f"optimizers.{name}.{key}")
                except TuningSpaceError as exc:
                    problems += exc.problems
            methods[name] = params
        common: dict[str, Param] = {}
        raw_common = raw.get("common") or {}
        if not isinstance(raw_common, Mapping):
            problems.append(f"common: expected a mapping, got {raw_common!r}")
            raw_common = {}
        for key, value in raw_common.items():
            try:
                common[key] = Param.parse(value, f"common.{key}")
            except TuningSpaceError as exc:
                problems += exc.problems
        space = cls(
            methods=methods,
            common=common,
            budget=raw.get("budget", DEFAULT_BUDGET),
            pruner=parse_pruner(raw.get("pruner", {"type": "median"})),
            eval_minibatch=raw.get("eval_minibatch", 10),
            sampler=parse_sampler(raw.get("sampler", {"type": "tpe"})),
            objective=raw.get("objective"),
        )
        problems += space.problems()
        if problems:
            raise TuningSpaceError(problems)
        return space

    @classmethod
    def default(cls, optimizers: list[str] | tuple[str, ...] = DEFAULT_OPTIMIZERS, **top: Any) -> TuningSpace:
        """The default space over ``optimizers`` (each with its default ranges)."""
        return cls.from_dict({"optimizers": list(optimizers), **top})

    # ---- validation ----
    def problems(self) -> list[str]:
        """Every reason this space cannot work (empty when it can)."""
        problems: list[str] = []
        if not _positive_int(self.budget):
            problems.append(f"budget: must be a whole number >= 1, got {self.budget!r}")
        if not _positive_int(self.eval_minibatch):
            problems.append(f"eval_minibatch: must be a whole number >= 1, got {self.eval_minibatch!r}")
        if self.objective is not None and self.objective not in OBJECTIVES:
            problems.append(f"objective: must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        problems += self.pruner.problems()
        problems += self.sampler.problems()
        for name, params in self.methods.items():
            fields = REGISTRY[name].config_model.model_fields
            for key, param in params.items():
                where = f"optimizers.{name}.{key}"
                shape = param.shape_problems(where)
                problems += shape
                if shape:
                    continue
                if key in TRIAL_KNOBS:
                    problems += _knob_problems(name, key, param, where)
                elif key not in fields:
                    knobs = TRIAL_KNOBS if REGISTRY[name].final_selector else ("budget",)
                    valid = ", ".join([*fields, *knobs])
                    problems.append(f"{where}: unknown parameter for {name} (valid: {valid})")
                else:
                    for value, what in param.probe_values():
                        try:
                            resolve_config(name, {key: value})
                        except ValueError as exc:
                            reason = str(exc).split(": ", 2)[-1].split(" (valid keys")[0]
                            problems.append(f"{where}: {value!r} ({what}) is not allowed: {reason}")
        for key, param in self.common.items():
            where = f"common.{key}"
            shape = param.shape_problems(where)
            problems += shape
            if shape:
                continue
            if key not in COMMON_KNOBS:
                problems.append(f"{where}: unknown common knob (valid: {', '.join(COMMON_KNOBS)})")
            elif key == "adapter":
                from dspy_ext.adapters import ADAPTERS

                for value, what in param.probe_values():
                    if value not in ADAPTERS and value is not None:
                        problems.append(f"{where}: {value!r} ({what}) is not an adapter ({', '.join(ADAPTERS)})")
            elif key == "task_temperature":
                for value, what in param.probe_values():
                    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 2.0:
                        problems.append(f"{where}: {value!r} ({what}) must be a number in [0, 2]")
        return problems

    # ---- use ----
    def suggest(self, trial: Any) -> TrialPlan:
        """Sample one :class:`TrialPlan` from ``trial`` (Optuna's define-by-run API).

        Parameter names in the study are ``optimizer``, ``<optimizer>.<parameter>``
        and the common knobs' names, so each method's ranges are kept apart.
        """
        name = trial.suggest_categorical("optimizer", list(self.methods))
        values = {key: param.suggest(trial, f"{name}.{key}") for key, param in self.methods[name].items()}
        common = {key: param.suggest(trial, key) for key, param in self.common.items()}
        knobs = {key: values.pop(key) for key in TRIAL_KNOBS if key in values}
        config = resolve_config(name, values).model_dump()
        return TrialPlan(
            optimizer=name,
            config=config,
            budget=int(knobs.get("budget", self.budget)),
            final_selection=knobs.get("final_selection", "halving"),
            final_trials=knobs.get("final_trials"),
            adapter=common.get("adapter"),
            task_temperature=common.get("task_temperature"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The normalized YAML/JSON form (defaults merged in); stored with the study."""
        return {
            "optimizers": {
                name: {k: p.to_raw() for k, p in sorted(params.items())} for name, params in self.methods.items()
            },
            "common": {k: p.to_raw() for k, p in sorted(self.common.items())},
            "budget": self.budget,
            "pruner": self.pruner.to_dict(),
            "eval_minibatch": self.eval_minibatch,
            "sampler": self.sampler.to_dict(),
            "objective": self.objective,
        }

    def fingerprint(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=str)

    def make_pruner(self) -> Any:
        """The study's ``optuna.pruners.BasePruner``."""
        return self.pruner.build()

    def make_sampler(self, seed: int, *, constraints_func: Any = None) -> Any:
        """The study's ``optuna.samplers.BaseSampler``, seeded."""
        return self.sampler.build(seed, constraints_func=constraints_func)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _knob_problems(method: str, key: str, param: Param, where: str) -> list[str]:
    problems = []
    if key in ("final_selection", "final_trials") and not REGISTRY[method].final_selector:
        ours = ", ".join(name for name, spec in REGISTRY.items() if spec.final_selector)
        return [f"{where}: only dspy-ext's own optimizers ({ours}) have a pluggable final selection; {method} does not"]
    for value, what in param.probe_values():
        if key in ("budget", "final_trials") and not _positive_int(value):
            problems.append(f"{where}: {value!r} ({what}) must be a whole number >= 1")
        elif key == "final_selection" and value not in FINAL_SELECTIONS:
            problems.append(f"{where}: {value!r} ({what}) must be one of {', '.join(FINAL_SELECTIONS)}")
    return problems


def load_space(source: str | Path | Mapping[str, Any] | TuningSpace | None) -> TuningSpace:
    """A :class:`TuningSpace` from a YAML/JSON file, a dict, an existing space or ``None`` (the default).

    Raises:
        TuningSpaceError: The space cannot work (every problem is listed).
        FileNotFoundError: The file does not exist.
    """
    if source is None:
        return TuningSpace.default()
    if isinstance(source, TuningSpace):
        return source
    if isinstance(source, Mapping):
        return TuningSpace.from_dict(copy.deepcopy(dict(source)))
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"search space file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    except Exception as exc:  # a YAML/JSON syntax error: one clear line
        raise TuningSpaceError(
            [f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {exc}"]
        ) from None
    if raw is not None and not isinstance(raw, Mapping):
        raise TuningSpaceError([f"{path}: expected a mapping at the top level, got {type(raw).__name__}"])
    return TuningSpace.from_dict(raw)
