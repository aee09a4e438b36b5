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
"""

from __future__ import annotations

import math
from typing import Any

import dspy

from dspy_ext.evaluation import example_key
from dspy_ext.search import Candidate, InstructionSearch, SearchRun


def format_failures(rows: list[tuple[dspy.Example, dict[str, Any] | None]], limit: int = 300) -> str:
    """Failing examples as meta-prompt text: input, expected output, the model's output."""
    blocks = []
    for example, prediction in rows:
        inputs = "; ".join(str(v)[:limit] for v in example.inputs().values())
        expected = "; ".join(str(v)[:limit] for k, v in example.labels().items() if k != "accepted")
        got = "; ".join(str(v)[:limit] for v in (prediction or {}).values()) or "(no answer)"
        blocks.append(f"Input: {inputs}\nExpected: {expected}\nModel answered: {got}")
    return "\n\n".join(blocks)


class ProTeGi(InstructionSearch):
    """Prompt optimization with textual gradients.

    Args:
        metric: The task metric.
        beam_width: Beam size ``b``.
        num_gradients: Reasons asked per beam member.
        errors_per_gradient: Errors shown in the gradient prompt.
        paraphrases_per_edit: Monte Carlo paraphrases of each edit.
        bandit_pulls: Bandit evaluations per selection (each on ``bandit_batch`` examples).
        bandit_batch: Examples per pull.
        ucb_c: Exploration constant of UCB.
        temperature: Sampling temperature of gradients and edits.
        **kwargs: See :class:`~dspy_ext.search.InstructionSearch`.

    Example:
        >>> ProTeGi(exact_match, beam_width=2, steps=3).compile(program, trainset=train)  # doctest: +SKIP
    """

    method = "protegi"
    roles = ("diagnose", "edit", "paraphrase")

    def __init__(self, metric: Any, *, beam_width: int = 2, num_gradients: int = 2, errors_per_gradient: int = 4,
                 paraphrases_per_edit: int = 1, bandit_pulls: int = 8, bandit_batch: int = 5, ucb_c: float = 1.0,
                 temperature: float = 0.7, steps: int = 3, **kwargs: Any) -> None:
        super().__init__(metric, steps=steps, **kwargs)
        if min(beam_width, num_gradients, errors_per_gradient, bandit_pulls, bandit_batch) < 1 or paraphrases_per_edit < 0:
            raise ValueError("beam_width, num_gradients, errors_per_gradient, bandit_pulls, bandit_batch must be >= 1")
        self.beam_width = beam_width
        self.num_gradients = num_gradients
        self.errors_per_gradient = errors_per_gradient
        self.paraphrases_per_edit = paraphrases_per_edit
        self.bandit_pulls = bandit_pulls
        self.bandit_batch = bandit_batch
        self.ucb_c = ucb_c
        self.temperature = temperature

    def projected_calls(self, n_predictors: int, n_val: int) -> int:
        children = self.beam_width * self.num_gradients * (1 + self.paraphrases_per_edit)
        prompts = self.beam_width * (1 + self.num_gradients * (1 + self.paraphrases_per_edit))
        per_step = self.beam_width * self.minibatch_size + prompts + self.bandit_pulls * self.bandit_batch
        return self.steps * (per_step + children) + 3 * n_val * n_predictors

    def initial(self, run: SearchRun, seed_candidate: Candidate) -> list[Candidate]:
        return []

    def propose(self, run: SearchRun, population: list[Candidate], step: int) -> list[Candidate]:
        name = run.target(step)
        children: list[Candidate | None] = []
        for member in population:
            batch = run.minibatch()
            report = run.evaluate(member, batch, split="train")
            errors = [(batch[r.index], r.prediction) for r in report.rows if r.score is not None and r.score < 1.0]
            if report.budget_exhausted:
                from dspy_ext.search import SearchStopped

                raise SearchStopped("search budget used up")
            if not errors:
                continue
            shown = run.rng.sample(errors, min(self.errors_per_gradient, len(errors)))
            failures = format_failures(shown)
            run.meta_state.setdefault("gradient_prompts", []).append(failures)
            reasons = []
            for raw in run.ask("diagnose", 1, temperature=self.temperature,
                               instruction=member.instruction(name), failures=failures):
                reasons += [line.strip(" -*0123456789.") for line in raw.splitlines() if line.strip(" -*0123456789.")]
            for reason in reasons[: self.num_gradients]:
                for raw in run.ask("edit", 1, temperature=self.temperature, instruction=member.instruction(name),
                                   failures=failures, problem=reason):
                    edit = run.admit(raw, member, name, origin=f"protegi.edit{step + 1}", gradient=reason)
                    children.append(edit)
                    if edit is None:
                        continue
                    for para in run.ask("paraphrase", self.paraphrases_per_edit, temperature=self.temperature,
                                        instruction=edit.instruction(name)):
                        children.append(run.admit(para, edit, name, origin=f"protegi.paraphrase{step + 1}"))
        return [c for c in children if c is not None]

    def select(self, run: SearchRun, population: list[Candidate], children: list[Candidate]) -> list[Candidate]:
        arms = population + children
        if len(arms) <= self.beam_width:
            return arms
        pulls = {c.key: 0 for c in arms}
        for c in arms:  # one pull each to start, then UCB
            self._pull(run, c, pulls)
        for t in range(len(arms), self.bandit_pulls + len(arms)):
            def ucb(c: Candidate) -> float:
                mean = (run.store.get(c.key).mean or 0.0) / 100.0
                return mean + self.ucb_c * math.sqrt(math.log(t + 1) / max(1, pulls[c.key]))

            self._pull(run, max(arms, key=ucb), pulls)
        run.meta_state["bandit_pairs"] = run.meta_state.get("bandit_pairs", 0) + sum(
            run.store.get(c.key).n_scored for c in arms)
        return self.top(run, arms, self.beam_width)

    def _pull(self, run: SearchRun, candidate: Candidate, pulls: dict[str, int]) -> None:
        record = run.store.get(candidate.key) if candidate.key in run.store else None
        seen = set(record.train_scores) if record else set()
        fresh = [ex for ex in run.search_pool if example_key(ex) not in seen]
        batch = run.rng.sample(fresh, min(self.bandit_batch, len(fresh))) if fresh else run.minibatch(self.bandit_batch)
        run.score([candidate], batch)
        pulls[candidate.key] += 1
