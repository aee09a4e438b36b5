"""Two-step programs: draft notes then answer, and a ChainOfThought wrapper."""

from __future__ import annotations

from typing import Any

import dspy

from programs._fields import FieldNames, build_signature, normalize_keys

__all__ = ["DRAFT_INSTRUCTIONS", "ChainOfThoughtProgram", "DraftThenAnswer"]

#: Instructions of the drafting step; the task instructions are prepended.
DRAFT_INSTRUCTIONS = (
    "Think about the task for the given input and write short notes (a few lines) "
    "that will help produce the answer. Do not write the final answer."
)

NOTES_KEY = "notes"


class DraftThenAnswer(dspy.Module):
    """Write notes first, then answer with the notes as an extra input.

    Predictors: ``self.draft`` (inputs -> ``notes``) and ``self.answer``
    (inputs, ``notes`` -> outputs). The answer step uses the task instructions;
    the draft step uses them followed by :data:`DRAFT_INSTRUCTIONS`.

    Args:
        input_keys: Input field name(s); ``notes`` is reserved.
        output_keys: Output field name(s); ``notes`` is reserved.
        instructions: Task instructions; ``None`` uses a generic default.

    Example:
        >>> program = DraftThenAnswer(instructions="Write the plural of the word.")
        >>> [name for name, _ in program.named_predictors()]
        ['draft', 'answer']
    """

    def __init__(
        self,
        input_keys: FieldNames = ("input",),
        output_keys: FieldNames = ("output",),
        instructions: str | None = None,
    ) -> None:
        super().__init__()
        self.input_keys = normalize_keys(input_keys, "input_keys")
        self.output_keys = normalize_keys(output_keys, "output_keys")
        if NOTES_KEY in self.input_keys or NOTES_KEY in self.output_keys:
            raise ValueError(f"{NOTES_KEY!r} is reserved for the draft step's output")
        task = instructions.strip() if instructions and instructions.strip() else None
        draft_instructions = f"Task: {task}\n\n{DRAFT_INSTRUCTIONS}" if task else DRAFT_INSTRUCTIONS
        self.draft = dspy.Predict(
            build_signature(
                self.input_keys,
                (NOTES_KEY,),
                draft_instructions,
                output_descs={NOTES_KEY: "short notes about how to solve the task for this input"},
            )
        )
        self.answer = dspy.Predict(
            build_signature(
                (*self.input_keys, NOTES_KEY),
                self.output_keys,
                task,
                input_descs={NOTES_KEY: "notes written beforehand; they may help"},
            )
        )

    def forward(self, **inputs: Any) -> dspy.Prediction:
        """Draft notes, then answer.

        Args:
            **inputs: Values for the input fields.

        Returns:
            The answer step's prediction, with the draft also stored as ``notes``.
        """
        draft = self.draft(**inputs)
        notes = draft.get(NOTES_KEY) or ""
        prediction = self.answer(**inputs, **{NOTES_KEY: notes})
        prediction[NOTES_KEY] = notes
        return prediction


class ChainOfThoughtProgram(dspy.Module):
    """``dspy.ChainOfThought`` over the given fields, as ``self.cot``.

    The prediction carries DSPy's ``reasoning`` field besides the outputs; the
    only predictor is ``cot.predict``.

    Args:
        input_keys: Input field name(s).
        output_keys: Output field name(s); ``reasoning`` is reserved.
        instructions: Task instructions; ``None`` uses a generic default.

    Example:
        >>> program = ChainOfThoughtProgram(instructions="Answer the question.")
        >>> [name for name, _ in program.named_predictors()]
        ['cot.predict']
    """

    def __init__(
        self,
        input_keys: FieldNames = ("input",),
        output_keys: FieldNames = ("output",),
        instructions: str | None = None,
    ) -> None:
        super().__init__()
        self.input_keys = normalize_keys(input_keys, "input_keys")
        self.output_keys = normalize_keys(output_keys, "output_keys")
        if "reasoning" in self.input_keys or "reasoning" in self.output_keys:
            raise ValueError("'reasoning' is reserved for ChainOfThought's rationale field")
        signature = build_signature(self.input_keys, self.output_keys, instructions)
        self.cot = dspy.ChainOfThought(signature)

    def forward(self, **inputs: Any) -> dspy.Prediction:
        """Reason, then answer.

        Args:
            **inputs: Values for the input fields.

        Returns:
            The prediction with ``reasoning`` and the output fields.
        """
        return self.cot(**inputs)
