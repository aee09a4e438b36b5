"""Why a search set something aside: the keys of ``SearchResult.rejected`` and of the trial log.

A :class:`Rejection` is a ``str``, so it compares, hashes and serializes as its value
(``Rejection.DUPLICATE == "duplicate"``); the counts in a run's result are keyed by these values.
"""

from __future__ import annotations

import enum

__all__ = ["Rejection"]


class Rejection(str, enum.Enum):
    """A reason a proposal, or a demo set, is not adopted."""

    #: The text is empty, or has no word.
    EMPTY = "empty"
    #: The prompt model stopped at the token cap (or, when it does not say, a long text ends mid-sentence).
    TRUNCATED = "truncated"
    #: Longer than the longest acceptable instruction.
    TOO_LONG = "too_long"
    #: It starts with a field label of the meta-prompt: it echoes the prompt instead of answering it.
    ECHOED_META_PROMPT = "echoed_meta_prompt"
    #: It copies a run of words of the optimizer's own meta-prompt.
    META_PROMPT_LEAK = "meta_prompt_leak"
    #: It copies a training input or label verbatim.
    TRAINING_DATA_LEAK = "training_data_leak"
    #: The same prompts were proposed before (or the parent's own text).
    DUPLICATE = "duplicate"
    #: The prompt model's call failed, or its reply could not be parsed.
    LM_OR_PARSE_ERROR = "lm_or_parse_error"
    #: A demo set whose prompts overflow the model's context for too many training inputs.
    DEMO_SET_OVERFLOW = "demo_set_overflow"

    def __str__(self) -> str:
        return self.value
