"""A candidate: the prompt state (instruction, demos, answer rule) of every predictor of a program."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import dspy

from dspy_ext.lm.answer_rule import AnswerRule, answer_rule_lm, answer_rule_of
from dspy_ext.prompt_state import demo_to_dict, predictors, short_hash


@dataclass(frozen=True)
class PredictorPrompt:
    """One predictor's prompt: its instruction, the demo set it uses and its answer rule (``None``: free)."""

    instruction: str
    demo_set: int = 0
    demos: tuple[dict[str, Any], ...] = ()
    answer: AnswerRule | None = None

    def content(self) -> dict[str, Any]:
        content: dict[str, Any] = {"instruction": self.instruction, "demos": list(self.demos)}
        if self.answer is not None:
            content["answer_rule"] = self.answer.to_dict()
        return content


@dataclass(frozen=True)
class Candidate:
    """The prompt state of every predictor, with provenance.

    Two candidates with the same instructions and demos have the same
    :attr:`key`, whatever their provenance, so a duplicate proposal is never
    evaluated twice.

    Attributes:
        prompts: ``{predictor_name: PredictorPrompt}``.
        parents: Keys of the candidates this one was derived from.
        origin: The method step that made it (e.g. ``"ape.induce"``).
    """

    prompts: dict[str, PredictorPrompt]
    parents: tuple[str, ...] = ()
    origin: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def key(self) -> str:
        return short_hash({name: p.content() for name, p in sorted(self.prompts.items())})

    def instruction(self, name: str) -> str:
        return self.prompts[name].instruction

    @property
    def instructions(self) -> dict[str, str]:
        return {name: p.instruction for name, p in self.prompts.items()}

    @property
    def demo_sets(self) -> dict[str, int]:
        return {name: p.demo_set for name, p in self.prompts.items()}

    def demo_rows(self) -> list[dict[str, Any]]:
        """Every demo any predictor shows, as plain dicts (the rows a held-out score must leave out)."""
        return [demo for p in self.prompts.values() for demo in p.demos]

    def with_instruction(
        self, name: str, instruction: str, *, origin: str, parents: tuple[str, ...] | None = None, **meta: Any
    ) -> Candidate:
        """A child that differs from this candidate in one predictor's instruction."""
        prompts = dict(self.prompts)
        prompts[name] = replace(prompts[name], instruction=instruction)
        return Candidate(prompts, parents if parents is not None else (self.key,), origin, meta)

    def with_answers(self, answers: dict[str, AnswerRule], *, origin: str, **meta: Any) -> Candidate:
        """A child that differs from this candidate in the answer rules of the predictors in ``answers``."""
        prompts = {name: replace(p, answer=answers[name]) if name in answers else p for name, p in self.prompts.items()}
        return Candidate(prompts, (self.key,), origin, {**self.meta, **meta})

    @property
    def answers(self) -> dict[str, str]:
        """``{predictor_name: answer mode}`` (``"free"`` for a predictor without a rule)."""
        return {name: p.answer.mode.value if p.answer else "free" for name, p in self.prompts.items()}

    def apply(self, student: dspy.Module) -> dspy.Module:
        """A new program: a deep copy of ``student`` carrying this candidate's prompts.

        Instructions are set with ``signature.with_instructions`` (a new
        signature class), so the student and its signature classes are untouched. A predictor with
        an answer rule gets it as its own LM (:func:`~dspy_ext.lm.answer_rule.answer_rule_lm`), which
        scores the labels with the LM configured around each call.
        """
        program = student.deepcopy()
        for name, predictor in predictors(program):
            prompt = self.prompts.get(name)
            if prompt is None:
                continue
            predictor.signature = predictor.signature.with_instructions(prompt.instruction)
            predictor.demos = [dspy.Example(**d) for d in prompt.demos]
            if prompt.answer is not None:
                predictor.lm = answer_rule_lm(prompt.answer)
        return program

    @classmethod
    def from_program(cls, program: dspy.Module, *, origin: str = "student") -> Candidate:
        """The candidate describing ``program`` as it is (instructions and demos)."""
        prompts = {
            name: PredictorPrompt(
                p.signature.instructions, 0, tuple(demo_to_dict(d) for d in p.demos), answer_rule_of(p)
            )
            for name, p in predictors(program)
        }
        return cls(prompts, (), origin)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "instructions": self.instructions,
            "demo_sets": self.demo_sets,
            "n_demos": {name: len(p.demos) for name, p in self.prompts.items()},
            **({"answers": self.answers} if any(p.answer for p in self.prompts.values()) else {}),
            "parents": list(self.parents),
            "origin": self.origin,
        }
