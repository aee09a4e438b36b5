"""Regression guards on the embedded model: what the `format: 0` guard costs and what it prevents.

Sentiment, metric ``criteria(correct=exact_match, format=one_of(["positive", "negative"]))``, each
optimizer with and without ``--guard format=0``, several seeds. Every cell is one
:func:`dspy_ext.experiment.run` (its run folder under OUT_DIR/cells keeps the trial log and the guard
report); a finished cell is never run again, so an interrupted benchmark resumes. The table of test
accuracy and format rate per cell goes to docs/benchmarks.md.

    DSPY_EXT_LLAMA_THREADS=1 python bench/guards.py --budget 120 --seeds 0,1 --test-rows 40

The full benchmark of issue 12 is ``--budget 400 --seeds 0,1,2 --test-rows 100 --train 50 --val 50``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import write_section  # noqa: E402

from dspy_ext.evaluation import Evaluator, criteria  # noqa: E402
from dspy_ext.experiment import RunSettings, build_components, run  # noqa: E402
from metrics import exact_match, one_of  # noqa: E402
from programs import Transform  # noqa: E402

OPTIMIZERS = ["demo-search", "ape", "opro", "evoprompt-ga", "evoprompt-de", "protegi", "mipro"]
#: MIPROv2's own budget is not a call cap: a small fixed search keeps it near the others.
CONFIGS = {"mipro": {"num_candidates": 3, "num_trials": 6}}
METRIC = criteria(correct=exact_match, format=one_of(["positive", "negative"]))
TITLE = "Regression guards (issue 12): sentiment, `format: 0`"
#: Labeled demos of the student. Zero-shot, the embedded model answers no test row in the label format
#: (format 0%), and a guard against a reference at 0 can never break; with three demos it mostly does.
STUDENT_DEMOS = 3


def labeled_student() -> Transform:
    """The student of every cell (``program: guards:labeled_student``): the task's instruction and 3 labeled demos."""
    import random

    from dspy_ext.data import load_task

    task = load_task("sentiment")
    program = Transform(instructions=task.instructions[0])
    program.predict.demos = random.Random(0).sample(task.train[200:], STUDENT_DEMOS)  # fixed, seeded
    return program


def run_cell(optimizer: str, seed: int, guarded: bool, args: argparse.Namespace, components, evaluator) -> dict:
    """One compile (or its stored result): test accuracy and format, guard figures, LM calls."""
    name = f"{optimizer}-s{seed}-{'guard' if guarded else 'free'}"
    path = args.out_dir / "cells" / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    settings = RunSettings(
        task="sentiment",
        program="guards:labeled_student",
        optimizer=optimizer,
        optimizer_config=CONFIGS.get(optimizer, {}),
        budget=args.budget,
        seed=seed,
        train=args.train,
        val=args.val,
        threads=1,
        guards={"format": 0.0} if guarded else {},
        out=str(args.out_dir / "runs" / name),
    )
    started = time.perf_counter()
    result = run(settings, components=components, evaluator=evaluator, restart=True)
    s = result.summary
    table = s.criteria
    report = s.figures.guard_report or {}
    val_report = report.get("val") or {}
    cell = {
        "optimizer": optimizer,
        "seed": seed,
        "guarded": guarded,
        "correct": table["correct"]["compiled"],
        "format": table["format"]["compiled"],
        "student_correct": table["correct"]["student"],
        "student_format": table["format"]["student"],
        "lm_calls": s.spend.lm_calls,
        "seconds": round(time.perf_counter() - started, 1),
        "rejected": (val_report.get("rejected") or {}).get("format", 0),
        "fallback": bool(val_report.get("fallback")) or val_report.get("returned") == "student",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cell, indent=1) + "\n")
    print(json.dumps(cell), flush=True)
    return cell


def table(cells: list[dict], args: argparse.Namespace) -> str:
    def mean(rows: list[dict], key: str) -> str:
        values = [r[key] for r in rows]
        return f"{statistics.fmean(values):.1f}" if values else "-"

    student = cells[0] if cells else {}
    lines = [
        f"`DSPY_EXT_LLAMA_THREADS=1 python bench/guards.py --budget {args.budget} --seeds {args.seeds} --test-rows "
        f"{args.test_rows} --train {args.train} --val {args.val}`. Settings sized for 2 shared cores (the optimizer "
        f"comparison above uses budget 400 and 100 test rows): budget "
        f"{args.budget} LM calls per compile, seeds {args.seeds}, train {args.train}, val {args.val}, the first "
        f"{args.test_rows} test rows, embedded SmolLM2-135M-Instruct with one llama.cpp thread. MIPROv2 with "
        f"{CONFIGS['mipro']} (its calls are not capped). The student has {STUDENT_DEMOS} labeled demos. "
        f"Metric `criteria(correct=exact_match, "
        f'format=one_of(["positive", "negative"]))`, objective their mean. Test %, mean over seeds; '
        f"student: correct {student.get('student_correct', '-')}, format {student.get('student_format', '-')}.",
        "",
        "| optimizer | correct (free) | format (free) | correct (guard) | format (guard) | candidates set aside "
        "| fell back to student | LM calls free / guard |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for optimizer in OPTIMIZERS:
        free = [c for c in cells if c["optimizer"] == optimizer and not c["guarded"]]
        guard = [c for c in cells if c["optimizer"] == optimizer and c["guarded"]]
        if not free and not guard:
            continue
        lines.append(
            f"| {optimizer} | {mean(free, 'correct')} | {mean(free, 'format')} | {mean(guard, 'correct')} | "
            f"{mean(guard, 'format')} | {sum(c['rejected'] for c in guard)} | "
            f"{sum(c['fallback'] for c in guard)}/{len(guard)} | {mean(free, 'lm_calls')} / "
            f"{mean(guard, 'lm_calls')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results" / "guards")
    parser.add_argument("--budget", type=int, default=120)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--train", type=int, default=20)
    parser.add_argument("--val", type=int, default=20)
    parser.add_argument("--test-rows", type=int, default=40)
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--collect-only", action="store_true", help="tabulate the stored cells")
    parser.add_argument("--no-doc", action="store_true", help="leave docs/benchmarks.md alone (smoke runs)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    cells: list[dict] = []
    base = build_components(RunSettings(task="sentiment"))
    task = dataclasses.replace(base.task, test=base.task.test[: args.test_rows])
    components = dataclasses.replace(base, task=task, metric=METRIC)
    evaluator = Evaluator(METRIC, num_threads=1)  # shared: the student's test scores are computed once
    for seed in seeds:
        for optimizer in args.optimizers.split(","):
            for guarded in (False, True):
                path = args.out_dir / "cells" / f"{optimizer}-s{seed}-{'guard' if guarded else 'free'}.json"
                if args.collect_only:
                    if path.exists():
                        cells.append(json.loads(path.read_text()))
                    continue
                cells.append(run_cell(optimizer, seed, guarded, args, components, evaluator))
                if not args.no_doc:
                    write_section(TITLE, table(cells, args))
    print(table(cells, args))
    if not args.no_doc:
        write_section(TITLE, table(cells, args))


if __name__ == "__main__":
    main()
