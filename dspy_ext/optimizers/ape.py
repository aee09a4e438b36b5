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

from pydantic import Field

from dspy_ext.search import Candidate, InstructionSearch, SearchRun, format_pairs
from dspy_ext.search.config import InstructionSearchConfig, tunable
from dspy_ext.search.plan import MetaPromptCalls
from dspy_ext.search.typical import TypicalAsk


class APEConfig(InstructionSearchConfig):
    """APE's settings.

    Attributes:
        steps: Monte Carlo resampling rounds.
        num_candidates: Instructions induced at the start.
        pairs_per_induction: Training pairs shown per induction.
        top_k: Survivors kept after each round.
        variants_per_survivor: Monte Carlo rewrites per survivor per step.
        induce_temperature: Sampling temperature of the inductions.
    """

    steps: int = Field(default=2, ge=0)
    num_candidates: int = tunable(6, ge=1, tune={"int": [3, 8]})
    pairs_per_induction: int = Field(default=5, ge=1)
    top_k: int = tunable(3, ge=1, tune={"int": [2, 4]})
    variants_per_survivor: int = Field(default=1, ge=1)
    induce_temperature: float = tunable(0.9, ge=0.0, le=2.0, tune={"float": [0.5, 1.2]})


class APE(InstructionSearch[None]):
    """Automatic Prompt Engineer.

    Args:
        metric: The task metric.
        **kwargs: :class:`APEConfig` settings (``num_candidates``, ``top_k``, ``steps``, ...) and the
            arguments of :class:`~dspy_ext.search.InstructionSearch`.

    Example:
        >>> ape = APE(exact_match, max_lm_calls=400, seed=0, top_k=2)   # doctest: +SKIP
        >>> compiled = ape.compile(program, trainset=train, valset=val)  # doctest: +SKIP
    """

    method = "ape"
    roles = ("induce", "paraphrase")
    config_model = APEConfig
    config: APEConfig

    def projected_calls(self, n_predictors: int, n_val: int) -> int:
        c = self.config
        initial = c.num_candidates * (1 + c.minibatch_size * n_predictors)
        rounds = c.steps * c.top_k * c.variants_per_survivor * (1 + c.minibatch_size * n_predictors)
        return initial + rounds + 3 * n_val * n_predictors

    def planned_asks(self, n_predictors: int) -> tuple[MetaPromptCalls, ...]:
        c = self.config
        return (
            MetaPromptCalls("induce", c.num_candidates * n_predictors),
            MetaPromptCalls("paraphrase", c.steps * c.top_k * c.variants_per_survivor),
        )

    def typical_inputs(self, planned: MetaPromptCalls, ask: TypicalAsk) -> dict[str, str]:
        if planned.role == "induce":
            return {"step": ask.step, "examples": ask.pairs(self.config.pairs_per_induction)}
        return super().typical_inputs(planned, ask)

    def initial(self, run: SearchRun, state: None, seed_candidate: Candidate) -> list[Candidate]:
        c = self.config
        children = []
        for name in run.predictor_names():
            for _ in range(c.num_candidates):
                pairs = run.rng.sample(run.trainset, min(c.pairs_per_induction, len(run.trainset)))
                for proposal in run.ask(
                    "induce",
                    1,
                    temperature=c.induce_temperature,
                    step=run.step_description(name),
                    examples=format_pairs(pairs),
                ):
                    children.append(run.admit(proposal, seed_candidate, name, origin="ape.induce"))
        return [child for child in children if child is not None]

    def propose(self, run: SearchRun, state: None, population: list[Candidate], step: int) -> list[Candidate]:
        name = run.target(step)
        children = []
        for survivor in population:
            for proposal in run.ask(
                "paraphrase",
                self.config.variants_per_survivor,
                temperature=self.config.induce_temperature,
                instruction=survivor.instruction(name),
            ):
                children.append(run.admit(proposal, survivor, name, origin=f"ape.resample{step + 1}"))
        return [child for child in children if child is not None]

    def select(
        self, run: SearchRun, state: None, population: list[Candidate], children: list[Candidate]
    ) -> list[Candidate]:
        pool = population + children
        run.score(pool)
        return self.top(run, pool, self.config.top_k)
