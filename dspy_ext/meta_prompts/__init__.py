"""Meta-prompts: the DSPy Signatures an optimizer runs on its ``prompt_model``.

Every prompt an optimizer sends to write or change an instruction is a
Signature here, so it is visible, can be swapped per optimizer
(``meta_prompts={"induce": MySignature}``) and can itself be optimized.
The texts are dspy-ext's own, written after the structure each paper describes.

The ``*_feedback`` roles (:data:`FEEDBACK_ROLES`) add a field of outputs a human reviewer rejected, with the
reasons; a method uses them instead of its base role only when it is given critiques (``feedback=``), so a
compile without feedback sends exactly the prompts it always did.
"""

from __future__ import annotations

import dspy


class InduceInstruction(dspy.Signature):
    """Someone followed one hidden instruction to turn each input below into its output. Work out what that instruction was and write it as one short imperative sentence that a new reader could follow."""

    step: str = dspy.InputField(desc="the fields the instruction maps from and to")
    examples: str = dspy.InputField(desc="input/output pairs made by following the hidden instruction")
    instruction: str = dspy.OutputField(desc="the hidden instruction, one sentence")


class ParaphraseInstruction(dspy.Signature):
    """Say the same instruction again in other words. The new wording must ask for exactly the same result and stay about as short."""

    instruction: str = dspy.InputField(desc="the instruction to reword")
    variant: str = dspy.OutputField(desc="the reworded instruction")


class ProposeFromTrajectory(dspy.Signature):
    """You are improving the instruction of a task step. Below are instructions already tried, each with its accuracy from 0 to 100, listed from lowest to highest, and a few solved examples of the task. Write one new instruction, different from every listed one, that you expect to score higher than all of them."""

    step: str = dspy.InputField(desc="the fields the instruction maps from and to")
    scored_instructions: str = dspy.InputField(desc="earlier instructions with their accuracy, lowest first")
    task_examples: str = dspy.InputField(desc="solved examples of the task")
    new_instruction: str = dspy.OutputField(desc="one new instruction")


class CrossoverThenMutate(dspy.Signature):
    """Breed two parent instructions. First merge them into one child that keeps what is strongest in each parent. Then change a few words of the child so it tries something slightly new. Give only the final child instruction."""

    parent_1: str = dspy.InputField(desc="first parent instruction")
    parent_2: str = dspy.InputField(desc="second parent instruction")
    child: str = dspy.OutputField(desc="the mutated child instruction")


class DifferentialMutation(dspy.Signature):
    """Evolve an instruction. The listed parts are where two donor instructions disagree. Reword those parts into fresh alternatives, fold the reworded parts into the best instruction, and finally mix in elements of the current instruction. Give only the resulting instruction."""

    differing_parts: str = dspy.InputField(desc="the phrases on which the two donors differ")
    best_instruction: str = dspy.InputField(desc="the best instruction found so far")
    current_instruction: str = dspy.InputField(desc="the instruction being evolved")
    trial_instruction: str = dspy.OutputField(desc="the resulting instruction")


class DiagnoseFailures(dspy.Signature):
    """A model followed the instruction below and answered the listed examples wrongly. Explain what in the instruction caused these mistakes. Give each reason on its own line, shortly."""

    instruction: str = dspy.InputField(desc="the instruction the model followed")
    failures: str = dspy.InputField(desc="examples with the input, the expected output and the model's wrong output")
    reasons: str = dspy.OutputField(desc="reasons, one per line")


class EditAgainstFeedback(dspy.Signature):
    """Rewrite the instruction so that the stated problem no longer causes the listed mistakes. Keep the rewrite a short, clear instruction."""

    instruction: str = dspy.InputField(desc="the current instruction")
    failures: str = dspy.InputField(desc="examples the model got wrong")
    problem: str = dspy.InputField(desc="what is wrong with the instruction")
    improved_instruction: str = dspy.OutputField(desc="the improved instruction")


# ---- with a person's critiques (``feedback=``): used only when an optimizer is given feedback -------------


class ProposeFromTrajectoryWithFeedback(dspy.Signature):
    """You are improving the instruction of a task step. Below are instructions already tried, each with its accuracy from 0 to 100, listed from lowest to highest, a few solved examples of the task, and outputs that a human reviewer rejected, each with the reviewer's reason. Write one new instruction, different from every listed one, that fixes the rejected outputs and that you expect to score higher than all of them."""

    step: str = dspy.InputField(desc="the fields the instruction maps from and to")
    scored_instructions: str = dspy.InputField(desc="earlier instructions with their accuracy, lowest first")
    task_examples: str = dspy.InputField(desc="solved examples of the task")
    reviewer_feedback: str = dspy.InputField(desc="outputs a reviewer rejected, with the reason; fix these failures")
    new_instruction: str = dspy.OutputField(desc="one new instruction")


class CrossoverThenMutateWithFeedback(dspy.Signature):
    """Breed two parent instructions. First merge them into one child that keeps what is strongest in each parent. Then change a few words of the child so that it fixes the failures a human reviewer rejected below. Give only the final child instruction."""

    parent_1: str = dspy.InputField(desc="first parent instruction")
    parent_2: str = dspy.InputField(desc="second parent instruction")
    reviewer_feedback: str = dspy.InputField(desc="outputs a reviewer rejected, with the reason; fix these failures")
    child: str = dspy.OutputField(desc="the mutated child instruction")


class DifferentialMutationWithFeedback(dspy.Signature):
    """Evolve an instruction. The listed parts are where two donor instructions disagree. Reword those parts into fresh alternatives that fix the failures a human reviewer rejected, fold the reworded parts into the best instruction, and finally mix in elements of the current instruction. Give only the resulting instruction."""

    differing_parts: str = dspy.InputField(desc="the phrases on which the two donors differ")
    best_instruction: str = dspy.InputField(desc="the best instruction found so far")
    current_instruction: str = dspy.InputField(desc="the instruction being evolved")
    reviewer_feedback: str = dspy.InputField(desc="outputs a reviewer rejected, with the reason; fix these failures")
    trial_instruction: str = dspy.OutputField(desc="the resulting instruction")


class EditAgainstReviewerFeedback(dspy.Signature):
    """A human reviewer rejected the outputs below, which a model made by following the instruction, and said why. Rewrite the instruction so that the reviewer's problem no longer occurs. Keep the rewrite a short, clear instruction."""

    instruction: str = dspy.InputField(desc="the current instruction")
    failures: str = dspy.InputField(desc="outputs the reviewer rejected, with the inputs")
    problem: str = dspy.InputField(desc="the reviewer's reason")
    improved_instruction: str = dspy.OutputField(desc="the improved instruction")


#: Default meta-prompts by role; optimizers accept overrides with the same keys.
DEFAULT_META_PROMPTS: dict[str, type[dspy.Signature]] = {
    "induce": InduceInstruction,
    "paraphrase": ParaphraseInstruction,
    "trajectory": ProposeFromTrajectory,
    "crossover": CrossoverThenMutate,
    "differential": DifferentialMutation,
    "diagnose": DiagnoseFailures,
    "edit": EditAgainstFeedback,
    "trajectory_feedback": ProposeFromTrajectoryWithFeedback,
    "crossover_feedback": CrossoverThenMutateWithFeedback,
    "differential_feedback": DifferentialMutationWithFeedback,
    "edit_feedback": EditAgainstReviewerFeedback,
}

#: The role a method uses instead of a base role when it is given a person's critiques.
FEEDBACK_ROLES: dict[str, str] = {
    "trajectory": "trajectory_feedback",
    "crossover": "crossover_feedback",
    "differential": "differential_feedback",
    "edit": "edit_feedback",
}


def meta_prompt_texts(signatures: dict[str, type[dspy.Signature]]) -> list[str]:
    """Every instruction and field description of ``signatures`` (for the leak guard)."""
    texts = []
    for sig in signatures.values():
        texts.append(sig.instructions)
        texts.extend((f.json_schema_extra or {}).get("desc", "") for f in sig.fields.values())
    return [t for t in texts if t]


def meta_prompt_labels(signatures: dict[str, type[dspy.Signature]]) -> list[str]:
    """The ``Prefix:`` labels the plain adapter shows for the meta-prompts' input fields.

    ``"Input:"`` is added because meta-prompts show examples as ``Input: ... -> Output: ...``.
    """
    from dspy_ext.adapters.plain import field_prefix

    labels = {"Input:"}
    for sig in signatures.values():
        labels.update(field_prefix(sig, name) for name in sig.input_fields)
    return sorted(labels)


__all__ = [
    "DEFAULT_META_PROMPTS",
    "FEEDBACK_ROLES",
    "CrossoverThenMutate",
    "CrossoverThenMutateWithFeedback",
    "DiagnoseFailures",
    "DifferentialMutation",
    "DifferentialMutationWithFeedback",
    "EditAgainstFeedback",
    "EditAgainstReviewerFeedback",
    "InduceInstruction",
    "ParaphraseInstruction",
    "ProposeFromTrajectory",
    "ProposeFromTrajectoryWithFeedback",
    "meta_prompt_labels",
    "meta_prompt_texts",
]
