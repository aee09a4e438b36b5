"""What a tuning study found: the best trial, the Pareto front, the top trials, their programs and a summary.

:class:`StudyResults` reads the study (every process's trials, not only this one's):

* :meth:`~StudyResults.best_trial` - the best complete trial (feasible, in ``constraints`` mode; in
  ``pareto`` mode the front's best on the primary criterion);
* :meth:`~StudyResults.best_program` / :meth:`~StudyResults.program_of` - a trial's program, from
  this process, its saved file, or (another machine's trial) its stored instructions and demos;
* :meth:`~StudyResults.save_best` - ``best_program.json`` and ``best_trial.json`` next to the study;
* :meth:`~StudyResults.summary` - the study in figures (a :class:`~dspy_ext.tuning.summary.StudySummary`).

Example:
    >>> results = tuner.open(student, trainset=train, valset=dev).results   # doctest: +SKIP
    >>> results.summary().best_value, results.best_program()                 # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dspy

from dspy_ext.lm.answer_rule import only_answer_rule_lms
from dspy_ext.prompt_state import predictors
from dspy_ext.tuning.storage import display_url
from dspy_ext.tuning.summary import StudySummary

if TYPE_CHECKING:
    from dspy_ext.tuning.study import StudyIdentity


class StudyResults:
    """Reads a study's trials and writes its best program.

    Args:
        study: The ``optuna.Study``.
        identity: Its objective, criteria, primary criterion and baseline.
        student: The program the trials compiled (programs are rebuilt in its shape).
        storage_url: The storage (shown with any password masked).
        target_trials: The study's target of finished trials.
        out_dir: Where the best program goes (``None``: nowhere, an in-memory study).
        programs: Programs of trials finished in this process, by trial number.
    """

    def __init__(
        self,
        study: Any,
        identity: StudyIdentity,
        *,
        student: dspy.Module,
        storage_url: str,
        target_trials: int,
        out_dir: Path | None,
        programs: Mapping[int, dspy.Module] | None = None,
    ) -> None:
        self.study = study
        self.identity = identity
        self.student = student
        self.storage_url = storage_url
        self.target_trials = target_trials
        self.out_dir = out_dir
        self.programs = programs if programs is not None else {}

    # ---- the study's identity, for readers ----
    @property
    def study_name(self) -> str:
        return self.study.study_name

    @property
    def objective(self) -> str:
        return self.identity.objective

    @property
    def criteria(self) -> list[str]:
        return self.identity.criteria

    @property
    def primary(self) -> str:
        return self.identity.primary

    @property
    def baseline(self) -> dict[str, Any]:
        return self.identity.baseline

    @property
    def primary_index(self) -> int:
        """Where the primary criterion is in a trial's ``values`` (0 unless ``pareto``)."""
        return self.criteria.index(self.primary) if self.objective == "pareto" else 0

    # ---- trials ----
    def counts(self) -> dict[str, int]:
        """Trials of the study by state (``all`` = every trial, resumed and retried ones included)."""
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        by_state = {s.name.lower(): 0 for s in TrialState}
        for t in trials:
            by_state[t.state.name.lower()] += 1
        return {"all": len(trials), **by_state, "finished": by_state["complete"] + by_state["pruned"]}

    def best_trial(self) -> Any | None:
        """The best complete trial (feasible, in ``constraints`` mode); ``None`` if there is none.

        Single objective: highest value, then the earlier trial (a later trial with the same
        parameters may show 0 LM calls only because DSPy's cache answered it).
        Pareto: the front's trial with the best primary criterion.
        """
        from optuna.trial import TrialState

        if self.objective == "pareto":
            front = self.pareto_front()
            k = self.primary_index
            return max(front, key=lambda t: (t.values[k], sum(t.values), -t.number)) if front else None
        complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        feasible = [t for t in complete if is_feasible(t)]
        return max(feasible, key=lambda t: (t.value, -t.number)) if feasible else None

    def pareto_front(self) -> list[Any]:
        """The Pareto-optimal complete trials (``pareto`` mode, else ``[]``), by trial number."""
        if self.objective != "pareto":
            return []
        return sorted(self.study.best_trials, key=lambda t: t.number)

    def top_trials(self, k: int = 5) -> list[Any]:
        """The ``k`` best complete trials (feasible first), then pruned ones by their partial score."""
        index = self.primary_index

        def key(t: Any) -> tuple:
            complete = t.state.name == "COMPLETE"
            value = t.values[index] if complete else (t.user_attrs.get("scores") or {}).get("dev", -math.inf)
            return (complete, is_feasible(t), value if value is not None else -math.inf, -t.number)

        ranked = [t for t in self.study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED")]
        return sorted(ranked, key=key, reverse=True)[:k]

    def total_lm_calls(self) -> int:
        """LM calls of every trial in the study plus the baseline scoring."""
        trials = self.study.get_trials(deepcopy=False)
        return sum(int(t.user_attrs.get("lm_calls", 0)) for t in trials) + int(self.baseline.get("lm_calls", 0))

    def total_usd(self) -> float | None:
        """USD of every trial in the study (``None``: a trial's price is unknown, or it was run before
        dollars were recorded); the baseline and test scoring are not included."""
        values = [
            t.user_attrs.get("usd") for t in self.study.get_trials(deepcopy=False) if t.user_attrs.get("lm_calls")
        ]
        return None if any(v is None for v in values) else round(sum(values), 6)

    def spent_usd(self) -> float:
        """What the study's cost cap has counted so far: the trials' known USD (unknown prices as 0)."""
        trials = self.study.get_trials(deepcopy=False)
        return sum(float(t.user_attrs.get("cost") or t.user_attrs.get("usd") or 0.0) for t in trials)

    # ---- programs ----
    def best_program(self) -> dspy.Module:
        """The best trial's program.

        Raises:
            RuntimeError: The study has no complete (feasible) trial yet.
        """
        best = self.best_trial()
        if best is None:
            raise RuntimeError(
                f"study {self.study_name!r} has no complete"
                f"{' feasible' if self.objective == 'constraints' else ''} trial yet"
            )
        return self.program_of(best)

    def program_of(self, trial: Any) -> dspy.Module:
        """``trial``'s program: this process's, else its saved file, else rebuilt from its stored prompts."""
        if trial.number in self.programs:
            return self.programs[trial.number]
        path = trial.user_attrs.get("program_file")
        program = self.student.deepcopy()
        if path and Path(path).exists():
            state = json.loads(Path(path).read_text(encoding="utf-8"))
            program.load(path, allow_unsafe_lm_state=only_answer_rule_lms(state))
            return program
        # Another machine's trial: rebuild from the stored instructions and demos.
        instructions = trial.user_attrs.get("instructions") or {}
        demos = trial.user_attrs.get("demos") or {}
        for name, predictor in predictors(program):
            if name in instructions:
                predictor.signature = predictor.signature.with_instructions(instructions[name])
            predictor.demos = [dspy.Example(**d) for d in demos.get(name, [])]
        return program

    def save_best(self) -> Path | None:
        """Write the best program (and its trial's record) to the out dir; the program's path, or ``None``."""
        best = self.best_trial()
        if best is None or self.out_dir is None:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "best_program.json"
        self.program_of(best).save(str(path))
        (self.out_dir / "best_trial.json").write_text(json.dumps(trial_record(best), indent=2, default=str) + "\n")
        return path

    # ---- the summary ----
    def summary(self, top: int = 5) -> StudySummary:
        """The study in figures (:meth:`StudySummary.to_dict` is JSON-ready).

        Fields: ``study``, ``storage``, ``objective``, ``criteria``, ``primary``, ``best_value``,
        ``best_values``, ``best_trial``, ``baseline``, ``n_trials`` (every trial), ``n_complete``,
        ``n_pruned``, ``n_failed``, ``n_running``, ``n_waiting``, ``target_trials``, ``total_lm_calls``,
        ``total_usd`` (the trials' USD; ``None`` when a price is unknown), ``spent_usd`` (what the cost cap counted),
        ``out_dir``, ``top_trials``; plus ``pareto_front`` (pareto) or ``n_infeasible`` (constraints).
        """
        counts = self.counts()
        best = self.best_trial()
        return StudySummary(
            study=self.study_name,
            storage=display_url(self.storage_url),
            objective=self.objective,
            criteria=self.criteria,
            primary=self.primary,
            best_value=None if best is None else best.values[self.primary_index],
            best_values=self._best_values(best),
            best_trial=trial_record(best) if best is not None else None,
            baseline=self.baseline,
            n_trials=counts["all"],
            n_complete=counts["complete"],
            n_pruned=counts["pruned"],
            n_failed=counts["fail"],
            n_running=counts["running"],
            n_waiting=counts["waiting"],
            target_trials=self.target_trials,
            total_lm_calls=self.total_lm_calls(),
            total_usd=self.total_usd(),
            spent_usd=round(self.spent_usd(), 6),
            out_dir=str(self.out_dir) if self.out_dir else None,
            top_trials=[trial_record(t, brief=True) for t in self.top_trials(top)],
            pareto_front=self._pareto_records() if self.objective == "pareto" else None,
            n_infeasible=self._infeasible() if self.objective == "constraints" else None,
        )

    def _pareto_records(self) -> list[dict[str, Any]]:
        return [
            {
                "number": t.number,
                "values": dict(zip(self.criteria, t.values)),
                "optimizer": t.user_attrs.get("optimizer"),
            }
            for t in self.pareto_front()
        ]

    def _infeasible(self) -> int:
        return sum(
            1 for t in self.study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and not is_feasible(t)
        )

    def _best_values(self, best: Any | None) -> dict[str, float] | None:
        if best is None:
            return None
        if self.objective == "pareto":
            return dict(zip(self.criteria, best.values))
        return (best.user_attrs.get("scores") or {}).get("criteria")


def is_feasible(trial: Any) -> bool:
    """Whether a trial meets every constraint (always, when there are none)."""
    constraints = getattr(trial, "constraints", None)
    if constraints:
        return all(v <= 0 for v in constraints.values())
    violations = trial.user_attrs.get("constraints") or {}
    return all(v <= 0 for v in violations.values())


def trial_record(trial: Any, *, brief: bool = False) -> dict[str, Any]:
    """A trial as a JSON-ready dict (``brief``: without its config, plan, instructions and files)."""
    attrs = trial.user_attrs
    record = {
        "number": trial.number,
        "state": trial.state.name.lower(),
        "value": trial.value if trial.values is not None and len(trial.values) == 1 else None,
        "values": list(trial.values) if trial.values is not None else None,
        "optimizer": attrs.get("optimizer") or trial.params.get("optimizer"),
        "params": {k: v for k, v in trial.params.items() if k != "optimizer"},
        "scores": attrs.get("scores"),
        "feasible": is_feasible(trial),
        "lm_calls": attrs.get("lm_calls"),
        "tokens": attrs.get("tokens"),
        "usd": attrs.get("usd"),
        "seconds": attrs.get("seconds"),
        "retry_of": trial.system_attrs.get("failed_trial"),
    }
    if not brief:
        record.update(
            {
                "config": attrs.get("config"),
                "plan": attrs.get("plan"),
                "instructions": attrs.get("instructions"),
                "n_demos": attrs.get("n_demos"),
                "compile_lm_calls": attrs.get("compile_lm_calls"),
                "eval_lm_calls": attrs.get("eval_lm_calls"),
                "calls_by_role": attrs.get("calls_by_role"),
                "input_tokens": attrs.get("input_tokens"),
                "output_tokens": attrs.get("output_tokens"),
                "stopped": attrs.get("stopped"),
                "worker": attrs.get("worker"),
                "program_file": attrs.get("program_file"),
                "constraints": attrs.get("constraints"),
            }
        )
    return record
