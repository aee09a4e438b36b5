"""Tasks: built-in task folders, task folders of your own, and single data files.

A task folder holds ``train.jsonl``, optionally ``test.jsonl`` and optionally
``instructions.json`` (a JSON list of instruction strings, the first being the
human baseline). The built-in tasks live in ``dspy_ext/data/tasks/``; more can
be added by pointing ``DSPY_EXT_TASKS_DIR`` at a folder of task folders.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dspy

from dspy_ext.data.loading import (
    DEFAULT_INPUT_KEYS,
    DEFAULT_OUTPUT_KEYS,
    DataError,
    load_examples,
)
from dspy_ext.data.splits import Split

logger = logging.getLogger(__name__)

__all__ = [
    "BUILTIN_TASKS",
    "BUILTIN_TASKS_DIR",
    "GENERIC_INSTRUCTION",
    "TASKS_DIR_ENV",
    "TaskData",
    "available_tasks",
    "load_task",
]

#: Folder of the task folders shipped with the package.
BUILTIN_TASKS_DIR = Path(__file__).resolve().parent / "tasks"

#: Environment variable naming extra folder(s) of task folders (``os.pathsep``-separated).
TASKS_DIR_ENV = "DSPY_EXT_TASKS_DIR"

#: Baseline instruction for tasks that come without instructions.
GENERIC_INSTRUCTION = "Given the input, produce the output."

TRAIN_FILE = f"{Split.TRAIN.value}.jsonl"
TEST_FILE = f"{Split.TEST.value}.jsonl"
INSTRUCTIONS_FILE = "instructions.json"


def _discover(root: Path) -> dict[str, Path]:
    """Task folders (sub-folders holding a train file) under ``root``, by name."""
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and (p / TRAIN_FILE).is_file()}


#: Built-in tasks: name -> folder.
BUILTIN_TASKS: dict[str, Path] = _discover(BUILTIN_TASKS_DIR)


def available_tasks() -> dict[str, Path]:
    """All task names that :func:`load_task` accepts, with their folders.

    Built-in tasks first; folders found under ``$DSPY_EXT_TASKS_DIR`` are added
    and win on a name clash, since setting the variable is an explicit choice.

    Returns:
        A dict from task name to task folder.

    Example:
        >>> "sentiment" in available_tasks()
        True
    """
    tasks = dict(BUILTIN_TASKS)
    extra = os.environ.get(TASKS_DIR_ENV, "")
    for entry in filter(None, extra.split(os.pathsep)):
        root = Path(entry).expanduser()
        if not root.is_dir():
            logger.warning("%s entry %s is not a folder; ignored", TASKS_DIR_ENV, root)
            continue
        tasks.update(_discover(root))
    return tasks


@dataclass
class TaskData:
    """A task's examples and instructions.

    Attributes:
        name: Task name (folder name or file stem).
        train: Training examples (draw train/validation subsets from these).
        test: Held-out examples, for final scores only.
        instructions: Human-written instructions, possibly empty.
        input_keys: Input field names.
        output_keys: Output field names.
        source: The folder or file the task was loaded from.
    """

    name: str
    train: list[dspy.Example]
    test: list[dspy.Example]
    instructions: list[str] = field(default_factory=list)
    input_keys: tuple[str, ...] = DEFAULT_INPUT_KEYS
    output_keys: tuple[str, ...] = DEFAULT_OUTPUT_KEYS
    source: str = ""

    @property
    def baseline_instruction(self) -> str:
        """The first human instruction, or a generic one if there is none."""
        return self.instructions[0] if self.instructions else GENERIC_INSTRUCTION


def _load_instructions(path: Path) -> list[str]:
    """Read ``instructions.json``: a JSON list of strings (blank ones dropped)."""
    if not path.is_file():
        return []
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(path, f"invalid JSON: {exc.msg}", line=exc.lineno) from exc
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise DataError(path, "expected a JSON list of instruction strings")
    return [item.strip() for item in value if item.strip()]


def _split(
    examples: list[dspy.Example], *, seed: int, test_fraction: float, source: str
) -> tuple[list[dspy.Example], list[dspy.Example]]:
    """Shuffle a copy with ``random.Random(seed)``; the last ``test_fraction`` is test."""
    if len(examples) < 2:
        raise DataError(source, f"has {len(examples)} example(s); at least 2 are needed to split train/test")
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    # Keep both sides non-empty, whatever the rounding.
    n_test = min(max(round(len(shuffled) * test_fraction), 1), len(shuffled) - 1)
    return shuffled[:-n_test], shuffled[-n_test:]


def _load_folder(
    folder: Path,
    *,
    name: str,
    seed: int,
    test_fraction: float,
    input_keys: tuple[str, ...],
    output_keys: tuple[str, ...],
) -> TaskData:
    train_path = folder / TRAIN_FILE
    if not train_path.is_file():
        raise DataError(folder, f"is not a task folder: it has no {TRAIN_FILE}")
    train = load_examples(train_path, input_keys=input_keys, output_keys=output_keys)
    test_path = folder / TEST_FILE
    if test_path.is_file():
        test = load_examples(test_path, input_keys=input_keys, output_keys=output_keys)
    else:
        logger.info("%s has no %s; splitting %s with seed %d", folder, TEST_FILE, TRAIN_FILE, seed)
        train, test = _split(train, seed=seed, test_fraction=test_fraction, source=str(train_path))
    return TaskData(
        name=name,
        train=train,
        test=test,
        instructions=_load_instructions(folder / INSTRUCTIONS_FILE),
        input_keys=input_keys,
        output_keys=output_keys,
        source=str(folder),
    )


def _key_tuple(keys: str | Sequence[str] | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if keys is None:
        return default
    return (keys,) if isinstance(keys, str) else tuple(keys)


def load_task(
    name: str | None = None,
    data: str | Path | None = None,
    *,
    seed: int = 0,
    test_fraction: float = 0.25,
    input_keys: str | Sequence[str] | None = None,
    output_keys: str | Sequence[str] | None = None,
) -> TaskData:
    """Load a task by name, from a task folder, or from one data file.

    Exactly one of ``name`` and ``data`` must be given.

    Args:
        name: A built-in task (see :data:`BUILTIN_TASKS`) or a task folder
            under ``$DSPY_EXT_TASKS_DIR``.
        data: A task folder (``train.jsonl``, optional ``test.jsonl`` and
            ``instructions.json``), or a single data file (or Hub name) that is
            split into train/test.
        seed: Seed of the train/test split (single files, or folders without
            ``test.jsonl``).
        test_fraction: Fraction of examples that go to test when splitting.
        input_keys: Input column name(s); default ``("input",)``.
        output_keys: Output column name(s); default ``("output",)``.

    Returns:
        The :class:`TaskData`.

    Raises:
        ValueError: Neither or both of ``name``/``data``, an unknown name (the
            message lists the available ones), or a bad ``test_fraction``.
        DataError: Missing or malformed data (see :func:`load_examples`).

    Example:
        >>> task = load_task("sentiment")
        >>> len(task.train), len(task.test), task.input_keys
        (300, 100, ('input',))
    """
    if (name is None) == (data is None):
        raise ValueError("give exactly one of name= (a registered task) or data= (a folder or file)")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    inputs = _key_tuple(input_keys, DEFAULT_INPUT_KEYS)
    outputs = _key_tuple(output_keys, DEFAULT_OUTPUT_KEYS)
    split = {"seed": seed, "test_fraction": test_fraction, "input_keys": inputs, "output_keys": outputs}
    if name is not None:
        return _load_folder(_task_folder(name), name=name, **split)
    assert data is not None  # narrowed by the exactly-one check above
    path = Path(data).expanduser()
    if path.is_dir():
        return _load_folder(path, name=path.name, **split)
    return _load_file(data, path, **split)


def _task_folder(name: str) -> Path:
    """The folder of a registered task.

    Raises:
        ValueError: An unknown name (the message lists the available ones).
    """
    tasks = available_tasks()
    if name not in tasks:
        hint = "" if os.environ.get(TASKS_DIR_ENV) else f" (set {TASKS_DIR_ENV} to add a folder of tasks)"
        raise ValueError(f"unknown task {name!r}; available tasks: {', '.join(sorted(tasks))}{hint}")
    return tasks[name]


def _load_file(
    data: str | Path,
    path: Path,
    *,
    seed: int,
    test_fraction: float,
    input_keys: tuple[str, ...],
    output_keys: tuple[str, ...],
) -> TaskData:
    """A task from one data file (or Hub name), split into train and test."""
    examples = load_examples(data, input_keys=input_keys, output_keys=output_keys)
    train, test = _split(examples, seed=seed, test_fraction=test_fraction, source=str(data))
    return TaskData(
        name=path.stem if path.is_file() else str(data),
        train=train,
        test=test,
        instructions=[],
        input_keys=input_keys,
        output_keys=output_keys,
        source=str(data),
    )
