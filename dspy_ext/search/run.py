"""The per-compile state and services of a dspy-ext search.

A :class:`SearchRun` lives for exactly one ``compile`` call, so optimizers keep
no state on ``self``. It owns the RNG, the budget meters, the evaluator and its
score cache, the candidate store, the trial log and the demo sets, and offers
the two services every method needs: *score candidates* and *ask the prompt
model for instructions*.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dspy

from dspy_ext.evaluation import EvaluationReport, Evaluator, example_key
from dspy_ext.lm.engine import pop_finish_reason
from dspy_ext.lm.metering import MAX_FAILURES_IN_A_ROW, CallMeter, find_budget_exhausted, lm_role
from dspy_ext.search.candidate import Candidate
from dspy_ext.search.demos import DemoSet
from dspy_ext.search.options import CompileOptions
from dspy_ext.search.proposal_filter import ProposalFilter, clean_proposal
from dspy_ext.search.reasons import Rejection
from dspy_ext.search.regression import GuardVerdict, RegressionGuard, is_sampled, row_criteria
from dspy_ext.search.store import CandidateRecord, CandidateStore
from dspy_ext.search.trial_log import TrialLog

logger = logging.getLogger(__name__)


#: Token cap of a proposal; a longer one is cut off, and cut-off proposals are never adopted.
PROPOSAL_MAX_TOKENS = 150


class SearchStopped(Exception):
    """The search phase must stop (its share of the budget is used up)."""


@dataclass(frozen=True)
class Proposal:
    """One reply of the prompt model to a meta-prompt.

    Attributes:
        text: The proposed instruction as the model wrote it (not yet cleaned).
        truncated: ``True`` if the model stopped at the token cap (a cut-off proposal is never
            adopted), ``False`` if it stopped by itself, ``None`` if the LM does not say.
        role: The meta-prompt role that produced it (``induce``, ``paraphrase``, ...).
    """

    text: str
    truncated: bool | None
    role: str


@dataclass
class Models:
    """The LMs and adapters of a run."""

    task_lm: dspy.BaseLM
    task_adapter: dspy.Adapter | None
    prompt_lm: dspy.BaseLM
    prompt_adapter: dspy.Adapter | None

    @classmethod
    def resolve(
        cls, task_model: dspy.BaseLM | None, prompt_model: dspy.BaseLM | None, *, method: str, max_lm_calls: int
    ) -> Models:
        """The compile's LMs (defaults: ``dspy.settings.lm``) with their adapters; warns when a cap cannot hold.

        Raises:
            ValueError: No task LM is given or configured.
        """
        from dspy_ext.adapters import default_adapter
        from dspy_ext.lm.engine import MeteredEngine
        from dspy_ext.lm.served import metered_lm

        given = task_model or dspy.settings.lm
        if given is None:
            raise ValueError("no task LM: pass task_model= or dspy.configure(lm=...)")
        # A dspy.LM on DSPy's own engines (an API or served model) is metered through a ServedEngine copy.
        task_lm = metered_lm(given)
        prompt_lm = task_lm if prompt_model is None or prompt_model is given else metered_lm(prompt_model)
        unmetered = sorted(
            {lm.model for lm in (task_lm, prompt_lm) if not isinstance(getattr(lm, "engine", None), MeteredEngine)}
        )
        if unmetered:
            # Calls are counted in the engine; DSPy's built-in engines do not report to dspy-ext's meters.
            logger.warning(
                "%s: %s do(es) not run on a dspy-ext engine: max_lm_calls=%d is not enforced and "
                "calls are not counted for it",
                method,
                ", ".join(unmetered),
                max_lm_calls,
            )
        return cls(
            task_lm=task_lm,
            task_adapter=dspy.settings.adapter or default_adapter(task_lm),
            prompt_lm=prompt_lm,
            prompt_adapter=dspy.settings.adapter or default_adapter(prompt_lm),
        )


class SearchRun:
    """Everything one compile of a dspy-ext search needs.

    The compile's inputs and services (``student``, ``trainset``, ``valset``, ``metric``, ``models``,
    ``rng``, the meters, ``evaluator``, ``store``, ``trial_log``, ``regression``) are set here and only
    read afterwards. What the compile learns as it goes (the step, the demo sets, the search pool, the
    guards' reference, the rejections, whether the budget ran out) is private: it changes through
    the methods below and is read through properties.

    Args:
        options: The shared settings (budget, seed, threads, rollouts, guards, log folder, progress bar).
        method: Name of the optimizer (logged on every trial).
        student: The program being optimized (never modified).
        trainset: Examples for proposals, demos and search scoring.
        valset: Examples for the final selection.
        metric: The task metric.
        models: Task and prompt LMs with their adapters.
        seed: Seeds the run's private RNG.
        proposal_filter: Rejects empty, cut-off, over-long and leaking proposals.
        meta_prompts: Signatures by role.
        minibatch_size: Examples per search minibatch.
        search_cap: LM calls of the search phase (the rest is kept for the final selection);
            ``None``: the search may spend the whole budget.
        trial_log: Where trials are logged (default: a fresh log in ``options.log_dir``, else in memory).

    With guards in ``options``, every scored candidate is checked against the reference (the
    student, or ``options.guard_reference``) on the same rows, and one that breaks a guard is set aside.
    """

    def __init__(
        self,
        options: CompileOptions,
        *,
        method: str,
        student: dspy.Module,
        trainset: list[dspy.Example],
        valset: list[dspy.Example],
        metric: Any,
        models: Models,
        seed: int,
        proposal_filter: ProposalFilter,
        meta_prompts: dict[str, type[dspy.Signature]],
        minibatch_size: int,
        search_cap: int | None = None,
        trial_log: TrialLog | None = None,
    ) -> None:
        self.options = options
        self.method = method
        self.student = student
        self.trainset = trainset
        self.valset = valset
        self.metric = metric
        self.models = models
        self.rng = random.Random(seed)
        self.base_seed = options.seed
        self.total_meter = CallMeter(options.max_lm_calls, max_failures_in_a_row=MAX_FAILURES_IN_A_ROW)
        self.search_meter = CallMeter(search_cap) if search_cap is not None else self.total_meter
        self.minibatch_size = minibatch_size
        self.evaluator = Evaluator(metric, num_threads=options.num_threads)
        self._proposal_filter = proposal_filter
        self.meta_prompts = meta_prompts
        self.trial_log = (
            trial_log if trial_log is not None else TrialLog.fresh(options.trial_log_path, meter=self.total_meter)
        )
        self.store = CandidateStore()
        self.repeats = options.eval_repeats
        self.temperature = options.eval_temperature
        self.regression = (
            RegressionGuard(
                options.guards,
                stochastic=is_sampled(models.task_lm, options.eval_temperature) or self.repeats > 1,
                seed=options.seed,
            )
            if options.guards
            else None
        )
        self._progress = _progress_bar(options, method)
        self._init_state(options.guard_reference if options.guard_reference is not None else student)

    def _init_state(self, reference: dspy.Module) -> None:
        self._started = time.perf_counter()
        self._step = 0
        self._search_pool: list[dspy.Example] = list(self.trainset)
        self._demo_sets: list[DemoSet] = []
        self._rejected: dict[str, int] = {}
        self._exhausted = False
        self._outcome: dict[str, Any] = {}
        self._reference = reference
        self._reference_candidate: Candidate | None = None
        self._reference_rows: dict[str, dict[str, float]] = {}
        self._reference_tried: set[str] = set()
        self._guard_rejections: dict[str, int] = {}
        self._guard_fallback: str | None = None

    # ---- what the compile has learned (read) ----------------------------------------------
    @property
    def started(self) -> float:
        """``time.perf_counter()`` when the run was made."""
        return self._started

    @property
    def step(self) -> int:
        """The search step under way (0: the initial candidates); logged on every trial."""
        return self._step

    @property
    def search_pool(self) -> list[dspy.Example]:
        """The training rows search minibatches are drawn from (those not used as labeled demos)."""
        return list(self._search_pool)

    @property
    def demo_sets(self) -> tuple[DemoSet, ...]:
        """The demo sets built for the search (set 0 is the labeled one)."""
        return tuple(self._demo_sets)

    @property
    def rejected(self) -> dict[str, int]:
        """How many proposals (or demo sets) were set aside, by :class:`Rejection` value."""
        return dict(self._rejected)

    @property
    def exhausted(self) -> bool:
        """Whether a budget ran out during the compile (the whole compile's cap included)."""
        return self._exhausted or self.total_meter.exhausted

    @property
    def outcome(self) -> dict[str, Any]:
        """Result fields a method reported with :meth:`report` (merged into its result)."""
        return dict(self._outcome)

    @property
    def reference(self) -> dspy.Module:
        """The program the guards compare against."""
        return self._reference

    @property
    def reference_candidate(self) -> Candidate | None:
        """The reference as a candidate of the search (set once the labeled demo set exists), or ``None``."""
        return self._reference_candidate

    @property
    def reference_rows(self) -> dict[str, dict[str, float]]:
        """The reference's per-row criteria (example key -> criterion -> 0-1), filled as rows are needed."""
        return dict(self._reference_rows)

    @property
    def guard_rejections(self) -> dict[str, int]:
        """Candidates set aside by a guard, per criterion."""
        return dict(self._guard_rejections)

    @property
    def guard_fallback(self) -> str | None:
        """Why the reference's prompts were returned instead of the final choice (``None``: they were not)."""
        return self._guard_fallback

    # ---- what the compile has learned (change) ----------------------------------------------
    def begin_step(self, step: int) -> None:
        """Start search step ``step`` (1-based; the trials logged from now on carry it)."""
        self._step = step

    def add_demo_set(self, demo_set: DemoSet) -> None:
        """Add a demo set (its index is the number of sets before it)."""
        self._demo_sets.append(demo_set)

    def set_search_pool(self, pool: Sequence[dspy.Example]) -> None:
        """Draw search minibatches from ``pool`` from now on."""
        self._search_pool = list(pool)

    def reject(self, reason: Rejection | str) -> None:
        """Count one proposal (or demo set) set aside for ``reason``."""
        key = Rejection(reason).value
        self._rejected[key] = self._rejected.get(key, 0) + 1

    def mark_exhausted(self) -> None:
        """Record that a budget ran out (the result says ``budget_exhausted``)."""
        self._exhausted = True

    def report(self, **fields: Any) -> None:
        """Fields of the method's result (e.g. DemoSearch's ``k``), kept until the result is made."""
        self._outcome.update(fields)

    def set_reference(self, candidate: Candidate) -> None:
        """Make ``candidate``'s prompts on the student the guards' reference."""
        self._reference = candidate.apply(self.student)
        self._reference_candidate = candidate

    def fall_back(self, reason: str) -> None:
        """Record why the reference's prompts are returned instead of the final choice."""
        self._guard_fallback = reason

    def close(self) -> None:
        """Close the progress bar (if any)."""
        if self._progress is not None:
            self._progress.close()

    # ---- data -----------------------------------------------------------------------
    def minibatch(self, size: int | None = None) -> list[dspy.Example]:
        """A fresh minibatch of the search pool, drawn with the run's RNG."""
        return Evaluator.sample(self._search_pool, size or self.minibatch_size, self.rng)

    def predictor_names(self) -> list[str]:
        from dspy_ext.prompt_state import predictors

        return [name for name, _ in predictors(self.student)]

    def target(self, step: int) -> str:
        """The predictor whose instruction step ``step`` changes (round robin)."""
        names = self.predictor_names()
        return names[step % len(names)]

    def step_description(self, name: str) -> str:
        """``"input -> output"`` for predictor ``name`` (what its instruction maps)."""
        from dspy_ext.prompt_state import predictors
        from dspy_ext.search.typical import signature_step

        return signature_step(dict(predictors(self.student))[name].signature)

    # ---- scoring --------------------------------------------------------------------
    def evaluate(
        self, candidate: Candidate, examples: Sequence[dspy.Example], *, split: str, meter: CallMeter | None = None
    ) -> EvaluationReport:
        """Evaluate one candidate on ``examples`` with the task model and log the trial."""
        program = candidate.apply(self.student)
        with dspy.context(lm=self.models.task_lm, adapter=self.models.task_adapter):
            report = self.evaluator.evaluate(
                program,
                examples,
                repeats=self.repeats,
                temperature=self.temperature,
                meter=meter,
                desc=f"{self.method}:{split}",
            )
        record, _ = self.store.add(candidate)
        if split != "val":
            ran = {row.index for row in report.rows}
            # With repeats, an example's score is its mean over the repeats that were scored.
            for index, score in enumerate(report.example_scores):
                if index not in ran:
                    continue
                key = example_key(examples[index])
                if score is None:
                    if key not in record.train_scores:
                        record.failed_rows.add(key)
                else:
                    record.train_scores[key] = score
                    record.failed_rows.discard(key)
            if not record.reliable:
                logger.info(
                    "%s: candidate %s set aside: %d of its %d rows failed",
                    self.method,
                    candidate.key,
                    len(record.failed_rows),
                    len(record.failed_rows) + record.n_scored,
                )
        else:
            record.val_reliable = 2 * len(report.scored) >= len(report.rows)
        extra: dict[str, Any] = {}
        if self.regression is not None and report.scored:
            verdict = self._check_guards(record, examples, report, split)
            if verdict is not None:
                extra["guard"] = verdict.to_log()
        if "gradient_source" in candidate.meta:
            # A candidate made from a reviewer's critique says so in the trial log (only with feedback).
            extra.update({k: candidate.meta[k] for k in ("gradient", "gradient_source") if k in candidate.meta})
        self.trial_log.record(
            candidate,
            report,
            method=self.method,
            step=self._step,
            split=split,
            running_mean=record.mean if split != "val" else report.score,
            **extra,
        )
        self.tick()
        return report

    # ---- regression guards ------------------------------------------------------------
    def reference_criteria(self, examples: Sequence[dspy.Example]) -> tuple[dict[str, dict[str, float]], bool]:
        """The reference program's per-row criteria on ``examples`` (scored once per row, then cached).

        Returns:
            The rows it could be scored on, and whether the budget ran out while scoring it.
        """
        missing = [ex for ex in examples if example_key(ex) not in self._reference_tried]
        exhausted = False
        if missing:
            with dspy.context(lm=self.models.task_lm, adapter=self.models.task_adapter):
                report = self.evaluator.evaluate(
                    self._reference,
                    missing,
                    repeats=self.repeats,
                    temperature=self.temperature,
                    desc=f"{self.method}:reference",
                )
            rows = row_criteria(report, missing)
            if rows and not self._reference_rows and self.regression is not None:
                self.regression.validate(next(iter(rows.values())))
            self._reference_rows.update(rows)
            done = {example_key(missing[r.index]) for r in report.rows}
            self._reference_tried.update(done)
            exhausted = report.budget_exhausted
        keys = [example_key(ex) for ex in examples]
        return {k: self._reference_rows[k] for k in keys if k in self._reference_rows}, exhausted

    def _check_guards(
        self, record: CandidateRecord, examples: Sequence[dspy.Example], report: EvaluationReport, split: str
    ) -> GuardVerdict | None:
        """Check ``record`` against the reference on every row of ``split`` it has been scored on."""
        assert self.regression is not None
        rows = record.val_criteria if split == "val" else record.train_criteria
        rows.update(row_criteria(report, examples))
        _, exhausted = self.reference_criteria(examples)
        if exhausted:
            report.budget_exhausted = True  # the callers stop as they would for the candidate's own rows
        verdict = self.regression.check(self._reference_rows, rows)
        breaks = {name: round(c.drop, 4) for name, c in verdict.broken.items()}
        was_ok = record.guarded and record.val_guarded
        if split == "val":
            record.val_guard_breaks = breaks
        else:
            record.guard_breaks = breaks
        if breaks and was_ok:
            for name in breaks:
                self._guard_rejections[name] = self._guard_rejections.get(name, 0) + 1
            logger.info(
                "%s: candidate %s set aside by a guard (%s): %s",
                self.method,
                record.candidate.key,
                split,
                verdict.describe(),
            )
        return verdict

    def score(
        self, candidates: Sequence[Candidate], examples: Sequence[dspy.Example] | None = None, *, split: str = "train"
    ) -> list[CandidateRecord]:
        """Score candidates on a minibatch (the same one for all); stop the search when the budget is gone.

        Returns:
            Their records (accumulated means over every example seen).

        Raises:
            SearchStopped: When the search budget runs out (finished rows are kept).
        """
        batch = list(examples) if examples is not None else self.minibatch()
        records = []
        for candidate in candidates:
            report = self.evaluate(candidate, batch, split=split)
            records.append(self.store.get(candidate.key))
            if report.budget_exhausted:
                raise SearchStopped("search budget used up")
        return records

    # ---- proposals ------------------------------------------------------------------
    def ask(self, role: str, n: int, *, temperature: float = 1.0, **inputs: str) -> list[Proposal]:
        """Run meta-prompt ``role`` ``n`` times on the prompt model; return the proposals.

        Each sample gets its own seed from the run's RNG, so samples differ and
        the same run seed reproduces them (and DSPy's cache keys them apart).

        Raises:
            SearchStopped: When the budget runs out.
        """
        signature = self.meta_prompts[role]
        predict = dspy.Predict(signature)
        output = next(iter(signature.output_fields))
        proposals = []
        with dspy.context(lm=self.models.prompt_lm, adapter=self.models.prompt_adapter), lm_role("prompt"):
            for _ in range(n):
                seed = self.rng.randrange(2**31)
                pop_finish_reason()
                try:
                    prediction = predict(
                        **inputs, config={"temperature": temperature, "seed": seed, "max_tokens": PROPOSAL_MAX_TOKENS}
                    )
                except Exception as exc:
                    if find_budget_exhausted(exc) is not None:
                        raise SearchStopped("search budget used up") from exc
                    self.reject(Rejection.LM_OR_PARSE_ERROR)
                    logger.info("%s proposal failed: %s", role, exc)
                    continue
                finally:
                    self.tick()
                finish = pop_finish_reason()
                truncated = None if finish is None else finish == "length"
                proposals.append(Proposal(str(prediction.get(output) or ""), truncated, role))
        return proposals

    def admit(
        self,
        proposal: Proposal,
        parent: Candidate,
        name: str,
        *,
        origin: str,
        parents: tuple[str, ...] | None = None,
        **meta: Any,
    ) -> Candidate | None:
        """Turn a proposal into a new candidate, or ``None`` if it is rejected or a duplicate."""
        text = clean_proposal(proposal.text)
        reason = self._proposal_filter.check(text, truncated=proposal.truncated)
        if reason is None and self.store.seen_instruction(text) and text != parent.instruction(name):
            reason = Rejection.DUPLICATE
        if reason is None and text == parent.instruction(name):
            reason = Rejection.DUPLICATE
        if reason is not None:
            self.reject(reason)
            logger.debug("rejected (%s): %r", reason, text[:120])
            return None
        child = parent.with_instruction(name, text, origin=origin, parents=parents, **meta)
        if child.key in self.store:
            self.reject(Rejection.DUPLICATE)
            return None
        return child

    # ---- progress -------------------------------------------------------------------
    def tick(self) -> None:
        """Update the progress bar (if any): calls used and the best candidate's score."""
        if self._progress is None:
            return
        best = self.store.ranked()
        self._progress.n = self.total_meter.calls
        self._progress.set_postfix_str(
            f"best {best[0].mean:.0f}% (n={best[0].n_scored})" if best else "best -", refresh=False
        )
        self._progress.refresh()


def _progress_bar(options: CompileOptions, method: str) -> Any:
    if not options.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=options.max_lm_calls, desc=method, unit="call")
