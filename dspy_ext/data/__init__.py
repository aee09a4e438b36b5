"""Task data: loading examples, built-in tasks, splits and fingerprints.

Example:
    >>> from dspy_ext.data import load_task, split_train_val
    >>> task = load_task("sentiment")
    >>> train, val = split_train_val(task.train, 20, 50, seed=0)
    >>> len(train), len(val), len(task.test)
    (20, 50, 100)
"""

from __future__ import annotations

from dspy_ext.data.demos import DemoOrder
from dspy_ext.data.loading import (
    DEFAULT_INPUT_KEYS,
    DEFAULT_OUTPUT_KEYS,
    SUPPORTED_EXTENSIONS,
    DataError,
    dataset_fingerprint,
    default_valset,
    load_examples,
    split_train_val,
)
from dspy_ext.data.splits import Split
from dspy_ext.data.tasks import (
    BUILTIN_TASKS,
    BUILTIN_TASKS_DIR,
    GENERIC_INSTRUCTION,
    TASKS_DIR_ENV,
    TaskData,
    available_tasks,
    load_task,
)

__all__ = [
    "BUILTIN_TASKS",
    "BUILTIN_TASKS_DIR",
    "DEFAULT_INPUT_KEYS",
    "DEFAULT_OUTPUT_KEYS",
    "GENERIC_INSTRUCTION",
    "SUPPORTED_EXTENSIONS",
    "TASKS_DIR_ENV",
    "DataError",
    "DemoOrder",
    "Split",
    "TaskData",
    "available_tasks",
    "dataset_fingerprint",
    "default_valset",
    "load_examples",
    "load_task",
    "split_train_val",
]
