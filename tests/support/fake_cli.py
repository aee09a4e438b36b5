"""``dspy-ext`` with the fake world's LM, as a script: for tests that run the command in a subprocess.

    python tests/support/fake_cli.py [--latency SECONDS] compile --data ... --out ...

The LM has a fixed model name, so two processes share DSPy cache keys (and a run's call journal).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dspy_ext.cli import main

from support.fake_world import fake_world_lm

if __name__ == "__main__":
    argv = sys.argv[1:]
    latency = 0.0
    if argv[:1] == ["--latency"]:
        latency, argv = float(argv[1]), argv[2:]
    sys.exit(main(argv, lm=fake_world_lm(latency=latency, cache=True, name="fake/world-cli")))
