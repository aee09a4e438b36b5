"""The parts an experiment is made of: task, LM, adapter, metric and program, built from settings.

Programs and metrics are given by a built-in name or by an import path
``package.module:Name``, so a user compiles *their own* DSPy program:

* a program path may name a ``dspy.Module`` subclass (called with no
  arguments), an instance (deep-copied) or a factory function returning one;
* a metric path names a callable taking ``(example, prediction, trace=None)``.

Example:
    >>> resolve_metric("exact_match").__name__
    'exact_match'
    >>> resolve_metric("no_such_module_xyz:metric")
    Traceback (most recent call last):
    ...
    dspy_ext.experiment.components.ComponentError: metric 'no_such_module_xyz:metric': cannot import module 'no_such_module_xyz': No module named 'no_such_module_xyz'
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy

from dspy_ext.adapters import default_adapter, make_adapter
from dspy_ext.data import TaskData, load_task
from dspy_ext.experiment.settings import ExperimentSettings, SettingsError
from dspy_ext.lm.answer_rule import only_answer_rule_lms
from dspy_ext.lm.retry import CallPolicy, call_policy
from dspy_ext.search.demo_start import baseline_draw
from metrics import METRICS
from programs import PROGRAMS, build_program

logger = logging.getLogger(__name__)

#: The most distinct outputs the built-in ``classify`` program accepts as its label set.
MAX_CLASSIFY_LABELS = 20


class ComponentError(ValueError):
    """A program, metric or program state that cannot be used; one line naming it and why."""


@dataclass
class Components:
    """The task, LM, adapter and metric of an experiment.

    Attributes:
        task: The loaded task (its test split is used whole).
        lm: The task LM.
        adapter: The adapter (``None``: DSPy's default, the chat adapter).
        metric: ``metric(example, prediction, trace=None)``.
    """

    task: TaskData
    lm: dspy.BaseLM
    adapter: dspy.Adapter | None
    metric: Callable[..., Any]
    call_policy: CallPolicy = field(default_factory=CallPolicy)

    @property
    def adapter_name(self) -> str:
        return type(self.adapter).__name__ if self.adapter is not None else "ChatAdapter"

    @contextlib.contextmanager
    def context(self, *, lm: dspy.BaseLM | None = None) -> Iterator[None]:
        """``dspy.context`` with this experiment's LM (or ``lm``), adapter and LM-call retries and timeout."""
        with dspy.context(lm=lm or self.lm, adapter=self.adapter), call_policy(self.call_policy):
            yield


def build_components(settings: ExperimentSettings, *, lm: dspy.BaseLM | None = None) -> Components:
    """Load the task and build the LM, adapter and metric of ``settings``.

    Args:
        settings: The experiment's settings.
        lm: An LM to use instead of ``make_lm(settings.lm)`` (research code and tests pass their own).

    Raises:
        ValueError: An unknown task, program, metric or adapter (subclasses name which).
    """
    metric = resolve_metric(settings.metric)
    if ":" in settings.program:
        _user_program(settings.program)  # a bad import path fails here, before any data or model loads
    task = load_task(
        name=settings.task,
        data=settings.data,
        seed=settings.seed,
        input_keys=settings.input_keys,
        output_keys=settings.output_keys,
    )
    if lm is None:
        lm = _make_lm(settings)
    adapter = default_adapter(lm) if settings.adapter == "auto" else make_adapter(settings.adapter)
    policy = CallPolicy(max_retries=settings.lm_retries, timeout=settings.lm_timeout)
    return Components(task=task, lm=lm, adapter=adapter, metric=metric, call_policy=policy)


def _make_lm(settings: ExperimentSettings) -> dspy.BaseLM:
    """The settings' LM on a metered engine; a served model's endpoint is checked before anything is spent.

    Raises:
        SettingsError: ``api_key_env`` names a variable that is not set.
        EndpointError: The endpoint cannot serve the model (one line naming it and why).
    """
    return _model(settings, settings.lm, settings.api_base, settings.price, what="")


def make_prompt_lm(settings: Any) -> dspy.BaseLM | None:
    """The run's prompt model (``settings.prompt_lm``; ``None``: none of its own, the task model writes the
    instructions), metered, endpoint-checked and priced as the task model is. It is served at
    ``prompt_api_base``, else at ``api_base``; its key is read from ``api_key_env``.

    Raises:
        SettingsError: ``api_key_env`` names a variable that is not set, or served-model keys for ``local``.
        EndpointError: The prompt model's endpoint cannot serve it.
    """
    model = getattr(settings, "prompt_lm", None)
    if model is None:
        return None
    from dspy_ext.lm import is_local_name

    base = settings.prompt_api_base or (None if is_local_name(model) else settings.api_base)
    return _model(settings, model, base, settings.prompt_price, what="prompt_")


def _model(settings: ExperimentSettings, model: str, api_base: str | None, price: Any, *, what: str) -> dspy.BaseLM:
    """``model`` at ``api_base`` (key from ``settings.api_key_env``, ``price``), checked; ``what`` prefixes the keys
    an error names (``prompt_`` for the prompt model)."""
    from dspy_ext.lm import Price, check_endpoint, is_local_name, make_lm
    from dspy_ext.lm.served import CHECK_TIMEOUT

    client: dict[str, Any] = {}
    if is_local_name(model) and (api_base or price or (settings.api_key_env and not what)):
        raise SettingsError(
            f"invalid settings: {what}api_base, api_key_env and {what}price are for served models, not {what}lm=local"
        )
    if api_base:
        client["api_base"] = api_base
    if settings.api_key_env and not is_local_name(model):
        key = os.environ.get(settings.api_key_env)
        if not key:
            raise SettingsError(
                f"invalid settings: api_key_env: the environment variable {settings.api_key_env} is not set"
            )
        client["api_key"] = key
    elif api_base:
        client["api_key"] = os.environ.get("OPENAI_API_KEY") or "none"  # a local server needs no key
    if price is not None:
        client["price"] = Price(price.input_per_1m, price.output_per_1m)
    lm = make_lm(model, cache=settings.cache, **client)
    # A server busy with a killed run's last completions answers its model list late: wait at least as
    # long as one call may take.
    check_endpoint(lm, timeout=max(CHECK_TIMEOUT, settings.lm_timeout or 0.0))
    return lm


# ---- import paths -------------------------------------------------------------------------------


def import_object(path: str, what: str) -> Any:
    """The object named by ``package.module:attribute`` (dots after the colon walk attributes).

    Raises:
        ComponentError: A malformed path, a module that does not import, or a missing attribute.
    """
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ComponentError(f"{what} {path!r}: expected an import path 'package.module:Name'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import error, or whatever the module raises while importing
        raise ComponentError(f"{what} {path!r}: cannot import module {module_name!r}: {exc}") from None
    obj: Any = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ComponentError(f"{what} {path!r}: module {module_name!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    return obj


def resolve_metric(name: str) -> Callable[..., Any]:
    """A metric by built-in name or import path, checked to take ``(example, prediction, trace=None)``.

    Raises:
        ComponentError: Unknown name, a path that does not import, or not a metric-shaped callable.
    """
    if ":" not in name:
        if name not in METRICS:
            raise ComponentError(
                f"unknown metric {name!r}; built-in metrics: {', '.join(METRICS)}, "
                "or give an import path 'package.module:function'"
            )
        return METRICS[name]
    metric = import_object(name, "metric")
    if not callable(metric):
        raise ComponentError(f"metric {name!r}: {type(metric).__name__} object is not callable")
    try:
        signature = inspect.signature(metric)
    except (TypeError, ValueError):
        return metric  # a builtin without an introspectable signature: trust it
    try:
        signature.bind(None, None, None)
    except TypeError:
        try:
            signature.bind(None, None)
        except TypeError:
            raise ComponentError(
                f"metric {name!r}: a metric takes (example, prediction, trace=None); "
                f"{getattr(metric, '__name__', name)}{signature} does not"
            ) from None
    return metric


def build_student(settings: ExperimentSettings, task: TaskData) -> dspy.Module:
    """The uncompiled program of ``settings`` for ``task``.

    A built-in program gets the task's fields and its human baseline instruction (``classify`` also
    gets the task's label set); a program from an import path is used as its author built it.

    Raises:
        ComponentError: An unknown program, a path that does not import or is not a ``dspy.Module``.
    """
    name = settings.program
    if ":" in name:
        return _user_program(name)
    if name.strip().lower() not in PROGRAMS:
        raise ComponentError(
            f"unknown program {name!r}; built-in programs: {', '.join(PROGRAMS)}, "
            "or give an import path 'package.module:Class'"
        )
    labels = None
    if name == "classify":
        labels = sorted({str(ex[task.output_keys[0]]) for ex in task.train})
        if len(labels) > MAX_CLASSIFY_LABELS:
            raise ComponentError(
                f"program classify: task has {len(labels)} distinct outputs (at most {MAX_CLASSIFY_LABELS})"
            )
    return build_program(
        name,
        input_keys=task.input_keys,
        output_keys=task.output_keys,
        instructions=task.baseline_instruction,
        labels=labels,
    )


def _user_program(path: str) -> dspy.Module:
    obj = import_object(path, "program")
    if isinstance(obj, dspy.Module):
        return copy.deepcopy(obj)  # the module-level instance stays untouched
    if not callable(obj):
        raise ComponentError(
            f"program {path!r}: expected a dspy.Module class, instance or factory, got {type(obj).__name__}"
        )
    try:
        program = obj()
    except Exception as exc:
        raise ComponentError(
            f"program {path!r}: calling it with no arguments failed: {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(program, dspy.Module):
        raise ComponentError(f"program {path!r}: expected a dspy.Module, got {type(program).__name__}")
    if not program.named_predictors():
        raise ComponentError(f"program {path!r}: the program has no dspy.Predict modules to optimize")
    return program


def labeled_demos(train: list[dspy.Example], k: int, seed: int) -> list[dspy.Example]:
    """``k`` training examples drawn with a private seeded RNG.

    Raises:
        ComponentError: ``k`` is larger than the training set.
    """
    if k > len(train):
        raise ComponentError(f"{k} demos asked for, but the training set has only {len(train)} examples")
    return baseline_draw(train, seed, k)


# ---- program state ------------------------------------------------------------------------------


def read_json_file(path: Path, what: str) -> Any:
    """A JSON file's content, or one clear error (never a pickle: those are refused, not loaded).

    Raises:
        ComponentError: Not UTF-8 text, or not valid JSON.
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ComponentError(f"{path}: {what} is not UTF-8 text (a pickle? pickles are never loaded)") from None
    except json.JSONDecodeError as exc:
        raise ComponentError(
            f"{path}: {what} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None


def load_program_state(program: dspy.Module, path: Path, program_name: str) -> None:
    """Load a ``program.save("x.json")`` state into ``program``, after checking it fits.

    Args:
        program: The freshly built program.
        path: The state file.
        program_name: The program's name or import path, for messages.

    Raises:
        ComponentError: Not JSON, or predictors or field counts that do not match the program.
    """
    state = read_json_file(path, "the program state")
    if not isinstance(state, dict):
        raise ComponentError(f"{path}: expected a JSON object saved with program.save('x.json')")
    saved = sorted(k for k in state if k != "metadata")
    expected = [name for name, _ in program.named_parameters()]
    if saved != sorted(expected):
        raise ComponentError(
            f"{path} holds predictors {saved}, but program {program_name} has {expected}; "
            "pass the program and task the state was compiled with"
        )
    for name, predictor in program.named_parameters():
        entry = state[name]
        fields = entry.get("signature", {}).get("fields") if isinstance(entry, dict) else None
        if not isinstance(fields, list) or len(fields) != len(predictor.signature.fields):
            count = len(fields) if isinstance(fields, list) else "no"
            raise ComponentError(
                f"{path}: predictor {name!r} has {count} saved fields, the program's has "
                f"{len(predictor.signature.fields)} ({list(predictor.signature.fields)})"
            )
    versions = (state.get("metadata") or {}).get("dependency_versions") or {}
    if versions.get("dspy") and versions["dspy"] != dspy.__version__:
        logger.warning("%s was saved with dspy %s; this is dspy %s", path, versions["dspy"], dspy.__version__)
    try:
        # A predictor's answer rule is saved as its own LM on dspy-ext's AnswerRuleEngine, which DSPy
        # imports only when allowed; nothing else unsafe is allowed with it.
        program.load_state(state, allow_unsafe_lm_state=only_answer_rule_lms(state))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ComponentError(f"{path}: could not load the program state: {type(exc).__name__}: {exc}") from None
