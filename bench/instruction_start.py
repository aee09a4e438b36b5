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


def commands() -> list[list[str]]:
    base = ["dspy-ext", "compare", "--seeds", "3", "--seed", "0", "--threads", "1", "--budget", str(BUDGET)]
    optimizers = ",".join([*SEARCHES, "labeled"])
    return [base + ["--task", t, "--optimizers", optimizers, "--out", str(RESULTS / t)] for t in TASKS]


def cell_text(task: str, optimizer: str) -> tuple[str, float | None]:
    """``"mean (per-seed scores; mean calls; start k)"`` and the mean, or what is missing."""
    found = cells(RESULTS / task)
    runs = [found[(optimizer, s)]["row"] for s in SEEDS if (optimizer, s) in found]
    if not runs:
        return "not run", None
    tests = [r["test_score"] for r in runs]
    calls = fmean([r["lm_calls"] for r in runs])
    missing = "" if len(runs) == len(SEEDS) else f" [{len(runs)} of {len(SEEDS)} seeds]"
    text = f"{fmean(tests):.1f} ({', '.join(f'{t:.0f}' for t in tests)}; {calls:.0f} calls){missing}"
    return text, fmean(tests) if len(runs) == len(SEEDS) else None


def table() -> tuple[str, dict[str, float | None]]:
    """Per optimizer and task: mean test % next to the labeled baseline's, and the mean over both tasks."""
    lines = ["| optimizer | " + " | ".join(TASKS) + " | mean | vs labeled |", "|---" * (len(TASKS) + 3) + "|"]
    means: dict[str, float | None] = {}
    for optimizer in ["labeled", *SEARCHES]:
        texts, values = zip(*(cell_text(t, optimizer) for t in TASKS))
        means[optimizer] = fmean(list(values)) if None not in values else None
        lines.append(f"| {optimizer} | " + " | ".join(texts) + f" | {_fmt(means[optimizer])} | {{vs}} |")
    base = means["labeled"]
    rows = []
    for line, optimizer in zip(lines[2:], ["labeled", *SEARCHES]):
        mean = means[optimizer]
        vs = "–" if mean is None or base is None else f"{mean - base:+.1f}"
        rows.append(line.replace("{vs}", vs))
    return "\n".join(lines[:2] + rows), means


def starts() -> str:
    """Which demo set each search started from (counted over tasks and seeds, read off each run's run.json)."""
    counts: dict[str, dict[str, int]] = {}
    for task in TASKS:
        for (optimizer, _), cell in cells(RESULTS / task).items():
            run_json = ROOT / cell["row"]["out"] / "run.json"
            if optimizer not in SEARCHES or not run_json.exists():
                continue
            start = (json.loads(run_json.read_text()).get("search") or {}).get("demo_start") or {}
            chosen = counts.setdefault(optimizer, {})
            name = start.get("chosen", "none raced")
            chosen[name] = chosen.get(name, 0) + 1
    return "; ".join(f"{o}: " + ", ".join(f"{k} x{n}" for k, n in sorted(c.items())) for o, c in counts.items())


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def main() -> None:
    args = grid_arguments(__doc__)
    if not args.collect_only:
        run_commands(commands(), args.jobs)
    text, _ = table()
    body = "\n\n".join([__doc__.split("\n\n", 2)[1].replace("\n", " "), text, f"Demo starts chosen: {starts()}."])
    print(body)
    if not args.no_doc:
        write_section(TITLE, body)


if __name__ == "__main__":
    main()
