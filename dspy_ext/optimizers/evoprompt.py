"""EvoPrompt (Guo et al., ICLR 2024): LLM-performed evolution of instructions, GA and DE variants.

*GA*: parents are drawn by roulette wheel (probability proportional to
score), the LM crosses them over and mutates the child, and the next
population is the top ``population_size`` of parents and children.

*DE*: for each member, two random donors are compared word by word; the
differing parts, the best member and the current member go to the LM, which
mutates the differing parts, merges them into the best member and crosses the
result with the current member. The member is replaced only if the trial
scores better.

The initial population mixes the student's instruction with induced and
paraphrased ones. All members are scored on one fixed training subset.

With a person's critiques (``feedback=``) the crossover and differential
prompts (``*WithFeedback`` in :mod:`dspy_ext.meta_prompts`) also show a few
outputs the reviewer rejected, with the reasons, as failures the offspring
must fix; a different draw for each offspring.
"""

from __future__ import annotations

import difflib
import random
from dataclasses import dataclass
from typing import Any, Literal

import dspy

from dspy_ext.search import Candidate, InstructionSearch, SearchRun, format_pairs
from dspy_ext.search.config import InstructionSearchConfig, tunable
from dspy_ext.search.plan import MetaPromptCalls
from dspy_ext.search.typical import TypicalAsk


class EvoPromptConfig(InstructionSearchConfig):
    """EvoPrompt's settings (both variants).

    Attributes:
        steps: Generations.
        population_size: Members per generation (DE needs a member and two donors: at least 3).
        temperature: Sampling temperature of the evolution prompts.
    """

    steps: int = tunable(3, ge=0, tune={"int": [1, 3]})
    population_size: int = tunable(6, ge=3, tune={"int": [4, 8]})
    temperature: float = tunable(0.9, ge=0.0, le=2.0, tune={"float": [0.5, 1.2]})


@dataclass
class EvoPromptState:
    """EvoPrompt's per-compile state.

    Attributes:
        batch: The fixed training subset every member is scored on.
    """

    batch: list[dspy.Example]


def roulette_pick(rng: random.Random, weights: list[float], k: int = 2) -> list[int]:
    """Pick ``k`` distinct indices with probability proportional to ``weights``.

    All-zero weights fall back to uniform choice.

    Example:
        >>> roulette_pick(random.Random(0), [0.0, 1.0, 0.0], k=1)
        [1]
    """
    if k > len(weights):
        raise ValueError("cannot pick more parents than there are members")
    remaining = list(range(len(weights)))
    picked = []
    for _ in range(k):
        w = [max(0.0, weights[i]) for i in remaining]
        total = sum(w)
        if total <= 0:
            choice = rng.choice(remaining)
        else:
            r = rng.uniform(0, total)
            acc = 0.0
            choice = remaining[-1]
            for i, wi in zip(remaining, w):
                acc += wi
                if r <= acc and wi > 0:
                    choice = i
                    break
        picked.append(choice)
        remaining.remove(choice)
    return picked


def differing_parts(a: str, b: str) -> str:
    """The phrases where instructions ``a`` and ``b`` differ, one ``"x" vs "y"`` per line."""
    wa, wb = a.split(), b.split()
    lines = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=wa, b=wb, autojunk=False).get_opcodes():
        if tag != "equal":
            left, right = " ".join(wa[i1:i2]) or "(nothing)", " ".join(wb[j1:j2]) or "(nothing)"
            lines.append(f'"{left}" vs "{right}"')
    return "\n".join(lines) if lines else "(the donors are identical)"


class EvoPrompt(InstructionSearch[EvoPromptState]):
    """Evolutionary instruction search with an LM as the variation operator.

    Args:
        metric: The task metric.
        variant: ``"ga"`` (genetic algorithm) or ``"de"`` (differential evolution).
        **kwargs: :class:`EvoPromptConfig` settings (``population_size``, ``temperature``, ``steps``, ...)
            and the arguments of :class:`~dspy_ext.search.InstructionSearch`.

    Example:
        >>> EvoPrompt(exact_match, variant="de", population_size=6).compile(program, trainset=train)  # doctest: +SKIP
    """

    roles = ("induce", "paraphrase", "crossover", "differential")
    #: It uses a person's critiques (``feedback=``).
    capabilities = InstructionSearch.capabilities.with_feedback()
    config_model = EvoPromptConfig
    config: EvoPromptConfig

    def __init__(self, metric: Any, *, variant: Literal["ga", "de"] = "ga", **kwargs: Any) -> None:
        if variant not in ("ga", "de"):
            raise ValueError(f"variant must be 'ga' or 'de', got {variant!r}")
        self.variant = variant
        super().__init__(metric, **kwargs)

    @property
    def method(self) -> str:  # type: ignore[override]
        return f"evoprompt-{self.variant}"

    def projected_calls(self, n_predictors: int, n_val: int) -> int:
        c = self.config
        per_member = 1 + c.minibatch_size * n_predictors
        return (c.population_size + c.steps * c.population_size) * per_member + 3 * n_val * n_predictors

    def planned_asks(self, n_predictors: int) -> tuple[MetaPromptCalls, ...]:
        """The initial population (induce and paraphrase by turns), then one evolution prompt per member and step."""
        c = self.config
        wanted = c.population_size - 1
        evolve = "crossover" if self.variant == "ga" else "differential"
        return (
            MetaPromptCalls("induce", (wanted + 1) // 2),
            MetaPromptCalls("paraphrase", wanted // 2),
            MetaPromptCalls(evolve, c.steps * c.population_size),
        )

    def typical_inputs(self, planned: MetaPromptCalls, ask: TypicalAsk) -> dict[str, str]:
        """Parents and donors as rewrites of the student's instruction (what the first generations breed)."""
        own = ask.instruction
        if planned.role == "crossover":
            return {"parent_1": own, "parent_2": own}
        if planned.role == "differential":
            # Two donors that differ in about half their words: each other word of one is dropped.
            donor = " ".join(w for i, w in enumerate(own.split()) if i % 2 == 0)
            return {
                "differing_parts": differing_parts(own, donor),
                "best_instruction": own,
                "current_instruction": own,
            }
        return super().typical_inputs(planned, ask)

    def new_state(self, run: SearchRun) -> EvoPromptState:
        return EvoPromptState(batch=run.minibatch())

    def initial(self, run: SearchRun, state: EvoPromptState, seed_candidate: Candidate) -> list[Candidate]:
        members: list[Candidate] = []
        name = run.target(0)
        temperature = self.config.temperature
        wanted = self.config.population_size - 1
        attempts = 0
        while len(members) < wanted and attempts < 2 * wanted:
            attempts += 1
            if attempts % 2:
                pairs = run.rng.sample(run.trainset, min(5, len(run.trainset)))
                proposals = run.ask(
                    "induce", 1, temperature=temperature, step=run.step_description(name), examples=format_pairs(pairs)
                )
                origin = "evoprompt.init.induce"
            else:
                proposals = run.ask(
                    "paraphrase", 1, temperature=temperature, instruction=seed_candidate.instruction(name)
                )
                origin = "evoprompt.init.paraphrase"
            for proposal in proposals:
                child = run.admit(proposal, seed_candidate, name, origin=origin)
                if child is not None and all(child.key != m.key for m in members):
                    members.append(child)
        return members

    def propose(self, run: SearchRun, state: EvoPromptState, population: list[Candidate], step: int) -> list[Candidate]:
        name = run.target(step)
        if len(population) < (2 if self.variant == "ga" else 3):
            # Too few members were admitted to breed (rejected or duplicate proposals): grow by paraphrase.
            return self._grow(run, population, name, step)
        return self._ga(run, population, name, step) if self.variant == "ga" else self._de(run, population, name, step)

    def _grow(self, run: SearchRun, population: list[Candidate], name: str, step: int) -> list[Candidate]:
        children = []
        for member in population:
            for proposal in run.ask(
                "paraphrase", 2, temperature=self.config.temperature, instruction=member.instruction(name)
            ):
                children.append(run.admit(proposal, member, name, origin=f"{self.method}.grow{step + 1}"))
        return children

    def _ga(self, run: SearchRun, population: list[Candidate], name: str, step: int) -> list[Candidate]:
        weights = [run.store.get(c.key).mean or 0.0 for c in population]
        children = []
        for _ in range(len(population)):
            i, j = roulette_pick(run.rng, weights, 2)
            a, b = population[i], population[j]
            for proposal in run.ask(
                self.feedback_role("crossover"),
                1,
                temperature=self.config.temperature,
                parent_1=a.instruction(name),
                parent_2=b.instruction(name),
                **self._feedback_fields(run),
            ):
                children.append(
                    run.admit(proposal, a, name, origin=f"evoprompt-ga.gen{step + 1}", parents=(a.key, b.key))
                )
        return children

    def _de(self, run: SearchRun, population: list[Candidate], name: str, step: int) -> list[Candidate]:
        best = self.top(run, population, 1)[0]
        trials = []
        for index, member in enumerate(population):
            others = [k for k in range(len(population)) if k != index]
            r1, r2 = run.rng.sample(others, 2)
            d1, d2 = population[r1], population[r2]
            proposals = run.ask(
                self.feedback_role("differential"),
                1,
                temperature=self.config.temperature,
                differing_parts=differing_parts(d1.instruction(name), d2.instruction(name)),
                best_instruction=best.instruction(name),
                current_instruction=member.instruction(name),
                **self._feedback_fields(run),
            )
            for proposal in proposals:
                trial = run.admit(
                    proposal,
                    member,
                    name,
                    origin=f"evoprompt-de.gen{step + 1}",
                    parents=(member.key, d1.key, d2.key, best.key),
                    replaces=member.key,
                )
                trials.append(trial)
        return trials

    def _feedback_fields(self, run: SearchRun) -> dict[str, str]:
        """The ``reviewer_feedback`` field of a feedback meta-prompt (nothing without feedback)."""
        if not self.options.feedback:
            return {}
        return {"reviewer_feedback": self.options.feedback.render(self.options.feedback.sample(run.rng))}

    def select(
        self, run: SearchRun, state: EvoPromptState, population: list[Candidate], children: list[Candidate]
    ) -> list[Candidate]:
        run.score(population + children, state.batch)
        if self.variant == "ga" or len(population) < 3:
            return self.top(run, population + children, self.config.population_size)
        by_member = {c.meta.get("replaces"): c for c in children}
        survivors = []
        for member in population:
            trial = by_member.get(member.key)
            # A trial that breaks a regression guard never replaces its member.
            if (
                trial is not None
                and run.store.get(trial.key).guarded
                and (run.store.get(trial.key).mean or 0) > (run.store.get(member.key).mean or 0)
            ):
                survivors.append(trial)
            else:
                survivors.append(member)
        return survivors
