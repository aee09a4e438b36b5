"""Run `dspy-ext evaluate` over tasks x adapters x demos and tabulate the results.

Each cell is one CLI run whose `--json` output is kept in OUT_DIR, so an
interrupted grid resumes where it stopped. Results go to docs/benchmarks.md.

    python bench/matrix.py evaluate --out-dir bench/results

Optimizer runs (one seed or several) are tabulated by bench/compare_tasks.py.
Use a fresh DSPY_CACHEDIR so that LM-call counts are those of a cold run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cells import run_cell
from _docs import write_section

TASKS = ["sentiment", "first_word_letter", "larger_animal", "singular_to_plural"]


def evaluate_grid(args: argparse.Namespace) -> None:
    rows = []
    for task in args.tasks:
        cells = {}
        for adapter in ("auto", "chat"):
            for demos in (args.demos, 0):
                cells[(adapter, demos)] = run_cell(
                    ["evaluate", "--task", task, "--demos", str(demos), "--split", "test", "--adapter", adapter],
                    args.out_dir / f"eval-{task}-{adapter}-{demos}.json",
                    args.collect_only,
                )
        rows.append((task, cells))
    lines = [
        "`dspy-ext evaluate --task T --demos K --split test [--adapter chat] --json`, 100 test rows, "
        "greedy, exact match.",
        "",
        f"| task | plain, {args.demos} demos | plain, zero-shot | chat, {args.demos} demos | chat, zero-shot |",
        "|---|---|---|---|---|",
    ]
    for task, cells in rows:

        def fmt(c):
            return "not run" if c is None else f"{c['score']:.0f}% ({sum(c['errors'].values())} err)"

        lines.append(
            f"| {task} | {fmt(cells[('auto', args.demos)])} | {fmt(cells[('auto', 0)])} | "
            f"{fmt(cells[('chat', args.demos)])} | {fmt(cells[('chat', 0)])} |"
        )
    lines += [
        "",
        "`err` counts rows with an error class (for the chat adapter these are parse errors: the model "
        "does not write the `[[ ## output ## ]]` markers).",
    ]
    write_section("Embedded model: plain adapter vs DSPy's ChatAdapter", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grid", choices=["evaluate"])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--demos", type=int, default=3)
    parser.add_argument("--out-dir", type=Path, default=Path("bench/results"))
    parser.add_argument("--collect-only", action="store_true", help="tabulate finished cells, run none")
    args = parser.parse_args()
    args.tasks = args.tasks.split(",")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    evaluate_grid(args)


if __name__ == "__main__":
    main()
