"""Served model: the dry-run projection against what a compile really spends, and what threads hide.

Starts llama.cpp's OpenAI-compatible server on loopback with the embedded SmolLM2 file (the ``served``
extra), and a counting proxy in front of it. Then, for each optimizer and task:

1. the compile itself at the same settings (no test scoring), counted by the engine's meter and by the
   proxy on the server side, with DSPy's response cache off; kept per cell in ``results/served_spend_nocache/``;
2. ``dry_run`` (what ``dspy-ext compile --dry-run`` prints): calls, tokens and USD by role, no request, made
   with the current code for every kept cell.

USD uses a declared price of $0.15 / $0.60 per million input / output tokens (a hosted small model's).

Second part: the wall-clock of one compile at 1, 2 and 4 threads behind a proxy that adds 1 s to every
request, as a hosted API does (llama.cpp's Python server answers one request at a time, so the latency
is what threads can hide).

    PYTHONPATH=.:tests python bench/served_spend.py                 # all, writes docs/benchmarks.md
    ... --phase actual --optimizers opro --threads                   # only run compiles (several at once)
    ... --phase project --thread-results bench/results/served_spend  # project the kept cells, write the doc
    ... --optimizers ape mipro --tasks sentiment --no-write
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _docs import write_section

from dspy_ext.data import split_train_val
from dspy_ext.experiment import RunSettings
from dspy_ext.experiment.components import build_components, build_student
from dspy_ext.experiment.run import _build_optimizer, dry_run
from dspy_ext.lm import CallMeter, Price, metered_lm, metering
from dspy_ext.lm.metering import current_role

from support.served import MODEL_ALIAS, CountingProxy, served_model

#: Cells of the run with DSPy's response cache off in every layer (the earlier run's cells are in served_spend/).
RESULTS = Path(__file__).resolve().parent / "results" / "served_spend_nocache"
PRICE = Price(input_per_1m=0.15, output_per_1m=0.60)
#: Cheapest first, so that a run cut short still has the most cells; DemoSearch last: on the served model each
#: likelihood-screen request (/completions with echo and logprobs over a prompt of up to 16 demos) takes tens of
#: seconds on this machine.
OPTIMIZERS = ["ape", "protegi", "evoprompt-de", "opro", "evoprompt-ga", "mipro", "demo-search"]
TASKS = ["sentiment", "first_word_letter"]


class SlowProxy(CountingProxy):
    """A counting proxy that waits ``delay`` seconds before forwarding each completion request."""

    def __init__(self, upstream: str, delay: float) -> None:
        super().__init__(upstream)
        self.delay = delay
        inner = self._server.RequestHandlerClass
        outer = self

        class Slow(inner):  # type: ignore[misc, valid-type]
            def do_POST(self) -> None:  # noqa: N802 (http.server names it)
                time.sleep(outer.delay)
                super().do_POST()

        self._server.RequestHandlerClass = Slow


def _settings(task: str, optimizer: str, budget: int, threads: int, base: str) -> RunSettings:
    return RunSettings(
        task=task,
        optimizer=optimizer,
        budget=budget,
        train=50,
        val=30,
        seed=0,
        threads=threads,
        adapter="plain",
        lm=f"openai/{MODEL_ALIAS}",
        api_base=base,
        api_key_env="DSPY_EXT_BENCH_KEY",
        price={"input_per_1m": PRICE.input_per_1m, "output_per_1m": PRICE.output_per_1m},
        cache=False,  # every call reaches the model: no reply from an earlier cell
    )


class PromptCallLog(CallMeter):
    """A meter that also keeps the (input, output) tokens of every prompt-model call, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.prompt_tokens: list[tuple[int | None, int | None]] = []

    def record(self, input_tokens: int | None, output_tokens: int | None, **kwargs: Any) -> None:
        super().record(input_tokens, output_tokens, **kwargs)
        if current_role() == "prompt":
            self.prompt_tokens.append((input_tokens, output_tokens))


def _compile(settings: RunSettings) -> dict[str, Any]:
    """One compile with the run's own optimizer and meter (no test scoring); its spend and seconds."""
    components = build_components(settings)
    student = build_student(settings, components.task)
    train, val = split_train_val(components.task.train, settings.train, settings.val, seed=settings.seed)
    lm = metered_lm(components.lm)
    meter = PromptCallLog()
    with components.context(lm=lm):
        optimizer = _build_optimizer(settings, components.metric, train, val, None, log_dir=None, progress=False)
        started = time.perf_counter()
        with metering(meter):
            optimizer.compile(student, trainset=train, valset=val)
        seconds = time.perf_counter() - started
    usage, roles = meter.snapshot(), meter.by_role()
    return {
        "calls": usage.calls,
        "tokens": usage.total_tokens,
        "usd": usage.usd,
        "task_calls": roles["task"].calls,
        "prompt_calls": roles["prompt"].calls,
        "by_role": {
            role: {"calls": u.calls, "input_tokens": u.input_tokens, "output_tokens": u.output_tokens, "usd": u.usd}
            for role, u in roles.items()
        },
        "prompt_call_tokens": meter.prompt_tokens,
        "seconds": round(seconds, 1),
    }


def actual_cell(task: str, optimizer: str, budget: int, server: str, results: Path) -> dict[str, Any]:
    """What one compile really spends, by its meter and by the proxy (kept in ``results``; re-used when there)."""
    path = results / f"{task}-{optimizer}-b{budget}.actual.json"
    if path.exists():
        return json.loads(path.read_text())
    proxy = CountingProxy(server)
    try:
        actual = _compile(_settings(task, optimizer, budget, 1, proxy.base))
    finally:
        proxy.close()
    cell = {
        "task": task,
        "optimizer": optimizer,
        "budget": budget,
        "cache": False,
        "actual": actual,
        "server_requests": proxy.requests,
        "server_tokens": proxy.input_tokens + proxy.output_tokens,
    }
    results.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cell, indent=2) + "\n")
    print(json.dumps(cell), flush=True)
    return cell


def projected_cell(task: str, optimizer: str, budget: int, server: str) -> dict[str, Any]:
    """What ``dspy-ext compile --dry-run`` projects for the cell (checked to send no completion request)."""
    proxy = CountingProxy(server)
    try:
        projection = dry_run(_settings(task, optimizer, budget, 1, proxy.base))
        assert proxy.requests == 0, "the dry run sent a completion"
    finally:
        proxy.close()
    return {
        "calls": projection.calls,
        "tokens": projection.tokens,
        "usd": projection.usd,
        "task_calls": projection.task.calls,
        "prompt_calls": projection.prompt.calls,
        "prompt_tokens": projection.prompt.tokens,
        "by_meta_prompt": projection.to_dict()["by_meta_prompt"],
        "known": projection.known,
    }


def spend_cell(task: str, optimizer: str, budget: int, server: str, results: Path) -> dict[str, Any] | None:
    """The cell's actual spend (run now unless kept) and the current code's projection; ``None``: not run."""
    path = results / f"{task}-{optimizer}-b{budget}.actual.json"
    if not path.exists():
        return None
    cell = json.loads(path.read_text())
    cell["projected"] = projected_cell(task, optimizer, budget, server)
    return cell


def thread_cell(threads: int, budget: int, server: str, delay: float, results: Path) -> dict[str, Any]:
    path = results / f"threads-{threads}-b{budget}.json"
    if path.exists():
        return json.loads(path.read_text())
    proxy = SlowProxy(server, delay)
    try:
        actual = _compile(_settings("sentiment", "ape", budget, threads, proxy.base))
    finally:
        proxy.close()
    cell = {"threads": threads, "budget": budget, "delay": delay, **actual, "server_requests": proxy.requests}
    results.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cell, indent=2) + "\n")
    print(json.dumps(cell), flush=True)
    return cell


def _ratio(projected: float | None, actual: float | None) -> str:
    if not projected or not actual:
        return "-"
    return f"{projected / actual:.2f}"


def _median(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} (range {min(values):.2f}-{max(values):.2f})"


def _spend_table(spend: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| task | optimizer | calls proj. | calls | server | task/prompt proj. | task/prompt | tokens proj. | tokens"
        " | ratio | prompt tokens proj. | prompt tokens | usd proj. | usd | ratio | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in spend:
        p, a = c["projected"], c["actual"]
        prompt = a.get("by_role", {}).get("prompt")  # not kept by the earliest cells
        prompt_tokens = prompt["input_tokens"] + prompt["output_tokens"] if prompt else "-"
        lines.append(
            f"| {c['task']} | {c['optimizer']} | {p['calls']} | {a['calls']} | {c['server_requests']} | "
            f"{p['task_calls']}/{p['prompt_calls']} | {a['task_calls']}/{a['prompt_calls']} | {p['tokens']} | "
            f"{a['tokens']} | {_ratio(p['tokens'], a['tokens'])} | {p['prompt_tokens']} | {prompt_tokens} | "
            f"{p['usd']:.5f} | {a['usd']:.5f} | {_ratio(p['usd'], a['usd'])} | {a['seconds']:.0f} |"
        )
    ratios = {
        key: [c["projected"][key] / c["actual"][key] for c in spend if c["actual"][key] and c["projected"][key]]
        for key in ("calls", "tokens", "usd")
    }
    return [
        *lines,
        "",
        f"Median projected/actual over these {len(spend)} cells: calls {_median(ratios['calls'])}, "
        f"tokens {_median(ratios['tokens'])}, USD {_median(ratios['usd'])}.",
    ]


def _reply_table(spend: list[dict[str, Any]]) -> list[str]:
    """What the prompt model really wrote per call, against the plan's reply lengths."""
    lines = [
        "| task | optimizer | meta-prompts planned (calls x tokens in / out) | prompt calls | mean tokens in / out |",
        "|---|---|---|---|---|",
    ]
    for c in spend:
        calls = c["actual"].get("prompt_call_tokens")
        if not calls:
            continue
        planned = ", ".join(
            f"{m['role']} {m['calls']} x {m['prompt_tokens']} / {m['reply_tokens']}"
            for m in c["projected"]["by_meta_prompt"]
        )
        mean_in = statistics.fmean(i or 0 for i, _ in calls)
        mean_out = statistics.fmean(o or 0 for _, o in calls)
        lines.append(f"| {c['task']} | {c['optimizer']} | {planned} | {len(calls)} | {mean_in:.0f} / {mean_out:.0f} |")
    return lines


def _thread_table(threads: list[dict[str, Any]]) -> list[str]:
    base = next((t["seconds"] for t in threads if t["threads"] == 1), None)
    lines = [
        f"Wall-clock of one APE compile (sentiment, budget {threads[0]['budget']}) behind a proxy that adds "
        f"{threads[0]['delay']:g} s to each request:",
        "",
        "| threads | seconds | speed-up | calls | server requests |",
        "|---|---|---|---|---|",
    ]
    for t in threads:
        speedup = f"{base / t['seconds']:.2f}x" if base else "-"
        lines.append(f"| {t['threads']} | {t['seconds']} | {speedup} | {t['calls']} | {t['server_requests']} |")
    return lines


def render(spend: list[dict[str, Any]], threads: list[dict[str, Any]], missing: list[str]) -> str:
    lines = [
        f"Run {dt.date.today()} on this machine (2 cores, shared with other jobs): llama.cpp's OpenAI-compatible",
        "server on loopback with the embedded SmolLM2-135M file, a counting proxy in front; 50 train / 30 val rows,",
        f"seed 0, plain adapter, budget {spend[0]['budget'] if spend else '-'}, declared price "
        f"${PRICE.input_per_1m} / ${PRICE.output_per_1m} per 1M tokens in / out. DSPy's response cache is off",
        "(the LMs' `cache=False`, and `dspy.configure_cache` with neither memory nor disk). Projected:",
        "`dspy-ext compile --dry-run` (0 requests, checked). Actual: the compile alone, by its meter; the server",
        "column is the proxy's count of completion requests. Ratio = projected / actual.",
        "",
        *_spend_table(spend),
    ]
    if missing:
        lines += ["", f"Not finished in this run (no figure given for them): {', '.join(missing)}."]
    lines += ["", "What the prompt model wrote, per cell (the meter's tokens of each prompt-model call):", ""]
    lines += _reply_table(spend)
    if threads:
        lines += ["", *_thread_table(threads)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizers", nargs="+", default=OPTIMIZERS)
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--budget", type=int, default=200)
    parser.add_argument("--thread-budget", type=int, default=60)
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--delay", type=float, default=1.0)
    parser.add_argument(
        "--phase",
        choices=["all", "actual", "project"],
        default="all",
        help="actual: run the compiles (kept per cell); project: dry-run the kept cells and write the table",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="the folder of the kept cells")
    parser.add_argument(
        "--thread-results", type=Path, default=None, help="the folder of the kept thread cells (default: --results)"
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    args.thread_results = args.thread_results or args.results
    import os

    import dspy

    os.environ.setdefault("DSPY_EXT_BENCH_KEY", "sk-local")
    # No reply may come from DSPy's response cache, in any layer (the LMs are built with cache=False too).
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    cells = [(t, o) for o in args.optimizers for t in args.tasks]
    with served_model(Path(tempfile.mkdtemp()) / "server.log") as server:
        if args.phase in ("all", "actual"):
            for t, o in cells:
                actual_cell(t, o, args.budget, server, args.results)
            for n in args.threads:
                thread_cell(n, args.thread_budget, server, args.delay, args.results)
        if args.phase == "actual":
            return
        spend = [c for t, o in cells if (c := spend_cell(t, o, args.budget, server, args.results)) is not None]
    # The thread cells are only read here (kept from an actual phase, or from an earlier run's folder).
    kept = [args.thread_results / f"threads-{n}-b{args.thread_budget}.json" for n in args.threads]
    threads = [json.loads(path.read_text()) for path in kept if path.exists()]
    done = {(c["task"], c["optimizer"]) for c in spend}
    body = render(spend, threads, [f"{t} {o}" for t, o in cells if (t, o) not in done])
    if threads and args.thread_results != args.results:
        body += f"\n\n(The thread cells are kept from an earlier run, in bench/results/{args.thread_results.name}/.)"
    print(body)
    if not args.no_write:
        write_section("Served model: projected against actual spend, and threads (issue 17)", body)


if __name__ == "__main__":
    threading.excepthook = lambda exc: None  # a proxy handler thread cut off at shutdown is not a result
    main()
