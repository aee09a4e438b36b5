"""A tuning job built from :class:`~dspy_ext.experiment.TuneSettings`: what one process needs to work on a study.

The settings are plain data (they pickle), so every worker process builds its own
:class:`TuneJob` from the same settings and joins the same study; only the worker
index differs (it offsets the sampler's seed).

Example:
    >>> job = TuneJob.from_settings(TuneSettings(task="sentiment", optimizers=["ape", "bfsrs"], trials=8))
    ...                                                                                    # doctest: +SKIP
    >>> session = job.open()                                                               # doctest: +SKIP
    >>> job.optimize(session, max_trials=2)                                                # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dspy

from dspy_ext.data import split_train_val
from dspy_ext.experiment import (
    Components,
    TuneSettings,
    build_components,
    build_student,
    resolve_metric,
)
from dspy_ext.experiment.components import make_prompt_lm
from dspy_ext.experiment.feedback import merge_review_store
from dspy_ext.tuning.space import TuningSpace, load_space
from dspy_ext.tuning.storage import MEMORY, normalize_url
from dspy_ext.tuning.study import OptunaTuner, TuneSession


def tuning_space(settings: TuneSettings) -> TuningSpace:
    """The space of ``settings``: its ``space`` file, else its ``optimizers`` with their default ranges,
    else the default space; ``budget`` (when set) replaces the space's per-trial budget.

    Raises:
        TuningSpaceError: The space cannot work (every problem is listed).
        FileNotFoundError: The space file does not exist.
    """
    if settings.space:
        space = load_space(settings.space)
    elif settings.optimizers:
        space = TuningSpace.from_dict({"optimizers": settings.optimizers})
    else:
        space = TuningSpace.default()
    if settings.budget is not None:
        space = TuningSpace.from_dict({**space.to_dict(), "budget": settings.budget})
    return space


def study_metric(settings: TuneSettings, metric: Callable[..., Any]) -> Callable[..., Any]:
    """``metric``, or, with ``settings.criteria``, one metric returning every named metric as a criterion.

    Raises:
        ComponentError: A criterion that is neither a built-in metric nor an importable one.
    """
    if not settings.criteria:
        return metric
    funcs = {name: resolve_metric(name) for name in settings.criteria}

    def criteria_metric(example: dspy.Example, prediction: Any, trace: Any = None) -> dict[str, Any]:
        return {name: f(example, prediction, trace) for name, f in funcs.items()}

    return criteria_metric


@dataclass
class TuneJob:
    """The task, LM, data split, student and tuner of one process working on a study.

    Attributes:
        settings: The settings it was built from.
        components: Task, LM, adapter and metric.
        trainset: The training rows every trial's optimizer trains on.
        devset: The validation rows every trial is scored on.
        student: The program to optimize.
        tuner: The :class:`OptunaTuner`.
    """

    settings: TuneSettings
    components: Components
    trainset: list[dspy.Example]
    devset: list[dspy.Example]
    student: dspy.Module
    tuner: OptunaTuner

    @classmethod
    def from_settings(
        cls,
        settings: TuneSettings,
        *,
        worker_index: int = 0,
        lm: dspy.BaseLM | None = None,
    ) -> TuneJob:
        """Build the job; the space and storage are checked first, so they fail before any data or LM is loaded.

        Args:
            settings: The tune's settings.
            worker_index: This process's index among the study's workers (offsets the sampler's seed).
            lm: An LM to use instead of ``make_lm(settings.lm)``.

        Raises:
            TuningSpaceError: The space cannot work.
            ValueError: An unknown task, program, metric or adapter, a bad storage URL, or several
                workers on an in-memory study.
        """
        space = tuning_space(settings)
        if settings.workers > 1 and normalize_url(settings.storage) == MEMORY:
            raise ValueError("workers > 1 needs a shared storage (a SQLite file or a database URL), not memory")
        components = build_components(settings, lm=lm)
        task = components.task
        trainset, devset = split_train_val(task.train, settings.train, settings.val, seed=settings.seed)
        student = build_student(settings, task)
        metric = study_metric(settings, components.metric)
        review: dict[str, Any] = {"guards": dict(settings.guards)} if settings.guards else {}
        if settings.feedback:
            # The review's labeled examples join the training rows; its checks become criteria (and guards);
            # its critiques go to every trial's optimizer that uses them.
            merged = merge_review_store(settings, metric=metric, task=components.task, train=trainset, val=devset)
            metric, trainset = merged.metric, merged.train
            review = {"feedback": merged.critiques, "guards": merged.guards}
        tuner = OptunaTuner(
            metric,
            space=space,
            n_trials=settings.trials,
            storage=settings.storage,
            study_name=settings.study or f"tune-{task.name}",
            seed=settings.seed,
            num_threads=settings.threads,
            objective=settings.objective,
            out_dir=settings.out,
            heartbeat_interval=settings.heartbeat,
            timeout=settings.timeout,
            worker_index=worker_index,
            max_cost=settings.max_cost,
            cost_shares=settings.workers,
            prompt_model=make_prompt_lm(settings),
            **review,
        )
        return cls(settings, components, trainset, devset, student, tuner)

    def open(self) -> TuneSession:
        """Create or join the study (a new study scores the student on the devset first)."""
        with self.components.context():
            return self.tuner.open(self.student, trainset=self.trainset, valset=self.devset)

    def optimize(
        self, session: TuneSession, *, max_trials: int | None = None, callbacks: Sequence[Callable[..., None]] = ()
    ) -> int:
        """Run trials of ``session`` with this job's LM and adapter; the number of trials run."""
        with self.components.context():
            return session.optimize(max_trials=max_trials, callbacks=callbacks)
