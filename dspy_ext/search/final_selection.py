"""The final choice of an instruction search: which (instruction set x demo set) is returned.

A :class:`FinalSelector` is passed to the search at construction
(``APE(metric, final_selector=CandidateTPE())``). Both implementations start
from the same contenders (:func:`final_contenders`: the search's leader, the
student's own instruction, then the next best instruction sets) and differ
only in how they spend the valset budget:

* :class:`SuccessiveHalving` (the default) scores every (contender x demo set)
  on the first valset rows and keeps the better half on twice as many rows,
  until the survivors are scored on the whole valset;
* :class:`CandidateTPE` lets Optuna's TPE pick (instruction, demo set) per
  predictor on valset minibatches, MIPROv2-style, and promotes the leaders to
  full-valset evaluations.

Rows already scored come from the evaluator's cache, so a selector pays only
for new rows; everything is charged to the search's LM-call budget.

Example:
    >>> from dspy_ext import APE
    >>> ape = APE(exact_match, final_selector=CandidateTPE(n_trials=12))   # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import logging
import math
import statistics
from typing import Any, Protocol, runtime_checkable

from dspy_ext.evaluation import example_key
from dspy_ext.search.candidate import Candidate, PredictorPrompt
from dspy_ext.search.run import SearchRun

logger = logging.getLogger(__name__)


@runtime_checkable
class FinalSelector(Protocol):
    """Chooses the returned program among the final contenders.

    ``select`` returns the chosen (instruction x demo set) :class:`Candidate`, or ``None`` when the
    budget ran out before any choice could be made (the search then returns its best candidate so far).
    """

    def select(self, run: SearchRun, seed_candidate: Candidate, contenders: list[Candidate]) -> Candidate | None:
        """Choose among ``contenders`` (instruction sets, leader first) x the run's demo sets."""
        ...


def final_contenders(run: SearchRun, seed_candidate: Candidate, limit: int) -> list[Candidate]:
    """The instruction sets carried into the final selection: the leader, the student's own, then the next best.

    Args:
        run: The search run (its store ranks the candidates).
        seed_candidate: The student's own prompts.
        limit: At most this many instruction sets (the student's is always among them).

    Returns:
        Distinct instruction sets, best first, with the student's second (or first, when it leads).
    """
    ranked = [r.candidate for r in run.store.ranked()]
    contenders: list[Candidate] = []
    for candidate in [*ranked[:1], seed_candidate, *ranked[1:]]:
        if all(candidate.instructions != c.instructions for c in contenders):
            contenders.append(candidate)
        if len(contenders) >= limit:
            break
    return contenders


def with_demo_set(candidate: Candidate, run: SearchRun, index: int, *, origin: str) -> Candidate:
    """``candidate``'s instructions with the run's demo set ``index`` on every predictor."""
    demo_set = run.demo_sets[index]
    return Candidate(
        {n: PredictorPrompt(p.instruction, index, demo_set.get(n, ())) for n, p in candidate.prompts.items()},
        candidate.parents,
        origin,
    )


class SuccessiveHalving:
    """Successive halving over (instruction set x demo set) on the valset.

    Every pair is scored on the first ``first_rows`` valset rows; the better
    half goes on to twice as many rows, until the survivors are scored on the
    whole valset. Pairs are met in priority order (rank of the instruction set +
    rank of the demo set), and ties keep that order. When the budget cannot
    pay for a round, the leader of the last finished round wins. A pair whose
    rows mostly failed (LM or metric errors), or that breaks a regression
    guard on the rows scored so far, ranks last and never leads.

    Args:
        first_rows: Valset rows of the first round (``None``: half the search's
            minibatch, at least 5).
    """

    def __init__(self, first_rows: int | None = None) -> None:
        if first_rows is not None and first_rows < 1:
            raise ValueError("first_rows must be >= 1")
        self.first_rows = first_rows

    def select(self, run: SearchRun, seed_candidate: Candidate, contenders: list[Candidate]) -> Candidate | None:
        pairs = sorted(itertools.product(range(len(contenders)), range(len(run.demo_sets))), key=lambda p: (sum(p), p))
        seen: set[str] = set()
        alive: list[Candidate] = []
        for c, d in pairs:
            combo = with_demo_set(contenders[c], run, d, origin=f"final:{contenders[c].origin}")
            if combo.key not in seen:
                seen.add(combo.key)
                alive.append(combo)
        n_val = len(run.valset)
        rows = min(n_val, self.first_rows or max(5, run.minibatch_size // 2))
        leader: Candidate | None = None
        while True:
            batch = run.valset[:rows]
            scores: dict[str, float] = {}
            for combo in alive:
                report = run.evaluate(combo, batch, split="val")
                if report.budget_exhausted:
                    return leader
                record = run.store.get(combo.key)
                record.val_score, record.val_n = report.score, rows
                scores[combo.key] = report.score if record.val_reliable and record.val_guarded else -math.inf
            alive.sort(key=lambda c: -scores[c.key])  # stable: ties keep priority order
            if scores[alive[0].key] > -math.inf:
                leader = alive[0]
            if rows >= n_val:
                return leader
            alive = alive[: max(2, math.ceil(len(alive) / 2))] if rows * 2 < n_val else alive[:2]
            rows = min(n_val, rows * 2)


class CandidateTPE:
    """Optuna TPE over (instruction index, demo-set index) for every predictor, MIPROv2-style.

    For every predictor Optuna gets a categorical *instruction index* (the
    student's own instruction first, then the contenders') and a *demo-set
    index* (the run's demo sets; set 0 is labeled-only), so instructions of
    different contenders can be combined across predictors.

    * each trial scores its combination on a random valset minibatch; a
      combination's value is its mean over every valset row it has been scored on;
    * every ``full_eval_steps`` trials, and at the end, the best combination by
      that mean that has not been scored on the whole valset is; the winner is the
      best full-valset score (ties: the earlier one);
    * the search's leader and the student's own prompt are the first two trials.

    Args:
        n_trials: TPE trials (``None``: three per combination, at most 30); the budget may end it earlier.
        minibatch_size: Valset rows per trial (``None``: the search's minibatch). With a valset no
            larger, every trial is a full evaluation.
        full_eval_steps: Full-valset evaluation of the leader every this many trials.
        seed: Seeds the sampler and the minibatches (``None``: the search's seed).
        n_startup_trials: Random trials before TPE models the results.
        storage: An Optuna storage (object or URL) to keep the selection's study in, e.g. to inspect it
            in optuna-dashboard (``None``: in memory, discarded).
        study_name: The study's name in ``storage`` (``None``: a unique one). A name can be used once.

    Example:
        >>> storage = optuna.storages.InMemoryStorage()                                       # doctest: +SKIP
        >>> APE(metric, final_selector=CandidateTPE(12, storage=storage, study_name="final"))  # doctest: +SKIP
        >>> optuna.load_study(study_name="final", storage=storage).best_params                # doctest: +SKIP
    """

    def __init__(
        self,
        n_trials: int | None = None,
        *,
        minibatch_size: int | None = None,
        full_eval_steps: int = 5,
        seed: int | None = None,
        n_startup_trials: int = 4,
        storage: Any = None,
        study_name: str | None = None,
    ) -> None:
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
        self.storage = storage
        self.study_name = study_name

    @staticmethod
    def pools(seed_candidate: Candidate, contenders: list[Candidate]) -> dict[str, list[str]]:
        """Instruction options per predictor: the student's first, then the contenders' in rank order."""
        ordered = [seed_candidate, *(c for c in contenders if c.instructions != seed_candidate.instructions)]
        pools: dict[str, list[str]] = {}
        for name in seed_candidate.prompts:
            options: list[str] = []
            for candidate in ordered:
                text = candidate.instruction(name)
                if text not in options:
                    options.append(text)
            pools[name] = options
        return pools

    def select(self, run: SearchRun, seed_candidate: Candidate, contenders: list[Candidate]) -> Candidate | None:
        import optuna

        names = list(seed_candidate.prompts)
        pools = self.pools(seed_candidate, contenders)
        n_sets = max(1, len(run.demo_sets))
        n_combos = 1
        for name in names:
            n_combos *= len(pools[name]) * n_sets
        n_trials = self.n_trials if self.n_trials is not None else min(30, 3 * n_combos)
        seed = run.base_seed if self.seed is None else self.seed
        mb = self.minibatch_size or run.minibatch_size
        valset = run.valset
        full_every_trial = mb >= len(valset)
        sampler = optuna.samplers.TPESampler(
            seed=seed, multivariate=True, n_startup_trials=min(self.n_startup_trials, n_trials)
        )
        study = optuna.create_study(
            direction="maximize", sampler=sampler, storage=self.storage, study_name=self.study_name
        )

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
        full: dict[str, float] = {}  # candidate key -> full-valset score (0-100)
        order: list[str] = []  # keys in order of full evaluation
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
            report = score(combos[key], valset)
            if report.budget_exhausted:
                return False
            record = run.store.get(key)
            record.val_score, record.val_n = report.score, len(valset)
            # A combination whose rows mostly failed, or that breaks a guard, is set aside: it can never win.
            full[key] = report.score if record.val_reliable and record.val_guarded else -math.inf
            order.append(key)
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
                report = score(candidate, run.rng.sample(list(valset), mb))
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
        if not full or max(full.values()) == -math.inf:
            return None
        best = max(order, key=lambda k: (full[k], -order.index(k)))
        logger.info(
            "tpe final selection: %d trials, %d combinations, %d fully scored; best %.1f",
            len(study.trials),
            len(combos),
            len(full),
            full[best],
        )
        return combos[best]
