"""Labeled demo sets for small models: class-balanced, ordered, and sized to fit the context.

Labeled demos cost no LM call to build, and on a 135M model they decide most
of the score. Two things matter besides which rows are drawn:

* **Balance.** With a closed label set, a draw of 3 demos from a 50/50 task
  is all one label a quarter of the time, and the model then repeats that
  label. :func:`balanced_demos` takes the labels in turn.
* **Order.** Small models favour the label of the last demos (recency bias).
  Taking labels in turn, in a fresh random order each round, never puts two
  demos of one label next to each other when the classes allow it.

:func:`fit_demos_to_context` drops demos from the end until the rendered
prompt (with the longest training input as a probe) fits the context window.

Example:
    >>> demos = balanced_demos(task.train, 8, seed=0, labels=("negative", "positive"))  # doctest: +SKIP
    >>> [d.output for d in demos]                                                         # doctest: +SKIP
    ['positive', 'negative', 'negative', 'positive', ...]
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from typing import Any

import dspy

from dspy_ext.lm.likelihood import count_prompt_tokens

__all__ = ["DEMO_ORDERS", "DemoOrder", "balanced_demos", "fit_demos_to_context"]


class DemoOrder(str, enum.Enum):
    """The order of drawn demos: labels in turn (a random order per round), or a random order."""

    INTERLEAVE = "interleave"
    SHUFFLE = "shuffle"


#: The demo orders' names (see :class:`DemoOrder`).
DEMO_ORDERS = tuple(order.value for order in DemoOrder)


def balanced_demos(
    examples: Sequence[dspy.Example],
    k: int,
    *,
    seed: int,
    field: str = "output",
    labels: Sequence[str] | None = None,
    order: str = DemoOrder.INTERLEAVE,
) -> list[dspy.Example]:
    """Draw ``k`` labeled demos, class-balanced when there is a label set.

    Args:
        examples: The pool (usually the training split; never the validation rows).
        k: Number of demos (at most ``len(examples)``).
        seed: Seed of a private RNG.
        field: The output field that holds the label.
        labels: The closed label set (e.g. from
            :func:`dspy_ext.evaluation.constrained.infer_label_set`); ``None``
            draws ``k`` rows at random (open outputs). Rows whose output is
            not a label are not drawn when a set is given.
        order: A :class:`DemoOrder` (or its name).

    Returns:
        ``k`` distinct examples (fewer only if the pool is smaller), in demo order.

    Raises:
        ValueError: ``k`` < 0 or an unknown order.

    Example:
        >>> pool = [dspy.Example(input=str(i), output="ab"[i % 2]).with_inputs("input") for i in range(10)]
        >>> [d.output for d in balanced_demos(pool, 4, seed=0, labels=("a", "b"))].count("a")
        2
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if order not in DEMO_ORDERS:
        raise ValueError(f"unknown demo order {order!r}; expected one of {', '.join(DEMO_ORDERS)}")
    rng = random.Random(seed)
    if k == 0:
        return []
    if labels is None:
        chosen = rng.sample(list(examples), min(k, len(examples)))
        return chosen
    chosen = _interleave(_label_groups(examples, field, labels, rng), k, rng)
    if order == DemoOrder.SHUFFLE:
        rng.shuffle(chosen)
    return chosen


def _label_groups(
    examples: Sequence[dspy.Example], field: str, labels: Sequence[str], rng: random.Random
) -> dict[str, list[dspy.Example]]:
    """The rows of each label, shuffled (rows whose output is none of the labels are left out)."""
    groups: dict[str, list[dspy.Example]] = {str(label): [] for label in labels}
    for example in examples:
        value = str(example[field]).strip()
        if value in groups:
            groups[value].append(example)
    for group in groups.values():
        rng.shuffle(group)
    return groups


def _interleave(groups: dict[str, list[dspy.Example]], k: int, rng: random.Random) -> list[dspy.Example]:
    """Up to ``k`` rows taken one label at a time, in a random order of the labels each round."""
    chosen: list[dspy.Example] = []
    while len(chosen) < k and any(groups.values()):
        round_labels = [label for label, group in groups.items() if group]
        rng.shuffle(round_labels)
        for label in round_labels:
            if len(chosen) == k:
                break
            chosen.append(groups[label].pop())
    return chosen


def fit_demos_to_context(
    predictor: dspy.Predict,
    demos: Sequence[Any],
    *,
    lm: Any,
    probe_inputs: dict[str, Any],
    max_prompt_tokens: int = 2048,
    reserve_tokens: int = 64,
    adapter: dspy.Adapter | None = None,
) -> list[Any]:
    """The longest prefix of ``demos`` whose prompt fits the context window.

    Args:
        predictor: The predictor the demos are for (its instruction is rendered too).
        demos: The demos, in order; later ones are dropped first.
        lm: The LM whose tokenizer counts (an estimate for LMs without one,
            see :func:`dspy_ext.lm.likelihood.count_prompt_tokens`).
        probe_inputs: Input values to render with, e.g. the longest training input.
        max_prompt_tokens: The context window (SmolLM2-135M was trained on 2048).
        reserve_tokens: Room kept for the reply.
        adapter: The adapter (default: the configured one).

    Returns:
        A list of the first demos that fit (possibly empty).
    """
    adapter = adapter or dspy.settings.adapter
    if adapter is None:
        raise ValueError("no adapter is configured to render the prompt")
    budget = max_prompt_tokens - reserve_tokens
    kept = list(demos)
    while kept:
        messages = adapter.format(predictor.signature, kept, dict(probe_inputs))
        if count_prompt_tokens(lm, messages) <= budget:
            break
        kept.pop()
    return kept
