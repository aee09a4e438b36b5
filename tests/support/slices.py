"""Small slices of the built-in tasks as data folders, so embedded-model tests stay short."""

from __future__ import annotations

import json
from pathlib import Path

from dspy_ext.data import load_task


def task_slice(folder: Path, task_name: str = "sentiment", *, n_train: int = 30, n_test: int = 10) -> Path:
    """Write the first ``n_train`` training and ``n_test`` test rows of a built-in task as a task folder."""
    task = load_task(task_name)
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", task.train[:n_train]), ("test", task.test[:n_test])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(dict(ex)) + "\n" for ex in rows))
    (folder / "instructions.json").write_text(json.dumps(task.instructions))
    return folder
