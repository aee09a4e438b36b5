"""The search core shared by every instruction-search method.

* :class:`Candidate` - the prompt state of every predictor, content-hashed;
* :class:`CandidateStore` - every candidate seen, with accumulated scores;
* :class:`TrialLog` - one JSONL row per evaluated candidate;
* :class:`ProposalGuard` - rejects empty, cut-off, over-long and leaking proposals;
* :class:`SearchRun` - the per-compile state (RNG, budget, evaluator, store, log);
* :class:`InstructionSearch` - the teleprompter base class with the shared loop.
"""

from __future__ import annotations

from dspy_ext.search.base import InstructionSearch, SearchResult, format_pairs
from dspy_ext.search.candidate import Candidate, PredictorPrompt
from dspy_ext.search.guards import ProposalGuard, clean_proposal
from dspy_ext.search.run import Models, SearchRun, SearchStopped
from dspy_ext.search.store import CandidateRecord, CandidateStore
from dspy_ext.search.trial_log import TrialLog

__all__ = [
    "Candidate",
    "CandidateRecord",
    "CandidateStore",
    "InstructionSearch",
    "Models",
    "PredictorPrompt",
    "ProposalGuard",
    "SearchResult",
    "SearchRun",
    "SearchStopped",
    "TrialLog",
    "clean_proposal",
    "format_pairs",
]
