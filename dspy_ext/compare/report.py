"""Tables, statistics and the plot of an optimizer comparison.

Input is the list of finished cells, one per (optimizer, seed), each with its
summary row and its per-example test scores. Output: one summary row per
optimizer (test mean ± 95% CI over seeds, calls, tokens, time, a paired test
against the best), rendered as Markdown and CSV, and a PNG of test score
against LM calls with one point per run.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dspy_ext.evaluation.significance import ALPHA, paired_test
from dspy_ext.evaluation.stats import mean_ci


@dataclass
class Cell:
    """One finished (optimizer, seed) run."""

    optimizer: str
    seed: int
    row: dict[str, Any]
    example_scores: list[float | None] = field(repr=False, default_factory=list)


def _mean_of(cells: list[Cell], key: str) -> float | None:
    """The mean of a row field over ``cells`` that have it (older cells may not)."""
    values = [c.row[key] for c in cells if c.row.get(key) is not None]
    return round(_mean(values), 2) if values else None


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _usd_mean(cells: list[Cell]) -> float | None:
    """The mean USD of ``cells``; ``None`` (unknown, never 0) when any cell's spend is unknown or unrecorded."""
    values = [c.row.get("usd") for c in cells]
    if not values or any(v is None for v in values):
        return None
    return round(_mean(values), 6)


def role_calls(row: dict[str, Any], role: str) -> int | None:
    """The calls of ``role`` (``"task"`` or ``"prompt"``) in a cell's row; ``None`` in cells stored before the split."""
    part = (row.get("by_role") or {}).get(role)
    return None if part is None else int(part.get("calls") or 0)


def _role_mean(cells: list[Cell], role: str) -> float | None:
    values = [role_calls(c.row, role) for c in cells]
    if not values or any(v is None for v in values):
        return None
    return round(_mean(values), 1)


def _cost_fields(runs: list[Cell]) -> dict[str, Any]:
    """The summary row's money and split fields (``None`` where older cells did not record them)."""
    return {
        "usd_mean": _usd_mean(runs),
        "input_tokens_mean": _mean_of(runs, "input_tokens"),
        "output_tokens_mean": _mean_of(runs, "output_tokens"),
        "task_calls_mean": _role_mean(runs, "task"),
        "prompt_calls_mean": _role_mean(runs, "prompt"),
        "cost_cap_reached_runs": sum(bool(c.row.get("cost_cap_reached")) for c in runs),
    }


def summarise(cells: Sequence[Cell], optimizers: Sequence[str], *, alpha: float = ALPHA) -> list[dict[str, Any]]:
    """One summary row per optimizer (in the given order), with a paired test against the best.

    The best optimizer has the highest mean test score over its seeds (ties: fewer
    LM calls). Every other optimizer is tested against it on the per-example test
    scores pooled over the seeds both finished: (seed, example) pairs.
    """
    by_opt: dict[str, list[Cell]] = {name: [] for name in optimizers}
    for cell in cells:
        by_opt.setdefault(cell.optimizer, []).append(cell)
    rows: list[dict[str, Any]] = []
    for name, runs in by_opt.items():
        runs = sorted(runs, key=lambda c: c.seed)
        if not runs:
            rows.append({"optimizer": name, "runs": 0, "seeds": []})
            continue
        ci = mean_ci([c.row["test_score"] for c in runs])
        rows.append(
            {
                "optimizer": name,
                "runs": len(runs),
                "seeds": [c.seed for c in runs],
                "test_mean": round(ci.mean, 2),
                "test_ci95": round(ci.half_width, 2),
                "lm_calls_mean": round(_mean([c.row["lm_calls"] for c in runs]), 1),
                "tokens_mean": round(_mean([c.row["tokens"] for c in runs]), 1),
                "seconds_mean": round(_mean([c.row["seconds"] for c in runs]), 2),
                "budget_enforced": bool(runs[0].row.get("budget_enforced")),
                "budget_exhausted_runs": sum(bool(c.row.get("budget_exhausted")) for c in runs),
                "baseline_test_score": _mean_of(runs, "baseline_test_score"),
                "zero_shot_test_score": _mean_of(runs, "zero_shot_test_score"),
                **_cost_fields(runs),
            }
        )
    finished = [r for r in rows if r["runs"]]
    if not finished:
        return rows
    best = max(finished, key=lambda r: (r["test_mean"], -r["lm_calls_mean"]))
    best_cells = {c.seed: c for c in by_opt[best["optimizer"]]}
    for row in finished:
        row["best"] = row is best
        if row is best:
            row["vs_best"] = None
            continue
        a: list[float | None] = []
        b: list[float | None] = []
        matched = []
        for cell in by_opt[row["optimizer"]]:
            other = best_cells.get(cell.seed)
            if other is None or len(other.example_scores) != len(cell.example_scores):
                continue
            matched.append(cell.seed)
            a += other.example_scores
            b += cell.example_scores
        if not matched:
            row["vs_best"] = None
            continue
        test = paired_test(a, b, alpha=alpha)
        row["vs_best"] = {**test.to_dict(), "seeds": matched}
    return rows


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _fmt_p(p: float) -> str:
    return "<0.0001" if p < 1e-4 else f"{p:.4f}" if p < 0.01 else f"{p:.3f}"


def _secs(value: float) -> str:
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def fmt_usd(value: float | None) -> str:
    """USD for a table: ``unknown`` when the price (or an older cell's record) is missing, never 0."""
    if value is None:
        return "unknown"
    return f"{value:.2f}" if value >= 1 or value == 0 else f"{value:.4f}" if value >= 0.01 else f"{value:.6f}"


def fmt_calls(calls: float, task: float | None, prompt: float | None) -> str:
    """``120 (100/20)``: the calls and their task/prompt split (just ``120`` for cells stored before the split)."""
    if task is None or prompt is None:
        return f"{calls:.0f}"
    return f"{calls:.0f} ({task:.0f}/{prompt:.0f})"


def _ci(row: dict[str, Any]) -> str:
    return f"{row['test_mean']:.1f} ± {row['test_ci95']:.1f}" if row["runs"] > 1 else f"{row['test_mean']:.1f}"


def _cap_text(meta: dict[str, Any]) -> str:
    cap = meta.get("max_cost")
    return "" if cap is None else f" and ${cap:g}"


def render_markdown(
    meta: dict[str, Any],
    summary: Sequence[dict[str, Any]],
    cells: Sequence[Cell],
    plot_name: str | None = "score_vs_calls.png",
    heading: int = 1,
) -> str:
    """The comparison as Markdown: settings, the per-optimizer table, notes and the per-run table."""
    h = "#" * heading
    lines = _settings_lines(meta, summary, h)
    lines += _optimizer_table(summary)
    lines += _notes(summary)
    if plot_name:
        lines += ["", f"![test score vs LM calls]({plot_name})"]
    lines += _runs_table(meta, cells, h)
    return "\n".join(lines) + "\n"


def _settings_lines(meta: dict[str, Any], summary: Sequence[dict[str, Any]], h: str) -> list[str]:
    """The heading, the comparison's settings and the labeled-demo baseline."""
    seeds = ", ".join(str(s) for s in meta["seeds"])
    lines = [
        f"{h} Optimizer comparison: {meta['task']}",
        "",
        f"LM `{meta['lm']}`, adapter {meta['adapter']}, program `{meta['program']}`, metric `{meta['metric']}`; "
        f"budget {meta['budget']} LM calls{_cap_text(meta)} per compile; seeds {seeds}; train {meta['train']} / val {meta['val']} "
        f"drawn from the training file with each seed; test = the full held-out test split ({meta['test']} rows), "
        "the same for every run.",
    ]
    baseline = next((r.get("baseline_test_score") for r in summary if r.get("runs")), None)
    zero_shot = next((r.get("zero_shot_test_score") for r in summary if r.get("runs")), None)
    if baseline is not None:
        lines += [
            "",
            f"Baseline, what a user has for free: the student with 3 labeled demos (0 LM calls to build), "
            f"mean over the seeds' demo draws: {baseline:.1f}% on the test split"
            + (f"; zero-shot: {zero_shot:.1f}%." if zero_shot is not None else "."),
        ]
    return lines


def _optimizer_table(summary: Sequence[dict[str, Any]]) -> list[str]:
    """One row per optimizer: test mean ± CI, the paired test against the best, calls, tokens, USD, time."""
    lines = [
        "",
        "| optimizer | test % (mean ± 95% CI) | runs | Δ vs best (pts) | p | significant "
        "| LM calls (task/prompt) | tokens | USD | wall s | budget enforced |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        if not row["runs"]:
            lines.append(f"| {row['optimizer']} | no finished run | 0 | | | | | | | | |")
            continue
        vs = row.get("vs_best")
        if row.get("best"):
            delta, p, sig = "best", "", ""
        elif vs is None:
            delta, p, sig = "no matched seeds", "", ""
        else:
            delta = f"{-vs['diff_points'] + 0.0:+.1f}"
            p = _fmt_p(vs["p_value"])
            sig = "**yes**" if vs["significant"] else "no"
        exhausted = f" ({row['budget_exhausted_runs']}/{row['runs']} hit it)" if row["budget_exhausted_runs"] else ""
        capped = row.get("cost_cap_reached_runs") or 0
        usd = fmt_usd(row.get("usd_mean")) + (f" ({capped}/{row['runs']} at the cap)" if capped else "")
        calls = fmt_calls(row["lm_calls_mean"], row.get("task_calls_mean"), row.get("prompt_calls_mean"))
        lines.append(
            f"| {row['optimizer']} | {_ci(row)} | {row['runs']} | {delta} | {p} | {sig} | {calls} "
            f"| {row['tokens_mean']:.0f} | {usd} | {_secs(row['seconds_mean'])} "
            f"| {_yes(row['budget_enforced'])}{exhausted} |"
        )
    return lines


def _notes(summary: Sequence[dict[str, Any]]) -> list[str]:
    """What the table's columns mean, and which paired test was used."""
    methods = sorted({r["vs_best"]["method"] for r in summary if r.get("vs_best")})
    test_text = {
        "mcnemar-exact": "exact McNemar test",
        "paired-bootstrap": "paired bootstrap",
    }
    return [
        "",
        "Δ vs best and p: each optimizer against the best one "
        f"({' / '.join(test_text[m] for m in methods) or 'paired test'}, two-sided) on the per-example test "
        "scores pooled over the seeds both finished, i.e. (seed, example) pairs; *significant* means "
        f"p < {ALPHA} (no correction for multiple comparisons; pooling treats the seeds' test rows as "
        "independent pairs). LM calls, tokens, USD and wall time are means per compile (test scoring excluded); "
        "the calls are split between the task model and the prompt model (task/prompt); USD is *unknown* when "
        "a run's model has no known price (declare one with `price`). "
        "Budget enforced: *yes* = a hard cap on LM calls (dspy-ext's optimizers); *no* = DSPy's optimizer "
        "configured to the setting closest to the budget, with the calls it really used.",
    ]


def _runs_table(meta: dict[str, Any], cells: Sequence[Cell], h: str) -> list[str]:
    """One row per finished (optimizer, seed), by optimizer then seed."""
    lines = [
        "",
        f"{h}# Runs",
        "",
        "| optimizer | seed | test % | val % | LM calls (task/prompt) | tokens | USD | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cell in sorted(
        cells,
        key=lambda c: (meta["optimizers"].index(c.optimizer) if c.optimizer in meta["optimizers"] else 99, c.seed),
    ):
        r = cell.row
        lines.append(
            f"| {cell.optimizer} | {cell.seed} | {r['test_score']:.1f} | {r.get('val_score', 0):.1f} | "
            f"{fmt_calls(r['lm_calls'], role_calls(r, 'task'), role_calls(r, 'prompt'))} | {r['tokens']} | "
            f"{fmt_usd(r.get('usd'))} | {r['seconds']:.1f} |"
        )
    return lines


CSV_FIELDS = [
    "optimizer",
    "runs",
    "seeds",
    "test_mean",
    "test_ci95",
    "test_low",
    "test_high",
    "lm_calls_mean",
    "task_calls_mean",
    "prompt_calls_mean",
    "tokens_mean",
    "input_tokens_mean",
    "output_tokens_mean",
    "usd_mean",
    "cost_cap_reached_runs",
    "seconds_mean",
    "budget_enforced",
    "budget_exhausted_runs",
    "best",
    "test",
    "diff_vs_best_points",
    "p_value",
    "significant",
]


def render_csv(summary: Sequence[dict[str, Any]]) -> str:
    """One CSV row per optimizer; ``usd_mean`` is ``unknown`` when a run's price is not known (never 0)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in summary:
        vs = row.get("vs_best") or {}
        runs = row["runs"]
        writer.writerow(
            {
                "optimizer": row["optimizer"],
                "runs": runs,
                "seeds": " ".join(str(s) for s in row["seeds"]),
                "test_mean": row.get("test_mean", ""),
                "test_ci95": row.get("test_ci95", ""),
                "test_low": round(row["test_mean"] - row["test_ci95"], 2) if runs else "",
                "test_high": round(row["test_mean"] + row["test_ci95"], 2) if runs else "",
                "lm_calls_mean": row.get("lm_calls_mean", ""),
                "task_calls_mean": _blank(row.get("task_calls_mean")),
                "prompt_calls_mean": _blank(row.get("prompt_calls_mean")),
                "tokens_mean": row.get("tokens_mean", ""),
                "input_tokens_mean": _blank(row.get("input_tokens_mean")),
                "output_tokens_mean": _blank(row.get("output_tokens_mean")),
                "usd_mean": (row["usd_mean"] if row.get("usd_mean") is not None else "unknown") if runs else "",
                "cost_cap_reached_runs": row.get("cost_cap_reached_runs", ""),
                "seconds_mean": row.get("seconds_mean", ""),
                "budget_enforced": row.get("budget_enforced", ""),
                "budget_exhausted_runs": row.get("budget_exhausted_runs", ""),
                "best": row.get("best", ""),
                "test": vs.get("method", ""),
                # Negative: this optimizer is that many points below the best (pooled over matched seeds).
                "diff_vs_best_points": -vs["diff_points"] if vs else "",
                "p_value": vs.get("p_value", ""),
                "significant": vs.get("significant", ""),
            }
        )
    return buffer.getvalue()


def _blank(value: Any) -> Any:
    return "" if value is None else value


def draw_score_vs_calls(
    ax: Any,
    cells: Sequence[Cell],
    optimizers: Sequence[str],
    *,
    title: str = "",
    budget: int | None = None,
    legend: bool = True,
) -> None:
    """Draw test score (%) against compile LM calls on a matplotlib ``ax``: one point per run.

    Each optimizer keeps its colour and marker by its position in ``optimizers``, so
    several panels drawn with the same list agree.
    """
    markers = "osD^vP*Xh<>p"
    for k, name in enumerate(optimizers):
        runs = [c for c in cells if c.optimizer == name]
        if not runs:
            continue
        enforced = bool(runs[0].row.get("budget_enforced"))
        ax.scatter(
            [c.row["lm_calls"] for c in runs],
            [c.row["test_score"] for c in runs],
            label=name + ("" if enforced else " (DSPy)"),
            marker=markers[k % len(markers)],
            s=40,
            alpha=0.8,
            color=f"C{k % 10}",
        )
    if budget:
        ax.axvline(budget, color="grey", linestyle="--", linewidth=1)
        ax.annotate(
            "budget",
            (budget, 0.02),
            xycoords=("data", "axes fraction"),
            rotation=90,
            ha="right",
            va="bottom",
            color="grey",
            fontsize=8,
        )
    ax.set_xlabel("LM calls of the compile")
    ax.set_ylabel("test score (%)")
    ax.set_ylim(-2, 102)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if legend:
        ax.legend(fontsize=8, loc="best")


def plot_score_vs_calls(
    cells: Sequence[Cell], optimizers: Sequence[str], path: Path, *, title: str = "", budget: int | None = None
) -> Path:
    """Scatter test score (%) against compile LM calls into a PNG, one point per run, one colour per optimizer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    draw_score_vs_calls(fig.add_subplot(1, 1, 1), cells, optimizers, title=title, budget=budget)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
