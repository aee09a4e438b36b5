"""dspy-ext: instruction search, Optuna-driven tuning and DSPy-free export for DSPy programs.

The package is organised by concept:

* :mod:`dspy_ext.lm` - the embedded local model, engines and call metering;
* :mod:`dspy_ext.adapters` - the small-model ``PlainAdapter``;
* :mod:`dspy_ext.data` - task loading and the built-in instruction-induction tasks;
* :mod:`dspy_ext.evaluation` - the shared evaluator and statistics;
* :mod:`dspy_ext.search` - the search core shared by every instruction search;
* :mod:`dspy_ext.optimizers` - APE, OPRO, EvoPrompt and ProTeGi;
* :mod:`dspy_ext.meta_prompts` - the Signatures the optimizers send to the prompt model;
* :mod:`dspy_ext.export` - versioned prompt artifacts and a DSPy-free runtime (``dspy_ext.export(program, path)``);
* :mod:`dspy_ext.cli` - the ``dspy-ext`` command.
"""

from __future__ import annotations

from dspy_ext import export
from dspy_ext.adapters import PlainAdapter
from dspy_ext.evaluation import EvaluationReport, Evaluator
from dspy_ext.lm import CallMeter, make_lm, metering
from dspy_ext.optimizers import APE, OPRO, EvoPrompt, ProTeGi
from dspy_ext.tuning import OptunaSearch

__version__ = "0.1.0"

__all__ = [
    "APE",
    "OPRO",
    "OptunaSearch",
    "EvoPrompt",
    "ProTeGi",
    "CallMeter",
    "EvaluationReport",
    "Evaluator",
    "PlainAdapter",
    "__version__",
    "export",
    "make_lm",
    "metering",
]
