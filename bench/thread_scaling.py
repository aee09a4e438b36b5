"""Thread scaling of the evaluator against an API-like LM that sleeps 200 ms per call.

The FakeEngine sleeps outside any lock, like a remote API; the evaluator
scores 64 rows of the fake world (tests/support/fake_world.py) at 1, 4, 8 and
16 threads. Each setting is run 3 times with a fresh evaluator and a fresh
LM (DSPy cache off, so every row is a real engine call); the table gives the
median wall time and the speed-up against 1 thread, next to the ideal
(``ceil(rows / threads)`` rounds of 200 ms).

    PYTHONPATH=. python bench/thread_scaling.py      # writes the section of docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import uuid
from pathlib import Path

import dspy

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _docs import write_section

from dspy_ext.adapters import PlainAdapter
from dspy_ext.evaluation import Evaluator
from dspy_ext.lm import FakeEngine
from programs import build_program
from tests.support.fake_world import dataset, respond

COMMAND = "PYTHONPATH=. python bench/thread_scaling.py"


def metric(example, prediction, trace=None) -> bool:
    return example.output == prediction.output


def one_run(threads: int, rows: int, latency: float) -> float:
    lm = dspy.LM(f"fake/threads-{uuid.uuid4().hex[:8]}", engine=FakeEngine(respond, latency=latency), cache=False)
    program = build_program(
        "transform", input_keys=("input",), output_keys=("output",), instructions="Handle the request at level 4."
    )
    with dspy.context(lm=lm, adapter=PlainAdapter()):
        report = Evaluator(metric, num_threads=threads).evaluate(program, dataset(rows))
    assert report.usage.calls == rows == lm.engine.calls, (report.usage.calls, lm.engine.calls)
    assert report.score == 50.0
    return report.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,4,8,16")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-docs", action="store_true", help="print only, do not write docs/benchmarks.md")
    args = parser.parse_args()
    counts = [int(t) for t in args.threads.split(",")]
    load_before = os.getloadavg()[0]
    results: dict[int, list[float]] = {}
    for threads in counts:
        results[threads] = [one_run(threads, args.rows, args.latency) for _ in range(args.runs)]
        print(f"{threads:>2} threads: " + ", ".join(f"{s:.2f} s" for s in results[threads]), file=sys.stderr)
    load_after = os.getloadavg()[0]
    base = statistics.median(results[counts[0]])
    serial = args.rows * args.latency
    lines = [
        f"`{COMMAND}` — FakeEngine sleeping {1000 * args.latency:.0f} ms per call (outside any lock, like an "
        f"API), evaluator on {args.rows} rows, plain adapter, DSPy cache off; median of {args.runs} runs per "
        f"setting. {os.cpu_count()} cores, Python {platform.python_version()}, DSPy {dspy.__version__}; 1-minute "
        f"load average {load_before:.1f} at the start, {load_after:.1f} at the end.",
        "",
        f"| threads | wall s (median) | runs (s) | speed-up vs {counts[0]} thread | speed-up vs serial sleep "
        f"({serial:.1f} s) | sleep-bound wall s | sleep share of wall |",
        "|---|---|---|---|---|---|---|",
    ]
    speedups = {}
    for threads in counts:
        median = statistics.median(results[threads])
        speedups[threads] = base / median
        # The best any scheduler can do: ceil(rows / threads) rounds of one sleep each.
        bound = math.ceil(args.rows / threads) * args.latency
        lines.append(
            f"| {threads} | {median:.2f} | {', '.join(f'{s:.2f}' for s in results[threads])} | "
            f"{speedups[threads]:.1f}x | {serial / median:.1f}x | {bound:.2f} | {100 * bound / median:.0f}% |"
        )
    lines += [
        "",
        "Speed-up vs serial sleep = rows x latency / measured wall: the speed-up over a framework that costs "
        "nothing, so it does not flatter the threads when the 1-thread run is slow. Sleep share = sleep-bound "
        "wall / measured wall; the rest is framework time (GIL-serialised) and waiting for a CPU.",
    ]
    if 16 in counts:
        strict = serial / statistics.median(results[16])
        verdict = (
            "met on both bases"
            if min(speedups[16], strict) >= 12
            else "met against 1 thread only"
            if speedups[16] >= 12
            else "not met"
        )
        lines += [
            "",
            f"Goal: at least 12x at 16 threads — {speedups[16]:.1f}x against 1 thread ({strict:.1f}x against "
            f"the serial sleep time): {verdict}.",
        ]
    body = "\n".join(lines)
    print(body)
    if not args.no_docs:
        write_section("Thread scaling", body)


if __name__ == "__main__":
    main()
