"""The settings one review page is served with, shared by its guard, views, navigation and routes."""

from __future__ import annotations

from dataclasses import dataclass

import dspy

from dspy_ext.review.alignment import DEFAULT_THRESHOLD


@dataclass
class ReviewOptions:
    """How a :class:`~dspy_ext.review.ReviewApp` serves its store.

    Attributes:
        token: The write token (in the printed URL, the cookie and every write's header).
        lm: An LM for criterion proposals and LM-judge checks (``None``: those actions are off).
        adapter: The adapter to run that LM with (``None``: DSPy's configured one).
        threshold: Highest false failure rate of a chosen check.
        title: Shown in the page header (e.g. the task name).
        changed_since: A prompt version whose changed outputs the page opens on (``None``: no such filter).
        default_filter: The filter a page opens on without one.
        port: The port the server listens on, once it does (``None`` before: no Host check).
    """

    token: str
    lm: dspy.LM | None = None
    adapter: dspy.Adapter | None = None
    threshold: float = DEFAULT_THRESHOLD
    title: str = ""
    changed_since: str | None = None
    default_filter: str = "unreviewed"
    port: int | None = None

    @property
    def cookie_name(self) -> str:
        """The token cookie's name; cookies are not separated by port, so it names the port."""
        return f"dspy_ext_review_{self.port or 0}"
