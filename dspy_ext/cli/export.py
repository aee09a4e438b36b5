"""``dspy-ext export``: write a program's prompts as a JSON artifact, optionally verify it.

``RUN_OR_PROGRAM`` is a program state saved with ``program.save("x.json")`` or
a run folder holding ``program.json`` (and optionally ``run.json`` with
metadata such as the optimizer, its settings, the seed and scores). The state
is loaded into the program built by ``--program`` for the task (with the
task's baseline instruction), exactly as ``evaluate`` builds it. Pickles are
never loaded.

With ``--verify`` the artifact is read back from disk and the program is
scored twice on the chosen split: in DSPy, and with every predictor call going
through the artifact's runtime (runtime render -> ``lm(messages=...)`` ->
runtime parse -> metric). The command exits 1 when the scores differ by more
than ``--tolerance`` points.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import dspy

from dspy_ext.cli.common import (
    CLIError,
    add_model_args,
    add_output_args,
    add_task_args,
    build_student,
    emit_json,
    format_errors,
    setup_run,
)
from dspy_ext.data import dataset_fingerprint
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
    parser.add_argument("source", metavar="RUN_OR_PROGRAM",
                        help="a program state saved with program.save('x.json'), or a run folder holding "
                             "program.json (and optionally run.json)")
    parser.add_argument("--out", required=True, help="artifact file to write (.json); the Markdown view is "
                                                     "written next to it with .md")
    add_task_args(parser)
    add_model_args(parser)
    parser.add_argument("--verify", action="store_true",
                        help="re-score through the runtime and compare with the DSPy score (exit 1 on a mismatch)")
    parser.add_argument("--split", default="test", choices=["train", "test"], help="split to verify on")
    parser.add_argument("--limit", type=int, default=None, help="verify on the first N rows only")
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="allowed score difference in points (default 0: a greedy local model must agree)")
    add_output_args(parser)
    parser.set_defaults(func=run)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CLIError(f"{path}: {what} is not UTF-8 text (a pickle? pickles are never loaded)") from None
    except json.JSONDecodeError as exc:
        raise CLIError(f"{path}: {what} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None


def resolve_source(source: Path) -> tuple[Path, dict[str, Any]]:
    """Find the program state file and the run metadata of ``RUN_OR_PROGRAM``.

    Args:
        source: A ``.json`` program state or a run folder.

    Returns:
        ``(program_json_path, run_info)``; ``run_info`` is ``{}`` without ``run.json``.

    Raises:
        CLIError: Missing files, a pickle, or a non-JSON file.

    Example:
        >>> resolve_source(Path("runs/sentiment-mipro"))   # doctest: +SKIP
        (PosixPath('runs/sentiment-mipro/program.json'), {'optimizer': 'MIPROv2', ...})
    """
    if not source.exists():
        raise CLIError(f"{source}: no such file or folder")
    if source.is_dir():
        program_path = source / "program.json"
        if not program_path.is_file():
            pickles = sorted(p.name for p in source.glob("*.pkl"))
            hint = f" (it has {pickles}: pickles are never loaded; save with program.save('program.json'))" \
                if pickles else ""
            raise CLIError(f"{source}: the run folder has no program.json{hint}")
        run_info: dict[str, Any] = {}
        run_path = source / "run.json"
        if run_path.is_file():
            run_info = _read_json(run_path, "run.json")
            if not isinstance(run_info, dict):
                raise CLIError(f"{run_path}: expected a JSON object")
        return program_path, run_info
    if source.suffix.lower() == ".pkl":
        raise CLIError(f"{source}: refusing to load a pickle (loading one can run arbitrary code); "
                       "save the program state with program.save('program.json') and export that")
    if source.suffix.lower() != ".json":
        raise CLIError(f"{source}: expected a program state .json file or a run folder")
    return source, {}


def load_program_state(program: dspy.Module, path: Path, program_name: str) -> None:
    """Load a ``program.save("x.json")`` state into ``program``, after checking it fits.

    Args:
        program: The freshly built program.
        path: The state file.
        program_name: The ``--program`` name, for messages.

    Raises:
        CLIError: Not JSON, predictors or field counts that do not match the program.
    """
    state = _read_json(path, "the program state")
    if not isinstance(state, dict):
        raise CLIError(f"{path}: expected a JSON object saved with program.save('x.json')")
    saved = sorted(k for k in state if k != "metadata")
    expected = [name for name, _ in program.named_parameters()]
    if saved != sorted(expected):
        raise CLIError(f"{path} holds predictors {saved}, but --program {program_name} has {expected}; "
                       "pass the --program and task the program was compiled with")
    for name, predictor in program.named_parameters():
        entry = state[name]
        fields = entry.get("signature", {}).get("fields") if isinstance(entry, dict) else None
        if not isinstance(fields, list) or len(fields) != len(predictor.signature.fields):
            count = len(fields) if isinstance(fields, list) else "no"
            raise CLIError(f"{path}: predictor {name!r} has {count} saved fields, the program's has "
                           f"{len(predictor.signature.fields)} ({list(predictor.signature.fields)})")
    versions = (state.get("metadata") or {}).get("dependency_versions") or {}
    if versions.get("dspy") and versions["dspy"] != dspy.__version__:
        logger.warning("%s was saved with dspy %s; this is dspy %s", path, versions["dspy"], dspy.__version__)
    try:
        program.load_state(state)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CLIError(f"{path}: could not load the program state: {type(exc).__name__}: {exc}") from None


def run_metadata(run_info: dict[str, Any], args: argparse.Namespace, task: Any, adapter_name: str,
                 lm_model: str, program_path: Path) -> dict[str, Any]:
    """The artifact metadata for an export: ``run.json`` figures plus the task, program and source.

    Args:
        run_info: The decoded ``run.json`` (``{}`` when there is none).
        args: The parsed command line.
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
        >>> run_metadata({"optimizer": "ape", "val_score": 60.0}, args, task, "PlainAdapter", "local/m",
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
    for key, actual in (("task", task.name), ("program", args.program)):
        recorded = run_info.get(key)
        if isinstance(recorded, str) and recorded != actual:
            raise CLIError(f"run.json says the {key} is {recorded!r} but the command line gives {actual!r}")
    for key, actual in (("adapter", adapter_name), ("lm", lm_model)):
        recorded = run_info.get(key)
        if isinstance(recorded, str) and recorded != actual:
            logger.warning("the run was compiled with %s %s but is exported with %s; the artifact holds the "
                           "prompt %s would send", key, recorded, actual, actual)
    if metadata.get("data_hash") is None:
        metadata["data_hash"] = dataset_fingerprint(task.train)
    metadata.update({"task": task.name, "program": args.program, "source": str(program_path)})
    return metadata


def run(args: argparse.Namespace) -> int:
    """Run ``dspy-ext export`` (see the module docstring).

    Returns:
        0 on success, 1 when ``--verify`` finds a score difference above the tolerance.
    """
    if args.limit is not None and args.limit < 1:
        raise CLIError("--limit must be >= 1")
    if args.tolerance < 0:
        raise CLIError("--tolerance must be >= 0")
    out = Path(args.out)
    if out.suffix.lower() != ".json":
        raise CLIError(f"--out {out}: the artifact is JSON; use a .json file name")
    program_path, run_info = resolve_source(Path(args.source))
    setup = setup_run(args)
    program = build_student(args, setup.task)
    load_program_state(program, program_path, args.program)
    adapter_name = type(setup.adapter).__name__ if setup.adapter is not None else "ChatAdapter"
    metadata = run_metadata(run_info, args, setup.task, adapter_name, setup.lm.model, program_path)
    with setup.context():
        export(program, out, adapter=setup.adapter, lm=setup.lm, metadata=metadata)
    artifact = load(out)  # read back: everything below uses the file as written
    markdown = out.with_suffix(".md")
    export_markdown(artifact, markdown)
    result: dict[str, Any] = {
        "artifact": str(out), "markdown": str(markdown), "content_hash": artifact.content_hash,
        "predictors": {n: artifact.data["predictors"][n]["adapter"] for n in artifact.names},
        "task": setup.task.name, "program": args.program, "lm": setup.lm.model,
        "verified": False, "dspy_score": None, "runtime_score": None, "n": None,
    }
    report = None
    if args.verify:
        rows = setup.task.test if args.split == "test" else setup.task.train
        rows = rows[: args.limit] if args.limit else rows
        if not rows:
            raise CLIError(f"split '{args.split}' of task '{setup.task.name}' has no rows")
        with setup.context():
            report = verify(program, artifact, rows, setup.metric, tolerance=args.tolerance,
                            num_threads=args.threads, progress=sys.stderr.isatty())
        result.update({"verified": True, "split": args.split, **report.to_dict()})
    if args.json:
        emit_json(result)
    else:
        names = ", ".join(f"{n} [{a}]" for n, a in result["predictors"].items())
        print(f"wrote {out} (sha256 {artifact.content_hash[:16]}; {names}) and {markdown}")
        if report is not None:
            print(f"verify {setup.task.name}/{args.split} n={report.dspy.n_examples}: "
                  f"DSPy {report.dspy_score:.2f}%  runtime {report.runtime_score:.2f}%  "
                  f"(difference {report.difference:+.2f}, tolerance {args.tolerance:g}; "
                  f"{len(report.differing_rows)} row(s) differ)")
            print(f"errors: DSPy {format_errors(report.dspy.errors)}; runtime {format_errors(report.runtime.errors)}")
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
