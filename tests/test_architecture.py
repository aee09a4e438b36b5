"""The layer rule is checked, not only written: import-linter contracts, leaf modules, import order."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "dspy_ext"


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) or shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is not installed (it is in the dev extra: pip install -e '.[dev]')")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [exe, "--config", str(root / "pyproject.toml")], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


def test_import_linter_contracts_hold() -> None:
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_layers_contract(tmp_path: Path) -> None:
    """A copy of the tree where the search core imports the CLI: lint-imports must fail on it."""
    for name in ("dspy_ext", "programs", "metrics"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "tasks"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    run_py = tmp_path / "dspy_ext" / "search" / "run.py"
    run_py.write_text(run_py.read_text() + "\nimport dspy_ext.cli  # upward: search may not import the CLI\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "dspy_ext layers (docs/architecture.md) BROKEN" in result.stdout
    assert "dspy_ext.search.run -> dspy_ext.cli" in result.stdout


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_module_outside_the_cli_imports_the_cli() -> None:
    offenders = [
        str(p.relative_to(REPO))
        for p in PACKAGE.rglob("*.py")
        if "cli" not in p.relative_to(PACKAGE).parts[:1]
        and p.name != "__main__.py"
        and any(n == "dspy_ext.cli" or n.startswith("dspy_ext.cli.") for n in _imported_modules(p))
    ]
    assert offenders == []


def test_the_runtime_imports_only_the_standard_library() -> None:
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for leaf in ("runtime.py", "files.py"):
        imported = {name.split(".")[0] for name in _imported_modules(PACKAGE / leaf)}
        assert imported <= stdlib, (leaf, imported - stdlib)
    # And it runs with nothing else importable: no dspy_ext package, no DSPy.
    code = (
        "import importlib.util, sys; spec = importlib.util.spec_from_file_location('runtime', sys.argv[1]); "
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
        "assert 'dspy' not in sys.modules and 'dspy_ext' not in sys.modules; print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", code, str(PACKAGE / "runtime.py")], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "ok", result.stderr


def _modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


#: Forks one child per module from an interpreter that has imported only DSPy (third-party, and slow to
#: import): each child imports one dspy_ext module first and alone, so no dspy_ext import order can hide a cycle.
_FORK_IMPORTER = """
import os, sys, traceback
import dspy  # noqa: F401
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            __import__(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        failed.append(name)
print("FAILED:" + ",".join(failed))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    """Import order cannot matter: each module is imported first, by itself, in its own process."""
    modules = _modules()
    assert len(modules) > 40
    result = subprocess.run(
        [sys.executable, "-c", _FORK_IMPORTER, *modules], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "FAILED:", result.stderr[-4000:]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_the_tree_keeps_ruffs_style(command: list[str]) -> None:
    """Ruff's lint rules and formatter (configured in pyproject.toml) hold for the whole tree."""
    exe = shutil.which("ruff", path=os.path.dirname(sys.executable)) or shutil.which("ruff")
    if exe is None:
        pytest.fail("ruff is not installed (it is in the dev extra: pip install -e '.[dev]')")
    result = subprocess.run([exe, *command, "."], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
