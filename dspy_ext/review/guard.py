"""The review page's HTTP edge: who may call it, how big a request may be, which headers every answer has.

* :class:`AccessGuard` answers only the loopback address the server listens on (a DNS-rebinding page
  cannot reach it) and wants the server's token: for reads in the cookie, the ``X-Review-Token``
  header or the ``?token=`` query; for **every write** in the header, with a JSON body, which a
  cross-site form cannot send.
* :class:`BodyLimit` refuses request bodies over a limit (413) before they are parsed.
* :class:`SecurityHeaders` adds a Content-Security-Policy that allows scripts from this server's
  ``/static`` only, and keeps pages and API answers out of caches.

:func:`guarded` stacks the three around an ASGI app.
"""

from __future__ import annotations

import hmac
import json
from typing import Any
from urllib.parse import parse_qs

from dspy_ext.review.options import ReviewOptions

DEFAULT_MAX_BODY = 64 * 1024
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        b"form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
#: Pages and API answers hold review data: never cached. Static files may be (revalidated by ETag).
NO_STORE = (b"cache-control", b"no-store")


class HttpError(Exception):
    """An error answered as ``{"error": message}`` with a status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def plain_error(send: Any, status: int, text: str) -> None:
    """Answer ``{"error": text}`` with ``status`` straight on the ASGI channel (no app behind it)."""
    body = json.dumps({"error": text}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *SECURITY_HEADERS,
                NO_STORE,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _HttpMiddleware:
    """An ASGI middleware that acts on HTTP requests only: other scopes go straight to the app."""

    app: Any

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope: dict, receive: Any, send: Any) -> None:
        raise NotImplementedError


class BodyLimit(_HttpMiddleware):
    """ASGI middleware: refuse request bodies over ``limit`` bytes (413), declared or streamed."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def handle(self, scope: dict, receive: Any, send: Any) -> None:
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await plain_error(send, 413, f"request body over {self.limit} bytes")
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await plain_error(send, 413, f"request body over {self.limit} bytes")
                return
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class SecurityHeaders(_HttpMiddleware):
    """ASGI middleware: add the CSP and related headers to every response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def handle(self, scope: dict, receive: Any, send: Any) -> None:
        extra = SECURITY_HEADERS if scope["path"].startswith("/static/") else [*SECURITY_HEADERS, NO_STORE]

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class AccessGuard(_HttpMiddleware):
    """ASGI middleware: the Host check, then the token check (cookie, header or query for reads; header for writes).

    Args:
        app: The app behind the guard.
        options: Where the token and the port are read, at every request (the port is known once the
            server listens).
    """

    def __init__(self, app: Any, options: ReviewOptions) -> None:
        self.app, self.options = app, options

    async def handle(self, scope: dict, receive: Any, send: Any) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or []}
        refusal = self.refusal(scope, headers)
        if refusal is not None:
            await plain_error(send, *refusal)
            return
        await self.app(scope, receive, send)

    def refusal(self, scope: dict, headers: dict[str, str]) -> tuple[int, str] | None:
        """``(status, message)`` of why the request is refused, or ``None`` to let it through."""
        port = self.options.port
        if port is not None and headers.get("host", "") not in {f"127.0.0.1:{port}", f"localhost:{port}"}:
            return 400, "unexpected Host header (the review server answers on 127.0.0.1 only)"
        if scope["path"].startswith("/static/"):
            return None
        if scope["method"] not in ("GET", "HEAD"):
            return self._write_refusal(headers)
        if not (
            self.token_ok(cookie_value(headers.get("cookie", ""), self.options.cookie_name))
            or self.token_ok(headers.get("x-review-token"))
            or self.token_ok(query_token(scope))
        ):
            return 403, "open the URL with ?token=… that dspy-ext review printed"
        return None

    def _write_refusal(self, headers: dict[str, str]) -> tuple[int, str] | None:
        if not self.token_ok(headers.get("x-review-token")):
            return 403, "write refused: missing or wrong X-Review-Token"
        if headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return 415, "writes must be application/json"
        return None

    def token_ok(self, value: str | None) -> bool:
        """Whether ``value`` is the server's token (compared in constant time)."""
        return bool(value) and hmac.compare_digest(value.encode(), self.options.token.encode())


def guarded(app: Any, options: ReviewOptions, max_body: int) -> Any:
    """``app`` behind the security headers, the body limit and the access guard (outermost first)."""
    return SecurityHeaders(BodyLimit(AccessGuard(app, options), max_body))


def cookie_value(header: str, name: str) -> str | None:
    """The value of cookie ``name`` in a ``Cookie`` header, if there."""
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def query_token(scope: dict) -> str | None:
    """The ``token`` query parameter of a request, if there."""
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    return values[0] if values else None
