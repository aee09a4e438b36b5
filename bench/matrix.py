"""Run `dspy-ext evaluate` / `dspy-ext compile` over a grid and tabulate the results.

Each cell is one CLI run whose `--json` output is kept in OUT_DIR, so an
interrupted grid resumes where it stopped. Results go to docs/benchmarks.md.

    python bench/matrix.py evaluate --out-dir bench/results
    python bench/matrix.py compile --budget 400 --out-dir bench/results \
        --optimizers ape,opro,evoprompt-ga,evoprompt-de,protegi

Use a fresh DSPY_CACHEDIR so that LM-call counts are those of a cold run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cells import run_cell  # noqa: E402
from _docs import write_section  # noqa: E402

TASKS = ["sentiment", "first_word_letter", "larger_animal", "singular_to_plural"]


def evaluate_grid(args: argparse.Namespace) -> None:
    rows = []
    for task in args.tasks:
        cells = {}
        for adapter in ("auto", "chat"):
            for demos in (args.demos, 0):
                cells[(adapter, demos)] = run_cell(
                    ["evaluate", "--task", task, "--demos", str(demos), "--split", "test", "--adapter", adapter],
                    args.out_dir / f"eval-{task}-{adapter}-{demos}.json", args.collect_only)
        rows.append((task, cells))
    lines = [f"`dspy-ext evaluate --task T --demos K --split test [--adapter chat] --json`, 100 test rows, "
             "greedy, exact match.", "",
             f"| task | plain, {args.demos} demos | plain, zero-shot | chat, {args.demos} demos | chat, zero-shot |",
             "|---|---|---|---|---|"]
    for task, cells in rows:
        def fmt(c):
            return "not run" if c is None else f"{c['score']:.0f}% ({sum(c['errors'].values())} err)"
        lines.append(f"| {task} | {fmt(cells[('auto', args.demos)])} | {fmt(cells[('auto', 0)])} | "
                     f"{fmt(cells[('chat', args.demos)])} | {fmt(cells[('chat', 0)])} |")
    lines += ["", "`err` counts rows with an error class (for the chat adapter these are parse errors: the model "
              "does not write the `[[ ## output ## ]]` markers)."]
    write_section("Embedded model: plain adapter vs DSPy's ChatAdapter", "\n".join(lines))


def compile_grid(args: argparse.Namespace) -> None:
    lines = [f"`dspy-ext compile --task T --optimizer O --budget {args.budget} --seed {args.seed} --train 50 --val 50`"
             " on the embedded model; test = the full `test.jsonl` (100 rows); baseline = the uncompiled student "
             "(human instruction, zero-shot) on the same rows.", "",
             "| task | optimizer | test % | baseline % | val % | LM calls | wall s |", "|---|---|---|---|---|---|---|"]
    for task in args.tasks:
        for opt in args.optimizers:
            cell = run_cell(["compile", "--task", task, "--optimizer", opt, "--budget", str(args.budget), "--seed",
                             str(args.seed), "--train", "50", "--val", "50", "--out",
                             str(args.out_dir / f"{task}-{opt}")], args.out_dir / f"compile-{task}-{opt}.json",
                            args.collect_only)
            if cell is None:
                lines.append(f"| {task} | {opt} | not run | | | | |")
                continue
            lines.append(f"| {task} | {opt} | {cell['test_score']:.0f} | {cell['baseline_test_score']:.0f} | "
                         f"{cell['val_score']:.0f} | {cell['lm_calls']} | {cell['seconds']:.0f} |")
    write_section(f"Instruction search on the embedded model (budget {args.budget})", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grid", choices=["evaluate", "compile"])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--optimizers", default="ape,opro,evoprompt-ga,evoprompt-de,protegi")
    parser.add_argument("--budget", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--demos", type=int, default=3)
    parser.add_argument("--out-dir", type=Path, default=Path("bench/results"))
    parser.add_argument("--collect-only", action="store_true", help="tabulate finished cells, run none")
    args = parser.parse_args()
    args.tasks = args.tasks.split(",")
    args.optimizers = args.optimizers.split(",")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (evaluate_grid if args.grid == "evaluate" else compile_grid)(args)


if __name__ == "__main__":
    main()
