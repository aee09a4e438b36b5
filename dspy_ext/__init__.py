"""dspy-ext: instruction search, Optuna-driven tuning and DSPy-free export for DSPy programs.

The package is organised by concept:

* :mod:`dspy_ext.lm` - the embedded local model, engines and call metering;
* :mod:`dspy_ext.adapters` - the small-model ``PlainAdapter``;
* :mod:`dspy_ext.data` - task loading and the built-in instruction-induction tasks;
* :mod:`dspy_ext.evaluation` - the shared evaluator and statistics;
* :mod:`dspy_ext.cli` - the ``dspy-ext`` command.
"""

from __future__ import annotations

from dspy_ext.adapters import PlainAdapter
from dspy_ext.evaluation import EvaluationReport, Evaluator
from dspy_ext.lm import CallMeter, make_lm, metering

__version__ = "0.1.0"

__all__ = [
    "CallMeter",
    "EvaluationReport",
    "Evaluator",
    "PlainAdapter",
    "__version__",
    "make_lm",
    "metering",
]
