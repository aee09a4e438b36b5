"""Run every (optimizer, seed) cell of a comparison, resumably, and write its results.

Each cell is one :func:`dspy_ext.cli.compile.run_one`: draw train/val with the
cell's seed, compile, score on the task's full test split (the same rows for
every cell, so per-example scores pair up). A finished cell is stored as
``OUT/cells/OPTIMIZER-sSEED.json`` (its row, the per-example test scores and a
fingerprint of its settings) and its run folder as ``OUT/runs/OPTIMIZER-sSEED/``.
A re-run skips every cell whose file matches its settings, so it makes no LM
calls for them.

Example:
    >>> result = run_compare(args, lm=fake_lm)      # doctest: +SKIP
    >>> result["rows"][0]["test_score"], result["new_lm_calls"]   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dspy

from dspy_ext.adapters import default_adapter, make_adapter
from dspy_ext.cli.common import CLIError, RunSetup, load_task_from_args
from dspy_ext.cli.compile import run_one
from dspy_ext.compare.report import Cell, plot_score_vs_calls, render_csv, render_markdown, summarise
from dspy_ext.data import dataset_fingerprint, split_train_val
from dspy_ext.evaluation import Evaluator
from dspy_ext.lm.metering import CallMeter, metering
from dspy_ext.prompt_state import content_hash
from dspy_ext.registry import get_spec, resolve_config
from metrics import get_metric

logger = logging.getLogger(__name__)

#: Fields of a cell's row (and of ``--json`` rows), copied from the run's summary.
ROW_FIELDS = ("optimizer", "seed", "test_score", "val_score", "baseline_test_score", "lm_calls", "tokens",
              "seconds", "budget", "budget_enforced", "budget_exhausted", "test_errors", "train", "val", "test",
              "out")
CELL_VERSION = 1


def parse_optimizers(value: str) -> list[str]:
    """``"a,b,c"`` -> ``["a", "b", "c"]``: known names, duplicates dropped, order kept."""
    names: list[str] = []
    for name in (part.strip() for part in value.split(",")):
        if name and name not in names:
            get_spec(name)  # ValueError naming the choices
            names.append(name)
    if not names:
        raise CLIError("--optimizers: give at least one optimizer name")
    return names


def parse_configs(value: str | dict[str, Any] | None, optimizers: list[str]) -> dict[str, dict[str, Any]]:
    """``--config``: a JSON object of per-optimizer settings, ``{"ape": {"top_k": 2}, ...}``, validated."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise CLIError(f"--config is not valid JSON: {exc}") from None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise CLIError('--config must map optimizer names to settings, e.g. \'{"ape": {"top_k": 2}}\'')
    unknown = [name for name in value if name not in optimizers]
    if unknown:
        raise CLIError(f"--config names optimizers not in --optimizers: {', '.join(unknown)}")
    for name, config in value.items():
        resolve_config(name, config)  # ValueError naming the bad key
    return value


def make_setup(args: argparse.Namespace, lm: dspy.BaseLM | None = None) -> RunSetup:
    """The run setup of a comparison; ``lm`` replaces ``make_lm(args.lm)`` (tests inject fakes here).

    The task is loaded with ``args.seed`` so that the test split is one and the same for every cell.
    """
    task = load_task_from_args(args)
    if lm is None:
        from dspy_ext.lm import make_lm

        lm = make_lm(args.lm, cache=not args.no_cache)
    adapter = default_adapter(lm) if args.adapter == "auto" else make_adapter(args.adapter)
    return RunSetup(task=task, lm=lm, adapter=adapter, metric=get_metric(args.metric))


def cell_name(optimizer: str, seed: int) -> str:
    return f"{optimizer}-s{seed}"


def cell_fingerprint(setup: RunSetup, args: argparse.Namespace, optimizer: str, seed: int,
                     config: dict[str, Any]) -> str:
    """A hash of everything that decides a cell's result; a stored cell is reused only if it matches."""
    task = setup.task
    return content_hash({
        "version": CELL_VERSION,
        "task": task.name,
        "train_file": dataset_fingerprint(task.train),
        "test_file": dataset_fingerprint(task.test),
        "instruction": task.baseline_instruction,
        "lm": getattr(setup.lm, "model", str(setup.lm)),
        "adapter": setup.adapter_name,
        "program": args.program,
        "metric": args.metric,
        "budget": args.budget,
        "train": args.train,
        "val": args.val,
        "optimizer": optimizer,
        "config": resolve_config(optimizer, config).model_dump(),
        "seed": seed,
    })


def load_cell(path: Path, fingerprint: str) -> Cell | None:
    """The stored cell at ``path`` if it exists, parses and has ``fingerprint``."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if data.get("fingerprint") != fingerprint:
        return None
    return cell_from_json(data)


def cell_from_json(data: dict[str, Any]) -> Cell:
    """A :class:`Cell` from the JSON object :func:`store_cell` wrote."""
    row = data["row"]
    return Cell(row["optimizer"], row["seed"], row, data["test_example_scores"])


def write_reports(out: Path, meta: dict[str, Any], summary: list[dict[str, Any]],
                  cells: list[Cell]) -> dict[str, str]:
    """Write ``results.md``, ``results.csv`` and ``score_vs_calls.png`` into ``out``; return their paths."""
    files = {"markdown": str(out / "results.md"), "csv": str(out / "results.csv"),
             "plot": str(out / "score_vs_calls.png"), "json": str(out / "results.json")}
    plot_score_vs_calls(cells, meta["optimizers"], Path(files["plot"]),
                        title=f"{meta['task']}: test score vs LM calls", budget=meta["budget"])
    Path(files["markdown"]).write_text(render_markdown(meta, summary, cells))
    Path(files["csv"]).write_text(render_csv(summary))
    return files


def store_cell(path: Path, cell: Cell, fingerprint: str) -> None:
    """Write a finished cell atomically (an interrupted write leaves no cell behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"fingerprint": fingerprint, "row": cell.row, "test_example_scores": cell.example_scores}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_compare(
    args: argparse.Namespace,
    *,
    lm: dspy.BaseLM | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) a comparison and write ``results.md``, ``results.csv`` and ``score_vs_calls.png``.

    Args:
        args: The ``dspy-ext compare`` options (task, model and program options, ``optimizers``,
            ``config``, ``budget``, ``seeds``, ``seed``, ``train``, ``val``, ``threads``, ``out``).
        lm: An LM to use instead of ``make_lm(args.lm)`` (tests pass a fake one).
        log: Where the one-line-per-cell progress goes (default: stderr).

    Returns:
        The result object ``--json`` prints: ``rows`` (one per finished (optimizer, seed)),
        ``summary`` (one per optimizer, with the paired test against the best), ``best``,
        ``failed`` cells, ``new_lm_calls``/``new_tokens`` (this invocation's LM usage), ``files``.
    """
    log = log or _stderr_log
    optimizers = parse_optimizers(args.optimizers)
    configs = parse_configs(args.config, optimizers)
    if args.seeds < 1:
        raise CLIError("--seeds must be >= 1")
    if args.budget < 1:
        raise CLIError("--budget must be >= 1")
    seeds = [args.seed + k for k in range(args.seeds)]
    setup = make_setup(args, lm)
    task = setup.task
    split_train_val(task.train, args.train, args.val, seed=seeds[0])  # a bad --train/--val fails before any run
    out = Path(args.out or f"runs/compare-{task.name}")
    out.mkdir(parents=True, exist_ok=True)

    progress = bool(getattr(args, "progress", False))
    evaluator = Evaluator(setup.metric, num_threads=args.threads, progress=progress)
    meter = CallMeter()
    cells: list[Cell] = []
    failed: list[dict[str, Any]] = []
    skipped = 0
    # Seed-major order: an interrupted comparison has every optimizer on the first seeds.
    jobs = [(name, seed) for seed in seeds for name in optimizers]
    started = time.perf_counter()
    # DSPy's optimizers print to stdout: everything a cell prints goes to stderr.
    with metering(meter), contextlib.redirect_stdout(sys.stderr):
        for index, (name, seed) in enumerate(jobs, 1):
            tag = f"[{index}/{len(jobs)}] {task.name} · {name} · seed {seed}"
            fingerprint = cell_fingerprint(setup, args, name, seed, configs.get(name, {}))
            path = out / "cells" / f"{cell_name(name, seed)}.json"
            stored = load_cell(path, fingerprint)
            if stored is not None:
                cells.append(stored)
                skipped += 1
                log(f"{tag}: done earlier (test {stored.row['test_score']:.1f}%), skipped")
                continue
            if path.exists():
                log(f"{tag}: stored cell has other settings, running again")
            settings = argparse.Namespace(**{**vars(args), "optimizer": name, "seed": seed,
                                             "config": configs.get(name)})
            before = meter.calls
            try:
                run_dir = out / "runs" / cell_name(name, seed)
                # A private response cache per cell, emptied first: the call count is the optimizer's own,
                # cold, and a cell interrupted mid-compile cannot replay cached calls outside its budget.
                shutil.rmtree(run_dir / "cache", ignore_errors=True)
                outcome = run_one(setup, settings, run_dir, progress=progress, evaluator=evaluator,
                                  cache_dir=run_dir / "cache")
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # one broken optimizer must not lose the other cells
                logger.debug("cell %s failed", tag, exc_info=True)
                failed.append({"optimizer": name, "seed": seed, "error": f"{type(exc).__name__}: {exc}"})
                log(f"{tag}: FAILED: {type(exc).__name__}: {str(exc)[:300]}")
                continue
            row = {key: outcome.summary.get(key) for key in ROW_FIELDS}
            cell = Cell(name, seed, row, list(outcome.test.example_scores))
            store_cell(path, cell, fingerprint)
            cells.append(cell)
            log(f"{tag}: test {row['test_score']:.1f}% (val {row['val_score']:.1f}%), {row['lm_calls']} compile "
                f"calls, {row['seconds']:.1f} s; {meter.calls - before} calls with scoring")

    cells.sort(key=lambda c: (optimizers.index(c.optimizer), c.seed))  # report by optimizer, not run order
    summary = summarise(cells, optimizers)
    best = next((r["optimizer"] for r in summary if r.get("best")), None)
    meta = {
        "task": task.name,
        "lm": getattr(setup.lm, "model", str(setup.lm)),
        "adapter": setup.adapter_name,
        "program": args.program,
        "metric": args.metric,
        "budget": args.budget,
        "seeds": seeds,
        "train": args.train,
        "val": args.val,
        "test": len(task.test),
        "optimizers": optimizers,
    }
    files = write_reports(out, meta, summary, cells)
    usage = meter.snapshot()
    result = {
        **meta,
        "rows": [cell.row for cell in cells],
        "summary": summary,
        "best": best,
        "failed": failed,
        "skipped_cells": skipped,
        "new_lm_calls": usage.calls,
        "new_tokens": usage.total_tokens,
        "seconds": round(time.perf_counter() - started, 2),
        "out": str(out),
        "files": files,
    }
    Path(files["json"]).write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result
