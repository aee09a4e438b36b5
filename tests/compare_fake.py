"""``dspy-ext`` on the fake world of :mod:`support.fake_world`, across processes (imported by tests, run as a script).

As a script::

    python tests/compare_fake.py compare --data ... --storage URL --workers 2 ...   # dspy-ext with the fake LM

With ``DSPY_EXT_COMPARE_FAKE=1`` set, importing this module (also as a spawned
worker's ``__mp_main__``) makes ``dspy_ext.lm.make_lm`` return the fake world's
LM under one fixed model name, so every process computes the same cells, and
``DSPY_EXT_COMPARE_FAKE_LATENCY`` seconds pass per call. With
``DSPY_EXT_COMPARE_FAKE_MEET=FOLDER:N``, each process's first call waits until N
processes have made theirs (each leaves a file in FOLDER): every one of them then
holds a cell, however slowly the others start.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from support.fake_world import fake_world_lm

#: The model name of the fake LM in every process (a cell's fingerprint names its model).
MODEL = "fake/world"


def make_lm(latency: float = 0.0, meet: str | None = None):
    lm = fake_world_lm(latency=latency, name=MODEL)
    if meet:
        folder, count = meet.rsplit(":", 1)
        lm.engine.responder = Meeting(lm.engine.responder, Path(folder), int(count))
    return lm


class Meeting:
    """A responder whose first call waits until ``count`` processes have called (files in ``folder``)."""

    def __init__(self, responder, folder: Path, count: int) -> None:
        self.responder, self.folder, self.count = responder, folder, count
        self.met = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, messages):
        with self.lock:
            if not self.met.is_set():
                self.folder.mkdir(parents=True, exist_ok=True)
                (self.folder / str(os.getpid())).touch()
                deadline = time.monotonic() + 600
                while len(list(self.folder.iterdir())) < self.count and time.monotonic() < deadline:
                    time.sleep(0.1)
                self.met.set()
        return self.responder(messages)


def install_fake_make_lm(latency: float = 0.0, meet: str | None = None) -> None:
    """Make ``dspy_ext.lm.make_lm`` (what the CLI calls) return the fake world's LM."""
    import dspy_ext.lm

    dspy_ext.lm.make_lm = lambda name="local", **kwargs: make_lm(latency, meet)


if os.environ.get("DSPY_EXT_COMPARE_FAKE"):
    install_fake_make_lm(
        float(os.environ.get("DSPY_EXT_COMPARE_FAKE_LATENCY", "0")), os.environ.get("DSPY_EXT_COMPARE_FAKE_MEET")
    )


if __name__ == "__main__":
    from dspy_ext.cli import main

    sys.exit(main(sys.argv[1:]))
