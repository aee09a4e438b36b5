"""``dspy-ext tune``: search optimizers and their hyperparameters in a persistent Optuna study.

Each trial picks an optimizer and its knobs from the tuning space (``--space``,
YAML or JSON; default: ape, opro and bfsrs with their default ranges),
compiles, and is scored on the validation rows in minibatches (the pruner may
stop it early). ``--budget`` caps each trial's LM calls; ``--max-cost`` caps the
whole study's USD. The study lives in ``--storage`` (default
``runs/tune/optuna.db``): the same ``--study`` name continues it, ``--trials``
is the study's target of finished trials, and ``--workers N`` runs N processes
on it (more machines can join through a PostgreSQL URL).

At the end it prints a table of the top trials, scores the best program on the
task's test split, writes ``tune.png`` (optimization history and
hyperparameter importances), ``best_program.json``, ``summary.json`` and
``settings.yaml`` next to the study, and prints the ``optuna-dashboard``
command that opens it. With ``--mlflow URI`` the study is one MLflow parent run and each trial that
finished a child run of it. The work is :func:`dspy_ext.tuning.tune`; this module
only turns flags (and a ``--config`` run file) into
:class:`~dspy_ext.experiment.TuneSettings` and prints.
"""

from __future__ import annotations

import argparse
import functools
import sys
import warnings
from typing import TYPE_CHECKING, Any

from dspy_ext.cli.common import (
    add_budget_arg,
    add_experiment_args,
    add_max_cost_arg,
    add_output_args,
    add_prompt_model_args,
    add_tracking_args,
    add_training_args,
    apply_tracking_args,
    emit_json,
    load_settings,
    print_group_tracking,
    setup_logging,
)
from dspy_ext.experiment import TuneSettings

if TYPE_CHECKING:
    from dspy_ext.tuning.summary import TuneSummary


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tune",
        help="search optimizers and hyperparameters with Optuna (persistent, resumable, multi-worker)",
        description="Tune which optimizer to run and its hyperparameters in a persistent Optuna study.",
    )
    add_experiment_args(parser, TuneSettings)
    add_prompt_model_args(parser)
    _add_study_args(parser.add_argument_group("study"))
    add_tracking_args(parser, "the study as one MLflow parent run, each trial a child run")
    add_output_args(parser)
    parser.set_defaults(func=main)


def _default(key: str) -> str:
    """`` (default: X)`` from :class:`TuneSettings`, where every default is written once."""
    value = TuneSettings.model_fields[key].get_default(call_default_factory=True)
    return f" (default: {value})" if value is not None else ""


def _add_study_args(group: argparse._ArgumentGroup) -> None:
    flag = functools.partial(group.add_argument, default=argparse.SUPPRESS)
    flag("--space", help="tuning space file (YAML or JSON); default: ape, opro, bfsrs with their default ranges")
    flag("--optimizers", help="comma-separated optimizers with their default ranges (instead of --space)")
    flag(
        "--trials",
        type=int,
        help="target number of finished trials in the study (resumed ones count)" + _default("trials"),
    )
    add_budget_arg(group, "LM calls per trial (default: the space's, else 80)")
    add_max_cost_arg(
        group,
        "USD for the whole study (not per trial, unlike --budget): a hard cap on what its trials spend, "
        "compile and devset scoring, task and prompt model together, trials of earlier runs of the study "
        "included (like --trials). No trial starts once it is spent; the trial running then stops (a devset "
        "scoring cut short fails that trial) and the best trial so far is returned. The student's devset "
        "baseline and the final test scoring are not capped. With --workers N each worker gets 1/N of what "
        "is left. Needs known prices: the embedded model's is 0, a served model's is the run file's price",
        metavar="USD",
    )
    flag(
        "--storage",
        help="Optuna storage URL (sqlite:///..., postgresql://...) or a .db path; default runs/tune/optuna.db",
    )
    flag("--study", help="study name (default tune-TASK); the same name resumes")
    flag("--workers", type=int, help="worker processes on this study" + _default("workers"))
    flag(
        "--objective",
        choices=["auto", "single", "pareto", "constraints"],
        help="for several criteria: jointly (pareto) or no criterion below the student (constraints)",
    )
    flag("--criteria", help="comma-separated metric names scored as separate criteria (first = primary)")
    flag(
        "--heartbeat",
        type=int,
        help="seconds between trial heartbeats; a trial silent for 2x this is re-queued" + _default("heartbeat"),
    )
    flag("--timeout", type=float, help="stop starting trials after this many seconds")
    add_training_args(group, TuneSettings, drawn="", learner="every trial", repeats=False)
    flag("--out", help="folder for the study's files (default: next to the study)")
    flag("--top", type=int, help="rows in the table of top trials" + _default("top"))
    flag("--no-test", dest="no_test", action="store_true", help="do not score the best program on the test split")


def main(args: argparse.Namespace) -> int:
    from dspy_ext.experiment.tracking import open_group_tracker
    from dspy_ext.tuning import tune

    settings = apply_tracking_args(args, load_settings(args, TuneSettings))
    tracker = open_group_tracker(settings.tracking)
    quiet_optuna(args.verbose)
    show = not args.json or sys.stderr.isatty()
    bar = ProgressBar() if show else None
    try:
        result = tune(
            settings,
            progress=show,
            on_progress=bar,
            worker_init=functools.partial(prepare_worker, args.verbose),
            tracker=tracker,
        )
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        emit_json(result.summary.to_dict(), args.console)
    else:
        print(render_text(result, settings.top), file=args.console)
        print_group_tracking(tracker, "trial", args.console)
    return 0


def quiet_optuna(verbose: int) -> None:
    """Optuna's per-trial INFO lines and experimental-API warnings are noise next to this command's own output."""
    import optuna

    if verbose < 2:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # Importances over few, similar trials warn that they are equal; the plot says so already.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"optuna\.importance")


def prepare_worker(verbose: int) -> None:
    """First thing in a worker process: the command's logging, and stdout kept for the main process's output."""
    setup_logging(verbose)
    quiet_optuna(verbose)
    sys.stdout = sys.stderr


class ProgressBar:
    """A tqdm bar of finished trials with the best value so far; drawn only while trials remain."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.done = False

    def __call__(self, progress: Any) -> None:
        if self.done:
            return
        if self.bar is None:
            if progress.finished >= progress.target:
                return
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=progress.target, initial=progress.finished, desc="tune", unit="trial", file=sys.stderr
            )
        self.bar.n = min(progress.finished, progress.target)
        best = (
            "best -"
            if progress.best_value is None
            else (f"best {progress.best_value:.1f} (#{progress.best_number} {progress.best_optimizer})")
        )
        self.bar.set_postfix_str(best, refresh=False)
        self.bar.refresh()
        if progress.finished >= progress.target:
            self.close()  # before the test scoring draws its own bars

    def close(self) -> None:
        if self.bar is not None and not self.done:
            self.bar.close()
        self.done = True


def render_text(result: Any, top: int) -> str:
    """The study's counts, the table of top trials, the best trial, the plot and the dashboard command."""
    from dspy_ext.tuning.report import top_trials_table

    s = result.summary
    cap = f" (cost cap ${s.max_cost:g}{': reached' if s.cost_cap_reached else ''})" if s.max_cost is not None else ""
    counts = (
        f"study {s.study} in {s.storage}: {s.n_trials} trials ({s.n_complete} complete, "
        f"{s.n_pruned} pruned, {s.n_failed} failed), {s.n_trials_this_run} this run, "
        f"{s.total_lm_calls} LM calls in all, trials' USD {_usd(s.total_usd)}" + cap
    )
    lines = [counts, "", top_trials_table(result.results, top), ""]
    if s.best_trial is None:
        lines.append("no complete" + (" feasible" if s.objective == "constraints" else "") + " trial yet")
    else:
        lines += _best_lines(s)
    if s.plot:
        lines.append(f"plot: {s.plot}")
    lines.append(f"dashboard: {s.dashboard}")
    return "\n".join(lines)


def _usd(usd: float | None) -> str:
    return "unknown" if usd is None else f"{usd:.4f}"


def _best_lines(s: TuneSummary) -> list[str]:
    best = s.best_trial
    student_dev = s.baseline["criteria"].get(s.primary, 0)
    test = f", test {s.test.test_score:.1f} (student {s.test.baseline_test_score:.1f})" if s.test is not None else ""
    lines = [
        (
            f"best: trial {best['number']} ({best['optimizer']}), dev {s.best_value:.1f} "
            f"(student {student_dev:.1f}){test}"
        )
    ]
    for name, text in (best.get("instructions") or {}).items():
        lines.append(f"  {name}: {text!r} with {(best.get('n_demos') or {}).get(name, 0)} demos")
    if s.pareto_front:
        lines.append(
            "pareto front: "
            + "; ".join(
                f"#{p['number']} " + ", ".join(f"{k} {v:.1f}" for k, v in p["values"].items()) for p in s.pareto_front
            )
        )
    lines.append(f"best program: {s.best_program}")
    return lines
