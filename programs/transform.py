"""A single-step program: inputs -> outputs with one ``dspy.Predict``."""

from __future__ import annotations

from typing import Any

import dspy

from programs._fields import FieldNames, build_signature, normalize_keys

__all__ = ["Transform"]


class Transform(dspy.Module):
    """Map input fields to output fields with one predictor, ``self.predict``.

    Args:
        input_keys: Input field name(s).
        output_keys: Output field name(s).
        instructions: Task instructions; ``None`` uses a generic default.

    Example:
        >>> program = Transform(("word",), ("plural",), "Write the plural of the word.")
        >>> [name for name, _ in program.named_predictors()]
        ['predict']
        >>> # with an LM configured: program(word="cat").plural
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
        signature = build_signature(self.input_keys, self.output_keys, instructions)
        self.predict = dspy.Predict(signature)

    def forward(self, **inputs: Any) -> dspy.Prediction:
        """Run the predictor on the input fields.

        Args:
            **inputs: Values for the input fields (e.g. ``input="..."``).

        Returns:
            The predictor's ``dspy.Prediction`` with the output fields.
        """
        return self.predict(**inputs)
