"""The per-compile state and services of an instruction search.

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
from dspy_ext.lm.metering import CallMeter, find_budget_exhausted, lm_role
from dspy_ext.search.candidate import Candidate
from dspy_ext.search.guards import ProposalGuard, clean_proposal
from dspy_ext.search.regression import GuardVerdict, RegressionGuard, row_criteria
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
    """Everything one compile of an instruction search needs.

    Args:
        method: Name of the optimizer (logged on every trial).
        student: The program being optimized (never modified).
        trainset: Examples for proposals, demos and search scoring.
        valset: Examples for the final selection.
        metric: The task metric.
        models: Task and prompt LMs with their adapters.
        seed: Seeds the run's private RNG.
        base_seed: The compile's own seed (for components that seed their own generators).
        total_meter: The hard cap for the whole compile.
        search_meter: The cap for the search phase (the rest is kept for the final selection).
        minibatch_size: Examples per search minibatch.
        num_threads: Evaluation threads.
        guard: Proposal guard.
        meta_prompts: Signatures by role.
        trial_log: Where trials are logged.
        progress: A tqdm bar (or ``None``).
        regression: Regression guards (``None``: none); every scored candidate is checked against
            ``reference`` on the same rows, and one that breaks a guard is set aside.
        reference: The program the guards compare against (default: the student).
        repeats: Rollouts per row of every evaluation (selection uses the mean over them).
        temperature: Task-LM temperature of the evaluations (``None``: the LM's own).
    """

    def __init__(
        self,
        *,
        method: str,
        student: dspy.Module,
        trainset: list[dspy.Example],
        valset: list[dspy.Example],
        metric: Any,
        models: Models,
        seed: int,
        base_seed: int,
        total_meter: CallMeter,
        search_meter: CallMeter,
        minibatch_size: int,
        num_threads: int,
        guard: ProposalGuard,
        meta_prompts: dict[str, type[dspy.Signature]],
        trial_log: TrialLog,
        progress: Any = None,
        regression: RegressionGuard | None = None,
        reference: dspy.Module | None = None,
        repeats: int = 1,
        temperature: float | None = None,
    ) -> None:
        if repeats < 1:
            raise ValueError("repeats must be >= 1")
        self.method = method
        self.student = student
        self.trainset = trainset
        self.search_pool = list(trainset)
        self.valset = valset
        self.metric = metric
        self.models = models
        self.rng = random.Random(seed)
        self.base_seed = base_seed
        self.total_meter = total_meter
        self.search_meter = search_meter
        self.minibatch_size = minibatch_size
        self.evaluator = Evaluator(metric, num_threads=num_threads)
        self.guard = guard
        self.meta_prompts = meta_prompts
        self.trial_log = trial_log
        self.store = CandidateStore()
        self.progress = progress
        self.step = 0
        self.rejected: dict[str, int] = {}
        self.started = time.perf_counter()
        self.demo_sets: list[dict[str, tuple[dict[str, Any], ...]]] = []
        self.regression = regression
        self.reference = reference if reference is not None else student
        #: The reference as a candidate of the search (set once the labeled demo set exists), or ``None``.
        self.reference_candidate: Candidate | None = None
        self.repeats = repeats
        self.temperature = temperature
        #: The reference's per-row criteria (example key -> criterion -> 0-1), filled as rows are needed.
        self.reference_rows: dict[str, dict[str, float]] = {}
        self._reference_tried: set[str] = set()
        #: Candidates set aside by a guard, per criterion.
        self.guard_rejections: dict[str, int] = {}
        #: Why the reference's prompts were returned instead of the final choice (``None``: they were not).
        self.guard_fallback: str | None = None

    # ---- data -----------------------------------------------------------------------
    def minibatch(self, size: int | None = None) -> list[dspy.Example]:
        """A fresh minibatch of the search pool, drawn with the run's RNG."""
        return Evaluator.sample(self.search_pool, size or self.minibatch_size, self.rng)

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

        signature = dict(predictors(self.student))[name].signature
        return f"{', '.join(signature.input_fields)} -> {', '.join(signature.output_fields)}"

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
            step=self.step,
            split=split,
            running_mean=record.mean if split != "val" else report.score,
            **extra,
        )
        self._tick()
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
                    self.reference,
                    missing,
                    repeats=self.repeats,
                    temperature=self.temperature,
                    desc=f"{self.method}:reference",
                )
            rows = row_criteria(report, missing)
            if rows and not self.reference_rows and self.regression is not None:
                self.regression.validate(next(iter(rows.values())))
            self.reference_rows.update(rows)
            done = {example_key(missing[r.index]) for r in report.rows}
            self._reference_tried.update(done)
            exhausted = report.budget_exhausted
        keys = [example_key(ex) for ex in examples]
        return {k: self.reference_rows[k] for k in keys if k in self.reference_rows}, exhausted

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
        verdict = self.regression.check(self.reference_rows, rows)
        breaks = {name: round(c.drop, 4) for name, c in verdict.broken.items()}
        was_ok = record.guarded and record.val_guarded
        if split == "val":
            record.val_guard_breaks = breaks
        else:
            record.guard_breaks = breaks
        if breaks and was_ok:
            for name in breaks:
                self.guard_rejections[name] = self.guard_rejections.get(name, 0) + 1
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
                    self.rejected["lm_or_parse_error"] = self.rejected.get("lm_or_parse_error", 0) + 1
                    logger.info("%s proposal failed: %s", role, exc)
                    continue
                finally:
                    self._tick()
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
        reason = self.guard.check(text, truncated=proposal.truncated)
        if reason is None and self.store.seen_instruction(text) and text != parent.instruction(name):
            reason = "duplicate"
        if reason is None and text == parent.instruction(name):
            reason = "duplicate"
        if reason is not None:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1
            logger.debug("rejected (%s): %r", reason, text[:120])
            return None
        child = parent.with_instruction(name, text, origin=origin, parents=parents, **meta)
        if child.key in self.store:
            self.rejected["duplicate"] = self.rejected.get("duplicate", 0) + 1
            return None
        return child

    # ---- progress -------------------------------------------------------------------
    def _tick(self) -> None:
        if self.progress is None:
            return
        best = self.store.ranked()
        self.progress.n = self.total_meter.calls
        self.progress.set_postfix_str(
            f"best {best[0].mean:.0f}% (n={best[0].n_scored})" if best else "best -", refresh=False
        )
        self.progress.refresh()
