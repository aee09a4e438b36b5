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
:func:`open_run` reads a run folder back (settings, components, the compiled program), so
commands that take a run folder need no ``--task``/``--program``/``--metric`` again.

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
from dspy_ext.experiment.components import (
    ComponentError,
    Components,
    build_components,
    build_student,
    labeled_demos,
    load_program_state,
    read_json_file,
)
from dspy_ext.experiment.settings import RunSettings, SettingsError
from dspy_ext.files import RunFolderLock, atomic_write_text
from dspy_ext.lm.journal import journaled
from dspy_ext.lm.metering import CallMeter, metering
from dspy_ext.prompt_state import content_hash, predictors
from dspy_ext.registry import build_optimizer

logger = logging.getLogger(__name__)

SETTINGS_FILE = "settings.yaml"
PROGRAM_FILE = "program.json"
SUMMARY_FILE = "run.json"
REPORT_FILE = "report.md"
JOURNAL_FILE = "calls.jsonl"
RESUME_FILE = "resume.json"
TRIALS_FILE = "trials.jsonl"


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
    try:
        train, val = split_train_val(task.train, settings.train, settings.val, seed=settings.seed)
    except ValueError as exc:
        raise SettingsError(f"invalid settings: {exc}") from None
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
            "settings": settings.model_dump(mode="json", exclude={"out", "cache"}),
            "lm": getattr(components.lm, "model", None),
            "adapter": components.adapter_name,
            "train_val": dataset_fingerprint(train + val),
            "test": dataset_fingerprint(task.test),
            "student": content_hash(program_state_json(student)),
        }
        if merged is None:
            identity["settings"].pop("feedback", None)  # run folders from before --feedback existed still resume
        else:
            identity["feedback"] = merged.feedback.fingerprint  # a changed review is another run
        _claim_folder(out, identity, restart=restart)
        atomic_write_text(out / SETTINGS_FILE, settings.to_yaml())
        # The compile's LM reads DSPy's response cache, which is the run's call journal while it runs.
        lm = components.lm if getattr(components.lm, "cache", True) else components.lm.copy(cache=True)
        with components.context(lm=lm):
            review_kwargs = {"guards": merged.guards, "feedback": merged.critiques} if merged is not None else {}
            guards = review_kwargs.get("guards", settings.guards) or {}
            optimizer = build_optimizer(
                settings.optimizer,
                metric,
                config=settings.optimizer_config,
                budget=settings.budget,
                seed=settings.seed,
                num_threads=settings.threads,
                n_train=len(train),
                n_val=len(val),
                log_dir=str(out),
                progress=progress,
                repeats=settings.repeats,
                temperature=settings.eval_temperature,
                **{**review_kwargs, "guards": guards},
            )
        meter = CallMeter()
        started = time.perf_counter()
        with components.context(lm=lm), journaled(out / JOURNAL_FILE) as journal, metering(meter):
            compiled = optimizer.compile(student, trainset=train, valset=val)
        compile_seconds = time.perf_counter() - started
        usage = meter.snapshot()
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
        with components.context():
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
        result = getattr(compiled, "dspy_ext_result", None)
        summary = {
            "task": task.name,
            "program": settings.program,
            "metric": settings.metric,
            "optimizer": settings.optimizer,
            "seed": settings.seed,
            "budget": settings.budget,
            "budget_enforced": optimizer.enforces_budget,
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
            "lm_calls": usage.calls,
            "tokens": usage.total_tokens,
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
            review = _review_summary(merged, pinned, test, zero_shot, settings.metric.rpartition(":")[2])
            table = review.pop("criteria")
            if not summary.get("criteria"):  # the run's own table is kept; a one-number metric gets the review's
                summary["criteria"] = table
            summary.update(review)
        atomic_write_text(
            out / PROGRAM_FILE, json.dumps(program_state_json(compiled), indent=2, ensure_ascii=False) + "\n"
        )
        atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2, default=str) + "\n")
        atomic_write_text(out / REPORT_FILE, render_report(summary, compiled))
    return RunResult(settings, summary, compiled, test, baseline, val_report, out)


def criteria_table(student: EvaluationReport | None, compiled: EvaluationReport) -> dict[str, dict[str, float]]:
    """``{criterion: {"student": mean, "compiled": mean}}`` (0-100); ``{}`` for a one-number metric."""
    if student is None:
        return {}
    before = student.criteria_means()
    return {
        name: {"student": round(before.get(name, 0.0), 2), "compiled": round(value, 2)}
        for name, value in compiled.criteria_means().items()
    }


def criteria_summary(
    *,
    test: tuple[EvaluationReport, EvaluationReport, list[dspy.Example]],
    val: tuple[EvaluationReport | None, EvaluationReport, list[dspy.Example]],
    guards: dict[str, float],
    compiled: dspy.Module,
) -> dict[str, Any]:
    """The run summary's per-criterion tables, guard report and stochastic-failure figures.

    Args:
        test: The student's and the compiled program's evaluations of the test rows, and the rows.
        val: The same on the validation rows (the student's may be ``None``: not scored).
        guards: The compile's regression guards (``{}``: none).
        compiled: The compiled program (its search result or acceptance gate holds the val guard report).

    Returns:
        ``criteria`` and ``val_criteria`` (``{name: {student, compiled}}``) when the metric has criteria;
        ``guard_report`` (``val`` from the compile, ``test`` measured here, every criterion with CIs)
        when there are guards; ``repeats`` (pass rates, mean with CI, the rows that pass only
        sometimes) when rows were scored more than once.
    """
    from dspy_ext.search.regression import RegressionGuard, row_criteria

    (student_test, compiled_test, test_rows), (student_val, compiled_val, _) = test, val
    out: dict[str, Any] = {}
    table = criteria_table(student_test, compiled_test)
    if table:
        out["criteria"] = table
        out["val_criteria"] = criteria_table(student_val, compiled_val)
    if guards:
        result = getattr(compiled, "dspy_ext_result", None)
        val_report = getattr(result, "guard_report", None) or getattr(compiled, "dspy_ext_gate", None)
        stochastic = compiled_test.repeats > 1 or bool((val_report or {}).get("stochastic"))
        guard = RegressionGuard(guards, stochastic=stochastic)
        reference, candidate = row_criteria(student_test, test_rows), row_criteria(compiled_test, test_rows)
        verdict = guard.check(reference, candidate)
        out["guard_report"] = {
            "tolerances": dict(guards),
            "val": val_report,
            "test": {
                "n": verdict.n,
                "kept": verdict.ok,
                "broken": verdict.to_log()["broken"],
                "criteria": guard.report(reference, candidate, labels=("student", "compiled")),
            },
        }
    if compiled_test.repeats > 1:
        ci = compiled_test.ci
        rates = compiled_test.pass_rates
        out["repeats"] = {
            "k": compiled_test.repeats,
            "test_mean": round(ci.mean, 2),
            "test_ci95": round(ci.half_width, 2),
            "student_test_mean": round(student_test.ci.mean, 2),
            "student_test_ci95": round(student_test.ci.half_width, 2),
            "flaky_test_rows": [
                {
                    "index": i,
                    "pass_rate": round(rates[i], 3),
                    "input": "; ".join(str(v) for v in test_rows[i].inputs().values())[:120],
                }
                for i in compiled_test.flaky
            ],
        }
    return out


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


def _review_summary(
    merged: Any, pinned: Any, test: EvaluationReport, student: EvaluationReport, metric_name: str
) -> dict[str, Any]:
    """The run report's ``feedback`` and ``pinned`` entries, and ``criteria`` (test, student vs compiled).

    Without any review criterion (none has an aligned check) the table has the run's metric alone.
    """
    compiled_means, student_means = test.criteria_means(), student.criteria_means()
    if not compiled_means:
        compiled_means, student_means = {metric_name: test.score}, {metric_name: student.score}
    return {
        "feedback": merged.summary(),
        "pinned": pinned.to_dict(),
        "criteria": {
            name: {"student": round(student_means.get(name, 0.0), 2), "compiled": round(value, 2)}
            for name, value in compiled_means.items()
        },
    }


def _claim_folder(out: Path, identity: dict[str, Any], *, restart: bool) -> None:
    """Make ``out`` the folder of the run ``identity`` describes: new, resumed, or (with ``restart``) replaced.

    Raises:
        SettingsError: The folder holds a run with other settings or data, and ``restart`` is off.
    """
    resume_file = out / RESUME_FILE
    stored: dict[str, Any] | None = None
    if resume_file.is_file():
        try:
            stored = json.loads(resume_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            stored = None
    elif (out / JOURNAL_FILE).exists() or (out / PROGRAM_FILE).exists():
        stored = {}  # run files of unknown origin: never mixed with this run's
    if stored is not None and stored != identity:
        if not restart:
            raise SettingsError(
                f"{out} holds another run ({_difference(stored, identity)}); pass --restart "
                "(restart=True) to start over there, or choose another output folder"
            )
        logger.warning("%s: starting over (%s)", out, _difference(stored, identity))
        for name in (JOURNAL_FILE, TRIALS_FILE, PROGRAM_FILE, SUMMARY_FILE, REPORT_FILE):
            (out / name).unlink(missing_ok=True)
    atomic_write_text(resume_file, json.dumps(identity, indent=1, sort_keys=True) + "\n")


def _difference(stored: dict[str, Any], identity: dict[str, Any]) -> str:
    if not stored:
        return "files of a run that did not record its settings"
    changed = [
        f"{key}: {stored['settings'].get(key)!r} -> {value!r}"
        for key, value in identity["settings"].items()
        if stored.get("settings", {}).get(key) != value
    ]
    changed += [
        f"{key} changed"
        for key in ("lm", "adapter", "train_val", "test", "student")
        if stored.get(key) != identity[key]
    ]
    return "; ".join(changed[:4]) or "other settings"


#: Labeled demos per predictor of the baseline a user gets for free.
LABELED_BASELINE_DEMOS = 3


def labeled_baseline(student: dspy.Module, train: list[dspy.Example], seed: int) -> dspy.Module:
    """The student with :data:`LABELED_BASELINE_DEMOS` labeled training demos per predictor, drawn with ``seed``."""
    program = student.deepcopy()
    demos = labeled_demos(train, min(LABELED_BASELINE_DEMOS, len(train)), seed)
    for _, predictor in predictors(program):
        predictor.demos = list(demos)
    return program


def program_state_json(program: dspy.Module) -> dict[str, Any]:
    """The JSON state ``program.save("x.json")`` writes (DSPy's own format, metadata included)."""
    from dspy.utils.saving import get_dependency_versions

    state = program.dump_state()
    state["metadata"] = {"dependency_versions": get_dependency_versions()}
    return state


def render_report(summary: dict[str, Any], program: dspy.Module) -> str:
    """The run's Markdown report: figures, then every predictor's instruction and demos."""
    lines = [
        f"# {summary['task']}: {summary['optimizer']} (seed {summary['seed']})",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    for key in (
        "val_score",
        "test_score",
        "baseline_test_score",
        "zero_shot_test_score",
        "lm_calls",
        "tokens",
        "seconds",
        "budget",
        "budget_exhausted",
        "lm",
        "adapter",
        "train",
        "val",
        "test",
    ):
        lines.append(f"| {key} | {summary[key]} |")
    lines += render_criteria_section(summary)
    if "pinned" in summary:
        lines += render_review_section(summary)
    for name, predictor in predictors(program):
        lines += [
            "",
            f"## Predictor `{name}`",
            "",
            "Instruction:",
            "",
            "> " + predictor.signature.instructions.replace("\n", "\n> "),
            "",
            f"Demos ({len(predictor.demos)}):",
            "",
        ]
        for demo in predictor.demos:
            data = demo.toDict() if hasattr(demo, "toDict") else dict(demo)
            lines.append("- " + "; ".join(f"{k}: {str(v)[:120]}" for k, v in data.items() if k != "augmented"))
    return "\n".join(lines) + "\n"


def render_criteria_section(summary: dict[str, Any]) -> list[str]:
    """The report lines of the per-criterion tables, the guard report and the rows that pass only sometimes."""
    lines: list[str] = []
    if summary.get("criteria"):
        lines += [
            "",
            "## Criteria",
            "",
            "| criterion | student test | compiled test | student val | compiled val |",
            "|---|---|---|---|---|",
        ]
        val = summary.get("val_criteria") or {}
        for name, cell in summary["criteria"].items():
            v = val.get(name, {})
            lines.append(
                f"| {name} | {cell['student']:.1f} | {cell['compiled']:.1f} | "
                f"{_cell(v.get('student'))} | {_cell(v.get('compiled'))} |"
            )
    report = summary.get("guard_report")
    if report:
        lines += [
            "",
            "## Regression guards",
            "",
            "Tolerances (points): " + ", ".join(f"{k} {v:g}" for k, v in report["tolerances"].items()) + ".",
        ]
        val = report.get("val") or {}
        if val.get("fallback"):
            lines.append(f"The search returned the reference program's prompts: {val['fallback']}.")
        if val.get("returned") and val.get("returned") != "compiled":
            lines.append(f"The acceptance gate returned the {val['returned']}: the compiled program broke a guard.")
        if val.get("rejected"):
            lines.append(
                "Candidates set aside by a guard: " + ", ".join(f"{k} {n}" for k, n in val["rejected"].items()) + "."
            )
        lines += [
            "",
            "| split | criterion | before | after | drop | p | tolerance | broken |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for split, block in (("val", val.get("criteria") or {}), ("test", report["test"]["criteria"])):
            for name, row in block.items():
                before, after = [v for k, v in row.items() if isinstance(v, dict)][:2]
                lines.append(
                    f"| {split} | {name} | {before['mean']:.1f} ± {before['ci95']:.1f} | "
                    f"{after['mean']:.1f} ± {after['ci95']:.1f} | {row['drop']:.1f} | {row['p_value']:.3f} | "
                    f"{'-' if row['tolerance'] is None else format(row['tolerance'], 'g')} | "
                    f"{'yes' if row['broken'] else 'no'} |"
                )
    repeats = summary.get("repeats")
    if repeats:
        lines += [
            "",
            "## Repeats",
            "",
            f"{repeats['k']} rollouts per row: test {repeats['test_mean']:.1f} ± {repeats['test_ci95']:.1f} "
            f"(student {repeats['student_test_mean']:.1f} ± {repeats['student_test_ci95']:.1f}); "
            f"{len(repeats['flaky_test_rows'])} rows pass only sometimes.",
        ]
        for row in repeats["flaky_test_rows"][:20]:
            lines.append(f"- row {row['index']} (passes {100 * row['pass_rate']:.0f}%): {row['input']}")
    return lines


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render_review_section(summary: dict[str, Any]) -> list[str]:
    """The report lines of a compile from human review: what the review gave, and the pinned cases."""
    review, pinned = summary["feedback"], summary["pinned"]
    lines = [
        "",
        "## Human review",
        "",
        f"From `{review['store']}`: {review['labeled']} labeled examples ({review['added_to_train']} added to "
        f"training, {review['held_out']} held out), {review['critiques']} critiques "
        f"({review['critiques_to_optimizer']} to the optimizer), guards {review['guards'] or 'none'}.",
        "",
    ]
    lines += [f"- {note}" for note in review["notes"]]
    lines += [
        "",
        f"Pinned cases (outputs graded Good, checked by {pinned['by']}): {pinned['kept']} kept, "
        f"{pinned['broken']} broken, {pinned['unscored']} not scored.",
    ]
    if pinned["broken_items"]:
        lines += ["", "| input | approved | now | fails |", "|---|---|---|---|"]
        for case in pinned["broken_items"]:
            cells = [case["input"][:80], case["approved"][:60], case["output"][:60], ", ".join(case["failed"])]
            lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return lines


# ---- reading a run folder back ------------------------------------------------------------------


@dataclass
class OpenedRun:
    """A run folder read back: its settings, summary and compiled program.

    Attributes:
        folder: The run folder.
        settings: Its :class:`RunSettings` (from ``settings.yaml``; for folders written before run
            files existed, rebuilt from ``run.json`` with the built-in program and metric defaults;
            ``None`` when neither names the task: the caller must say it).
        summary: ``run.json`` (``{}`` when missing).
    """

    folder: Path
    settings: RunSettings | None
    summary: dict[str, Any]

    @property
    def program_file(self) -> Path:
        return self.folder / PROGRAM_FILE

    def require_settings(self) -> RunSettings:
        """The run's settings.

        Raises:
            ComponentError: The folder does not say which task it was compiled on.
        """
        if self.settings is None:
            raise ComponentError(
                f"{self.folder}: the run folder has neither {SETTINGS_FILE} nor a {SUMMARY_FILE} "
                "naming its task; give the task and program"
            )
        return self.settings

    def components(self, *, lm: dspy.BaseLM | None = None) -> Components:
        """The task, LM, adapter and metric the run was compiled with."""
        return build_components(self.require_settings(), lm=lm)

    def student(self, components: Components) -> dspy.Module:
        """The uncompiled program, as the run built it."""
        return build_student(self.require_settings(), components.task)

    def program(self, components: Components) -> dspy.Module:
        """The compiled program: the student with ``program.json`` loaded into it."""
        program = self.student(components)
        load_program_state(program, self.program_file, self.require_settings().program)
        return program


def open_run(folder: str | Path) -> OpenedRun:
    """Read a run folder written by :func:`run` (or by ``dspy-ext compile``).

    Raises:
        ComponentError: No such folder, no ``program.json`` (pickles are never loaded), or unreadable files.
        SettingsError: ``settings.yaml`` is invalid.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ComponentError(f"{folder}: no such run folder")
    if not (folder / PROGRAM_FILE).is_file():
        pickles = sorted(p.name for p in folder.glob("*.pkl"))
        hint = (
            f" (it has {pickles}: pickles are never loaded; save with program.save('program.json'))" if pickles else ""
        )
        raise ComponentError(f"{folder}: the run folder has no {PROGRAM_FILE}{hint}")
    summary: dict[str, Any] = {}
    if (folder / SUMMARY_FILE).is_file():
        summary = read_json_file(folder / SUMMARY_FILE, SUMMARY_FILE)
        if not isinstance(summary, dict):
            raise ComponentError(f"{folder / SUMMARY_FILE}: expected a JSON object")
    settings: RunSettings | None = None
    if (folder / SETTINGS_FILE).is_file():
        settings = RunSettings.load(folder / SETTINGS_FILE)
    elif summary.get("task"):
        logger.info("%s has no %s; settings rebuilt from %s", folder, SETTINGS_FILE, SUMMARY_FILE)
        known = {
            k: summary[k]
            for k in ("task", "program", "metric", "optimizer", "seed", "budget", "train", "val")
            if k in summary
        }
        settings = RunSettings.build({**known, "out": str(folder)}, source=f"settings from {folder / SUMMARY_FILE}")
    return OpenedRun(folder=folder, settings=settings, summary=summary)
