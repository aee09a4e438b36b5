"""Issue 19's goal, with the cells measured so far: DemoSearch at its defaults against MIPROv2 light.

Reads stored cells only (it runs nothing) and writes the section "Issue 19: the default against MIPROv2 so far"
of docs/benchmarks.md:

    python bench/issue19_goal.py

The default's cells are the ``likelihood`` column of ``bench/screens.py`` (DemoSearch at its defaults, budget
400, seeds 0-2). MIPROv2's are issue 10's cells on the four original public tasks (``bench/issue10.py``, the
same harness, seeds and splits) and, for sentence_similarity:

    dspy-ext compare --task sentence_similarity --optimizers mipro,labeled --budget 400 --seeds 3 --seed 0 \\
        --threads 1 --out bench/results/issue19_mipro/sentence_similarity
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import write_section  # noqa: E402
from issue10 import SEEDS, cells, fmean  # noqa: E402

from dspy_ext.evaluation.significance import paired_test  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CLOSED = ["sentiment", "first_word_letter", "sentence_similarity"]
PUBLIC = ["sentiment", "first_word_letter", "larger_animal", "singular_to_plural", "sentence_similarity"]
TITLE = "Issue 19: the default against MIPROv2 so far"


def folders(task: str) -> dict[str, tuple[Path, str]]:
    """Where each column's cells of ``task`` are: ``{column: (compare folder, optimizer)}``."""
    mipro = RESULTS / ("issue19_mipro" if task == "sentence_similarity" else "issue10") / task
    return {
        "default": (RESULTS / "issue19_screens" / "likelihood" / task, "demo-search"),
        "mipro": (mipro, "mipro"),
    }


def runs(task: str, column: str) -> list[dict] | None:
    folder, optimizer = folders(task)[column]
    found = cells(folder)
    return None if any((optimizer, s) not in found for s in SEEDS) else [found[(optimizer, s)] for s in SEEDS]


def table() -> tuple[str, dict[str, dict[str, float]]]:
    lines = ["| task | default (DemoSearch) | MIPROv2 light | difference |", "|---|---|---|---|"]
    means: dict[str, dict[str, float]] = {}
    for task in PUBLIC:
        both = {c: runs(task, c) for c in ("default", "mipro")}
        if any(v is None for v in both.values()):
            lines.append(f"| {task} | missing | missing | – |")
            continue
        row = {}
        for column, found in both.items():
            tests = [r["row"]["test_score"] for r in found]  # type: ignore[union-attr]
            calls = fmean([r["row"]["lm_calls"] for r in found])  # type: ignore[union-attr]
            row[column] = f"{fmean(tests):.1f} ({', '.join(f'{t:.0f}' for t in tests)}; {calls:.0f} calls)"
            means.setdefault(column, {})[task] = fmean(tests)
            means.setdefault(f"{column}_calls", {})[task] = calls
        diff = means["default"][task] - means["mipro"][task]
        lines.append(f"| {task} | {row['default']} | {row['mipro']} | {diff:+.1f} |")
    return "\n".join(lines), means


def pooled(tasks: list[str]) -> str:
    a, b = [], []
    for task in tasks:
        mine, theirs = runs(task, "default"), runs(task, "mipro")
        if mine is None or theirs is None:
            return "not all cells are stored"
        for x, y in zip(mine, theirs):
            a += x["scores"]
            b += y["scores"]
    test = paired_test(a, b)
    return f"{100 * test.diff:+.1f} points on {test.n} paired rows, p = {test.p_value:.2g}"


def goal(means: dict[str, dict[str, float]]) -> str:
    out = []
    for name, tasks, target in (("closed-label public tasks", CLOSED, 10.0), ("five public tasks", PUBLIC, 5.0)):
        if not all(t in means.get("default", {}) and t in means.get("mipro", {}) for t in tasks):
            out.append(f"- **{name}:** cells missing.")
            continue
        ours, theirs = (fmean([means[c][t] for t in tasks]) for c in ("default", "mipro"))
        calls = [fmean([means[f"{c}_calls"][t] for t in tasks]) for c in ("default", "mipro")]
        reached = ours - theirs >= target and calls[0] <= calls[1]
        out.append(
            f"- **{name}** (goal +{target:.0f} at no more calls): default {ours:.1f}% at {calls[0]:.0f} calls, "
            f"MIPROv2 {theirs:.1f}% at {calls[1]:.0f}: {ours - theirs:+.1f} points; pooled paired test "
            f"{pooled(tasks)}. {'Reached' if reached else 'Not reached'} on these cells."
        )
    return "\n".join(out)


def main() -> None:
    text, means = table()
    body = "\n\n".join(
        [
            "`python bench/issue19_goal.py` (reads stored cells; the commands are in its docstring). Each cell: "
            "mean test % over seeds 0-2 (each seed; mean compile calls). The held-out tasks, GEPA, bfsrs, "
            "LabeledFewShot, the budget-200 run and the ablation of the issue's benchmark are not run yet, so "
            "this is not the issue's acceptance table.",
            text,
            goal(means),
        ]
    )
    write_section(TITLE, body)
    print(body)


if __name__ == "__main__":
    main()
