"""Reading a program's prompt state: the instruction, fields and demos of every predictor.

Shared by the evaluator (score-cache keys), the search core (candidates) and
the exporter. Predictors are found with ``named_sub_modules(dspy.Predict)``, so
frozen (``_compiled``) sub-programs are included, unlike ``named_predictors()``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields, replace
from typing import Any

import dspy

from dspy_ext import runtime


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
    """The prompt-relevant state of one predictor (JSON-serialisable), with its answer rule if it has one."""
    state = {
        **signature_state(predictor.signature),
        "demos": [demo_to_dict(d) for d in predictor.demos],
    }
    rule = answer_rule_state(predictor)
    if rule is not None:
        state["answer_rule"] = rule
    return state


def answer_rule_state(predictor: dspy.Predict) -> dict[str, Any] | None:
    """The answer rule a predictor carries on its own LM, as a dict (``None``: it answers freely).

    The rule is the ``answer_rule`` of the predictor's LM's engine
    (:class:`dspy_ext.lm.answer_rule.AnswerRuleEngine`).
    """
    engine = getattr(getattr(predictor, "lm", None), "engine", None)
    rule = getattr(engine, "answer_rule", None)
    return rule.to_dict() if rule is not None else None


def program_state(program: dspy.Module) -> dict[str, dict[str, Any]]:
    """``{predictor_name: predictor_state}`` for the whole program."""
    return {name: predictor_state(p) for name, p in predictors(program)}


def fingerprint_json(value: Any) -> str:
    """The canonical JSON of ``value`` for fingerprints and ids: :func:`dspy_ext.runtime.canonical_json`,
    lenient (objects JSON cannot hold are written as their ``str()``, NaN as ``NaN``)."""
    return runtime.canonical_json(value, lenient=True)


def short_hash(value: Any, length: int = 16) -> str:
    """The first ``length`` hex digits of the sha256 of ``value``'s canonical JSON: a key for caches and ids,
    not an artifact's ``content_hash`` (the whole sha256, see :func:`dspy_ext.runtime.compute_hash`)."""
    return hashlib.sha256(fingerprint_json(value).encode()).hexdigest()[:length]


def program_fingerprint(program: dspy.Module) -> str:
    """A stable hash of everything in ``program`` that reaches the prompt."""
    return short_hash(program_state(program))


@dataclass
class CompileRecord:
    """What dspy-ext learned while compiling a program, carried by the compiled program itself.

    A dspy-ext search sets :attr:`search` (its ``SearchResult`` or ``DemoSearchResult``); the
    acceptance gate around one of DSPy's optimizers sets :attr:`gate`; a tuning study sets
    :attr:`tune` on its best trial's program. Read it with :func:`compile_record`.
    """

    #: The search's own result (an object with ``to_dict()`` and ``guard_report``), if a dspy-ext search made it.
    search: Any = None
    #: The acceptance gate's report (guards around one of DSPy's optimizers).
    gate: Any = None
    #: The tuning study's summary, when the program is a study's best trial.
    tune: Any = None

    @property
    def guard_report(self) -> Any:
        """The guard report of whichever part checked guards: the search's, else the gate's (``None``: none)."""
        found = getattr(self.search, "guard_report", None) if self.search is not None else None
        return found or self.gate


_RECORD_ATTR = "_dspy_ext_record"


def compile_record(program: Any) -> CompileRecord | None:
    """The :class:`CompileRecord` a dspy-ext compile attached to ``program`` (``None``: none)."""
    found = getattr(program, _RECORD_ATTR, None)
    return found if isinstance(found, CompileRecord) else None


def attach_record(program: Any, **parts: Any) -> CompileRecord:
    """Set parts (``search=``, ``gate=``, ``tune=``) of ``program``'s record, creating it when missing."""
    unknown = set(parts) - {f.name for f in fields(CompileRecord)}
    if unknown:
        raise TypeError(f"CompileRecord has no part(s) {sorted(unknown)}")
    record = compile_record(program)
    record = replace(record, **parts) if record is not None else CompileRecord(**parts)
    setattr(program, _RECORD_ATTR, record)
    return record


def copy_record(source: Any, target: Any) -> None:
    """Give ``target`` the record of ``source`` (nothing when ``source`` has none)."""
    record = compile_record(source)
    if record is not None:
        setattr(target, _RECORD_ATTR, record)
