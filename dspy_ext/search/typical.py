"""What a typical meta-prompt of a compile shows the prompt model, so that ``--dry-run`` can measure it.

Each optimizer fills its meta-prompts from the student's instruction and the training rows
(:meth:`~dspy_ext.search.SearchTeleprompter.typical_inputs`); :class:`TypicalAsk` hands it that
material, drawn the same way every time (seeded), without a model call.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import dspy

from dspy_ext.prompt_state import predictors

__all__ = ["TypicalAsk", "format_pairs", "shared_inputs", "signature_step"]


def signature_step(signature: Any) -> str:
    """``"input -> output"``: the fields a predictor's instruction maps (the meta-prompts' ``step``)."""
    return f"{', '.join(signature.input_fields)} -> {', '.join(signature.output_fields)}"


def format_pairs(examples: list[dspy.Example], limit: int = 400) -> str:
    """Input/output pairs as compact text for meta-prompts."""
    lines = []
    for ex in examples:
        inputs = "; ".join(f"{v}" for v in ex.inputs().values())
        outputs = "; ".join(f"{v}" for k, v in ex.labels().items() if k != "accepted")
        lines.append(f"Input: {inputs[:limit]} -> Output: {outputs[:limit]}")
    return "\n".join(lines)


@dataclass(frozen=True)
class TypicalAsk:
    """The material of a compile's meta-prompts: the student's first predictor and the training rows.

    Attributes:
        student: The program being compiled.
        train: Its training rows.
        seed: Seeds the rows drawn.
    """

    student: dspy.Module
    train: list[dspy.Example]
    seed: int = 0

    @property
    def _signature(self) -> Any:
        return predictors(self.student)[0][1].signature

    @property
    def instruction(self) -> str:
        """The student's instruction (what the first proposals rewrite)."""
        return self._signature.instructions

    @property
    def step(self) -> str:
        """``"input -> output"`` of the first predictor (the ``step`` field of the meta-prompts)."""
        return signature_step(self._signature)

    def rows(self, k: int) -> list[dspy.Example]:
        """``k`` training rows (all of them when there are fewer), drawn with the seed."""
        return random.Random(self.seed).sample(self.train, min(k, len(self.train)))

    def pairs(self, k: int) -> str:
        """``k`` training pairs as a meta-prompt shows them."""
        return format_pairs(self.rows(k))

    def wrong_answers(self, k: int) -> list[tuple[dspy.Example, dict[str, Any]]]:
        """``k`` rows, each with another row's gold outputs as the model's (wrong) answer."""
        rows = self.rows(k + 1)
        return [(row, _labels(rows[(i + 1) % len(rows)])) for i, row in enumerate(rows[:k])]


def _labels(row: dspy.Example) -> dict[str, Any]:
    return {k: v for k, v in row.labels().items() if k != "accepted"}


def shared_inputs(role: str, ask: TypicalAsk) -> dict[str, str]:
    """The inputs of a typical ``induce`` (five training pairs) or ``paraphrase`` (the student's instruction)
    meta-prompt, the two that several optimizers send alike.

    Raises:
        ValueError: Another role.
    """
    if role == "induce":
        return {"step": ask.step, "examples": ask.pairs(5)}
    if role == "paraphrase":
        return {"instruction": ask.instruction}
    raise ValueError(f"no typical inputs are known for the {role!r} meta-prompt")
