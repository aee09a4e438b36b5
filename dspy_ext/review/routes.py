"""The review page's endpoints: the HTML pages and the JSON API the page script calls.

Every write is JSON in, JSON out, run in a worker thread: ``{"error": message}`` with 400 for a
refused action, 404 for an unknown item, 503 for an LM action without an LM. A write marks the
alignment stale, so the next read re-chooses each criterion's check.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from dspy_ext.review.alignment import AlignmentCache, align
from dspy_ext.review.criteria import CheckError, CheckSpec, ProposalError
from dspy_ext.review.guard import HttpError
from dspy_ext.review.judging import NO_LM_TO_PROPOSE, ReviewJudges
from dspy_ext.review.navigation import MAX_CLIENT_NAME, ClientRegistry, ClientState, Navigator
from dspy_ext.review.options import ReviewOptions
from dspy_ext.review.records import ReviewError
from dspy_ext.review.store import ReviewStore
from dspy_ext.review.views import ReviewViews

STATIC = Path(__file__).parent / "static"

#: A write action: the request's JSON object and the writing client's name -> the JSON answer.
Action = Callable[[dict, str], dict]


def client_name(request: Request) -> str:
    """The browser tab a request comes from (``X-Review-Client``, ``?client=``, else ``"anonymous"``)."""
    return (request.headers.get("x-review-client") or request.query_params.get("client") or "anonymous")[
        :MAX_CLIENT_NAME
    ]


def required_text(body: dict, name: str) -> str:
    """``body[name]``, which must be a string (:class:`HttpError` 400)."""
    value = body.get(name)
    if not isinstance(value, str):
        raise HttpError(400, f"{name!r} must be a string")
    return value


def optional_text(body: dict, name: str) -> str | None:
    """``body[name]``, which must be a string or missing/null (:class:`HttpError` 400)."""
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise HttpError(400, f"{name!r} must be a string or null")
    return value


def optional_flag(body: dict, name: str, message: str) -> bool | None:
    """``body[name]``, which must be true, false or missing/null (:class:`HttpError` 400 with ``message``)."""
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise HttpError(400, message)
    return value


def error_answer(exc: Exception) -> JSONResponse:
    """The JSON answer of an action that raised ``exc``."""
    if isinstance(exc, HttpError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)
    status = 404 if str(exc).startswith("no review item") else 400
    return JSONResponse({"error": str(exc)}, status_code=status)


@dataclass(frozen=True)
class ReviewParts:
    """The parts of a review page the endpoints call.

    Attributes:
        store: The review store.
        views: Builds and renders the pages.
        navigator: Filters items and picks the next one.
        clients: Each tab's navigation state.
        alignment: Marked stale by every write.
        judges: The LM actions.
        options: The page's settings.
    """

    store: ReviewStore
    views: ReviewViews
    navigator: Navigator
    clients: ClientRegistry
    alignment: AlignmentCache
    judges: ReviewJudges
    options: ReviewOptions


class _Endpoints:
    """Endpoints over a page's parts (each part an attribute)."""

    def __init__(self, parts: ReviewParts) -> None:
        self.store, self.views, self.navigator, self.clients = parts.store, parts.views, parts.navigator, parts.clients
        self.alignment, self.judges, self.options = parts.alignment, parts.judges, parts.options


class PageRoutes(_Endpoints):
    """The HTML pages: ``/`` (picks an item), ``/item/{key}`` and ``/criteria``."""

    def _with_cookie(self, request: Request, response: Response) -> Response:
        if request.query_params.get("token"):
            response.set_cookie(
                self.options.cookie_name, self.options.token, httponly=True, samesite="strict", path="/"
            )
        return response

    def _filter(self, request: Request) -> str:
        return request.query_params.get("filter", self.options.default_filter)

    async def home(self, request: Request) -> Response:
        if request.query_params.get("token"):
            # Keep the token out of the address bar and history: set the cookie and redirect.
            query = {k: v for k, v in request.query_params.items() if k != "token"}
            target = "/" + (f"?{urlencode(query)}" if query else "")
            return self._with_cookie(request, RedirectResponse(target, status_code=303))
        filter_name = self._filter(request)
        state = self.clients.state(client_name(request))
        try:
            key, _ = await run_in_threadpool(self.navigator.next_key, filter_name, None, state)
        except HttpError as exc:  # an unknown filter or criterion: say so on the page
            page = {**self.views.page_context(self.options.default_filter), "error": str(exc)}
            return HTMLResponse(self.views.render("empty.html", page), status_code=exc.status)
        if key is None and filter_name != "all":
            key, _ = await run_in_threadpool(self.navigator.next_key, "all", None, state)
        if key is None:
            return HTMLResponse(self.views.render("empty.html", self.views.page_context(filter_name)))
        return RedirectResponse(f"/item/{key}?{urlencode({'filter': filter_name})}", status_code=303)

    async def item_page(self, request: Request) -> Response:
        key = request.path_params["key"]
        filter_name = self._filter(request)
        try:
            context = await run_in_threadpool(self.views.item_context, key, filter_name)
        except ReviewError as exc:
            page = {**self.views.page_context(filter_name), "error": str(exc)}
            return HTMLResponse(self.views.render("empty.html", page), status_code=404)
        return self._with_cookie(request, HTMLResponse(self.views.render("item.html", context)))

    async def criteria_page(self, request: Request) -> Response:
        report = await run_in_threadpool(align, self.store, self.options.threshold)
        context = self.views.criteria_context(self._filter(request), report)
        return HTMLResponse(self.views.render("criteria.html", context))

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", self.home),
            Route("/item/{key}", self.item_page),
            Route("/criteria", self.criteria_page),
        ]


class ApiRoutes(_Endpoints):
    """The JSON API under ``/api``: navigation, item reads, label and criterion writes, LM actions."""

    def routes(self) -> list[BaseRoute]:
        post = ["POST"]
        return [
            Route("/api/next", self.api_next),
            Route("/api/items/{key}", self.api_item),
            Route("/api/report", self.api_report),
            Route("/api/items/{key}/grade", self.api_grade, methods=post),
            Route("/api/items/{key}/reason", self.api_reason, methods=post),
            Route("/api/items/{key}/correction", self.api_correction, methods=post),
            Route("/api/items/{key}/criteria/{cid:int}", self.api_judgement, methods=post),
            Route("/api/undo", self.api_undo, methods=post),
            Route("/api/criteria", self.api_add_criterion, methods=post),
            Route("/api/criteria/{cid:int}", self.api_edit_criterion, methods=post),
            Route("/api/criteria/{cid:int}/checks", self.api_add_check, methods=post),
            Route("/api/criteria/{cid:int}/judge", self.api_run_judges, methods=post),
            Route("/api/propose", self.api_propose, methods=post),
        ]

    # ---- reads --------------------------------------------------------------------------------
    async def api_next(self, request: Request) -> Response:
        state: ClientState = self.clients.state(client_name(request))
        try:
            key, how = await run_in_threadpool(
                self.navigator.next_key,
                request.query_params.get("filter", self.options.default_filter),
                request.query_params.get("current") or None,
                state,
            )
        except HttpError as exc:
            return error_answer(exc)
        return JSONResponse({"key": key, "how": how})

    async def api_item(self, request: Request) -> Response:
        try:
            item = await run_in_threadpool(self.store.item, request.path_params["key"])
        except ReviewError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return JSONResponse(self.views.item_json(item))

    async def api_report(self, request: Request) -> Response:
        report = await run_in_threadpool(align, self.store, self.options.threshold)
        return JSONResponse(report.to_dict())

    # ---- writes -------------------------------------------------------------------------------
    async def _write(self, request: Request, action: Action) -> Response:
        """Read the JSON body, run ``action(body, client)`` in a thread, answer JSON."""
        try:
            body = json.loads((await request.body()) or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return JSONResponse({"error": "the body is not valid JSON"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
        client = client_name(request)
        self.clients.state(client)
        self.alignment.mark_stale()
        try:
            result = await run_in_threadpool(action, body, client)
        except (HttpError, ReviewError, CheckError, ProposalError) as exc:
            return error_answer(exc)
        return JSONResponse(result)

    async def api_grade(self, request: Request) -> Response:
        key = request.path_params["key"]

        def action(body: dict, client: str) -> dict:
            grade = body.get("grade")
            reason = optional_text(body, "reason")
            return self.views.item_json(self.store.set_grade(key, grade, reason, client=client))

        return await self._write(request, action)

    async def api_reason(self, request: Request) -> Response:
        key = request.path_params["key"]

        def action(body: dict, client: str) -> dict:
            return self.views.item_json(self.store.set_reason(key, required_text(body, "reason"), client=client))

        return await self._write(request, action)

    async def api_correction(self, request: Request) -> Response:
        key = request.path_params["key"]

        def action(body: dict, client: str) -> dict:
            correction = optional_text(body, "correction") or ""
            return self.views.item_json(self.store.set_correction(key, correction, client=client))

        return await self._write(request, action)

    async def api_judgement(self, request: Request) -> Response:
        key, cid = request.path_params["key"], request.path_params["cid"]

        def action(body: dict, client: str) -> dict:
            passed = optional_flag(body, "passed", "passed must be true, false or null")
            return self.views.item_json(self.store.set_judgement(key, cid, passed, client=client))

        return await self._write(request, action)

    async def api_undo(self, request: Request) -> Response:
        return await self._write(request, lambda body, client: {"key": self.store.undo(client)})

    async def api_add_criterion(self, request: Request) -> Response:
        def action(body: dict, client: str) -> dict:
            check_text = (optional_text(body, "check") or "").strip()
            check = CheckSpec.parse(check_text) if check_text else None
            criterion = self.store.add_criterion(
                required_text(body, "name"), optional_text(body, "description") or "", check
            )
            align(self.store, self.options.threshold)
            return {"id": criterion.id, "name": criterion.name, "version": criterion.version}

        return await self._write(request, action)

    async def api_edit_criterion(self, request: Request) -> Response:
        cid = request.path_params["cid"]

        def action(body: dict, client: str) -> dict:
            archived = optional_flag(body, "archived", "archived must be true or false")
            criterion = self.store.update_criterion(
                cid,
                name=optional_text(body, "name"),
                description=optional_text(body, "description"),
                archived=archived,
            )
            return {"id": criterion.id, "name": criterion.name, "version": criterion.version}

        return await self._write(request, action)

    async def api_add_check(self, request: Request) -> Response:
        cid = request.path_params["cid"]

        def action(body: dict, client: str) -> dict:
            check_id = self.store.add_check(cid, CheckSpec.parse(required_text(body, "check")))
            report = align(self.store, self.options.threshold)
            return {"check_id": check_id, "report": report.to_dict()}

        return await self._write(request, action)

    async def api_run_judges(self, request: Request) -> Response:
        cid = request.path_params["cid"]

        def action(body: dict, client: str) -> dict:
            judged = self.judges.run_judges(cid)
            report = align(self.store, self.options.threshold)
            return {"judged": judged, "report": report.to_dict()}

        return await self._write(request, action)

    async def api_propose(self, request: Request) -> Response:
        def action(body: dict, client: str) -> dict:
            self.judges.require_lm(NO_LM_TO_PROPOSE)
            item = self.store.item(required_text(body, "item"))
            critique = optional_text(body, "reason") or item.reason or ""
            proposal = self.judges.propose(item, critique)
            return {"name": proposal.name, "description": proposal.description}

        return await self._write(request, action)


def static_route() -> Mount:
    """``/static``: the page's stylesheet and script."""
    return Mount("/static", app=StaticFiles(directory=str(STATIC)), name="static")
