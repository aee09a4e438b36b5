"""The fake world with a trade-off: high-level instructions answer more items, but verbosely.

An instruction at level 5 or more (see :mod:`support.fake_world`) makes the fake model wrap its answer
in a sentence ("Sure, the answer is ITEM-3"): still *correct* by the ``contains`` metric, but it breaks
the one-word *format*. With the objective weighted 9:1 towards correctness, a verbose level-5
instruction (7/8 correct with demos) outscores every concise one (at most 6/8), so an unguarded
optimizer adopts a candidate that raises the objective and loses the format on every row.
"""

from __future__ import annotations

import dspy

from dspy_ext.evaluation import criteria
from dspy_ext.lm.fake import FakeEngine
from metrics import contains, max_words

from support import fake_world

#: Instructions at this level or above answer in a sentence.
VERBOSE_LEVEL = 5

#: Correctness (the answer appears) and format (one word), weighted 9:1 in the objective.
guard_metric = criteria(correct=contains, format=max_words(1), weights={"correct": 9, "format": 1})


def respond(messages: list[dict[str, str]]) -> str:
    """Answer a task request as the fake world does, verbosely at a high level; anything else likewise."""
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
    last = messages[-1]["content"].strip() if messages else ""
    task = fake_world._TASK.match(last)
    if not task:
        return fake_world.respond(messages)
    answer = fake_world.respond(messages)
    return f"Sure, the answer is {answer}" if fake_world.level(system) >= VERBOSE_LEVEL else answer


def guard_world_lm() -> dspy.LM:
    """A ``dspy.LM`` answering with :func:`respond` (deterministic, uncached)."""
    return dspy.LM(f"fake/guard-world-{next(fake_world._ids)}", engine=FakeEngine(respond), cache=False)
