"""Run ``dspy-ext tune`` on a task and put its result next to default-settings compiles in docs/benchmarks.md.

    DSPY_CACHEDIR=$(mktemp -d) python bench/tune.py --out-dir bench/results \
        --defaults bench/results/compile-sentiment-ape.json,bench/results/compile-sentiment-opro.json

Cells are cached as JSON in OUT_DIR (``tune-TASK.json``, ``compile-TASK-OPT.json``), so a rerun only
tabulates. Missing default-settings cells for the optimizers of the space are run with
``dspy-ext compile --budget 400 --train 50 --val 50`` (the settings of bench/matrix.py).
Use a fresh DSPY_CACHEDIR so that LM-call counts are those of a cold run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cells import read_json, run_cell
from _docs import write_section

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--space", default=str(HERE / "tune_sentiment.yaml"))
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--optimizers", default="ape,opro,bfsrs", help="default-settings compiles to show")
    parser.add_argument("--defaults", default="", help="comma-separated compile --json files to use as they are")
    parser.add_argument("--out-dir", type=Path, default=HERE / "results")
    parser.add_argument("--collect-only", action="store_true")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)

    tune = run_cell(
        [
            "tune",
            "--task",
            args.task,
            "--space",
            args.space,
            "--trials",
            str(args.trials),
            "--train",
            "50",
            "--val",
            "50",
            "--study",
            f"bench-{args.task}",
            "--out",
            str(args.out_dir / f"tune-{args.task}"),
        ],
        args.out_dir / f"tune-{args.task}.json",
        args.collect_only,
    )
    given = {}
    for path in filter(None, args.defaults.split(",")):
        cell = read_json(Path(path).read_text())
        given[cell["optimizer"]] = cell
    defaults = {}
    for opt in args.optimizers.split(","):
        defaults[opt] = given.get(opt) or run_cell(
            [
                "compile",
                "--task",
                args.task,
                "--optimizer",
                opt,
                "--budget",
                "400",
                "--seed",
                "0",
                "--train",
                "50",
                "--val",
                "50",
                "--out",
                str(args.out_dir / f"{args.task}-{opt}"),
            ],
            args.out_dir / f"compile-{args.task}-{opt}.json",
            args.collect_only,
        )

    space = Path(args.space).name
    lines = [
        f"`dspy-ext tune --task {args.task} --space bench/{space} --trials {args.trials} --train 50 --val 50` on the "
        "embedded model (SmolLM2-135M, plain adapter, greedy, cold DSPy cache): each trial picks an optimizer and its "
        "knobs with TPE, compiles under a small per-trial budget (60 LM calls, a hard cap for ape/opro; bfsrs is "
        "limited to 1 shuffled candidate program) and is scored on the 50 dev rows in minibatches of 10 (median "
        "pruner). Test = the full `test.jsonl` (100 rows). Next to it: the same optimizers with default settings "
        "(`dspy-ext compile --optimizer O --budget 400 --seed 0 --train 50 --val 50`, same train/dev rows). LM calls "
        "are engine calls on a cold DSPy cache (a trial repeating earlier parameters is served by the cache). Wall "
        "times were measured on 2 cores shared with several other jobs (load average 8-13), so they are several "
        "times what an idle machine needs.",
        "",
        "| run | optimizer (settings) | test % | dev/val % | LM calls | wall s |",
        "|---|---|---|---|---|---|",
    ]
    if tune is None:
        lines.append("| tune | not run | | | | |")
    else:
        best = tune["best_trial"] or {}
        params = ", ".join(
            f"{k.split('.', 1)[-1]}={v:.2f}" if isinstance(v, float) else f"{k.split('.', 1)[-1]}={v}"
            for k, v in (best.get("params") or {}).items()
        )
        lines.append(
            f"| tune, best of {tune['n_trials']} trials (#{best.get('number')}) | {best.get('optimizer')} ({params}) | "
            f"{tune.get('test_score', float('nan')):.0f} | {tune['best_value']:.0f} | {tune['total_lm_calls']} "
            f"(all trials + baseline) | {tune['seconds_this_run']:.0f} |"
        )
    for opt, cell in defaults.items():
        if cell is None:
            lines.append(f"| default | {opt} | not run | | | |")
            continue
        lines.append(
            f"| default | {opt} | {cell['test_score']:.0f} | {cell['val_score']:.0f} | {cell['lm_calls']} | "
            f"{cell['seconds']:.0f} |"
        )
    if tune is not None:
        lines += [
            "",
            f"Student (human instruction, zero-shot): test {tune.get('baseline_test_score', float('nan')):.0f}%, "
            f"dev {tune['baseline']['criteria'].get(tune['primary'], 0):.0f}%. Trials: {tune['n_complete']} complete, "
            f"{tune['n_pruned']} pruned (their dev % is the partial score where they were cut), {tune['n_failed']} "
            f"failed. The best trial alone used "
            f"{(tune['best_trial'] or {}).get('lm_calls')} LM calls; the test scoring of the best program and of the "
            f"student ({tune.get('test_lm_calls', 0)} calls) is not counted above.",
            "",
            "| trial | optimizer | state | dev % | LM calls | s |",
            "|---|---|---|---|---|---|",
        ]
        for t in sorted(_all_trials(tune), key=lambda t: t["number"]):
            dev = (t.get("scores") or {}).get("dev")
            lines.append(
                f"| {t['number']} | {t['optimizer']} | {t['state']} | "
                f"{'' if dev is None else f'{dev:.0f}'} | {t.get('lm_calls')} | {t.get('seconds')} |"
            )
    write_section(f"Optuna tune on {args.task}", "\n".join(lines))


def _all_trials(tune: dict) -> list[dict]:
    """Every trial of the study (read from its storage), falling back to the summary's top trials."""
    try:
        import optuna

        from dspy_ext.tuning import trial_record

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=tune["study"], storage=tune["storage"])
        return [trial_record(t, brief=True) for t in study.get_trials(deepcopy=False)]
    except Exception:
        return tune.get("top_trials", [])


if __name__ == "__main__":
    main()
