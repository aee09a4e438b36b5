"""``dspy-ext export``: write a program's prompts as a JSON artifact, optionally verify it.

``RUN_OR_PROGRAM`` is a run folder written by ``dspy-ext compile`` (its
``settings.yaml`` names the task, program, metric, LM and adapter, so no
other flag is needed; flags given still override it), or a program state
saved with ``program.save("x.json")`` together with ``--task``/``--data``
and ``--program`` (or a ``--config`` run file). The state is loaded into the
program built for the task, exactly as ``compile`` built it. Pickles are
never loaded.

With ``--verify`` the artifact is read back from disk and the program is
scored twice on the chosen split: in DSPy, and with every predictor call going
through the artifact's runtime (runtime render -> ``lm(messages=...)`` ->
runtime parse -> metric). The command exits 1 when the scores differ by more
than ``--tolerance`` points.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from dspy_ext.cli.common import (
    CLIError,
    add_experiment_args,
    add_output_args,
    emit_json,
    format_errors,
    given_flags,
    load_settings,
)
from dspy_ext.data import dataset_fingerprint
from dspy_ext.experiment import (
    RunSettings,
    SettingsError,
    build_components,
    build_student,
    load_program_state,
    open_run,
)
from dspy_ext.export import export, export_markdown, load, verify

logger = logging.getLogger(__name__)

#: Artifact metadata key -> the ``run.json`` keys it is read from (first present wins).
#: ``dspy-ext compile`` writes ``config``, ``val_score`` and ``test_score``; other tools may use the
#: artifact's own names, at the top level or under ``"metadata"``.
RUN_METADATA_KEYS = {
    "optimizer": ("optimizer",),
    "optimizer_settings": ("optimizer_settings", "config"),
    "seed": ("seed",),
    "data_hash": ("data_hash",),
    "dev_score": ("dev_score", "val_score"),
    "test_score": ("test_score",),
    "baseline_test_score": ("baseline_test_score",),
    "budget": ("budget",),
    "guard_report": ("guard_report",),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` subcommand to ``subparsers``.

    Args:
        subparsers: The ``dspy-ext`` sub-command registry.

    Example:
        >>> from dspy_ext.cli import export as export_cmd
        >>> parser = argparse.ArgumentParser(); sub = parser.add_subparsers()
        >>> export_cmd.register(sub)
    """
    parser = subparsers.add_parser(
        "export",
        help="export a compiled program's prompts as a JSON artifact that runs without DSPy",
        description="Export every predictor's exact prompt (as templates), demos, output parsing, LM settings and "
        "metadata to a hashed JSON artifact, plus a Markdown view; --verify re-scores the artifact "
        "through the DSPy-free runtime next to the in-DSPy score.",
    )
    parser.add_argument(
        "source",
        metavar="RUN_OR_PROGRAM",
        help="a run folder written by 'dspy-ext compile' (its settings.yaml names the task, "
        "program and metric), or a program state saved with program.save('x.json')",
    )
    parser.add_argument(
        "--out", required=True, help="artifact file to write (.json); the Markdown view is written next to it with .md"
    )
    add_experiment_args(parser)
    parser.add_argument(
        "--verify",
        action="store_true",
        help="re-score through the runtime and compare with the DSPy score (exit 1 on a mismatch)",
    )
    parser.add_argument("--split", default="test", choices=["train", "test"], help="split to verify on")
    parser.add_argument("--limit", type=int, default=None, help="verify on the first N rows only")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="allowed score difference in points (default 0: a greedy local model must agree)",
    )
    add_output_args(parser)
    parser.set_defaults(func=main)


def read_source(source: Path, args: argparse.Namespace) -> tuple[Path, dict[str, Any], RunSettings]:
    """The program state file, the run metadata and the settings of ``RUN_OR_PROGRAM``.

    Args:
        source: A run folder, or a ``.json`` program state.
        args: The parsed command line (its flags override a run folder's settings).

    Returns:
        ``(program_json_path, run_info, settings)``; ``run_info`` is ``{}`` without ``run.json``.

    Raises:
        CLIError: Missing files, a pickle, or a non-JSON file.
    """
    if not source.exists():
        raise CLIError(f"{source}: no such file or folder")
    if source.is_dir():
        opened = open_run(source)
        if args.config is not None or opened.settings is None:
            return opened.program_file, opened.summary, load_settings(args, RunSettings)
        try:
            settings = opened.settings.with_changes(**given_flags(args, RunSettings))
        except SettingsError as exc:
            raise CLIError(str(exc)) from None
        return opened.program_file, opened.summary, settings
    if source.suffix.lower() == ".pkl":
        raise CLIError(
            f"{source}: refusing to load a pickle (loading one can run arbitrary code); "
            "save the program state with program.save('program.json') and export that"
        )
    if source.suffix.lower() != ".json":
        raise CLIError(f"{source}: expected a program state .json file or a run folder")
    return source, {}, load_settings(args, RunSettings)


def run_metadata(
    run_info: dict[str, Any], program_name: str, task: Any, adapter_name: str, lm_model: str, program_path: Path
) -> dict[str, Any]:
    """The artifact metadata for an export: ``run.json`` figures plus the task, program and source.

    Args:
        run_info: The decoded ``run.json`` (``{}`` when there is none).
        program_name: The program's name or import path.
        task: The loaded task.
        adapter_name: The adapter the artifact is exported with.
        lm_model: The model string of the configured LM.
        program_path: The program state file.

    Returns:
        Metadata for :func:`dspy_ext.export.export`; ``data_hash`` defaults to
        the fingerprint of the task's training split.

    Raises:
        CLIError: ``run.json`` names another task or program than the command line.

    Example:
        >>> run_metadata({"optimizer": "ape", "val_score": 60.0}, "transform", task, "PlainAdapter", "local/m",
        ...              Path("run/program.json"))["dev_score"]   # doctest: +SKIP
        60.0
    """
    nested = run_info.get("metadata") if isinstance(run_info.get("metadata"), dict) else {}
    metadata: dict[str, Any] = {}
    for key, sources in RUN_METADATA_KEYS.items():
        for source in sources:
            if source in run_info:
                metadata[key] = run_info[source]
                break
            if source in nested:
                metadata[key] = nested[source]
                break
    for key, actual in (("task", task.name), ("program", program_name)):
        recorded = run_info.get(key)
        if isinstance(recorded, str) and recorded != actual:
            raise CLIError(f"run.json says the {key} is {recorded!r} but the command line gives {actual!r}")
    for key, actual in (("adapter", adapter_name), ("lm", lm_model)):
        recorded = run_info.get(key)
        if isinstance(recorded, str) and recorded != actual:
            logger.warning(
                "the run was compiled with %s %s but is exported with %s; the artifact holds the prompt %s would send",
                key,
                recorded,
                actual,
                actual,
            )
    if metadata.get("data_hash") is None:
        metadata["data_hash"] = dataset_fingerprint(task.train)
    metadata.update({"task": task.name, "program": program_name, "source": str(program_path)})
    return metadata


def main(args: argparse.Namespace) -> int:
    """Run ``dspy-ext export`` (see the module docstring).

    Returns:
        0 on success, 1 when ``--verify`` finds a score difference above the tolerance.
    """
    out = _checked_out(args)
    program_path, run_info, settings = read_source(Path(args.source), args)
    setup = build_components(settings, lm=args.injected_lm)
    program = build_student(settings, setup.task)
    load_program_state(program, program_path, settings.program)
    metadata = run_metadata(run_info, settings.program, setup.task, setup.adapter_name, setup.lm.model, program_path)
    with setup.context():
        export(program, out, adapter=setup.adapter, lm=setup.lm, metadata=metadata)
    artifact = load(out)  # read back: everything below uses the file as written
    markdown = out.with_suffix(".md")
    export_markdown(artifact, markdown)
    result: dict[str, Any] = {
        "artifact": str(out),
        "markdown": str(markdown),
        "content_hash": artifact.content_hash,
        "predictors": {n: artifact.data["predictors"][n]["adapter"] for n in artifact.names},
        "task": setup.task.name,
        "program": settings.program,
        "lm": setup.lm.model,
        "verified": False,
        "dspy_score": None,
        "runtime_score": None,
        "n": None,
    }
    report = _verify(args, setup, settings, program, artifact) if args.verify else None
    if report is not None:
        result.update({"verified": True, "split": args.split, **report.to_dict()})
    if args.json:
        emit_json(result, args.console)
    else:
        _print_text(args, result, artifact, report, setup.task.name, out, markdown)
    if report is not None and not report.passed:
        rows_text = ", ".join(map(str, report.differing_rows[:10]))
        print(
            f"dspy-ext export: VERIFY FAILED: the runtime scores {report.runtime_score:.2f}% but DSPy scores "
            f"{report.dspy_score:.2f}% (difference {report.difference:+.2f} points > tolerance {args.tolerance:g}); "
            f"{len(report.differing_rows)} row(s) differ (first: {rows_text}). The exported prompt does NOT "
            "reproduce the program.",
            file=sys.stderr,
        )
        return 1
    return 0


def _checked_out(args: argparse.Namespace) -> Path:
    """The artifact path ``--out``, once ``--limit``, ``--tolerance`` and the file name are checked.

    Raises:
        CLIError: A bad flag (one line naming it).
    """
    if args.limit is not None and args.limit < 1:
        raise CLIError("--limit must be >= 1")
    if args.tolerance < 0:
        raise CLIError("--tolerance must be >= 0")
    out = Path(args.out)
    if out.suffix.lower() != ".json":
        raise CLIError(f"--out {out}: the artifact is JSON; use a .json file name")
    return out


def _verify(args: argparse.Namespace, setup: Any, settings: RunSettings, program: Any, artifact: Any) -> Any:
    """Score ``program`` in DSPy and through the artifact's runtime on ``--split`` (see :func:`verify`)."""
    rows = setup.task.test if args.split == "test" else setup.task.train
    rows = rows[: args.limit] if args.limit else rows
    if not rows:
        raise CLIError(f"split '{args.split}' of task '{setup.task.name}' has no rows")
    with setup.context():
        return verify(
            program,
            artifact,
            rows,
            setup.metric,
            tolerance=args.tolerance,
            num_threads=settings.threads,
            progress=sys.stderr.isatty(),
        )


def _print_text(
    args: argparse.Namespace,
    result: dict[str, Any],
    artifact: Any,
    report: Any,
    task_name: str,
    out: Path,
    markdown: Path,
) -> None:
    """What was written, and the verification's scores and errors."""
    names = ", ".join(f"{n} [{a}]" for n, a in result["predictors"].items())
    print(f"wrote {out} (sha256 {artifact.content_hash[:16]}; {names}) and {markdown}", file=args.console)
    if report is None:
        return
    print(
        f"verify {task_name}/{args.split} n={report.dspy.n_examples}: "
        f"DSPy {report.dspy_score:.2f}%  runtime {report.runtime_score:.2f}%  "
        f"(difference {report.difference:+.2f}, tolerance {args.tolerance:g}; "
        f"{len(report.differing_rows)} row(s) differ)",
        file=args.console,
    )
    print(
        f"errors: DSPy {format_errors(report.dspy.errors)}; runtime {format_errors(report.runtime.errors)}",
        file=args.console,
    )
