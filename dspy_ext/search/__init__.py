"""The search core shared by every instruction-search method.

* :class:`Candidate` - the prompt state of every predictor, content-hashed;
* :class:`CandidateStore` - every candidate seen, with accumulated scores;
* :class:`TrialLog` - one JSONL row per evaluated candidate (:func:`read_trials` reads them back as :class:`Trial`);
* :class:`ProposalFilter` - rejects empty, cut-off, over-long and leaking proposals;
* :class:`RegressionGuard` - no criterion may drop beyond its tolerance against a reference
  (:class:`AcceptanceGate`: the same around any optimizer's result);
* :class:`SearchRun` - the per-compile state (RNG, budget, evaluator, store, log);
* :class:`Proposal` - one reply of the prompt model (text, cut-off flag, role);
* :class:`InstructionSearchConfig` - the settings every search shares (each method extends it);
* :class:`FinalSelector` - the final choice: :class:`SuccessiveHalving` (default), :class:`CandidateTPE`
  or :class:`IncumbentRace` (DemoSearch's);
* :class:`CompileOptions` - the settings every optimizer shares (budget, seed, models, guards, ...),
  validated once; :class:`Capabilities` - what an optimizer does with them;
* :class:`SearchTeleprompter` - the one compile of dspy-ext's optimizers, around a strategy's ``search``;
* :class:`InstructionSearch` - the instruction-search strategy with the shared loop;
* :class:`Rejection` - why a proposal or demo set was set aside;
* :class:`SearchFeedback` - a person's critiques (:class:`HumanCritique`) as plain data for the methods.
"""

from __future__ import annotations

from dspy_ext.search.base import InstructionSearch, SearchResult, format_pairs
from dspy_ext.search.candidate import Candidate, PredictorPrompt
from dspy_ext.search.config import DEFAULT_BUDGET, InstructionSearchConfig, OptimizerConfig, tunable
from dspy_ext.search.feedback import HumanCritique, SearchFeedback
from dspy_ext.search.final_selection import (
    CandidateTPE,
    FinalSelector,
    IncumbentRace,
    SuccessiveHalving,
    final_contenders,
)
from dspy_ext.search.options import Capabilities, CompileOptions, GuardMode, MetricForm
from dspy_ext.search.proposal_filter import ProposalFilter, clean_proposal
from dspy_ext.search.reasons import Rejection
from dspy_ext.search.regression import AcceptanceGate, CriterionCheck, GuardVerdict, RegressionGuard, parse_guards
from dspy_ext.search.run import Models, Proposal, SearchRun, SearchStopped
from dspy_ext.search.store import CandidateRecord, CandidateStore
from dspy_ext.search.teleprompter import SearchTeleprompter
from dspy_ext.search.trial_log import Trial, TrialLog, read_trials

__all__ = [
    "DEFAULT_BUDGET",
    "Capabilities",
    "CompileOptions",
    "GuardMode",
    "IncumbentRace",
    "MetricForm",
    "Rejection",
    "SearchTeleprompter",
    "Candidate",
    "CandidateTPE",
    "FinalSelector",
    "HumanCritique",
    "InstructionSearchConfig",
    "OptimizerConfig",
    "Proposal",
    "SuccessiveHalving",
    "final_contenders",
    "tunable",
    "CandidateRecord",
    "CandidateStore",
    "InstructionSearch",
    "Models",
    "PredictorPrompt",
    "ProposalFilter",
    "AcceptanceGate",
    "CriterionCheck",
    "GuardVerdict",
    "RegressionGuard",
    "parse_guards",
    "SearchFeedback",
    "SearchResult",
    "SearchRun",
    "SearchStopped",
    "Trial",
    "TrialLog",
    "read_trials",
    "clean_proposal",
    "format_pairs",
]
