"""What a run reports: per-criterion tables, the guard report, the review figures, and ``report.md``."""

from __future__ import annotations

from typing import Any

import dspy

from dspy_ext.evaluation import EvaluationReport
from dspy_ext.prompt_state import predictors


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


def review_summary(
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


def _usd_cell(usd: float | None) -> str:
    return "unknown" if usd is None else f"{usd:.6f}"


def render_spend_section(summary: dict[str, Any]) -> list[str]:
    """Calls, tokens and USD of the task and prompt models: projected before the run, and spent."""
    spent, projection = summary.get("by_role"), summary.get("projection")
    if not spent:
        return []
    planned = (projection or {}).get("by_role") or {}
    basis = "the optimizer's plan" if (projection or {}).get("known", True) else "the budget (no plan known)"
    lines = [
        "",
        f"## Spend: projected ({basis}, before the run) and actual",
        "",
        "| model | calls projected | calls | tokens projected | tokens | usd projected | usd |",
        "|---|---|---|---|---|---|---|",
    ]
    for role, actual in spent.items():
        plan = planned.get(role) or {}
        tokens = actual["input_tokens"] + actual["output_tokens"]
        plan_tokens = (plan.get("input_tokens") or 0) + (plan.get("output_tokens") or 0)
        lines.append(
            f"| {role} | {plan.get('calls', '-')} | {actual['calls']} | {plan_tokens if plan else '-'} | {tokens} | "
            f"{_usd_cell(plan.get('usd')) if plan else '-'} | {_usd_cell(actual['usd'])} |"
        )
    return lines


def render_report(summary: dict[str, Any], program: dspy.Module) -> str:
    """The run's Markdown report: figures, then every predictor's instruction and demos."""
    lines = [
        f"# {summary['task']}: {summary['optimizer']} (seed {summary['seed']})",
        "",
    ]
    gain = summary["test_score"] - summary["baseline_test_score"]
    lines += [
        f"Test {summary['test_score']:.1f}%: {gain:+.1f} points over the labeled-demo baseline "
        f"({summary['baseline_test_score']:.1f}%: {summary.get('baseline', 'the student with labeled demos')}), "
        f"{summary['test_score'] - summary['zero_shot_test_score']:+.1f} over the zero-shot "
        f"student ({summary['zero_shot_test_score']:.1f}%), for {summary['lm_calls']} LM calls.",
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
    usd = summary.get("usd")
    lines.append(f"| usd | {'unknown (a model without a price)' if usd is None else f'{usd:.6f}'} |")
    lines += render_spend_section(summary)
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
