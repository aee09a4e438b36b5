"""What a finished tune shows: a table of the top trials and one PNG (history + importances).

Both read a :class:`~dspy_ext.tuning.results.StudyResults`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from dspy_ext.tuning.results import StudyResults, is_feasible

logger = logging.getLogger(__name__)


def top_trials_table(results: StudyResults, k: int = 5) -> str:
    """A plain-text table of the ``k`` best trials."""
    trials = results.top_trials(k)
    if not trials:
        return "(no finished trial yet)"
    criteria = results.criteria
    multi = len(criteria) > 1
    header = ["#", "state", "optimizer", *(criteria if multi else ["dev %"]), "LM calls", "USD", "s", "params"]
    rows = []
    for t in trials:
        scores = t.user_attrs.get("scores") or {}
        state = t.state.name.lower()
        if state == "complete" and not is_feasible(t):
            state = "infeasible"
        if multi:
            values = [_fmt((scores.get("criteria") or {}).get(c)) for c in criteria]
        else:
            values = [_fmt(t.value if t.values is not None else scores.get("dev"))]
        params = ", ".join(f"{k.split('.', 1)[-1]}={_fmt(v)}" for k, v in t.params.items() if k != "optimizer")
        rows.append(
            [
                str(t.number),
                state,
                t.user_attrs.get("optimizer") or t.params.get("optimizer", "?"),
                *values,
                str(t.user_attrs.get("lm_calls", "")),
                _usd(t.user_attrs),
                _fmt(t.user_attrs.get("seconds")),
                params,
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header[:-1])]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header[:-1], widths)) + "  " + header[-1]]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1])
    return "\n".join(lines)


def _usd(attrs: dict[str, Any]) -> str:
    """A trial's USD: ``unknown`` for an unknown price or a trial run before dollars were recorded."""
    usd = attrs.get("usd")
    return "unknown" if usd is None else f"{usd:.4f}" if usd < 1 else f"{usd:.2f}"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 1 or value == 0 else f"{value:.3g}"
    return str(value)


def param_importances(results: StudyResults) -> dict[str, float]:
    """Optuna's hyperparameter importances for the primary objective (``{}`` when they cannot be computed)."""
    import optuna

    complete = [t for t in results.study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(complete) < 2:
        return {}
    k = results.primary_index
    target = (lambda t: t.values[k]) if results.objective == "pareto" else None
    try:
        return dict(optuna.importance.get_param_importances(results.study, target=target))
    except Exception as exc:  # too few distinct values, a single-valued parameter ...
        logger.info("parameter importances not available: %s", exc)
        return {}


def save_plot(results: StudyResults, path: str | Path) -> Path | None:
    """One PNG: the optimization history (left) and hyperparameter importances (right).

    History: every finished trial's primary value (pruned trials at their partial
    score, marked x; infeasible ones hollow) and the best feasible value so far.
    """
    # A bare Figure draws without pyplot: no backend is chosen and no global figure state is touched.
    from matplotlib.figure import Figure

    trials = [t for t in results.study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED")]
    if not trials:
        return None
    fig = Figure(figsize=(12, 4.5))
    left, right = fig.subplots(1, 2)
    _draw_history(left, results, trials)
    _draw_importances(right, results)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _draw_history(ax: Any, results: StudyResults, trials: list[Any]) -> None:
    """Each finished trial's primary value, the best so far and the student's baseline."""
    from matplotlib.ticker import MaxNLocator

    k = results.primary_index
    front = {t.number for t in results.pareto_front()}
    best, best_x, best_y = -math.inf, [], []
    for t in sorted(trials, key=lambda t: t.number):
        if t.state.name == "COMPLETE":
            value = t.values[k]
            feasible = is_feasible(t)
            ax.scatter([t.number], [value], color="tab:blue", facecolors="tab:blue" if feasible else "none", zorder=3)
            counts = t.number in front if results.objective == "pareto" else feasible
            if counts:
                best = max(best, value)
        else:
            value = (t.user_attrs.get("scores") or {}).get("dev")
            if value is not None:
                ax.scatter([t.number], [value], color="tab:gray", marker="x", zorder=3)
        if best > -math.inf:
            best_x.append(t.number)
            best_y.append(best)
    if best_x:
        ax.step(best_x, best_y, where="post", color="tab:red", label="best so far")
    ax.scatter([], [], color="tab:blue", label="complete")
    ax.scatter([], [], color="tab:gray", marker="x", label="pruned (partial score)")
    if results.objective == "constraints":
        ax.scatter([], [], color="tab:blue", facecolors="none", label="infeasible")
    baseline = (results.baseline.get("criteria") or {}).get(results.primary)
    if baseline is not None:
        ax.axhline(baseline, color="tab:green", linestyle="--", linewidth=1, label="student (baseline)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"dev {results.primary} (0-100)")
    ax.set_title(f"Optimization history: {results.study_name}")
    ax.legend(loc="lower right", fontsize=8)


def _draw_importances(ax: Any, results: StudyResults) -> None:
    """The hyperparameter importances as bars (a note when there are too few trials)."""
    importances = param_importances(results)
    if importances:
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="tab:purple")
        ax.set_xlabel("importance")
        ax.set_title("Hyperparameter importances")
    else:
        ax.text(0.5, 0.5, "importances need >= 2 complete trials\nwith varied parameters", ha="center", va="center")
        ax.set_axis_off()
