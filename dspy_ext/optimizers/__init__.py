"""The instruction-search teleprompters: APE, OPRO, EvoPrompt (GA, DE) and ProTeGi.

Each differs only in how it proposes and selects candidates; the loop,
evaluator, candidate store, trial log, budget and final selection are shared
(:mod:`dspy_ext.search`).
"""

from __future__ import annotations

from dspy_ext.optimizers.ape import APE
from dspy_ext.optimizers.demo_search import DemoSearch
from dspy_ext.optimizers.evoprompt import EvoPrompt
from dspy_ext.optimizers.opro import OPRO
from dspy_ext.optimizers.protegi import ProTeGi

__all__ = ["APE", "OPRO", "DemoSearch", "EvoPrompt", "ProTeGi"]
