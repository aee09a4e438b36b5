"""Calls per second of the embedded engine with and without prefix KV-cache reuse.

Every call of a few-shot evaluation starts with the same system message and
demos; with ``prefix_reuse`` llama.cpp keeps their KV cache and evaluates only
the new tokens. This benchmark runs the sentiment task (PlainAdapter, 4 demos,
40 test rows, DSPy cache off) with both settings, alternating them over
several rounds after a warm-up, and writes the medians to docs/benchmarks.md.

    PYTHONPATH=. python bench/prefix_reuse.py            # 3 rounds, writes the doc
    PYTHONPATH=. python bench/prefix_reuse.py --no-write  # print only
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dspy
from _docs import write_section

from dspy_ext.adapters import PlainAdapter
from dspy_ext.data import load_task
from dspy_ext.lm import CallMeter, make_lm, metering
from metrics import exact_match

SECTION = "Local engine: prefix KV-cache reuse"
SETTINGS = {True: "prefix reuse on", False: "prefix reuse off"}


@dataclass
class Run:
    reuse: bool
    seconds: float
    calls: int
    input_tokens: int
    output_tokens: int
    outputs: list[str]
    accuracy: float

    @property
    def calls_per_second(self) -> float:
        return self.calls / self.seconds


def run_rows(program: dspy.Predict, lm: dspy.LM, rows: list[dspy.Example], reuse: bool) -> Run:
    meter = CallMeter()
    outputs = []
    with dspy.context(lm=lm, adapter=PlainAdapter()), metering(meter):
        start = time.perf_counter()
        for row in rows:
            outputs.append(program(**row.inputs()).output)
        seconds = time.perf_counter() - start
    snap = meter.snapshot()
    correct = sum(exact_match(row, dspy.Prediction(output=out)) for row, out in zip(rows, outputs))
    return Run(reuse, seconds, snap.calls, snap.input_tokens, snap.output_tokens, outputs, correct / len(rows))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--rows", type=int, default=40, help="test rows per run")
    parser.add_argument("--demos", type=int, default=4, help="labeled demos (the shared prefix)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each runs both settings, order alternating")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up calls per setting")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args(argv)
    command = "PYTHONPATH=. python " + shlex.join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])

    task = load_task(args.task)
    program = dspy.Predict(dspy.Signature("input -> output", task.baseline_instruction))
    program.demos = task.train[: args.demos]
    rows = task.test[: args.rows]
    lms = {reuse: make_lm("local", prefix_reuse=reuse, cache=False) for reuse in (True, False)}
    engine = lms[True].engine

    load_before = load()
    for reuse in (True, False):
        run_rows(program, lms[reuse], task.test[-args.warmup :], reuse)  # load the model, warm the caches

    runs: list[Run] = []
    for round_no in range(args.rounds):
        order = (True, False) if round_no % 2 == 0 else (False, True)
        for reuse in order:
            run = run_rows(program, lms[reuse], rows, reuse)
            runs.append(run)
            print(
                f"round {round_no + 1}: {SETTINGS[reuse]:<17} {run.calls_per_second:6.2f} calls/s "
                f"({run.seconds:.1f} s, accuracy {100 * run.accuracy:.0f}%)",
                file=sys.stderr,
            )
    load_after = load()

    def median(reuse: bool, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in runs if r.reuse is reuse)

    on, off = median(True, "calls_per_second"), median(False, "calls_per_second")
    per_round = {reuse: ", ".join(f"{r.calls_per_second:.2f}" for r in runs if r.reuse is reuse) for reuse in SETTINGS}
    accuracy = {reuse: sorted({f"{100 * r.accuracy:.0f}%" for r in runs if r.reuse is reuse}) for reuse in SETTINGS}
    reference = next(r for r in runs if not r.reuse).outputs
    agree = [sum(a == b for a, b in zip(r.outputs, reference)) for r in runs if r.reuse]
    prompt_tokens = runs[0].input_tokens / runs[0].calls
    output_tokens = {reuse: median(reuse, "output_tokens") / args.rows for reuse in SETTINGS}

    import llama_cpp

    body = "\n".join(
        [
            f"Calls per second of the embedded engine (`{lms[True].model}`) on `{args.task}`: PlainAdapter, "
            f"{args.demos} demos, {args.rows} test rows run one after another, DSPy cache off, greedy. "
            f"{args.warmup} warm-up calls per setting, then {args.rounds} rounds alternating the two settings "
            "(the order flips every round); the table gives medians over rounds.",
            "",
            "```",
            command,
            "```",
            "",
            f"- Machine: {cpu_count()} CPUs (`nproc`), {cpu_model()}; llama.cpp threads: {engine.n_threads}; "
            f"load average (1/5/15 min) before {load_before}, after {load_after}.",
            f"- Date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; "
            f"Python {platform.python_version()}, dspy {dspy.__version__}, llama-cpp-python {llama_cpp.__version__}.",
            f"- Prompt: {prompt_tokens:.0f} tokens per call on average (chat template, instruction, demos, input).",
            "",
            "| setting | calls/s (median) | s/call | calls/s per round | output tokens/call | accuracy |",
            "|---|---|---|---|---|---|",
            *(
                f"| {SETTINGS[reuse]} | {median(reuse, 'calls_per_second'):.2f} | "
                f"{1 / median(reuse, 'calls_per_second'):.3f} | {per_round[reuse]} | {output_tokens[reuse]:.1f} | "
                f"{' / '.join(accuracy[reuse])} |"
                for reuse in (True, False)
            ),
            "",
            f"**Speed-up from prefix reuse: {on / off:.2f}x** (ratio of the medians).",
            "",
            f"Greedy answers with reuse that equal the no-reuse answers: {', '.join(f'{a}/{args.rows}' for a in agree)} "
            "(per round). Reuse is not bit-exact in general: an identical prompt replayed from the KV cache "
            "(llama-cpp-python re-evaluates only its last token) can change a near-tied greedy choice; see "
            "`tests/test_lm.py::test_embedded_greedy_is_deterministic`.",
            "",
            "The machine is shared: other jobs running at the same time slow llama.cpp's threads down a lot, which "
            "is why the settings alternate and the load average is recorded.",
        ]
    )
    print(body)
    if not args.no_write:
        write_section(SECTION, body)
        print(f"updated docs/benchmarks.md section '{SECTION}'", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
