"""Digest the trial logs of a comparison: per run, what won and how the search got there.

    python bench/trial_digest.py bench/results/compare            # every task folder under it
    python bench/trial_digest.py bench/results/compare/sentiment  # one task

For each run folder (``TASK/runs/OPTIMIZER-sSEED``) it prints the test score, whether the
winner kept the task's human instruction, the demo set the winner uses (0 = labeled demos,
1.. = bootstrapped sets), the winner's origin and instruction, the candidates scored, the
proposals rejected by the guards, and the val score next to the student's (human instruction,
labeled demos) in the final round, on the most val rows it reached there (``score/rows``). DSPy's
optimizers have no trial log; their row shows the final program only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dspy_ext.experiment import RunSummary


def first_predictor(program: dict) -> dict:
    return next(v for v in program.values() if isinstance(v, dict) and "signature" in v)


def _trials(run: Path) -> list[dict]:
    path = run / "trials.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def digest_run(run: Path, human: str) -> dict:
    summary = RunSummary.from_dict(json.loads((run / "run.json").read_text()))
    predictor = first_predictor(json.loads((run / "program.json").read_text()))
    instruction = predictor["signature"]["instructions"]
    search = summary.search or {}
    best = search.get("best") or {}
    # The student (human instruction, labeled demos) in the final round, on the most val rows it reached:
    # successive halving may drop it before the full valset.
    student = [t for t in _trials(run) if t["origin"] == "final:student" and set(t["demo_sets"].values()) == {0}]
    student_best = max(student, key=lambda t: t["n"], default=None)
    return {
        "run": run.name,
        "test": summary.scores.test,
        "val": summary.scores.val,
        "student_val": student_best and (student_best["score"], student_best["n"]),
        "calls": summary.spend.lm_calls,
        "kept_human": instruction.strip() == human.strip(),
        "demos": len(predictor.get("demos", [])),
        "demo_set": next(iter((best.get("demo_sets") or {}).values()), None),
        "origin": best.get("origin", "-"),
        "candidates": search.get("n_candidates"),
        "rejected": search.get("rejected") or {},
        "instruction": instruction.replace("\n", " "),
    }


def digest_task(folder: Path) -> list[dict]:
    runs = sorted(p for p in (folder / "runs").glob("*") if (p / "run.json").exists())
    if not runs:
        return []
    from dspy_ext.data import load_task

    human = load_task(json.loads((runs[0] / "run.json").read_text())["task"]).baseline_instruction
    return [digest_run(run, human) for run in runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a comparison folder, or a folder of them")
    parser.add_argument("--width", type=int, default=70, help="characters of the instruction shown")
    args = parser.parse_args()
    folders = (
        [args.folder]
        if (args.folder / "runs").is_dir()
        else sorted(p for p in args.folder.iterdir() if (p / "runs").is_dir())
    )
    for folder in folders:
        print(f"## {folder.name}")
        for d in digest_task(folder):
            rejected = ",".join(f"{k}:{v}" for k, v in d["rejected"].items()) or "-"
            student = "" if not d["student_val"] else " (student {:.0f}/{})".format(*d["student_val"])
            print(
                f"{d['run']:<18} test {d['test']:5.1f}  val {d['val']:5.1f}{student:<14} calls {d['calls']:4d}  "
                f"{'human' if d['kept_human'] else 'new  '} demos {d['demos']} set {d['demo_set']}  "
                f"cands {d['candidates']}  rej {rejected:<22} {d['origin']:<28} {d['instruction'][: args.width]!r}"
            )


if __name__ == "__main__":
    main()
