"""``dspy-ext compile``: optimize a program's prompts for a task and write the run folder.

The run folder (``--out``, default ``runs/TASK-OPTIMIZER-sSEED``) holds ``settings.yaml``,
``program.json``, ``trials.jsonl``, ``run.json``, ``report.md`` and the call journal ``calls.jsonl``; see
:mod:`dspy_ext.experiment.run`. Running the same command again resumes an interrupted compile.
"""

from __future__ import annotations

import argparse
import sys

from dspy_ext.cli.common import (
    add_config_arg,
    add_model_args,
    add_output_args,
    add_split_args,
    add_task_args,
    emit_json,
    load_settings,
)
from dspy_ext.experiment import RunSettings, run
from dspy_ext.registry import REGISTRY


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("compile", help="optimize a program's prompts for a task",
                                   description="Optimize a program's instructions and demos for a task.")
    add_config_arg(parser)
    add_task_args(parser)
    add_model_args(parser, RunSettings)
    parser.add_argument("--optimizer", default=argparse.SUPPRESS, choices=list(REGISTRY),
                        help="optimizer (default: ape)")
    parser.add_argument("--optimizer-config", dest="optimizer_config", default=argparse.SUPPRESS,
                        metavar="JSON",
                        help="the optimizer's own settings as JSON, e.g. '{\"top_k\": 2}' (validated; unknown keys "
                             "are errors)")
    parser.add_argument("--budget", type=int, default=argparse.SUPPRESS,
                        help="max LM calls (hard cap for dspy-ext's optimizers; default: 400)")
    add_split_args(parser, RunSettings, "")
    parser.add_argument("--out", default=argparse.SUPPRESS, help="run folder (default runs/TASK-OPTIMIZER-sSEED)")
    parser.add_argument("--restart", action="store_true",
                        help="start over in a run folder that holds a run with other settings (default: re-running "
                             "the same settings resumes an interrupted compile; other settings are an error)")
    add_output_args(parser)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args, RunSettings, json_flags={"optimizer_config": "--optimizer-config"})
    show = not args.json or sys.stderr.isatty()
    result = run(settings, lm=args.injected_lm, restart=args.restart, progress=show)
    summary = result.summary
    if args.json:
        emit_json(summary, args.console)
    else:
        print(f"{summary['task']} · {settings.optimizer} · seed {settings.seed}: test {summary['test_score']:.1f}% "
              f"(baseline {summary['baseline_test_score']:.1f}%), val {summary['val_score']:.1f}%, "
              f"{summary['lm_calls']} LM calls, {summary['seconds']:.0f} s -> {result.out}", file=args.console)
    return 0
