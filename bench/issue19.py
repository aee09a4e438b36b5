"""Issue 19's acceptance benchmark: the default (DemoSearch with the answer rule) against DSPy's optimizers.

One command runs every missing cell (each a resumable `dspy-ext compare` cell, so an interrupted run continues
where it stopped; the most needed cells first) and writes the section "Issue 19: the default against DSPy's
optimizers" of docs/benchmarks.md, with the plot docs/issue19_score_vs_calls.png:

    python bench/issue19.py --jobs 2

``--collect-only`` tabulates what is stored. Every cell runs at budget 400 (a hard cap for dspy-ext's optimizers;
DSPy's map it onto their own settings), seeds 0-2, ``--threads 1``, one llama.cpp thread per process. The
cells, per task T (the public five, then the four held-out tasks of docs/held_out_tasks.md):

    # MIPROv2 light, bfsrs and LabeledFewShot: issue 10's cells, same harness and splits
    dspy-ext compare --task T --optimizers mipro,bfsrs,labeled --budget 400 --seeds 3 --seed 0 --threads 1 \\
        --out bench/results/issue10/T      # sentence_similarity: bench/results/issue19_mipro/T
    # the default at its defaults; on the public tasks, the likelihood column of bench/screens.py
    dspy-ext compare --task T --optimizers demo-search ... --out bench/results/issue19_final/default/T
    # GEPA light (its preset sizes its metric calls, not the budget), reflecting with the task model itself
    dspy-ext compare --task T --optimizers gepa --optimizer-config '{"gepa": {"auto": "light"}}' ... \
        --out bench/results/issue19_final/gepa/T
    # the default at budget 200 (public tasks)
    dspy-ext compare --task T --optimizers demo-search --budget 200 ... --out bench/results/issue19_b200/T
    # the ablation, on the three closed-label public tasks: no answer rule (free generation only)
    dspy-ext compare --task T --optimizers demo-search \\
        --optimizer-config '{"demo-search": {"answer_rules": ["free"]}}' ... --out bench/results/issue19_ablation/free/T

The ablation's other rows are read from the cells of bench/screens.py (the accuracy screen) and
bench/screen_rows.py (the screen on training rows). Cells that have not finished are shown as missing, never
estimated.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cells import run_grid  # noqa: E402
from _plot import score_vs_calls  # noqa: E402
from issue10 import cells, fmean, paired_text, task_runs  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CLOSED = ["sentiment", "first_word_letter", "sentence_similarity"]
PUBLIC = ["sentiment", "first_word_letter", "larger_animal", "singular_to_plural", "sentence_similarity"]
HELD_OUT = ["active_to_passive", "negation", "translation_en-es", "antonyms"]  # docs/held_out_tasks.md
COLUMNS = ["default", "mipro", "gepa", "bfsrs", "labeled", "default @200"]
OPTIMIZER = {"default": "demo-search", "default @200": "demo-search"}
ABLATION = {
    "the default (all levers on)": ("issue19_screens/likelihood", "{}"),
    "answer rule off (free generation only)": ("issue19_ablation/free", '{"answer_rules": ["free"]}'),
    "constrained only (calibration off)": ("issue19_ablation/constrained", '{"answer_rules": ["free", "constrained"]}'),
    "screen by accuracy (likelihood screen off)": ("issue19_screens/accuracy", '{"screen_by": "accuracy"}'),
    "screen on unused train rows": ("issue19_screen_on/train", '{"screen_on": "train"}'),
}
GEPA_LIGHT = '{"auto": "light"}'  # GEPA's light preset; it sizes its own metric calls (580 on 50 val rows)
TITLE = "Issue 19: the default against DSPy's optimizers"
PLOT = ROOT / "docs" / "issue19_score_vs_calls.png"


def folder(column: str, task: str) -> Path:
    """Where ``column``'s cells of ``task`` are stored."""
    if column in ("mipro", "bfsrs", "labeled"):
        return RESULTS / ("issue19_mipro" if task == "sentence_similarity" else "issue10") / task
    if column == "default":
        return RESULTS / ("issue19_screens/likelihood" if task in PUBLIC else "issue19_final/default") / task
    if column == "gepa":
        return RESULTS / "issue19_final" / "gepa" / task
    return RESULTS / "issue19_b200" / task


# ---- running -------------------------------------------------------------------------------------------
def compare(task: str, optimizers: str, out: Path, budget: int = 400, config: str = "") -> list[str]:
    """The ``compare`` command of one task's cells; ``config`` is the first optimizer's, as JSON."""
    extra = ["--optimizer-config", json.dumps({optimizers.split(",")[0]: json.loads(config)})] if config else []
    return [sys.executable, "-m", "dspy_ext", "compare", "--task", task, "--optimizers", optimizers, *extra] + [
        "--budget",
        str(budget),
        "--seeds",
        "3",
        "--seed",
        "0",
        "--threads",
        "1",
        "--out",
        str(out),
    ]


def commands() -> list[list[str]]:
    """Every cell's command, the goal's cells first (held-out default and baselines, GEPA, budget 200, ablation)."""
    jobs = [compare(t, "mipro,bfsrs,labeled", folder("mipro", t)) for t in PUBLIC + HELD_OUT]
    jobs += [compare(t, "demo-search", folder("default", t)) for t in PUBLIC + HELD_OUT]
    jobs += [compare(t, "gepa", folder("gepa", t), config=GEPA_LIGHT) for t in PUBLIC + HELD_OUT]
    jobs += [compare(t, "demo-search", folder("default @200", t), budget=200) for t in PUBLIC]
    for folder_name, config in ABLATION.values():
        jobs += [compare(t, "demo-search", RESULTS / folder_name / t, config=config) for t in CLOSED]
    return jobs


# ---- reading -------------------------------------------------------------------------------------------
def runs(column: str, task: str, root: Path | None = None) -> list[dict] | None:
    """The column's cells of ``task`` (in ``root`` if given) over seeds 0-2, or ``None`` when any seed is missing."""
    return task_runs(root or folder(column, task), OPTIMIZER.get(column, column))


def stored_seeds(root: Path, optimizer: str) -> list[int]:
    return sorted(s for (o, s) in cells(root) if o == optimizer)


def cell_text(found: list[dict] | None, stored: list[int]) -> str:
    """Mean test % (per-seed scores; mean calls), or which seeds are stored when incomplete."""
    if found is None:
        return f"missing (seeds stored: {', '.join(map(str, stored)) or 'none'})"
    tests = [c["row"]["test_score"] for c in found]
    calls = fmean([c["row"]["lm_calls"] for c in found])
    return f"{fmean(tests):.1f} ({', '.join(f'{t:.0f}' for t in tests)}; {calls:.0f} calls)"


def table(tasks: list[str]) -> tuple[str, dict[str, dict[str, tuple[float, float]]]]:
    """Tasks x columns and ``{column: {task: (mean test, mean calls)}}`` of the complete cells."""
    lines = ["| task | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    means: dict[str, dict[str, tuple[float, float]]] = {c: {} for c in COLUMNS}
    for task in tasks:
        texts = []
        for column in COLUMNS:
            if column == "default @200" and task not in PUBLIC:
                texts.append("not run")
                continue
            found = runs(column, task)
            texts.append(cell_text(found, stored_seeds(folder(column, task), OPTIMIZER.get(column, column))))
            if found is not None:
                means[column][task] = (
                    fmean([c["row"]["test_score"] for c in found]),
                    fmean([c["row"]["lm_calls"] for c in found]),
                )
        lines.append(f"| {task} | " + " | ".join(texts) + " |")
    row = []
    for column in COLUMNS:
        got = [means[column][t] for t in tasks if t in means[column]]
        row.append(
            f"**{fmean([g[0] for g in got]):.1f}** ({fmean([g[1] for g in got]):.0f} calls)"
            if len(got) == len(tasks)
            else f"{len(got)} of {len(tasks)} tasks"
        )
    lines.append("| **mean of tasks** | " + " | ".join(row) + " |")
    return "\n".join(lines), means


def pooled(tasks: list[str], a: str = "default", b: str = "mipro") -> str:
    """Paired test of ``a`` against ``b`` on every (task, seed, test row) of the tasks where both are complete."""
    both = {t: (runs(a, t), runs(b, t)) for t in tasks}
    used = [t for t, (x, y) in both.items() if x is not None and y is not None]
    if not used:
        return "no task has both complete"
    scope = "" if len(used) == len(tasks) else f" (only {', '.join(used)})"
    return paired_text([pair for t in used for pair in zip(*both[t])]) + scope


def goal(means: dict[str, dict[str, tuple[float, float]]]) -> str:
    """The issue's goal, checked on the complete cells."""
    out = []
    checks = (
        ("closed-label public tasks", CLOSED, 10.0),
        ("five public tasks", PUBLIC, 5.0),
        ("held-out", HELD_OUT, 0),
    )
    for name, tasks, target in checks:
        if not all(t in means["default"] and t in means["mipro"] for t in tasks):
            out.append(f"- **{name}:** cells missing; the goal cannot be checked.")
            continue
        ours, theirs = ([means[c][t] for t in tasks] for c in ("default", "mipro"))
        score = fmean([o[0] for o in ours]) - fmean([t[0] for t in theirs])
        calls = (fmean([o[1] for o in ours]), fmean([t[1] for t in theirs]))
        reached = score >= target and calls[0] <= calls[1]
        wanted = "not below MIPROv2" if target == 0 else f"+{target:.0f} points"
        out.append(
            f"- **{name}** (goal: {wanted} at no more calls): default {fmean([o[0] for o in ours]):.1f}% at "
            f"{calls[0]:.0f} calls, MIPROv2 light {fmean([t[0] for t in theirs]):.1f}% at {calls[1]:.0f}: "
            f"{score:+.1f} points; pooled paired test {pooled(tasks)}. **{'Reached' if reached else 'Not reached'}.**"
        )
    return "\n".join(out)


def ablation() -> str:
    """Each lever on and off on the three closed-label public tasks (mean test %, calls)."""
    lines = ["| variant | " + " | ".join(CLOSED) + " | mean |", "|---" * (len(CLOSED) + 2) + "|"]
    for label, (folder_name, config) in ABLATION.items():
        texts, tests = [], []
        for task in CLOSED:
            root = RESULTS / folder_name / task
            found = runs("default", task, root)
            texts.append(cell_text(found, stored_seeds(root, "demo-search")))
            if found is not None:
                tests.append(fmean([c["row"]["test_score"] for c in found]))
        mean = f"**{fmean(tests):.1f}**" if len(tests) == len(CLOSED) else "–"
        lines.append(f"| {label} `{config}` | " + " | ".join(texts) + f" | {mean} |")
    return "\n".join(lines)


def plot() -> None:
    """Every public run (dots) and each column's mean (stars): test % against compile calls."""
    series = {
        column: [(c["row"]["lm_calls"], c["row"]["test_score"]) for t in PUBLIC for c in (runs(column, t) or [])]
        for column in COLUMNS
    }
    score_vs_calls(
        series,
        PLOT,
        "Public tasks, seeds 0-2: each run (dots), each optimizer's mean (stars)",
        "LM calls of the compile (forward passes and reflections included)",
    )


def body() -> str:
    public, means = table(PUBLIC)
    held, held_means = table(HELD_OUT)
    for column in COLUMNS:
        means[column].update(held_means[column])
    return "\n\n".join(
        [
            "`python bench/issue19.py --jobs 2` (runs what is missing, then writes this section; the commands are "
            "in its docstring). Budget 400, seeds 0-2 (50 train / 50 val rows drawn per seed, the full 100-row "
            "test split), embedded SmolLM2-135M-Instruct, PlainAdapter, one llama.cpp thread per process. Each "
            "cell: mean test % over seeds 0-2 (each seed's score; mean compile LM calls). `default` is DemoSearch "
            "at its defaults (the answer rule raced with the demos); `default @200` is the same at budget 200.",
            "**Public tasks** (the closed-label ones are sentiment, first_word_letter and sentence_similarity):",
            public,
            "**Held-out tasks** (never tuned on; docs/held_out_tasks.md):",
            held,
            "![score vs calls](issue19_score_vs_calls.png)",
            "**The goal**, against MIPROv2 light:",
            goal(means),
            "Pooled paired tests of the default against the others, five public tasks: "
            + "; ".join(f"vs {c} {pooled(PUBLIC, b=c)}" for c in ("gepa", "bfsrs", "labeled")),
            "**Ablation**, each lever on and off on the three closed-label public tasks (budget 400, seeds 0-2):",
            ablation(),
        ]
    )


def main() -> None:
    run_grid(__doc__, commands, body, TITLE, before_write=plot)


if __name__ == "__main__":
    main()
