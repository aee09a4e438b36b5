"""A run folder: its file names, the claim that makes it one run's, and reading it back.

:func:`claim_folder` decides whether a run may write into a folder: new, resumed (the same settings and
data), or replaced (``restart``); :func:`open_run` reads a finished folder back for the commands that take
one (``export``, ``review``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy

from dspy_ext.experiment.components import (
    ComponentError,
    Components,
    build_components,
    build_student,
    load_program_state,
    read_json_file,
)
from dspy_ext.experiment.settings import RunSettings, SettingsError
from dspy_ext.files import atomic_write_text

logger = logging.getLogger(__name__)

SETTINGS_FILE = "settings.yaml"
PROGRAM_FILE = "program.json"
SUMMARY_FILE = "run.json"
REPORT_FILE = "report.md"
JOURNAL_FILE = "calls.jsonl"
RESUME_FILE = "resume.json"
TRIALS_FILE = "trials.jsonl"


def claim_folder(out: Path, identity: dict[str, Any], *, restart: bool) -> None:
    """Make ``out`` the folder of the run ``identity`` describes: new, resumed, or (with ``restart``) replaced.

    Raises:
        SettingsError: The folder holds a run with other settings or data, and ``restart`` is off.
    """
    resume_file = out / RESUME_FILE
    stored: dict[str, Any] | None = None
    if resume_file.is_file():
        try:
            stored = json.loads(resume_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            stored = None
    elif (out / JOURNAL_FILE).exists() or (out / PROGRAM_FILE).exists():
        stored = {}  # run files of unknown origin: never mixed with this run's
    if stored is not None and stored != identity:
        if not restart:
            raise SettingsError(
                f"{out} holds another run ({_difference(stored, identity)}); pass --restart "
                "(restart=True) to start over there, or choose another output folder"
            )
        logger.warning("%s: starting over (%s)", out, _difference(stored, identity))
        for name in (JOURNAL_FILE, TRIALS_FILE, PROGRAM_FILE, SUMMARY_FILE, REPORT_FILE):
            (out / name).unlink(missing_ok=True)
    atomic_write_text(resume_file, json.dumps(identity, indent=1, sort_keys=True) + "\n")


def _difference(stored: dict[str, Any], identity: dict[str, Any]) -> str:
    if not stored:
        return "files of a run that did not record its settings"
    changed = [
        f"{key}: {stored['settings'].get(key)!r} -> {value!r}"
        for key, value in identity["settings"].items()
        if stored.get("settings", {}).get(key) != value
    ]
    changed += [
        f"{key} changed"
        for key in ("lm", "adapter", "train_val", "test", "student")
        if stored.get(key) != identity[key]
    ]
    return "; ".join(changed[:4]) or "other settings"


def program_state_json(program: dspy.Module) -> dict[str, Any]:
    """The JSON state ``program.save("x.json")`` writes (DSPy's own format, metadata included)."""
    from dspy.utils.saving import get_dependency_versions

    state = program.dump_state()
    state["metadata"] = {"dependency_versions": get_dependency_versions()}
    return state


@dataclass
class OpenedRun:
    """A run folder read back: its settings, summary and compiled program.

    Attributes:
        folder: The run folder.
        settings: Its :class:`RunSettings` (from ``settings.yaml``; for folders written before run
            files existed, rebuilt from ``run.json`` with the built-in program and metric defaults;
            ``None`` when neither names the task: the caller must say it).
        summary: ``run.json`` (``{}`` when missing).
    """

    folder: Path
    settings: RunSettings | None
    summary: dict[str, Any]

    @property
    def program_file(self) -> Path:
        return self.folder / PROGRAM_FILE

    def require_settings(self) -> RunSettings:
        """The run's settings.

        Raises:
            ComponentError: The folder does not say which task it was compiled on.
        """
        if self.settings is None:
            raise ComponentError(
                f"{self.folder}: the run folder has neither {SETTINGS_FILE} nor a {SUMMARY_FILE} "
                "naming its task; give the task and program"
            )
        return self.settings

    def components(self, *, lm: dspy.BaseLM | None = None) -> Components:
        """The task, LM, adapter and metric the run was compiled with."""
        return build_components(self.require_settings(), lm=lm)

    def student(self, components: Components) -> dspy.Module:
        """The uncompiled program, as the run built it."""
        return build_student(self.require_settings(), components.task)

    def program(self, components: Components) -> dspy.Module:
        """The compiled program: the student with ``program.json`` loaded into it."""
        program = self.student(components)
        load_program_state(program, self.program_file, self.require_settings().program)
        return program


def open_run(folder: str | Path) -> OpenedRun:
    """Read a run folder written by :func:`run` (or by ``dspy-ext compile``).

    Raises:
        ComponentError: No such folder, no ``program.json`` (pickles are never loaded), or unreadable files.
        SettingsError: ``settings.yaml`` is invalid.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ComponentError(f"{folder}: no such run folder")
    if not (folder / PROGRAM_FILE).is_file():
        pickles = sorted(p.name for p in folder.glob("*.pkl"))
        hint = (
            f" (it has {pickles}: pickles are never loaded; save with program.save('program.json'))" if pickles else ""
        )
        raise ComponentError(f"{folder}: the run folder has no {PROGRAM_FILE}{hint}")
    summary: dict[str, Any] = {}
    if (folder / SUMMARY_FILE).is_file():
        summary = read_json_file(folder / SUMMARY_FILE, SUMMARY_FILE)
        if not isinstance(summary, dict):
            raise ComponentError(f"{folder / SUMMARY_FILE}: expected a JSON object")
    settings: RunSettings | None = None
    if (folder / SETTINGS_FILE).is_file():
        settings = RunSettings.load(folder / SETTINGS_FILE)
    elif summary.get("task"):
        logger.info("%s has no %s; settings rebuilt from %s", folder, SETTINGS_FILE, SUMMARY_FILE)
        known = {
            k: summary[k]
            for k in ("task", "program", "metric", "optimizer", "seed", "budget", "train", "val")
            if k in summary
        }
        settings = RunSettings.build({**known, "out": str(folder)}, source=f"settings from {folder / SUMMARY_FILE}")
    return OpenedRun(folder=folder, settings=settings, summary=summary)
