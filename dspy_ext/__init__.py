"""dspy-ext: instruction search, Optuna-driven tuning and DSPy-free export for DSPy programs.

The package is organised in layers; a module imports only from layers below it
(checked by import-linter, see ``docs/architecture.md``):

* :mod:`dspy_ext.runtime` - the DSPy-free runtime for exported artifacts (standard library only);
* :mod:`dspy_ext.files` - atomic writes and run-folder locks (standard library only);
* :mod:`dspy_ext.lm` - the embedded local model, engines and call metering;
* :mod:`dspy_ext.adapters` - the small-model ``PlainAdapter``;
* :mod:`dspy_ext.data` - task loading and the built-in instruction-induction tasks;
* :mod:`dspy_ext.evaluation` - the shared evaluator and statistics;
* :mod:`dspy_ext.search` - the search core shared by every instruction search;
* :mod:`dspy_ext.optimizers` - APE, OPRO, EvoPrompt and ProTeGi;
* :mod:`dspy_ext.meta_prompts` - the Signatures the optimizers send to the prompt model;
* :mod:`dspy_ext.registry` - one name and validated config for every optimizer, ours and DSPy's;
* :mod:`dspy_ext.export` - versioned prompt artifacts (``dspy_ext.export.export(program, path)``);
* :mod:`dspy_ext.experiment` - one experiment as a library call: settings, ``run``, run folders;
* :mod:`dspy_ext.compare` and :mod:`dspy_ext.tuning` - side-by-side comparisons and Optuna studies;
* ``cli/`` - the ``dspy-ext`` command, a thin shell over the above.

The names below are imported on first use, so ``import dspy_ext.runtime`` (or any
other module) loads only what that module needs.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "APE": "dspy_ext.optimizers",
    "OPRO": "dspy_ext.optimizers",
    "EvoPrompt": "dspy_ext.optimizers",
    "ProTeGi": "dspy_ext.optimizers",
    "DemoSearch": "dspy_ext.optimizers",
    "compile_record": "dspy_ext.prompt_state",
    "OptunaTuner": "dspy_ext.tuning",
    "CallMeter": "dspy_ext.lm",
    "make_lm": "dspy_ext.lm",
    "metering": "dspy_ext.lm",
    "EvaluationReport": "dspy_ext.evaluation",
    "Evaluator": "dspy_ext.evaluation",
    "PlainAdapter": "dspy_ext.adapters",
    "RunSettings": "dspy_ext.experiment",
    "run": "dspy_ext.experiment",
    "open_run": "dspy_ext.experiment",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dspy_ext' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
