"""What a run reports: per-criterion tables, the guard report, the review figures, and ``report.md``."""

from __future__ import annotations

from typing import Any

import dspy

from dspy_ext.evaluation import EvaluationReport
from dspy_ext.experiment.summary import CriteriaFigures, ReviewFigures, RunSummary
from dspy_ext.prompt_state import answer_rule_state, compile_record, predictors


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
) -> CriteriaFigures:
    """The run summary's per-criterion tables, guard report and stochastic-failure figures.

    Args:
        test: The student's and the compiled program's evaluations of the test rows, and the rows.
        val: The same on the validation rows (the student's may be ``None``: not scored).
        guards: The compile's regression guards (``{}``: none).
        compiled: The compiled program (its compile record holds the val guard report).

    Returns:
        ``criteria`` and ``val_criteria`` (``{name: {student, compiled}}``) when the metric has criteria;
        ``guard_report`` (``val`` from the compile, ``test`` measured here, every criterion with CIs)
        when there are guards; ``repeats`` (pass rates, mean with CI, the rows that pass only
        sometimes) when rows were scored more than once.
    """
    (student_test, compiled_test, test_rows), (student_val, compiled_val, _) = test, val
    table = criteria_table(student_test, compiled_test)
    return CriteriaFigures(
        criteria=table or None,
        val_criteria=criteria_table(student_val, compiled_val) if table else None,
        guard_report=_guard_report(guards, student_test, compiled_test, test_rows, compiled) if guards else None,
        repeats=_repeats(student_test, compiled_test, test_rows) if compiled_test.repeats > 1 else None,
    )


def _guard_report(
    guards: dict[str, float],
    student_test: EvaluationReport,
    compiled_test: EvaluationReport,
    test_rows: list[dspy.Example],
    compiled: dspy.Module,
) -> dict[str, Any]:
    """The guards' tolerances, the compile's val report and the verdict measured on the test rows."""
    from dspy_ext.search.regression import RegressionGuard, row_criteria

    record = compile_record(compiled)
    val_report = record.guard_report if record is not None else None
    stochastic = compiled_test.repeats > 1 or bool((val_report or {}).get("stochastic"))
    guard = RegressionGuard(guards, stochastic=stochastic)
    reference, candidate = row_criteria(student_test, test_rows), row_criteria(compiled_test, test_rows)
    verdict = guard.check(reference, candidate)
    return {
        "tolerances": dict(guards),
        "val": val_report,
        "test": {
            "n": verdict.n,
            "kept": verdict.ok,
            "broken": verdict.to_log()["broken"],
            "criteria": guard.report(reference, candidate, labels=("student", "compiled")),
        },
    }


def _repeats(
    student_test: EvaluationReport, compiled_test: EvaluationReport, test_rows: list[dspy.Example]
) -> dict[str, Any]:
    """The repeated rollouts' mean and CI, the student's, and the test rows that pass only sometimes."""
    ci = compiled_test.ci
    rates = compiled_test.pass_rates
    return {
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


def review_summary(
    merged: Any, pinned: Any, test: EvaluationReport, student: EvaluationReport, metric_name: str
) -> ReviewFigures:
    """The run report's ``feedback`` and ``pinned`` entries, and ``criteria`` (test, student vs compiled).

    Without any review criterion (none has an aligned check) the table has the run's metric alone.
    """
    compiled_means, student_means = test.criteria_means(), student.criteria_means()
    if not compiled_means:
        compiled_means, student_means = {metric_name: test.score}, {metric_name: student.score}
    return ReviewFigures(
        criteria={
            name: {"student": round(student_means.get(name, 0.0), 2), "compiled": round(value, 2)}
            for name, value in compiled_means.items()
        },
        feedback=merged.summary(),
        pinned=pinned.to_dict(),
    )


def _usd_cell(usd: float | None) -> str:
    return "unknown" if usd is None else f"{usd:.6f}"


def render_spend_section(summary: RunSummary) -> list[str]:
    """Calls, tokens and USD of the task and prompt models: projected before the run, and spent."""
    spent, projection = summary.spend.by_role, summary.spend.projection
    if not spent:
        return []
    planned = projection.get("by_role") or {}
    basis = "the optimizer's plan" if projection.get("known", True) else "the budget (no plan known)"
    lines = [
        "",
        f"## Spend: projected ({basis}, before the run) and actual",
        "",
        "| model | calls projected | calls | tokens projected | tokens | usd projected | usd |",
        "|---|---|---|---|---|---|---|",
    ]
    for role, actual in spent.items():
        plan = planned.get(role) or {}
        plan_tokens = (plan.get("input_tokens") or 0) + (plan.get("output_tokens") or 0)
        lines.append(
            f"| {role} | {plan.get('calls', '-')} | {actual.calls} | {plan_tokens if plan else '-'} | {actual.tokens} | "
            f"{_usd_cell(plan.get('usd')) if plan else '-'} | {_usd_cell(actual.usd)} |"
        )
    return lines


def render_report(summary: RunSummary, program: dspy.Module) -> str:
    """The run's Markdown report: figures, then every predictor's instruction and demos."""
    scores = summary.scores
    lines = [
        f"# {summary.task}: {summary.optimizer} (seed {summary.seed})",
        "",
        f"Test {scores.test:.1f}%: {scores.gain:+.1f} points over the labeled-demo baseline "
        f"({scores.baseline_test:.1f}%: {scores.baseline}), "
        f"{scores.test - scores.zero_shot_test:+.1f} over the zero-shot "
        f"student ({scores.zero_shot_test:.1f}%), for {summary.spend.lm_calls} LM calls.",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    lines += [f"| {key} | {value} |" for key, value in _figures(summary)]
    usd = summary.spend.usd
    lines.append(f"| usd | {'unknown (a model without a price)' if usd is None else f'{usd:.6f}'} |")
    lines += render_spend_section(summary)
    lines += render_criteria_section(summary)
    if summary.review is not None:
        lines += render_review_section(summary.review)
    for name, predictor in predictors(program):
        lines += _predictor_lines(name, predictor)
    return "\n".join(lines) + "\n"


def _figures(summary: RunSummary) -> list[tuple[str, Any]]:
    """The rows of the report's figure table, named as in ``run.json``."""
    scores, spend = summary.scores, summary.spend
    return [
        ("val_score", scores.val),
        ("test_score", scores.test),
        ("baseline_test_score", scores.baseline_test),
        ("zero_shot_test_score", scores.zero_shot_test),
        ("lm_calls", spend.lm_calls),
        ("tokens", spend.tokens),
        ("seconds", summary.seconds),
        ("budget", summary.budget),
        ("budget_exhausted", summary.budget_exhausted),
        ("lm", summary.lm),
        ("adapter", summary.adapter),
        ("train", summary.train),
        ("val", summary.val),
        ("test", summary.test),
    ]


def _predictor_lines(name: str, predictor: dspy.Predict) -> list[str]:
    """A predictor's section of the report: its instruction and demos."""
    lines = [
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
    rule = answer_rule_state(predictor)
    if rule is None:
        lines += ["", "Answer rule: free (generated)."]
    else:
        prior = "" if rule["prior"] is None else ", prior " + ", ".join(f"{p:.3f}" for p in rule["prior"])
        lines += ["", f"Answer rule: {rule['mode']} `{rule['field']}` in {', '.join(rule['labels'])}{prior}."]
    return lines


def render_criteria_section(summary: RunSummary) -> list[str]:
    """The report lines of the per-criterion tables, the guard report and the rows that pass only sometimes."""
    figures = summary.figures
    lines = _criteria_table_lines(summary.criteria, figures.val_criteria or {})
    if figures.guard_report:
        lines += _guard_lines(figures.guard_report)
    if figures.repeats:
        lines += _repeats_lines(figures.repeats)
    return lines


def _criteria_table_lines(table: dict[str, dict[str, float]], val: dict[str, dict[str, float]]) -> list[str]:
    if not table:
        return []
    lines = [
        "",
        "## Criteria",
        "",
        "| criterion | student test | compiled test | student val | compiled val |",
        "|---|---|---|---|---|",
    ]
    for name, cell in table.items():
        v = val.get(name, {})
        lines.append(
            f"| {name} | {cell['student']:.1f} | {cell['compiled']:.1f} | "
            f"{_cell(v.get('student'))} | {_cell(v.get('compiled'))} |"
        )
    return lines


def _guard_lines(report: dict[str, Any]) -> list[str]:
    lines = [
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
    return lines


def _repeats_lines(repeats: dict[str, Any]) -> list[str]:
    lines = [
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


def render_review_section(review: ReviewFigures) -> list[str]:
    """The report lines of a compile from human review: what the review gave, and the pinned cases."""
    given, pinned = review.feedback, review.pinned
    lines = [
        "",
        "## Human review",
        "",
        f"From `{given['store']}`: {given['labeled']} labeled examples ({given['added_to_train']} added to "
        f"training, {given['held_out']} held out), {given['critiques']} critiques "
        f"({given['critiques_to_optimizer']} to the optimizer), guards {given['guards'] or 'none'}.",
        "",
    ]
    lines += [f"- {note}" for note in given["notes"]]
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
