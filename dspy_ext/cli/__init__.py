"""The ``dspy-ext`` command line: evaluate, compile, export, compare, tune (a thin shell over the library).

Each sub-command turns its flags (and ``--config`` run file) into settings, calls the library and
prints. Everything that a library or DSPy prints on stdout is sent to stderr, so stdout carries only
the command's own output (``--json`` is one JSON object).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import Any

from dspy_ext.cli.common import CLIError, setup_logging
from dspy_ext.lm.llama import EmbeddedModelMissing

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    from dspy_ext.cli import compare, evaluate, review, tune
    from dspy_ext.cli import compile as compile_cmd
    from dspy_ext.cli import export as export_cmd

    parser = argparse.ArgumentParser(prog="dspy-ext", description="Prompt optimization for DSPy programs.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in (evaluate, compile_cmd, export_cmd, compare, tune, review):
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None, *, lm: Any = None) -> int:
    """Run ``dspy-ext`` with ``argv`` (default: the process's arguments); return the exit code.

    Args:
        argv: The command line without the program name.
        lm: A ``dspy.LM`` to use instead of the one ``--lm`` names (for embedding the command in
            another program, and for tests with a fake LM).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    args.injected_lm = lm
    setup_logging(args.verbose)
    # Import paths (--program pkg.mod:Class, --metric pkg.mod:fn) resolve from the current folder, as with python -m.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    args.console = sys.stdout
    try:
        # DSPy's optimizers print progress on stdout; keep stdout for the command's own output.
        with contextlib.redirect_stdout(sys.stderr):
            return args.func(args)
    except CLIError as exc:
        print(f"dspy-ext {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, EmbeddedModelMissing) as exc:
        # Bad data, bad names, bad files: one clear line, no traceback.
        print(f"dspy-ext {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dspy-ext {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
