"""APE (Zhou et al., ICLR 2023): induce instructions from input/output pairs, then resample around the best.

1. *Forward generation*: ``num_candidates`` instructions are induced, each from
   a different random subset of training pairs.
2. All are scored on one minibatch and the top ``top_k`` survive.
3. *Iterative Monte Carlo search*: each step asks for ``variants_per_survivor``
   meaning-preserving rewrites of every survivor; survivors and variants are
   scored on a fresh minibatch (seen rows come from the cache) and the top
   ``top_k`` by accumulated score survive.
4. The final choice is made on the valset by the shared loop.
"""

from __future__ import annotations

from typing import Any

from dspy_ext.search import Candidate, InstructionSearch, SearchRun, format_pairs


class APE(InstructionSearch):
    """Automatic Prompt Engineer.

    Args:
        metric: The task metric.
        num_candidates: Instructions induced at the start.
        pairs_per_induction: Training pairs shown per induction.
        top_k: Survivors kept after each round.
        variants_per_survivor: Monte Carlo rewrites per survivor per step.
        induce_temperature: Sampling temperature of the inductions.
        **kwargs: See :class:`~dspy_ext.search.InstructionSearch` (``steps`` = resampling rounds).

    Example:
        >>> ape = APE(exact_match, max_lm_calls=400, seed=0)          # doctest: +SKIP
        >>> compiled = ape.compile(program, trainset=train, valset=val)  # doctest: +SKIP
    """

    method = "ape"
    roles = ("induce", "paraphrase")

    def __init__(self, metric: Any, *, num_candidates: int = 6, pairs_per_induction: int = 5, top_k: int = 3,
                 variants_per_survivor: int = 1, induce_temperature: float = 0.9, steps: int = 2, **kwargs: Any) -> None:
        super().__init__(metric, steps=steps, **kwargs)
        if num_candidates < 1 or top_k < 1 or pairs_per_induction < 1 or variants_per_survivor < 1:
            raise ValueError("num_candidates, pairs_per_induction, top_k and variants_per_survivor must be >= 1")
        self.num_candidates = num_candidates
        self.pairs_per_induction = pairs_per_induction
        self.top_k = top_k
        self.variants_per_survivor = variants_per_survivor
        self.induce_temperature = induce_temperature

    def projected_calls(self, n_predictors: int, n_val: int) -> int:
        initial = self.num_candidates * (1 + self.minibatch_size * n_predictors)
        rounds = self.steps * self.top_k * self.variants_per_survivor * (1 + self.minibatch_size * n_predictors)
        return initial + rounds + 3 * n_val * n_predictors

    def initial(self, run: SearchRun, seed_candidate: Candidate) -> list[Candidate]:
        children = []
        for name in run.predictor_names():
            for _ in range(self.num_candidates):
                pairs = run.rng.sample(run.trainset, min(self.pairs_per_induction, len(run.trainset)))
                for raw in run.ask("induce", 1, temperature=self.induce_temperature,
                                   step=run.step_description(name), examples=format_pairs(pairs)):
                    children.append(run.admit(raw, seed_candidate, name, origin="ape.induce"))
        return [c for c in children if c is not None]

    def propose(self, run: SearchRun, population: list[Candidate], step: int) -> list[Candidate]:
        name = run.target(step)
        children = []
        for survivor in population:
            for raw in run.ask("paraphrase", self.variants_per_survivor, temperature=self.induce_temperature,
                               instruction=survivor.instruction(name)):
                children.append(run.admit(raw, survivor, name, origin=f"ape.resample{step + 1}"))
        return [c for c in children if c is not None]

    def select(self, run: SearchRun, population: list[Candidate], children: list[Candidate]) -> list[Candidate]:
        pool = population + children
        run.score(pool)
        return self.top(run, pool, self.top_k)
