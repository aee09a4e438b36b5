"""Apply an artifact back onto a program: instructions, field prefixes/descriptions, demos and answer rules.

Everything is checked before anything changes: predictor names, field names,
roles, order and types must match, and the program with the new state must
render exactly the artifact's stored messages. Only then are the new
signatures and demos assigned, so a failed apply leaves the program as it was.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import dspy

from dspy_ext.export.exporter import adapter_from_options, annotation_type
from dspy_ext.lm.answer_rule import AnswerMode, AnswerRule, answer_rule_lm
from dspy_ext.prompt_state import predictors
from dspy_ext.runtime import PromptArtifact, format_type, load, placeholder

logger = logging.getLogger(__name__)

__all__ = ["ApplyError", "answer_rule", "apply", "check_program"]


class ApplyError(ValueError):
    """The artifact does not fit the program (names, fields or rendered prompt differ)."""


def _field_types(predictor_name: str, signature: type[dspy.Signature], names: list[str]) -> list[str]:
    out = []
    for name in names:
        try:
            out.append(format_type(annotation_type(signature.fields[name].annotation)))
        except TypeError as exc:
            raise ApplyError(f"predictor {predictor_name!r}: field {name!r}: {exc}") from None
    return out


def _new_state(name: str, predictor: dspy.Predict, entry: dict[str, Any]) -> tuple[type[dspy.Signature], list]:
    """The signature and demos ``predictor`` gets from ``entry``, after checking the fields."""
    signature = predictor.signature
    for role, stored, actual in (
        ("input", entry["input_fields"], list(signature.input_fields)),
        ("output", entry["output_fields"], list(signature.output_fields)),
    ):
        stored_names = [f["name"] for f in stored]
        if stored_names != actual:
            raise ApplyError(
                f"predictor {name!r}: the artifact's {role} fields are {stored_names}, the program's are {actual}"
            )
        types = _field_types(name, signature, actual)
        for field, actual_type in zip(stored, types):
            if field["type"] != actual_type:
                raise ApplyError(
                    f"predictor {name!r}: {role} field {field['name']!r} is {field['type']} in the artifact but "
                    f"{actual_type} in the program"
                )
    new_signature = signature.with_instructions(entry["instructions"])
    for field in entry["input_fields"] + entry["output_fields"]:
        new_signature = new_signature.with_updated_fields(field["name"], prefix=field["prefix"], desc=field["desc"])
    demos = [dspy.Example(**demo) for demo in entry["demos"]]
    return new_signature, demos


def _rendered(entry: dict[str, Any], signature: type[dspy.Signature], demos: list, key: str) -> list[dict[str, Any]]:
    """What DSPy renders for the new state: the main template (``messages``) or the JSON ``fallback``."""
    if key == "messages":
        adapter = adapter_from_options(entry["adapter"], entry["adapter_options"])
    else:
        adapter = dspy.JSONAdapter()
    slots = {field: placeholder(field) for field in signature.input_fields}
    return adapter.format(signature, demos, slots)


def check_program(artifact: PromptArtifact, program: dspy.Module) -> dict[str, tuple[type[dspy.Signature], list]]:
    """Check that ``artifact`` fits ``program`` and compute the new state, changing nothing.

    Args:
        artifact: A loaded artifact.
        program: The program to check against.

    Returns:
        ``{predictor_name: (new_signature, new_demos)}``.

    Raises:
        ApplyError: Predictor names differ, a field's name, order or type
            differs, or the program with the new state would not render the
            artifact's messages exactly.

    Example:
        >>> check_program(load("sentiment.prompt.json"), Transform())  # doctest: +SKIP
    """
    found = dict(predictors(program))
    if list(found) != list(artifact.names):
        missing = [n for n in artifact.names if n not in found]
        extra = [n for n in found if n not in artifact.names]
        detail = []
        if missing:
            detail.append(f"the program lacks {missing}")
        if extra:
            detail.append(f"the artifact lacks {extra}")
        if not detail:
            detail.append(f"the order differs: artifact {list(artifact.names)}, program {list(found)}")
        raise ApplyError(f"the artifact's predictors do not match the program's: {'; '.join(detail)}")
    planned = {}
    for name, predictor in found.items():
        entry = artifact.data["predictors"][name]
        signature, demos = _new_state(name, predictor, entry)
        for key in ("messages", "fallback"):
            stored = entry["messages"] if key == "messages" else (entry["fallback"] or {}).get("messages")
            if stored is None:
                continue
            rendered = _rendered(entry, signature, demos, key)
            if rendered != stored:
                index = next(
                    (i for i, (a, b) in enumerate(zip(rendered, stored)) if a != b), min(len(rendered), len(stored))
                )
                raise ApplyError(
                    f"predictor {name!r}: with the artifact's instructions and demos the program renders a "
                    f"different prompt than the artifact stores (first difference in {key} message {index}); "
                    "the program's fields or types do not match the exported program"
                )
        planned[name] = (signature, demos)
    return planned


def apply(artifact_or_path: PromptArtifact | str | os.PathLike[str], program: dspy.Module) -> dspy.Module:
    """Set the artifact's instructions, field prefixes/descriptions, demos and answer rules on ``program``.

    All-or-nothing: every predictor is checked (see :func:`check_program`)
    before any is changed. Instructions are set with
    ``signature.with_instructions`` on a new signature class, never through
    ``signature.instructions =`` (which would change a class shared with
    other copies). A predictor whose entry carries a ``label_rule`` with its reply texts (a compile's
    constrained or calibrated answer rule) gets that rule back as its own LM
    (:func:`~dspy_ext.lm.answer_rule.answer_rule_lm`), as the compiled program had it.

    Args:
        artifact_or_path: A loaded artifact, or the path of one (validated on load).
        program: A fresh instance of the exported program's class.

    Returns:
        ``program`` itself, now with the artifact's prompt state.

    Raises:
        ApplyError: The artifact does not fit the program; the program is unchanged.
        dspy_ext.runtime.ArtifactError: The file is invalid.

    Example:
        >>> program = apply("sentiment.prompt.json", Transform(instructions="x"))  # doctest: +SKIP
        >>> program.predict.demos[0]                                            # doctest: +SKIP
    """
    artifact = artifact_or_path if isinstance(artifact_or_path, PromptArtifact) else load(artifact_or_path)
    planned = check_program(artifact, program)
    rules = {name: answer_rule(artifact, name) for name in planned}
    found = dict(predictors(program))
    for name, (signature, demos) in planned.items():
        found[name].signature = signature
        found[name].demos = demos
        if rules[name] is not None:
            found[name].lm = answer_rule_lm(rules[name])
    logger.info("applied %d predictor(s) from artifact %s", len(planned), artifact.content_hash[:12])
    return program


def answer_rule(artifact: PromptArtifact, name: str) -> AnswerRule | None:
    """Predictor ``name``'s answer rule as the compile made it, or ``None`` (free generation, or a label rule
    without reply texts, which only the runtime applies).

    Raises:
        ApplyError: The ``label_rule`` is not a valid answer rule (the message says why).
    """
    rule = artifact.label_rule(name)
    if not rule or "replies" not in rule:
        return None
    mode = AnswerMode.CALIBRATED if rule.get("prior") is not None else AnswerMode.CONSTRAINED
    try:
        return AnswerRule.from_dict({**rule, "mode": mode.value})
    except ValueError as exc:
        raise ApplyError(f"predictor {name!r}: the artifact's label_rule is not an answer rule: {exc}") from None
