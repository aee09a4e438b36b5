"""One benchmark cell = one ``dspy-ext ... --json`` run whose output is kept, so a grid resumes."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def read_json(text: str) -> dict:
    """The JSON object of a ``--json`` run (the last line starting with ``{``: some optimizers print first)."""
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def run_cell(cmd: list[str], out: Path, collect_only: bool) -> dict | None:
    """Return the kept result of ``dspy-ext CMD --json`` in ``out``, running it first unless ``collect_only``."""
    if out.exists() and out.stat().st_size:
        return read_json(out.read_text())
    if collect_only:
        return None
    proc = subprocess.run([sys.executable, "-m", "dspy_ext", *cmd, "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    out.write_text(proc.stdout)
    return read_json(proc.stdout)


def run_commands(pending: list[list[str]], jobs: int, env: dict[str, str] | None = None) -> None:
    """Run every command, ``jobs`` at a time, each logged next to its ``--out`` folder, with ``env`` added to
    the environment (one llama.cpp thread per process unless ``DSPY_EXT_LLAMA_THREADS`` says otherwise)."""
    env = {**os.environ, "DSPY_EXT_LLAMA_THREADS": os.environ.get("DSPY_EXT_LLAMA_THREADS", "1"), **(env or {})}
    pending = list(pending)
    running: list[tuple[subprocess.Popen, list[str], float]] = []
    while pending or running:
        while pending and len(running) < jobs:
            cmd = pending.pop(0)
            out = Path(cmd[cmd.index("--out") + 1])
            out.parent.mkdir(parents=True, exist_ok=True)
            log = open(out.with_suffix(".log"), "w")  # noqa: SIM115 - closed with the process
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), cmd, time.time()))
        time.sleep(2)
        for item in list(running):
            proc, cmd, started = item
            if proc.poll() is not None:
                running.remove(item)
                print(f"rc={proc.returncode} {time.time() - started:.0f}s {' '.join(cmd)}", flush=True)


def grid_arguments(doc: str) -> argparse.Namespace:
    """The command line of a benchmark grid: ``--collect-only``, ``--jobs N``, ``--no-doc``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--collect-only", action="store_true", help="tabulate the stored cells, run nothing")
    parser.add_argument("--jobs", type=int, default=2, help="compare processes at once")
    parser.add_argument("--no-doc", action="store_true", help="print, leave docs/benchmarks.md alone")
    return parser.parse_args()


def run_grid(doc: str, commands: Callable[[], list[list[str]]], body: Callable[[], str], title: str, **hooks) -> None:
    """A benchmark grid's command line: run what is missing (``commands()``, this checkout's code, one llama.cpp
    thread per process), then print ``body()`` and write it as the ``title`` section of docs/benchmarks.md
    (``hooks["before_write"]()`` first, e.g. a plot) unless ``--no-doc``."""
    from _docs import write_section

    args = grid_arguments(doc)
    root = Path(__file__).resolve().parent.parent
    os.chdir(root)
    if not args.collect_only:
        run_commands(commands(), args.jobs, env={"PYTHONPATH": str(root), "DSPY_EXT_LLAMA_THREADS": "1"})
    text = body()
    if not args.no_doc:
        if "before_write" in hooks:
            hooks["before_write"]()
        write_section(title, text)
    print(text)
