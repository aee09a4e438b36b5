"""A fake sentiment model whose label scores lean to ``positive``: contextual calibration corrects it.

Rows are ``"good film i"`` (gold ``positive``) and ``"bad film i"`` (gold ``negative``). Generated replies
are never a bare label, so free generation scores 0 under exact match. Scored as replies, ``positive``
gets ``1.5 + 0.5 g`` and ``negative`` ``-0.5 g`` (``g`` = +1 good, -1 bad, 0 a content-free input):
the most likely label is ``positive`` on every row (50% right), and dividing by the prior measured on
content-free inputs gives the gold label on every row (100%). A fresh process imports this module to
rebuild the same model.
"""

from __future__ import annotations

import dspy

from dspy_ext.lm.fake import FakeEngine

from support.reviews import review  # noqa: F401 - the rows of this world


def polarity(messages: list[dict[str, str]]) -> int:
    text = messages[-1]["content"].removeprefix("Input: ")
    return 1 if text.startswith("good film") else -1 if text.startswith("bad film") else 0


def respond(messages: list[dict[str, str]]) -> str:
    return "I would say it leans one way."


def score(messages: list[dict[str, str]], reply: str) -> float:
    g = polarity(messages)
    return {"positive": 1.5 + 0.5 * g, "negative": -0.5 * g}.get(reply.strip(), -20.0)


def biased_lm(name: str = "fake/biased") -> dspy.LM:
    return dspy.LM(name, engine=FakeEngine(respond, scorer=score), cache=False)
