"""ProTeGi (Pryzant et al., EMNLP 2023): textual "gradients" from errors, edits, and bandit beam search.

Per step, for each beam member:

1. run it on a minibatch and collect the errors;
2. ask for ``num_gradients`` reasons ("gradients") why the instruction
   produced ``errors_per_gradient`` sampled errors;
3. edit the instruction against each reason;
4. add ``paraphrases_per_edit`` Monte Carlo paraphrases of each edit.

The next beam (width ``beam_width``) is chosen from beam + children by a
UCB bandit over small random minibatches, with a fixed number of pulls, so
not every candidate is scored on every example.

With a person's critiques (``feedback=``), their reasons are the first
gradients: each step's beam members take the reviewer's distinct reasons not
yet used, up to ``num_gradients`` each, and the edit prompt shows the outputs
the reviewer rejected for that reason. The LM is asked for gradients only for
the slots left over. Each edit's trial-log row says where its gradient came
from (``gradient_source``: ``reviewer`` or ``lm``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import dspy
from pydantic import Field

from dspy_ext.evaluation import example_key
from dspy_ext.search import Candidate, InstructionSearch, SearchFeedback, SearchRun, SearchStopped
from dspy_ext.search.config import InstructionSearchConfig, tunable
from dspy_ext.search.plan import MetaPromptCalls
from dspy_ext.search.run import PROPOSAL_MAX_TOKENS
from dspy_ext.search.typical import TypicalAsk


class ProTeGiConfig(InstructionSearchConfig):
    """ProTeGi's settings.

    Attributes:
        steps: Beam-search steps.
        beam_width: Beam size ``b``.
        num_gradients: Reasons asked per beam member.
        errors_per_gradient: Errors shown in the gradient prompt.
        paraphrases_per_edit: Monte Carlo paraphrases of each edit.
        bandit_pulls: Bandit evaluations per selection (each on ``bandit_batch`` examples).
        bandit_batch: Examples per pull.
        ucb_c: Exploration constant of UCB.
        temperature: Sampling temperature of gradients and edits.
    """

    steps: int = tunable(3, ge=0, tune={"int": [1, 3]})
    beam_width: int = tunable(2, ge=1, tune={"int": [1, 3]})
    num_gradients: int = tunable(2, ge=1, tune={"int": [1, 3]})
    errors_per_gradient: int = tunable(4, ge=1, tune={"int": [2, 5]})
    paraphrases_per_edit: int = Field(default=1, ge=0)
    bandit_pulls: int = Field(default=8, ge=1)
    bandit_batch: int = Field(default=5, ge=1)
    ucb_c: float = Field(default=1.0, ge=0.0)
    temperature: float = tunable(0.7, ge=0.0, le=2.0, tune={"float": [0.3, 1.0]})


def format_failures(rows: list[tuple[dspy.Example, dict[str, Any] | None]], limit: int = 300) -> str:
    """Failing examples as meta-prompt text: input, expected output, the model's output."""
    blocks = []
    for example, prediction in rows:
        inputs = "; ".join(str(v)[:limit] for v in example.inputs().values())
        expected = "; ".join(str(v)[:limit] for k, v in example.labels().items() if k != "accepted")
        got = "; ".join(str(v)[:limit] for v in (prediction or {}).values()) or "(no answer)"
        blocks.append(f"Input: {inputs}\nExpected: {expected}\nModel answered: {got}")
    return "\n\n".join(blocks)


@dataclass
class ProTeGiState:
    """ProTeGi's per-compile state.

    Attributes:
        reviewer_reasons: The reviewer's distinct reasons not yet used as gradients, in the order given.
    """

    reviewer_reasons: list[str] = field(default_factory=list)

    def take(self, k: int) -> list[str]:
        """The next ``k`` unused reviewer reasons (fewer when fewer are left)."""
        taken, self.reviewer_reasons = self.reviewer_reasons[:k], self.reviewer_reasons[k:]
        return taken


class ProTeGi(InstructionSearch[ProTeGiState]):
    """Prompt optimization with textual gradients.

    Args:
        metric: The task metric.
        **kwargs: :class:`ProTeGiConfig` settings (``beam_width``, ``num_gradients``, ``steps``, ...) and the
            arguments of :class:`~dspy_ext.search.InstructionSearch`.

    Example:
        >>> ProTeGi(exact_match, beam_width=2, steps=3).compile(program, trainset=train)  # doctest: +SKIP
    """

    method = "protegi"
    roles = ("diagnose", "edit", "paraphrase")
    #: It uses a person's critiques (``feedback=``).
    capabilities = InstructionSearch.capabilities.with_feedback()
    config_model = ProTeGiConfig
    config: ProTeGiConfig

    def projected_calls(self, n_predictors: int, n_val: int) -> int:
        c = self.config
        children = c.beam_width * c.num_gradients * (1 + c.paraphrases_per_edit)
        prompts = c.beam_width * (1 + c.num_gradients * (1 + c.paraphrases_per_edit))
        per_step = c.beam_width * c.minibatch_size + prompts + c.bandit_pulls * c.bandit_batch
        return c.steps * (per_step + children) + 3 * n_val * n_predictors

    def planned_asks(self, n_predictors: int) -> tuple[MetaPromptCalls, ...]:
        """Per step and beam member: one diagnosis (a list of reasons, which runs to the proposal cap), an
        edit per gradient, and the edits' paraphrases."""
        c = self.config
        members = c.steps * c.beam_width
        return (
            MetaPromptCalls("diagnose", members, reply_tokens=PROPOSAL_MAX_TOKENS),
            MetaPromptCalls("edit", members * c.num_gradients),
            MetaPromptCalls("paraphrase", members * c.num_gradients * c.paraphrases_per_edit),
        )

    def typical_inputs(self, planned: MetaPromptCalls, ask: TypicalAsk) -> dict[str, str]:
        """The student's instruction with ``errors_per_gradient`` wrong answers; an edit's problem is one line
        of a diagnosis (about an instruction's length)."""
        if planned.role in ("diagnose", "edit"):
            fields = {
                "instruction": ask.instruction,
                "failures": format_failures(ask.wrong_answers(self.config.errors_per_gradient)),
            }
            return fields if planned.role == "diagnose" else {**fields, "problem": ask.instruction}
        return super().typical_inputs(planned, ask)

    def new_state(self, run: SearchRun) -> ProTeGiState:
        return ProTeGiState(reviewer_reasons=self.options.feedback.reasons() if self.options.feedback else [])

    def initial(self, run: SearchRun, state: ProTeGiState, seed_candidate: Candidate) -> list[Candidate]:
        return []

    def propose(self, run: SearchRun, state: ProTeGiState, population: list[Candidate], step: int) -> list[Candidate]:
        c = self.config
        name = run.target(step)
        children: list[Candidate | None] = []
        for member in population:
            batch = run.minibatch()
            report = run.evaluate(member, batch, split="train")
            errors = [(batch[r.index], r.prediction) for r in report.rows if r.score is not None and r.score < 1.0]
            if report.budget_exhausted:
                raise SearchStopped("search budget used up")
            # The reviewer's reasons come first; the LM is asked only for the gradient slots left over.
            gradients = [
                (reason, self._reviewer_failures(reason), "reviewer") for reason in state.take(c.num_gradients)
            ]
            if errors and len(gradients) < c.num_gradients:
                shown = run.rng.sample(errors, min(c.errors_per_gradient, len(errors)))
                failures = format_failures(shown)
                reasons = []
                for proposal in run.ask(
                    "diagnose", 1, temperature=c.temperature, instruction=member.instruction(name), failures=failures
                ):
                    reasons += [
                        line.strip(" -*0123456789.")
                        for line in proposal.text.splitlines()
                        if line.strip(" -*0123456789.")
                    ]
                gradients += [(reason, failures, "lm") for reason in reasons[: c.num_gradients - len(gradients)]]
            for reason, failures, source in gradients:
                # Without feedback the trial log stays as it always was: no gradient_source key.
                meta = {"gradient": reason, **({"gradient_source": source} if self.options.feedback else {})}
                role = "edit_feedback" if source == "reviewer" else "edit"
                for proposal in run.ask(
                    role,
                    1,
                    temperature=c.temperature,
                    instruction=member.instruction(name),
                    failures=failures,
                    problem=reason,
                ):
                    edit = run.admit(proposal, member, name, origin=f"protegi.edit{step + 1}", **meta)
                    children.append(edit)
                    if edit is None:
                        continue
                    for para in run.ask(
                        "paraphrase",
                        c.paraphrases_per_edit,
                        temperature=c.temperature,
                        instruction=edit.instruction(name),
                    ):
                        children.append(run.admit(para, edit, name, origin=f"protegi.paraphrase{step + 1}"))
        return [child for child in children if child is not None]

    def _reviewer_failures(self, reason: str) -> str:
        """The outputs the reviewer rejected for ``reason``, as the edit prompt's failures."""
        rejected = self.options.feedback.with_reason(reason) if self.options.feedback else []
        return SearchFeedback.render(rejected[: self.config.errors_per_gradient])

    def select(
        self, run: SearchRun, state: ProTeGiState, population: list[Candidate], children: list[Candidate]
    ) -> list[Candidate]:
        arms = population + children
        if len(arms) <= self.config.beam_width:
            return arms
        pulls = {c.key: 0 for c in arms}
        for c in arms:  # one pull each to start, then UCB
            self._pull(run, c, pulls)
        for t in range(len(arms), self.config.bandit_pulls + len(arms)):

            def ucb(c: Candidate, t: int = t) -> float:
                mean = (run.store.get(c.key).mean or 0.0) / 100.0
                return mean + self.config.ucb_c * math.sqrt(math.log(t + 1) / max(1, pulls[c.key]))

            self._pull(run, max(arms, key=ucb), pulls)
        return self.top(run, arms, self.config.beam_width)

    def _pull(self, run: SearchRun, candidate: Candidate, pulls: dict[str, int]) -> None:
        record = run.store.get(candidate.key) if candidate.key in run.store else None
        seen = set(record.train_scores) if record else set()
        fresh = [ex for ex in run.search_pool if example_key(ex) not in seen]
        size = self.config.bandit_batch
        batch = run.rng.sample(fresh, min(size, len(fresh))) if fresh else run.minibatch(size)
        run.score([candidate], batch)
        pulls[candidate.key] += 1
