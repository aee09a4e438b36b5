"""Compare optimizers side by side: seeds, held-out scores, paired tests, a plot; resumable.

:func:`run_compare` runs every (optimizer, seed) cell of ``dspy-ext compare``
and writes ``results.md``, ``results.csv`` and ``score_vs_calls.png``;
:mod:`dspy_ext.compare.report` holds the table, statistics and plot code.
"""

from __future__ import annotations

from dspy_ext.compare.report import (
    Cell,
    draw_score_vs_calls,
    plot_score_vs_calls,
    render_csv,
    render_markdown,
    summarise,
)
from dspy_ext.compare.runner import run_compare

__all__ = [
    "Cell",
    "draw_score_vs_calls",
    "plot_score_vs_calls",
    "render_csv",
    "render_markdown",
    "run_compare",
    "summarise",
]
