"""Run every (optimizer, seed) cell of a comparison, resumably, and write its results.

Each cell is one :func:`dspy_ext.experiment.run`: draw train/val with the
cell's seed, compile, score on the task's full test split (the same rows for
every cell, so per-example scores pair up). A finished cell is stored as
``OUT/cells/OPTIMIZER-sSEED.json`` (its row, the per-example test scores and a
fingerprint of its settings) and its run folder as ``OUT/runs/OPTIMIZER-sSEED/``.
A re-run skips every cell whose file matches its settings, so it makes no LM
calls for them. With ``settings.storage`` the cells are the trials of one Optuna
study that worker processes share (:mod:`dspy_ext.compare.distributed`); each
worker runs a cell through the same :meth:`_Cells.run`.

Example:
    >>> settings = CompareSettings(task="sentiment", optimizers=["ape", "mipro"], seeds=3)   # doctest: +SKIP
    >>> result = run_compare(settings)                                                       # doctest: +SKIP
    >>> result["rows"][0]["test_score"], result["new_lm_calls"]   # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy

from dspy_ext.compare.report import Cell, fmt_usd, plot_score_vs_calls, render_csv, render_markdown, summarise
from dspy_ext.data import dataset_fingerprint, split_train_val
from dspy_ext.evaluation import Evaluator
from dspy_ext.experiment import (
    CompareSettings,
    Components,
    RunSettings,
    RunSummary,
    SettingsError,
    build_components,
    run,
)
from dspy_ext.experiment.tracking import (
    GroupEnd,
    GroupStart,
    GroupTracker,
    NoTracker,
    open_group_tracker,
    tracked,
)
from dspy_ext.files import atomic_write_text
from dspy_ext.lm.metering import CallMeter, UsageSnapshot, metering
from dspy_ext.prompt_state import short_hash
from dspy_ext.registry import resolve_config

logger = logging.getLogger(__name__)

#: Fields of a cell's row (and of ``--json`` rows), copied from the run's summary.
ROW_FIELDS = (
    "optimizer",
    "seed",
    "test_score",
    "val_score",
    "baseline_test_score",
    "zero_shot_test_score",
    "lm_calls",
    "failed_calls",
    "tokens",
    "input_tokens",
    "output_tokens",
    "usd",
    "by_role",
    "seconds",
    "budget",
    "budget_enforced",
    "budget_exhausted",
    "max_cost",
    "cost_cap_reached",
    "test_errors",
    "train",
    "val",
    "test",
    "out",
)
CELL_VERSION = 1


def cell_row(summary: RunSummary) -> dict[str, Any]:
    """A cell's row: the :data:`ROW_FIELDS` of its run's summary, as stored in ``cells/*.json``.

    ``by_role`` keeps only the per-role counters the tables read. Rows stored by older versions may
    lack keys (``usd``, ``by_role``, ...); the tables show those as unknown.
    """
    scores, spend = summary.scores, summary.spend
    row = {
        "optimizer": summary.optimizer,
        "seed": summary.seed,
        "test_score": scores.test,
        "val_score": scores.val,
        "baseline_test_score": scores.baseline_test,
        "zero_shot_test_score": scores.zero_shot_test,
        "lm_calls": spend.lm_calls,
        "failed_calls": spend.failed_calls,
        "tokens": spend.tokens,
        "input_tokens": spend.input_tokens,
        "output_tokens": spend.output_tokens,
        "usd": spend.usd,
        "by_role": {role: part.to_dict() for role, part in spend.by_role.items()},
        "seconds": summary.seconds,
        "budget": summary.budget,
        "budget_enforced": summary.budget_enforced,
        "budget_exhausted": summary.budget_exhausted,
        "max_cost": summary.max_cost,
        "cost_cap_reached": summary.cost_cap_reached,
        "test_errors": summary.test_errors,
        "train": summary.train,
        "val": summary.val,
        "test": summary.test,
        "out": summary.out,
    }
    return row


def cell_name(optimizer: str, seed: int) -> str:
    return f"{optimizer}-s{seed}"


def cell_fingerprint(components: Components, cell: RunSettings, review: str | None = None) -> str:
    """A hash of everything that decides a cell's result; a stored cell is reused only if it matches.

    ``review`` is the fingerprint of the review store a cell compiles from (``--feedback``), if any.
    """
    task = components.task
    return short_hash(
        {
            "version": CELL_VERSION,
            "task": task.name,
            "train_file": dataset_fingerprint(task.train),
            "test_file": dataset_fingerprint(task.test),
            "instruction": task.baseline_instruction,
            "lm": getattr(components.lm, "model", str(components.lm)),
            "adapter": components.adapter_name,
            "program": cell.program,
            "metric": cell.metric,
            "budget": cell.budget,
            "train": cell.train,
            "val": cell.val,
            "optimizer": cell.optimizer,
            "config": resolve_config(cell.optimizer, cell.optimizer_config).model_dump(),
            "seed": cell.seed,
            **({"review": review} if review else {}),  # without --feedback, cells stored earlier still match
            # Without a cost cap, cells stored earlier still match; with one, the price decides where it stops.
            **({"max_cost": cell.max_cost, "price": _price(cell)} if cell.max_cost is not None else {}),
        }
    )


def _price(cell: RunSettings) -> dict[str, float] | None:
    return cell.price.model_dump() if cell.price is not None else None


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


def write_reports(out: Path, meta: dict[str, Any], summary: list[dict[str, Any]], cells: list[Cell]) -> dict[str, str]:
    """Write ``results.md``, ``results.csv`` and ``score_vs_calls.png`` into ``out``; return their paths."""
    files = {
        "markdown": str(out / "results.md"),
        "csv": str(out / "results.csv"),
        "plot": str(out / "score_vs_calls.png"),
        "json": str(out / "results.json"),
    }
    plot_score_vs_calls(
        cells,
        meta["optimizers"],
        Path(files["plot"]),
        title=f"{meta['task']}: test score vs LM calls",
        budget=meta["budget"],
    )
    atomic_write_text(Path(files["markdown"]), render_markdown(meta, summary, cells))
    atomic_write_text(Path(files["csv"]), render_csv(summary))
    return files


def store_cell(path: Path, cell: Cell, fingerprint: str) -> None:
    """Write a finished cell atomically (an interrupted write leaves no cell behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"fingerprint": fingerprint, "row": cell.row, "test_example_scores": cell.example_scores}
    atomic_write_text(path, json.dumps(payload, indent=1, default=str) + "\n")


def run_compare(
    settings: CompareSettings,
    *,
    lm: dspy.BaseLM | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    tracker: GroupTracker | None = None,
    worker_init: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) a comparison and write ``results.md``, ``results.csv`` and ``score_vs_calls.png``; track it if asked.

    Args:
        settings: The comparison: data, program, model, ``optimizers``, ``optimizer_configs``,
            ``budget`` and ``max_cost`` (each per cell), ``seeds``, ``seed``, ``train``, ``val``, ``threads``, ``out``;
            with ``storage``, the cells are the trials of a study that ``workers`` processes here (and the same
            command on other machines) share (see :mod:`dspy_ext.compare.distributed`).
        lm: An LM to use instead of ``make_lm(settings.lm)`` (research code and tests pass their own; one
            process only: ``workers`` must be 1).
        log: Where the one-line-per-cell progress goes (default: the module's logger, at INFO).
        progress: Show each cell's progress bars on stderr.
        tracker: Where the comparison is tracked (default: what ``settings.tracking`` asks for): a parent
            record with the tables and the plot, each cell this process runs a child record of it.
        worker_init: Called first in every spawned worker process (a picklable callable), with ``storage``.

    Returns:
        The result object ``--json`` prints: ``rows`` (one per finished (optimizer, seed)),
        ``summary`` (one per optimizer, with the paired test against the best), ``best``,
        ``failed`` cells, ``new_lm_calls``/``new_tokens``/``new_usd`` (this invocation's LM usage, test
        scoring included; ``new_usd`` is ``None`` when a price is unknown), ``files``.
    """
    if lm is not None and settings.workers > 1:
        raise SettingsError(
            "invalid settings: an LM object cannot be sent to worker processes; with workers > 1 name the model in settings.lm"
        )
    group = tracker if tracker is not None else open_group_tracker(settings.tracking)
    cells = open_cells(settings, lm=lm, log=log, progress=progress, tracker=group)
    with tracked(group, GroupStart("compare", cells.out.name, cells.components.task.name, settings, cells.out)):
        if settings.storage:
            from dspy_ext.compare.distributed import run_distributed

            result = run_distributed(cells, worker_init=worker_init)
        else:
            result = _run_here(cells)
        group.finish(comparison_end(result))
    return result


def _run_here(cells: _Cells) -> dict[str, Any]:
    """Run the comparison's cells one after another in this process."""
    meter = CallMeter()
    jobs = cells.jobs()
    started = time.perf_counter()
    with metering(meter):
        for index, (name, seed) in enumerate(jobs, 1):
            cells.run(f"[{index}/{len(jobs)}] {cells.components.task.name} · {name} · seed {seed}", name, seed, meter)
    meta = compare_meta(cells.settings, cells.components, cells.seeds)
    return finish(meta, cells.out, cells.finished, cells.failed, cells.skipped, meter.snapshot(), started)


def comparison_end(result: dict[str, Any]) -> GroupEnd:
    """What a tracker stores of a finished comparison: each optimizer's figures, the tables and the plot."""
    metrics: dict[str, float] = {
        "cells": len(result["rows"]),
        "failed_cells": len(result["failed"]),
        "new_lm_calls": result["new_lm_calls"],
    }
    for row in result["summary"]:
        if row["runs"]:
            for key in ("test_mean", "test_ci95", "lm_calls_mean"):
                metrics[f"{key}/{row['optimizer']}"] = row[key]
    return GroupEnd(metrics, tuple(Path(path) for path in result["files"].values()))


def open_cells(
    settings: CompareSettings,
    *,
    lm: dspy.BaseLM | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    tracker: GroupTracker | None = None,
) -> _Cells:
    """The cells of a comparison, ready to run: task, model and evaluator built, the out folder made; each cell's
    compile is tracked as a child of ``tracker`` (default: not tracked).

    Raises:
        SettingsError: Train/val sizes the task cannot give, or a review store that cannot be read.
    """
    seeds = [settings.seed + k for k in range(settings.seeds)]
    # The task is loaded with the first seed, so that the test split is one and the same for every cell.
    components = build_components(settings, lm=lm)
    try:
        split_train_val(components.task.train, settings.train, settings.val, seed=seeds[0])  # fails before any run
    except ValueError as exc:
        raise SettingsError(f"invalid settings: {exc}") from None
    out = Path(settings.out) if settings.out else settings.default_out
    out.mkdir(parents=True, exist_ok=True)
    return _Cells(
        settings,
        components,
        out,
        seeds,
        review=_review_fingerprint(settings),
        evaluator=Evaluator(components.metric, num_threads=settings.threads, progress=progress),
        log=log or logger.info,
        progress=progress,
        tracker=tracker or NoTracker(),
    )


def _review_fingerprint(settings: CompareSettings) -> str | None:
    """The fingerprint of the review store every cell compiles from (``None``: no ``--feedback``).

    Raises:
        SettingsError: The store cannot be read (before any run).
    """
    if not settings.feedback:
        return None
    from dspy_ext.review.feedback import Feedback, FeedbackError

    try:
        return Feedback.from_store(settings.feedback).fingerprint  # read once: a bad store fails before any run
    except FeedbackError as exc:
        raise SettingsError(f"invalid settings: feedback: {exc}") from None


@dataclass
class _Cells:
    """The cells of one comparison: run (or reuse) each, and keep the finished and the failed ones."""

    settings: CompareSettings
    components: Components
    out: Path
    seeds: list[int]
    review: str | None
    evaluator: Evaluator
    log: Callable[[str], None]
    progress: bool
    tracker: GroupTracker = field(default_factory=NoTracker)
    finished: list[Cell] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0

    def jobs(self) -> list[tuple[str, int]]:
        """Every (optimizer, seed), seed-major: an interrupted comparison has every optimizer on the first seeds."""
        return [(name, seed) for seed in self.seeds for name in self.settings.optimizers]

    def run_dir(self, name: str, seed: int) -> Path:
        """The run folder of the cell ``(name, seed)`` (its ``run.json``, call journal, ...)."""
        return self.out / "runs" / cell_name(name, seed)

    def fingerprint(self, name: str, seed: int) -> str:
        """The :func:`cell_fingerprint` of the cell ``(name, seed)``."""
        cell_settings = self.settings.cell(name, seed).with_changes(out=str(self.run_dir(name, seed)))
        return cell_fingerprint(self.components, cell_settings, self.review)

    def run(self, tag: str, name: str, seed: int, meter: CallMeter) -> Cell | None:
        """Run the cell ``(name, seed)``, or reuse its stored result when its settings match.

        Returns:
            The finished cell (also kept in :attr:`finished`), or ``None`` when it failed (the error is
            in :attr:`failed`).
        """
        run_dir = self.run_dir(name, seed)
        cell_settings = self.settings.cell(name, seed).with_changes(out=str(run_dir))
        fingerprint = cell_fingerprint(self.components, cell_settings, self.review)
        path = self.out / "cells" / f"{cell_name(name, seed)}.json"
        stored = load_cell(path, fingerprint)
        if stored is not None:
            self.finished.append(stored)
            self.skipped += 1
            self.log(f"{tag}: done earlier (test {stored.row['test_score']:.1f}%), skipped")
            return stored
        if path.exists():
            self.log(f"{tag}: stored cell has other settings, running again")
        before = meter.calls
        try:
            # Each cell's compile has its own call journal: its count is the optimizer's own and cold, an
            # interrupted cell resumes from its journal (replayed calls are charged), and a cell whose
            # settings changed starts over.
            outcome = run(
                cell_settings,
                components=self.components,
                evaluator=self.evaluator,
                restart=True,
                progress=self.progress,
                tracker=self.tracker.child(),  # the cell's compile, a child of the comparison's record
            )
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one broken optimizer must not lose the other cells
            logger.debug("cell %s failed", tag, exc_info=True)
            self.failed.append({"optimizer": name, "seed": seed, "error": f"{type(exc).__name__}: {exc}"})
            self.log(f"{tag}: FAILED: {type(exc).__name__}: {str(exc)[:300]}")
            return None
        cell = Cell(name, seed, cell_row(outcome.summary), list(outcome.test.example_scores))
        store_cell(path, cell, fingerprint)
        self.finished.append(cell)
        summary, spend = outcome.summary, outcome.summary.spend
        self.log(
            f"{tag}: test {summary.scores.test:.1f}% (val {summary.scores.val:.1f}%), {spend.lm_calls} compile "
            f"calls, USD {fmt_usd(spend.usd)}{' (cost cap reached)' if summary.cost_cap_reached else ''}, "
            f"{summary.seconds:.1f} s; {meter.calls - before} calls with scoring"
        )
        return cell


def compare_meta(settings: CompareSettings, components: Components, seeds: list[int]) -> dict[str, Any]:
    """What the tables say about the comparison as a whole: task, model, program, budget, seeds, sizes."""
    return {
        "task": components.task.name,
        "lm": getattr(components.lm, "model", str(components.lm)),
        "adapter": components.adapter_name,
        "program": settings.program,
        "metric": settings.metric,
        "budget": settings.budget,
        "max_cost": settings.max_cost,
        "seeds": seeds,
        "train": settings.train,
        "val": settings.val,
        "test": len(components.task.test),
        "optimizers": settings.optimizers,
    }


def finish(
    meta: dict[str, Any],
    out: Path,
    cells: list[Cell],
    failed: list[dict[str, Any]],
    skipped: int,
    usage: UsageSnapshot,
    started: float,
) -> dict[str, Any]:
    """Tabulate the finished ``cells``, write the reports and ``results.json`` into ``out``; the result object.

    ``usage`` is this invocation's LM usage and ``started`` its ``time.perf_counter()`` at the start.
    """
    optimizers = meta["optimizers"]
    finished = sorted(cells, key=lambda c: (optimizers.index(c.optimizer), c.seed))  # by optimizer
    summary = summarise(finished, optimizers)
    out.mkdir(parents=True, exist_ok=True)
    files = write_reports(out, meta, summary, finished)
    result = {
        **meta,
        "rows": [cell.row for cell in finished],
        "summary": summary,
        "best": next((r["optimizer"] for r in summary if r.get("best")), None),
        "failed": failed,
        "skipped_cells": skipped,
        "new_lm_calls": usage.calls,
        "new_tokens": usage.total_tokens,
        "new_usd": usage.usd,
        "seconds": round(time.perf_counter() - started, 2),
        "out": str(out),
        "files": files,
    }
    atomic_write_text(Path(files["json"]), json.dumps(result, indent=1, default=str) + "\n")
    return result
