"""``dspy-ext compile``: optimize a task's program and write the run folder.

The run folder holds ``program.json`` (DSPy state), ``trials.jsonl`` (one
row per evaluated candidate), ``run.json`` (settings and figures) and
``report.md`` (best instruction, demos, scores, calls, tokens, time).

:func:`run_one` is the whole of one run (draw train/val, compile, score on the
test split, write the folder); ``dspy-ext compare`` calls it once per
(optimizer, seed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy

from dspy_ext.cli.common import (
    CLIError,
    RunSetup,
    add_model_args,
    add_output_args,
    add_task_args,
    build_student,
    emit_json,
    setup_run,
)
from dspy_ext.data import dataset_fingerprint, split_train_val
from dspy_ext.evaluation import EvaluationReport, Evaluator
from dspy_ext.lm.cache import private_cache
from dspy_ext.lm.metering import CallMeter, metering
from dspy_ext.prompt_state import predictors
from dspy_ext.registry import REGISTRY, build_optimizer, resolve_config

logger = logging.getLogger(__name__)

def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("compile", help="optimize a program's prompts for a task",
                                   description="Optimize a program's instructions and demos for a task.")
    add_task_args(parser)
    add_model_args(parser)
    parser.add_argument("--optimizer", default="ape", choices=list(REGISTRY))
    parser.add_argument("--config", default=None,
                        help="optimizer settings as JSON, e.g. '{\"top_k\": 2}' (validated; unknown keys are errors)")
    parser.add_argument("--budget", type=int, default=400, help="max LM calls (hard cap for our optimizers)")
    parser.add_argument("--train", type=int, default=50, help="training rows drawn from the training file")
    parser.add_argument("--val", type=int, default=50, help="validation rows drawn from the training file")
    parser.add_argument("--out", default=None, help="run folder (default runs/TASK-OPTIMIZER-sSEED)")
    add_output_args(parser)
    parser.set_defaults(func=run)


@dataclass
class RunOutcome:
    """What :func:`run_one` produced: the ``run.json`` summary, the program and its reports."""

    summary: dict[str, Any]
    program: dspy.Module
    test: EvaluationReport
    baseline: EvaluationReport
    val: EvaluationReport


def parse_config(value: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """``--config`` as a dict (it may already be one)."""
    if value is None or isinstance(value, dict):
        return value
    try:
        config = json.loads(value)
    except json.JSONDecodeError as exc:
        raise CLIError(f"--config is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise CLIError("--config must be a JSON object")
    return config


def run_one(
    setup: RunSetup,
    settings: Any,
    out: Path,
    *,
    progress: bool = False,
    evaluator: Evaluator | None = None,
    cache_dir: Path | None = None,
) -> RunOutcome:
    """Compile one optimizer on one seed's train/val draw, score it on the test split, write ``out``.

    Args:
        setup: The task, LM, adapter and metric (the task's test split is used whole).
        settings: An argparse-like object with ``optimizer``, ``config`` (dict, JSON text or
            ``None``), ``budget``, ``seed``, ``train``, ``val``, ``threads`` and ``program``.
        out: The run folder (created): ``program.json``, ``run.json``, ``report.md`` and,
            for dspy-ext's optimizers, ``trials.jsonl``.
        progress: Show progress bars on stderr.
        evaluator: The evaluator for the test, baseline and val scores (shared to reuse its
            score cache across runs); default: a new one.
        cache_dir: Give the compile a private DSPy response cache in this folder, so that its
            LM-call count is that of the optimizer alone, not lowered by earlier runs in the
            process (default: DSPy's shared cache).

    Returns:
        A :class:`RunOutcome`; ``summary`` is what ``run.json`` holds. ``lm_calls``,
        ``tokens`` and ``seconds`` are those of the compile alone.
    """
    if settings.budget < 1:
        raise CLIError("--budget must be >= 1")
    config = parse_config(settings.config)
    task = setup.task
    train, val = split_train_val(task.train, settings.train, settings.val, seed=settings.seed)
    out.mkdir(parents=True, exist_ok=True)
    student = build_student(settings, task)
    with setup.context(), contextlib.redirect_stdout(sys.stderr):  # some constructors print (bfsrs)
        optimizer = build_optimizer(settings.optimizer, setup.metric, config=config, budget=settings.budget,
                                    seed=settings.seed, num_threads=settings.threads, n_train=len(train),
                                    n_val=len(val), log_dir=str(out), progress=progress)
    meter = CallMeter()
    started = time.perf_counter()
    # DSPy's optimizers print progress to stdout; keep stdout for our own output (--json).
    cache = private_cache(cache_dir) if cache_dir is not None else contextlib.nullcontext()
    with setup.context(), cache, metering(meter), contextlib.redirect_stdout(sys.stderr):
        compiled = optimizer.compile(student, trainset=train, valset=val)
    compile_seconds = time.perf_counter() - started
    compile_usage = meter.snapshot()

    evaluator = evaluator or Evaluator(setup.metric, num_threads=settings.threads, progress=progress)
    with setup.context():
        test = evaluator.evaluate(compiled, task.test, desc="test")
        baseline = evaluator.evaluate(student, task.test, desc="baseline test")
        val_report = evaluator.evaluate(compiled, val, desc="val")
    result = getattr(compiled, "dspy_ext_result", None)
    summary = {
        "task": task.name,
        "optimizer": settings.optimizer,
        "seed": settings.seed,
        "budget": settings.budget,
        "budget_enforced": optimizer.enforces_budget,
        "config": optimizer.config.model_dump(),
        "lm": setup.lm.model,
        "adapter": setup.adapter_name,
        "train": len(train),
        "val": len(val),
        "test": len(task.test),
        "val_score": round(val_report.score, 2),
        "test_score": round(test.score, 2),
        "baseline_test_score": round(baseline.score, 2),
        "lm_calls": compile_usage.calls,
        "tokens": compile_usage.total_tokens,
        "seconds": round(compile_seconds, 2),
        "budget_exhausted": bool(result and result.budget_exhausted),
        "test_errors": test.errors,
        "data_hash": dataset_fingerprint(train + val),
        "out": str(out),
    }
    if result is not None:
        summary["search"] = result.to_dict()
    compiled.save(str(out / "program.json"))
    (out / "run.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "report.md").write_text(render_report(summary, compiled))
    return RunOutcome(summary, compiled, test, baseline, val_report)


def run(args: argparse.Namespace) -> int:
    if args.budget < 1:
        raise CLIError("--budget must be >= 1")
    resolve_config(args.optimizer, parse_config(args.config))  # a bad --config fails before anything is loaded
    setup = setup_run(args)
    task = setup.task
    out = Path(args.out or f"runs/{task.name}-{args.optimizer}-s{args.seed}")
    show = not args.json or sys.stderr.isatty()
    summary = run_one(setup, args, out, progress=show).summary
    if args.json:
        emit_json(summary)
    else:
        print(f"{task.name} · {args.optimizer} · seed {args.seed}: test {summary['test_score']:.1f}% "
              f"(baseline {summary['baseline_test_score']:.1f}%), val {summary['val_score']:.1f}%, "
              f"{summary['lm_calls']} LM calls, {summary['seconds']:.0f} s -> {out}")
    return 0


def render_report(summary: dict[str, Any], program: dspy.Module) -> str:
    """The run's Markdown report."""
    lines = [
        f"# {summary['task']}: {summary['optimizer']} (seed {summary['seed']})",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    for key in ("val_score", "test_score", "baseline_test_score", "lm_calls", "tokens", "seconds", "budget",
                "budget_exhausted", "lm", "adapter", "train", "val", "test"):
        lines.append(f"| {key} | {summary[key]} |")
    for name, predictor in predictors(program):
        lines += ["", f"## Predictor `{name}`", "", "Instruction:", "", "> " + predictor.signature.instructions.replace(
            "\n", "\n> "), "", f"Demos ({len(predictor.demos)}):", ""]
        for demo in predictor.demos:
            data = demo.toDict() if hasattr(demo, "toDict") else dict(demo)
            lines.append("- " + "; ".join(f"{k}: {str(v)[:120]}" for k, v in data.items() if k != "augmented"))
    return "\n".join(lines) + "\n"
