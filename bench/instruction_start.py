"""The instruction searches against the free baseline at budget 200, with their demo start.

Every instruction search (APE, OPRO, EvoPrompt GA and DE, ProTeGi) now races the free baseline (the
student with 3 random labeled demos, 0 calls) against class-balanced demo sets before it proposes any
instruction (``dspy_ext/search/demo_start.py``). This runs each of them at budget 200 on sentiment and
first_word_letter over seeds 0-2, next to the labeled baseline, and writes the section "Instruction
searches from the demo start (issue 19)" of docs/benchmarks.md:

    DSPY_EXT_LLAMA_THREADS=1 python bench/instruction_start.py --jobs 2

The cells are resumable ``dspy-ext compare`` runs (one per task):

    dspy-ext compare --task T --optimizers ape,opro,evoprompt-ga,evoprompt-de,protegi,labeled --budget 200 \\
        --seeds 3 --seed 0 --threads 1 --out bench/results/issue19_start/T

``--collect-only`` tabulates what is stored. A cell that has not finished is shown as missing, never estimated.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cells import grid_arguments, run_commands  # noqa: E402
from _docs import write_section  # noqa: E402
from issue10 import cells, fmean  # noqa: E402

TASKS = ["sentiment", "first_word_letter"]
SEARCHES = ["ape", "opro", "evoprompt-ga", "evoprompt-de", "protegi"]
SEEDS = [0, 1, 2]
BUDGET = 200
RESULTS = ROOT / "bench" / "results" / "issue19_start"
TITLE = "Instruction searches from the demo start (issue 19)"
INTRO = (
    "`DSPY_EXT_LLAMA_THREADS=1 python bench/instruction_start.py --jobs 2` (the commands are in its docstring): "
    f"each instruction search at its defaults, budget {BUDGET}, seeds 0-2, on the embedded SmolLM2-135M with the "
    "plain adapter, 50 train / 50 val rows drawn per seed, test = the full 100-row test split. Every search "
    "first races the free baseline (the student with 3 random labeled demos, the draw each run reports as "
    "`baseline_test_score`) against class-balanced sets of 3, 8 and 16 demos on the first valset rows "
    "(`search.demo_start` in `run.json`); at budget 200 the race fits 10 rows. `labeled` is DSPy's "
    "LabeledFewShot(k=3), another random draw of 3 demos. Each cell: mean test % over the seeds (each seed; "
    "mean compile calls)."
)


def commands() -> list[list[str]]:
    base = ["dspy-ext", "compare", "--seeds", "3", "--seed", "0", "--threads", "1", "--budget", str(BUDGET)]
    optimizers = ",".join([*SEARCHES, "labeled"])
    return [base + ["--task", t, "--optimizers", optimizers, "--out", str(RESULTS / t)] for t in TASKS]


def seed_scores(task: str, optimizer: str, key: str = "test_score") -> list[float] | None:
    """The optimizer's ``key`` on each seed, or ``None`` when a seed is missing."""
    found = cells(RESULTS / task)
    if any((optimizer, s) not in found for s in SEEDS):
        return None
    return [found[(optimizer, s)]["row"][key] for s in SEEDS]


def cell_text(task: str, optimizer: str, key: str = "test_score") -> tuple[str, float | None]:
    """``"mean (per-seed scores; mean calls)"`` and the mean, or ``"missing"``."""
    scores = seed_scores(task, optimizer, key)
    if scores is None:
        return "missing", None
    calls = "0" if key != "test_score" else f"{fmean(seed_scores(task, optimizer, 'lm_calls')):.0f}"
    return f"{fmean(scores):.1f} ({', '.join(f'{t:.0f}' for t in scores)}; {calls} calls)", fmean(scores)


def table() -> str:
    """Per optimizer and task: mean test % next to both labeled baselines, and the mean over both tasks."""
    rows = [
        ("free baseline (each run's `baseline_test_score`)", "ape", "baseline_test_score"),
        ("labeled (DSPy's LabeledFewShot, k=3)", "labeled", "test_score"),
        *[(o, o, "test_score") for o in SEARCHES],
    ]
    head = "| optimizer | " + " | ".join(TASKS) + " | mean | vs free baseline | vs LabeledFewShot |"
    lines = [head, "|---" * (len(TASKS) + 4) + "|"]
    means = {}
    for label, optimizer, key in rows:
        texts, values = zip(*(cell_text(t, optimizer, key) for t in TASKS))
        means[label] = fmean(list(values)) if None not in values else None
    free, labeled = means[rows[0][0]], means[rows[1][0]]
    for label, optimizer, key in rows:
        texts = [cell_text(t, optimizer, key)[0] for t in TASKS]
        mean = means[label]
        vs = [_diff(mean, free), _diff(mean, labeled)]
        lines.append(f"| {label} | " + " | ".join(texts) + f" | {_fmt(mean)} | " + " | ".join(vs) + " |")
    return "\n".join(lines)


def below_baseline() -> str:
    """The (task, seed) runs whose test score fell below that seed's free baseline."""
    below = []
    for task in TASKS:
        for optimizer in SEARCHES:
            tests, bases = seed_scores(task, optimizer), seed_scores(task, optimizer, "baseline_test_score")
            if tests is None or bases is None:
                continue
            below += [f"{optimizer} {task} s{s} ({t:.0f} < {b:.0f})" for s, t, b in zip(SEEDS, tests, bases) if t < b]
    return ", ".join(below) or "none"


def _diff(value: float | None, base: float | None) -> str:
    return "–" if value is None or base is None else f"{value - base:+.1f}"


def starts() -> str:
    """Which demo set each search started from, over tasks and seeds: read off each run's ``run.json`` (run
    folders are not committed), kept in ``starts.json`` for ``--collect-only`` on a fresh clone."""
    kept = RESULTS / "starts.json"
    chosen: dict[str, str] = json.loads(kept.read_text()) if kept.exists() else {}
    for task in TASKS:
        for (optimizer, seed), cell in cells(RESULTS / task).items():
            run_json = ROOT / cell["row"]["out"] / "run.json"
            if optimizer in SEARCHES and run_json.exists():
                start = json.loads(run_json.read_text())["search"].get("demo_start") or {}
                chosen[f"{optimizer}/{task}/s{seed}"] = start.get("chosen", "none raced")
    kept.write_text(json.dumps(chosen, indent=1, sort_keys=True) + "\n")
    counts: dict[str, dict[str, int]] = {}
    for cell, name in sorted(chosen.items()):
        per = counts.setdefault(cell.split("/")[0], {})
        per[name] = per.get(name, 0) + 1
    return "; ".join(f"{o}: " + ", ".join(f"{k} x{n}" for k, n in sorted(c.items())) for o, c in counts.items())


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def main() -> None:
    args = grid_arguments(__doc__)
    if not args.collect_only:
        run_commands(commands(), args.jobs)
    body = "\n\n".join(
        [
            INTRO,
            table(),
            f"Runs below their seed's free baseline on test: {below_baseline()}.",
            f"Demo starts chosen (over both tasks and the 3 seeds): {starts()}.",
        ]
    )
    print(body)
    if not args.no_doc:
        write_section(TITLE, body)


if __name__ == "__main__":
    main()
