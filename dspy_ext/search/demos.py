"""Few-shot demo sets built with DSPy's own LabeledFewShot and BootstrapFewShot.

Set 0 holds labeled demos only (free); sets 1.. are bootstrapped: the
program, taught by set 0, runs on shuffled training examples and traces that
pass the metric become demos. With ``max_bootstrapped_demos=0`` and
``max_labeled_demos=0`` there is exactly one set and it is empty: zero demos
mean zero demos (unlike MIPROv2, dspy#8508).
"""

from __future__ import annotations

import logging
import random
from typing import Any

import dspy
from dspy.teleprompt import BootstrapFewShot

from dspy_ext.evaluation.constrained import infer_label_set, literal_labels
from dspy_ext.lm.metering import find_budget_exhausted
from dspy_ext.prompt_state import demo_to_dict, predictors

logger = logging.getLogger(__name__)

DemoSet = dict[str, tuple[dict[str, Any], ...]]  # predictor name -> demos


def labeled_demo_set(names: list[str], trainset: list[dspy.Example], k: int, rng: random.Random) -> DemoSet:
    """``k`` labeled examples (inputs and final outputs) for every predictor."""
    if k <= 0:
        return {name: () for name in names}
    chosen = rng.sample(trainset, min(k, len(trainset)))
    return {name: tuple(demo_to_dict(ex) for ex in chosen) for name in names}


def build_demo_sets(
    student: dspy.Module,
    trainset: list[dspy.Example],
    metric: Any,
    *,
    num_sets: int,
    max_bootstrapped_demos: int,
    max_labeled_demos: int,
    rng: random.Random,
    teacher: dspy.Module | None = None,
) -> list[DemoSet]:
    """Build up to ``num_sets`` demo sets; the first is labeled-only.

    Args:
        student: The program whose predictors get demos.
        trainset: Training examples.
        metric: Decides which bootstrapped traces are kept.
        num_sets: Wanted number of sets (>= 1).
        max_bootstrapped_demos: Bootstrapped demos per predictor per set.
        max_labeled_demos: Labeled demos per predictor per set.
        rng: Private RNG (shuffles and sizes).
        teacher: Program that produces the traces (default: the student).

    Returns:
        A list of demo sets; bootstrapping stops early, keeping what it built,
        when the call budget runs out.
    """
    names = [name for name, _ in predictors(student)]
    sets = [labeled_demo_set(names, trainset, max_labeled_demos, rng)]
    if max_bootstrapped_demos <= 0:
        return sets
    for index in range(1, num_sets):
        shuffled = list(trainset)
        rng.shuffle(shuffled)
        size = rng.randint(1, max_bootstrapped_demos)
        optimizer = BootstrapFewShot(
            metric=metric,
            max_bootstrapped_demos=size,
            max_labeled_demos=max_labeled_demos,
            max_rounds=1,
            max_errors=len(shuffled) + 1,
        )
        try:
            compiled = optimizer.compile(student, teacher=teacher, trainset=shuffled)
        except Exception as exc:
            if find_budget_exhausted(exc) is None:
                raise
            logger.warning("demo set %d: budget exhausted while bootstrapping; keeping %d set(s)", index, len(sets))
            break
        demo_set = {name: tuple(demo_to_dict(d) for d in p.demos) for name, p in predictors(compiled)}
        if demo_set not in sets:
            sets.append(demo_set)
    return sets


def closed_label_set(student: dspy.Module, trainset: list[dspy.Example]) -> tuple[tuple[str, ...] | None, str | None]:
    """The closed label set of the examples' single label field and that field (``None`` when open or several):
    the student's declared ``Literal`` labels, else the labels read off the training outputs."""
    keys = sorted({k for ex in trainset for k in ex.labels() if k != "accepted"})
    if len(keys) != 1:
        return None, None
    found = predictors(student)
    if len(found) == 1 and keys[0] in found[0][1].signature.output_fields:
        declared = literal_labels(found[0][1].signature, keys[0])
        if declared:
            return declared, keys[0]
    return infer_label_set(trainset, keys[0]), keys[0]
