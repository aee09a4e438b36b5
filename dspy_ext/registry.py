"""One way to name and configure any optimizer, ours or DSPy's.

Each entry maps a name to a pydantic config model (validated, defaults
filled, unknown keys rejected) and to a builder that adapts the optimizer's
compile quirks: COPRO's ``eval_kwargs``, GEPA's five-argument metric and
budget option, BootstrapFewShot's missing ``valset``, MIPROv2's seed.
Research code swaps optimizers by changing one string:

Example:
    >>> handle = build_optimizer("ape", exact_match, budget=400, seed=0)          # doctest: +SKIP
    >>> program = handle.compile(student, trainset=train, valset=val)             # doctest: +SKIP
    >>> handle = build_optimizer("copro", exact_match, config={"depth": 2})       # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, replace
from typing import Any, Literal

import dspy
from pydantic import Field

from dspy_ext.adapters import PlainAdapter
from dspy_ext.evaluation import feedback_of, measure, metric_value
from dspy_ext.lm.metering import with_role
from dspy_ext.optimizers import APE, OPRO, DemoSearch, EvoPrompt, ProTeGi
from dspy_ext.prompt_state import predictors
from dspy_ext.search.config import DEFAULT_BUDGET, OptimizerConfig, tunable
from dspy_ext.search.demos import closed_label_set
from dspy_ext.search.feedback import SearchFeedback
from dspy_ext.search.final_selection import FinalSelector
from dspy_ext.search.options import CompileOptions, GuardMode, MetricForm
from dspy_ext.search.plan import CallPlan, MetaPromptCalls, PlanInputs
from dspy_ext.search.regression import AcceptanceGate
from dspy_ext.search.teleprompter import SearchTeleprompter

# ---- DSPy's optimizers: their settings as dspy-ext exposes them --------------------------------


class MIPROConfig(OptimizerConfig):
    auto: Literal["light", "medium", "heavy"] | None = "light"
    num_candidates: int | None = tunable(None, ge=1, tune={"int": [2, 6]})
    num_trials: int | None = tunable(None, ge=1, tune={"int": [4, 12]})
    max_bootstrapped_demos: int = tunable(2, ge=0, tune={"int": [0, 3]})
    max_labeled_demos: int = tunable(3, ge=0, tune={"int": [0, 4]})
    minibatch_size: int = tunable(35, ge=1, tune=[10, 25])


class COPROConfig(OptimizerConfig):
    breadth: int | None = tunable(None, ge=2, tune={"int": [2, 5]})
    depth: int = tunable(2, ge=1, tune={"int": [1, 3]})
    init_temperature: float = tunable(1.0, ge=0.0, le=2.0, tune={"float": [0.5, 1.4]})


class BootstrapConfig(OptimizerConfig):
    max_bootstrapped_demos: int = tunable(2, ge=0, tune={"int": [1, 4]})
    max_labeled_demos: int = tunable(3, ge=0, tune={"int": [0, 4]})
    max_rounds: int = tunable(1, ge=1, tune={"int": [1, 2]})


class RandomSearchConfig(OptimizerConfig):
    max_bootstrapped_demos: int = tunable(2, ge=0, tune={"int": [1, 3]})
    max_labeled_demos: int = tunable(3, ge=0, tune={"int": [0, 4]})
    max_rounds: int = Field(default=1, ge=1)
    num_candidate_programs: int | None = tunable(None, ge=1, tune={"int": [2, 6]})


class LabeledConfig(OptimizerConfig):
    k: int = tunable(3, ge=0, tune={"int": [1, 6]})


class GEPAConfig(OptimizerConfig):
    """GEPA's settings. ``auto`` (one of GEPA's presets, which sizes its own metric calls from the program and
    the valset) wins over ``max_metric_calls``; without either, the budget is its metric calls."""

    auto: Literal["light", "medium", "heavy"] | None = None
    max_metric_calls: int | None = tunable(None, ge=1, tune={"int": [40, 200], "step": 20})
    reflection_minibatch_size: int = tunable(3, ge=1, tune={"int": [2, 5]})


class SIMBAConfig(OptimizerConfig):
    bsize: int = tunable(8, ge=1, tune=[4, 8])
    num_candidates: int = tunable(4, ge=2, tune={"int": [2, 4]})
    max_steps: int | None = tunable(None, ge=1, tune={"int": [1, 4]})
    max_demos: int = tunable(3, ge=0, tune={"int": [0, 3]})


@dataclass(frozen=True)
class BuildContext:
    """What a builder gets besides the config: the metric in the optimizer's form, the shared settings,
    and what DSPy's budget mappings need.

    Attributes:
        metric: The metric, in the form the spec's ``metric`` capability names.
        options: The shared settings (a hard cap ``options.max_lm_calls`` for dspy-ext's optimizers).
        budget: The caller's budget as given (``None``: not given; DSPy's mappings then use their defaults).
        n_train: Training-set size.
        n_val: Validation-set size.
    """

    metric: Callable[..., Any]
    options: CompileOptions
    budget: int | None = None
    n_train: int = 0
    n_val: int = 0


@dataclass
class OptimizerHandle:
    """A built optimizer with a uniform ``compile(student, trainset=, valset=)``.

    With a ``gate`` (guards around one of DSPy's optimizers) the compiled program is checked
    against the student on the valset (the trainset when there is none) and replaced by the best
    guarded candidate, or the student, when it breaks a guard; see
    :class:`~dspy_ext.search.regression.AcceptanceGate`.
    """

    name: str
    optimizer: Any
    config: OptimizerConfig
    enforces_budget: bool
    compile_fn: Callable[..., dspy.Module]
    compile_kwargs: dict[str, Any]
    gate: AcceptanceGate | None = None
    planner: Callable[[PlanInputs], CallPlan | None] | None = None

    def plan(
        self, student: dspy.Module, train: list[dspy.Example] | None = None, lm: dspy.BaseLM | None = None
    ) -> CallPlan | None:
        """The calls compiling ``student`` on ``train`` with task model ``lm`` (default: the configured LM)
        is expected to make, by role; ``None`` when no plan is known."""
        if self.planner is None:
            return None
        return self.planner(plan_inputs(student, train or [], lm or dspy.settings.lm))

    def compile(self, student: dspy.Module, *, trainset: list, valset: list | None = None) -> dspy.Module:
        program = self.compile_fn(
            self.optimizer, student, list(trainset), list(valset) if valset else None, **self.compile_kwargs
        )
        if self.gate is not None:
            program = self.gate.check(student, program, list(valset) if valset else list(trainset))
        return program


class ScalarMetric:
    """A metric in the shape DSPy's optimizers expect: one float (with a trace, what the metric says).

    A metric may return criteria (a mapping, or ``Prediction(criteria=...)``); DSPy's optimizers add
    and compare scores, so they get the scalar objective. With ``with_feedback`` (GEPA) a row with a
    feedback text is returned as ``dspy.Prediction(score=..., feedback=...)``.

    Args:
        metric: ``metric(example, prediction, trace=None)``.
        with_feedback: Keep the metric's feedback text (GEPA's form).
    """

    def __init__(self, metric: Callable[..., Any], *, with_feedback: bool = False) -> None:
        self.metric = metric
        self.with_feedback = with_feedback
        self.__name__ = getattr(metric, "__name__", "metric")

    def __call__(self, example: Any, prediction: Any, trace: Any = None) -> Any:
        if trace is None and self.with_feedback and callable(getattr(self.metric, "measure", None)):
            measured = measure(self.metric, example, prediction)  # a criteria metric's feedback text
            return (
                dspy.Prediction(score=measured.score, feedback=measured.feedback)
                if measured.feedback
                else measured.score
            )
        value = self.metric(example, prediction, trace)
        if isinstance(value, (bool, int, float)):
            return value  # an ordinary metric's value passes through untouched
        text = feedback_of(value) if trace is None and self.with_feedback else None
        return dspy.Prediction(score=metric_value(value), feedback=text) if text else metric_value(value)


@dataclass(frozen=True)
class OptimizerSpec:
    """A registry entry: config schema, builder, compile adapter and what the optimizer can do.

    dspy-ext's own optimizers are made from their class (:meth:`ours`, or :func:`register`);
    DSPy's are written out with keywords.

    Attributes:
        name: The registry name.
        config_model: The optimizer's settings.
        build: ``build(config, ctx)`` -> the optimizer (``ctx`` a :class:`BuildContext`).
        compile: ``compile(optimizer, student, trainset, valset, **kwargs)`` -> the compiled program.
        enforces_budget: The budget is a hard cap on LM calls.
        description: One line for listings.
        compile_kwargs: Extra keyword arguments of ``compile`` (e.g. COPRO's ``eval_kwargs``), from config and context.
        final_selector: Its final selection is pluggable (``final_selector=``; the tuning space's
            ``final_selection`` knob).
        guards: It applies guards itself, or its result goes through an :class:`AcceptanceGate`.
        metric: The metric form its builder gets.
        takes_feedback: It uses a reviewer's critiques (``feedback=``).
        takes_valset: Its compile uses the valset.
        plan: The calls a compile expects to make (config, context, :class:`PlanInputs`); ``None``: no plan
            is known.
            dspy-ext's own optimizers plan themselves (their ``plan`` method).
    """

    name: str
    config_model: type[OptimizerConfig]
    build: Callable[[OptimizerConfig, BuildContext], Any]
    compile: Callable[..., dspy.Module]
    enforces_budget: bool
    description: str
    _: KW_ONLY
    compile_kwargs: Callable[[OptimizerConfig, BuildContext], dict[str, Any]] = lambda config, ctx: {}
    final_selector: bool = False
    guards: GuardMode = GuardMode.GATE
    metric: MetricForm = MetricForm.SCALAR
    takes_feedback: bool = False
    takes_valset: bool = True
    plan: Callable[[OptimizerConfig, BuildContext, PlanInputs], CallPlan] | None = None

    @classmethod
    def ours(
        cls, optimizer: type[SearchTeleprompter], *, description: str, name: str | None = None, **init: Any
    ) -> OptimizerSpec:
        """The entry of one of dspy-ext's optimizers: name, config model and capabilities from its class.

        Args:
            optimizer: A :class:`~dspy_ext.search.teleprompter.SearchTeleprompter` subclass.
            description: One line for listings.
            name: The registry name (default: the class's ``method``).
            **init: Constructor arguments of this entry (e.g. EvoPrompt's ``variant``).
        """
        name = name or optimizer.method
        if not isinstance(name, str):
            raise ValueError(f"{optimizer.__name__} names its method per instance: give name=")
        caps = optimizer.capabilities

        def build(config: OptimizerConfig, ctx: BuildContext) -> Any:
            return optimizer(ctx.metric, options=ctx.options, **init, **config.model_dump())

        return cls(
            name=name,
            config_model=optimizer.config_model,
            build=build,
            compile=_with_valset if caps.takes_valset else _train_only,
            enforces_budget=caps.enforces_budget,
            description=description,
            final_selector=caps.final_selector,
            guards=caps.guards,
            metric=caps.metric,
            takes_feedback=caps.takes_feedback,
            takes_valset=caps.takes_valset,
        )


def _with_valset(opt: Any, student: dspy.Module, train: list, val: list | None, **kwargs: Any) -> dspy.Module:
    return opt.compile(student, trainset=train, valset=val, **kwargs)


def _train_only(opt: Any, student: dspy.Module, train: list, val: list | None, **kwargs: Any) -> dspy.Module:
    # BootstrapFewShot, LabeledFewShot, SIMBA and COPRO take no valset: the valset is simply unused.
    return opt.compile(student, trainset=train, **kwargs)


#: COPRO's proposer has two outputs; small models write only the instruction. An empty prefix
#: makes the plain adapter label the output field by its name, as it would with no prefix.
COPRO_FILL_MISSING = {"proposed_prefix_for_output_field": ""}


def _copro_compile(opt: Any, student: dspy.Module, train: list, val: list | None, **kwargs: Any) -> dspy.Module:
    adapter = dspy.settings.adapter
    if not isinstance(adapter, PlainAdapter):
        return _train_only(opt, student, train, val, **kwargs)
    lenient = copy.copy(adapter)
    lenient.fill_missing = {**adapter.fill_missing, **COPRO_FILL_MISSING}
    with dspy.context(adapter=lenient):
        return _train_only(opt, student, train, val, **kwargs)


def _prompt_lm(ctx: BuildContext) -> dspy.BaseLM | None:
    """The prompt model of one of DSPy's optimizers (default: the configured LM), its calls counted as the
    prompt model's (it falls back to the configured LM itself when none is given, so this changes nothing
    but the count)."""
    return with_role(ctx.options.prompt_model or dspy.settings.lm, "prompt")


def _build_mipro(config: MIPROConfig, ctx: BuildContext) -> Any:
    auto = None if config.num_candidates else config.auto
    return dspy.MIPROv2(
        ctx.metric,
        prompt_model=_prompt_lm(ctx),
        auto=auto,
        num_candidates=config.num_candidates,
        max_bootstrapped_demos=config.max_bootstrapped_demos,
        max_labeled_demos=config.max_labeled_demos,
        num_threads=ctx.options.num_threads,
        seed=ctx.options.seed,
        verbose=False,
    )


def _mipro_compile_kwargs(config: MIPROConfig, ctx: BuildContext) -> dict[str, Any]:
    # seed passed explicitly: MIPROv2's `seed or self.seed` would turn 0 into 9.
    kwargs: dict[str, Any] = {
        "seed": ctx.options.seed,
        "minibatch": ctx.n_val > config.minibatch_size,
        "minibatch_size": config.minibatch_size,
    }
    if config.num_candidates:
        kwargs["num_trials"] = config.num_trials or 2 * config.num_candidates
    return kwargs


#: Tokens of one prompt and of one reply of MIPROv2's proposer (DSPy's own prompts, which dspy-ext does not
#: render): the dataset summary, the program and module descriptions, the instruction proposals. Its replies
#: have no token cap, and a small model asked to describe a dataset or a program writes long ones. Stated from the
#: first served benchmark (``docs/benchmarks.md``, issue 17, the run of 2026-12-02): its two MIPROv2 cells' tokens
#: and USD at the declared prices, less their task calls, put the 15 proposer calls of a compile at about 1,300
#: output tokens each (1,060 on sentiment, 1,550 on first_word_letter) and about 700 input tokens each.
MIPRO_PROPOSER_PROMPT_TOKENS = 700
MIPRO_PROPOSER_REPLY_TOKENS = 1300
#: Training rows MIPROv2's dataset summary shows per call (DSPy's ``view_data_batch_size``).
MIPRO_VIEW_BATCH = 10


def _plan_mipro(config: MIPROConfig, ctx: BuildContext, inputs: PlanInputs) -> CallPlan:
    """MIPROv2's own estimate of its task calls (``_estimate_lm_calls``) plus the bootstrapping of its few-shot
    sets; its proposer's calls as DSPy makes them: the dataset summary (one call per batch of
    :data:`MIPRO_VIEW_BATCH` training rows, at most 10, and a summary), then per instruction a program and a
    module description and the proposal."""
    n_predictors = inputs.n_predictors
    n_sets, n_instructions = config.num_candidates or 0, config.num_candidates or 0
    n_trials = config.num_trials or 2 * (config.num_candidates or 0)
    val = ctx.n_val
    if config.auto is not None and not config.num_candidates:
        settings = dspy.teleprompt.mipro_optimizer_v2.AUTO_RUN_SETTINGS[config.auto]
        n_sets = settings["n"]
        zero_shot = config.max_bootstrapped_demos == 0 and config.max_labeled_demos == 0
        n_instructions = n_sets if zero_shot else int(n_sets * 0.5)
        # DSPy's _set_num_trials_from_num_candidates, for a program with demos: 2 variables per predictor.
        variables = n_predictors * (1 if zero_shot else 2)
        n_trials = int(max(2 * variables * math.log2(n_sets), 1.5 * n_sets))
        val = min(val, settings["val_size"])
    # With auto, MIPROv2 sets minibatch itself: on when its valset has more than 50 rows.
    minibatch = val > 50 if config.auto is not None and not config.num_candidates else val > config.minibatch_size
    if minibatch:
        task = min(config.minibatch_size, val) * n_trials + val * (n_trials // 5 + 1)
    else:
        task = val * n_trials
    # Each bootstrapped set runs the program on train rows until it has max_bootstrapped_demos successes.
    bootstrap = max(0, n_sets - 2) * min(ctx.n_train, 2 * config.max_bootstrapped_demos + 2)
    demos = max(config.max_labeled_demos, config.max_bootstrapped_demos)
    batches = min(len(range(MIPRO_VIEW_BATCH, ctx.n_train, MIPRO_VIEW_BATCH)), 9)
    calls = {
        "mipro.dataset_summary": 2 + batches,
        "mipro.describe": 2 * n_instructions * n_predictors,
        "mipro.propose_instruction": n_instructions * n_predictors,
    }
    asks = tuple(
        MetaPromptCalls(role, n, reply_tokens=MIPRO_PROPOSER_REPLY_TOKENS, prompt_tokens=MIPRO_PROPOSER_PROMPT_TOKENS)
        for role, n in calls.items()
    )
    return CallPlan((task + bootstrap) * n_predictors, asks, demos)


def _plan_copro(config: COPROConfig, ctx: BuildContext, inputs: PlanInputs) -> CallPlan:
    """COPRO: ``depth x breadth`` candidates per predictor, each scored on the trainset; its proposals are
    measured as an instruction-induction prompt (dspy-ext does not render COPRO's own)."""
    breadth = _build_copro(config, ctx).breadth
    n_predictors = inputs.n_predictors
    asks = (MetaPromptCalls("induce", config.depth * breadth * n_predictors),)
    return CallPlan(config.depth * breadth * ctx.n_train * n_predictors, asks)


def _build_copro(config: COPROConfig, ctx: BuildContext) -> Any:
    # Calls ~= depth * breadth * n_train (task) + depth * breadth (prompt): fit breadth to the budget.
    breadth = config.breadth
    if breadth is None:
        breadth = (
            max(2, min(10, (ctx.budget or DEFAULT_BUDGET) // max(1, config.depth * (ctx.n_train + 1))))
            if ctx.budget
            else 4
        )
    return dspy.COPRO(
        metric=ctx.metric,
        prompt_model=_prompt_lm(ctx),
        breadth=breadth,
        depth=config.depth,
        init_temperature=config.init_temperature,
    )


def _build_bfsrs(config: RandomSearchConfig, ctx: BuildContext) -> Any:
    n = config.num_candidate_programs
    if n is None:
        per_program = max(1, ctx.n_val or ctx.n_train)
        n = max(1, min(16, (ctx.budget or DEFAULT_BUDGET) // per_program - 3)) if ctx.budget else 4
    return dspy.BootstrapFewShotWithRandomSearch(
        ctx.metric,
        num_candidate_programs=n,
        num_threads=ctx.options.num_threads,
        max_bootstrapped_demos=config.max_bootstrapped_demos,
        max_labeled_demos=config.max_labeled_demos,
        max_rounds=config.max_rounds,
    )


class GEPAMetric:
    """A metric in GEPA's five-argument form; with a person's critiques, it returns them as ``feedback``.

    GEPA's reflection reads a ``feedback`` text per example when the metric returns
    ``dspy.Prediction(score=..., feedback=...)``. Given :class:`SearchFeedback`, the text for one
    example is the metric's own feedback (if any), then what the reviewer said about an output for
    this very input, or, for a failed example without such a critique, the reviewer's reasons on
    other outputs. Without feedback the metric's value is returned unchanged.

    Args:
        metric: ``metric(example, prediction, trace=None)``.
        feedback: The reviewer's critiques, or ``None``.

    Example:
        >>> from dspy_ext.search import HumanCritique
        >>> m = GEPAMetric(lambda e, p, t=None: e.output == p.output,
        ...                SearchFeedback((HumanCritique({"input": "x"}, {"output": "No."}, "one word"),)))
        >>> ex = dspy.Example(input="x", output="no").with_inputs("input")
        >>> m(ex, dspy.Prediction(output="No."), None, "predict", None).feedback
        "A human reviewer rejected the output 'No.' for this input: one word"
    """

    def __init__(self, metric: Callable[..., Any], feedback: SearchFeedback | None = None) -> None:
        self.metric = metric
        self.feedback = feedback or None

    def __call__(
        self, gold: Any, pred: Any, trace: Any = None, pred_name: str | None = None, pred_trace: Any = None
    ) -> Any:
        value = self.metric(gold, pred, trace)
        if self.feedback is None or pred_name is None:
            return value  # GEPA asks for feedback text only when it reflects on one predictor
        score = metric_value(value)
        notes = [str(value.feedback)] if getattr(value, "feedback", None) else []
        inputs = gold.inputs() if hasattr(gold, "inputs") else {}
        exact = self.feedback.for_input(dict(inputs))
        for critique in exact:
            shown = "; ".join(str(v) for v in critique.output.values())
            notes.append(f"A human reviewer rejected the output {shown!r} for this input: {critique.reason}")
        if not exact and score < 1.0:
            reasons = self.feedback.reasons()[: self.feedback.shown]
            notes.append("A human reviewer rejected similar outputs of this task, saying: " + "; ".join(reasons))
        if not notes:
            notes.append(f"This trajectory got a score of {score}.")
        return dspy.Prediction(score=score, feedback="\n".join(notes))


def _build_gepa(config: GEPAConfig, ctx: BuildContext) -> Any:
    five_arg_metric = GEPAMetric(ctx.metric, ctx.options.feedback)
    reflection_lm = _prompt_lm(ctx)
    size = (
        {"auto": config.auto}
        if config.auto
        else {"max_metric_calls": config.max_metric_calls or ctx.budget or DEFAULT_BUDGET}
    )
    return dspy.GEPA(
        metric=five_arg_metric,
        **size,
        reflection_lm=reflection_lm,
        reflection_minibatch_size=config.reflection_minibatch_size,
        num_threads=ctx.options.num_threads,
        seed=ctx.options.seed,
    )


def _build_simba(config: SIMBAConfig, ctx: BuildContext) -> Any:
    steps = config.max_steps
    if steps is None:
        # Each step runs num_candidates programs on a batch of bsize examples.
        steps = (
            max(1, (ctx.budget or DEFAULT_BUDGET) // (config.bsize * (config.num_candidates + 1))) if ctx.budget else 4
        )
    return dspy.SIMBA(
        metric=ctx.metric,
        bsize=min(config.bsize, max(1, ctx.n_train)),
        num_candidates=config.num_candidates,
        max_steps=steps,
        max_demos=config.max_demos,
        prompt_model=_prompt_lm(ctx),
        num_threads=ctx.options.num_threads,
    )


#: Every optimizer by name; add one with :func:`register`.
REGISTRY: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in [
        OptimizerSpec.ours(APE, description="APE: induce, score, resample"),
        OptimizerSpec.ours(OPRO, description="OPRO: scored trajectory meta-prompt"),
        OptimizerSpec.ours(EvoPrompt, name="evoprompt-ga", variant="ga", description="EvoPrompt, genetic"),
        OptimizerSpec.ours(EvoPrompt, name="evoprompt-de", variant="de", description="EvoPrompt, differential"),
        OptimizerSpec.ours(ProTeGi, description="ProTeGi: textual gradients"),
        OptimizerSpec(
            name="mipro",
            config_model=MIPROConfig,
            build=_build_mipro,
            compile=_with_valset,
            enforces_budget=False,
            description="DSPy MIPROv2",
            compile_kwargs=_mipro_compile_kwargs,
            plan=_plan_mipro,
        ),
        # COPRO takes prompt_model as its first positional argument: metric is passed by name.
        OptimizerSpec(
            name="copro",
            config_model=COPROConfig,
            build=_build_copro,
            compile=_copro_compile,
            enforces_budget=False,
            description="DSPy COPRO",
            compile_kwargs=lambda c, ctx: {
                "eval_kwargs": {"num_threads": ctx.options.num_threads, "display_progress": False}
            },
            takes_valset=False,
            plan=_plan_copro,
        ),
        OptimizerSpec(
            name="bfs",
            config_model=BootstrapConfig,
            build=lambda c, ctx: dspy.BootstrapFewShot(ctx.metric, **c.model_dump()),
            compile=_train_only,
            enforces_budget=False,
            description="DSPy BootstrapFewShot",
            takes_valset=False,
        ),
        OptimizerSpec(
            name="bfsrs",
            config_model=RandomSearchConfig,
            build=_build_bfsrs,
            compile=_with_valset,
            enforces_budget=False,
            description="DSPy BootstrapFewShotWithRandomSearch",
        ),
        OptimizerSpec(
            name="labeled",
            config_model=LabeledConfig,
            build=lambda c, ctx: dspy.LabeledFewShot(k=c.k),
            compile=_train_only,
            enforces_budget=False,
            description="DSPy LabeledFewShot",
            takes_valset=False,
        ),
        OptimizerSpec(
            name="gepa",
            config_model=GEPAConfig,
            build=_build_gepa,
            compile=_with_valset,
            enforces_budget=False,
            description="DSPy GEPA",
            metric=MetricForm.SCALAR_FEEDBACK,
            takes_feedback=True,
        ),
        OptimizerSpec(
            name="simba",
            config_model=SIMBAConfig,
            build=_build_simba,
            compile=_train_only,
            enforces_budget=False,
            description="DSPy SIMBA",
            compile_kwargs=lambda c, ctx: {"seed": ctx.options.seed},
            takes_valset=False,
        ),
        OptimizerSpec.ours(
            DemoSearch,
            description="DemoSearch: labeled demo sets x k, screened by likelihood, confirmed by racing (small models)",
        ),
    ]
}


def register(
    optimizer: type[SearchTeleprompter], *, description: str, name: str | None = None, **init: Any
) -> OptimizerSpec:
    """Add one of dspy-ext's optimizers (a :class:`~dspy_ext.search.teleprompter.SearchTeleprompter`
    subclass) to :data:`REGISTRY`, by its class: its ``method`` is the name, its config model and
    capabilities make the entry. ``build_optimizer``, ``dspy-ext compile --optimizer``, compare and
    tune then know it by that name.

    Raises:
        ValueError: The name is taken by another optimizer.

    Example:
        >>> register(MySearch, description="my search")   # doctest: +SKIP
    """
    spec = OptimizerSpec.ours(optimizer, description=description, name=name, **init)
    taken = REGISTRY.get(spec.name)
    if taken is not None and taken.config_model is not spec.config_model:
        raise ValueError(f"optimizer name {spec.name!r} is taken")
    REGISTRY[spec.name] = spec
    return spec


def resolve_config(name: str, config: dict[str, Any] | None = None) -> OptimizerConfig:
    """Validate ``config`` for optimizer ``name`` and fill its defaults.

    Raises:
        ValueError: For an unknown optimizer, an unknown key or a bad value; the message
            names the optimizer and the offending keys.
    """
    return get_spec(name).config_model.resolve(config, name=name)


def get_spec(name: str) -> OptimizerSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(REGISTRY)}") from None


def build_optimizer(
    name: str,
    metric: Callable[..., Any],
    *,
    config: dict[str, Any] | None = None,
    options: CompileOptions | None = None,
    budget: int | None = None,
    seed: int = 0,
    num_threads: int = 4,
    n_train: int = 0,
    n_val: int = 0,
    prompt_model: dspy.BaseLM | None = None,
    log_dir: str | None = None,
    progress: bool = False,
    final_selector: FinalSelector | None = None,
    feedback: SearchFeedback | None = None,
    guards: dict[str, float] | None = None,
    repeats: int = 1,
    temperature: float | None = None,
) -> OptimizerHandle:
    """Build optimizer ``name`` from a validated config.

    Args:
        name: A key of :data:`REGISTRY`.
        metric: ``metric(example, prediction, trace=None)``; adapted where an optimizer wants another shape.
        config: Optimizer-specific settings (validated; see the ``*Config`` models).
        options: The shared settings as one :class:`CompileOptions`, instead of the keywords ``budget``
            to ``temperature``.
        budget: LM calls (``options.max_lm_calls``): a hard cap for dspy-ext's optimizers, the closest
            setting for DSPy's.
        n_train: Training-set size (some budget mappings need it).
        n_val: Validation-set size.
        feedback: A person's critiques, for the optimizers that take them (others raise).
        guards: Regression guards ``{criterion: points}``: dspy-ext's searches apply them to every
            candidate; the others are wrapped in an acceptance gate that returns the best guarded
            candidate, or the student, when the compiled program breaks one.
        temperature: ``options.eval_temperature``. The other keywords are :class:`CompileOptions`'s fields.

    Returns:
        An :class:`OptimizerHandle` (``handle.gate`` set when the optimizer does not apply guards itself).
    """
    if options is None:
        options = CompileOptions(
            max_lm_calls=budget or DEFAULT_BUDGET,
            seed=seed,
            num_threads=num_threads,
            prompt_model=prompt_model,
            log_dir=log_dir,
            progress=progress,
            final_selector=final_selector,
            feedback=feedback,
            guards=guards,
            repeats=repeats,
            eval_temperature=temperature,
        )
    else:
        budget = options.max_lm_calls
    return _build(get_spec(name), metric, resolve_config(name, config), options, budget, n_train, n_val)


def _build(
    spec: OptimizerSpec,
    metric: Callable[..., Any],
    config: OptimizerConfig,
    options: CompileOptions,
    budget: int | None,
    n_train: int,
    n_val: int,
) -> OptimizerHandle:
    _check_capabilities(spec, options)
    gated = spec.guards is GuardMode.GATE
    ctx = BuildContext(
        # DSPy's optimizers add and compare scores: a metric returning criteria reaches them as one float.
        metric=metric
        if spec.metric is MetricForm.RAW
        else ScalarMetric(metric, with_feedback=spec.metric is MetricForm.SCALAR_FEEDBACK),
        options=options.replace(guards=None, guard_reference=None) if gated else options,
        budget=budget,
        n_train=n_train,
        n_val=n_val,
    )
    gate = None
    if options.guards and gated:
        gate = AcceptanceGate(
            metric,
            options.guards,
            num_threads=options.num_threads,
            repeats=options.repeats,
            temperature=options.eval_temperature,
            seed=options.seed,
        )
    optimizer = spec.build(config, ctx)
    return OptimizerHandle(
        name=spec.name,
        optimizer=optimizer,
        config=config,
        enforces_budget=spec.enforces_budget,
        compile_fn=spec.compile,
        compile_kwargs=spec.compile_kwargs(config, ctx),
        gate=gate,
        planner=_planner(spec, config, ctx, optimizer),
    )


def _check_capabilities(spec: OptimizerSpec, options: CompileOptions) -> None:
    """Refuse a shared setting the optimizer cannot use, naming those that can."""
    if options.final_selector is not None and not spec.final_selector:
        raise ValueError(
            f"optimizer {spec.name!r} has no pluggable final selection; only dspy-ext's instruction "
            f"searches do ({', '.join(n for n, s in REGISTRY.items() if s.final_selector)})"
        )
    if options.feedback and not spec.takes_feedback:
        raise ValueError(
            f"optimizer {spec.name!r} cannot use a reviewer's critiques; these can: "
            f"{', '.join(n for n, s in REGISTRY.items() if s.takes_feedback)} (labeled examples and "
            "review criteria still reach every optimizer through the train set and the metric)"
        )


def _planner(
    spec: OptimizerSpec, config: OptimizerConfig, ctx: BuildContext, optimizer: Any
) -> Callable[[PlanInputs], CallPlan | None] | None:
    """How a built optimizer plans its calls: its own ``plan`` (dspy-ext's), else the spec's, else none.
    The train and val sizes are the build's (``n_train``, ``n_val``)."""
    own = getattr(optimizer, "plan", None)

    def sized(inputs: PlanInputs) -> PlanInputs:
        return replace(inputs, n_train=ctx.n_train, n_val=ctx.n_val)

    if callable(own):
        return lambda inputs: own(sized(inputs))
    if spec.plan is not None:
        return lambda inputs: spec.plan(config, ctx, sized(inputs))
    return None


def plan_inputs(student: dspy.Module, train: list[dspy.Example], lm: dspy.BaseLM | None) -> PlanInputs:
    """What a plan of compiling ``student`` on ``train`` with task model ``lm`` depends on: its predictors,
    the task's closed label set, and whether ``lm`` scores by one request per scored reply (a served engine)."""
    labels = closed_label_set(student, train)[0] if train else None
    engine = getattr(lm, "engine", None)
    return PlanInputs(
        n_predictors=len(predictors(student)),
        n_train=len(train),
        n_labels=len(labels) if labels else None,
        served_likelihood=bool(getattr(engine, "meters_own_requests", False)),
        likelihood_probe=bool(getattr(engine, "probe_pending", False)),
    )
