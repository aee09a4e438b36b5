"""One MLflow run per compile: settings as params, the trial log and the figures as metrics, the run folder;
one parent run per comparison or study, with a child run per cell or trial.

:class:`MlflowTracker` is the :class:`~dspy_ext.experiment.tracking.Tracker` of ``tracking.mlflow``
(``dspy-ext compile --mlflow URI``). Each compile becomes one MLflow run in the experiment
``tracking.experiment`` (default: the task's name), named after the run folder:

* params: the resolved settings (``task``, ``optimizer``, ``budget``, ``seed``, ...) and the optimizer's
  resolved config (``config.<key>``);
* tags: ``dspy_ext.version``, ``dspy_ext.data_hash``, ``dspy_ext.optimizer``, ``dspy_ext.task``,
  ``dspy_ext.run_folder``;
* metrics per trial, read from the trial log the search writes (``trials.jsonl``), with ``step`` = the
  compile's LM calls so far: ``trial/<split>/score`` (the candidate's score on ``train`` minibatches,
  ``val`` or DemoSearch's ``screen``) and ``trial/<split>/best`` (the best so far);
* final metrics: ``val_score``, ``test_score``, ``baseline_test_score``, ``zero_shot_test_score``,
  ``lm_calls``, ``task_calls``, ``prompt_calls``, ``tokens``, ``usd`` (only when known), ``seconds``
  and ``criterion/<name>/test`` and ``criterion/<name>/val`` for each criterion of the metric;
* artifacts: ``program.json``, ``report.md``, ``trials.jsonl``, ``run.json``, ``settings.yaml`` and the
  prompt artifact ``prompt.json`` (:func:`dspy_ext.export.build_artifact`);
* the compiled program as a logged model ``program`` in MLflow's DSPy flavour, so
  ``mlflow.dspy.load_model(f"runs:/{run_id}/program")`` gives it back (DSPy's own ``save(save_program=True)``
  format, a cloudpickle: load only models you trust). Its DSPy settings hold the run's adapter and no LM:
  configure the LM you run it with.

:class:`MlflowGroupTracker` is the group tracker of a comparison (``dspy-ext compare --mlflow URI``) or
a study (``dspy-ext tune --mlflow URI``): a parent run with the settings as params, the tables and
plots as artifacts, and a child run per cell (the cell's compile run, as above) or per trial (its
params and value).

Everything goes through one ``MlflowClient`` for the tracking URI: the tracker sets no process-wide
MLflow state (no global tracking URI, no active run). A store that cannot be reached, or a call that
fails, costs one warning; tracking is then off for the rest of the compile and the compile goes on.
MLflow's own usage telemetry is switched off only by the environment (``MLFLOW_DISABLE_TELEMETRY=true``
before ``mlflow`` is imported); the ``dspy-ext`` command sets it, library callers set it themselves.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import dspy

from dspy_ext.experiment.folder import PROGRAM_FILE, REPORT_FILE, SETTINGS_FILE, SUMMARY_FILE, TRIALS_FILE
from dspy_ext.experiment.settings import ExperimentSettings, SettingsError, TrackingSettings
from dspy_ext.experiment.summary import RunSummary
from dspy_ext.experiment.tracking import (
    ChildRecord,
    CompileEnd,
    CompileStart,
    GroupEnd,
    GroupStart,
    NoTracker,
    Tracker,
)
from dspy_ext.lm.metering import without_meters
from dspy_ext.search.trial_log import Trial, read_trials

logger = logging.getLogger(__name__)

#: The one line a missing MLflow gives.
MISSING_EXTRA = "tracking with MLflow needs the 'mlflow' extra: pip install 'dspy-ext[mlflow]'"

#: The name of the compiled program's logged model (``runs:/<run_id>/program``).
MODEL_NAME = "program"

#: The prompt artifact's name among the run's artifacts.
PROMPT_ARTIFACT = "prompt.json"

#: The tag that makes an MLflow run a child of another (the UI nests it under its parent).
PARENT_TAG = "mlflow.parentRunId"

#: Seconds a tracking server has to accept a connection before the compile goes on without it.
CONNECT_TIMEOUT = 5.0

#: MLflow's limit on a param value, in characters.
_MAX_PARAM = 6000

_RUN_FILES = (PROGRAM_FILE, REPORT_FILE, TRIALS_FILE, SUMMARY_FILE, SETTINGS_FILE)


@dataclass(frozen=True)
class ParentRun:
    """The MLflow run a compile is recorded under (a comparison's): its id and its experiment."""

    run_id: str
    experiment_id: str


class _MlflowRecord:
    """One MLflow run written through one ``MlflowClient``: the parts a compile's and a group's share."""

    #: What the run records, in the warning of a store that cannot be reached.
    scope = "compile"

    def __init__(self, tracking: TrackingSettings) -> None:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise SettingsError(MISSING_EXTRA) from None
        self.uri = tracking.mlflow
        self.experiment = tracking.experiment
        self._client: Any = None
        self._run_id: str | None = None
        self._experiment_id: str | None = None
        self._open = False
        self._off = False
        self._finished = False

    @property
    def run_id(self) -> str | None:
        """The MLflow run (``None`` before ``start``, or when none could be created)."""
        return self._run_id

    @property
    def finished(self) -> bool:
        """Whether everything was recorded (the run is ``FINISHED``)."""
        return self._finished

    def _connect(self, experiment: str | None) -> None:
        """The client, and the id of the experiment ``experiment`` (created when missing; ``None``: no lookup)."""
        from mlflow import MlflowClient

        _check_reachable(self.uri)
        self._client = MlflowClient(tracking_uri=self.uri)  # a SQL store is created (and migrated) here
        if experiment is None:
            return
        found = self._client.get_experiment_by_name(experiment)
        self._experiment_id = found.experiment_id if found is not None else self._client.create_experiment(experiment)

    def _close_failed(self, error: BaseException) -> None:
        """Mark the run failed (``KILLED`` on an interrupt), naming the error in the tag ``dspy_ext.error``."""
        if self._off or not self._open:
            return
        with self._guard("close the run"):
            self._client.set_tag(self._run_id, "dspy_ext.error", _one_line(error)[:_MAX_PARAM])
            status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
            self._client.set_terminated(self._run_id, status)
            self._open = False

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Run the block; a failure warns once and turns tracking off (the callers skip their work once it is)."""
        try:
            yield
        except Exception as exc:
            self._off = True
            logger.warning(
                "MLflow tracking at %s is off for this %s: could not %s (%s); the %s goes on",
                self.uri,
                self.scope,
                what,
                _one_line(exc),
                self.scope,
            )
            if self._open:
                with contextlib.suppress(Exception):
                    _check_reachable(self.uri)  # no minutes of MLflow's retries against a server that is gone
                    self._client.set_terminated(self._run_id, "FAILED")
                self._open = False


class MlflowTracker(_MlflowRecord):
    """Records each compile as one MLflow run in the store ``tracking.mlflow`` (see the module docstring).

    Args:
        tracking: The tracking URI and experiment.
        parent: The run the compile's run is a child of, in that run's experiment (a comparison's cell);
            ``None``: a run of its own in ``tracking.experiment``, default the task's name.

    Raises:
        SettingsError: MLflow is not installed (:data:`MISSING_EXTRA`).
    """

    def __init__(self, tracking: TrackingSettings, *, parent: ParentRun | None = None) -> None:
        super().__init__(tracking)
        self.parent = parent

    # ---- the Tracker protocol ------------------------------------------------------------------
    def start(self, start: CompileStart) -> None:
        """Create the run with its params and tags."""
        if self._off:
            return
        with self._guard("start a run"):
            tags = _tags(start)
            if self.parent is None:
                self._connect(self.experiment or start.task)
            else:
                self._connect(None)
                self._experiment_id, tags[PARENT_TAG] = self.parent.experiment_id, self.parent.run_id
            run = self._client.create_run(self._experiment_id, run_name=start.folder.name, tags=tags)
            self._run_id, self._open = run.info.run_id, True
            self._client.log_batch(self._run_id, params=_params(start))

    def finish(self, end: CompileEnd) -> None:
        """Log the trial and final metrics, the run folder's files, the prompt artifact and the program."""
        if self._off or not self._open:
            return
        with self._guard("log the compile"):
            _check_reachable(self.uri)
            model = self._client.create_logged_model(self._experiment_id, name=MODEL_NAME, source_run_id=self._run_id)
            # Every metric names the program's model: MLflow would otherwise give it the process's active model.
            trials = _read_trials(end.folder / TRIALS_FILE)
            metrics = [*trial_metrics(trials, model.model_id), *final_metrics(end.summary, model.model_id)]
            self._client.log_batch(self._run_id, metrics=metrics)
            for name in _RUN_FILES:
                if (end.folder / name).is_file():
                    self._client.log_artifact(self._run_id, str(end.folder / name))
            self._log_prompt_artifact(end)
            self._log_program(end, model)
            self._client.set_terminated(self._run_id, "FINISHED")
            self._open, self._finished = False, True

    def fail(self, error: BaseException) -> None:
        """Mark the run failed (``KILLED`` on an interrupt), naming the error in the tag ``dspy_ext.error``."""
        self._close_failed(error)

    # ---- parts ---------------------------------------------------------------------------------
    def _log_prompt_artifact(self, end: CompileEnd) -> None:
        """The program's prompt artifact (``prompt.json``); a program the exporter cannot represent has none."""
        from dspy_ext.export import ExportError, build_artifact

        summary = end.summary
        metadata = {
            "optimizer": summary.optimizer,
            "seed": summary.seed,
            "data_hash": summary.data_hash,
            "dev_score": summary.scores.val,
            "test_score": summary.scores.test,
            "task": summary.task,
            "program": summary.program,
        }
        components = end.components
        try:
            with components.context():
                artifact = build_artifact(end.program, adapter=components.adapter, metadata=metadata)
        except ExportError as exc:
            logger.info("MLflow run %s: no %s (%s)", self._run_id, PROMPT_ARTIFACT, exc)
            return
        with tempfile.TemporaryDirectory(prefix="dspy-ext-mlflow-") as tmp:
            path = Path(tmp) / PROMPT_ARTIFACT
            path.write_text(artifact.to_json(), encoding="utf-8")
            self._client.log_artifact(self._run_id, str(path))

    def _log_program(self, end: CompileEnd, model: Any) -> None:
        """The compiled program as the logged model ``model`` (:data:`MODEL_NAME`), in MLflow's DSPy flavour.

        The steps of ``mlflow.dspy.log_model``, on this tracker's client rather than MLflow's global
        tracking URI and active run: save it with ``mlflow.dspy.save_model`` into the logged model
        created by :meth:`finish`, upload it, link it to the run, mark it ready.
        """
        from mlflow.dspy import save_model
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus
        from mlflow.models import Model

        client, run_id = self._client, self._run_id
        try:
            with tempfile.TemporaryDirectory(prefix="dspy-ext-mlflow-") as tmp:
                path = str(Path(tmp) / "model")
                description = Model(
                    artifact_path=model.artifact_location,
                    model_uuid=model.model_id,
                    run_id=run_id,
                    model_id=model.model_id,
                )
                # The saved DSPy settings are the program's adapter, no LM (an LM may hold a live engine)
                # and no meter of a comparison around the compile (save_model pickles every setting).
                with dspy.context(lm=None, adapter=end.components.adapter), without_meters():
                    save_model(
                        end.program,
                        path,
                        mlflow_model=description,
                        pip_requirements=_requirements(),
                        use_dspy_model_save=True,
                    )
                client.log_model_artifacts(model.model_id, path)
            client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        except Exception:
            with contextlib.suppress(Exception):
                client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
            raise
        client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)


class MlflowGroupTracker(_MlflowRecord):
    """Records a comparison or a study as one MLflow parent run, with a child run per cell or trial.

    The parent run, named after the comparison's folder or the study, is in ``tracking.experiment``
    (default: the task's name). Its params are the settings, its tags ``dspy_ext.kind`` (``compare`` or
    ``tune``), ``dspy_ext.version`` and ``dspy_ext.task``, its metrics the figures of :class:`GroupEnd`,
    its artifacts the tables and plots. A cell's compile is a child run written by the
    :class:`MlflowTracker` :meth:`child` gives (what a compile's own run holds); a study's trial is a
    child run of its params and metrics (:meth:`record`).

    Args:
        tracking: The tracking URI and experiment.

    Raises:
        SettingsError: MLflow is not installed (:data:`MISSING_EXTRA`).
    """

    def __init__(self, tracking: TrackingSettings) -> None:
        super().__init__(tracking)
        self.tracking = tracking

    def start(self, start: GroupStart) -> None:
        """Create the parent run with the settings as params."""
        self.scope = "comparison" if start.kind == "compare" else "study"
        if self._off:
            return
        with self._guard("start a run"):
            self._connect(self.experiment or start.task)
            run = self._client.create_run(self._experiment_id, run_name=start.name, tags=_group_tags(start))
            self._run_id, self._open = run.info.run_id, True
            self._client.log_batch(self._run_id, params=_settings_params(start.settings))

    def child(self) -> Tracker:
        """An :class:`MlflowTracker` whose compile run is a child of the parent run (none once tracking is off)."""
        if self._off or not self._open:
            return NoTracker()
        return MlflowTracker(self.tracking, parent=ParentRun(self._run_id, self._experiment_id))

    def record(self, child: ChildRecord) -> None:
        """A finished child run of ``child``'s params, metrics and tags."""
        from mlflow.entities import Metric, Param

        if self._off or not self._open:
            return
        with self._guard(f"log {child.name}"):
            tags = {**child.tags, PARENT_TAG: self._run_id}
            run_id = self._client.create_run(self._experiment_id, run_name=child.name, tags=tags).info.run_id
            params = [Param(key, _param_value(value)) for key, value in _flatten(child.params).items()]
            stamp = int(time.time() * 1000)
            metrics = [Metric(_metric_name(key), float(value), stamp, 0) for key, value in child.metrics.items()]
            self._client.log_batch(run_id, metrics=metrics, params=params)
            self._client.set_terminated(run_id, child.status)

    def finish(self, end: GroupEnd) -> None:
        """Log the figures and the files (those that exist) on the parent run and close it."""
        from mlflow.entities import Metric

        if self._off or not self._open:
            return
        with self._guard(f"log the {self.scope}"):
            _check_reachable(self.uri)
            stamp = int(time.time() * 1000)
            metrics = [Metric(_metric_name(key), float(value), stamp, 0) for key, value in end.metrics.items()]
            self._client.log_batch(self._run_id, metrics=metrics)
            for path in end.files:
                if path.is_file():
                    self._client.log_artifact(self._run_id, str(path))
            self._client.set_terminated(self._run_id, "FINISHED")
            self._open, self._finished = False, True

    def fail(self, error: BaseException) -> None:
        """Mark the parent run failed (``KILLED`` on an interrupt), naming the error in ``dspy_ext.error``."""
        self._close_failed(error)


def trial_metrics(trials: Iterable[Trial], model_id: str | None = None) -> list[Any]:
    """``trial/<split>/score`` and ``trial/<split>/best`` of each trial, at ``step`` = the compile's calls so far.

    Trials logged without a meter (no ``calls_so_far``) have no step and are left out. ``model_id``: the
    logged model the metrics belong to.
    """
    from mlflow.entities import Metric

    best: dict[str, float] = {}
    metrics = []
    for trial in trials:
        if trial.calls_so_far is None:
            continue
        best[trial.split] = max(best.get(trial.split, trial.score), trial.score)
        stamp = int(trial.time * 1000)
        for kind, value in (("score", trial.score), ("best", best[trial.split])):
            metrics.append(Metric(f"trial/{trial.split}/{kind}", value, stamp, trial.calls_so_far, model_id=model_id))
    return metrics


def final_metrics(summary: RunSummary, model_id: str | None = None) -> list[Any]:
    """The run's figures: scores, spend (USD only when known) and each criterion's compiled score.

    ``model_id``: the logged model the metrics belong to.
    """
    from mlflow.entities import Metric

    scores, spend = summary.scores, summary.spend
    values: dict[str, float | None] = {
        "val_score": scores.val,
        "test_score": scores.test,
        "baseline_test_score": scores.baseline_test,
        "zero_shot_test_score": scores.zero_shot_test,
        "lm_calls": spend.lm_calls,
        "task_calls": spend.role_calls("task"),
        "prompt_calls": spend.role_calls("prompt"),
        "tokens": spend.tokens,
        "usd": spend.usd,
        "seconds": summary.seconds,
    }
    for split, table in (("test", summary.criteria), ("val", summary.figures.val_criteria or {})):
        for name, cell in table.items():
            values[f"criterion/{_metric_name(name)}/{split}"] = cell.get("compiled")
    stamp = int(time.time() * 1000)
    return [
        Metric(key, float(value), stamp, 0, model_id=model_id) for key, value in values.items() if value is not None
    ]


def _params(start: CompileStart) -> list[Any]:
    """The resolved settings (the optimizer's config as ``config.<key>``), as MLflow params."""
    from mlflow.entities import Param

    settings = start.settings.model_dump(mode="json", exclude={"tracking", "optimizer_config"})
    flat = {**_flatten(settings), **_flatten(start.config, "config.")}
    return [Param(key, _param_value(value)) for key, value in flat.items()]


def _settings_params(settings: ExperimentSettings) -> list[Any]:
    """A comparison's or a study's settings (all but where it is tracked), as MLflow params."""
    from mlflow.entities import Param

    flat = _flatten(settings.model_dump(mode="json", exclude={"tracking"}))
    return [Param(key, _param_value(value)) for key, value in flat.items()]


def _group_tags(start: GroupStart) -> dict[str, str]:
    import dspy_ext

    tags = {"dspy_ext.version": dspy_ext.__version__, "dspy_ext.kind": start.kind, "dspy_ext.task": start.task}
    if start.folder is not None:
        tags["dspy_ext.folder"] = str(start.folder.resolve())
    return tags


def _tags(start: CompileStart) -> dict[str, str]:
    import dspy_ext

    return {
        "dspy_ext.version": dspy_ext.__version__,
        "dspy_ext.data_hash": start.data_hash,
        "dspy_ext.optimizer": start.settings.optimizer,
        "dspy_ext.task": start.task,
        "dspy_ext.run_folder": str(start.folder.resolve()),
    }


def _requirements() -> list[str]:
    """The logged model's pip requirements, named rather than inferred (inference loads the model in a subprocess)."""
    import dspy_ext

    return [f"dspy=={dspy.__version__}", f"dspy-ext=={dspy_ext.__version__}"]


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:_MAX_PARAM]


def _metric_name(name: str) -> str:
    """``name`` with the characters MLflow refuses in a metric key replaced by ``_``."""
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in name)


def _read_trials(path: Path) -> list[Trial]:
    """The trial log of the compile (none for DSPy's optimizers, which write no ``trials.jsonl``)."""
    return list(read_trials(path)) if path.is_file() else []


def _check_reachable(uri: str) -> None:
    """Fail fast on an HTTP tracking server that accepts no connection (MLflow's client would retry for minutes).

    Raises:
        OSError: Nothing accepts a connection at the URI's host and port within :data:`CONNECT_TIMEOUT`.
    """
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    with socket.create_connection((parsed.hostname, port), timeout=CONNECT_TIMEOUT):
        pass


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
