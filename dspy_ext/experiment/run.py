"""One experiment: compile a program with an optimizer, score it on the test split, write the run folder.

A run folder holds:

* ``settings.yaml`` - the resolved :class:`RunSettings` (a run file: ``dspy-ext compile --config`` reproduces it);
* ``program.json`` - the compiled program's DSPy state;
* ``run.json`` - settings, scores, LM calls, tokens, time, the search summary;
* ``report.md`` - the best instruction and demos of every predictor, and the figures;
* ``trials.jsonl`` - one row per evaluated candidate (dspy-ext's optimizers);
* ``calls.jsonl`` - every LM reply of the compile (:mod:`dspy_ext.lm.journal`);
* ``resume.json`` - what the journal belongs to (settings and data fingerprints).

Every file is written atomically, and a lock file keeps two processes out of one folder.

**Resuming.** Running the same settings into the same folder again resumes an interrupted compile: the
calls it made are replayed from ``calls.jsonl`` (charged to the budget, so the total never exceeds it) and
only the rest reach the model; with a deterministic model the result is the one an uninterrupted run gives.
Other settings or data in the same folder are an error, unless ``restart=True`` (``--restart``).
:func:`~dspy_ext.experiment.folder.open_run` reads a run folder back (settings, components, the compiled
program), so commands that take a run folder need no ``--task``/``--program``/``--metric`` again.

Example:
    >>> from dspy_ext.experiment import RunSettings, run
    >>> result = run(RunSettings(task="sentiment", optimizer="ape", budget=60, out="runs/demo"))  # doctest: +SKIP
    >>> result.summary["test_score"], result.out                                                  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy

from dspy_ext.data import dataset_fingerprint, split_train_val
from dspy_ext.evaluation import EvaluationReport, Evaluator
from dspy_ext.experiment.components import Components, build_components, build_student, labeled_demos
from dspy_ext.experiment.folder import (
    JOURNAL_FILE,
    PROGRAM_FILE,
    REPORT_FILE,
    SETTINGS_FILE,
    SUMMARY_FILE,
    claim_folder,
    program_state_json,
)
from dspy_ext.experiment.projection import Projection, project
from dspy_ext.experiment.report import criteria_summary, render_report, review_summary
from dspy_ext.experiment.settings import RunSettings, SettingsError
from dspy_ext.files import RunFolderLock, atomic_write_text
from dspy_ext.lm.engine import MeteredEngine
from dspy_ext.lm.journal import journaled
from dspy_ext.lm.metering import MAX_FAILURES_IN_A_ROW, CallMeter, ModelUnavailable, metering
from dspy_ext.lm.served import metered_lm
from dspy_ext.prompt_state import predictors, short_hash
from dspy_ext.registry import OptimizerHandle, build_optimizer

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What :func:`run` produced.

    Attributes:
        settings: The resolved settings (as stored in ``settings.yaml``).
        summary: What ``run.json`` holds; ``lm_calls``, ``tokens`` and ``seconds`` are the compile's alone.
        program: The compiled program.
        test: The compiled program on the test split.
        baseline: The student with labeled demos (the baseline a user has for free) on the test split.
        val: The compiled program on the validation rows.
        out: The run folder.
    """

    settings: RunSettings
    summary: dict[str, Any]
    program: dspy.Module
    test: EvaluationReport
    baseline: EvaluationReport
    val: EvaluationReport
    out: Path


def run(
    settings: RunSettings,
    *,
    components: Components | None = None,
    lm: dspy.BaseLM | None = None,
    evaluator: Evaluator | None = None,
    restart: bool = False,
    progress: bool = False,
) -> RunResult:
    """Compile, score on the test split, and write the run folder ``settings.out``.

    Args:
        settings: What to run.
        components: Task, LM, adapter and metric already built (``dspy-ext compare`` shares them
            across cells); default: built from ``settings``.
        lm: An LM to use instead of ``make_lm(settings.lm)`` (ignored with ``components``).
        evaluator: The evaluator of the test, baseline and val scores (shared to reuse its score
            cache across runs); default: a new one.
        restart: Start over in a folder that holds a run with other settings or data (its files are
            replaced); without it, such a folder is an error.
        progress: Show progress bars on stderr.

    Returns:
        A :class:`RunResult`.

    Raises:
        SettingsError: Train/val sizes the task cannot give, or a folder holding another run (see ``restart``).
        RunFolderLocked: Another live process is writing the same run folder.
    """
    components = components or build_components(settings, lm=lm)
    task = components.task
    student = build_student(settings, task)
    train, val = _split(settings, task.train)
    metric = components.metric
    merged = _merge_review(settings, components, train, val) if settings.feedback else None
    if merged is not None:
        metric, train = merged.metric, merged.train
    out = Path(settings.out) if settings.out else settings.default_out
    settings = settings.with_changes(out=str(out))
    out.mkdir(parents=True, exist_ok=True)
    with RunFolderLock(out):
        # The folder is the run's by definition, and the compile reads its journal whatever the cache flag says.
        identity = {
            "settings": settings.model_dump(mode="json", exclude={"out", "cache", "allow_unmetered"}),
            "lm": getattr(components.lm, "model", None),
            "adapter": components.adapter_name,
            "train_val": dataset_fingerprint(train + val),
            "test": dataset_fingerprint(task.test),
            "student": short_hash(program_state_json(student)),
        }
        if merged is None:
            identity["settings"].pop("feedback", None)  # run folders from before --feedback existed still resume
        else:
            identity["feedback"] = merged.feedback.fingerprint  # a changed review is another run
        claim_folder(out, identity, restart=restart)
        atomic_write_text(out / SETTINGS_FILE, settings.to_yaml())
        # The compile's LM reads DSPy's response cache, which is the run's call journal while it runs.
        lm = components.lm if getattr(components.lm, "cache", True) else components.lm.copy(cache=True)
        lm = metered_lm(lm)  # the budget and the journal hold on any dspy.LM
        _check_metered(lm, settings)
        guards = (merged.guards if merged is not None else settings.guards) or {}
        with components.context(lm=lm):
            optimizer = _build_optimizer(settings, metric, train, val, merged, log_dir=str(out), progress=progress)
            projection = _project(settings, optimizer, student, train, lm)
        # The optimizer's own meter caps the calls; this one caps the dollars and stops a model that stopped answering.
        meter = CallMeter(max_cost=settings.max_cost, max_failures_in_a_row=MAX_FAILURES_IN_A_ROW)
        started = time.perf_counter()
        with components.context(lm=lm), journaled(out / JOURNAL_FILE) as journal, metering(meter):
            compiled = optimizer.compile(student, trainset=train, valset=val)
        compile_seconds = time.perf_counter() - started
        usage = meter.snapshot()
        if meter.outage is not None:
            _stop(out, settings, compiled, meter, projection, compile_seconds, meter.outage)
        if journal.earlier_calls:
            logger.info(
                "%s: resumed; %d of %d calls replayed from %s", out, journal.replayed_calls, usage.calls, JOURNAL_FILE
            )

        if evaluator is None or evaluator.metric is not metric:
            # With review criteria the metric is this run's own: a shared evaluator's cache holds other scores.
            evaluator = Evaluator(metric, num_threads=settings.threads, progress=progress)
        # The honest baseline is what a user has for free: the student with labeled demos (0 LM calls to build).
        labeled = labeled_baseline(student, train, settings.seed)
        rollouts = {"repeats": settings.repeats, "temperature": settings.eval_temperature}
        # Scoring runs on the metered LM too, so a model that stops answering stops it rather than every row.
        scoring = CallMeter(max_failures_in_a_row=MAX_FAILURES_IN_A_ROW)
        with components.context(lm=metered_lm(components.lm)), metering(scoring):
            test = evaluator.evaluate(compiled, task.test, desc="test", **rollouts)
            baseline = evaluator.evaluate(labeled, task.test, desc="labeled-demo baseline test", **rollouts)
            zero_shot = evaluator.evaluate(student, task.test, desc="zero-shot test", **rollouts)
            val_report = evaluator.evaluate(compiled, val, desc="val", **rollouts)
            # The per-criterion table on val compares against the student, as the guards do.
            student_val = (
                evaluator.evaluate(student, val, desc="student val", **rollouts)
                if guards or test.criteria_names
                else None
            )
        if scoring.outage is not None:
            _stop(out, settings, compiled, meter, projection, compile_seconds, scoring.outage)
        result = getattr(compiled, "dspy_ext_result", None)
        summary = {
            "task": task.name,
            "program": settings.program,
            "metric": settings.metric,
            "optimizer": settings.optimizer,
            "seed": settings.seed,
            "budget": settings.budget,
            "budget_enforced": optimizer.enforces_budget and isinstance(getattr(lm, "engine", None), MeteredEngine),
            "config": optimizer.config.model_dump(),
            "lm": getattr(components.lm, "model", str(components.lm)),
            "adapter": components.adapter_name,
            "train": len(train),
            "val": len(val),
            "test": len(task.test),
            "val_score": round(val_report.score, 2),
            "test_score": round(test.score, 2),
            "baseline_test_score": round(baseline.score, 2),
            "baseline": f"the student with {LABELED_BASELINE_DEMOS} labeled demos per predictor (0 LM calls)",
            "zero_shot_test_score": round(zero_shot.score, 2),
            **_spend(meter, projection),
            "max_cost": settings.max_cost,
            "cost_cap_reached": settings.max_cost is not None and usage.cost >= settings.max_cost,
            "seconds": round(compile_seconds, 2),
            "budget_exhausted": bool(result and result.budget_exhausted),
            "replayed_calls": journal.replayed_calls,
            "test_errors": test.errors,
            "data_hash": dataset_fingerprint(train + val),
            "out": str(out),
        }
        if result is not None:
            summary["search"] = result.to_dict()
        summary.update(
            criteria_summary(
                test=(zero_shot, test, task.test), val=(student_val, val_report, val), guards=guards, compiled=compiled
            )
        )
        if merged is not None:
            with components.context():
                pinned = merged.feedback.check_pinned(
                    compiled,
                    input_keys=task.input_keys,
                    output_keys=task.output_keys,
                    evaluator_threads=settings.threads,
                )
            review = review_summary(merged, pinned, test, zero_shot, settings.metric.rpartition(":")[2])
            table = review.pop("criteria")
            if not summary.get("criteria"):  # the run's own table is kept; a one-number metric gets the review's
                summary["criteria"] = table
            summary.update(review)
        _write_results(out, compiled, summary)
        atomic_write_text(out / REPORT_FILE, render_report(summary, compiled))
    return RunResult(settings, summary, compiled, test, baseline, val_report, out)


def _build_optimizer(
    settings: RunSettings,
    metric: Any,
    train: list[dspy.Example],
    val: list[dspy.Example],
    merged: Any,
    *,
    log_dir: str | None,
    progress: bool,
) -> OptimizerHandle:
    """The run's optimizer, with the review's guards and critiques where ``merged`` has them."""
    review_kwargs = {"guards": merged.guards, "feedback": merged.critiques} if merged is not None else {}
    return build_optimizer(
        settings.optimizer,
        metric,
        config=settings.optimizer_config,
        budget=settings.budget,
        seed=settings.seed,
        num_threads=settings.threads,
        n_train=len(train),
        n_val=len(val),
        log_dir=log_dir,
        progress=progress,
        repeats=settings.repeats,
        temperature=settings.eval_temperature,
        **{**review_kwargs, "guards": review_kwargs.get("guards", settings.guards) or {}},
    )


def dry_run(
    settings: RunSettings, *, components: Components | None = None, lm: dspy.BaseLM | None = None
) -> Projection:
    """What compiling ``settings`` is expected to spend (calls, tokens, USD by role); no model call is made.

    The endpoint of a served model is checked (``GET /models``, nothing spent) as for a real run, and no
    run folder is written. A review store (``feedback``) is not merged: the projection is the plain run's.

    Raises:
        SettingsError: Train/val sizes the task cannot give.
    """
    components = components or build_components(settings, lm=lm)
    student = build_student(settings, components.task)
    train, val = _split(settings, components.task.train)
    model = metered_lm(components.lm)
    with components.context(lm=model):
        optimizer = _build_optimizer(settings, components.metric, train, val, None, log_dir=None, progress=False)
        return _project(settings, optimizer, student, train, model)


def _split(settings: RunSettings, rows: list[dspy.Example]) -> tuple[list[dspy.Example], list[dspy.Example]]:
    """The run's train and val rows (see :func:`~dspy_ext.data.split_train_val`).

    Raises:
        SettingsError: Sizes the task cannot give.
    """
    try:
        return split_train_val(rows, settings.train, settings.val, seed=settings.seed)
    except ValueError as exc:
        raise SettingsError(f"invalid settings: {exc}") from None


def _project(
    settings: RunSettings, optimizer: OptimizerHandle, student: dspy.Module, train: list[dspy.Example], lm: Any
) -> Projection:
    """What ``optimizer`` is expected to spend compiling ``student`` (inside the run's context)."""
    return project(
        optimizer.plan(student), student=student, train=train, lm=lm, budget=settings.budget, seed=settings.seed
    )


def _check_metered(lm: dspy.BaseLM, settings: RunSettings) -> None:
    """Refuse a budget on an LM whose calls cannot be counted, unless ``settings.allow_unmetered``."""
    if settings.allow_unmetered or isinstance(getattr(lm, "engine", None), MeteredEngine):
        return
    raise SettingsError(
        f"invalid settings: the LM {getattr(lm, 'model', type(lm).__name__)!r} does not run on a metered engine, so "
        f"the budget of {settings.budget} calls cannot be kept and no call can be counted; use a dspy.LM on one of "
        "DSPy's engines (or an engine of dspy-ext), or pass --allow-unmetered (allow_unmetered: true) to run anyway"
    )


def _spend(meter: CallMeter, projection: Projection) -> dict[str, Any]:
    """The compile's calls, tokens and USD, in all and by role, with what was projected: ``run.json`` fields."""
    usage = meter.snapshot()
    return {
        "lm_calls": usage.calls,
        "failed_calls": usage.failed_calls,
        "tokens": usage.total_tokens,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "usd": usage.usd,
        "by_role": _by_role(meter),
        "projection": projection.to_dict(),
    }


def _by_role(meter: CallMeter) -> dict[str, dict[str, Any]]:
    return {
        role: {
            "calls": u.calls,
            "failed_calls": u.failed_calls,
            "input_tokens": u.input_tokens,
            "output_tokens": u.output_tokens,
            "usd": u.usd,
        }
        for role, u in meter.by_role().items()
    }


def _stop(
    out: Path,
    settings: RunSettings,
    compiled: dspy.Module,
    meter: CallMeter,
    projection: Projection,
    seconds: float,
    outage: ModelUnavailable,
) -> None:
    """Keep the best program so far and a ``run.json`` that says why the run stopped (no test scores); raise.

    Raises:
        ModelUnavailable: Always, naming ``program.json``.
    """
    summary = {
        "task": settings.task,
        "optimizer": settings.optimizer,
        "seed": settings.seed,
        "stopped": str(outage),
        **_spend(meter, projection),
        "seconds": round(seconds, 2),
        "out": str(out),
    }
    _write_results(out, compiled, summary)
    raise ModelUnavailable(outage.failures, outage.last_error, out=out / PROGRAM_FILE)


def _write_results(out: Path, compiled: dspy.Module, summary: dict[str, Any]) -> None:
    """``program.json`` and ``run.json`` of the run folder (each written atomically)."""
    atomic_write_text(out / PROGRAM_FILE, json.dumps(program_state_json(compiled), indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2, default=str) + "\n")


def _merge_review(
    settings: RunSettings, components: Components, train: list[dspy.Example], val: list[dspy.Example]
) -> Any:
    """The run's train rows, metric, guards and critiques with the review store ``settings.feedback`` merged in.

    Raises:
        SettingsError: The store cannot be read or was made for other fields (one line naming it).
    """
    from dspy_ext.experiment.feedback import merge_feedback
    from dspy_ext.registry import get_spec
    from dspy_ext.review.feedback import Feedback, FeedbackError

    try:
        review = Feedback.from_store(str(settings.feedback))
        return merge_feedback(
            review,
            metric=components.metric,
            metric_name=settings.metric.rpartition(":")[2],
            task=components.task,
            train=train,
            val=val,
            guards=settings.guards,
            optimizer_uses_critiques=get_spec(settings.optimizer).uses_feedback,
        )
    except (FeedbackError, ValueError) as exc:
        raise SettingsError(f"invalid settings: feedback: {exc}") from None


#: Labeled demos per predictor of the baseline a user gets for free.
LABELED_BASELINE_DEMOS = 3


def labeled_baseline(student: dspy.Module, train: list[dspy.Example], seed: int) -> dspy.Module:
    """The student with :data:`LABELED_BASELINE_DEMOS` labeled training demos per predictor, drawn with ``seed``."""
    program = student.deepcopy()
    demos = labeled_demos(train, min(LABELED_BASELINE_DEMOS, len(train)), seed)
    for _, predictor in predictors(program):
        predictor.demos = list(demos)
    return program
