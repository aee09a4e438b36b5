"""The ``dspy-ext`` command line: evaluate, compile, export, tune, compare."""

from __future__ import annotations

import argparse
import logging
import sys

from dspy_ext.cli.common import CLIError, setup_logging
from dspy_ext.lm.llama import EmbeddedModelMissing

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    from dspy_ext.cli import compare
    from dspy_ext.cli import compile as compile_cmd
    from dspy_ext.cli import evaluate
    from dspy_ext.cli import export as export_cmd
    from dspy_ext.cli import tune

    parser = argparse.ArgumentParser(prog="dspy-ext", description="Prompt optimization for DSPy programs.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in (evaluate, compile_cmd, export_cmd, compare, tune):
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
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
