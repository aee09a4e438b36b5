"""Labelled film reviews for the fake sentiment worlds: ``"good film i"`` is positive, ``"bad film i"`` negative."""

from __future__ import annotations

import dspy


def review(i: int) -> dspy.Example:
    """Row ``i``: even rows are good (``positive``), odd rows bad (``negative``)."""
    good = i % 2 == 0
    return dspy.Example(
        input=f"{'good' if good else 'bad'} film {i}", output="positive" if good else "negative"
    ).with_inputs("input")


TRAIN = [review(i) for i in range(40)]
VAL = [review(i) for i in range(100, 130)]
