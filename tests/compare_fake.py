"""``dspy-ext`` on the fake world of :mod:`support.fake_world`, across processes (imported by tests, run as a script).

As a script::

    python tests/compare_fake.py compare --data ... --storage URL --workers 2 ...   # dspy-ext with the fake LM

With ``DSPY_EXT_COMPARE_FAKE=1`` set, importing this module (also as a spawned
worker's ``__mp_main__``) makes ``dspy_ext.lm.make_lm`` return the fake world's
LM under one fixed model name, so every process computes the same cells, and
``DSPY_EXT_COMPARE_FAKE_LATENCY`` seconds pass per call.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from support.fake_world import fake_world_lm

#: The model name of the fake LM in every process (a cell's fingerprint names its model).
MODEL = "fake/world"


def make_lm(latency: float = 0.0):
    return fake_world_lm(latency=latency, name=MODEL)


def install_fake_make_lm(latency: float = 0.0) -> None:
    """Make ``dspy_ext.lm.make_lm`` (what the CLI calls) return the fake world's LM."""
    import dspy_ext.lm

    dspy_ext.lm.make_lm = lambda name="local", **kwargs: make_lm(latency)


if os.environ.get("DSPY_EXT_COMPARE_FAKE"):
    install_fake_make_lm(float(os.environ.get("DSPY_EXT_COMPARE_FAKE_LATENCY", "0")))


if __name__ == "__main__":
    from dspy_ext.cli import main

    sys.exit(main(sys.argv[1:]))
