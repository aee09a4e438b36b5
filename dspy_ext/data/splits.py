"""The names of a task's data splits: a ``str`` enum that compares equal to its text and serializes as it
(JSON); ``.value`` is the plain text."""

from __future__ import annotations

import enum


class Split(str, enum.Enum):
    """A data split: the rows a compile learns from, validates on, or is finally scored on.

    A member compares equal to its text (``Split.TRAIN == "train"``).
    """

    TRAIN = "train"
    VAL = "val"
    TEST = "test"
