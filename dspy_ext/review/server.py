"""The local review page: a Starlette app on uvicorn, server-rendered Jinja2 pages, plain JavaScript.

Safety by default:

* it binds 127.0.0.1 only, and refuses requests whose ``Host`` is not that
  address (a DNS-rebinding page cannot reach it);
* a random token is made per server and printed in the URL (as Jupyter does):
  opening the URL sets an HttpOnly, SameSite=Strict cookie for reading pages;
  **every write** must carry the token in the ``X-Review-Token`` header and be
  JSON, which a cross-site form cannot send;
* Jinja2 autoescaping is on for every template and the script only ever sets
  ``textContent``; a Content-Security-Policy allows scripts from this server's
  ``/static`` only, so an output such as ``<script>alert(1)</script>`` shows as text;
* request bodies above ``max_body`` bytes are refused (413) before they are parsed;
* writes are per field and serialised in the store, so two tabs writing at once
  lose nothing.

:class:`ReviewApp` puts the page together from its parts: the guard (:mod:`~dspy_ext.review.guard`),
the endpoints (:mod:`~dspy_ext.review.routes`), the view models (:mod:`~dspy_ext.review.views`),
the navigation (:mod:`~dspy_ext.review.navigation`) and the LM actions (:mod:`~dspy_ext.review.judging`).

Example:
    >>> app = ReviewApp(ReviewStore("review.sqlite"))       # doctest: +SKIP
    >>> server = ReviewServer(app, port=0).start()          # doctest: +SKIP
    >>> server.url                                          # doctest: +SKIP
    'http://127.0.0.1:43817/?token=…'
    >>> server.stop()                                       # doctest: +SKIP
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

import dspy
import uvicorn
from starlette.applications import Starlette

from dspy_ext.review.alignment import DEFAULT_THRESHOLD, AlignmentCache
from dspy_ext.review.guard import (
    DEFAULT_MAX_BODY,
    NO_STORE,
    SECURITY_HEADERS,
    BodyLimit,
    HttpError,
    SecurityHeaders,
    guarded,
)
from dspy_ext.review.judging import ReviewJudges
from dspy_ext.review.navigation import MAX_SKIPPED, ClientRegistry, ClientState, Navigator
from dspy_ext.review.options import ReviewOptions
from dspy_ext.review.routes import ApiRoutes, PageRoutes, ReviewParts, static_route
from dspy_ext.review.sampling import NextItemSampler, SignalIndex
from dspy_ext.review.store import ReviewStore
from dspy_ext.review.views import ReviewViews

__all__ = [
    "DEFAULT_MAX_BODY",
    "MAX_SKIPPED",
    "NO_STORE",
    "SECURITY_HEADERS",
    "BodyLimit",
    "ClientState",
    "HttpError",
    "ReviewApp",
    "ReviewServer",
    "SecurityHeaders",
]

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent


class _Option:
    """A :class:`ReviewApp` attribute kept in its :class:`ReviewOptions` (read and written there)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, app: Any, owner: type | None = None) -> Any:
        return self if app is None else getattr(app.options, self.name)

    def __set__(self, app: Any, value: Any) -> None:
        setattr(app.options, self.name, value)


class ReviewApp:
    """The review web application over one store.

    Args:
        store: The review store.
        token: The write token (default: a new random one).
        lm: An LM for criterion proposals and LM-judge checks (``None``: those actions are off).
        adapter: The adapter to run that LM with (``None``: DSPy's configured one).
        seed: Seed of the random picks.
        threshold: Highest false failure rate of a chosen check.
        max_body: Request body limit in bytes.
        title: Shown in the page header (e.g. the task name).
        changed_since: A prompt version (e.g. a compiled program's, after ``dspy-ext compile --feedback``):
            the page then opens on the outputs this version changed (filter ``changed``), each shown next
            to the earlier outputs of the same input with their grades. Unchanged outputs are the same
            items as before and keep their grades.

    Attributes:
        options: The settings the page's parts read; ``token``, ``lm``, ``adapter``, ``threshold``,
            ``title``, ``changed_since``, ``default_filter`` and ``port`` read and write them.
        asgi: The guarded ASGI app to serve.
    """

    token = _Option()
    lm = _Option()
    adapter = _Option()
    threshold = _Option()
    title = _Option()
    changed_since = _Option()
    default_filter = _Option()
    port = _Option()

    def __init__(
        self,
        store: ReviewStore,
        *,
        token: str | None = None,
        lm: dspy.LM | None = None,
        adapter: dspy.Adapter | None = None,
        seed: int = 0,
        threshold: float = DEFAULT_THRESHOLD,
        max_body: int = DEFAULT_MAX_BODY,
        title: str = "",
        changed_since: str | None = None,
    ) -> None:
        self.store = store
        self.options = ReviewOptions(
            token=token or secrets.token_urlsafe(24),
            lm=lm,
            adapter=adapter,
            threshold=threshold,
            title=title,
            changed_since=changed_since,
            default_filter="changed" if changed_since else "unreviewed",
        )
        self.sampler = NextItemSampler(seed)
        self.index = SignalIndex(store)
        # Grades change which check aligns best: re-run the alignment before the next read after a write.
        self.alignment = AlignmentCache(store)
        self.clients = ClientRegistry()
        self.navigator = Navigator(store, self.index, self.sampler, self.alignment, self.options)
        self.views = ReviewViews(store, self.index, self.alignment, self.options)
        self.templates = self.views.templates
        judges = ReviewJudges(store, self.options)
        parts = ReviewParts(store, self.views, self.navigator, self.clients, self.alignment, judges, self.options)
        self.starlette = Starlette(routes=[*PageRoutes(parts).routes(), *ApiRoutes(parts).routes(), static_route()])
        self.asgi = guarded(self.starlette, self.options, max_body)

    @property
    def cookie_name(self) -> str:
        """The token cookie's name (per port, so two servers do not clash)."""
        return self.options.cookie_name

    def refresh_alignment(self) -> None:
        """Re-choose each criterion's check if labels changed since the last time."""
        self.alignment.refresh(self.options.threshold)

    def next_key(self, filter_name: str, current: str | None, state: ClientState) -> tuple[str | None, str]:
        """The next item for a tab: the sampler over unreviewed items, file order for the other filters.

        Returns:
            ``(key or None, how it was picked)``.
        """
        return self.navigator.next_key(filter_name, current, state)


class ReviewServer:
    """Run a :class:`ReviewApp` on uvicorn, bound to 127.0.0.1.

    Args:
        app: The application.
        port: TCP port; 0 picks a free one.

    Example:
        >>> server = ReviewServer(ReviewApp(store), port=0).start()   # doctest: +SKIP
        >>> print(server.url); server.stop()                            # doctest: +SKIP
    """

    HOST = "127.0.0.1"

    def __init__(self, app: ReviewApp, port: int = 0) -> None:
        self.app = app
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit this: an answer's headers and body go out at once instead of the body
        # waiting ~40 ms for the client's delayed ACK (Nagle's algorithm).
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.socket.bind((self.HOST, port))
        except OSError as exc:
            self.socket.close()
            raise OSError(f"cannot listen on {self.HOST}:{port}: {exc.strerror}") from None
        self.port = self.socket.getsockname()[1]
        app.port = self.port
        # log_config=None: uvicorn must not reconfigure the process's logging.
        config = uvicorn.Config(
            app.asgi, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=2
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.HOST}:{self.port}"

    @property
    def url(self) -> str:
        """The URL to open, with the token."""
        return f"{self.base_url}/?token={self.app.token}"

    def start(self) -> ReviewServer:
        """Serve in a background thread; return once the server accepts connections."""
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, name="dspy-ext-review", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the review server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.socket.close()

    def __enter__(self) -> ReviewServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
