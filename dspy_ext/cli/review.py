"""``dspy-ext review``: grade a program's outputs on a local, keyboard-first page.

Three ways to name the program:

* ``dspy-ext review RUN_DIR``: a run folder written by ``dspy-ext compile`` (its compiled ``program.json``,
  task, LM and adapter);
* ``dspy-ext review --task T|--data PATH [--program P] [--state program.json]``: a task's program,
  optionally with a saved program state;
* ``dspy-ext review --store FILE``: no program, serve (or report on, export, import) an existing store.

The program runs on ``--n`` inputs (the task's split, or an unlabelled ``--inputs`` JSONL file of inputs
only), ``--samples K`` outputs each; outputs already in the store are not made again. Then the page is
served on 127.0.0.1 (``--port``, default a free one) and its URL, with the write token, is printed.

``--report``, ``--export FILE`` and ``--import FILE`` work on the store alone and do not serve.

**After a compile from review** (``dspy-ext compile --feedback STORE``), ``dspy-ext review RUN_DIR`` uses that
STORE, runs the compiled program on the inputs reviewed there, and opens on the outputs that changed: each
shown next to the earlier output of the same input with its grade. Unchanged outputs are the same items
as before and keep their grades, so only the changes are asked. ``--changed`` does the same for a
``--store`` alone (against its most recent prompt version).
"""

from __future__ import annotations

import argparse
import sys
import time
import webbrowser
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dspy_ext.cli.common import (
    CLIError,
    add_experiment_args,
    add_output_args,
    emit_json,
    load_settings,
)
from dspy_ext.experiment import (
    ComponentError,
    ExperimentSettings,
    build_components,
    build_student,
    load_program_state,
    open_run,
)
from dspy_ext.review import (
    DEFAULT_THRESHOLD,
    CollectSummary,
    ReviewApp,
    ReviewError,
    ReviewServer,
    ReviewStore,
    align,
    collect,
    load_inputs_jsonl,
)

STORE_FILE = "review.sqlite"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``review`` subcommand to ``subparsers``.

    Example:
        >>> parser = argparse.ArgumentParser(); register(parser.add_subparsers())
    """
    parser = subparsers.add_parser(
        "review",
        help="grade outputs on a local keyboard-first page; grow criteria; align checks",
        description="Run a program on N inputs (K samples each), then serve a local review page where a person "
        "grades outputs Good/Bad with reasons, corrects them, and grows criteria whose automatic "
        "checks are aligned to the grades (EvalGen coverage / false failure rate).",
    )
    parser.add_argument(
        "run_dir",
        nargs="?",
        metavar="RUN_DIR",
        default=None,
        help="a run folder (program.json + settings.yaml or run.json) from dspy-ext compile",
    )
    add_experiment_args(parser)
    group = parser.add_argument_group("review")
    group.add_argument(
        "--state",
        metavar="PATH",
        default=None,
        help="a DSPy program state saved with program.save('x.json'), loaded into --program",
    )
    group.add_argument(
        "--inputs",
        metavar="FILE",
        default=None,
        help="unlabelled JSONL, one object per line with the input fields (instead of the split)",
    )
    group.add_argument("--split", default="test", choices=["train", "test"], help="split to take inputs from")
    group.add_argument("--n", type=int, default=20, help="inputs to run (default 20)")
    group.add_argument("--samples", type=int, default=1, help="outputs per input, K (default 1)")
    group.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="sampling temperature (default: 0.7 when --samples > 1, else the LM's)",
    )
    group.add_argument(
        "--store",
        metavar="PATH",
        default=None,
        help=f"SQLite review store (default: RUN_DIR/{STORE_FILE}, or runs/review-TASK.sqlite)",
    )
    group.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default 0: a free port)")
    group.add_argument("--open", action="store_true", help="open the page in the default browser")
    group.add_argument(
        "--serve-seconds", type=float, default=None, help="stop serving after this many seconds (default: until Ctrl-C)"
    )
    group.add_argument("--no-serve", action="store_true", help="collect outputs into the store, do not serve")
    group.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"highest false failure rate of a chosen check (default {DEFAULT_THRESHOLD})",
    )
    group.add_argument("--report", action="store_true", help="print the alignment report and exit")
    group.add_argument("--export", metavar="FILE", default=None, help="write all labels as JSONL and exit")
    group.add_argument(
        "--import",
        dest="import_file",
        metavar="FILE",
        default=None,
        help="read labels from JSONL (e.g. from another tool) and exit",
    )
    group.add_argument("--overwrite", action="store_true", help="with --import: replace grades already stored")
    group.add_argument(
        "--changed",
        action="store_true",
        help="open on the outputs the newest prompt version changed (automatic for a RUN_DIR compiled with --feedback)",
    )
    add_output_args(parser)
    parser.set_defaults(func=main)


def _has_task_flags(args: argparse.Namespace) -> bool:
    return any(hasattr(args, name) for name in ("task", "data")) or bool(getattr(args, "config", None))


def _review_store_of_run(run_dir: str) -> str | None:
    """The review store a run was compiled from (``--feedback``), if any."""
    try:
        settings = open_run(run_dir).settings
    except ComponentError:
        return None  # _load_program reports the folder's problem
    return settings.feedback if settings is not None else None


def _store_path(args: argparse.Namespace) -> Path:
    if args.store:
        return Path(args.store)
    if args.run_dir:
        # A run compiled from a review goes back to that review: its grades carry over to unchanged outputs.
        return Path(_review_store_of_run(args.run_dir) or Path(args.run_dir) / STORE_FILE)
    name = getattr(args, "task", None) or (Path(args.data).stem if getattr(args, "data", None) else None)
    if name:
        return Path("runs") / f"review-{name}.sqlite"
    raise CLIError("give a RUN_DIR, --task/--data with a program, or --store FILE")


class _Program:
    """The program to review with its LM, adapter, task and rows."""

    def __init__(self, program: Any, components: Any, rows: list[Any], title: str) -> None:
        self.program, self.components, self.rows, self.title = program, components, rows, title


def _reviewed_inputs(store: ReviewStore, input_keys: list[str], output_keys: list[str]) -> list[dict[str, Any]]:
    """The inputs of the graded outputs in ``store`` (each once, with its gold output when known)."""
    rows: dict[str, dict[str, Any]] = {}
    for item in store.items():
        if item.grade is None or item.input_id in rows or set(item.inputs) != set(input_keys):
            continue
        gold = {k: v for k, v in (item.gold or {}).items() if k in output_keys}
        rows[item.input_id] = {**item.inputs, **gold}
    return list(rows.values())


def _load_program(args: argparse.Namespace, store: ReviewStore | None = None) -> _Program:
    if args.run_dir:
        opened = open_run(args.run_dir)
        components = opened.components(lm=getattr(args, "injected_lm", None))
        program = opened.program(components)
        title = f"{components.task.name} · {Path(args.run_dir).name}"
    else:
        settings = load_settings(args, ExperimentSettings)
        components = build_components(settings, lm=getattr(args, "injected_lm", None))
        program = build_student(settings, components.task)
        if args.state:
            state = Path(args.state)
            if not state.is_file():
                raise CLIError(f"--state {state}: no such file")
            if state.suffix.lower() == ".pkl":
                raise CLIError(f"--state {state}: refusing to load a pickle; save with program.save('x.json')")
            load_program_state(program, state, settings.program)
        title = f"{components.task.name} · {settings.program}"
    task = components.task
    from_review = bool(
        args.run_dir and not args.inputs and not args.store and store is not None and _review_store_of_run(args.run_dir)
    )
    if args.inputs:
        rows = load_inputs_jsonl(args.inputs, task.input_keys)[: args.n]
    elif from_review:
        # Every reviewed input, whatever --n: the point is to see what the compile changed on them.
        rows = _reviewed_inputs(store, list(task.input_keys), list(task.output_keys))
    else:
        rows = list(task.test if args.split == "test" else task.train)[: args.n]
    if not rows:
        raise CLIError(f"no inputs: split {args.split!r} of task {task.name!r} is empty")
    return _Program(program, components, rows, title)


def main(args: argparse.Namespace) -> int:
    """Run ``dspy-ext review`` (see the module docstring)."""
    if args.n < 1:
        raise CLIError("--n must be >= 1")
    if args.samples < 1:
        raise CLIError("--samples must be >= 1")
    if args.temperature is not None and args.temperature < 0:
        raise CLIError("--temperature must be >= 0")
    if not 0 <= args.port <= 65535:
        raise CLIError("--port must be between 0 and 65535")
    if not 0.0 <= args.threshold <= 1.0:
        raise CLIError("--threshold must be between 0 and 1")
    if args.run_dir and _has_task_flags(args):
        raise CLIError("give either RUN_DIR or --task/--data/--config, not both")
    if args.run_dir and args.state:
        raise CLIError("--state is for --task/--data; a RUN_DIR has its own program.json")
    try:
        store = ReviewStore(_store_path(args))
    except ReviewError as exc:
        raise CLIError(str(exc)) from None
    except Exception as exc:  # sqlite3.DatabaseError: not a database file, no permission, ...
        raise CLIError(f"{_store_path(args)}: cannot open the review store: {exc}") from None
    try:
        if args.import_file or args.export or args.report:
            return _store_actions(args, store)
        return _collect_and_serve(args, store)
    finally:
        store.close()


def _store_actions(args: argparse.Namespace, store: ReviewStore) -> int:
    say, result = args.console, {"store": store.path}
    try:
        if args.import_file:
            if not Path(args.import_file).is_file():
                raise CLIError(f"--import {args.import_file}: no such file")
            summary = store.import_jsonl(args.import_file, overwrite=args.overwrite)
            result["import"] = asdict(summary)
            if not args.json:
                print(
                    f"imported {summary.rows} rows from {args.import_file}: {summary.added_items} new outputs, "
                    f"{summary.graded} grades, {summary.skipped_graded} already graded (kept)",
                    file=say,
                )
        if args.export:
            count = store.export_jsonl(args.export)
            result["export"] = {"path": args.export, "rows": count}
            if not args.json:
                print(f"exported {count} rows to {args.export}", file=say)
    except ReviewError as exc:
        raise CLIError(str(exc)) from None
    if args.report:
        report = align(store, args.threshold)
        result["report"] = report.to_dict()
        if not args.json:
            _print_report(report, say)
    if args.json:
        emit_json(result, say)
    return 0


def _print_report(report: Any, say: Any) -> None:
    print(
        f"{report.reviewed}/{report.total} outputs reviewed; chosen check: best coverage with false failure "
        f"rate <= {report.threshold:.0%}",
        file=say,
    )
    if not report.criteria:
        print("no criteria yet", file=say)
    for entry in report.criteria:
        print(f"\n{entry.name} (v{entry.version}, {entry.labelled} labelled): {entry.description}", file=say)
        for c in entry.candidates:
            coverage = f"{c.coverage:.0%}" if c.coverage is not None else "n/a"
            ffr = f"{c.false_failure_rate:.0%}" if c.false_failure_rate is not None else "n/a"
            mark = "  <- chosen" if c.chosen else ""
            print(
                f"  {c.check:40s} coverage {coverage:>4} ({c.failed_bad}/{c.n_bad})  false failures {ffr:>4} "
                f"({c.failed_good}/{c.n_good}){mark}",
                file=say,
            )


@dataclass
class _Session:
    """What the page is served with: the program's LM and adapter, the title, what was collected.

    Attributes:
        lm: The program's LM (``None`` for a store alone: no LM actions on the page).
        adapter: Its adapter.
        title: The page header's title.
        collected: The collect summary as JSON data (``None`` when nothing was collected).
        changed_since: The prompt version whose changed outputs the page opens on, if any.
    """

    lm: Any = None
    adapter: Any = None
    title: str = ""
    collected: dict[str, Any] | None = None
    changed_since: str | None = None


def _collect_and_serve(args: argparse.Namespace, store: ReviewStore) -> int:
    say = args.console
    session = _collect_outputs(args, store) if args.run_dir or _has_task_flags(args) else _store_alone(args, store)
    changed = _changed_outputs(args, store, session)
    reviewed, total = store.progress()
    status = {
        "store": store.path,
        "reviewed": reviewed,
        "total": total,
        "collect": session.collected,
        "changed": len(changed),
    }
    if args.no_serve:
        if args.json:
            emit_json(status, say)
        return 0
    if total == 0:
        raise CLIError(f"{store.path}: the store has no outputs to review (give a program to collect some)")
    app = ReviewApp(
        store,
        lm=session.lm,
        adapter=session.adapter,
        seed=getattr(args, "seed", 0),
        threshold=args.threshold,
        title=session.title,
        changed_since=session.changed_since,
    )
    _serve(args, app, status)
    return 0


def _store_alone(args: argparse.Namespace, store: ReviewStore) -> _Session:
    """A store served without a program: its own title, and with ``--changed`` its newest prompt version."""
    if not args.store:
        raise CLIError("give a RUN_DIR, --task/--data with a program, or --store FILE")
    changed_since = store.latest_prompt_version() if args.changed else None
    return _Session(title=store.get_meta("title") or "", changed_since=changed_since)


def _collect_outputs(args: argparse.Namespace, store: ReviewStore) -> _Session:
    """Run the named program on its inputs into ``store`` and say what was collected."""
    try:
        loaded = _load_program(args, store)
    except (ComponentError, ReviewError) as exc:
        raise CLIError(str(exc)) from None
    components = loaded.components
    store.set_meta("title", loaded.title)
    summary = _run_collect(args, store, loaded)
    for error in summary.errors[:5]:
        print(f"dspy-ext review: warning: {error}", file=sys.stderr)
    if not args.json:
        print(
            f"{summary.inputs} inputs x {summary.samples} samples: {summary.new_outputs} new outputs, "
            f"{summary.reused} already in the store, {len(summary.errors)} failed "
            f"(prompt version {summary.prompt_version})",
            file=args.console,
        )
    return _Session(components.lm, components.adapter, loaded.title, asdict(summary), summary.prompt_version)


def _run_collect(args: argparse.Namespace, store: ReviewStore, loaded: _Program) -> CollectSummary:
    """:func:`collect` in the program's context, with a progress line on a terminal's stderr."""
    components = loaded.components
    progress = sys.stderr.isatty()

    def report_progress(done: int, total: int) -> None:
        if progress:
            print(f"\rcollecting outputs {done}/{total}", end="", file=sys.stderr, flush=True)

    with components.context():
        summary = collect(
            loaded.program,
            loaded.rows,
            store=store,
            input_keys=components.task.input_keys,
            output_keys=components.task.output_keys,
            samples=args.samples,
            temperature=args.temperature,
            on_progress=report_progress,
        )
    if progress:
        print(file=sys.stderr)
    return summary


def _changed_outputs(args: argparse.Namespace, store: ReviewStore, session: _Session) -> dict[str, list[str]]:
    """The outputs changed since ``session.changed_since``; without any (and no ``--changed``) the ordinary page."""
    changed = store.changed_outputs(session.changed_since) if session.changed_since else {}
    if not changed and not args.changed:
        session.changed_since = None  # nothing changed (or a first review): the ordinary page
    if session.collected is not None:
        session.collected["changed"] = len(changed)
    if session.changed_since and not args.json:
        print(
            f"{len(changed)} outputs changed since the reviewed prompt version; unchanged outputs keep their grades",
            file=args.console,
        )
    return changed


def _serve(args: argparse.Namespace, app: ReviewApp, status: dict[str, Any]) -> None:
    """Serve ``app`` until Ctrl-C or ``--serve-seconds``, printing (or emitting as JSON) its URL."""
    say = args.console
    try:
        server = ReviewServer(app, port=args.port)
    except OSError as exc:
        raise CLIError(str(exc)) from None
    server.start()
    try:
        if args.json:
            emit_json({"url": server.url, **status}, say)
        else:
            print(f"review {status['reviewed']}/{status['total']} done · store {status['store']}", file=say)
            print(f"open {server.url}", file=say, flush=True)
            print("(Ctrl-C stops; the review resumes where it stopped)", file=say, flush=True)
        if args.open:
            webbrowser.open(server.url)
        deadline = None if args.serve_seconds is None else time.monotonic() + args.serve_seconds
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
