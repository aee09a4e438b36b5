"""Behaviour unchanged, measured: the same compiles on two source trees give the same program, calls and score.

A refactor that says "no behaviour change" is checked by running the same compiles on the code before and
after it, with cold caches and one llama thread (so the order of LM calls, and with it every result, is
deterministic), and comparing what they produced:

* the program (every predictor's instruction and demos, from ``program.json``);
* the LM calls (total and by role, from ``run.json``) and tokens;
* the request sequence (the keys of ``calls.jsonl``, in order: each is the hash of one request);
* the validation and test scores.

Usage:
    # run the compiles on a source tree (a git worktree of the commit before, then of the one after)
    python bench/behaviour_parity.py run --src /path/to/before-tree --out /tmp/parity/before
    python bench/behaviour_parity.py run --src . --out /tmp/parity/after
    # compare, and write the table
    python bench/behaviour_parity.py compare /tmp/parity/before /tmp/parity/after --md docs/behaviour_parity.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

OPTIMIZERS = ("demo-search", "ape", "protegi")
COMMAND = "compile --task sentiment --optimizer {optimizer} --budget 400 --seed 0 --threads 1 --no-cache"


def run_compiles(src: Path, out: Path, optimizers: tuple[str, ...] = OPTIMIZERS) -> None:
    """Compile each optimizer with the package at ``src`` (one llama thread, DSPy's cache off)."""
    env = {**os.environ, "PYTHONPATH": str(src.resolve()), "DSPY_EXT_LLAMA_THREADS": "1"}
    for optimizer in optimizers:
        folder = out / optimizer
        args = COMMAND.format(optimizer=optimizer).split() + ["--out", str(folder), "--restart", "--json"]
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "dspy_ext", *args], env=env, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise SystemExit(f"{optimizer}: exit {done.returncode}\n{done.stderr[-2000:]}")
        print(f"{optimizer}: {time.perf_counter() - started:.0f} s -> {folder}", file=sys.stderr)


def _prompts(folder: Path) -> dict[str, dict]:
    state = json.loads((folder / "program.json").read_text())
    return {
        name: {"instructions": p.get("signature", {}).get("instructions"), "demos": p.get("demos")}
        for name, p in state.items()
        if isinstance(p, dict) and "demos" in p
    }


def _request_keys(folder: Path) -> list[str]:
    path = folder / "calls.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["key"] for line in path.read_text().splitlines() if line.strip()]


def fingerprint(folder: Path) -> dict:
    """What one compile produced, in the form compared."""
    summary = json.loads((folder / "run.json").read_text())
    return {
        "program": _prompts(folder),
        "lm_calls": summary["lm_calls"],
        "calls_by_role": {role: spend["calls"] for role, spend in (summary.get("by_role") or {}).items()},
        "tokens": summary["tokens"],
        "requests": _request_keys(folder),
        "val_score": summary["val_score"],
        "test_score": summary["test_score"],
    }


def compare(before: Path, after: Path, optimizers: tuple[str, ...] = OPTIMIZERS) -> tuple[list[str], bool]:
    """A markdown table of before and after per optimizer, and whether everything matched."""
    lines = [
        "| optimizer | same program | LM calls before / after | tokens before / after "
        "| same request sequence | val before / after | test before / after |",
        "|---|---|---|---|---|---|---|",
    ]
    all_same = True
    for optimizer in optimizers:
        b, a = fingerprint(before / optimizer), fingerprint(after / optimizer)
        same = {key: b[key] == a[key] for key in b}
        all_same = all_same and all(same.values())
        lines.append(
            f"| {optimizer} | {'yes' if same['program'] else '**no**'} | {b['lm_calls']} / {a['lm_calls']} "
            f"| {b['tokens']} / {a['tokens']} "
            f"| {'yes' if same['requests'] else '**no**'} ({len(b['requests'])} journaled) "
            f"| {b['val_score']} / {a['val_score']} | {b['test_score']} / {a['test_score']} |"
        )
    return lines, all_same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the compiles on one source tree")
    run.add_argument("--src", type=Path, required=True)
    run.add_argument("--out", type=Path, required=True)
    cmp = sub.add_parser("compare", help="compare two sets of run folders")
    cmp.add_argument("before", type=Path)
    cmp.add_argument("after", type=Path)
    cmp.add_argument("--md", type=Path, help="write the table to this markdown file")
    args = parser.parse_args()
    if args.command == "run":
        run_compiles(args.src, args.out)
        return
    lines, same = compare(args.before, args.after)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md:
        args.md.write_text(text)
    raise SystemExit(0 if same else 1)


if __name__ == "__main__":
    main()
