"""A deterministic fake world for the ``dspy-ext tune`` tests (imported by them, and run as a script).

The task: ``input = "item {i}"`` -> ``output = "ITEM-{i}"``. The fake task model
(behind :class:`~dspy_ext.adapters.PlainAdapter`) answers item ``i`` right iff
``i % 5 < demos + level``, where ``demos`` is the number of demos in the prompt
and ``level`` the digit after "level" in the instruction (0 if none). So
LabeledFewShot with ``k`` demos scores ``k/5``, and the hyperparameter decides
the score. With four or more demos the model also gets chatty: it appends
" indeed" to the answers it knows, which the ``brevity`` criterion of
:func:`two_criteria` punishes (``accuracy`` only looks at the first word).

Meta-prompts (an instruction search's prompt model) get "Handle the item at
level N, take K." with N cycling through :data:`LEVELS`.

As a script::

    python tests/tune_fake.py study STORAGE STUDY TRIALS [LATENCY HEARTBEAT]   # OptunaTuner in-process
    python tests/tune_fake.py cli tune --data ... --adapter plain ...        # dspy-ext with the fake LM

With ``DSPY_EXT_TUNE_FAKE=1`` set, importing this module (also as a spawned
worker's ``__mp_main__``) makes ``dspy_ext.lm.make_lm`` return the fake LM, so
``--workers N`` children use it too.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
import uuid
from pathlib import Path

import dspy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dspy_ext.adapters import PlainAdapter
from dspy_ext.lm import FakeEngine
from dspy_ext.meta_prompts import DEFAULT_META_PROMPTS

LEVELS = (1, 3, 0, 2, 4)
META_TEXTS = [sig.instructions for sig in DEFAULT_META_PROMPTS.values()]
STUDENT_INSTRUCTION = "Reply to the item."


def item(i: int) -> dspy.Example:
    return dspy.Example(input=f"item {i}", output=f"ITEM-{i}").with_inputs("input")


def trainset(n: int = 30) -> list[dspy.Example]:
    return [item(i) for i in range(100, 100 + n)]


def devset(n: int = 20) -> list[dspy.Example]:
    return [item(i) for i in range(n)]


def student() -> dspy.Module:
    from programs import Transform

    return Transform(instructions=STUDENT_INSTRUCTION)


def level(text: str) -> int:
    match = re.search(r"\blevel (\d)\b", text)
    return int(match.group(1)) if match else 0


class Responder:
    """Task requests are answered by the rule in the module docstring; meta-prompts get leveled instructions."""

    def __init__(self) -> None:
        self.levels = itertools.cycle(LEVELS)
        self.counter = itertools.count()

    def __call__(self, messages: list[dict[str, str]]) -> str:
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
        if any(text in system for text in META_TEXTS):
            return f"Handle the item at level {next(self.levels)}, take {next(self.counter)}."
        match = re.search(r"item (\d+)", messages[-1]["content"])
        if match is None:
            return "unknown"
        i = int(match.group(1))
        demos = sum(1 for m in messages[:-1] if m["role"] == "assistant")
        if i % 5 >= demos + level(system):
            return "unknown"
        return f"ITEM-{i} indeed" if demos >= 4 else f"ITEM-{i}"


def make_lm(latency: float = 0.0) -> dspy.LM:
    """A fresh fake LM (a unique model name: DSPy's cache key ignores the engine)."""
    return dspy.LM(f"fake/tune-{uuid.uuid4().hex[:10]}", engine=FakeEngine(Responder(), latency=latency), cache=False)


def accuracy(example, prediction, trace=None) -> float:
    words = str(prediction.output or "").split()
    return float(bool(words) and words[0] == example.output)


def two_criteria(example, prediction, trace=None) -> dict[str, float]:
    """``accuracy`` (first word right) and ``brevity`` (a one-word answer)."""
    return {"accuracy": accuracy(example, prediction), "brevity": float(len(str(prediction.output or "").split()) <= 1)}


LABELED_SPACE = {
    "optimizers": {"labeled": {"k": {"int": [0, 5]}}},
    "pruner": "none",
    "eval_minibatch": 5,
    "sampler": {"type": "tpe", "n_startup_trials": 3},
}


def write_task(folder: Path, n_train: int = 30, n_test: int = 10) -> Path:
    """A ``--data`` task folder of the fake task."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"input": f"item {i}", "output": f"ITEM-{i}"} for i in range(200, 200 + n_train)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tests = [{"input": f"item {i}", "output": f"ITEM-{i}"} for i in range(500, 500 + n_test)]
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tests))
    (folder / "instructions.json").write_text(json.dumps([STUDENT_INSTRUCTION]))
    return folder


def install_fake_make_lm(latency: float = 0.0) -> None:
    """Make ``dspy_ext.lm.make_lm`` (what the CLI calls) return the fake LM."""
    import dspy_ext.lm

    dspy_ext.lm.make_lm = lambda name="local", **kwargs: make_lm(latency)


if os.environ.get("DSPY_EXT_TUNE_FAKE"):
    install_fake_make_lm(float(os.environ.get("DSPY_EXT_TUNE_FAKE_LATENCY", "0")))


def run_study(storage: str, study: str, trials: int, latency: float = 0.0, heartbeat: int = 1) -> None:
    """Run :class:`OptunaTuner` on the labeled space in this process (the kill -9 test's victim)."""
    from dspy_ext.tuning import OptunaTuner

    tuner = OptunaTuner(
        accuracy,
        space=LABELED_SPACE,
        n_trials=trials,
        storage=storage,
        study_name=study,
        num_threads=1,
        heartbeat_interval=heartbeat,
    )
    with dspy.context(lm=make_lm(latency), adapter=PlainAdapter()):
        tuner.open(student(), trainset=trainset(), valset=devset()).optimize()


if __name__ == "__main__":
    if sys.argv[1] == "study":
        storage, study, trials = sys.argv[2], sys.argv[3], int(sys.argv[4])
        latency = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
        heartbeat = int(sys.argv[6]) if len(sys.argv) > 6 else 1
        run_study(storage, study, trials, latency, heartbeat)
    elif sys.argv[1] == "cli":
        from dspy_ext.cli import main

        sys.exit(main(sys.argv[2:]))
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]!r}")
