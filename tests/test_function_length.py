"""The function-length rule is checked, not only written: no function of the package is over 60 lines.

A function is measured from its ``def`` line to its last line, decorators and docstring included. The
exceptions are named below, each with its reason: the CLI's flag declarations (a list of
``add_argument`` calls reads best as one block) and tables of data.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("dspy_ext", "programs", "metrics")
MAX_LINES = 60

#: ``path:function`` -> why it may be longer.
EXCEPTIONS: dict[str, str] = {
    "dspy_ext/cli/common.py:add_model_args": "CLI flag declarations",
    "dspy_ext/cli/review.py:register": "CLI flag declarations",
}


def _long_functions(root: Path) -> dict[str, int]:
    found: dict[str, int] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                    length = node.end_lineno - start + 1
                    if length > MAX_LINES:
                        found[f"{path.relative_to(root).as_posix()}:{node.name}"] = length
    return found


def test_no_function_is_over_sixty_lines() -> None:
    too_long = {name: n for name, n in _long_functions(REPO).items() if name not in EXCEPTIONS}
    assert not too_long, "functions over 60 lines (split them into named steps): " + ", ".join(
        f"{name} ({n})" for name, n in sorted(too_long.items(), key=lambda item: -item[1])
    )


def test_every_exception_is_still_needed() -> None:
    """An exception whose function became short (or was removed) is taken off the list."""
    long_now = _long_functions(REPO)
    stale = sorted(set(EXCEPTIONS) - set(long_now))
    assert not stale, f"these exceptions are no longer over {MAX_LINES} lines; remove them: {stale}"


def test_the_check_finds_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "dspy_ext").mkdir()
    (tmp_path / "dspy_ext" / "long.py").write_text(f"def too_long():\n{body}\n    return x0\n")
    assert _long_functions(tmp_path) == {"dspy_ext/long.py:too_long": MAX_LINES + 2}
