"""``dspy-ext compare``: several optimizers x several seeds on one task, with statistics.

For each optimizer and seed it compiles on a seeded train/val draw and scores
on the full held-out test split, then writes to ``--out``:

* ``results.md`` / ``results.csv``: one row per optimizer: test accuracy mean ±
  95% CI over seeds, LM calls, tokens, wall time, whether the budget is
  enforced, and a paired test (exact McNemar on per-example correctness) against
  the best optimizer;
* ``score_vs_calls.png``: test score against LM calls, one point per run;
* ``cells/*.json`` and ``runs/*/``: one finished (optimizer, seed) each; a
  re-run skips them, so it costs no LM calls.

Progress goes to stderr, one line per cell; ``--json`` prints one object on stdout.
"""

from __future__ import annotations

import argparse
import sys

import dspy

from dspy_ext.cli.common import add_model_args, add_output_args, add_task_args, emit_json
from dspy_ext.compare import run_compare


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare", help="compare optimizers over seeds on held-out data",
        description="Compile a task with several optimizers and seeds, score each run on the held-out test "
                    "split and tabulate mean ± 95% CI, LM calls, tokens, time and paired significance tests.")
    add_task_args(parser)
    add_model_args(parser)
    parser.add_argument("--optimizers", required=True,
                        help="comma-separated registry names, e.g. ape,opro,mipro,copro,bfsrs")
    parser.add_argument("--config", default=None,
                        help="per-optimizer settings as JSON, e.g. '{\"ape\": {\"top_k\": 2}}' (validated)")
    parser.add_argument("--budget", type=int, default=400,
                        help="LM calls per compile (hard cap for ours; closest setting for DSPy's)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per optimizer: --seed, --seed+1, ...")
    parser.add_argument("--train", type=int, default=50, help="training rows drawn per seed from the training file")
    parser.add_argument("--val", type=int, default=50, help="validation rows drawn per seed from the training file")
    parser.add_argument("--out", default=None, help="comparison folder (default runs/compare-TASK)")
    add_output_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, *, lm: dspy.BaseLM | None = None) -> int:
    """Run the comparison; ``lm`` replaces ``make_lm(args.lm)`` (for tests). Exit 1 if a cell failed."""
    args.progress = sys.stderr.isatty() and not args.json
    result = run_compare(args, lm=lm)
    if args.json:
        emit_json(result)
    else:
        print(render_text(result))
    return 1 if result["failed"] else 0


def render_text(result: dict) -> str:
    """A short plain-text summary for the terminal."""
    lines = [f"{result['task']}: {len(result['rows'])} runs ({result['skipped_cells']} resumed), "
             f"{result['new_lm_calls']} new LM calls -> {result['out']}"]
    for row in result["summary"]:
        if not row["runs"]:
            lines.append(f"  {row['optimizer']:<14} no finished run")
            continue
        vs = row.get("vs_best")
        mark = "best" if row.get("best") else (
            f"{-vs['diff_points'] + 0.0:+.1f} pts, p={vs['p_value']:.3g}{' *' if vs['significant'] else ''}" if vs else "")
        ci = f"{row['test_mean']:.1f} ± {row['test_ci95']:.1f}"
        lines.append(f"  {row['optimizer']:<14} {ci:>13}  {row['lm_calls_mean']:>6.0f} calls  "
                     f"{row['seconds_mean']:>6.0f} s  {mark}")
    for fail in result["failed"]:
        lines.append(f"  FAILED {fail['optimizer']} seed {fail['seed']}: {fail['error'][:200]}")
    return "\n".join(lines)
