"""Shared helpers: validate field names and build fresh signature classes."""

from __future__ import annotations

import keyword
from collections.abc import Mapping, Sequence

import dspy

__all__ = ["DEFAULT_INSTRUCTIONS", "FieldNames", "build_signature", "normalize_keys"]

#: Instructions used when a program is built without any.
DEFAULT_INSTRUCTIONS = "Given the input, produce the output."

FieldNames = str | Sequence[str]


def normalize_keys(keys: FieldNames, what: str) -> tuple[str, ...]:
    """Turn a field name or a sequence of names into a validated tuple.

    A lone string is one name (``tuple("input")`` would split it into letters).

    Args:
        keys: ``"input"`` or ``("input", "context")``.
        what: What the names are, for error messages (``"input_keys"``).

    Returns:
        The names as a tuple.

    Raises:
        ValueError: If empty, duplicated or not valid Python identifiers
            (DSPy turns field names into class attributes).
    """
    names = (keys,) if isinstance(keys, str) else tuple(keys)
    if not names:
        raise ValueError(f"{what} must name at least one field")
    for name in names:
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise ValueError(f"{what}: {name!r} is not a valid field name (use a Python identifier)")
        if name.startswith("_"):
            raise ValueError(f"{what}: field names may not start with '_' ({name!r})")
    if len(set(names)) != len(names):
        raise ValueError(f"{what} has duplicate names: {list(names)}")
    return names


def build_signature(
    input_keys: Sequence[str],
    output_keys: Sequence[str],
    instructions: str | None,
    *,
    output_descs: Mapping[str, str] | None = None,
    input_descs: Mapping[str, str] | None = None,
) -> type[dspy.Signature]:
    """Create a new signature class with the given fields and instructions.

    Each call returns a fresh class, so programs never share (or mutate) one.

    Args:
        input_keys: Input field names, in prompt order.
        output_keys: Output field names, in prompt order.
        instructions: The signature's instructions; ``None`` or blank means
            :data:`DEFAULT_INSTRUCTIONS`.
        output_descs: Optional descriptions for output fields.
        input_descs: Optional descriptions for input fields.

    Returns:
        A ``dspy.Signature`` subclass.

    Raises:
        ValueError: If a name is both an input and an output.
    """
    overlap = set(input_keys) & set(output_keys)
    if overlap:
        raise ValueError(f"fields cannot be both inputs and outputs: {sorted(overlap)}")
    output_descs = output_descs or {}
    input_descs = input_descs or {}
    fields: dict[str, tuple[type, object]] = {}
    for key in input_keys:
        desc = input_descs.get(key)
        fields[key] = (str, dspy.InputField(desc=desc) if desc else dspy.InputField())
    for key in output_keys:
        desc = output_descs.get(key)
        fields[key] = (str, dspy.OutputField(desc=desc) if desc else dspy.OutputField())
    text = instructions.strip() if instructions and instructions.strip() else DEFAULT_INSTRUCTIONS
    base = dspy.make_signature(fields)
    return base.with_instructions(text)
