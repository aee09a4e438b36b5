"""The filter every proposed instruction passes before it is adopted (a rejection is a :class:`Rejection`).

* empty or cut-off proposals are never adopted (gepa#390);
* over-long proposals are skipped (OPRO does the same);
* the optimizer's own meta-instructions and verbatim training inputs must not
  leak into the optimized instruction (AdalFlow#434).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from dspy_ext.search.reasons import Rejection

_WORD = re.compile(r"\w+")
_ANSWER_LABEL = re.compile(
    r"^\s*(?:here(?:'s| is)\s+(?:the|a|my)\s+)?(?:new\s+|improved\s+|revised\s+)?(?:instruction|prompt)\s*:\s*",
    re.IGNORECASE,
)
_TERMINAL = (".", "!", "?", ":", ")", "]", '"', "'")


def clean_proposal(text: str) -> str:
    """Strip quotes, markers and a leading ``Instruction:`` label a model may add."""
    text = (text or "").strip()
    # The closing ">" may already be gone (the adapter strips trailing decoration).
    text = re.sub(r"</?(?:start|end|prompt|instruction)>?", "", text, flags=re.IGNORECASE).strip()
    text = _ANSWER_LABEL.sub("", text).strip()
    if len(text) > 1 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    elif len(text) > 1 and text[0] in '"`' and text.count(text[0]) == 1:
        text = text[1:].strip()  # an opening quote whose closing one was cut off with the label's line
    return " ".join(text.split())


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


@dataclass
class ProposalFilter:
    """Rejects proposals that are empty, cut off, too long or that leak.

    Args:
        meta_texts: The optimizer's own meta-prompt texts (signature
            instructions and field descriptions).
        train_inputs: Training values (inputs and labels) that must not be copied verbatim.
        max_chars: Longest acceptable instruction.
        leak_ngram: A run of this many words shared with a meta-prompt text is
            a leak.
        min_input_chars: Training inputs shorter than this (single words,
            labels) are too generic to count as a leak.
        meta_labels: Field labels of the meta-prompts (``"Step:"``, ...); a
            proposal that starts with one echoes the prompt instead of answering it.

    Example:
        >>> guard = ProposalFilter(["Write a new instruction that scores higher"], ["a long training sentence here"])
        >>> guard.check("Classify the review.", truncated=False)
        >>> guard.check("", truncated=False)
        <Rejection.EMPTY: 'empty'>
    """

    meta_texts: Iterable[str] = ()
    train_inputs: Iterable[str] = ()
    max_chars: int = 800
    leak_ngram: int = 8
    min_input_chars: int = 20
    meta_labels: Iterable[str] = ()

    def __post_init__(self) -> None:
        self._meta_ngrams: set[tuple[str, ...]] = set()
        for text in self.meta_texts:
            self._meta_ngrams |= _ngrams(_words(text), self.leak_ngram)
        self._inputs = [" ".join(_words(t)) for t in self.train_inputs if len(str(t)) >= self.min_input_chars]
        self._labels = tuple({label.strip().lower() for label in self.meta_labels if label.strip()})

    def check(self, text: str, *, truncated: bool | None) -> Rejection | None:
        """Return why ``text`` is rejected, or ``None`` if it may be adopted.

        Args:
            text: The cleaned proposal.
            truncated: Whether the LM stopped at ``max_tokens`` (``None`` if unknown:
                then a long proposal with no closing punctuation counts as cut off).
        """
        if not text or not _words(text):
            return Rejection.EMPTY
        if truncated or (truncated is None and len(text) > 200 and not text.endswith(_TERMINAL)):
            return Rejection.TRUNCATED
        if len(text) > self.max_chars:
            return Rejection.TOO_LONG
        if text.lower().startswith(self._labels):
            return Rejection.ECHOED_META_PROMPT
        if self._meta_ngrams and _ngrams(_words(text), self.leak_ngram) & self._meta_ngrams:
            return Rejection.META_PROMPT_LEAK
        norm = " ".join(_words(text))
        if any(inp and inp in norm for inp in self._inputs):
            return Rejection.TRAINING_DATA_LEAK
        return None
