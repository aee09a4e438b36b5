"""Typed settings of one experiment, readable from a run file (YAML, TOML or JSON).

:class:`RunSettings` is everything that decides one compile: the data, the
program and metric, the LM and adapter, the optimizer and its config, the
budget, the seed, the train/val sizes and the output folder.
:class:`CompareSettings` and :class:`TuneSettings` share the data, program and
model keys and add their own. Every default is written here once; the CLI's
flags override a run file key by key.

A run folder stores its resolved settings as ``settings.yaml``, so
``dspy-ext compile --config runs/X/settings.yaml`` reproduces run ``X``.

Example:
    >>> s = RunSettings(task="sentiment", optimizer="opro", budget=200)
    >>> s.seed, s.train, s.val
    (0, 50, 50)
    >>> RunSettings(task="sentiment", budget=0)
    Traceback (most recent call last):
    ...
    dspy_ext.experiment.settings.SettingsError: invalid settings: budget: Input should be greater than or equal to 1
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dspy_ext.search.config import DEFAULT_BUDGET
from dspy_ext.search.regression import parse_guards

#: Run file suffixes and what reads them.
RUN_FILE_FORMATS = {".yaml": "YAML", ".yml": "YAML", ".toml": "TOML", ".json": "JSON"}


class SettingsError(ValueError):
    """Settings that cannot be used; the message names every bad key.

    Attributes:
        detail: The problems, without the prefix naming where the settings came from.
    """

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail or message


def _guards(value: Any) -> Any:
    """Guards as ``{criterion: points}`` from a mapping or ``"name=points"`` strings (``--guard``, repeatable)."""
    return parse_guards(value) if value is not None else {}


def _keys(value: Any) -> Any:
    """``"a, b"`` -> ``["a", "b"]`` (the CLI's comma form); lists pass through."""
    if isinstance(value, str):
        return [k.strip() for k in value.split(",") if k.strip()]
    return value


class PriceSettings(BaseModel):
    """A model's price in USD per million tokens (run-file key ``price``)."""

    model_config = ConfigDict(extra="forbid")

    input_per_1m: float = Field(ge=0)
    output_per_1m: float = Field(ge=0)


class TrackingSettings(BaseModel):
    """Where a compile is tracked (run-file key ``tracking``; CLI ``--mlflow URI``, ``--mlflow-experiment``).

    Attributes:
        mlflow: An MLflow tracking URI (``sqlite:///mlflow.db``, ``http://127.0.0.1:5000``, a folder...);
            every compile becomes one MLflow run there, a comparison or a study one parent run with a
            child run per cell or trial.
        experiment: The MLflow experiment (``None``: the task's name).
    """

    model_config = ConfigDict(extra="forbid")

    mlflow: str = Field(min_length=1)
    experiment: str | None = Field(default=None, min_length=1)


class ExperimentSettings(BaseModel):
    """What every experiment needs: data, program, metric, model, seed and sizes.

    Attributes:
        task: A built-in task name (``sentiment``, ...), or ``None`` with ``data``.
        data: A task folder or one data file (JSONL/CSV/Parquet), or ``None`` with ``task``.
        input_keys: Input columns (default: the task's, else ``input``).
        output_keys: Output columns (default: the task's, else ``output``).
        program: A built-in program name (``transform``, ``classify``, ``two_step``, ``cot``) or an
            import path ``package.module:Name`` of a ``dspy.Module`` class, instance or factory.
        metric: A built-in metric name (``exact_match``, ...) or an import path ``package.module:function``.
        lm: ``local`` (the embedded model) or any ``dspy.LM`` model string.
        api_base: The served model's OpenAI-compatible base URL (``http://127.0.0.1:8000/v1``; ``None``:
            the provider's default, or ``OPENAI_API_BASE``).
        api_key_env: The environment variable that holds the API key (the key itself is never stored).
        price: What the model charges, ``{input_per_1m: USD, output_per_1m: USD}`` (``None``: DSPy's
            estimate from its bundled price list; a model it does not know is reported as unknown).
        lm_timeout: Seconds one LM call may take before it is abandoned and retried (``None``: no limit).
        lm_retries: Retries of an LM call that failed transiently (timeout, rate limit, 5xx, reset),
            with exponential backoff and jitter; every try counts against the budget.
        adapter: ``auto`` (plain for local models, DSPy's chat adapter otherwise), ``plain``, ``chat`` or ``json``.
        seed: Seeds every random choice (``0`` is a seed like any other).
        train: Training rows drawn from the training split.
        val: Validation rows drawn from the training split.
        threads: Evaluation threads.
        cache: Use DSPy's response cache.
        out: The output folder (``None``: a default under ``runs/``).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    task: str | None = None
    data: str | None = None
    input_keys: list[str] | None = None
    output_keys: list[str] | None = None
    program: str = "transform"
    metric: str = "exact_match"
    lm: str = "local"
    api_base: str | None = None
    api_key_env: str | None = None
    price: PriceSettings | None = None
    lm_timeout: float | None = Field(default=None, gt=0)
    lm_retries: int = Field(default=3, ge=0)
    adapter: Literal["auto", "plain", "chat", "json"] = "auto"
    seed: int = 0
    train: int = Field(default=50, ge=1)
    val: int = Field(default=50, ge=1)
    threads: int = Field(default=4, ge=1)
    cache: bool = True
    out: str | None = None

    _split_keys = field_validator("input_keys", "output_keys", mode="before")(lambda cls, v: _keys(v))

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            detail = _describe(exc)
            raise SettingsError(f"invalid settings: {detail}", detail) from None

    @model_validator(mode="after")
    def _one_source(self) -> ExperimentSettings:
        if (self.task is None) == (self.data is None):
            raise ValueError("give exactly one of task (a built-in task name) or data (a folder or file)")
        return self

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def build(cls, values: Mapping[str, Any] | None = None, *, source: str = "settings") -> Any:
        """Validate ``values`` into settings, with one clear error naming every bad key.

        Raises:
            SettingsError: An unknown key, a bad value, or not exactly one of ``task``/``data``.
        """
        values = dict(values or {})
        odd = [key for key in values if not isinstance(key, str)]
        if odd:
            raise SettingsError(f"invalid {source}: setting names are text; got {', '.join(repr(k) for k in odd[:5])}")
        try:
            return cls(**values)
        except SettingsError as exc:
            raise SettingsError(f"invalid {source}: {exc.detail}", exc.detail) from None

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Any:
        """Settings from a run file, with ``overrides`` (e.g. command-line flags) on top, key by key.

        Args:
            path: A ``.yaml``/``.yml``, ``.toml`` or ``.json`` run file, or ``None`` for defaults only.
            overrides: Keys that replace the file's.

        Raises:
            SettingsError: The file cannot be read or parsed, or the merged settings are invalid.
        """
        values = read_run_file(path) if path is not None else {}
        return cls.build(_merge(values, overrides), source=f"settings in {path}" if path else "settings")

    def with_changes(self, **changes: Any) -> Any:
        """A copy with ``changes`` applied and validated (a new ``task`` replaces ``data``, and vice versa)."""
        return type(self).build(_merge(self.model_dump(), changes))

    # ---- output ---------------------------------------------------------------------------
    def to_yaml(self) -> str:
        """The settings as a YAML run file (every key, defaults included)."""
        import yaml

        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)

    @property
    def source_name(self) -> str:
        """The task name, or the data path's stem."""
        return self.task or Path(str(self.data)).stem


class PromptModelSettings(BaseModel):
    """The prompt model of a compile, a comparison's cells or a study's trials (the model that writes instructions).

    Attributes:
        prompt_lm: The model that writes instructions (the optimizers' prompt model), any ``dspy.LM`` model
            string or ``local`` (``None``: the task model ``lm`` writes them). Metered, checked and priced
            as the task model is, and reported apart (the ``prompt`` role).
        prompt_api_base: The prompt model's own OpenAI-compatible base URL (``None``: ``api_base`` when the
            prompt model is served there too, else the provider's default). Its key is read from ``api_key_env``.
        prompt_price: What the prompt model charges (``None``: DSPy's bundled price list).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    prompt_lm: str | None = None
    prompt_api_base: str | None = None
    prompt_price: PriceSettings | None = None

    @model_validator(mode="after")
    def _prompt_model_keys(self) -> PromptModelSettings:
        if self.prompt_lm is None and (self.prompt_api_base or self.prompt_price):
            raise ValueError("prompt_api_base and prompt_price need a prompt_lm (the prompt model they are for)")
        return self


class RunSettings(ExperimentSettings, PromptModelSettings):
    """The settings of one compile (``dspy-ext compile``; :func:`dspy_ext.experiment.run`).

    The prompt model's keys are those of :class:`PromptModelSettings`.

    Attributes:
        optimizer: A registry name (``demo-search``, the default; ``ape``, ``opro``, ``mipro``, ...).
        optimizer_config: The optimizer's own settings (validated against its config model).
        budget: LM calls: a hard cap for dspy-ext's optimizers, the closest setting for DSPy's.
        max_cost: USD: no LM call of the compile starts once this much is spent (task and prompt model
            together; needs known prices: the embedded model's is 0, a served model's is ``price``).
            At the cap the best program so far is returned, as at the call budget.
        allow_unmetered: Compile on an LM that dspy-ext cannot meter (a custom ``BaseLM`` of your own),
            whose calls the budget cannot cap and the reports cannot count. Without it, such an LM is an error.
        feedback: A review store (``dspy-ext review``) to compile from: its Good and corrected outputs join
            the training rows, its criteria's aligned checks become guarded criteria of the metric, its
            critiques go to the optimizer, and its Good outputs are pinned cases (``None``: no review).
        guards: Regression guards ``{criterion: points}``: the most points a criterion of the metric may
            drop against the student (``score`` is the objective). dspy-ext's optimizers never select a
            candidate that breaks one; DSPy's are wrapped in an acceptance gate. CLI: ``--guard format=0``.
        repeats: Rollouts per row of every evaluation (search and test); selection uses their mean, and
            the report gives per-row pass rates and the rows that pass only sometimes.
        temperature: Task-LM temperature of those rollouts (``None``: 0.7 when ``repeats > 1``, else the LM's).
        tracking: Track the compile in MLflow (see :class:`TrackingSettings`; ``None``: not tracked).
            Tracking never changes what is computed, and a run folder resumes with or without it.
    """

    optimizer: str = "demo-search"
    optimizer_config: dict[str, Any] = Field(default_factory=dict)
    budget: int = Field(default=DEFAULT_BUDGET, ge=1)
    max_cost: float | None = Field(default=None, ge=0)
    allow_unmetered: bool = False
    feedback: str | None = None
    guards: dict[str, float] = Field(default_factory=dict)
    repeats: int = Field(default=1, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    tracking: TrackingSettings | None = None

    _parse_guards = field_validator("guards", mode="before")(lambda cls, v: _guards(v))

    @property
    def eval_temperature(self) -> float | None:
        """The temperature of the rollouts: ``temperature``, else 0.7 with several repeats (else ``None``)."""
        return self.temperature if self.temperature is not None else (0.7 if self.repeats > 1 else None)

    @model_validator(mode="after")
    def _known_optimizer(self) -> RunSettings:
        from dspy_ext.registry import resolve_config

        resolve_config(self.optimizer, self.optimizer_config)  # ValueError naming the bad key
        return self

    @property
    def default_out(self) -> Path:
        return Path("runs") / f"{self.source_name}-{self.optimizer}-s{self.seed}"


#: The keys of :class:`CompareSettings` that say where its cells run, not what they compute.
DISTRIBUTION_KEYS = ("storage", "study", "workers", "heartbeat")


class CompareSettings(ExperimentSettings, PromptModelSettings):
    """The settings of ``dspy-ext compare``: several optimizers x several seeds.

    Every cell compiles with the prompt model of :class:`PromptModelSettings` (default: the task model).

    Attributes:
        optimizers: Registry names, in report order.
        optimizer_configs: Per-optimizer settings, ``{"ape": {"top_k": 2}}``.
        budget: LM calls per compile.
        max_cost: USD per compile (see :class:`RunSettings`); ``None``: no dollar cap.
        seeds: Seeds per optimizer: ``seed``, ``seed + 1``, ...
        guards: Regression guards of every cell (see :class:`RunSettings`): guarded optimizers side by side.
        repeats: Rollouts per row of every evaluation (see :class:`RunSettings`).
        temperature: Task-LM temperature of those rollouts (see :class:`RunSettings`).
        feedback: A review store every cell compiles from (see :class:`RunSettings`).
        tracking: Track the comparison in MLflow: one parent run, each cell's compile a child run of it
            (see :class:`TrackingSettings`; ``None``: not tracked).
        storage: An Optuna storage URL (or ``.db`` path) whose study holds the cells, so that worker
            processes on this and other machines share them (``None``: the cells run here, one after another).
        study: The study name in ``storage`` (``None``: ``compare-TASK``); the same name joins or resumes.
        workers: Worker processes on this machine (more than 1 needs ``storage``).
        heartbeat: Seconds between a running cell's heartbeats; a cell silent for twice this is taken again.
    """

    optimizers: list[str]
    optimizer_configs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    budget: int = Field(default=DEFAULT_BUDGET, ge=1)
    max_cost: float | None = Field(default=None, ge=0)
    seeds: int = Field(default=3, ge=1)
    guards: dict[str, float] = Field(default_factory=dict)
    repeats: int = Field(default=1, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)

    _parse_guards = field_validator("guards", mode="before")(lambda cls, v: _guards(v))
    feedback: str | None = None
    tracking: TrackingSettings | None = None
    storage: str | None = None
    study: str | None = None
    workers: int = Field(default=1, ge=1)
    heartbeat: int = Field(default=10, ge=1)

    @field_validator("optimizers", mode="before")
    @classmethod
    def _split_optimizers(cls, value: Any) -> Any:
        names = _keys(value)
        if isinstance(names, list):
            names = list(dict.fromkeys(names))  # duplicates dropped, order kept
        return names

    @model_validator(mode="after")
    def _known_optimizers(self) -> CompareSettings:
        from dspy_ext.registry import get_spec, resolve_config

        if not self.optimizers:
            raise ValueError("optimizers: give at least one optimizer name")
        for name in self.optimizers:
            get_spec(name)
        unknown = [name for name in self.optimizer_configs if name not in self.optimizers]
        if unknown:
            raise ValueError(f"optimizer_configs names optimizers not in optimizers: {', '.join(unknown)}")
        for name, config in self.optimizer_configs.items():
            resolve_config(name, config)
        if self.workers > 1 and not self.storage:
            raise ValueError("workers: more than one worker process needs a storage (a .db path or a database URL)")
        return self

    def cell(self, optimizer: str, seed: int) -> RunSettings:
        """The :class:`RunSettings` of one (optimizer, seed) cell."""
        # A cell is tracked as a child of the comparison's run, not by a tracking key of its own.
        shared = self.model_dump(
            exclude={"optimizers", "optimizer_configs", "seeds", "out", "tracking", *DISTRIBUTION_KEYS}
        )
        return RunSettings.build(
            {
                **shared,
                "optimizer": optimizer,
                "seed": seed,
                "optimizer_config": self.optimizer_configs.get(optimizer, {}),
            }
        )

    @property
    def default_out(self) -> Path:
        return Path("runs") / f"compare-{self.source_name}"


class TuneSettings(ExperimentSettings, PromptModelSettings):
    """The settings of ``dspy-ext tune``: an Optuna study over optimizers and their hyperparameters.

    Every trial compiles with the prompt model of :class:`PromptModelSettings` (default: the task model).

    Attributes:
        space: A search space file (YAML/JSON) or ``None`` for the default space.
        optimizers: Optimizers with their default ranges (instead of ``space``).
        trials: Target number of finished trials in the study.
        budget: LM calls per trial (``None``: the space's).
        max_cost: USD for the whole study (every trial's compile and scoring, task and prompt model);
            no trial call starts once it is spent (``None``: no dollar cap).
        storage: Optuna storage URL or ``.db`` path (``None``: ``runs/tune/optuna.db``).
        study: The study name (``None``: ``tune-TASK``); the same name resumes.
        workers: Worker processes on the study.
        objective: ``auto``, ``single``, ``pareto`` or ``constraints``.
        criteria: Metric names scored as separate criteria (the first is primary).
        heartbeat: Seconds between trial heartbeats.
        timeout: Stop starting trials after this many seconds.
        top: Rows in the table of top trials.
        test: Score the best program on the test split.
        guards: Regression guards given to every trial's optimizer (see :class:`RunSettings`).
        feedback: A review store every trial compiles from (see :class:`RunSettings`).
        tracking: Track the study in MLflow: one parent run, each trial a child run of it
            (see :class:`TrackingSettings`; ``None``: not tracked).
    """

    space: str | None = None
    optimizers: list[str] | None = None
    trials: int = Field(default=12, ge=1)
    budget: int | None = Field(default=None, ge=1)
    max_cost: float | None = Field(default=None, ge=0)
    storage: str | None = None
    study: str | None = None
    workers: int = Field(default=1, ge=1)
    objective: Literal["auto", "single", "pareto", "constraints"] | None = None
    criteria: list[str] | None = None
    heartbeat: int = Field(default=10, ge=1)
    timeout: float | None = Field(default=None, gt=0)
    top: int = Field(default=5, ge=1)
    test: bool = True
    guards: dict[str, float] = Field(default_factory=dict)

    _parse_guards = field_validator("guards", mode="before")(lambda cls, v: _guards(v))
    feedback: str | None = None
    tracking: TrackingSettings | None = None

    _split_lists = field_validator("optimizers", "criteria", mode="before")(lambda cls, v: _keys(v))

    @model_validator(mode="after")
    def _space_or_optimizers(self) -> TuneSettings:
        if self.space and self.optimizers:
            raise ValueError("give either space or optimizers, not both")
        if self.criteria is not None and (not self.criteria or len(set(self.criteria)) != len(self.criteria)):
            raise ValueError(f"criteria: expected distinct metric names, got {self.criteria}")
        return self


def read_run_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML, TOML or JSON run file.

    Raises:
        SettingsError: Missing file, unknown suffix, a syntax error, or not a mapping at the top.
    """
    path = Path(path)
    kind = RUN_FILE_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise SettingsError(f"{path}: a run file ends in {', '.join(RUN_FILE_FORMATS)}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError(f"{path}: run file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: cannot read the run file: {exc}") from None
    try:
        if kind == "JSON":
            raw = json.loads(text)
        elif kind == "TOML":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                raise SettingsError(f"{path}: TOML run files need Python 3.11 or later; use YAML") from None
            raw = tomllib.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    except SettingsError:
        raise
    except Exception as exc:  # any parser's syntax error: one line naming the file
        detail = " ".join(str(exc).split())
        raise SettingsError(f"{path}: not valid {kind}: {detail}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SettingsError(f"{path}: expected a mapping of settings at the top level, got {type(raw).__name__}")
    return raw


def _merge(values: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    merged = dict(values)
    if overrides:
        if "task" in overrides or "data" in overrides:
            # Choosing a task replaces the data source given before (and vice versa).
            merged.pop("task", None)
            merged.pop("data", None)
        merged.update(overrides)
    return merged


def _describe(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        # A key holding line breaks or control characters is shown escaped: one-line messages.
        where = ".".join(str(p) if str(p).isprintable() else repr(p) for p in err["loc"])
        message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        message = message.removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)
