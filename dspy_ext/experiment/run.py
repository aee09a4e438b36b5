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
    >>> result.summary.scores.test, result.out                                                    # doctest: +SKIP
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
from dspy_ext.experiment.components import (
    Components,
    build_components,
    build_student,
    make_prompt_lm,
)
from dspy_ext.experiment.feedback import FeedbackMerge, merge_review_store
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
from dspy_ext.experiment.summary import ReviewFigures, RunSummary, Scores, Spend, StoppedSummary
from dspy_ext.experiment.tracking import CompileEnd, CompileStart, Tracker, open_tracker, tracked
from dspy_ext.files import RunFolderLock, atomic_write_text
from dspy_ext.lm.engine import MeteredEngine
from dspy_ext.lm.journal import journaled
from dspy_ext.lm.metering import MAX_FAILURES_IN_A_ROW, CallMeter, ModelUnavailable, metering
from dspy_ext.lm.served import metered_lm
from dspy_ext.prompt_state import compile_record, predictors, short_hash
from dspy_ext.registry import OptimizerHandle, build_optimizer, get_spec, resolve_config
from dspy_ext.search.demo_start import BASELINE_DEMOS, baseline_draw

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What :func:`run` produced.

    Attributes:
        settings: The resolved settings (as stored in ``settings.yaml``).
        summary: What ``run.json`` holds (:meth:`RunSummary.to_dict`); its spend, ``seconds`` and
            ``budget_exhausted`` are the compile's alone.
        program: The compiled program.
        test: The compiled program on the test split.
        baseline: The student with labeled demos (the baseline a user has for free) on the test split.
        val: The compiled program on the validation rows.
        out: The run folder.
    """

    settings: RunSettings
    summary: RunSummary
    program: dspy.Module
    test: EvaluationReport
    baseline: EvaluationReport
    val: EvaluationReport
    out: Path


@dataclass
class _Inputs:
    """A run's parts before the compile: the student, its rows and metric, and the review merged in."""

    components: Components
    student: dspy.Module
    train: list[dspy.Example]
    val: list[dspy.Example]
    metric: Any
    merged: FeedbackMerge | None
    #: The prompt model of its own (``settings.prompt_lm``), ``None``: the task model writes the instructions.
    prompt_lm: dspy.BaseLM | None = None


@dataclass
class _Compiled:
    """The compile's program and what it spent."""

    program: dspy.Module
    optimizer: OptimizerHandle
    lm: Any
    meter: CallMeter
    projection: Projection
    seconds: float
    replayed_calls: int


@dataclass
class _Scored:
    """The evaluations a run reports (the student's on val only when guards or criteria need it)."""

    test: EvaluationReport
    baseline: EvaluationReport
    zero_shot: EvaluationReport
    val: EvaluationReport
    student_val: EvaluationReport | None


def run(
    settings: RunSettings,
    *,
    components: Components | None = None,
    lm: dspy.BaseLM | None = None,
    prompt_lm: dspy.BaseLM | None = None,
    evaluator: Evaluator | None = None,
    restart: bool = False,
    progress: bool = False,
    tracker: Tracker | None = None,
) -> RunResult:
    """Compile, score on the test split, and write the run folder ``settings.out``; track it if asked.

    Args:
        settings: What to run.
        components: Task, LM, adapter and metric already built (``dspy-ext compare`` shares them
            across cells); default: built from ``settings``.
        lm: An LM to use instead of ``make_lm(settings.lm)`` (ignored with ``components``).
        prompt_lm: A prompt model to use instead of ``make_lm(settings.prompt_lm)``.
        evaluator: The evaluator of the test, baseline and val scores (shared to reuse its score
            cache across runs); default: a new one.
        restart: Start over in a folder that holds a run with other settings or data (its files are
            replaced); without it, such a folder is an error.
        progress: Show progress bars on stderr.
        tracker: Where the compile is tracked (default: what ``settings.tracking`` asks for, see
            :mod:`~dspy_ext.experiment.tracking`); it only reads what the run computes.

    Returns:
        A :class:`RunResult`.

    Raises:
        SettingsError: Train/val sizes the task cannot give, a folder holding another run (see ``restart``),
            or ``tracking`` without its extra installed.
        RunFolderLocked: Another live process is writing the same run folder.
    """
    tracker = tracker if tracker is not None else open_tracker(settings)
    inputs = _prepare(settings, components or build_components(settings, lm=lm), prompt_lm)
    out = Path(settings.out) if settings.out else settings.default_out
    settings = settings.with_changes(out=str(out))
    out.mkdir(parents=True, exist_ok=True)
    with RunFolderLock(out):
        claim_folder(out, _identity(settings, inputs), restart=restart)
        atomic_write_text(out / SETTINGS_FILE, settings.to_yaml())
        with tracked(tracker, _start(settings, inputs, out)):
            compiled = _compile(settings, inputs, out, progress=progress)
            scored = _score(settings, inputs, compiled, out, evaluator, progress=progress)
            summary = _summarise(settings, inputs, compiled, scored)
            _write_results(out, compiled.program, summary.to_dict())
            atomic_write_text(out / REPORT_FILE, render_report(summary, compiled.program))
            tracker.finish(CompileEnd(summary, compiled.program, out, inputs.components))
    return RunResult(settings, summary, compiled.program, scored.test, scored.baseline, scored.val, out)


def _start(settings: RunSettings, inputs: _Inputs, out: Path) -> CompileStart:
    """What the tracker is told before the compile."""
    return CompileStart(
        settings=settings,
        task=inputs.components.task.name,
        config=resolve_config(settings.optimizer, settings.optimizer_config).model_dump(mode="json"),
        data_hash=dataset_fingerprint(inputs.train + inputs.val),
        folder=out,
    )


def _prepare(settings: RunSettings, components: Components, prompt_lm: dspy.BaseLM | None = None) -> _Inputs:
    """The student, the train/val rows, the metric and the prompt model, with the review store
    ``settings.feedback`` merged in."""
    student = build_student(settings, components.task)
    train, val = _split(settings, components.task.train)
    prompt_lm = prompt_lm or make_prompt_lm(settings)
    if not settings.feedback:
        return _Inputs(components, student, train, val, components.metric, None, prompt_lm)
    merged = merge_review_store(
        settings,
        metric=components.metric,
        task=components.task,
        train=train,
        val=val,
        optimizer_uses_critiques=get_spec(settings.optimizer).takes_feedback,
    )
    return _Inputs(components, student, merged.train, val, merged.metric, merged, prompt_lm)


def _identity(settings: RunSettings, inputs: _Inputs) -> dict[str, Any]:
    """What the run folder belongs to: a folder holding another identity is another run."""
    components, task = inputs.components, inputs.components.task
    # The folder is the run's by definition, and the compile reads its journal whatever the cache flag says;
    # where the run is tracked is not what it computes.
    identity = {
        "settings": settings.model_dump(mode="json", exclude={"out", "cache", "allow_unmetered", "tracking"}),
        "lm": getattr(components.lm, "model", None),
        "adapter": components.adapter_name,
        "train_val": dataset_fingerprint(inputs.train + inputs.val),
        "test": dataset_fingerprint(task.test),
        "student": short_hash(program_state_json(inputs.student)),
    }
    for key in ("prompt_lm", "prompt_api_base", "prompt_price"):  # run folders from before --prompt-lm resume
        if identity["settings"].get(key) is None:
            identity["settings"].pop(key, None)
    if inputs.merged is None:
        identity["settings"].pop("feedback", None)  # run folders from before --feedback existed still resume
    else:
        identity["feedback"] = inputs.merged.feedback.fingerprint  # a changed review is another run
    return identity


def _compile(settings: RunSettings, inputs: _Inputs, out: Path, *, progress: bool) -> _Compiled:
    """Compile the student on the metered, journaled LM; stop (raise) when the model stops answering."""
    components = inputs.components
    lm = _journaled_lm(components.lm, settings)
    prompt_lm = _journaled_lm(inputs.prompt_lm, settings) if inputs.prompt_lm is not None else None
    with components.context(lm=lm):
        optimizer = _build_optimizer(
            settings,
            inputs.metric,
            inputs.train,
            inputs.val,
            inputs.merged,
            log_dir=str(out),
            progress=progress,
            prompt_model=prompt_lm,
        )
        projection = _project(settings, optimizer, inputs.student, inputs.train, lm, prompt_lm)
    # The optimizer's own meter caps the calls; this one caps the dollars and stops a model that stopped answering.
    meter = CallMeter(max_cost=settings.max_cost, max_failures_in_a_row=MAX_FAILURES_IN_A_ROW)
    started = time.perf_counter()
    with components.context(lm=lm), journaled(out / JOURNAL_FILE) as journal, metering(meter):
        program = optimizer.compile(inputs.student, trainset=inputs.train, valset=inputs.val)
    compiled = _Compiled(
        program, optimizer, lm, meter, projection, time.perf_counter() - started, journal.replayed_calls
    )
    if meter.outage is not None:
        _stop(out, settings, compiled, meter.outage)
    if journal.earlier_calls:
        logger.info(
            "%s: resumed; %d of %d calls replayed from %s",
            out,
            journal.replayed_calls,
            meter.snapshot().calls,
            JOURNAL_FILE,
        )
    return compiled


def _journaled_lm(lm: dspy.BaseLM, settings: RunSettings) -> dspy.BaseLM:
    """``lm`` metered (the budget and the journal hold on any ``dspy.LM``), reading DSPy's response cache,
    which is the run's call journal while the compile runs; refused if it cannot be metered."""
    lm = lm if getattr(lm, "cache", True) else lm.copy(cache=True)
    lm = metered_lm(lm)
    _check_metered(lm, settings)
    return lm


def _score(
    settings: RunSettings,
    inputs: _Inputs,
    compiled: _Compiled,
    out: Path,
    evaluator: Evaluator | None,
    *,
    progress: bool,
) -> _Scored:
    """Score the compiled program, the labeled-demo baseline and the zero-shot student; stop on an outage."""
    components, task, student, val = inputs.components, inputs.components.task, inputs.student, inputs.val
    if evaluator is None or evaluator.metric is not inputs.metric:
        # With review criteria the metric is this run's own: a shared evaluator's cache holds other scores.
        evaluator = Evaluator(inputs.metric, num_threads=settings.threads, progress=progress)
    # The honest baseline is what a user has for free: the student with labeled demos (0 LM calls to build).
    labeled = labeled_baseline(student, inputs.train, settings.seed)
    rollouts = {"repeats": settings.repeats, "temperature": settings.eval_temperature}
    # Scoring runs on the metered LM too, so a model that stops answering stops it rather than every row.
    scoring = CallMeter(max_failures_in_a_row=MAX_FAILURES_IN_A_ROW)
    with components.context(lm=metered_lm(components.lm)), metering(scoring):
        test = evaluator.evaluate(compiled.program, task.test, desc="test", **rollouts)
        baseline = evaluator.evaluate(labeled, task.test, desc="labeled-demo baseline test", **rollouts)
        zero_shot = evaluator.evaluate(student, task.test, desc="zero-shot test", **rollouts)
        val_report = evaluator.evaluate(compiled.program, val, desc="val", **rollouts)
        # The per-criterion table on val compares against the student, as the guards do.
        student_val = (
            evaluator.evaluate(student, val, desc="student val", **rollouts)
            if _guards(settings, inputs) or test.criteria_names
            else None
        )
    if scoring.outage is not None:
        _stop(out, settings, compiled, scoring.outage)
    return _Scored(test, baseline, zero_shot, val_report, student_val)


def _guards(settings: RunSettings, inputs: _Inputs) -> dict[str, float]:
    """The compile's guards: the review's (the run's own included) with ``--feedback``, else the run's."""
    return (inputs.merged.guards if inputs.merged is not None else settings.guards) or {}


def _summarise(settings: RunSettings, inputs: _Inputs, compiled: _Compiled, scored: _Scored) -> RunSummary:
    """The run's :class:`RunSummary` (``run.json``)."""
    components, task, train, val = inputs.components, inputs.components.task, inputs.train, inputs.val
    record = compile_record(compiled.program)
    search = record.search if record is not None else None
    spend = Spend.measure(compiled.meter, compiled.projection)
    figures = criteria_summary(
        test=(scored.zero_shot, scored.test, task.test),
        val=(scored.student_val, scored.val, val),
        guards=_guards(settings, inputs),
        compiled=compiled.program,
    )
    return RunSummary(
        task=task.name,
        program=settings.program,
        metric=settings.metric,
        optimizer=settings.optimizer,
        seed=settings.seed,
        budget=settings.budget,
        budget_enforced=compiled.optimizer.enforces_budget
        and isinstance(getattr(compiled.lm, "engine", None), MeteredEngine),
        config=compiled.optimizer.config.model_dump(mode="json"),
        lm=getattr(components.lm, "model", str(components.lm)),
        adapter=components.adapter_name,
        train=len(train),
        val=len(val),
        test=len(task.test),
        scores=Scores(
            val=round(scored.val.score, 2),
            test=round(scored.test.score, 2),
            baseline_test=round(scored.baseline.score, 2),
            baseline=f"the student with {BASELINE_DEMOS} labeled demos per predictor (0 LM calls)",
            zero_shot_test=round(scored.zero_shot.score, 2),
        ),
        spend=spend,
        max_cost=settings.max_cost,
        cost_cap_reached=settings.max_cost is not None and compiled.meter.snapshot().cost >= settings.max_cost,
        seconds=round(compiled.seconds, 2),
        budget_exhausted=bool(search and search.budget_exhausted),
        replayed_calls=compiled.replayed_calls,
        test_errors=scored.test.errors,
        data_hash=dataset_fingerprint(train + val),
        out=settings.out,
        search=search.to_dict() if search is not None else None,
        figures=figures,
        review=_review(settings, inputs, compiled.program, scored) if inputs.merged is not None else None,
    )


def _review(settings: RunSettings, inputs: _Inputs, program: dspy.Module, scored: _Scored) -> ReviewFigures:
    """What the review gave, and the pinned cases checked on the compiled program."""
    task = inputs.components.task
    with inputs.components.context():
        pinned = inputs.merged.feedback.check_pinned(
            program, input_keys=task.input_keys, output_keys=task.output_keys, evaluator_threads=settings.threads
        )
    return review_summary(inputs.merged, pinned, scored.test, scored.zero_shot, settings.metric.rpartition(":")[2])


def _build_optimizer(
    settings: RunSettings,
    metric: Any,
    train: list[dspy.Example],
    val: list[dspy.Example],
    merged: Any,
    *,
    log_dir: str | None,
    progress: bool,
    prompt_model: dspy.BaseLM | None = None,
) -> OptimizerHandle:
    """The run's optimizer (``prompt_model``: its prompt model, default the task model), with the review's
    guards and critiques where ``merged`` has them."""
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
        prompt_model=prompt_model,
        **{**review_kwargs, "guards": review_kwargs.get("guards", settings.guards) or {}},
    )


def dry_run(
    settings: RunSettings,
    *,
    components: Components | None = None,
    lm: dspy.BaseLM | None = None,
    prompt_lm: dspy.BaseLM | None = None,
) -> Projection:
    """What compiling ``settings`` is expected to spend (calls, tokens, USD by role); no model call is made.

    The endpoint of a served model is checked (``GET /models``, nothing spent) as for a real run, and no
    run folder is written. A review store (``feedback``) is not merged: the projection is the plain run's.
    The prompt model (``settings.prompt_lm``, or ``prompt_lm``) is checked and priced the same way.

    Raises:
        SettingsError: Train/val sizes the task cannot give.
    """
    components = components or build_components(settings, lm=lm)
    student = build_student(settings, components.task)
    train, val = _split(settings, components.task.train)
    model = metered_lm(components.lm)
    prompt = prompt_lm or make_prompt_lm(settings)
    prompt = metered_lm(prompt) if prompt is not None else None
    with components.context(lm=model):
        optimizer = _build_optimizer(
            settings, components.metric, train, val, None, log_dir=None, progress=False, prompt_model=prompt
        )
        return _project(settings, optimizer, student, train, model, prompt)


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
    settings: RunSettings,
    optimizer: OptimizerHandle,
    student: dspy.Module,
    train: list[dspy.Example],
    lm: Any,
    prompt_lm: Any = None,
) -> Projection:
    """What ``optimizer`` is expected to spend compiling ``student`` (inside the run's context)."""
    plan = optimizer.plan(student, train, lm)
    models = {"lm": lm, "prompt_lm": prompt_lm, "optimizer": optimizer.optimizer}
    return project(plan, student=student, train=train, budget=settings.budget, seed=settings.seed, **models)


def _check_metered(lm: dspy.BaseLM, settings: RunSettings) -> None:
    """Refuse a budget on an LM whose calls cannot be counted, unless ``settings.allow_unmetered``."""
    if settings.allow_unmetered or isinstance(getattr(lm, "engine", None), MeteredEngine):
        return
    raise SettingsError(
        f"invalid settings: the LM {getattr(lm, 'model', type(lm).__name__)!r} does not run on a metered engine, so "
        f"the budget of {settings.budget} calls cannot be kept and no call can be counted; use a dspy.LM on one of "
        "DSPy's engines (or an engine of dspy-ext), or pass --allow-unmetered (allow_unmetered: true) to run anyway"
    )


def _stop(out: Path, settings: RunSettings, compiled: _Compiled, outage: ModelUnavailable) -> None:
    """Keep the best program so far and a ``run.json`` that says why the run stopped (no test scores); raise.

    Raises:
        ModelUnavailable: Always, naming ``program.json``.
    """
    summary = StoppedSummary(
        task=settings.task,
        optimizer=settings.optimizer,
        seed=settings.seed,
        stopped=str(outage),
        spend=Spend.measure(compiled.meter, compiled.projection),
        seconds=round(compiled.seconds, 2),
        out=str(out),
    )
    _write_results(out, compiled.program, summary.to_dict())
    raise ModelUnavailable(outage.failures, outage.last_error, out=out / PROGRAM_FILE)


def _write_results(out: Path, compiled: dspy.Module, summary: dict[str, Any]) -> None:
    """``program.json`` and ``run.json`` of the run folder (each written atomically)."""
    atomic_write_text(out / PROGRAM_FILE, json.dumps(program_state_json(compiled), indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2, default=str) + "\n")


def labeled_baseline(student: dspy.Module, train: list[dspy.Example], seed: int) -> dspy.Module:
    """The student with :data:`~dspy_ext.search.demo_start.BASELINE_DEMOS` labeled training demos per predictor,
    drawn with ``seed`` (the instruction searches' demo start races against the same draw)."""
    program = student.deepcopy()
    demos = baseline_draw(train, seed, BASELINE_DEMOS)
    for _, predictor in predictors(program):
        predictor.demos = list(demos)
    return program
