"""Issue 19, item 4: DemoSearch's screen on training rows the arm does not show, against the screen on val.

The default screen scores each arm on the first 20 validation rows, which the race on val then scores again, so
the choice rests on the 50 val rows only. ``screen_on="train"`` screens each arm on 20 training rows it does
not show as demos (a fixed seeded order; topped up with val rows if too few are left): 20 more labeled rows
take part in the choice, at the same number of calls. One command runs every missing cell (resumable
`dspy-ext compare` cells) and writes the section "Issue 19: DemoSearch's screen rows" of docs/benchmarks.md:

    python bench/screen_rows.py --jobs 2

The ``val`` column is the likelihood column of ``bench/screens.py`` (DemoSearch at its defaults). The ``train``
column runs, per public task T:

    python -m dspy_ext compare --task T --optimizers demo-search \\
        --optimizer-config '{"demo-search": {"screen_on": "train"}}' --budget 400 --seeds 3 --seed 0 --threads 1 \\
        --out bench/results/issue19_screen_on/train/T

``--collect-only`` tabulates what is stored; cells that have not finished are shown as missing, never estimated.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cells import run_grid  # noqa: E402
from issue10 import SEEDS, cells, fmean, paired_text  # noqa: E402

TASKS = ["sentiment", "first_word_letter", "larger_animal", "singular_to_plural", "sentence_similarity"]
CLOSED = ["sentiment", "first_word_letter", "sentence_similarity"]
FOLDERS = {
    "val": Path("bench") / "results" / "issue19_screens" / "likelihood",
    "train": Path("bench") / "results" / "issue19_screen_on" / "train",
}
DEFAULT = "val"
MARGIN = 1.0
TITLE = "Issue 19: DemoSearch's screen rows"
RULE = (
    '`screen_on="train"` becomes the default only if its mean test score over the five public tasks x seeds 0-2 '
    "at budget 400 is higher than the default's (`val`) by at least 1.0 point; the held-out tasks are not looked "
    "at for this choice."
)


def commands() -> list[list[str]]:
    """One ``compare`` command per public task for the ``train`` column (the ``val`` column is stored)."""
    return [
        [sys.executable, "-m", "dspy_ext", "compare", "--task", task, "--optimizers", "demo-search"]
        + ["--optimizer-config", json.dumps({"demo-search": {"screen_on": "train"}})]
        + ["--budget", "400", "--seeds", "3", "--seed", "0", "--threads", "1"]
        + ["--out", str(FOLDERS["train"] / task)]
        for task in TASKS
    ]


def runs(column: str, task: str) -> dict[int, dict]:
    """``{seed: cell}`` of the finished demo-search cells of ``column`` on ``task``."""
    found = cells(FOLDERS[column] / task)
    return {s: found[("demo-search", s)] for s in SEEDS if ("demo-search", s) in found}


def cell_text(column: str, task: str) -> tuple[str, float | None, float | None]:
    """A table cell (mean test %, per-seed scores, mean calls, mean val-test gap), its mean and its mean gap."""
    done = runs(column, task)
    if not done:
        return "missing", None, None
    rows = [done[s]["row"] for s in sorted(done)]
    tests = [r["test_score"] for r in rows]
    gap = fmean([r["val_score"] - r["test_score"] for r in rows])
    text = (
        f"{fmean(tests):.1f} ({', '.join(f'{t:.0f}' for t in tests)}; "
        f"{fmean([r['lm_calls'] for r in rows]):.0f} calls; gap {gap:+.1f})"
    )
    if len(done) < len(SEEDS):
        return text + f" **{len(SEEDS) - len(done)} seed(s) missing**", None, None
    return text, fmean(tests), gap


def table() -> tuple[str, dict[str, dict[str, float]], dict[str, list[float]]]:
    """Tasks x columns; the per-task means and val-test gaps of the finished cells."""
    lines = ["| task | screen on val (default) | screen on unused train rows |", "|---|---|---|"]
    means: dict[str, dict[str, float]] = {c: {} for c in FOLDERS}
    gaps: dict[str, list[float]] = {c: [] for c in FOLDERS}
    for task in TASKS:
        texts = []
        for column in FOLDERS:
            text, mean, gap = cell_text(column, task)
            texts.append(text)
            if mean is not None:
                means[column][task] = mean
                gaps[column].append(gap)
        lines.append(f"| {task} | " + " | ".join(texts) + " |")
    for label, tasks in (("closed-label three", CLOSED), ("five public", TASKS)):
        row = [
            f"**{fmean([means[c][t] for t in tasks]):.2f}**" if all(t in means[c] for t in tasks) else "incomplete"
            for c in FOLDERS
        ]
        lines.append(f"| mean, {label} | " + " | ".join(row) + " |")
    return "\n".join(lines), means, gaps


def pooled(tasks: list[str]) -> str:
    """Paired test of ``train`` against ``val`` on every (task, seed, test row) both finished."""
    pairs = [(runs("train", t), runs("val", t)) for t in tasks]
    return paired_text([(left[s], right[s]) for left, right in pairs for s in SEEDS if s in left and s in right])


def verdict(means: dict[str, dict[str, float]]) -> str:
    """The stated rule applied to the measured means (only when every cell finished)."""
    if any(len(means[c]) < len(TASKS) for c in FOLDERS):
        return '**The rule is not applied:** some cells are missing. The default stays `screen_on="val"`.'
    mean = {c: fmean(list(means[c].values())) for c in FOLDERS}
    lead = mean["train"] - mean[DEFAULT]
    picked = "train" if lead >= MARGIN else DEFAULT
    return (
        f'**The rule picks `screen_on="{picked}"`.** Means of the five tasks: val {mean["val"]:.2f}, train '
        f"{mean['train']:.2f} ({lead:+.2f}; the margin is {MARGIN:.1f})."
    )


def body() -> str:
    text, means, gaps = table()
    gap_line = "; ".join(f"{c} {fmean(g):+.1f} over {len(g)} tasks" if g else f"{c} –" for c, g in gaps.items())
    return "\n".join(
        [
            "`python bench/screen_rows.py --jobs 2` (runs what is missing, then writes this section; the commands "
            "are in its docstring). DemoSearch at its defaults except `screen_on`. Budget 400 (a hard cap), seeds "
            "0-2 (50 train / 50 val rows drawn per seed, the full 100-row test split), embedded "
            "SmolLM2-135M-Instruct, PlainAdapter, one llama.cpp thread per process, 2 shared cores.",
            "",
            f"**The rule, stated before any cell was run:** {RULE}",
            "",
            "Each cell: mean test % over seeds 0-2 (each seed's score; mean compile LM calls; mean val-minus-test "
            "gap of the chosen program: how much the val score the search reports overstates test).",
            "",
            text,
            "",
            f"Mean val-minus-test gap: {gap_line}.",
            "",
            f"Pooled paired test, train vs val: five public tasks {pooled(TASKS)}; closed-label three "
            f"{pooled(CLOSED)}.",
            "",
            verdict(means),
        ]
    )


def main() -> None:
    run_grid(__doc__, commands, body, TITLE)


if __name__ == "__main__":
    main()
