"""Reading a program's prompt state: the instruction, fields and demos of every predictor.

Shared by the evaluator (score-cache keys), the search core (candidates) and
the exporter. Predictors are found with ``named_sub_modules(dspy.Predict)``, so
frozen (``_compiled``) sub-programs are included, unlike ``named_predictors()``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import dspy


def predictors(program: dspy.Module) -> list[tuple[str, dspy.Predict]]:
    """All ``Predict`` modules of ``program`` with stable names (``"self."`` dropped).

    Args:
        program: Any DSPy module (a bare ``Predict`` included).

    Returns:
        ``(name, predictor)`` pairs in DSPy's breadth-first order.
    """
    found = []
    for name, module in program.named_sub_modules(dspy.Predict):
        found.append((name.removeprefix("self.") if name != "self" else "self", module))
    return found


def demo_to_dict(demo: Any) -> dict[str, Any]:
    """A demo (``dspy.Example`` or dict) as a plain dict, without DSPy bookkeeping keys."""
    data = demo.toDict() if hasattr(demo, "toDict") else dict(demo)
    return {k: v for k, v in data.items() if k not in ("dspy_uuid", "dspy_split")}


def signature_state(signature: type[dspy.Signature]) -> dict[str, Any]:
    """Instructions plus each field's name, role, prefix and description, in order."""
    fields = []
    for name, field in signature.fields.items():
        extra = field.json_schema_extra or {}
        fields.append(
            {
                "name": name,
                "role": extra.get("__dspy_field_type", "input" if name in signature.input_fields else "output"),
                "prefix": extra.get("prefix"),
                "desc": extra.get("desc"),
            }
        )
    return {"instructions": signature.instructions, "fields": fields}


def predictor_state(predictor: dspy.Predict) -> dict[str, Any]:
    """The prompt-relevant state of one predictor (JSON-serialisable)."""
    return {
        **signature_state(predictor.signature),
        "demos": [demo_to_dict(d) for d in predictor.demos],
    }


def program_state(program: dspy.Module) -> dict[str, dict[str, Any]]:
    """``{predictor_name: predictor_state}`` for the whole program."""
    return {name: predictor_state(p) for name, p in predictors(program)}


def canonical_json(value: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces) used for hashing."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_hash(value: Any, length: int = 16) -> str:
    """A short sha256 over the canonical JSON of ``value``."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:length]


def program_fingerprint(program: dspy.Module) -> str:
    """A stable hash of everything in ``program`` that reaches the prompt."""
    return content_hash(program_state(program))
