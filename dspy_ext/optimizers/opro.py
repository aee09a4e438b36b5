"""OPRO (Yang et al., ICLR 2024): an LM optimizes the instruction from its scored trajectory.

Each step the meta-prompt shows the best ``trajectory_size`` instructions so
far with their scores (0-100), sorted ascending so the best come last, plus a
few solved examples, and samples ``proposals_per_step`` new instructions at
temperature about 1. Every instruction is scored on the same fixed training
subset, so scores in the trajectory are comparable.

With a person's critiques (``feedback=``) the meta-prompt
(:class:`~dspy_ext.meta_prompts.ProposeFromTrajectoryWithFeedback`) also shows
a few outputs the reviewer rejected, with the reasons, as failures the new
instruction must fix; a different draw each step, distinct reasons first.
"""

from __future__ import annotations

from dataclasses import dataclass

import dspy
from pydantic import Field

from dspy_ext.search import Candidate, InstructionSearch, SearchRun, format_pairs
from dspy_ext.search.config import InstructionSearchConfig, tunable
from dspy_ext.search.plan import MetaPromptCalls
from dspy_ext.search.typical import TypicalAsk

#: Scores of the typical trajectory a dry run measures (their digits are what the prompt shows).
TYPICAL_SCORES = (35.0, 50.0, 65.0, 80.0)


class OPROConfig(InstructionSearchConfig):
    """OPRO's settings.

    Attributes:
        steps: Optimization steps.
        proposals_per_step: Instructions sampled per step.
        trajectory_size: Best past instructions kept in the meta-prompt.
        num_exemplars: Solved examples shown in the meta-prompt.
        temperature: Sampling temperature of the optimizer LM.
    """

    steps: int = tunable(6, ge=0, tune={"int": [1, 4]})
    proposals_per_step: int = tunable(4, ge=1, tune={"int": [2, 6]})
    trajectory_size: int = Field(default=20, ge=1)
    num_exemplars: int = tunable(3, ge=0, tune={"int": [0, 3]})
    temperature: float = tunable(1.0, ge=0.0, le=2.0, tune={"float": [0.5, 1.2]})


@dataclass
class OPROState:
    """OPRO's per-compile state.

    Attributes:
        batch: The fixed training subset every instruction is scored on, so trajectory scores compare.
    """

    batch: list[dspy.Example]


def render_trajectory(entries: list[tuple[str, float]]) -> str:
    """``entries`` of (instruction, score) as meta-prompt text, lowest score first."""
    ordered = sorted(entries, key=lambda e: e[1])
    return "\n".join(f"Instruction: {text}\nAccuracy: {round(score)}" for text, score in ordered)


class OPRO(InstructionSearch[OPROState]):
    """Optimization by PROmpting.

    Args:
        metric: The task metric.
        **kwargs: :class:`OPROConfig` settings (``proposals_per_step``, ``trajectory_size``, ``steps``, ...)
            and the arguments of :class:`~dspy_ext.search.InstructionSearch`.

    Example:
        >>> OPRO(exact_match, steps=6, max_lm_calls=400).compile(program, trainset=train)  # doctest: +SKIP
    """

    method = "opro"
    roles = ("trajectory",)
    #: It uses a person's critiques (``feedback=``).
    capabilities = InstructionSearch.capabilities.with_feedback()
    config_model = OPROConfig
    config: OPROConfig

    def projected_calls(self, n_predictors: int, n_val: int) -> int:
        c = self.config
        per_step = c.proposals_per_step * (1 + c.minibatch_size * n_predictors)
        return c.minibatch_size * n_predictors + c.steps * per_step + 3 * n_val * n_predictors

    def planned_asks(self, n_predictors: int) -> tuple[MetaPromptCalls, ...]:
        return (MetaPromptCalls("trajectory", self.config.steps * self.config.proposals_per_step),)

    def typical_inputs(self, planned: MetaPromptCalls, ask: TypicalAsk) -> dict[str, str]:
        """The trajectory meta-prompt at the run's mean history length: the student's instruction and
        ``proposals_per_step`` more per step before (at most ``trajectory_size``), over the planned steps."""
        if planned.role != "trajectory":
            return super().typical_inputs(planned, ask)
        c = self.config
        steps = max(1, -(-planned.calls // c.proposals_per_step))
        entries = round(sum(min(c.trajectory_size, 1 + s * c.proposals_per_step) for s in range(steps)) / steps)
        history = [(ask.instruction, TYPICAL_SCORES[i % len(TYPICAL_SCORES)]) for i in range(entries)]
        return {
            "step": ask.step,
            "scored_instructions": render_trajectory(history),
            "task_examples": ask.pairs(c.num_exemplars),
        }

    def new_state(self, run: SearchRun) -> OPROState:
        return OPROState(batch=run.minibatch())

    def initial(self, run: SearchRun, state: OPROState, seed_candidate: Candidate) -> list[Candidate]:
        return []

    def trajectory(self, run: SearchRun, population: list[Candidate], name: str) -> list[tuple[str, float]]:
        """The best ``trajectory_size`` (instruction, score) pairs for predictor ``name``."""
        # A candidate whose every row failed (LM or metric errors) has no score to show.
        scored = [c for c in population if c.key in run.store and run.store.get(c.key).mean is not None]
        best = self.top(run, scored, self.config.trajectory_size)
        return [(c.instruction(name), run.store.get(c.key).mean) for c in best]

    def propose(self, run: SearchRun, state: OPROState, population: list[Candidate], step: int) -> list[Candidate]:
        name = run.target(step)
        parent = self.top(run, population, 1)[0]  # unscored candidates rank last, so this is defined
        exemplars = run.rng.sample(run.trainset, min(self.config.num_exemplars, len(run.trainset)))
        fields = {
            "step": run.step_description(name),
            "scored_instructions": render_trajectory(self.trajectory(run, population, name)),
            "task_examples": format_pairs(exemplars),
        }
        if self.options.feedback:
            fields["reviewer_feedback"] = self.options.feedback.render(self.options.feedback.sample(run.rng))
        proposals = run.ask(
            self.feedback_role("trajectory"),
            self.config.proposals_per_step,
            temperature=self.config.temperature,
            **fields,
        )
        return [run.admit(proposal, parent, name, origin=f"opro.step{step + 1}") for proposal in proposals]

    def select(
        self, run: SearchRun, state: OPROState, population: list[Candidate], children: list[Candidate]
    ) -> list[Candidate]:
        run.score(children, state.batch)
        return population + children
