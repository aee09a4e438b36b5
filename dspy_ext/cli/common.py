"""What every ``dspy-ext`` command shares: task, LM, adapter and program options."""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from dataclasses import dataclass
from typing import Any

import dspy

from dspy_ext.adapters import ADAPTERS, default_adapter, make_adapter
from dspy_ext.data import TaskData, load_task
from metrics import METRICS, get_metric
from programs import PROGRAMS, build_program

MAX_CLASSIFY_LABELS = 20


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def add_task_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    source = group.add_mutually_exclusive_group(required=True)
    source.add_argument("--task", help="built-in task name (e.g. sentiment)")
    source.add_argument("--data", help="task folder (train.jsonl, test.jsonl, instructions.json) or one data file")
    group.add_argument("--input-keys", default=None, help="comma-separated input columns (default: input)")
    group.add_argument("--output-keys", default=None, help="comma-separated output columns (default: output)")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and program")
    group.add_argument("--lm", default="local", help="'local' (embedded SmolLM2-135M) or any dspy.LM model string")
    group.add_argument("--adapter", default="auto", choices=["auto", *ADAPTERS],
                       help="prompt format: auto = plain for local models, DSPy's chat adapter otherwise")
    group.add_argument("--program", default="transform", choices=list(PROGRAMS), help="program to run")
    group.add_argument("--metric", default="exact_match", choices=list(METRICS), help="metric")
    group.add_argument("--threads", type=int, default=4, help="evaluation threads")
    group.add_argument("--seed", type=int, default=0, help="seed for every random choice")
    group.add_argument("--no-cache", action="store_true", help="bypass DSPy's response cache")


def add_output_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if verbose < 2:
        # DSPy logs every failed parse at WARNING; our evaluator summarises them instead.
        logging.getLogger("dspy").setLevel(logging.ERROR)
    logging.getLogger("dspy_ext").setLevel(level)


def _keys(value: str | None) -> list[str] | None:
    return [k.strip() for k in value.split(",") if k.strip()] if value else None


def load_task_from_args(args: argparse.Namespace) -> TaskData:
    return load_task(
        name=args.task, data=args.data, seed=args.seed,
        input_keys=_keys(args.input_keys), output_keys=_keys(args.output_keys),
    )


@dataclass
class RunSetup:
    """The configured LM, adapter, metric and task of one command."""

    task: TaskData
    lm: dspy.LM
    adapter: dspy.Adapter | None
    metric: Any

    @property
    def adapter_name(self) -> str:
        return type(self.adapter).__name__ if self.adapter is not None else "ChatAdapter"

    def context(self, **extra: Any):
        """``dspy.context`` with this run's LM and adapter."""
        return dspy.context(lm=self.lm, adapter=self.adapter, **extra)


def setup_run(args: argparse.Namespace) -> RunSetup:
    from dspy_ext.lm import make_lm

    task = load_task_from_args(args)
    lm = make_lm(args.lm, cache=not args.no_cache)
    adapter = default_adapter(lm) if args.adapter == "auto" else make_adapter(args.adapter)
    return RunSetup(task=task, lm=lm, adapter=adapter, metric=get_metric(args.metric))


def build_student(args: argparse.Namespace, task: TaskData) -> dspy.Module:
    """The uncompiled program for ``task``, with its human baseline instruction."""
    labels = None
    if args.program == "classify":
        outputs = task.output_keys[0]
        labels = sorted({str(ex[outputs]) for ex in task.train})
        if len(labels) > MAX_CLASSIFY_LABELS:
            raise CLIError(f"--program classify: task has {len(labels)} distinct outputs (max {MAX_CLASSIFY_LABELS})")
    return build_program(
        args.program, input_keys=task.input_keys, output_keys=task.output_keys,
        instructions=task.baseline_instruction, labels=labels,
    )


def labeled_demos(train: list[dspy.Example], k: int, seed: int) -> list[dspy.Example]:
    """``k`` training examples drawn with a private seeded RNG."""
    if k <= 0:
        return []
    if k > len(train):
        raise CLIError(f"--demos {k}: the training set has only {len(train)} examples")
    return random.Random(seed).sample(train, k)


def emit_json(obj: dict[str, Any]) -> None:
    json.dump(obj, sys.stdout, ensure_ascii=False, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()


def format_errors(errors: dict[str, int]) -> str:
    bad = {k: v for k, v in errors.items() if v}
    return ", ".join(f"{k}={v}" for k, v in bad.items()) if bad else "none"
