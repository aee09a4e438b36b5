"""A deterministic fake task whose fake LM answers any prompt: for tests and overhead benchmarks.

The task: ``input = "please handle item number {i} now"`` -> ``output = "ITEM-{i}"``.
The fake model solves item ``i`` iff ``i % 8 < level``, where ``level`` is the
digit after "level" in the instruction (the system message under
:class:`~dspy_ext.adapters.PlainAdapter`, 0 without one) plus one per demo
turn in the prompt (at most 2). So instructions and demos both change scores,
and any optimizer can make progress.

Every other request is a *meta* request (an optimizer writing an instruction,
ours or DSPy's: APE, MIPROv2's proposer, COPRO, GEPA's reflection...). It is
answered without knowing the signature, in the format the prompt asks for:
DSPy's JSONAdapter (``Respond with a JSON object ...``) and ChatAdapter
(``[[ ## field ## ]]`` markers) get their output fields; the plain adapter's
``Reply with one line per field: 'A: ...', then 'B: ...'`` gets one line per
field; anything else one fenced line (fences are dropped by the plain adapter).
The proposed level is a hash of the request, so different prompts propose
different instructions, deterministically.

Example:
    >>> lm = fake_world_lm()                              # doctest: +SKIP
    >>> with dspy.context(lm=lm, adapter=PlainAdapter()):   # doctest: +SKIP
    ...     Transform(instructions="Act at level 8.")(input=item(3).input).output
    'ITEM-3'
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from pathlib import Path

import dspy

from dspy_ext.lm.fake import FakeEngine

_TASK = re.compile(r"^(?:input:\s*)?please handle item number (\d+) now$", re.IGNORECASE)
_LEVEL = re.compile(r"\blevel (\d)\b")
_FIELDS = re.compile(r"'([^']+?):\s*\.\.\.'")
_JSON_ASK = re.compile(r"Respond with a JSON object in the following order of fields: (.*)$", re.MULTILINE)
_CHAT_ASK = re.compile(r"Respond with the corresponding output fields, starting with the field (.*)$", re.MULTILINE)
_ids = itertools.count()

BASELINE_INSTRUCTION = "Reply to the request."


def item(i: int) -> dspy.Example:
    return dspy.Example(input=f"please handle item number {i} now", output=f"ITEM-{i}").with_inputs("input")


def dataset(n: int, start: int = 0) -> list[dspy.Example]:
    return [item(i) for i in range(start, start + n)]


def level(instruction: str) -> int:
    match = _LEVEL.search(instruction)
    return int(match.group(1)) if match else 0


def _digest(messages: list[dict[str, str]]) -> int:
    return int(hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:12], 16)


def proposal(messages: list[dict[str, str]]) -> str:
    """A new instruction for a meta request, fixed by the request's content."""
    h = _digest(messages)
    return f"Handle the request at level {h % 9}, variant {h % 9973}."


def respond(messages: list[dict[str, str]]) -> str:
    """Answer any request of the fake world (see the module docstring)."""
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
    last = messages[-1]["content"].strip() if messages else ""
    task = _TASK.match(last)
    if task:
        demos = sum(1 for m in messages[:-1] if m["role"] == "assistant")
        i = int(task.group(1))
        return f"ITEM-{i}" if i % 8 < level(system) + min(2, demos) else "unknown"
    text = proposal(messages)

    def value(field: str) -> str:
        return "Output:" if "prefix" in field.lower() else text

    json_ask = _JSON_ASK.search(last)
    if json_ask:
        return json.dumps({f: value(f) for f in re.findall(r"`(\w+)`", json_ask.group(1))})
    chat_ask = _CHAT_ASK.search(last)
    if chat_ask:
        fields = [f for f in re.findall(r"\[\[ ## (\w+) ## \]\]", chat_ask.group(1)) if f != "completed"]
        return "".join(f"[[ ## {f} ## ]]\n{value(f)}\n\n" for f in fields) + "[[ ## completed ## ]]"
    fields_line = next((line for line in system.splitlines() if line.startswith("Reply with one line per field")), None)
    if fields_line:
        prefixes = _FIELDS.findall(fields_line)
        return "\n".join(f"{p}: {value(p)}" for p in prefixes)
    return f"```\n{text}\n```"


def fake_world_lm(*, latency: float = 0.0, cache: bool = False, name: str | None = None) -> dspy.LM:
    """A ``dspy.LM`` on a :class:`FakeEngine` answering with :func:`respond` (``lm.engine`` counts calls).

    Each LM gets a unique model name unless ``name`` is given: DSPy's cache key ignores the engine.
    """
    engine = FakeEngine(respond, latency=latency)
    return dspy.LM(name or f"fake/world-{next(_ids)}", engine=engine, cache=cache)


def write_task(folder: Path, *, n_train: int = 40, n_test: int = 24) -> Path:
    """Write the fake task as a data folder (``train.jsonl``, ``test.jsonl``, ``instructions.json``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", dataset(n_train)), ("test", dataset(n_test, start=1000))):
        (folder / f"{name}.jsonl").write_text(
            "".join(json.dumps({"input": ex.input, "output": ex.output}) + "\n" for ex in rows)
        )
    (folder / "instructions.json").write_text(json.dumps([BASELINE_INSTRUCTION]))
    return folder


class DyingEngine(FakeEngine):
    """Answers ``answers`` calls like the fake world, then refuses the connection on every try (an endpoint gone down)."""

    def __init__(self, answers: int) -> None:
        super().__init__(respond)
        self.answers = answers

    def generate(self, request):
        if self.calls >= self.answers:
            raise ConnectionRefusedError("[Errno 111] Connection refused")
        return super().generate(request)


def dying_lm(answers: int) -> dspy.LM:
    """A fake-world LM on a :class:`DyingEngine` (DSPy's cache off)."""
    return dspy.LM(f"fake/dying-{answers}", engine=DyingEngine(answers), cache=False)
