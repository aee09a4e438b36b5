"""The names of a task's data splits, and of demo orders: string enums that read and serialize as the text."""

from __future__ import annotations

import enum


class Split(str, enum.Enum):
    """A data split: the rows a compile learns from, validates on, or is finally scored on.

    A member compares equal to its text (``Split.TRAIN == "train"``) and formats as it.
    """

    TRAIN = "train"
    VAL = "val"
    TEST = "test"

    __str__ = str.__str__
    __format__ = str.__format__


class DemoOrder(str, enum.Enum):
    """The order of drawn demos: labels in turn (a random order per round), or a random order."""

    INTERLEAVE = "interleave"
    SHUFFLE = "shuffle"

    __str__ = str.__str__
    __format__ = str.__format__
