"""The names of a task's data splits, and of demo orders: ``str`` enums that compare equal to their text and
serialize as it (JSON); ``.value`` is the plain text."""

from __future__ import annotations

import enum


class Split(str, enum.Enum):
    """A data split: the rows a compile learns from, validates on, or is finally scored on.

    A member compares equal to its text (``Split.TRAIN == "train"``).
    """

    TRAIN = "train"
    VAL = "val"
    TEST = "test"


class DemoOrder(str, enum.Enum):
    """The order of drawn demos: labels in turn (a random order per round), or a random order."""

    INTERLEAVE = "interleave"
    SHUFFLE = "shuffle"
