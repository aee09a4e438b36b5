"""Make the outputs to review: run a program on N inputs, K samples each, into the store.

Inputs come from a data set (``dspy.Example`` rows, with gold outputs) or from an
unlabelled JSONL file of inputs only (:func:`load_inputs_jsonl`). With ``samples``
K > 1 every input is run K times at a temperature > 0, each sample with its own
``rollout_id`` so DSPy's cache does not collapse them; identical outputs become
one review item (graded once) with several samples.

Collecting is resumable: a (input, prompt version, sample index) already in the
store is not run again.

Example:
    >>> summary = collect(program, task.test[:20], store=store, input_keys=("input",),
    ...                   samples=3, temperature=0.7, lm=lm)          # doctest: +SKIP
    >>> summary.new_outputs                                           # doctest: +SKIP
    60
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy

from dspy_ext.prompt_state import program_fingerprint, program_state
from dspy_ext.review.codec import json_object_line
from dspy_ext.review.records import json_value
from dspy_ext.review.store import ReviewStore

logger = logging.getLogger(__name__)

DEFAULT_SAMPLING_TEMPERATURE = 0.7


class InputsFileError(ValueError):
    """An inputs file that cannot be read; the message names the file and line."""


@dataclass
class CollectSummary:
    """What :func:`collect` did.

    Attributes:
        prompt_version: The program's prompt hash the outputs are recorded under.
        inputs: Inputs run.
        samples: Samples per input.
        new_outputs: Samples run now.
        reused: Samples already in the store (not run again).
        errors: One line per failed sample (the program raised).
    """

    prompt_version: str
    inputs: int
    samples: int
    new_outputs: int = 0
    reused: int = 0
    errors: list[str] = field(default_factory=list)


def load_inputs_jsonl(path: str | Path, input_keys: Sequence[str]) -> list[dict[str, Any]]:
    """Read an unlabelled inputs file: one JSON object per line holding the input fields.

    Extra keys are kept (an output key there is used as gold).

    Args:
        path: The JSONL file.
        input_keys: Fields each row must have.

    Returns:
        The rows as dicts.

    Raises:
        InputsFileError: Missing file, bad JSON, or a row without an input field (line named).
    """
    path = Path(path)
    if not path.is_file():
        raise InputsFileError(f"{path}: no such inputs file")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            expected = f"expected a JSON object with {list(input_keys)}"
            row = json_object_line(line, f"{path}, line {number}", InputsFileError, expected)
            missing = [k for k in input_keys if k not in row or row[k] in (None, "")]
            if missing:
                raise InputsFileError(
                    f"{path}, line {number}: missing input field(s) {missing} (row has {sorted(row)})"
                )
            rows.append(row)
    if not rows:
        raise InputsFileError(f"{path}: no rows")
    return rows


def prompt_version(program: dspy.Module) -> str:
    """The prompt version of a program: a hash of every predictor's instruction, fields and demos."""
    return program_fingerprint(program)


def _row_dict(row: Mapping[str, Any] | dspy.Example) -> dict[str, Any]:
    return row.toDict() if hasattr(row, "toDict") else dict(row)


def collect(
    program: dspy.Module,
    rows: Sequence[Mapping[str, Any] | dspy.Example],
    *,
    store: ReviewStore,
    input_keys: Sequence[str],
    output_keys: Sequence[str] | None = None,
    samples: int = 1,
    temperature: float | None = None,
    lm: dspy.LM | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> CollectSummary:
    """Run ``program`` on ``rows`` (K samples each) and record every output in ``store``.

    Args:
        program: Any DSPy module.
        rows: Inputs (dicts or ``dspy.Example``); output keys present become the gold output.
        store: Where the outputs go.
        input_keys: The program's input fields.
        output_keys: The output fields to show (default: every field of the prediction).
        samples: K outputs per input.
        temperature: Sampling temperature; default 0.7 when ``samples > 1``, else the LM's own.
        lm: The LM (default: ``dspy.settings.lm``).
        on_progress: Called with ``(done, total)`` after each sample.

    Returns:
        A :class:`CollectSummary`.
    """
    if samples < 1:
        raise ValueError("samples must be >= 1")
    lm = lm or dspy.settings.lm
    if lm is None:
        raise ValueError("no LM: pass lm= or configure dspy.settings.lm")
    if temperature is None and samples > 1:
        temperature = DEFAULT_SAMPLING_TEMPERATURE
    version = prompt_version(program)
    store.set_meta(f"prompt:{version}", json.dumps(program_state(program), ensure_ascii=False, default=str))
    summary = CollectSummary(prompt_version=version, inputs=len(rows), samples=samples)
    run = _SampleRun(program, store, version, lm, samples, temperature, output_keys, summary)
    total, done = len(rows) * samples, 0
    for number, raw in enumerate(rows, 1):
        inputs, gold = _inputs_and_gold(_row_dict(raw), number, input_keys, output_keys)
        for k in range(samples):
            done += 1
            if store.has_sample(inputs, version, k):
                summary.reused += 1
            else:
                run.sample(number, inputs, gold, k)
            if on_progress is not None:
                on_progress(done, total)
    return summary


def _inputs_and_gold(
    row: dict[str, Any], number: int, input_keys: Sequence[str], output_keys: Sequence[str] | None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A row's input fields, and its gold output fields (``None`` when it has none)."""
    missing = [k for k in input_keys if k not in row]
    if missing:
        raise ValueError(f"input row {number} has no field(s) {missing}")
    inputs = {k: row[k] for k in input_keys}
    gold = {k: row[k] for k in (output_keys or ()) if k in row and row[k] is not None} or None
    return inputs, gold


class _SampleRun:
    """Runs one sample of the program and records its output (or its failure) for :func:`collect`."""

    def __init__(
        self,
        program: dspy.Module,
        store: ReviewStore,
        version: str,
        lm: dspy.LM,
        samples: int,
        temperature: float | None,
        output_keys: Sequence[str] | None,
        summary: CollectSummary,
    ) -> None:
        self.program, self.store, self.version, self.lm = program, store, version, lm
        self.samples, self.temperature, self.output_keys, self.summary = samples, temperature, output_keys, summary

    def lm_for(self, k: int) -> dspy.LM:
        """The LM of sample ``k``: its own ``rollout_id`` (when K > 1) and the sampling temperature."""
        overrides: dict[str, Any] = {}
        if self.samples > 1:
            overrides["rollout_id"] = k
        if self.temperature is not None:
            overrides["temperature"] = self.temperature
        return self.lm.copy(**overrides) if overrides else self.lm

    def sample(self, number: int, inputs: dict[str, Any], gold: dict[str, Any] | None, k: int) -> None:
        """Run sample ``k`` of row ``number``; a failure is counted and logged, not raised."""
        run_lm = self.lm_for(k)
        try:
            with dspy.context(lm=run_lm):
                prediction = self.program(**inputs)
        except Exception as exc:  # one failed sample is reported, the others go on
            self.summary.errors.append(f"row {number} sample {k}: {type(exc).__name__}: {str(exc)[:200]}")
            logger.warning("review collect: %s", self.summary.errors[-1])
            return
        values = prediction.toDict() if hasattr(prediction, "toDict") else dict(prediction)
        keys = list(self.output_keys) if self.output_keys else list(values)
        outputs = {key: json_value(values.get(key)) for key in keys}
        self.store.add_output(inputs, outputs, prompt_version=self.version, sample_index=k, gold=gold)
        self.summary.new_outputs += 1
