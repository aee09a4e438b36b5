"""OPRO (Yang et al., ICLR 2024): an LM optimizes the instruction from its scored trajectory.

Each step the meta-prompt shows the best ``trajectory_size`` instructions so
far with their scores (0-100), sorted ascending so the best come last, plus a
few solved examples, and samples ``proposals_per_step`` new instructions at
temperature about 1. Every instruction is scored on the same fixed training
subset, so scores in the trajectory are comparable.
"""

from __future__ import annotations

from typing import Any

from dspy_ext.search import Candidate, InstructionSearch, SearchRun, format_pairs


def render_trajectory(entries: list[tuple[str, float]]) -> str:
    """``entries`` of (instruction, score) as meta-prompt text, lowest score first."""
    ordered = sorted(entries, key=lambda e: e[1])
    return "\n".join(f"Instruction: {text}\nAccuracy: {round(score)}" for text, score in ordered)


class OPRO(InstructionSearch):
    """Optimization by PROmpting.

    Args:
        metric: The task metric.
        proposals_per_step: Instructions sampled per step.
        trajectory_size: Best past instructions kept in the meta-prompt.
        num_exemplars: Solved examples shown in the meta-prompt.
        temperature: Sampling temperature of the optimizer LM.
        **kwargs: See :class:`~dspy_ext.search.InstructionSearch`.

    Example:
        >>> OPRO(exact_match, steps=6, max_lm_calls=400).compile(program, trainset=train)  # doctest: +SKIP
    """

    method = "opro"
    roles = ("trajectory",)

    def __init__(self, metric: Any, *, proposals_per_step: int = 4, trajectory_size: int = 20, num_exemplars: int = 3,
                 temperature: float = 1.0, steps: int = 6, **kwargs: Any) -> None:
        super().__init__(metric, steps=steps, **kwargs)
        if proposals_per_step < 1 or trajectory_size < 1 or num_exemplars < 0:
            raise ValueError("proposals_per_step and trajectory_size must be >= 1, num_exemplars >= 0")
        self.proposals_per_step = proposals_per_step
        self.trajectory_size = trajectory_size
        self.num_exemplars = num_exemplars
        self.temperature = temperature

    def projected_calls(self, n_predictors: int, n_val: int) -> int:
        per_step = self.proposals_per_step * (1 + self.minibatch_size * n_predictors)
        return self.minibatch_size * n_predictors + self.steps * per_step + 3 * n_val * n_predictors

    def initial(self, run: SearchRun, seed_candidate: Candidate) -> list[Candidate]:
        run.meta_state = {"batch": run.minibatch()}
        return []

    def trajectory(self, run: SearchRun, population: list[Candidate], name: str) -> list[tuple[str, float]]:
        """The best ``trajectory_size`` (instruction, score) pairs for predictor ``name``."""
        # A candidate whose every row failed (LM or metric errors) has no score to show.
        scored = [c for c in population if c.key in run.store and run.store.get(c.key).mean is not None]
        best = self.top(run, scored, self.trajectory_size)
        return [(c.instruction(name), run.store.get(c.key).mean) for c in best]

    def propose(self, run: SearchRun, population: list[Candidate], step: int) -> list[Candidate]:
        name = run.target(step)
        parent = self.top(run, population, 1)[0]  # unscored candidates rank last, so this is defined
        exemplars = run.rng.sample(run.trainset, min(self.num_exemplars, len(run.trainset)))
        texts = run.ask(
            "trajectory", self.proposals_per_step, temperature=self.temperature,
            step=run.step_description(name),
            scored_instructions=render_trajectory(self.trajectory(run, population, name)),
            task_examples=format_pairs(exemplars),
        )
        return [run.admit(raw, parent, name, origin=f"opro.step{step + 1}") for raw in texts]

    def select(self, run: SearchRun, population: list[Candidate], children: list[Candidate]) -> list[Candidate]:
        run.score(children, run.meta_state["batch"])
        return population + children
