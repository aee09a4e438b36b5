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
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputsFileError(f"{path}, line {number}: not valid JSON: {exc.msg}") from None
            if not isinstance(row, dict):
                raise InputsFileError(f"{path}, line {number}: expected a JSON object with {list(input_keys)}")
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


def _plain(value: Any) -> Any:
    """A prediction value as JSON data (objects such as pydantic models become their text)."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
    return value


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
    total, done = len(rows) * samples, 0
    for number, raw in enumerate(rows, 1):
        row = _row_dict(raw)
        missing = [k for k in input_keys if k not in row]
        if missing:
            raise ValueError(f"input row {number} has no field(s) {missing}")
        inputs = {k: row[k] for k in input_keys}
        gold = {k: row[k] for k in (output_keys or ()) if k in row and row[k] is not None} or None
        for k in range(samples):
            done += 1
            if store.has_sample(inputs, version, k):
                summary.reused += 1
            else:
                overrides: dict[str, Any] = {}
                if samples > 1:
                    overrides["rollout_id"] = k
                if temperature is not None:
                    overrides["temperature"] = temperature
                run_lm = lm.copy(**overrides) if overrides else lm
                try:
                    with dspy.context(lm=run_lm):
                        prediction = program(**inputs)
                except Exception as exc:  # one failed sample is reported, the others go on
                    summary.errors.append(f"row {number} sample {k}: {type(exc).__name__}: {str(exc)[:200]}")
                    logger.warning("review collect: %s", summary.errors[-1])
                else:
                    values = prediction.toDict() if hasattr(prediction, "toDict") else dict(prediction)
                    keys = list(output_keys) if output_keys else list(values)
                    outputs = {key: _plain(values.get(key)) for key in keys}
                    store.add_output(inputs, outputs, prompt_version=version, sample_index=k, gold=gold)
                    summary.new_outputs += 1
            if on_progress is not None:
                on_progress(done, total)
    return summary
