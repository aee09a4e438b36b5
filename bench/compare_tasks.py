"""Run `dspy-ext compare` on several tasks and put one combined table and plot in docs/benchmarks.md.

Each task's comparison lives in OUT_DIR/TASK (cells, results.md/.csv/.json, plot, trial logs) and
resumes on its own, so an interrupted run loses at most the cell in flight.

    DSPY_CACHEDIR=$(mktemp -d) python bench/compare_tasks.py --out-dir bench/results/compare \
        --optimizers ape,opro,evoprompt-ga,evoprompt-de,protegi,mipro,copro,bfsrs --budget 400 --seeds 3

Tasks run one after another; on a machine with spare cores start one process per task
(`--tasks sentiment`, ...) with DSPY_EXT_LLAMA_THREADS=1, then `--collect-only` to tabulate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import DOC, write_section  # noqa: E402

from dspy_ext.compare.report import Cell, draw_score_vs_calls, summarise  # noqa: E402
from dspy_ext.compare.runner import cell_from_json, write_reports  # noqa: E402

TASKS = ["sentiment", "first_word_letter", "larger_animal", "singular_to_plural"]
OPTIMIZERS = "ape,opro,evoprompt-ga,evoprompt-de,protegi,mipro,copro,bfsrs"
PLOT = DOC.parent / "compare_score_vs_calls.png"


def run_task(task: str, args: argparse.Namespace, optimizers: list[str]) -> dict | None:
    """The task's finished cells and summary, running (or resuming) its comparison first unless ``--collect-only``."""
    folder = args.out_dir / task
    if not args.collect_only:
        cmd = [
            sys.executable,
            "-m",
            "dspy_ext",
            "compare",
            "--task",
            task,
            "--optimizers",
            args.optimizers,
            "--budget",
            str(args.budget),
            "--seeds",
            str(args.seeds),
            "--train",
            "50",
            "--val",
            "50",
            "--out",
            str(folder),
            "--json",
        ]
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            print(f"{task}: compare failed\n{proc.stderr[-2000:]}", file=sys.stderr)
    cells = load_cells(folder)
    if not cells:
        return None
    # Summarised from the stored cells, so a comparison still running (or cut short) can be tabulated.
    results = folder / "results.json"
    meta = json.loads(results.read_text()) if results.exists() else {}
    summary = summarise(cells, optimizers)
    if meta:  # the task's own report, re-rendered over every stored cell and the full optimizer list
        meta = {**meta, "optimizers": optimizers, "seeds": sorted({c.seed for c in cells})}
        write_reports(folder, meta, summary, cells)
    return {"cells": cells, "summary": summary, "failed": meta.get("failed", [])}


def load_cells(folder: Path) -> list[Cell]:
    # Cells are written atomically by the compare runner.
    return [cell_from_json(json.loads(path.read_text())) for path in sorted((folder / "cells").glob("*.json"))]


def cell_text(row: dict | None, seeds: int) -> str:
    if not row or not row.get("runs"):
        return "not run"
    text = f"{row['test_mean']:.1f} ± {row['test_ci95']:.1f}" if row["runs"] > 1 else f"{row['test_mean']:.1f}"
    if row["runs"] < seeds:
        text += f" [{row['runs']} of {seeds} seeds]"
    if row.get("best"):
        text = f"**{text}**"
    elif (row.get("vs_best") or {}).get("significant"):
        text += " ▼"
    return f"{text} ({row['lm_calls_mean']:.0f})"


def render(results: dict[str, dict], optimizers: list[str], args: argparse.Namespace) -> str:
    tasks = list(results)
    lines = [
        f"`python bench/compare_tasks.py --budget {args.budget} --seeds {args.seeds}`: `dspy-ext compare --task T "
        f"--optimizers {','.join(optimizers)} --budget {args.budget} --seeds {args.seeds} --train 50 --val 50` on the "
        "embedded SmolLM2-135M with the plain adapter. Each cell: test accuracy on the task's full test split "
        "(100 rows), mean ± 95% CI over the seeds, and in brackets the mean LM calls of the compile. **Bold**: the "
        "task's best; ▼: significantly worse than the best (paired test on (seed, example) pairs, p < 0.05). The "
        "zero-shot human-instruction baseline is on the last line.",
        "",
        "| optimizer | " + " | ".join(tasks) + " | mean of tasks |",
        "|---|" + "---|" * (len(tasks) + 1),
    ]
    for name in optimizers:
        rows = {t: next((r for r in results[t]["summary"] if r["optimizer"] == name), None) for t in tasks}
        means = [r["test_mean"] for r in rows.values() if r and r.get("runs")]
        mean = f"{sum(means) / len(means):.1f}" if len(means) == len(tasks) else "-"
        lines.append(f"| {name} | " + " | ".join(cell_text(rows[t], args.seeds) for t in tasks) + f" | {mean} |")
    base = [next((r.get("baseline_test_score") for r in results[t]["summary"] if r.get("runs")), None) for t in tasks]
    lines.append("| zero-shot baseline | " + " | ".join("-" if b is None else f"{b:.1f}" for b in base) + " | |")
    failed = [(t, f) for t in tasks for f in results[t].get("failed", [])]
    if failed:
        lines += [
            "",
            "Failed cells: "
            + "; ".join(f"{t} {f['optimizer']} seed {f['seed']}: {f['error'][:120]}" for t, f in failed),
        ]
    lines += [
        "",
        f"![test score vs LM calls, one point per run]({PLOT.name})",
        "",
        "Per-run rows, tokens, wall times and the p-values: `"
        + os.path.relpath(args.out_dir, ROOT)
        + "/TASK/results.md`; each run's trial log: `.../TASK/runs/OPTIMIZER-sSEED/trials.jsonl`.",
    ]
    return "\n".join(lines)


def render_seed(results: dict[str, dict], optimizers: list[str], seed: int) -> str:
    """One row per (task, optimizer) for one seed: the single-run view next to the zero-shot baseline."""
    lines = [
        f"Seed {seed} of the comparison below: each row is one `dspy-ext compile --task T --optimizer O --budget 400 "
        f"--seed {seed} --train 50 --val 50` (the comparison runs the same code per cell), test = the full "
        "`test.jsonl` (100 rows), baseline = the uncompiled student (the task's human instruction, zero-shot) on "
        "the same rows. *Budget*: a hard cap for dspy-ext's optimizers; DSPy's MIPROv2 (`auto=\"light\"`), COPRO "
        "and BootstrapFewShotWithRandomSearch get the setting closest to it and report the calls they really made. "
        "Wall times: two comparisons ran at once on the 2 cores, one llama.cpp thread each.",
        "",
        "| task | optimizer | test % | baseline % | val % | LM calls | tokens | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, result in results.items():
        by_name = {c.optimizer: c for c in result["cells"] if c.seed == seed}
        for name in optimizers:
            cell = by_name.get(name)
            if cell is None:
                lines.append(f"| {task} | {name} | not run | | | | | |")
                continue
            r = cell.row
            lines.append(
                f"| {task} | {name} | {r['test_score']:.0f} | {r['baseline_test_score']:.0f} | "
                f"{r['val_score']:.0f} | {r['lm_calls']} | {r['tokens']} | {r['seconds']:.0f} |"
            )
    return "\n".join(lines)


def plot(results: dict[str, dict], optimizers: list[str], args: argparse.Namespace) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tasks = list(results)
    cols = 2
    rows = (len(tasks) + cols - 1) // cols
    fig = Figure(figsize=(6.0 * cols, 4.2 * rows), dpi=110)
    FigureCanvasAgg(fig)
    # One legend, on the panel with the most optimizers.
    fullest = max(tasks, key=lambda t: len({c.optimizer for c in results[t]["cells"]}))
    for k, task in enumerate(tasks):
        ax = fig.add_subplot(rows, cols, k + 1)
        draw_score_vs_calls(
            ax, results[task]["cells"], optimizers, title=task, budget=args.budget, legend=task == fullest
        )
    fig.tight_layout()
    fig.savefig(PLOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--optimizers", default=OPTIMIZERS)
    parser.add_argument("--budget", type=int, default=400)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed0", type=int, default=0, help="the seed shown run by run (first seed: 0)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results" / "compare")
    parser.add_argument("--collect-only", action="store_true", help="tabulate finished comparisons, run none")
    args = parser.parse_args()
    args.out_dir = args.out_dir.resolve()
    optimizers = args.optimizers.split(",")
    results = {t: r for t in args.tasks.split(",") if (r := run_task(t, args, optimizers)) is not None}
    if not results:
        sys.exit("no finished comparison to tabulate")
    plot(results, optimizers, args)
    write_section(
        f"Instruction search vs DSPy on the embedded model (budget {args.budget}, seed {args.seed0})",
        render_seed(results, optimizers, args.seed0),
    )
    write_section(
        f"Optimizer comparison on the embedded model (budget {args.budget}, {args.seeds} seeds)",
        render(results, optimizers, args),
    )
    print(f"wrote {DOC} and {PLOT}")


if __name__ == "__main__":
    main()
