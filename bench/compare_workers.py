"""Wall-clock of one comparison grid on 1 and 2 worker processes (``dspy-ext compare --storage DB --workers N``).

The grid is the same for both settings: ``--optimizers`` x ``--seeds`` cells of
``dspy-ext compare`` on a subset of a built-in task (``--n-train`` training and
``--n-test`` test rows, so that the grid takes minutes, not hours), on the
embedded model with the DSPy cache off. Each setting runs the whole command in
a fresh process, with a fresh SQLite study and a fresh out folder, so every cell
is computed and the wall time includes starting the workers and loading the
model in each. The ratio is the 1-worker wall time over the 2-worker one; the
table also says how the cells were shared and whether both runs gave the same
per-cell test scores.

    PYTHONPATH=. python bench/compare_workers.py                  # embedded model; writes docs/benchmarks.md
    PYTHONPATH=. python bench/compare_workers.py --fake --no-docs # the fake world of tests/compare_fake.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _docs import write_section

ROOT = Path(__file__).resolve().parent.parent

COMMAND = "PYTHONPATH=. python bench/compare_workers.py"
TITLE = "Comparison on 1 and 2 worker processes"


def write_subset(folder: Path, task: str, n_train: int, n_test: int) -> Path:
    """The first rows of a built-in task as a task folder (train.jsonl, test.jsonl, instructions.json)."""
    from dspy_ext.data import load_task

    data = load_task(name=task, seed=0)
    keys = [*data.input_keys, *data.output_keys]
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", data.train[:n_train]), ("test", data.test[:n_test])):
        lines = [json.dumps({k: row[k] for k in keys}) for row in rows]
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "instructions.json").write_text(json.dumps(data.instructions[:1]))
    return folder


def fake_task(folder: Path) -> Path:
    from tests.support.fake_world import write_task

    return write_task(folder, n_train=40, n_test=24)


def run_grid(args: argparse.Namespace, data: Path, workers: int, work: Path) -> dict:
    """One ``dspy-ext compare`` over the grid with ``workers`` processes: wall s, rows, cells per process."""
    storage, out = work / f"workers-{workers}.db", work / f"out-{workers}"
    flags = [
        "compare",
        *("--data", str(data), "--optimizers", args.optimizers, "--seeds", str(args.seeds)),
        *("--budget", str(args.budget), "--train", str(args.train), "--val", str(args.val)),
        *("--threads", str(args.threads), "--out", str(out), "--storage", str(storage), "--workers", str(workers)),
        *("--no-cache", "--json"),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if args.fake:
        cmd = [sys.executable, str(ROOT / "tests" / "compare_fake.py"), *flags, "--adapter", "plain"]
        env.update(DSPY_EXT_COMPARE_FAKE="1", DSPY_EXT_COMPARE_FAKE_LATENCY=str(args.latency))
    else:
        cmd = [sys.executable, "-m", "dspy_ext", *flags]
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"compare with {workers} worker(s) failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout)
    return {
        "wall": wall,
        "rows": result["rows"],
        "calls": result["new_lm_calls"],
        "per_worker": cells_per_worker(storage),
    }


def cells_per_worker(storage: Path) -> list[int]:
    """How many finished cells each process ran, most first."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=optuna.get_all_study_names(f"sqlite:///{storage}")[0], storage=f"sqlite:///{storage}"
    )
    done = [t.user_attrs.get("worker") for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    return sorted(Counter(done).values(), reverse=True)


def scores(rows: list[dict]) -> dict[str, float]:
    return {f"{r['optimizer']}-s{r['seed']}": r["test_score"] for r in rows}


def _llama_threads(args: argparse.Namespace) -> str:
    if args.fake:
        return ""
    threads = os.environ.get("DSPY_EXT_LLAMA_THREADS") or f"{min(8, os.cpu_count() or 1)} (the default)"
    return f" (llama.cpp threads per process: {threads})"


def report(args: argparse.Namespace, runs: dict[int, dict], load: tuple[float, float]) -> str:
    one, two = runs[1], runs[2]
    model = f"the fake world (FakeEngine, {1000 * args.latency:.0f} ms per call)" if args.fake else "the embedded model"
    task = (
        "the fake task (40 train / 24 test rows)"
        if args.fake
        else f"{args.task} ({args.n_train} train / {args.n_test} test rows)"
    )
    cells = len(one["rows"])
    same = "yes" if scores(one["rows"]) == scores(two["rows"]) else "no"
    lines = [
        f"`{COMMAND}{' --fake' if args.fake else ''}` — `dspy-ext compare` of {args.optimizers} x {args.seeds} seeds "
        f"({cells} cells) on {task}, budget {args.budget}, train {args.train} / val {args.val}, {args.threads} "
        f"evaluator threads per process, on {model}{_llama_threads(args)}, DSPy cache off, a fresh SQLite study and out folder per "
        f"setting; wall time of the whole command (workers started, model loaded in each). {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; 1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at "
        "the end.",
        "",
        "| workers | wall s | cells per process | LM calls, scoring included | same test scores per cell as 1 worker |",
        "|---|---|---|---|---|",
        f"| 1 | {one['wall']:.1f} | {', '.join(map(str, one['per_worker']))} | {one['calls']} | |",
        f"| 2 | {two['wall']:.1f} | {', '.join(map(str, two['per_worker']))} | {two['calls']} | {same} |",
        "",
        f"Ratio (1 worker / 2 workers): **{one['wall'] / two['wall']:.2f}x**.",
        "",
        "What the second process costs: its own interpreter start, its own model load, and its own scoring of "
        "what the cells of one process share through the evaluator's cache (the students' baselines on the test "
        "split), which is the difference in LM calls; on this machine's cores the two processes also share the "
        "CPU with each other and with whatever else runs.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--n-train", type=int, default=40)
    parser.add_argument("--n-test", type=int, default=24)
    parser.add_argument("--optimizers", default="labeled,bfs")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--budget", type=int, default=10)
    parser.add_argument("--train", type=int, default=10)
    parser.add_argument("--val", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fake", action="store_true", help="the fake world instead of the embedded model")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per fake call (with --fake)")
    parser.add_argument("--no-docs", action="store_true", help="print only, do not write docs/benchmarks.md")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="compare-workers-") as tmp:
        work = Path(tmp)
        data = (
            fake_task(work / "task") if args.fake else write_subset(work / "task", args.task, args.n_train, args.n_test)
        )
        runs = {}
        for workers in (1, 2):
            runs[workers] = run_grid(args, data, workers, work)
            print(
                f"{workers} worker(s): {runs[workers]['wall']:.1f} s, cells per process {runs[workers]['per_worker']}",
                file=sys.stderr,
            )
    text = report(args, runs, (load_before, os.getloadavg()[0]))
    print(text)
    if not args.no_docs:
        write_section(TITLE, text)


if __name__ == "__main__":
    main()
