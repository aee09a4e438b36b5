"""Ready-made DSPy programs built from field names.

Every program creates its own signature classes from the given field names,
so instances never share or mutate instructions.

Example:
    >>> from programs import build_program
    >>> program = build_program(
    ...     "classify",
    ...     input_keys=("input",),
    ...     output_keys=("output",),
    ...     instructions="Is the review positive or negative?",
    ...     labels=["positive", "negative"],
    ... )
    >>> [name for name, _ in program.named_predictors()]
    ['predict']
"""

from __future__ import annotations

from collections.abc import Sequence

import dspy

from programs._fields import DEFAULT_INSTRUCTIONS, FieldNames, normalize_keys
from programs.classify import Classify, match_label
from programs.transform import Transform
from programs.two_step import ChainOfThoughtProgram, DraftThenAnswer

__all__ = [
    "DEFAULT_INSTRUCTIONS",
    "PROGRAMS",
    "ChainOfThoughtProgram",
    "Classify",
    "DraftThenAnswer",
    "Transform",
    "build_program",
    "match_label",
]

#: Program classes by name.
PROGRAMS: dict[str, type[dspy.Module]] = {
    "transform": Transform,
    "classify": Classify,
    "two_step": DraftThenAnswer,
    "cot": ChainOfThoughtProgram,
}


def build_program(
    name: str,
    *,
    input_keys: FieldNames = ("input",),
    output_keys: FieldNames = ("output",),
    instructions: str | None = None,
    labels: Sequence[str] | None = None,
) -> dspy.Module:
    """Build a registered program by name.

    Args:
        name: A key of :data:`PROGRAMS` (``transform``, ``classify``,
            ``two_step``, ``cot``).
        input_keys: Input field name(s).
        output_keys: Output field name(s); ``classify`` takes exactly one.
        instructions: Task instructions; ``None`` uses a generic default.
        labels: The label set, required by ``classify`` and rejected by the
            others (so a label set is never silently ignored).

    Returns:
        A new ``dspy.Module``.

    Raises:
        ValueError: For an unknown name (the message lists the valid ones),
            ``classify`` without labels or with several outputs, or labels
            given to another program.

    Example:
        >>> build_program("transform", input_keys="word", output_keys="plural",
        ...               instructions="Write the plural.").predict.signature.output_fields.keys()
        dict_keys(['plural'])
    """
    key = name.strip().lower()
    if key not in PROGRAMS:
        raise ValueError(f"unknown program {name!r}; valid programs: {', '.join(PROGRAMS)}")
    if key == "classify":
        if not labels:
            raise ValueError("program 'classify' needs labels=[...] (the allowed outputs)")
        outputs = normalize_keys(output_keys, "output_keys")
        if len(outputs) != 1:
            raise ValueError(f"program 'classify' takes exactly one output key, got {list(outputs)}")
        return Classify(labels, input_keys=input_keys, output_key=outputs[0], instructions=instructions)
    if labels is not None:
        raise ValueError(f"labels are only used by the 'classify' program, not {key!r}")
    return PROGRAMS[key](input_keys=input_keys, output_keys=output_keys, instructions=instructions)
