"""Candidate-level TPE: the final (instruction x demo set) choice of an instruction search, MIPROv2-style.

:class:`TPEFinalSelector` plugs into APE, OPRO, EvoPrompt and ProTeGi as their
final selection step (``APE(metric, final_selector=TPEFinalSelector())``)
instead of successive halving. For every predictor it offers Optuna a
categorical *instruction index* (the student's own instruction first, then
the search's best instruction sets) and a *demo-set index* (the run's demo
sets; set 0 is labeled-only), so instructions of different candidates can be
combined across predictors. Like MIPROv2's last stage:

* each TPE trial scores its combination on a random valset minibatch; a
  combination's value is its mean over every valset row it has been scored on
  (rows already scored are served from the evaluator's cache);
* every ``full_eval_steps`` trials, and at the end, the best combination by that
  mean that has not been scored on the whole valset is; the winner is the best
  full-valset score (ties: the earlier one);
* the leader of the search and the student's own prompt are the first two trials.

Everything is charged to the search's call budget; when it runs out the best
fully scored combination so far wins (``None`` if there is none yet, and the
search falls back to its best candidate).
"""

from __future__ import annotations

import logging
import statistics
from typing import Any

from dspy_ext.evaluation import example_key
from dspy_ext.search.candidate import Candidate, PredictorPrompt

logger = logging.getLogger(__name__)


class TPEFinalSelector:
    """Optuna TPE over (instruction index, demo-set index) for every predictor.

    Args:
        n_trials: TPE trials (``None``: three per combination, at most 30); the
            budget may end the search earlier.
        minibatch_size: Valset rows per trial (``None``: the search's
            ``minibatch_size``). With a valset no larger, every trial is a full evaluation.
        full_eval_steps: Full-valset evaluation of the leader every this many trials.
        seed: Seeds the sampler and the minibatches (``None``: the search's seed).
        n_startup_trials: Random trials before TPE models the results.

    Example:
        >>> from dspy_ext import APE
        >>> ape = APE(metric, final_selector=TPEFinalSelector(n_trials=12))   # doctest: +SKIP
    """

    def __init__(self, n_trials: int | None = None, *, minibatch_size: int | None = None, full_eval_steps: int = 5,
                 seed: int | None = None, n_startup_trials: int = 4) -> None:
        if n_trials is not None and n_trials < 1:
            raise ValueError("n_trials must be >= 1")
        if minibatch_size is not None and minibatch_size < 1:
            raise ValueError("minibatch_size must be >= 1")
        if full_eval_steps < 1:
            raise ValueError("full_eval_steps must be >= 1")
        self.n_trials = n_trials
        self.minibatch_size = minibatch_size
        self.full_eval_steps = full_eval_steps
        self.seed = seed
        self.n_startup_trials = n_startup_trials
        self.last_study: Any = None  # the in-memory Optuna study of the last call (for inspection)

    # ---- the pools ----------------------------------------------------------------------------
    @staticmethod
    def pools(search: Any, run: Any, seed_candidate: Candidate) -> dict[str, list[str]]:
        """Instruction options per predictor: the student's first, then the best instruction sets' in rank order."""
        ranked = [r.candidate for r in run.store.ranked()]
        contenders: list[Candidate] = []
        for candidate in [seed_candidate, *ranked]:
            if all(candidate.instructions != c.instructions for c in contenders):
                contenders.append(candidate)
            if len(contenders) >= search.final_candidates + 1:
                break
        pools: dict[str, list[str]] = {}
        for name in seed_candidate.prompts:
            options: list[str] = []
            for candidate in contenders:
                text = candidate.instruction(name)
                if text not in options:
                    options.append(text)
            pools[name] = options
        return pools

    # ---- the selection ----------------------------------------------------------------------------
    def __call__(self, search: Any, run: Any, seed_candidate: Candidate) -> Candidate | None:
        import optuna

        names = list(seed_candidate.prompts)
        pools = self.pools(search, run, seed_candidate)
        n_sets = max(1, len(run.demo_sets))
        n_combos = 1
        for name in names:
            n_combos *= len(pools[name]) * n_sets
        n_trials = self.n_trials if self.n_trials is not None else min(30, 3 * n_combos)
        seed = search.seed if self.seed is None else self.seed
        mb = self.minibatch_size or search.minibatch_size
        valset = run.valset
        full_every_trial = mb >= len(valset)

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True,
                                             n_startup_trials=min(self.n_startup_trials, n_trials))
        study = optuna.create_study(direction="maximize", sampler=sampler)
        self.last_study = study

        def params_of(candidate: Candidate) -> dict[str, int]:
            params = {}
            for i, name in enumerate(names):
                text = candidate.instruction(name)
                params[f"{i}_predictor_instruction"] = pools[name].index(text) if text in pools[name] else 0
                params[f"{i}_predictor_demos"] = min(candidate.prompts[name].demo_set, n_sets - 1)
            return params

        ranked = run.store.ranked()
        if ranked:
            study.enqueue_trial(params_of(ranked[0].candidate))
        study.enqueue_trial(params_of(seed_candidate), skip_if_exists=True)

        row_scores: dict[str, dict[str, float]] = {}  # candidate key -> example key -> score (0-1)
        full: dict[str, float] = {}                   # candidate key -> full-valset score (0-100)
        order: list[str] = []                          # keys in order of full evaluation
        combos: dict[str, Candidate] = {}

        def mean(key: str) -> float:
            return 100.0 * statistics.fmean(row_scores[key].values()) if row_scores.get(key) else 0.0

        def score(candidate: Candidate, examples: list) -> Any:
            report = run.evaluate(candidate, examples, split="val")
            seen = row_scores.setdefault(candidate.key, {})
            for row in report.scored:
                seen[example_key(examples[row.index])] = row.score
            return report

        def full_eval(key: str) -> bool:
            """Score ``key`` on the whole valset; ``False`` when the budget ran out."""
            candidate = combos[key]
            report = score(candidate, valset)
            if report.budget_exhausted:
                return False
            full[key] = report.score
            order.append(key)
            record = run.store.get(key)
            record.val_score, record.val_n = report.score, len(valset)
            return True

        def promote() -> bool:
            pending = [k for k in combos if k not in full]
            if not pending:
                return True
            best = max(pending, key=lambda k: (mean(k), -list(combos).index(k)))
            return full_eval(best)

        exhausted = False
        for number in range(n_trials):
            if len(full) == n_combos:
                break
            trial = study.ask()
            prompts = {}
            for i, name in enumerate(names):
                ii = trial.suggest_categorical(f"{i}_predictor_instruction", list(range(len(pools[name]))))
                di = trial.suggest_categorical(f"{i}_predictor_demos", list(range(n_sets)))
                demos = run.demo_sets[di].get(name, ()) if run.demo_sets else ()
                prompts[name] = PredictorPrompt(pools[name][ii], di, demos)
            candidate = Candidate(prompts, (seed_candidate.key,), "final:tpe", {"tpe_trial": number})
            key = candidate.key
            combos.setdefault(key, candidate)
            if full_every_trial:
                if key not in full and not full_eval(key):
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    exhausted = True
                    break
                study.tell(trial, full[key])
            else:
                batch = run.rng.sample(list(valset), mb)
                report = score(candidate, batch)
                if report.budget_exhausted:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    exhausted = True
                    break
                study.tell(trial, mean(key))
                if (number + 1) % self.full_eval_steps == 0 and not promote():
                    exhausted = True
                    break
        if not exhausted and not full_every_trial:
            promote()
        if not full:
            return None
        best = max(order, key=lambda k: (full[k], -order.index(k)))
        logger.info("tpe final selection: %d trials, %d combinations, %d fully scored; best %.1f", len(study.trials),
                    len(combos), len(full), full[best])
        return combos[best]
