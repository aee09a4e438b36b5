"""One benchmark cell = one ``dspy-ext ... --json`` run whose output is kept, so a grid resumes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def read_json(text: str) -> dict:
    """The JSON object of a ``--json`` run (the last line starting with ``{``: some optimizers print first)."""
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def run_cell(cmd: list[str], out: Path, collect_only: bool) -> dict | None:
    """Return the kept result of ``dspy-ext CMD --json`` in ``out``, running it first unless ``collect_only``."""
    if out.exists() and out.stat().st_size:
        return read_json(out.read_text())
    if collect_only:
        return None
    proc = subprocess.run([sys.executable, "-m", "dspy_ext", *cmd, "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    out.write_text(proc.stdout)
    return read_json(proc.stdout)
