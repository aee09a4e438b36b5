"""``dspy-ext tune``: search optimizers and their hyperparameters in a persistent Optuna study.

Each trial picks an optimizer and its knobs from the search space (``--space``,
YAML or JSON; default: ape, opro and bfsrs with their default ranges),
compiles, and is scored on the validation rows in minibatches (the pruner may
stop it early). The study lives in ``--storage`` (default
``runs/tune/optuna.db``): the same ``--study`` name continues it, ``--trials``
is the study's target of finished trials, and ``--workers N`` runs N processes
on it (more machines can join through a PostgreSQL URL).

At the end it prints a table of the top trials, scores the best program on the
task's test split, writes ``tune.png`` (optimization history and
hyperparameter importances), ``best_program.json`` and ``summary.json`` next
to the study, and prints the ``optuna-dashboard`` command that opens it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import multiprocessing
import sys
import time
from typing import Any

from dspy_ext.cli.common import (
    CLIError,
    add_model_args,
    add_output_args,
    add_task_args,
    build_student,
    emit_json,
    setup_logging,
    setup_run,
)

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tune", help="search optimizers and hyperparameters with Optuna (persistent, resumable, multi-worker)",
        description="Tune which optimizer to run and its hyperparameters in a persistent Optuna study.")
    add_task_args(parser)
    add_model_args(parser)
    group = parser.add_argument_group("study")
    group.add_argument("--space", default=None, help="search space file (YAML or JSON); default: ape, opro, bfsrs")
    group.add_argument("--optimizers", default=None,
                       help="comma-separated optimizers with their default ranges (instead of --space)")
    group.add_argument("--trials", type=int, default=12,
                       help="target number of finished trials in the study (resumed ones count)")
    group.add_argument("--budget", type=int, default=None,
                       help="LM calls per trial (default: the space's, else 80)")
    group.add_argument("--storage", default=None,
                       help="Optuna storage URL (sqlite:///..., postgresql://...) or a .db path; "
                            "default runs/tune/optuna.db")
    group.add_argument("--study", default=None, help="study name (default tune-TASK); the same name resumes")
    group.add_argument("--workers", type=int, default=1, help="worker processes on this study")
    group.add_argument("--objective", default=None, choices=["auto", "single", "pareto", "constraints"],
                       help="for several criteria: jointly (pareto) or no criterion below the student (constraints)")
    group.add_argument("--criteria", default=None,
                       help="comma-separated metric names scored as separate criteria (first = primary)")
    group.add_argument("--heartbeat", type=int, default=10,
                       help="seconds between trial heartbeats; a trial silent for 2x this is re-queued")
    group.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    group.add_argument("--train", type=int, default=50, help="training rows drawn from the training file")
    group.add_argument("--val", type=int, default=50, help="validation (dev) rows drawn from the training file")
    group.add_argument("--out", default=None, help="folder for the study's files (default: next to the study)")
    group.add_argument("--top", type=int, default=5, help="rows in the table of top trials")
    group.add_argument("--no-test", action="store_true", help="do not score the best program on the test split")
    add_output_args(parser)
    parser.set_defaults(func=run)


# ---- building the search (shared by the main process and the workers) ----------------------------------


def _metric(args: argparse.Namespace, setup: Any) -> Any:
    if not args.criteria:
        return setup.metric
    from metrics import get_metric

    names = [n.strip() for n in args.criteria.split(",") if n.strip()]
    if len(set(names)) != len(names) or not names:
        raise CLIError(f"--criteria: expected distinct metric names, got {args.criteria!r}")
    funcs = {name: get_metric(name) for name in names}

    def criteria_metric(example, prediction, trace=None):
        return {name: f(example, prediction, trace) for name, f in funcs.items()}

    return criteria_metric


def _build(args: argparse.Namespace, *, worker_index: int = 0) -> tuple[Any, Any, Any, Any, Any]:
    from dspy_ext.data import split_train_val
    from dspy_ext.tuning import OptunaSearch, SearchSpace, load_space

    if args.trials < 1:
        raise CLIError("--trials must be >= 1")
    if args.workers < 1:
        raise CLIError("--workers must be >= 1")
    if args.space and args.optimizers:
        raise CLIError("give either --space or --optimizers, not both")
    if args.budget is not None and args.budget < 1:
        raise CLIError("--budget must be >= 1")
    if args.heartbeat < 1:
        raise CLIError("--heartbeat must be >= 1")
    if args.space:
        space = load_space(args.space)
    elif args.optimizers:
        space = SearchSpace.from_dict({"optimizers": args.optimizers})
    else:
        space = SearchSpace.default()
    if args.budget is not None:
        space = SearchSpace.from_dict({**space.to_dict(), "budget": args.budget})
    setup = setup_run(args)
    task = setup.task
    train, val = split_train_val(task.train, args.train, args.val, seed=args.seed)
    student = build_student(args, task)
    search = OptunaSearch(
        _metric(args, setup), space=space, n_trials=args.trials, storage=args.storage,
        study_name=args.study or f"tune-{task.name}", seed=args.seed, num_threads=args.threads,
        objective=args.objective, out_dir=args.out, heartbeat_interval=args.heartbeat, timeout=args.timeout,
        worker_index=worker_index,
    )
    if args.workers > 1 and search.storage_url == "memory":
        raise CLIError("--workers > 1 needs a shared storage (SQLite file or database URL), not memory")
    return setup, train, val, student, search


def _worker_main(args: argparse.Namespace, worker_index: int, max_trials: int) -> None:
    """A worker process: join the study and run up to ``max_trials`` trials."""
    setup_logging(args.verbose)
    setup, train, val, student, search = _build(args, worker_index=worker_index)
    with setup.context(), contextlib.redirect_stdout(sys.stderr):
        session = search.open(student, trainset=train, valset=val)
        session.optimize(max_trials=max_trials)


# ---- the command ---------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from dspy_ext.evaluation import Evaluator
    from dspy_ext.lm.metering import CallMeter, metering
    from dspy_ext.tuning import SearchSpaceError, dashboard_command, trial_record
    from dspy_ext.tuning.report import save_plot, top_trials_table

    try:
        setup, train, val, student, search = _build(args)
    except SearchSpaceError as exc:
        raise CLIError(str(exc)) from None
    show = not args.json or sys.stderr.isatty()
    started = time.perf_counter()
    with setup.context(), contextlib.redirect_stdout(sys.stderr):
        session = search.open(student, trainset=train, valset=val)
    before = session.counts()
    remaining = max(0, args.trials - before["finished"])
    per_worker = math.ceil(remaining / args.workers) if remaining else 0
    procs = []
    if per_worker and args.workers > 1:
        ctx = multiprocessing.get_context("spawn")
        for index in range(1, args.workers):
            proc = ctx.Process(target=_worker_main, args=(args, index, per_worker), name=f"tune-worker-{index}")
            proc.start()
            procs.append(proc)
    bar = None
    if show and remaining:
        from tqdm.auto import tqdm

        bar = tqdm(total=args.trials, initial=min(before["finished"], args.trials), desc=f"tune {search.study_name}",
                   unit="trial", file=sys.stderr)

    def refresh(*_: Any) -> None:
        if bar is None:
            return
        counts = session.counts()
        best = session.best_trial()
        bar.n = min(counts["finished"], args.trials)
        value = None if best is None else (best.value if best.values and len(best.values) == 1 else best.values[0])
        bar.set_postfix_str(f"best {value:.1f}" + (f" (#{best.number} {best.user_attrs.get('optimizer')})")
                            if value is not None else "best -", refresh=False)
        bar.refresh()

    refresh()
    try:
        with setup.context(), contextlib.redirect_stdout(sys.stderr):
            session.optimize(max_trials=per_worker or None, callbacks=[refresh] if bar is not None else [])
        while any(p.is_alive() for p in procs):
            refresh()
            for p in procs:
                p.join(timeout=2.0)
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    finally:
        if bar is not None:
            refresh()
            bar.close()
    failed_workers = [p.name for p in procs if p.exitcode not in (0, None)]
    if failed_workers:
        logger.warning("worker(s) %s exited with an error; their trials are in the study", ", ".join(failed_workers))

    summary = session.summary(top=args.top)
    summary["n_trials_this_run"] = summary["n_trials"] - before["all"]
    summary["workers"] = args.workers
    summary["task"] = setup.task.name
    summary["lm"] = setup.lm.model
    summary["adapter"] = setup.adapter_name
    summary["train"], summary["val"] = len(train), len(val)
    summary["seconds_this_run"] = round(time.perf_counter() - started, 2)
    best = session.best_trial()
    if best is not None:
        best_path = session.save_best()
        summary["best_program"] = str(best_path) if best_path else None
        if not args.no_test and setup.task.test:
            program = session.best_program()
            meter = CallMeter()
            evaluator = Evaluator(setup.metric, num_threads=args.threads, progress=show)
            with setup.context(), metering(meter):
                test = evaluator.evaluate(program, setup.task.test, desc="best on test")
                baseline = evaluator.evaluate(student, setup.task.test, desc="student on test")
            summary["test_score"] = round(test.score, 2)
            summary["baseline_test_score"] = round(baseline.score, 2)
            summary["test_n"] = len(setup.task.test)
            summary["test_lm_calls"] = meter.calls
    else:
        summary["best_program"] = None
    plot = None
    if session.out_dir is not None:
        try:
            plot = save_plot(session, session.out_dir / "tune.png")
        except Exception as exc:  # a plot must never lose a finished study's results
            logger.warning("could not draw the plot: %s", exc)
    summary["plot"] = str(plot) if plot else None
    summary["dashboard"] = dashboard_command(search.storage_url)
    if session.out_dir is not None:
        session.out_dir.mkdir(parents=True, exist_ok=True)
        (session.out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if args.json:
        emit_json(summary)
        return 0
    print(f"study {summary['study']} in {summary['storage']}: {summary['n_trials']} trials "
          f"({summary['n_complete']} complete, {summary['n_pruned']} pruned, {summary['n_failed']} failed), "
          f"{summary['n_trials_this_run']} this run, {summary['total_lm_calls']} LM calls in all")
    print()
    print(top_trials_table(session, args.top))
    print()
    if best is None:
        print("no complete" + (" feasible" if session.objective == "constraints" else "") + " trial yet")
    else:
        record = trial_record(best)
        print(f"best: trial {best.number} ({record['optimizer']}), dev {summary['best_value']:.1f}"
              + (f" (student {session.baseline['criteria'].get(session.primary, 0):.1f})")
              + (f", test {summary['test_score']:.1f} (student {summary['baseline_test_score']:.1f})"
                 if "test_score" in summary else ""))
        for name, text in (record.get("instructions") or {}).items():
            print(f"  {name}: {text!r} with {(record.get('n_demos') or {}).get(name, 0)} demos")
        if summary.get("pareto_front"):
            print("pareto front: " + "; ".join(
                f"#{p['number']} " + ", ".join(f"{k} {v:.1f}" for k, v in p["values"].items())
                for p in summary["pareto_front"]))
        print(f"best program: {summary['best_program']}")
    if plot:
        print(f"plot: {plot}")
    print(f"dashboard: {summary['dashboard']}")
    return 0
