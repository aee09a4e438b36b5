"""The runtime's public surface, one meaning per name, and the string enums of the lower layers."""

from __future__ import annotations

import ast
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from dspy_ext import prompt_state, runtime

PACKAGE = Path(__file__).resolve().parent.parent / "dspy_ext"


def _runtime_imports() -> list[tuple[str, str]]:
    """``(file, name)`` of every name a dspy_ext module imports from ``dspy_ext.runtime`` or reads off it."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "runtime.py" and path.parent == PACKAGE:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "dspy_ext.runtime":
                found += [(str(path), alias.name) for alias in node.names]
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "runtime":
                found.append((str(path), node.attr))
    return found


def test_the_library_uses_only_the_runtimes_public_names() -> None:
    used = _runtime_imports()
    assert used, "the library imports the runtime somewhere"
    private = [(f, n) for f, n in used if n.startswith("_")]
    assert not private
    outside = sorted({n for _, n in used if n not in runtime.__all__})
    # `runtime.*` attribute reads of other objects named `runtime` (e.g. a report's) are not the module's.
    assert all(not hasattr(runtime, n) for n in outside), outside


def test_every_public_name_exists_and_the_runtime_is_standard_library_only() -> None:
    assert all(hasattr(runtime, name) for name in runtime.__all__)
    tree = ast.parse((PACKAGE / "runtime.py").read_text(encoding="utf-8"))
    modules = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    modules |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert modules <= set(sys.stdlib_module_names) | {"__future__"}, modules


def _old_fingerprint_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


@pytest.mark.parametrize(
    "value",
    [{"b": 1, "a": [1, "é", None, True]}, {"x": math.nan, "y": math.inf}, {"obj": Path("a/b")}, [1.5, "⟦"]],
)
def test_fingerprint_json_is_the_lenient_canonical_json_and_hashes_as_before(value: object) -> None:
    assert prompt_state.fingerprint_json(value) == _old_fingerprint_json(value)
    assert prompt_state.short_hash(value) == prompt_state.short_hash(json.loads(json.dumps(value, default=str)))


def test_the_artifacts_canonical_json_stays_strict() -> None:
    assert runtime.canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'
    with pytest.raises(ValueError):
        runtime.canonical_json({"x": math.nan})
    with pytest.raises(TypeError):
        runtime.canonical_json({"x": Path("a")})


def test_the_string_enums_read_write_and_compare_as_their_text() -> None:
    from dspy_ext.data import DemoOrder, Split
    from dspy_ext.evaluation import PairedMethod
    from dspy_ext.evaluation.constrained import ChoiceMethod
    from dspy_ext.evaluation.likelihood import OBJECTIVES, LikelihoodObjective, ScoringMode
    from dspy_ext.lm.faults import ERROR_KINDS, Fault, InjectedError

    for member in (
        Split.VAL,
        DemoOrder.SHUFFLE,
        PairedMethod.MCNEMAR,
        ChoiceMethod.AUTO,
        ScoringMode.METRIC,
        Fault.HANG,
    ):
        assert member == member.value and type(member.value) is str
        assert json.dumps({member: member}) == json.dumps({member.value: member.value})
        assert {member.value: 1}[member] == 1
    assert OBJECTIVES == ("gold_logprob", "label_prob", "margin", "label_accuracy")
    assert LikelihoodObjective("label_prob") is LikelihoodObjective.LABEL_PROB
    assert ERROR_KINDS == ("rate_limit", "server", "timeout", "connection", "fatal") == tuple(InjectedError)


def test_a_journal_opened_before_dspys_cache_exists_builds_the_default_cache_lazily(tmp_path) -> None:
    script = f"""
import dspy
from dspy_ext.lm.journal import ScopedCache, journaled
assert "cache" not in dspy.__dict__
with journaled({str(tmp_path / "calls.jsonl")!r}):
    pass
assert isinstance(dspy.__dict__["cache"], ScopedCache) and dspy.__dict__["cache"]._shared is None
assert dspy.cache.get.__self__ is dspy.cache.shared  # outside the block: DSPy's own cache, built now
print("ok")
"""
    env = {"DSPY_CACHEDIR": str(tmp_path / "dspy_cache"), "PATH": "/usr/bin:/bin"}
    import os

    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
