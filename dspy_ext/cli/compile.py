"""``dspy-ext compile``: optimize a program's prompts for a task and write the run folder.

The run folder (``--out``, default ``runs/TASK-OPTIMIZER-sSEED``) holds ``settings.yaml``,
``program.json``, ``trials.jsonl``, ``run.json``, ``report.md`` and the call journal ``calls.jsonl``; see
:mod:`dspy_ext.experiment.run`. Running the same command again resumes an interrupted compile.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from dspy_ext.cli.common import (
    add_budget_arg,
    add_experiment_args,
    add_max_cost_arg,
    add_optimizer_config_arg,
    add_output_args,
    add_prompt_model_args,
    add_tracking_args,
    add_training_args,
    apply_tracking_args,
    emit_json,
    load_settings,
)
from dspy_ext.experiment import ReviewFigures, RunSettings, RunSummary, run
from dspy_ext.experiment.mlflow_tracking import MlflowTracker
from dspy_ext.experiment.projection import Projection
from dspy_ext.experiment.run import dry_run
from dspy_ext.experiment.tracking import Tracker, open_tracker
from dspy_ext.lm.metering import ModelUnavailable
from dspy_ext.registry import REGISTRY


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compile",
        help="optimize a program's prompts for a task",
        description="Optimize a program's instructions and demos for a task.",
    )
    add_experiment_args(parser, RunSettings)
    add_prompt_model_args(parser)
    parser.add_argument(
        "--optimizer",
        default=argparse.SUPPRESS,
        choices=list(REGISTRY),
        help=f"optimizer (default: {RunSettings.model_fields['optimizer'].default})",
    )
    add_optimizer_config_arg(
        parser, "the optimizer's own settings as JSON, e.g. '{\"top_k\": 2}' (validated; unknown keys are errors)"
    )
    add_max_cost_arg(
        parser,
        "USD cap of the compile, task and prompt model together (prices: 0 for the embedded model, "
        "the run file's price for a served one); at the cap the best program so far is returned",
    )
    add_budget_arg(
        parser,
        f"max LM calls (hard cap for dspy-ext's optimizers; default: {RunSettings.model_fields['budget'].default})",
    )
    parser.add_argument(
        "--allow-unmetered",
        dest="allow_unmetered",
        action="store_true",
        default=argparse.SUPPRESS,
        help="compile on an LM dspy-ext cannot meter (a custom BaseLM): its calls are neither capped nor counted",
    )
    parser.add_argument(
        "--dry-run",
        dest="dry_run",
        action="store_true",
        help="print the calls, tokens and USD the compile is expected to spend, by task and prompt model, "
        "from the optimizer's plan and the measured prompt sizes; no call is made to the model",
    )
    add_training_args(parser, RunSettings, drawn="")
    parser.add_argument("--out", default=argparse.SUPPRESS, help="run folder (default runs/TASK-OPTIMIZER-sSEED)")
    parser.add_argument(
        "--restart",
        action="store_true",
        help="start over in a run folder that holds a run with other settings (default: re-running "
        "the same settings resumes an interrupted compile; other settings are an error)",
    )
    add_tracking_args(parser)
    add_output_args(parser)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args, RunSettings, json_flags={"optimizer_config": "--optimizer-config"})
    settings = apply_tracking_args(args, settings)
    if args.dry_run:
        return _print_projection(dry_run(settings, lm=args.injected_lm), settings, args)
    show = not args.json or sys.stderr.isatty()
    tracker = open_tracker(settings)
    try:
        result = run(settings, lm=args.injected_lm, restart=args.restart, progress=show, tracker=tracker)
    except ModelUnavailable as exc:
        print(f"dspy-ext compile: stopped: {exc}", file=sys.stderr)
        return 1
    if args.json:
        emit_json(result.summary.to_dict(), args.console)
    else:
        print_run(result.summary, settings, args.console)
        _print_tracking(tracker, settings, args.console)
    return 0


def _print_tracking(tracker: Tracker, settings: RunSettings, stream: TextIO) -> None:
    """Where the compile was recorded: its MLflow run, or nothing."""
    if isinstance(tracker, MlflowTracker) and tracker.finished:
        print(f"MLflow run {tracker.run_id} in {tracker.uri} (program: runs:/{tracker.run_id}/program)", file=stream)


def print_run(summary: RunSummary, settings: RunSettings, stream: TextIO) -> None:
    """The run's scores and spend in one line, the human review's figures, and the criteria."""
    scores, spend = summary.scores, summary.spend
    print(
        f"{summary.task} · {settings.optimizer} · seed {settings.seed}: test {scores.test:.1f}%, "
        f"{scores.gain:+.1f} over the labeled-demo baseline "
        f"({scores.baseline_test:.1f}%, 0 calls; zero-shot {scores.zero_shot_test:.1f}%), "
        f"val {scores.val:.1f}%, "
        f"{spend.lm_calls} LM calls (task {spend.role_calls('task')}, prompt {spend.role_calls('prompt')}), "
        f"{spend.tokens} tokens, {_usd(spend.usd)}, {summary.seconds:.0f} s -> {summary.out}",
        file=stream,
    )
    if summary.review is not None:
        print_review(summary.review, stream)
    print_criteria(summary, stream)


def print_review(review: ReviewFigures, stream: TextIO) -> None:
    """What the human review gave, and the pinned cases the compiled program broke."""
    pinned = review.pinned
    print(
        f"human review: {review.feedback['labeled']} labeled examples, "
        f"{review.feedback['critiques']} critiques; pinned cases {pinned['kept']} kept, "
        f"{pinned['broken']} broken",
        file=stream,
    )
    for case in pinned["broken_items"][:10]:
        print(
            f"  broken: {case['input'][:60]!r}: {case['approved'][:30]!r} -> {case['output'][:30]!r} "
            f"(fails {', '.join(case['failed'])})",
            file=stream,
        )


def _usd(usd: float | None) -> str:
    return "USD unknown" if usd is None else f"${usd:.4f}"


def _print_projection(projection: Projection, settings: RunSettings, args: argparse.Namespace) -> int:
    if args.json:
        emit_json({"dry_run": True, "optimizer": settings.optimizer, **projection.to_dict()}, args.console)
        return 0
    basis = "the optimizer's plan" if projection.known else f"no plan known for {settings.optimizer}: the budget"
    print(
        f"{settings.task} · {settings.optimizer} · budget {settings.budget}: expected {projection.calls} LM calls, "
        f"{projection.tokens} tokens, {_usd(projection.usd)} ({basis}; no call was made)",
        file=args.console,
    )
    for role, part in (("task", projection.task), ("prompt", projection.prompt)):
        print(
            f"  {role:<6} model: {part.calls} calls, {part.input_tokens} tokens in, {part.output_tokens} out, "
            f"{_usd(part.usd)}",
            file=args.console,
        )
    for ask in projection.meta_prompts:
        print(
            f"    {ask.role}: {ask.calls} x ({ask.prompt_tokens} tokens in, {ask.reply_tokens} out)",
            file=args.console,
        )
    return 0


def print_criteria(summary: RunSummary, stream: TextIO) -> None:
    """The per-criterion table, the guards' verdict and the rows that pass only sometimes, as text."""
    figures = summary.figures
    _print_criteria_table(summary.criteria, figures.val_criteria or {}, stream)
    report = figures.guard_report
    if report:
        val_report = report.get("val") or {}
        rejected = ", ".join(f"{k} {n}" for k, n in (val_report.get("rejected") or {}).items()) or "none"
        note = val_report.get("fallback") or (
            f"gate returned the {val_report['returned']}"
            if val_report.get("returned") not in (None, "compiled")
            else ""
        )
        test = report["test"]
        print(
            f"guards {report['tolerances']}: test {'kept' if test['kept'] else 'BROKEN ' + str(test['broken'])}; "
            f"candidates set aside: {rejected}" + (f"; {note}" if note else ""),
            file=stream,
        )
    repeats = figures.repeats
    if repeats:
        print(
            f"{repeats['k']} rollouts per row: test {repeats['test_mean']:.1f} ± {repeats['test_ci95']:.1f}; "
            f"{len(repeats['flaky_test_rows'])} rows pass only sometimes",
            file=stream,
        )
        for row in repeats["flaky_test_rows"][:10]:
            print(f"  row {row['index']} passes {100 * row['pass_rate']:.0f}%: {row['input'][:70]}", file=stream)


def _print_criteria_table(table: dict[str, dict[str, float]], val: dict[str, dict[str, float]], stream: TextIO) -> None:
    if not table:
        return
    print(
        f"{'criterion':<16} {'student test':>12} {'compiled test':>13} {'student val':>11} {'compiled val':>12}",
        file=stream,
    )
    for name, cell in table.items():
        v = val.get(name, {})
        fmt = lambda x: "-" if x is None else f"{x:.1f}"
        print(
            f"{name:<16} {cell['student']:>12.1f} {cell['compiled']:>13.1f} {fmt(v.get('student')):>11} "
            f"{fmt(v.get('compiled')):>12}",
            file=stream,
        )
