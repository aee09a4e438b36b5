"""``dspy-ext compare``: several optimizers x several seeds on one task, with statistics.

For each optimizer and seed it compiles on a seeded train/val draw and scores
on the full held-out test split, then writes to ``--out``:

* ``results.md`` / ``results.csv``: one row per optimizer: test accuracy mean ±
  95% CI over seeds, LM calls (task/prompt model), tokens, USD ("unknown" when
  a price is not known), wall time, whether the budget is enforced, and a paired test (exact McNemar on per-example correctness) against
  the best optimizer;
* ``score_vs_calls.png``: test score against LM calls, one point per run;
* ``cells/*.json`` and ``runs/*/``: one finished (optimizer, seed) each; a
  re-run skips them, so it costs no LM calls.

With ``--mlflow URI`` the comparison is one MLflow parent run (the tables and the plot as artifacts)
and each cell's compile a child run of it.

With ``--storage URL`` the cells are the trials of one Optuna study: ``--workers N``
processes here, and the same command on other machines with the same URL, each
take the next waiting cell; a lost worker's cell is taken again. ``--report
--storage URL`` writes the tables and the plot from the study alone.

Progress goes to stderr, one line per cell; ``--json`` prints one object on stdout.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from dspy_ext.cli import common
from dspy_ext.cli.tune import prepare_worker, quiet_optuna
from dspy_ext.compare import run_compare
from dspy_ext.compare.report import fmt_calls, fmt_usd
from dspy_ext.experiment import CompareSettings
from dspy_ext.experiment.tracking import open_group_tracker


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="compare optimizers over seeds on held-out data",
        description="Compile a task with several optimizers and seeds, score each run on the held-out test "
        "split and tabulate mean ± 95% CI, LM calls (task/prompt model), tokens, USD, time and paired "
        "significance tests.",
    )
    common.add_experiment_args(parser, CompareSettings)
    common.add_prompt_model_args(parser)
    parser.add_argument(
        "--optimizers",
        default=argparse.SUPPRESS,
        help="comma-separated registry names, e.g. ape,opro,mipro,copro,bfsrs",
    )
    common.add_optimizer_config_arg(
        parser, 'per-optimizer settings as JSON, e.g. \'{"ape": {"top_k": 2}}\' (validated)'
    )
    common.add_budget_arg(
        parser,
        "LM calls per compile (hard cap for ours; closest setting for DSPy's; "
        f"default: {CompareSettings.model_fields['budget'].default})",
    )
    common.add_max_cost_arg(
        parser,
        "USD per compile, like --budget: a hard cap over the task and prompt models together; at the cap a "
        "cell returns its best program so far (test scoring is not capped). Needs known prices: the embedded "
        "model's is 0, a served model's is the run file's price: {input_per_1m, output_per_1m}",
        metavar="USD",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=argparse.SUPPRESS,
        help=f"seeds per optimizer: --seed, --seed+1, ... (default: {CompareSettings.model_fields['seeds'].default})",
    )
    common.add_training_args(parser, CompareSettings, drawn="per seed", learner="every compile")
    parser.add_argument("--out", default=argparse.SUPPRESS, help="comparison folder (default runs/compare-TASK)")
    common.add_tracking_args(parser, "the comparison as one MLflow parent run, each cell's compile a child run")
    _add_distribution_args(parser.add_argument_group("workers (a comparison spread over processes and machines)"))
    common.add_output_args(parser)
    parser.set_defaults(func=main)


def _add_distribution_args(group: argparse._ArgumentGroup) -> None:
    flag = functools.partial(group.add_argument, default=argparse.SUPPRESS)
    flag(
        "--storage",
        help="Optuna storage URL (postgresql://..., sqlite:///...) or a .db path: the cells become the trials of "
        "one study, shared by --workers here and by the same command on other machines",
    )
    flag("--study", help="study name in --storage (default compare-TASK); the same name joins or resumes")
    flag(
        "--workers",
        type=int,
        help=f"worker processes here (default: {CompareSettings.model_fields['workers'].default}; more needs --storage)",
    )
    flag(
        "--heartbeat",
        type=int,
        help="seconds between a running cell's heartbeats; a cell silent for 2x this is taken again "
        f"(default: {CompareSettings.model_fields['heartbeat'].default})",
    )
    group.add_argument(
        "--report",
        action="store_true",
        help="run nothing: write the tables and the plot of the study in --storage (--study, --out) from the "
        "storage alone",
    )


def main(args: argparse.Namespace) -> int:
    """Run the comparison (or, with ``--report``, tabulate its study); exit 1 if a cell failed."""
    tracker = None
    if args.report:
        result = _report(args)
    else:
        settings = common.load_settings(
            args,
            CompareSettings,
            rename={"optimizer_config": "optimizer_configs"},
            json_flags={"optimizer_configs": "--optimizer-config"},
        )
        settings = common.apply_tracking_args(args, settings)
        tracker = open_group_tracker(settings.tracking)
        if settings.storage:
            quiet_optuna(args.verbose)
        result = run_compare(
            settings,
            lm=args.injected_lm,
            progress=sys.stderr.isatty() and not args.json,
            log=progress_line,
            tracker=tracker,
            worker_init=functools.partial(prepare_worker, args.verbose),
        )
    if args.json:
        common.emit_json(result, args.console)
    else:
        print(render_text(result), file=args.console)
        if tracker is not None:
            common.print_group_tracking(tracker, "cell", args.console)
    return 1 if result["failed"] else 0


def progress_line(message: str) -> None:
    """One line of a comparison's progress, on stderr (a module function: worker processes get it too)."""
    print(message, file=sys.stderr, flush=True)


def _report(args: argparse.Namespace) -> dict:
    """``--report``: the tables of the study named by the flags (or by the ``--config`` run file)."""
    from dspy_ext.compare.distributed import report_from_storage, study_name_of

    storage, study, out = (getattr(args, key, None) for key in ("storage", "study", "out"))
    if args.config:
        settings = common.load_settings(args, CompareSettings, rename={"optimizer_config": "optimizer_configs"})
        storage, study, out = settings.storage, study_name_of(settings), settings.out
    if not storage:
        raise common.CLIError("--report reads a comparison's study: give --storage URL (and --study NAME)")
    quiet_optuna(args.verbose)
    return report_from_storage(storage, study, Path(out) if out else None)


def render_text(result: dict) -> str:
    """A short plain-text summary for the terminal."""
    lines = [
        f"{result['task']}: {len(result['rows'])} runs ({result['skipped_cells']} resumed), "
        f"{result['new_lm_calls']} new LM calls, USD {fmt_usd(result.get('new_usd'))} -> {result['out']}"
    ]
    for row in result["summary"]:
        if not row["runs"]:
            lines.append(f"  {row['optimizer']:<14} no finished run")
            continue
        vs = row.get("vs_best")
        mark = (
            "best"
            if row.get("best")
            else (
                f"{-vs['diff_points'] + 0.0:+.1f} pts, p={vs['p_value']:.3g}{' *' if vs['significant'] else ''}"
                if vs
                else ""
            )
        )
        ci = f"{row['test_mean']:.1f} ± {row['test_ci95']:.1f}"
        calls = fmt_calls(row["lm_calls_mean"], row.get("task_calls_mean"), row.get("prompt_calls_mean"))
        lines.append(
            f"  {row['optimizer']:<14} {ci:>13}  {calls:>15} calls (task/prompt)  "
            f"USD {fmt_usd(row.get('usd_mean')):>9}  {row['seconds_mean']:>6.0f} s  {mark}"
        )
    for fail in result["failed"]:
        lines.append(f"  FAILED {fail['optimizer']} seed {fail['seed']}: {fail['error'][:200]}")
    return "\n".join(lines)
