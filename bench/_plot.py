"""The score-vs-calls picture of a comparison: each run as a dot, each optimizer's mean as a star."""

from __future__ import annotations

import statistics
from pathlib import Path


def score_vs_calls(series: dict[str, list[tuple[float, float]]], path: Path, title: str, xlabel: str) -> None:
    """Write ``path``: per label, its ``(calls, test %)`` runs as dots and their mean as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, points) in enumerate(series.items()):
        if not points:
            continue
        xs, ys = zip(*points)
        ax.scatter(xs, ys, s=14, alpha=0.35, color=f"C{i}")
        ax.scatter([statistics.fmean(xs)], [statistics.fmean(ys)], s=140, marker="*", color=f"C{i}", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy %")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
