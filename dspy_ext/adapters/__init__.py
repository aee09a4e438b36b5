"""Adapters: how a signature becomes messages and a reply becomes fields."""

from __future__ import annotations

import dspy

from dspy_ext.adapters.plain import PlainAdapter, field_labels, field_prefix
from dspy_ext.runtime import REPLY_FORMATS

__all__ = ["ADAPTERS", "PlainAdapter", "default_adapter", "field_labels", "field_prefix", "make_adapter"]

#: Adapters by short name; the names are the runtime's reply formats, so there is one table of adapters.
ADAPTERS: dict[str, type[dspy.Adapter]] = {
    REPLY_FORMATS[cls.__name__]: cls for cls in (PlainAdapter, dspy.ChatAdapter, dspy.JSONAdapter)
}


def make_adapter(name: str) -> dspy.Adapter:
    """Build an adapter by name: ``plain`` (small-model), ``chat`` or ``json`` (DSPy's).

    Raises:
        ValueError: For an unknown name, listing the valid ones.
    """
    try:
        return ADAPTERS[name]()
    except KeyError:
        raise ValueError(f"unknown adapter {name!r}; choose one of {sorted(ADAPTERS)}") from None


def default_adapter(lm: dspy.BaseLM | None) -> dspy.Adapter | None:
    """The adapter dspy-ext uses by default for ``lm``.

    The plain adapter for in-process small models; ``None`` (DSPy's own
    default, ChatAdapter) for every other LM.
    """
    from dspy_ext.lm import is_local_lm

    return PlainAdapter() if is_local_lm(lm) else None
