"""Parity check: score a program in DSPy and through the exported artifact's runtime.

The runtime pass runs the same program, but each ``dspy.Predict`` call goes
through the artifact instead of DSPy's adapter: runtime render -> the LM
called directly with those messages (``lm(messages=...)``) -> runtime parse.
Program code between predictors (control flow, post-processing such as
``Classify``'s label mapping) still runs as Python, so the comparison isolates
what the artifact is responsible for: the prompt text and the reply parsing.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dspy
from dspy.utils.exceptions import AdapterParseError

from dspy_ext.evaluation import EvaluationReport, Evaluator
from dspy_ext.export.apply import check_program
from dspy_ext.lm.likelihood import score_continuations
from dspy_ext.prompt_state import predictors
from dspy_ext.runtime import ParseError, PromptArtifact

logger = logging.getLogger(__name__)

__all__ = ["RuntimePredictorCall", "VerifyReport", "runtime_program", "verify"]

_PRIVILEGED = ("signature", "demos", "config", "lm")

try:
    # The runtime pass calls the LM with chat dicts exactly as DSPy 3.4's adapters do, so it marks its
    # calls the way they do; DSPy's deprecation of that call shape targets user code (removal in 3.5,
    # outside dspy-ext's supported range). No warnings filter is touched.
    from dspy.clients._deprecation import adapter_message_call
except ImportError:  # another DSPy: the call shape may warn, nothing breaks

    def adapter_message_call(lm: Any, messages: Any) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


class RuntimePredictorCall:
    """A ``forward`` for one predictor that runs through the artifact's runtime.

    Args:
        artifact: The loaded artifact.
        name: The predictor's name in the artifact.
        predictor: The predictor being replaced (for its signature and own LM).
        lm: LM to call; default the predictor's own LM, else ``dspy.settings.lm``.
        fresh: Bypass DSPy's response cache, so every reply is generated anew.

    Example:
        >>> predictor.forward = RuntimePredictorCall(art, "predict", predictor)  # doctest: +SKIP
    """

    def __init__(
        self,
        artifact: PromptArtifact,
        name: str,
        predictor: dspy.Predict,
        *,
        lm: dspy.BaseLM | None = None,
        fresh: bool = True,
    ) -> None:
        self.artifact = artifact
        self.name = name
        self.predictor = predictor
        self.lm = lm
        self.fresh = fresh
        self.inputs = artifact.input_names(name)
        self.lm_kwargs = artifact.predictor(name)["lm_kwargs"]

    def _lm(self) -> dspy.BaseLM:
        # A predictor with a label rule is answered by scoring its labels with the task LM, not through
        # its own (answer-rule) LM.
        own = self.predictor.lm if self.artifact.label_rule(self.name) is None else None
        lm = self.lm or own or dspy.settings.lm
        if lm is None:
            raise ValueError("no LM configured for the runtime pass")
        return lm.copy(cache=False) if self.fresh and hasattr(lm, "cache") else lm

    def __call__(self, **kwargs: Any) -> dspy.Prediction:
        used = [k for k in _PRIVILEGED if k in kwargs]
        if used:
            raise ValueError(f"predictor {self.name!r}: per-call {used} cannot be honoured by the artifact runtime")
        ignored = [k for k in kwargs if k not in self.inputs]
        if ignored:
            logger.debug("predictor %s: ignoring inputs not in the signature: %s", self.name, ignored)
        inputs = {k: v for k, v in kwargs.items() if k in self.inputs}
        lm = self._lm()
        if self.artifact.label_rule(self.name) is not None:

            def score(messages: list[dict[str, str]], replies: list[str]) -> list[float]:
                return score_continuations(lm, messages, replies, end_of_turn=False)

            return dspy.Prediction(**self.artifact.answer(self.name, score, **inputs))

        def complete(messages: list[dict[str, str]]) -> str:
            with adapter_message_call(lm, messages):
                outputs = lm(messages=messages, **self.lm_kwargs)
            first = outputs[0] if outputs else ""
            text = first.get("text") if isinstance(first, dict) else first
            return text or ""

        try:
            fields = self.artifact.run(self.name, complete, **inputs)
        except ParseError as exc:
            raise AdapterParseError(
                adapter_name=f"runtime/{exc.adapter}",
                signature=self.predictor.signature,
                lm_response=exc.reply,
                message=str(exc),
            ) from exc
        return dspy.Prediction(**fields)


def runtime_program(
    program: dspy.Module, artifact: PromptArtifact, *, lm: dspy.BaseLM | None = None, fresh: bool = True
) -> dspy.Module:
    """A copy of ``program`` whose predictors call the LM through ``artifact``'s runtime.

    Args:
        program: The exported program (it is not modified).
        artifact: Its artifact (checked with :func:`~dspy_ext.export.apply.check_program`).
        lm: LM for every predictor (default: each predictor's own, else ``dspy.settings.lm``).
        fresh: Bypass DSPy's response cache for the runtime calls.

    Returns:
        The runtime-backed copy.

    Raises:
        dspy_ext.export.apply.ApplyError: The artifact does not fit the program.

    Example:
        >>> rt = runtime_program(program, load("p.prompt.json"))   # doctest: +SKIP
        >>> rt(input="Dull.").output                               # doctest: +SKIP
    """
    check_program(artifact, program)
    # Share LMs (and their engines) between the copies instead of deep-copying model objects.
    memo: dict[int, Any] = {}
    for _, predictor in predictors(program):
        if predictor.lm is not None:
            memo[id(predictor.lm)] = predictor.lm
    clone = copy.deepcopy(program, memo)
    for name, predictor in predictors(clone):
        predictor.forward = RuntimePredictorCall(artifact, name, predictor, lm=lm, fresh=fresh)
    return clone


@dataclass
class VerifyReport:
    """DSPy's score and the runtime's score of one program on the same rows.

    Attributes:
        dspy: The evaluation of the program in DSPy.
        runtime: The evaluation of the runtime-backed copy.
        tolerance: Largest allowed score difference (points on the 0-100 scale).
    """

    dspy: EvaluationReport
    runtime: EvaluationReport
    tolerance: float

    @property
    def dspy_score(self) -> float:
        """The in-DSPy score, 0-100, rounded to 2 decimals."""
        return round(self.dspy.score, 2)

    @property
    def runtime_score(self) -> float:
        """The score through the artifact's runtime, 0-100, rounded to 2 decimals."""
        return round(self.runtime.score, 2)

    @property
    def difference(self) -> float:
        """``runtime_score - dspy_score`` in points."""
        return round(self.runtime.score - self.dspy.score, 2)

    @property
    def passed(self) -> bool:
        """Whether the two scores differ by at most :attr:`tolerance` points."""
        return abs(self.runtime.score - self.dspy.score) <= self.tolerance + 1e-9

    @property
    def differing_rows(self) -> list[int]:
        """Indices of rows whose score, prediction or error class differ between the two passes."""
        ours = {(r.index, r.repeat): r for r in self.runtime.rows}
        out = []
        for row in self.dspy.rows:
            other = ours.get((row.index, row.repeat))
            if other is None or (row.score, row.prediction, row.error) != (other.score, other.prediction, other.error):
                out.append(row.index)
        return sorted(set(out))

    def to_dict(self) -> dict[str, Any]:
        """The figures as JSON-ready values (scores, n, difference, rows that differ, errors, LM calls)."""
        differing = self.differing_rows
        return {
            "dspy_score": self.dspy_score,
            "runtime_score": self.runtime_score,
            "n": self.dspy.n_examples,
            "difference": self.difference,
            "tolerance": self.tolerance,
            "passed": self.passed,
            "rows_differing": len(differing),
            "differing_rows": differing[:20],
            "dspy_errors": self.dspy.errors,
            "runtime_errors": self.runtime.errors,
            "lm_calls": {"dspy": self.dspy.usage.calls, "runtime": self.runtime.usage.calls},
        }


def verify(
    program: dspy.Module,
    artifact: PromptArtifact,
    examples: Sequence[dspy.Example],
    metric: Any,
    *,
    tolerance: float = 0.0,
    num_threads: int = 1,
    progress: bool = False,
    fresh: bool = True,
) -> VerifyReport:
    """Score ``program`` in DSPy and through ``artifact``'s runtime on ``examples``.

    Run it inside ``dspy.context(lm=..., adapter=...)`` with the LM and adapter
    the artifact was exported with.

    Args:
        program: The exported program.
        artifact: Its artifact (best loaded back from disk, so the file itself is checked).
        examples: Rows to score.
        metric: ``metric(example, prediction, trace=None)``.
        tolerance: Allowed score difference in points (0-100 scale); 0 for a greedy local model.
        num_threads: Evaluation threads.
        progress: Show progress bars.
        fresh: Generate every runtime reply anew instead of reading DSPy's cache.

    Returns:
        A :class:`VerifyReport`; ``report.passed`` tells whether the scores agree.

    Raises:
        ValueError: The artifact was exported with another adapter than the
            one configured, or it does not fit the program.

    Example:
        >>> with dspy.context(lm=lm, adapter=PlainAdapter()):                 # doctest: +SKIP
        ...     report = verify(program, load("p.prompt.json"), test, exact_match)
        >>> report.dspy_score, report.runtime_score                           # doctest: +SKIP
        (63.0, 63.0)
    """
    configured = type(dspy.settings.adapter or dspy.ChatAdapter()).__name__
    used = sorted({artifact.data["predictors"][n]["adapter"] for n in artifact.names})
    if used != [configured]:
        raise ValueError(
            f"the artifact was exported with {used} but the configured adapter is {configured}; "
            "verify with the adapter the artifact was exported with"
        )
    rt = runtime_program(program, artifact, fresh=fresh)
    dspy_report = Evaluator(metric, num_threads=num_threads, progress=progress).evaluate(
        program, examples, desc="verify: DSPy"
    )
    runtime_report = Evaluator(metric, num_threads=num_threads, progress=progress, cache=False).evaluate(
        rt, examples, desc="verify: runtime"
    )
    return VerifyReport(dspy=dspy_report, runtime=runtime_report, tolerance=tolerance)
