"""What every ``dspy-ext`` command shares: flags that become settings, JSON output, one-line errors.

Settings flags have no argparse defaults: a flag that is not given is absent
from the namespace, so a run file's value (``--config``) stands unless a flag
overrides it, and every default lives once, in :mod:`dspy_ext.experiment.settings`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, TextIO

from dspy_ext.experiment import ExperimentSettings, SettingsError
from dspy_ext.experiment.tracking import GroupTracker

#: Flag destinations that are not settings keys, and the settings key each one sets.
RENAMED_FLAGS = {"no_cache": ("cache", False), "no_test": ("test", False)}


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _default(settings_cls: type[ExperimentSettings], key: str) -> str:
    field = settings_cls.model_fields[key]
    value = field.get_default(call_default_factory=True)
    return f" (default: {value})" if value not in (None, [], {}) else ""


def add_experiment_args(
    parser: argparse.ArgumentParser, settings_cls: type[ExperimentSettings] = ExperimentSettings
) -> None:
    """The flags every command that builds an experiment takes: ``--config``, the data and the model/program."""
    add_config_arg(parser)
    add_task_args(parser)
    add_model_args(parser, settings_cls)


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="RUN_FILE",
        default=None,
        help="run file (YAML, TOML or JSON) with the same keys as the flags; flags given on the "
        "command line override it. A run folder's settings.yaml reproduces that run.",
    )


def add_task_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data (one of --task/--data, here or in the run file)")
    source = group.add_mutually_exclusive_group()
    source.add_argument("--task", default=argparse.SUPPRESS, help="built-in task name (e.g. sentiment)")
    source.add_argument(
        "--data",
        default=argparse.SUPPRESS,
        help="task folder (train.jsonl, test.jsonl, instructions.json) or one data file",
    )
    group.add_argument(
        "--input-keys",
        dest="input_keys",
        default=argparse.SUPPRESS,
        help="comma-separated input columns (default: input)",
    )
    group.add_argument(
        "--output-keys",
        dest="output_keys",
        default=argparse.SUPPRESS,
        help="comma-separated output columns (default: output)",
    )


def add_model_args(
    parser: argparse.ArgumentParser,
    settings_cls: type[ExperimentSettings] = ExperimentSettings,
) -> None:
    d = lambda key: _default(settings_cls, key)
    group = parser.add_argument_group("model and program")
    group.add_argument(
        "--lm", default=argparse.SUPPRESS, help="'local' (embedded SmolLM2-135M) or any dspy.LM model string" + d("lm")
    )
    group.add_argument(
        "--api-base",
        dest="api_base",
        default=argparse.SUPPRESS,
        help="a served model's OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (vLLM, llama.cpp, Ollama)",
    )
    group.add_argument(
        "--api-key-env",
        dest="api_key_env",
        default=argparse.SUPPRESS,
        help="name of the environment variable that holds the API key (the key is never written to a run file)",
    )
    group.add_argument(
        "--lm-timeout",
        dest="lm_timeout",
        type=float,
        default=argparse.SUPPRESS,
        help="seconds one LM call may take before it is abandoned and retried (default: no limit)",
    )
    group.add_argument(
        "--lm-retries",
        dest="lm_retries",
        type=int,
        default=argparse.SUPPRESS,
        help="retries of a transient LM error, with backoff; each try counts" + d("lm_retries"),
    )
    group.add_argument(
        "--adapter",
        default=argparse.SUPPRESS,
        choices=["auto", "plain", "chat", "json"],
        help="prompt format: auto = plain for local models, DSPy's chat adapter otherwise" + d("adapter"),
    )
    group.add_argument(
        "--program",
        default=argparse.SUPPRESS,
        help="built-in program (transform, classify, two_step, cot) or an import path "
        "package.module:Class of your own dspy.Module" + d("program"),
    )
    group.add_argument(
        "--metric",
        default=argparse.SUPPRESS,
        help="built-in metric (exact_match, contains, token_f1, numeric_match) or an import path "
        "package.module:function" + d("metric"),
    )
    group.add_argument("--threads", type=int, default=argparse.SUPPRESS, help="evaluation threads" + d("threads"))
    group.add_argument("--seed", type=int, default=argparse.SUPPRESS, help="seed for every random choice" + d("seed"))
    group.add_argument(
        "--no-cache",
        dest="no_cache",
        action="store_true",
        default=argparse.SUPPRESS,
        help="bypass DSPy's response cache",
    )


def add_prompt_model_args(parser: argparse.ArgumentParser) -> None:
    """``--prompt-lm MODEL`` and ``--prompt-api-base URL``: a prompt model of its own, that writes the instructions."""
    group = parser.add_argument_group("prompt model (default: the task model writes the instructions)")
    group.add_argument(
        "--prompt-lm",
        dest="prompt_lm",
        default=argparse.SUPPRESS,
        metavar="MODEL",
        help="the model that writes instructions ('local' or any dspy.LM model string); metered, checked and "
        "priced as --lm is (run-file key prompt_price: its price), its calls reported as the prompt model's",
    )
    group.add_argument(
        "--prompt-api-base",
        dest="prompt_api_base",
        default=argparse.SUPPRESS,
        metavar="URL",
        help="the prompt model's own OpenAI-compatible base URL (default: --api-base); its key is read from "
        "--api-key-env",
    )


def add_split_args(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, settings_cls: type[ExperimentSettings], what: str
) -> None:
    parser.add_argument(
        "--train",
        type=int,
        default=argparse.SUPPRESS,
        help=f"training rows drawn {what} from the training file" + _default(settings_cls, "train"),
    )
    parser.add_argument(
        "--val",
        type=int,
        default=argparse.SUPPRESS,
        help=f"validation rows drawn {what} from the training file" + _default(settings_cls, "val"),
    )


def add_optimizer_config_arg(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--optimizer-config JSON``: the optimizer's (or each optimizer's) own settings."""
    parser.add_argument(
        "--optimizer-config", dest="optimizer_config", default=argparse.SUPPRESS, metavar="JSON", help=help_text
    )


def add_budget_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup, help_text: str) -> None:
    """``--budget N``: LM calls of each compile (or trial)."""
    parser.add_argument("--budget", type=int, default=argparse.SUPPRESS, help=help_text)


def add_max_cost_arg(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, help_text: str, *, metavar: str | None = None
) -> None:
    """``--max-cost USD``: a hard cap on what the compile (or comparison cell, or study) spends."""
    parser.add_argument(
        "--max-cost", dest="max_cost", type=float, default=argparse.SUPPRESS, metavar=metavar, help=help_text
    )


def add_training_args(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    settings_cls: type[ExperimentSettings],
    *,
    drawn: str,
    learner: str = "the compile",
    repeats: bool = True,
) -> None:
    """What a compile trains on and must keep: ``--train``/``--val``, ``--feedback`` and the guards.

    Args:
        parser: The command's parser (or argument group).
        settings_cls: Its settings model (the defaults in the help).
        drawn: How the rows are drawn, in the help (``"per seed"``; ``""``: once).
        learner: Who learns from ``--feedback``, in its help.
        repeats: Whether ``--repeats``/``--temperature`` come with the guards.
    """
    add_split_args(parser, settings_cls, drawn)
    add_feedback_arg(parser, learner)
    add_guard_args(parser, repeats=repeats)


def add_feedback_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup, what: str = "the compile") -> None:
    parser.add_argument(
        "--feedback",
        metavar="STORE",
        default=argparse.SUPPRESS,
        help=f"a review store (dspy-ext review) {what} learns from: Good and corrected outputs join "
        "the training rows, the criteria's aligned checks become guarded criteria, critiques "
        "go to the optimizer, Good outputs are pinned cases",
    )


def add_tracking_args(parser: argparse.ArgumentParser, what: str = "the compile as one MLflow run") -> None:
    """``--mlflow [URI]`` and ``--mlflow-experiment NAME``: track ``what`` in MLflow."""
    group = parser.add_argument_group("tracking (needs the mlflow extra: pip install 'dspy-ext[mlflow]')")
    group.add_argument(
        "--mlflow",
        nargs="?",
        const="",
        default=None,
        metavar="URI",
        help=f"track {what} in this tracking store (sqlite:///mlflow.db, "
        "http://127.0.0.1:5000, ...); without URI, the one in MLFLOW_TRACKING_URI. Run-file key: tracking.mlflow",
    )
    group.add_argument(
        "--mlflow-experiment",
        dest="mlflow_experiment",
        default=None,
        metavar="NAME",
        help="the MLflow experiment (default: the task's name). Run-file key: tracking.experiment",
    )


def apply_tracking_args(args: argparse.Namespace, settings: Any) -> Any:
    """``settings`` with ``--mlflow``/``--mlflow-experiment`` over the run file's ``tracking``.

    With tracking on, MLflow's usage telemetry is switched off for this process
    (``MLFLOW_DISABLE_TELEMETRY=true`` unless already set): it is read only from the environment,
    when ``mlflow`` is imported, and nothing may leave the machine. So is MLflow's own logging below
    warnings (``MLFLOW_LOGGING_LEVEL=WARNING``, without ``-vv``), which MLflow too reads only there.

    Raises:
        CLIError: A bare ``--mlflow`` without ``MLFLOW_TRACKING_URI``, or ``--mlflow-experiment`` without a store.
    """
    uri, experiment = args.mlflow, args.mlflow_experiment
    if uri == "":
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            raise CLIError("--mlflow without a URI reads MLFLOW_TRACKING_URI, which is not set; give --mlflow URI")
    current = settings.tracking
    if uri is not None or experiment is not None:
        if uri is None and current is None:
            raise CLIError(
                "--mlflow-experiment needs a tracking store: --mlflow URI (or tracking.mlflow in the run file)"
            )
        tracking = {
            "mlflow": uri if uri is not None else current.mlflow,
            "experiment": experiment if experiment is not None else (current.experiment if current else None),
        }
        try:
            settings = settings.with_changes(tracking=tracking)
        except SettingsError as exc:
            raise CLIError(str(exc)) from None
    if settings.tracking is not None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        if args.verbose < 2:
            os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    return settings


def print_group_tracking(tracker: GroupTracker, member: str, stream: TextIO) -> None:
    """Where a comparison or a study was recorded: its MLflow parent run (a child run per ``member``), or nothing."""
    from dspy_ext.experiment.mlflow_tracking import MlflowGroupTracker

    if isinstance(tracker, MlflowGroupTracker) and tracker.finished:
        print(f"MLflow run {tracker.run_id} in {tracker.uri}, with a child run per {member}", file=stream)


def add_output_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")


def setup_logging(verbose: int) -> None:
    """The command's logging: warnings by default, ``-v`` info, ``-vv`` debug, all on stderr."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if verbose < 2:
        # DSPy logs every failed parse at WARNING; our evaluator summarises them instead.
        logging.getLogger("dspy").setLevel(logging.ERROR)
        # Optuna logs every trial at INFO; the tune command shows its own progress.
        logging.getLogger("optuna").setLevel(logging.WARNING)
    logging.getLogger("dspy_ext").setLevel(level)


def given_flags(
    args: argparse.Namespace, settings_cls: type[ExperimentSettings], rename: dict[str, str] | None = None
) -> dict[str, Any]:
    """The settings keys the command line gave (flags not given are absent)."""
    rename = rename or {}
    values: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if dest in RENAMED_FLAGS:
            key, fixed = RENAMED_FLAGS[dest]
            values[key] = fixed
            continue
        key = rename.get(dest, dest)
        if key in settings_cls.model_fields:
            values[key] = value
    return values


def load_settings(
    args: argparse.Namespace,
    settings_cls: type[Any],
    *,
    rename: dict[str, str] | None = None,
    json_flags: dict[str, str] | None = None,
) -> Any:
    """Settings of ``settings_cls`` from ``--config`` with the given flags on top.

    Args:
        args: The parsed command line.
        settings_cls: The settings model of the command.
        rename: Flag destination -> settings key, where they differ.
        json_flags: Settings key -> flag, for flags whose value is JSON text (``--optimizer-config``).

    Raises:
        CLIError: The run file or a flag is invalid (one line naming the key).
    """
    flags = given_flags(args, settings_cls, rename)
    for key, flag in (json_flags or {}).items():
        if isinstance(flags.get(key), str):
            flags[key] = parse_json_object(flags[key], flag)
    try:
        return settings_cls.load(getattr(args, "config", None), flags)
    except SettingsError as exc:
        raise CLIError(str(exc)) from None


def parse_json_object(value: str, flag: str) -> dict[str, Any]:
    """A flag's JSON object, or a one-line error."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise CLIError(f"{flag} is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise CLIError(f"{flag} must be a JSON object")
    return parsed


def emit_json(obj: dict[str, Any], stream: TextIO) -> None:
    json.dump(obj, stream, ensure_ascii=False, default=str)
    stream.write("\n")
    stream.flush()


def format_errors(errors: dict[str, int]) -> str:
    bad = {k: v for k, v in errors.items() if v}
    return ", ".join(f"{k}={v}" for k, v in bad.items()) if bad else "none"


def add_guard_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, repeats: bool = True) -> None:
    """``--guard CRITERION=POINTS`` (repeatable), and with ``repeats`` ``--repeats K`` and ``--temperature T``."""
    group = (
        parser.add_argument_group("regression guards" + (" and repeats" if repeats else ""))
        if isinstance(parser, argparse.ArgumentParser)
        else parser
    )
    group.add_argument(
        "--guard",
        dest="guards",
        action="append",
        metavar="CRITERION=POINTS",
        default=argparse.SUPPRESS,
        help="the most points a criterion of the metric may drop against the student, e.g. "
        "--guard format=0 --guard short=2 ('score' is the objective); repeatable",
    )
    if not repeats:
        return
    group.add_argument(
        "--repeats",
        type=int,
        default=argparse.SUPPRESS,
        help="rollouts per row of every evaluation; selection uses their mean and the report names "
        "the rows that pass only sometimes (default: 1)",
    )
    group.add_argument(
        "--temperature",
        type=float,
        default=argparse.SUPPRESS,
        help="task-LM temperature of those rollouts (default: 0.7 with --repeats > 1)",
    )
