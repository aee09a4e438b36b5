"""DemoSearch: searches which labeled demos, and how many, a small task model gets.

On a 135M model the labeled demos decide most of the score, and a 135M
proposer writes noise. DemoSearch therefore keeps the human instruction and
searches what the model can use:

1. **Candidates.** The human instruction x labeled demo sets: for each
   ``k`` in ``demo_counts`` (3, 8, 16 by default), ``draws_per_count`` draws,
   class-balanced and interleaved when the output takes a closed label set
   (:func:`~dspy_ext.data.demos.balanced_demos`), each cut to fit the context
   window. Labeled demos cost no LM call to build. With a ``prompt_model``,
   ``instructions`` generated instructions join as an extra option; with
   ``grounded=True``, so does the human instruction with the constraints code
   reads off the training outputs (label set, word count, casing).
2. **Screening** without generation: each candidate's likelihood score on the
   first ``screen_rows`` validation rows (the probability of the gold label
   among the labels for a closed set, else the mean log-probability per token
   of the gold reply; one forward pass per row, see
   :class:`~dspy_ext.evaluation.LikelihoodEvaluator`). An LM that cannot score,
   or a program with several predictors, is screened by generated accuracy
   instead; the result says so (``screening``, ``screening_note``). An LM that
   stops scoring midway (a served endpoint that refuses a scoring request after
   its probe passed) switches the screen to accuracy, and the arms already
   screened by likelihood are screened again by accuracy.
   ``screen_by="accuracy"`` forces the latter (the ablation of the score function).
   ``screen_by="blend"`` screens each arm on the same rows both ways and ranks by generated
   accuracy, the likelihood score breaking ties (accuracy on 20 rows moves in 5-point steps); where
   likelihood cannot be computed it falls back to accuracy alone, with the same note.
3. **Confirmation** by generated accuracy on the whole valset: the incumbent
   (the human instruction with ``incumbent_demos`` random labeled demos, the
   same draw as the honest baseline of ``dspy-ext compile``), the
   ``confirm_top`` best-screened candidates and the best-screened candidate
   with ``preferred_k`` demos race in rounds of ``race_rows`` rows. A
   contender is dropped when it can no longer reach the incumbent's score or
   a paired test (McNemar) says it is worse than the leader. The incumbent is
   never dropped.
4. **Choice.** Among the contenders scored on the whole valset and at least
   as good as the incumbent there (so the result is never worse than the
   incumbent on val), those not significantly worse than the best; of these
   the one with ``preferred_k`` demos, else the best. ``preferred_k`` encodes
   the measured prior that 16 demos win on small models when val cannot tell.
   Steps 3 and 4 are :class:`~dspy_ext.search.final_selection.IncumbentRace`.

5. **Answer rules.** For every predictor whose output takes a closed label set (a ``Literal`` field, or
   training outputs with few distinct values), the ``answer_top`` best-screened demo sets also race with
   each rule of ``answer_rules`` besides free generation: ``constrained`` (the allowed label with the
   highest likelihood) and ``calibrated`` (constrained, divided by the prompt's label bias on content-free
   inputs: contextual calibration, three forward passes per predictor, taken from the screen's share).
   The same race chooses; a multi-predictor program gets a rule per such predictor. The rule rides on the
   predictor's own LM (:mod:`dspy_ext.lm.answer_rule`), so ``program.save`` keeps it and DSPy applies it
   after ``program.load(path, allow_unsafe_lm_state=True)``. A served model that cannot score labels but
   generates under a JSON-schema enum gets the constrained rule only; the result says so
   (``answer_note``). The result says which rule won (``answers``, ``decoding``, ``calibration``).

``max_lm_calls`` is a hard cap on every call, forward passes included.

Example:
    >>> optimizer = DemoSearch(exact_match, max_lm_calls=400, seed=0)        # doctest: +SKIP
    >>> compiled = optimizer.compile(student, trainset=train, valset=val)   # doctest: +SKIP
    >>> result = compile_record(compiled).search                           # doctest: +SKIP
    >>> result.k, result.val_score                                          # doctest: +SKIP
    (16, 72.0)
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import dspy
from pydantic import Field, field_validator

from dspy_ext.data.demos import balanced_demos
from dspy_ext.data.grounding import grounded_instruction
from dspy_ext.evaluation.calibration import CONTENT_FREE_INPUTS
from dspy_ext.evaluation.likelihood import LikelihoodEvaluator, LikelihoodReport
from dspy_ext.lm.answer_rule import AnswerMode
from dspy_ext.lm.likelihood import LikelihoodUnavailable, likelihood_engine
from dspy_ext.lm.metering import BudgetExhausted, CallMeter, metering
from dspy_ext.prompt_state import demo_to_dict, predictors
from dspy_ext.search.answers import AnswerTarget, answer_modes, answer_targets, answer_variant
from dspy_ext.search.base import SearchResult, format_pairs
from dspy_ext.search.candidate import Candidate, PredictorPrompt
from dspy_ext.search.config import OptimizerConfig, distinct_demo_counts, tunable
from dspy_ext.search.context import demo_set_context_fit, fitting_demo_set
from dspy_ext.search.demo_start import baseline_draw
from dspy_ext.search.demos import DemoSet, closed_label_set
from dspy_ext.search.final_selection import IncumbentRace, RaceLane
from dspy_ext.search.options import Capabilities, CompileOptions, GuardMode, MetricForm
from dspy_ext.search.plan import CallPlan, MetaPromptCalls, PlanInputs
from dspy_ext.search.run import SearchRun, SearchStopped
from dspy_ext.search.teleprompter import SearchTeleprompter

logger = logging.getLogger(__name__)

__all__ = ["DemoSearch", "DemoSearchConfig", "DemoSearchResult"]


class DemoSearchConfig(OptimizerConfig):
    """DemoSearch's settings.

    Attributes:
        demo_counts: The numbers of demos ``k`` to try (each cut to fit the context).
        draws_per_count: Demo sets drawn per ``k``.
        preferred_k: Among contenders that val cannot tell apart, the one with this many demos wins
            (0: no preference, the best val score wins).
        incumbent_demos: Random labeled demos of the incumbent (the honest baseline draws 3).
        screen_rows: Validation rows of the likelihood screen.
        confirm_top: Best-screened candidates confirmed by generated accuracy (besides the incumbent
            and the best-screened candidate with ``preferred_k`` demos).
        confirm_share: Largest share of the budget kept for the confirmation.
        race_rows: Validation rows per racing round.
        alpha: Significance level of the racing and final paired tests.
        max_prompt_tokens: Context window the demos must fit, with room for the reply (SmolLM2 was
            trained on 2048 tokens); the engine's own window applies if smaller.
        reply_tokens: Tokens kept free for the reply when fitting demos.
        instructions: Instructions generated by the ``prompt_model`` (only when one is given).
        screen_by: ``"likelihood"`` (the default; falls back to accuracy where it cannot be computed),
            ``"accuracy"`` (generated accuracy on the screen rows: measures what the likelihood screen adds)
            or ``"blend"`` (both on the same rows: ranked by accuracy, ties broken by likelihood; costs both
            screens' calls; falls back to accuracy where likelihood cannot be computed).
        screen_on: Where the screen's ``screen_rows`` rows come from. ``"val"``: the first validation
            rows, which the race on val scores again. ``"train"``: for each arm, training rows it does not
            show as demos (a fixed seeded order, topped up with validation rows if too few are left), so
            the choice rests on ``screen_rows`` labeled rows besides the valset, at the same cost.
        answer_rules: The answer rules raced for predictors with a closed label set (``"free"`` always
            races; ``("free",)`` turns the dimension off).
        answer_top: Best-screened demo sets that race with each answer rule besides free generation.
        grounded: Also screen the incumbent's and each ``k``'s first demo set under the human instruction
            with constraints read off the training outputs appended (label set, word count, casing;
            :func:`~dspy_ext.data.grounding.grounded_instruction`). Off by default: it did not help on
            the public tasks (``docs/benchmarks.md``, ablation).
    """

    demo_counts: tuple[int, ...] = Field(default=(3, 8, 16), min_length=1)
    draws_per_count: int = tunable(3, ge=1, tune={"int": [1, 4]})
    preferred_k: int = tunable(16, ge=0, tune=[0, 8, 16])
    incumbent_demos: int = Field(default=3, ge=0)
    screen_rows: int = tunable(20, ge=1, tune=[10, 20, 30])
    confirm_top: int = tunable(2, ge=1, tune={"int": [1, 4]})
    confirm_share: float = Field(default=0.5, gt=0.0, lt=1.0)
    race_rows: int = Field(default=10, ge=1)
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)
    max_prompt_tokens: int = Field(default=2048, ge=64)
    reply_tokens: int = Field(default=64, ge=1)
    instructions: int = Field(default=0, ge=0)
    screen_by: Literal["likelihood", "accuracy", "blend"] = "likelihood"
    screen_on: Literal["val", "train"] = "val"
    answer_rules: tuple[Literal["free", "constrained", "calibrated"], ...] = ("free", "constrained", "calibrated")
    answer_top: int = Field(default=1, ge=0)
    grounded: bool = False

    @field_validator("answer_rules")
    @classmethod
    def _known_rules(cls, rules: tuple[str, ...]) -> tuple[str, ...]:
        if "free" not in rules:
            raise ValueError(f"answer_rules must include 'free' (the incumbent answers freely), got {list(rules)}")
        return tuple(dict.fromkeys(rules))

    @property
    def rule_modes(self) -> tuple[AnswerMode, ...]:
        """The answer rules besides free generation."""
        return tuple(AnswerMode(r) for r in self.answer_rules if r != "free")

    @field_validator("demo_counts")
    @classmethod
    def _distinct_counts(cls, counts: tuple[int, ...]) -> tuple[int, ...]:
        return distinct_demo_counts(counts)


@dataclass
class DemoSearchResult(SearchResult):
    """:class:`~dspy_ext.search.SearchResult` with what DemoSearch chose.

    Attributes:
        k: Demos per predictor of the returned program.
        balanced: Its demos were drawn class-balanced (closed label set).
        decoding: ``"generate"`` (free generation) or ``"likelihood"`` (a constrained or calibrated rule).
        calibration: ``"off"`` or ``"contextual"`` (a calibrated rule).
        answers: The chosen answer rule per predictor (``"free"``, ``"constrained"``, ``"calibrated"``).
        answer_note: Why an answer rule was not raced (empty otherwise).
        screening: The screen that ran: ``"likelihood"``, ``"blend"`` or ``"accuracy"`` (chosen, or the
            fallback).
        screening_note: Why the fallback was used (empty otherwise).
        label_set: The closed label set read off the training outputs, if any.
        chose_incumbent: The incumbent (human instruction, random labeled demos) was kept.
        racing: Per contender: screen score, val rows scored, val score, and why it was dropped.
    """

    k: int = 0
    balanced: bool = False
    decoding: str = "generate"
    calibration: str = "off"
    answers: dict[str, str] = field(default_factory=dict)
    answer_note: str = ""
    screening: str = "likelihood"
    screening_note: str = ""
    label_set: list[str] | None = None
    chose_incumbent: bool = True
    racing: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Screening:
    """How the arms are screened: by likelihood, by both (``"blend"``), or by accuracy once the LM cannot
    score (and why)."""

    mode: str
    note: str = ""
    #: The LM stopped scoring midway (so no answer rule that scores labels can be raced either).
    scoring_stopped: bool = False

    def fall_back(self, reason: str) -> None:
        """Screen this arm and every later one by accuracy: the LM stopped scoring."""
        self.mode, self.note, self.scoring_stopped = "accuracy", reason, True
        logger.info("screening by accuracy from now on: %s", reason)


@dataclass
class _Arm:
    """One candidate in the screen and the race."""

    candidate: Candidate
    k: int
    draw: int
    balanced: bool
    origin: str
    requested_k: int = 0
    #: Its answer rule (``"free"``: generated).
    answer: str = "free"
    screen: float | None = None
    #: How :attr:`screen` was measured: ``"likelihood"``, ``"accuracy"``, ``"blend"`` (accuracy, with
    #: :attr:`tiebreak`) or ``""`` (not screened).
    screened_by: str = ""
    #: The blend's likelihood score, which orders arms tied on screen accuracy (``None``: not blended).
    tiebreak: float | None = None
    #: Its lane of the race on val (``None``: not raced).
    race: RaceLane | None = None

    @property
    def val(self) -> list[float | None]:
        return self.race.val if self.race is not None else []

    @property
    def dropped(self) -> str:
        return self.race.dropped if self.race is not None else ""

    @property
    def complete_rows(self) -> int:
        return len(self.val)

    @property
    def val_mean(self) -> float | None:
        return self.race.val_mean if self.race is not None else None

    def describe(self) -> dict[str, Any]:
        mean = self.val_mean
        return {
            "key": self.candidate.key,
            "origin": self.origin,
            "k": self.k,
            "requested_k": self.requested_k,
            "draw": self.draw,
            "balanced": self.balanced,
            "answer": self.answer,
            "screen": None if self.screen is None else round(self.screen, 4),
            "screened_by": self.screened_by,
            "screen_likelihood": None if self.tiebreak is None else round(self.tiebreak, 4),
            "val_rows": self.complete_rows,
            "val": None if mean is None else round(mean, 2),
            "dropped": self.dropped,
        }


class DemoSearch(SearchTeleprompter):
    """Search labeled demo sets (and their size) for a small task model; see the module docstring.

    Args:
        metric: ``metric(example, prediction, trace=None)``.
        **settings: :class:`DemoSearchConfig` settings and the shared ones
            (:class:`~dspy_ext.search.options.CompileOptions`: ``max_lm_calls`` caps every call,
            forward passes of the screen included; ``prompt_model`` writes the extra instructions when
            ``instructions`` > 0, without one the human instruction is the only instruction;
            ``repeats`` and ``eval_temperature`` apply to the accuracy evaluations; ``progress`` shows a
            bar). Guards, feedback and a final selector are not DemoSearch's: build it with
            :func:`dspy_ext.registry.build_optimizer` to check its result with an acceptance gate.

    Raises:
        ValueError: A bad or unknown setting (the message names it and lists the valid ones).

    Example:
        >>> compiled = DemoSearch(exact_match, max_lm_calls=200, demo_counts=(3, 8)).compile(
        ...     student, trainset=train, valset=val)                                  # doctest: +SKIP
    """

    method = "demo-search"
    config_model = DemoSearchConfig
    capabilities = Capabilities(
        enforces_budget=True, final_selector=False, guards=GuardMode.GATE, metric=MetricForm.SCALAR
    )
    result_class = DemoSearchResult
    roles = ("induce",)
    config: DemoSearchConfig

    def _check_options(self, options: CompileOptions) -> None:
        super()._check_options(options)
        if options.feedback:
            raise ValueError(f"{self.method} cannot use a reviewer's critiques (feedback=)")

    def minibatch_size(self) -> int:
        return max(1, self.config.screen_rows)

    def plan(self, inputs: PlanInputs) -> CallPlan:
        """The calls a compile expects to make, by role: the screen of every arm, then the race on val.

        The likelihood screen costs one forward pass per row on the embedded engine; on a served
        engine one ``/completions`` request per scored reply (each label of a closed label set, else
        the gold reply) and one probe of the endpoint first (:class:`~dspy_ext.lm.ServedEngine`). The
        accuracy screen costs a generation per row; the blend costs both.
        """
        c = self.config
        n_predictors, n_val = inputs.n_predictors, inputs.n_val
        repeats = self.options.repeats
        ks = [k for k in c.demo_counts for _ in range(c.draws_per_count)]
        arms = [c.incumbent_demos, *ks]
        if c.grounded:
            arms += [c.incumbent_demos, *c.demo_counts]
        prompt = c.instructions if self.options.prompt_model is not None and n_predictors == 1 else 0
        arms += list(c.demo_counts) * prompt
        scoring = c.screen_by != "accuracy" and n_predictors == 1
        per_row, probe = 1, 0
        if scoring and inputs.served_likelihood:
            per_row, probe = inputs.n_labels or 1, int(inputs.likelihood_probe)
        rows = min(c.screen_rows, n_val + inputs.n_train * (c.screen_on == "train"))
        per_arm = rows * per_row * scoring + rows * repeats * (not scoring or c.screen_by == "blend")
        confirm = min(int(self.max_lm_calls * c.confirm_share), (c.confirm_top + 2) * n_val * repeats)
        rule_arms, priors = self._planned_rules(inputs)
        confirm = min(confirm + rule_arms * n_val * repeats, self.max_lm_calls)
        screen = min(len(arms) * per_arm, max(1, self.max_lm_calls - confirm - priors) - prompt)
        demos = sum(min(k, inputs.n_train) for k in arms) / len(arms)
        asks = (MetaPromptCalls("induce", prompt),) if prompt else ()
        task = (screen + confirm) * n_predictors + probe + priors
        return CallPlan(task, asks, demos).capped(self.max_lm_calls)

    def _planned_rules(self, inputs: PlanInputs) -> tuple[int, int]:
        """The answer-rule arms a compile expects to race (closed label set known) and their priors' calls."""
        modes = self.config.rule_modes
        if not inputs.n_labels or not modes:
            return 0, 0
        arms = len(modes) * self.config.answer_top
        per_input = inputs.n_labels if inputs.served_likelihood else 1
        calibrated = AnswerMode.CALIBRATED in modes
        return arms, len(CONTENT_FREE_INPUTS) * per_input * self.config.answer_top * calibrated

    # ---- the search -----------------------------------------------------------------------
    def search(self, run: SearchRun, student: dspy.Module) -> Candidate:
        """Arms (incumbent, demo sets x k, grounded and generated instructions), screen, answer rules, race on val."""
        labels, label_field = closed_label_set(student, run.trainset)
        screening = self._screening_mode(student, run, labels, label_field)
        targets, modes, answer_note = self._answer_dimension(run, student)
        incumbent = self._incumbent(student, run.trainset)
        arms = [incumbent] + self._arms(run, student, labels, label_field, exclude=incumbent.candidate.key)
        if self.config.grounded:
            arms += self._grounded_arms(run, student, arms, labels, label_field)
        self._screen_all(run, student, arms, labels, screening, reserve=self._prior_calls(run, targets, modes))
        if targets and screening.scoring_stopped:
            targets, answer_note = {}, f"no answer rule was raced: {screening.note}"
        contenders = self._contenders(arms, incumbent)
        contenders = self._with_answer_rules(run, student, contenders, targets, modes)
        race = [incumbent] + self._fit_race(run, contenders)
        chosen = self._confirm(run, race)
        answers = chosen.candidate.answers
        run.report(
            val_score=chosen.val_mean,
            baseline_val_score=incumbent.val_mean if incumbent.complete_rows == len(run.valset) else None,
            n_candidates=len(arms) + len([a for a in contenders if a.answer != "free"]),
            demo_sets=len(arms),
            k=chosen.k,
            balanced=chosen.balanced,
            decoding="generate" if set(answers.values()) == {"free"} else "likelihood",
            calibration="contextual" if "calibrated" in answers.values() else "off",
            answers=answers,
            answer_note=answer_note,
            screening=screening.mode,
            screening_note=screening.note,
            label_set=list(labels) if labels else None,
            chose_incumbent=chosen is incumbent,
            racing=[
                a.describe()
                for a in arms + [a for a in contenders if a.answer != "free"]
                if a.screen is not None or a.val
            ],
        )
        return chosen.candidate

    def _answer_dimension(
        self, run: SearchRun, student: dspy.Module
    ) -> tuple[dict[str, AnswerTarget], tuple[AnswerMode, ...], str]:
        """The predictors with a closed label set, the rules the task LM can apply to them, and why any is left out."""
        wanted = self.config.rule_modes
        if not wanted or self.config.answer_top == 0:
            return {}, (), ""
        targets = answer_targets(student, run.trainset)
        if not targets:
            return {}, (), "no predictor's output takes a closed label set"
        modes, note = answer_modes(run.models.task_lm, [m.value for m in wanted])
        if note:
            logger.info("%s: %s", self.method, note)
        return (targets if modes else {}), modes, note

    def _prior_calls(self, run: SearchRun, targets: dict[str, AnswerTarget], modes: tuple[AnswerMode, ...]) -> int:
        """The calls the calibrated rules' content-free priors take (kept out of the screen's share)."""
        if AnswerMode.CALIBRATED not in modes:
            return 0
        engine = getattr(run.models.task_lm, "engine", None)
        per_input = max(len(t.labels) for t in targets.values()) if getattr(engine, "meters_own_requests", False) else 1
        return len(CONTENT_FREE_INPUTS) * per_input * len(targets) * self.config.answer_top

    def _with_answer_rules(
        self,
        run: SearchRun,
        student: dspy.Module,
        contenders: list[_Arm],
        targets: dict[str, AnswerTarget],
        modes: tuple[AnswerMode, ...],
    ) -> list[_Arm]:
        """The contenders, each of the ``answer_top`` best-screened followed by its answer-rule variants."""
        out: list[_Arm] = []
        for i, arm in enumerate(contenders):
            out.append(arm)
            if i < self.config.answer_top and targets:
                out += self._answer_arms(run, student, arm, targets, modes)
        return out

    def _answer_arms(
        self,
        run: SearchRun,
        student: dspy.Module,
        arm: _Arm,
        targets: dict[str, AnswerTarget],
        modes: tuple[AnswerMode, ...],
    ) -> list[_Arm]:
        """``arm`` under each answer rule of ``modes`` (a calibrated one estimates its prior: metered calls)."""
        variants = []
        for mode in modes:
            try:
                candidate = answer_variant(
                    arm.candidate, student, targets, mode, lm=run.models.task_lm, adapter=run.models.task_adapter
                )
            except BudgetExhausted:
                logger.info("%s: no budget left for the %s rule's prior", self.method, mode.value)
                run.mark_exhausted()
                break
            except LikelihoodUnavailable as exc:
                logger.info("%s: the %s rule is not raced: %s", self.method, mode.value, exc)
                continue
            variants.append(replace(arm, candidate=candidate, answer=mode.value, race=None))
        return variants

    def _screen_all(
        self,
        run: SearchRun,
        student: dspy.Module,
        arms: list[_Arm],
        labels: tuple[str, ...] | None,
        screening: _Screening,
        *,
        reserve: int = 0,
    ) -> None:
        """Add the generated-instruction arms, then screen every arm until the screen's share is spent
        (the budget less the confirmation's share and ``reserve`` calls kept for later)."""
        c = self.config
        n_val = len(run.valset)
        rows_of = self._screen_rows(run)
        screen_rows = rows_of(None)
        # The confirmation races at most confirm_top + 2 arms over the valset; the screen gets the rest.
        confirm_calls = min(
            int(self.max_lm_calls * c.confirm_share), (c.confirm_top + 2) * n_val * self.options.repeats
        )
        screen_meter = CallMeter(max(1, self.max_lm_calls - confirm_calls - reserve))
        exhausted = False
        with metering(screen_meter):
            try:
                arms += self._instruction_arms(run, student, arms, labels)
            except SearchStopped:
                exhausted = True
            for arm in arms:
                if exhausted or screen_meter.exhausted:
                    break
                if reserve and screen_meter.max_calls - screen_meter.calls < self._arm_screen_calls(
                    run, screen_rows, labels, screening
                ):
                    logger.info(
                        "%s: %d calls are kept for the answer rules; later arms are not screened", self.method, reserve
                    )
                    break
                exhausted = not self._screen(run, student, arm, rows_of(arm), labels, screening)
            if screening.mode == "accuracy":
                exhausted = not self._rescreen_by_accuracy(run, arms, rows_of, screen_meter) or exhausted
        if exhausted:
            run.mark_exhausted()

    def _screen_rows(self, run: SearchRun) -> Callable[[_Arm | None], list[dspy.Example]]:
        """The screen rows of an arm (``None``: of any arm, for counting calls); see ``screen_on``."""
        n = min(self.config.screen_rows, len(run.valset) + len(run.trainset))
        if self.config.screen_on == "val":
            fixed = run.valset[:n]
            return lambda arm: fixed
        order = random.Random(self.seed + 104729).sample(run.trainset, len(run.trainset))

        def rows_of(arm: _Arm | None) -> list[dspy.Example]:
            shown = arm.candidate.demo_rows() if arm is not None else []
            unused = [row for row in order if demo_to_dict(row) not in shown]
            return (unused + list(run.valset))[:n]

        return rows_of

    def _contenders(self, arms: list[_Arm], incumbent: _Arm) -> list[_Arm]:
        """The best-screened arms (and the best with ``preferred_k`` demos), best first; a blended screen's
        ties on accuracy go to the higher likelihood score."""
        c = self.config
        screened = [a for a in arms if a.screen is not None and a is not incumbent]
        screened.sort(key=lambda a: (-a.screen, float("inf") if a.tiebreak is None else -a.tiebreak, arms.index(a)))
        contenders = screened[: c.confirm_top]
        preferred = [a for a in screened if a.requested_k == c.preferred_k]
        if preferred and preferred[0] not in contenders:
            contenders.append(preferred[0])
        return contenders

    def _fit_race(self, run: SearchRun, contenders: list[_Arm]) -> list[_Arm]:
        """The ``contenders`` the budget left can race on the whole valset next to the incumbent, in their order.
        When some must be cut, constrained variants are kept first: the likelihood screen scored exactly their
        decision (the gold label's probability among the labels), then the rest best-screened first."""
        # Race only as many arms as the confirmation budget can score on the whole valset: an arm cut off
        # mid-race can never be chosen, and an unfinished incumbent forces the incumbent.
        available = self.max_lm_calls - run.total_meter.calls
        left = available - self._race_calls(run, None)
        kept: set[int] = set()
        # A stable sort: constrained variants first, the rest in their order.
        for arm in sorted(contenders, key=lambda a: a.answer != AnswerMode.CONSTRAINED.value):
            if self._race_calls(run, arm) <= left:
                kept.add(id(arm))
                left -= self._race_calls(run, arm)
        if len(kept) < len(contenders):
            logger.info(
                "%s: the %d calls left race the incumbent and %d of %d contender(s) on %d val rows",
                self.method,
                available,
                len(kept),
                len(contenders),
                len(run.valset),
            )
        return [a for a in contenders if id(a) in kept]

    def _race_calls(self, run: SearchRun, arm: _Arm | None) -> int:
        """The calls an arm (``None``: the incumbent) takes on the whole valset: a generation per row, or on an
        engine that meters its own requests (a served model), a scoring request per label for a rule's rows."""
        per_row = self.options.repeats
        served = getattr(getattr(run.models.task_lm, "engine", None), "meters_own_requests", False)
        if arm is not None and served:
            labels = [len(p.answer.labels) for p in arm.candidate.prompts.values() if p.answer is not None]
            per_row = max([per_row, *labels])
        return max(1, len(run.valset) * per_row)

    def _confirm(self, run: SearchRun, race: list[_Arm]) -> _Arm:
        """Race ``race`` (the incumbent first) on the valset (:class:`IncumbentRace`); the chosen arm."""
        c = self.config
        selector = IncumbentRace(race_rows=c.race_rows, alpha=c.alpha, preferred_k=c.preferred_k)
        racers = [
            replace(
                a.candidate,
                meta={
                    **a.candidate.meta,
                    "screen": a.screen,
                    "requested_k": a.requested_k,
                    "race_log": {"k": a.k, "draw": a.draw, "answer": a.answer},
                },
            )
            for a in race
        ]
        selector.select(run, racers[0], racers[1:])
        if selector.exhausted:
            run.mark_exhausted()
        for arm, lane in zip(race, selector.lanes):
            arm.race = lane
        return race[selector.chosen]

    # ---- candidates -----------------------------------------------------------------------

    def _screening_mode(
        self, student: dspy.Module, run: SearchRun, labels: tuple[str, ...] | None, label_field: str | None
    ) -> _Screening:
        """Likelihood (or the blend) where the task LM can score the gold replies this program needs, else
        accuracy."""
        if self.config.screen_by == "accuracy":
            return _Screening("accuracy", "screen_by='accuracy' was set")
        found = predictors(student)
        if len(found) != 1:
            return _Screening("accuracy", f"likelihood screening needs one predictor, the program has {len(found)}")
        outputs = list(found[0][1].signature.output_fields)
        missing = [k for k in outputs if any(k not in ex for ex in run.valset)]
        if missing:
            return _Screening("accuracy", f"the validation examples lack the output field(s) {missing}")
        try:  # a served model's endpoint is asked once (one metered probe request) unless declared
            # A gold reply scored alone (no label set) needs the end-of-turn token too.
            likelihood_engine(run.models.task_lm, end_of_turn=labels is None)
        except LikelihoodUnavailable as exc:
            return _Screening("accuracy", str(exc))
        return _Screening(self.config.screen_by)

    def _incumbent(self, student: dspy.Module, trainset: list[dspy.Example]) -> _Arm:
        # The same draw as the honest baseline of `dspy-ext compile` (random.Random(seed).sample(train, 3)).
        demos = baseline_draw(trainset, self.seed, self.config.incumbent_demos)
        candidate = self._candidate(student, demos, 0, origin="incumbent")
        return _Arm(candidate, len(demos), 0, False, "incumbent", len(demos))

    def _candidate(
        self,
        student: dspy.Module,
        demos: list[dspy.Example],
        index: int,
        *,
        origin: str,
        instruction: str | None = None,
    ) -> Candidate:
        dicts = tuple(demo_to_dict(d) for d in demos)
        return Candidate(
            {
                name: PredictorPrompt(instruction or p.signature.instructions, index, dicts)
                for name, p in predictors(student)
            },
            (),
            origin,
        )

    def _arms(
        self,
        run: SearchRun,
        student: dspy.Module,
        labels: tuple[str, ...] | None,
        label_field: str | None,
        *,
        exclude: str,
    ) -> list[_Arm]:
        """Demo sets per (k, draw), interleaved by draw so that a short budget screens every k first."""
        c = self.config
        arms: list[_Arm] = []
        seen: set[str] = {exclude}
        for draw in range(c.draws_per_count):
            for k in c.demo_counts:
                # Draw 0 uses the compile seed itself: the settings measured in docs/benchmarks.md.
                demos = balanced_demos(
                    run.trainset,
                    min(k, len(run.trainset)),
                    seed=self.seed + 7919 * draw,
                    field=label_field or "output",
                    labels=labels,
                )
                demos = self._fit(run, student, demos)
                candidate = self._candidate(student, demos, 1 + len(arms), origin=f"demo-search.k{k}")
                if not demos or candidate.key in seen:
                    continue
                seen.add(candidate.key)
                arms.append(_Arm(candidate, len(demos), draw, labels is not None, f"demo-search.k{k}", k))
        return arms

    def _fit(self, run: SearchRun, student: dspy.Module, demos: list[dspy.Example]) -> list[dspy.Example]:
        """The longest prefix of ``demos`` whose prompts fit the context (every predictor, sampled inputs)."""
        engine_window = getattr(getattr(run.models.task_lm, "engine", None), "context_window", None)
        window = min(self.config.max_prompt_tokens, engine_window or self.config.max_prompt_tokens)
        dicts = tuple(demo_to_dict(d) for d in demos)

        def fits(demo_set: DemoSet) -> bool:
            fit = demo_set_context_fit(
                student,
                demo_set,
                run.trainset,
                lm=run.models.task_lm,
                adapter=run.models.task_adapter,
                reply_tokens=self.config.reply_tokens,
                context_window=window,
                rng=random.Random(self.seed),
            )
            return fit.fits

        kept = fitting_demo_set({name: dicts for name in run.predictor_names()}, fits)
        n = min((len(v) for v in kept.values()), default=0)
        if n < len(demos):
            logger.info("%s: %d of %d demos fit the %d-token window", self.method, n, len(demos), window)
        return demos[:n]

    def _grounded_arms(
        self,
        run: SearchRun,
        student: dspy.Module,
        arms: list[_Arm],
        labels: tuple[str, ...] | None,
        label_field: str | None,
    ) -> list[_Arm]:
        """The incumbent's and each k's first demo set under the grounded human instruction (single predictor)."""
        found = predictors(student)
        if len(found) != 1 or label_field is None:
            logger.info("%s: grounded instructions need one predictor and one output field", self.method)
            return []
        name, predictor = found[0]
        text = grounded_instruction(
            predictor.signature.instructions, [ex.get(label_field) for ex in run.trainset], labels
        )
        if text is None:
            logger.info("%s: no constraint can be read off the training outputs", self.method)
            return []
        logger.info("%s: grounded instruction %r", self.method, text)
        base = [a for a in arms if a.origin == "incumbent" or a.draw == 0]
        return [
            _Arm(
                a.candidate.with_instruction(name, text, origin="demo-search.grounded"),
                a.k,
                a.draw,
                a.balanced,
                "demo-search.grounded",
                a.requested_k,
            )
            for a in base
        ]

    def _instruction_arms(
        self, run: SearchRun, student: dspy.Module, arms: list[_Arm], labels: tuple[str, ...] | None
    ) -> list[_Arm]:
        """Generated instructions (only with a ``prompt_model``), each with the first demo set of every k."""
        if self.config.instructions <= 0:
            return []
        if self.options.prompt_model is None:
            logger.info(
                "%s: instructions=%d ignored: generated instructions need a prompt_model",
                self.method,
                self.config.instructions,
            )
            return []
        names = run.predictor_names()
        if len(names) != 1:
            logger.info("%s: generated instructions are only tried for single-predictor programs", self.method)
            return []
        name = names[0]
        first_per_k = {a.requested_k: a for a in arms if a.origin != "incumbent" and a.draw == 0}
        out = []
        for _ in range(self.config.instructions):
            pairs = run.rng.sample(run.trainset, min(5, len(run.trainset)))
            for proposal in run.ask(
                "induce", 1, temperature=0.9, step=run.step_description(name), examples=format_pairs(pairs)
            ):
                base = arms[0].candidate
                child = run.admit(proposal, base, name, origin="demo-search.induce")
                if child is None:
                    continue
                run.store.add(child)
                for k, arm in first_per_k.items():
                    candidate = arm.candidate.with_instruction(
                        name, child.instruction(name), origin="demo-search.induce"
                    )
                    out.append(_Arm(candidate, k, 0, arm.balanced, "demo-search.induce", arm.requested_k))
        return out

    # ---- screening ------------------------------------------------------------------------
    def _screen(
        self,
        run: SearchRun,
        student: dspy.Module,
        arm: _Arm,
        rows: list[dspy.Example],
        labels: tuple[str, ...] | None,
        screening: _Screening,
    ) -> bool:
        """Score ``arm`` on the screen rows; ``False`` when the budget ran out before it was done.

        The blend scores it by likelihood, then by generated accuracy, which ranks it (the likelihood
        breaks ties). An LM that stops scoring midway (a served endpoint that refuses a scoring request
        after its probe passed) switches this arm and every later one to the accuracy screen.
        """
        if screening.mode != "accuracy":
            program = arm.candidate.apply(student)
            scorer = LikelihoodEvaluator(labels=labels)  # no metric: an LM that cannot score raises
            try:
                with dspy.context(lm=run.models.task_lm, adapter=run.models.task_adapter):
                    report = scorer.evaluate(program, rows)
            except LikelihoodUnavailable as exc:
                screening.fall_back(f"likelihood scoring stopped midway ({exc})")
            else:
                if not self._record_likelihood_screen(run, arm, report, labels):
                    return False
                if screening.mode == "likelihood":
                    return True
        return self._screen_by_accuracy(run, arm, rows)

    def _arm_screen_calls(
        self, run: SearchRun, rows: list[dspy.Example], labels: tuple[str, ...] | None, screening: _Screening
    ) -> int:
        """The calls one arm's screen takes: a forward pass per row (a served request per label), the
        generations of the accuracy screen, or both for the blend."""
        generated = len(rows) * self.options.repeats * len(run.predictor_names())
        if screening.mode == "accuracy":
            return generated
        served = getattr(getattr(run.models.task_lm, "engine", None), "meters_own_requests", False)
        scored = len(rows) * (len(labels or ()) or 1 if served else 1)
        return scored + (generated if screening.mode == "blend" else 0)

    @staticmethod
    def _screen_by_accuracy(run: SearchRun, arm: _Arm, rows: list[dspy.Example]) -> bool:
        """Score ``arm`` by generated accuracy on the screen rows; ``False`` when the budget ran out (the
        arm is then left unscreened, so it is not raced). An arm just screened by likelihood (the blend)
        keeps that score as the tie-breaker of its accuracy."""
        likelihood = arm.screen if arm.screened_by == "likelihood" else None
        report = run.evaluate(arm.candidate, rows, split="screen")
        if report.budget_exhausted:
            arm.screen, arm.screened_by = None, ""
            return False
        arm.screen, arm.screened_by = report.score / 100.0, "accuracy"
        if likelihood is not None:
            arm.tiebreak, arm.screened_by = likelihood, "blend"
        return True

    def _rescreen_by_accuracy(
        self, run: SearchRun, arms: list[_Arm], rows_of: Callable[[_Arm], list[dspy.Example]], meter: CallMeter
    ) -> bool:
        """Screen again by accuracy the arms screened by likelihood before the LM stopped scoring, so
        that every screen score compares like with like; an arm the budget cannot re-screen is not
        raced. A blended arm keeps its accuracy and loses its tie-breaker. ``False`` when the budget ran out."""
        for arm in [a for a in arms if a.screened_by == "blend"]:
            arm.tiebreak, arm.screened_by = None, "accuracy"
        for arm in [a for a in arms if a.screened_by == "likelihood"]:
            arm.screen, arm.screened_by = None, ""
            if meter.exhausted or not self._screen_by_accuracy(run, arm, rows_of(arm)):
                return False
        return True

    def _record_likelihood_screen(
        self, run: SearchRun, arm: _Arm, report: LikelihoodReport, labels: tuple[str, ...] | None
    ) -> bool:
        """Keep the arm's likelihood screen score and log it as a screen trial; ``False`` if cut off."""
        if report.budget_exhausted or not report.rows:
            return False
        objective = "label_prob" if labels else "gold_logprob"
        arm.screen, arm.screened_by = report.score(objective), "likelihood"
        run.store.add(arm.candidate)
        extra: dict[str, Any] = {"objective": objective, "k": arm.k, "draw": arm.draw, "balanced": arm.balanced}
        if labels:
            extra["label_accuracy"] = round(report.label_accuracy(), 2)
        shown = 100.0 * arm.screen if labels else arm.screen
        run.trial_log.record_score(
            arm.candidate,
            n=len(report.rows),
            score=shown,
            usage=report.usage,
            seconds=report.seconds,
            method=self.method,
            step=0,
            split="screen",
            running_mean=shown,
            **extra,
        )
        run.tick()
        return True

    # ---- result -------------------------------------------------------------------------------
    def log_result(self, result: SearchResult) -> None:
        if result.screening_note:
            logger.info("%s: screening by accuracy: %s", self.method, result.screening_note)
        logger.info(
            "%s: chose k=%d (%s), val %s (incumbent %s), %d calls",
            self.method,
            result.k,
            result.best["origin"],
            result.val_score,
            result.baseline_val_score,
            result.lm_calls,
        )
