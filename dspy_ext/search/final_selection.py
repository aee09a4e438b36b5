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
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import dspy

from dspy_ext.evaluation import example_key
from dspy_ext.evaluation.significance import paired_test
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
        pools = self.pools(seed_candidate, contenders)
        state = _TPESelection(run, pools, max(1, len(run.demo_sets)))
        n_trials = self.n_trials if self.n_trials is not None else min(30, 3 * state.n_combos)
        mb = self.minibatch_size or run.minibatch_size
        full_every_trial = mb >= len(run.valset)
        study = self._study(run, n_trials)
        ranked = run.store.ranked()
        if ranked:
            study.enqueue_trial(state.params_of(ranked[0].candidate))
        study.enqueue_trial(state.params_of(seed_candidate), skip_if_exists=True)
        exhausted = self._run_trials(study, state, n_trials, mb, full_every_trial, seed_candidate.key)
        if not exhausted and not full_every_trial:
            state.promote()
        return state.best(len(study.trials))

    def _study(self, run: SearchRun, n_trials: int) -> Any:
        import optuna

        sampler = optuna.samplers.TPESampler(
            seed=run.base_seed if self.seed is None else self.seed,
            multivariate=True,
            n_startup_trials=min(self.n_startup_trials, n_trials),
        )
        return optuna.create_study(
            direction="maximize", sampler=sampler, storage=self.storage, study_name=self.study_name
        )

    def _run_trials(
        self, study: Any, state: _TPESelection, n_trials: int, mb: int, full_every_trial: bool, seed_key: str
    ) -> bool:
        """Ask, score and tell up to ``n_trials`` trials; ``True`` when the budget ran out."""
        import optuna

        failed = optuna.trial.TrialState.FAIL
        for number in range(n_trials):
            if len(state.full) == state.n_combos:
                break
            trial = study.ask()
            candidate = state.suggest(trial, number, seed_key)
            key = candidate.key
            state.combos.setdefault(key, candidate)
            if full_every_trial:
                if key not in state.full and not state.full_eval(key):
                    study.tell(trial, state=failed)
                    return True
                study.tell(trial, state.full[key])
                continue
            report = state.score(candidate, state.run.rng.sample(list(state.run.valset), mb))
            if report.budget_exhausted:
                study.tell(trial, state=failed)
                return True
            study.tell(trial, state.mean(key))
            if (number + 1) % self.full_eval_steps == 0 and not state.promote():
                return True
        return False


class _TPESelection:
    """One TPE final selection's scores: per-row means of every combination, and the full-valset ones."""

    def __init__(self, run: SearchRun, pools: dict[str, list[str]], n_sets: int) -> None:
        self.run = run
        self.pools = pools
        self.names = list(pools)
        self.n_sets = n_sets
        self.n_combos = 1
        for name in self.names:
            self.n_combos *= len(pools[name]) * n_sets
        self.row_scores: dict[str, dict[str, float]] = {}  # candidate key -> example key -> score (0-1)
        self.full: dict[str, float] = {}  # candidate key -> full-valset score (0-100)
        self.order: list[str] = []  # keys in order of full evaluation
        self.combos: dict[str, Candidate] = {}

    def params_of(self, candidate: Candidate) -> dict[str, int]:
        """The trial parameters that make ``candidate`` (unknown instructions map to the student's)."""
        params = {}
        for i, name in enumerate(self.names):
            text = candidate.instruction(name)
            params[f"{i}_predictor_instruction"] = self.pools[name].index(text) if text in self.pools[name] else 0
            params[f"{i}_predictor_demos"] = min(candidate.prompts[name].demo_set, self.n_sets - 1)
        return params

    def suggest(self, trial: Any, number: int, seed_key: str) -> Candidate:
        """The combination trial ``number`` asks for."""
        prompts = {}
        for i, name in enumerate(self.names):
            ii = trial.suggest_categorical(f"{i}_predictor_instruction", list(range(len(self.pools[name]))))
            di = trial.suggest_categorical(f"{i}_predictor_demos", list(range(self.n_sets)))
            demos = self.run.demo_sets[di].get(name, ()) if self.run.demo_sets else ()
            prompts[name] = PredictorPrompt(self.pools[name][ii], di, demos)
        return Candidate(prompts, (seed_key,), "final:tpe", {"tpe_trial": number})

    def mean(self, key: str) -> float:
        return 100.0 * statistics.fmean(self.row_scores[key].values()) if self.row_scores.get(key) else 0.0

    def score(self, candidate: Candidate, examples: list) -> Any:
        report = self.run.evaluate(candidate, examples, split="val")
        seen = self.row_scores.setdefault(candidate.key, {})
        for row in report.scored:
            seen[example_key(examples[row.index])] = row.score
        return report

    def full_eval(self, key: str) -> bool:
        """Score ``key`` on the whole valset; ``False`` when the budget ran out."""
        valset = self.run.valset
        report = self.score(self.combos[key], valset)
        if report.budget_exhausted:
            return False
        record = self.run.store.get(key)
        record.val_score, record.val_n = report.score, len(valset)
        # A combination whose rows mostly failed, or that breaks a guard, is set aside: it can never win.
        self.full[key] = report.score if record.val_reliable and record.val_guarded else -math.inf
        self.order.append(key)
        return True

    def promote(self) -> bool:
        """Score the best combination by its mean that is not yet scored on the whole valset."""
        pending = [k for k in self.combos if k not in self.full]
        if not pending:
            return True
        combos = list(self.combos)
        best = max(pending, key=lambda k: (self.mean(k), -combos.index(k)))
        return self.full_eval(best)

    def best(self, n_trials: int) -> Candidate | None:
        """The best full-valset score (ties: the earlier one), or ``None`` when none can win."""
        full, order = self.full, self.order
        if not full or max(full.values()) == -math.inf:
            return None
        best = max(order, key=lambda k: (full[k], -order.index(k)))
        logger.info(
            "tpe final selection: %d trials, %d combinations, %d fully scored; best %.1f",
            n_trials,
            len(self.combos),
            len(full),
            full[best],
        )
        return self.combos[best]


@dataclass
class RaceLane:
    """One contender of an :class:`IncumbentRace`: its per-row val scores so far and why it was dropped."""

    candidate: Candidate
    val: list[float | None] = field(default_factory=list)
    dropped: str = ""

    @property
    def complete_rows(self) -> int:
        return len(self.val)

    @property
    def val_mean(self) -> float | None:
        scored = [s for s in self.val if s is not None]
        return 100.0 * sum(scored) / len(scored) if scored else None

    @property
    def screen(self) -> float:
        found = self.candidate.meta.get("screen")
        return found if found is not None else float("-inf")


class IncumbentRace:
    """A race on the valset against an incumbent that is never dropped; the result is never worse than it.

    The incumbent (``seed_candidate``) and the contenders are scored in rounds of ``race_rows``
    valset rows. After each round a contender is dropped when it can no longer reach the
    incumbent's score, or when a paired test (McNemar) says it is worse than the leader. Among the
    contenders scored on the whole valset and at least as good as the incumbent there, those not
    significantly worse than the best tie; of these the one whose ``meta["requested_k"]`` is
    ``preferred_k`` wins, else the best. A contender's ``meta["screen"]`` (a cheaper earlier score)
    breaks ties, and ``meta["race_log"]`` is added to its trial-log rows.

    After :meth:`select`, :attr:`lanes` holds every contender's rows (the incumbent first),
    :attr:`chosen` the winning lane's index, and :attr:`exhausted` whether the budget ran out.

    Args:
        race_rows: Valset rows per round.
        alpha: Significance level of the racing and final paired tests.
        preferred_k: The ``requested_k`` that wins among ties (0: no preference).
        rows: Race on the first ``rows`` valset rows only (``None``: the whole valset).
    """

    def __init__(
        self, *, race_rows: int = 10, alpha: float = 0.05, preferred_k: int = 0, rows: int | None = None
    ) -> None:
        if race_rows < 1:
            raise ValueError("race_rows must be >= 1")
        if rows is not None and rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        self.race_rows = race_rows
        self.alpha = alpha
        self.preferred_k = preferred_k
        self.rows = rows
        self.lanes: list[RaceLane] = []
        self.chosen = 0
        self.exhausted = False

    def select(self, run: SearchRun, seed_candidate: Candidate, contenders: list[Candidate]) -> Candidate | None:
        self.lanes = [RaceLane(c) for c in [seed_candidate, *contenders]]
        valset = run.valset[: self.rows] if self.rows is not None else run.valset
        self.exhausted = self._race(run, valset)
        self.chosen = self._choose(len(valset))
        return self.lanes[self.chosen].candidate

    def _race(self, run: SearchRun, valset: list) -> bool:
        """Score the lanes on ``valset`` in rounds, dropping losers; ``True`` when the budget ran out."""
        n_val = len(valset)
        programs = [lane.candidate.apply(run.student) for lane in self.lanes]
        for start in range(0, n_val, self.race_rows):
            rows = valset[start : start + self.race_rows]
            for lane, program in zip(self.lanes, programs):
                if lane.dropped:
                    continue
                if not self._score(run, lane, program, rows, step=1 + start // self.race_rows):
                    logger.warning(
                        "%s: LM-call budget of %d used up while confirming on val",
                        run.method,
                        run.total_meter.max_calls,
                    )
                    return True
            self._drop_losers(remaining=n_val - start - len(rows))
        return False

    def _score(self, run: SearchRun, lane: RaceLane, program: Any, rows: list, *, step: int) -> bool:
        """Score ``lane`` on one round's ``rows`` and log it; ``False`` when the budget ran out."""
        with dspy.context(lm=run.models.task_lm, adapter=run.models.task_adapter):
            report = run.evaluator.evaluate(
                program, rows, repeats=run.repeats, temperature=run.temperature, desc=f"{run.method}:val"
            )
        if report.budget_exhausted:
            return False
        lane.val.extend(report.example_scores)
        record, _ = run.store.add(lane.candidate)
        record.val_score, record.val_n = lane.val_mean, lane.complete_rows
        run.trial_log.record(
            lane.candidate,
            report,
            method=run.method,
            step=step,
            split="val",
            running_mean=lane.val_mean,
            **lane.candidate.meta.get("race_log", {}),
            rows_so_far=lane.complete_rows,
        )
        run.tick()
        return True

    def _drop_losers(self, *, remaining: int) -> None:
        lanes, incumbent = self.lanes, self.lanes[0]
        alive = [a for a in lanes if not a.dropped]
        leader = max(alive, key=lambda a: (a.val_mean or 0.0, -lanes.index(a)))
        for lane in alive:
            if lane is incumbent:
                continue
            if None not in lane.val and None not in incumbent.val and sum(lane.val) + remaining < sum(incumbent.val):  # type: ignore[arg-type]
                lane.dropped = "cannot reach the incumbent's val score"
            elif lane is not leader:
                test = paired_test(lane.val, leader.val, alpha=self.alpha)
                if test.significant and test.diff < 0:
                    lane.dropped = f"worse than the leader (p={test.p_value:.3g} on {test.n} rows)"

    def _choose(self, n: int) -> int:
        """The index of the winning lane (the choice rule of the class docstring; the incumbent by default)."""
        lanes, incumbent = self.lanes, self.lanes[0]
        if incumbent.val_mean is None or incumbent.complete_rows < n:
            return 0  # nothing can be shown to be at least as good on the whole valset
        done = [a for a in lanes if not a.dropped and a.complete_rows == n and a.val_mean is not None]
        eligible = [a for a in done if a.val_mean >= incumbent.val_mean]  # type: ignore[operator]
        best = max(eligible, key=lambda a: (a.val_mean, a.screen))
        tied = [
            a
            for a in eligible
            if a is best or not ((test := paired_test(a.val, best.val, alpha=self.alpha)).significant and test.diff < 0)
        ]
        preferred_k = self.preferred_k

        def rank(lane: RaceLane) -> tuple:
            requested = lane.candidate.meta.get("requested_k")
            return (preferred_k > 0 and requested == preferred_k, lane.val_mean, lane.screen, -lanes.index(lane))

        return lanes.index(max(tied, key=rank))
