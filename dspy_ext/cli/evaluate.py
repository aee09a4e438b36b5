"""``dspy-ext evaluate``: score a program on a task split."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dspy_ext.cli.common import (
    CLIError,
    add_experiment_args,
    add_output_args,
    emit_json,
    format_errors,
    load_settings,
)
from dspy_ext.evaluation import Evaluator
from dspy_ext.experiment import RunSettings, build_components, build_student, labeled_demos
from dspy_ext.prompt_state import predictors


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a program on a task split",
        description="Score a program on a task split with the shared evaluator.",
    )
    add_experiment_args(parser)
    parser.add_argument("--demos", type=int, default=0, help="labeled demos from the training split (default 0)")
    parser.add_argument("--split", default="test", choices=["train", "test"], help="split to score")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N rows")
    parser.add_argument("--repeats", type=int, default=1, help="rollouts per row (sampled when > 1)")
    parser.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="sampling temperature (default: 0.7 when --repeats > 1, else the LM's)",
    )
    add_output_args(parser)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.repeats < 1:
        raise CLIError("--repeats must be >= 1")
    settings = load_settings(args, RunSettings)  # a compile run file works too: its optimizer keys go unused
    components = build_components(settings, lm=args.injected_lm)
    task = components.task
    student = build_student(settings, task)
    demos = labeled_demos(task.train, args.demos, settings.seed)
    for _, predictor in predictors(student):
        predictor.demos = list(demos)
    rows = _rows(args, task, demos)
    temperature = args.temperature if args.temperature is not None else (0.7 if args.repeats > 1 else None)
    evaluator = Evaluator(
        components.metric, num_threads=settings.threads, progress=sys.stderr.isatty() or not args.json
    )
    with components.context():
        report = evaluator.evaluate(
            student, rows, repeats=args.repeats, temperature=temperature, desc=f"{task.name}/{args.split}"
        )
    result = {
        "task": task.name,
        "split": args.split,
        "program": settings.program,
        "lm": components.lm.model,
        "adapter": components.adapter_name,
        "demos": len(demos),
        **report.to_dict(),
    }
    if args.repeats > 1:
        rates = report.pass_rates
        result["flaky_rows"] = [
            {
                "index": i,
                "pass_rate": round(rates[i], 3),
                "input": "; ".join(str(v) for v in rows[i].inputs().values())[:120],
            }
            for i in report.flaky
        ]
    if args.json:
        emit_json(result, args.console)
    else:
        _print_text(result, report, args, settings.program, len(rows))
    if not report.scored:
        first = next((r for r in report.rows if r.error is not None), None)
        detail = f": {first.error.value}: {first.message[:300]}" if first else ""
        print(f"dspy-ext evaluate: error: no row could be scored{detail}", file=sys.stderr)
        return 1
    return 0


def _rows(args: argparse.Namespace, task: Any, demos: list[Any]) -> list[Any]:
    """The rows of ``--split`` to score (without the demos), the first ``--limit`` of them.

    Raises:
        CLIError: The split has no rows.
    """
    rows = task.test if args.split == "test" else task.train
    if args.split == "train" and demos:
        used = {id(d) for d in demos}
        rows = [r for r in rows if id(r) not in used]
    rows = rows[: args.limit] if args.limit else rows
    if not rows:
        raise CLIError(f"split '{args.split}' of task '{task.name}' has no rows")
    return rows


def _print_text(result: dict[str, Any], report: Any, args: argparse.Namespace, program: str, n_rows: int) -> None:
    """The score, its CI, calls, tokens, errors, the criteria and the rows that pass only sometimes."""
    ci = f" ± {result['ci95']:.1f}" if result["ci95"] else ""
    say = args.console
    print(
        f"{result['task']} [{args.split}] {program} · {result['lm']} · {result['adapter']} · {result['demos']} demos",
        file=say,
    )
    print(
        f"score {result['score']:.1f}%{ci} (n={result['n']}, repeats={args.repeats})  "
        f"LM calls {result['lm_calls']}  tokens {result['input_tokens'] + result['output_tokens']}  "
        f"{result['seconds']:.1f} s",
        file=say,
    )
    print(f"errors: {format_errors(result['errors'])}", file=say)
    cis = report.criteria_cis()
    if cis:
        print(f"{'criterion':<16} {'mean %':>8} {'± 95% CI':>9}", file=say)
        for name, ci in cis.items():
            print(f"{name:<16} {ci.mean:>8.1f} {ci.half_width:>9.1f}", file=say)
    if args.repeats > 1:
        print(f"{len(result['flaky_rows'])} of {n_rows} rows pass on some repeats but not all", file=say)
        for row in result["flaky_rows"][:10]:
            print(f"  row {row['index']} passes {100 * row['pass_rate']:.0f}%: {row['input'][:70]}", file=say)
