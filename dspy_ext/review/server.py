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

Example:
    >>> app = ReviewApp(ReviewStore("review.sqlite"))       # doctest: +SKIP
    >>> server = ReviewServer(app, port=0).start()          # doctest: +SKIP
    >>> server.url                                          # doctest: +SKIP
    'http://127.0.0.1:43817/?token=…'
    >>> server.stop()                                       # doctest: +SKIP
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import dspy
import uvicorn
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from dspy_ext.review.alignment import DEFAULT_THRESHOLD, align
from dspy_ext.review.criteria import CheckError, CheckSpec, CriterionProposer, LMJudge, ProposalError
from dspy_ext.review.sampling import NO_SIGNAL, NextItemSampler, SignalIndex
from dspy_ext.review.store import ItemSummary, ReviewError, ReviewItem, ReviewStore

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
DEFAULT_MAX_BODY = 64 * 1024
MAX_SKIPPED = 10_000
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


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes (413), declared or streamed."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _plain_error(send, 413, f"request body over {self.limit} bytes")
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await _plain_error(send, 413, f"request body over {self.limit} bytes")
                return
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class SecurityHeaders:
    """ASGI middleware: add the CSP and related headers to every response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        extra = SECURITY_HEADERS if scope["path"].startswith("/static/") else [*SECURITY_HEADERS, NO_STORE]

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _plain_error(send: Any, status: int, text: str) -> None:
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


class HttpError(Exception):
    """An error answered as ``{"error": message}`` with a status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ClientState:
    """Per-tab navigation state: how many picks it had, which unreviewed items it skipped."""

    picks: int = 0
    skipped: set[str] = field(default_factory=set)


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
    """

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
        self.changed_since = changed_since
        self.default_filter = "changed" if changed_since else "unreviewed"
        self.token = token or secrets.token_urlsafe(24)
        self.lm = lm
        self.adapter = adapter
        self.sampler = NextItemSampler(seed)
        self.index = SignalIndex(store)
        self.threshold = threshold
        self.title = title
        self.port: int | None = None
        self._clients: dict[str, ClientState] = {}
        self._clients_lock = threading.Lock()
        self._lm_lock = threading.Lock()
        # Grades change which check aligns best: re-run the alignment before the next read after a write.
        self._alignment_stale = True
        self._alignment_lock = threading.Lock()
        self.templates = Environment(
            loader=FileSystemLoader(str(HERE / "templates")),
            autoescape=select_autoescape(default=True, default_for_string=True),
        )
        routes = [
            Route("/", self.home),
            Route("/item/{key}", self.item_page),
            Route("/criteria", self.criteria_page),
            Route("/api/next", self.api_next),
            Route("/api/items/{key}", self.api_item),
            Route("/api/report", self.api_report),
            Route("/api/items/{key}/grade", self.api_grade, methods=["POST"]),
            Route("/api/items/{key}/reason", self.api_reason, methods=["POST"]),
            Route("/api/items/{key}/correction", self.api_correction, methods=["POST"]),
            Route("/api/items/{key}/criteria/{cid:int}", self.api_judgement, methods=["POST"]),
            Route("/api/undo", self.api_undo, methods=["POST"]),
            Route("/api/criteria", self.api_add_criterion, methods=["POST"]),
            Route("/api/criteria/{cid:int}", self.api_edit_criterion, methods=["POST"]),
            Route("/api/criteria/{cid:int}/checks", self.api_add_check, methods=["POST"]),
            Route("/api/criteria/{cid:int}/judge", self.api_run_judges, methods=["POST"]),
            Route("/api/propose", self.api_propose, methods=["POST"]),
            Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
        ]
        self.starlette = Starlette(routes=routes)
        self.asgi = SecurityHeaders(BodyLimit(self._guard(self.starlette), max_body))

    # ---- guards ---------------------------------------------------------------------------
    @property
    def cookie_name(self) -> str:
        # Cookies are not separated by port: name them per port so two servers do not clash.
        return f"dspy_ext_review_{self.port or 0}"

    def _guard(self, app: Any) -> Any:
        """ASGI wrapper: Host check, then token check (cookie or token for reads, header for writes)."""

        async def guarded(scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or []}
            host = headers.get("host", "")
            allowed = {f"127.0.0.1:{self.port}", f"localhost:{self.port}"}
            if self.port is not None and host not in allowed:
                await _plain_error(send, 400, "unexpected Host header (the review server answers on 127.0.0.1 only)")
                return
            path, method = scope["path"], scope["method"]
            if path.startswith("/static/"):
                await app(scope, receive, send)
                return
            if method not in ("GET", "HEAD"):
                if not self._token_ok(headers.get("x-review-token")):
                    await _plain_error(send, 403, "write refused: missing or wrong X-Review-Token")
                    return
                if headers.get("content-type", "").split(";")[0].strip() != "application/json":
                    await _plain_error(send, 415, "writes must be application/json")
                    return
            elif not (
                self._token_ok(_cookie(headers.get("cookie", ""), self.cookie_name))
                or self._token_ok(headers.get("x-review-token"))
                or self._token_ok(_query_token(scope))
            ):
                await _plain_error(send, 403, "open the URL with ?token=… that dspy-ext review printed")
                return
            await app(scope, receive, send)

        return guarded

    def _token_ok(self, value: str | None) -> bool:
        return bool(value) and hmac.compare_digest(value.encode(), self.token.encode())

    def _client(self, request: Request) -> tuple[str, ClientState]:
        name = (request.headers.get("x-review-client") or request.query_params.get("client") or "anonymous")[:64]
        with self._clients_lock:
            return name, self._clients.setdefault(name, ClientState())

    # ---- pages ----------------------------------------------------------------------------
    def _with_cookie(self, request: Request, response: Response) -> Response:
        if request.query_params.get("token"):
            response.set_cookie(self.cookie_name, self.token, httponly=True, samesite="strict", path="/")
        return response

    async def home(self, request: Request) -> Response:
        if request.query_params.get("token"):
            # Keep the token out of the address bar and history: set the cookie and redirect.
            query = {k: v for k, v in request.query_params.items() if k != "token"}
            target = "/" + (f"?{urlencode(query)}" if query else "")
            return self._with_cookie(request, RedirectResponse(target, status_code=303))
        filter_name = request.query_params.get("filter", self.default_filter)
        _, state = self._client(request)
        key, _ = await run_in_threadpool(self.next_key, filter_name, None, state)
        if key is None and filter_name != "all":
            key, _ = await run_in_threadpool(self.next_key, "all", None, state)
        if key is None:
            return HTMLResponse(self._render("empty.html", self._page_context(filter_name)))
        return RedirectResponse(f"/item/{key}?{urlencode({'filter': filter_name})}", status_code=303)

    async def item_page(self, request: Request) -> Response:
        key = request.path_params["key"]
        filter_name = request.query_params.get("filter", self.default_filter)
        try:
            context = await run_in_threadpool(self._item_context, key, filter_name)
        except ReviewError as exc:
            return HTMLResponse(
                self._render("empty.html", {**self._page_context(filter_name), "error": str(exc)}), status_code=404
            )
        return self._with_cookie(request, HTMLResponse(self._render("item.html", context)))

    async def criteria_page(self, request: Request) -> Response:
        report = await run_in_threadpool(align, self.store, self.threshold)
        context = {
            **self._page_context(request.query_params.get("filter", self.default_filter)),
            "report": report,
            "criteria_by_id": {c.id: c for c in self.store.criteria()},
        }
        return HTMLResponse(self._render("criteria.html", context))

    def _render(self, name: str, context: dict[str, Any]) -> str:
        return self.templates.get_template(name).render(**context)

    def _page_context(self, filter_name: str) -> dict[str, Any]:
        reviewed, total = self.store.progress()
        criteria = self.store.criteria()
        filters = [("unreviewed", "unreviewed"), ("all", "all"), ("bad", "bad"), ("good", "good")]
        if self.changed_since:
            filters.insert(0, ("changed", "changed outputs"))
        filters += [(f"crit:{c.id}", f"fails: {c.name}") for c in criteria]
        return {
            "title": self.title,
            "token": self.token,
            "reviewed": reviewed,
            "total": total,
            "filter": filter_name,
            "filters": filters,
            "criteria": criteria,
            "can_use_lm": self.lm is not None,
            "threshold": self.threshold,
        }

    def refresh_alignment(self) -> None:
        """Re-choose each criterion's check if labels changed since the last time."""
        with self._alignment_lock:
            if self._alignment_stale:
                self._alignment_stale = False
                align(self.store, self.threshold)

    def _item_context(self, key: str, filter_name: str) -> dict[str, Any]:
        self.refresh_alignment()
        item = self.store.item(key)
        context = self._page_context(filter_name)
        samples = self.store.samples_of_input(item.input_id)
        by_version: dict[str, list[dict[str, Any]]] = {}
        for sample in samples:
            by_version.setdefault(sample["prompt_version"], []).append(sample)
        sample_views = []
        for version, rows in by_version.items():
            graded = [r for r in rows if r["grade"]]
            good = sum(r["grade"] == "good" for r in graded)
            sample_views.append(
                {
                    "version": version,
                    "samples": rows,
                    "k": len(rows),
                    "graded": len(graded),
                    "good": good,
                    "pass_rate": f"{good / len(graded):.0%}" if graded else "n/a",
                }
            )
        prompts = []
        for version in item.prompt_versions:
            raw = self.store.get_meta(f"prompt:{version}")
            instruction = ""
            if raw:
                state = json.loads(raw)
                instruction = " | ".join(str(p.get("instructions", "")) for p in state.values())
            prompts.append({"version": version, "instruction": instruction})
        auto: dict[int, list[dict[str, Any]]] = {}
        for criterion in context["criteria"]:
            for check in criterion.checks:
                result = (
                    self.store.check_results(check.id).get(item.key)
                    if check.spec.needs_lm
                    else check.spec.passes(item.output_text)
                )
                auto.setdefault(criterion.id, []).append(
                    {"check": str(check.spec), "result": result, "chosen": check.id == criterion.chosen_check_id}
                )
        before = []
        if self.changed_since:
            for key_before in self.store.changed_outputs(self.changed_since).get(item.key, []):
                earlier = self.store.item(key_before)
                before.append({"item": earlier, "versions": [v[:12] for v in earlier.prompt_versions]})
        signals = self.index.signals()
        state = {
            "key": item.key,
            "grade": item.grade,
            "reason": item.reason or "",
            "correction": item.correction or "",
            "filter": filter_name,
            "criteria": [{"id": c.id, "name": c.name, "mark": item.judgements.get(c.id)} for c in context["criteria"]],
        }
        context.update(
            {
                "item": item,
                "samples": sample_views,
                "prompts": prompts,
                "auto": auto,
                "before": before,
                "signal": signals.get(item.key, NO_SIGNAL),
                "state": state,
            }
        )
        return context

    # ---- navigation -----------------------------------------------------------------------
    def _filtered(self, items: list[ItemSummary], filter_name: str) -> list[ItemSummary]:
        if filter_name == "unreviewed":
            return [i for i in items if i.grade is None]
        if filter_name == "all":
            return items
        if filter_name in ("bad", "good"):
            return [i for i in items if i.grade == filter_name]
        if filter_name == "changed":
            if not self.changed_since:
                raise HttpError(400, "filter 'changed' needs a prompt version to compare (dspy-ext review RUN)")
            changed = self.store.changed_outputs(self.changed_since)
            return [i for i in items if i.key in changed]
        if filter_name.startswith("crit:") and filter_name[5:].isdigit():
            cid = int(filter_name[5:])
            criterion = next((c for c in self.store.criteria(include_archived=True) if c.id == cid), None)
            if criterion is None:
                raise HttpError(400, f"no criterion {cid}")
            # Failing = marked failed by the reviewer, or (unmarked) failed by the chosen check.
            marks = self.store.judgements_of(cid)
            chosen = criterion.chosen_check
            outcomes = self.index.outcomes(chosen, [i.key for i in items]) if chosen is not None else {}
            return [i for i in items if (not marks[i.key] if i.key in marks else outcomes.get(i.key) is False)]
        raise HttpError(400, f"unknown filter {filter_name!r} (unreviewed, all, bad, good, changed, crit:ID)")

    def next_key(self, filter_name: str, current: str | None, state: ClientState) -> tuple[str | None, str]:
        """The next item for a tab: the sampler over unreviewed items, file order for the other filters.

        Returns:
            ``(key or None, how it was picked)``.
        """
        if filter_name.startswith("crit:"):
            self.refresh_alignment()
        items = self.store.summaries()
        candidates = self._filtered(items, filter_name)
        if filter_name != "unreviewed":
            if not candidates:
                return None, ""
            seqs = {i.key: i.seq for i in items}
            after = seqs.get(current or "", 0)
            following = [i for i in candidates if i.seq > after]
            return (following or candidates)[0].key, "in order"
        if current:
            state.skipped.add(current)  # passing an unreviewed item without grading skips it this session
            if len(state.skipped) > MAX_SKIPPED:
                state.skipped.clear()
        fresh = [i for i in candidates if i.key not in state.skipped]
        if not fresh:
            state.skipped.clear()
            fresh = [i for i in candidates if i.key != current] or candidates
        signals = self.index.signals(items)
        chosen, how = self.sampler.pick(fresh, state.picks, signals)
        state.picks += 1
        return (chosen.key if chosen else None), how

    async def api_next(self, request: Request) -> Response:
        _, state = self._client(request)
        try:
            key, how = await run_in_threadpool(
                self.next_key,
                request.query_params.get("filter", self.default_filter),
                request.query_params.get("current") or None,
                state,
            )
        except HttpError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        return JSONResponse({"key": key, "how": how})

    # ---- JSON API -------------------------------------------------------------------------
    async def _write(self, request: Request, action: Any) -> Response:
        """Read the JSON body, run ``action(body, client)`` in a thread, answer JSON."""
        try:
            body = json.loads((await request.body()) or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return JSONResponse({"error": "the body is not valid JSON"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
        client, _ = self._client(request)
        self._alignment_stale = True
        try:
            result = await run_in_threadpool(action, body, client)
        except HttpError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        except (ReviewError, CheckError, ProposalError) as exc:
            status = 404 if str(exc).startswith("no review item") else 400
            return JSONResponse({"error": str(exc)}, status_code=status)
        return JSONResponse(result)

    def _item_json(self, item: ReviewItem) -> dict[str, Any]:
        reviewed, total = self.store.progress()
        return {
            "key": item.key,
            "grade": item.grade,
            "reason": item.reason,
            "correction": item.correction,
            "judgements": {str(k): v for k, v in item.judgements.items()},
            "inputs": item.inputs,
            "outputs": item.outputs,
            "gold": item.gold,
            "prompt_versions": item.prompt_versions,
            "reviewed": reviewed,
            "total": total,
            "saved_at": time.time(),
        }

    async def api_item(self, request: Request) -> Response:
        try:
            item = await run_in_threadpool(self.store.item, request.path_params["key"])
        except ReviewError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return JSONResponse(self._item_json(item))

    async def api_report(self, request: Request) -> Response:
        report = await run_in_threadpool(align, self.store, self.threshold)
        return JSONResponse(report.to_dict())

    async def api_grade(self, request: Request) -> Response:
        key = request.path_params["key"]

        def action(body: dict, client: str) -> dict:
            grade = body.get("grade")
            reason = _optional_text(body, "reason")
            return self._item_json(self.store.set_grade(key, grade, reason, client=client))

        return await self._write(request, action)

    async def api_reason(self, request: Request) -> Response:
        key = request.path_params["key"]
        return await self._write(
            request,
            lambda body, client: self._item_json(
                self.store.set_reason(key, _required_text(body, "reason"), client=client)
            ),
        )

    async def api_correction(self, request: Request) -> Response:
        key = request.path_params["key"]
        return await self._write(
            request,
            lambda body, client: self._item_json(
                self.store.set_correction(key, _optional_text(body, "correction") or "", client=client)
            ),
        )

    async def api_judgement(self, request: Request) -> Response:
        key, cid = request.path_params["key"], request.path_params["cid"]

        def action(body: dict, client: str) -> dict:
            passed = body.get("passed")
            if passed is not None and not isinstance(passed, bool):
                raise HttpError(400, "passed must be true, false or null")
            return self._item_json(self.store.set_judgement(key, cid, passed, client=client))

        return await self._write(request, action)

    async def api_undo(self, request: Request) -> Response:
        return await self._write(request, lambda body, client: {"key": self.store.undo(client)})

    async def api_add_criterion(self, request: Request) -> Response:
        def action(body: dict, client: str) -> dict:
            check_text = (_optional_text(body, "check") or "").strip()
            check = CheckSpec.parse(check_text) if check_text else None
            criterion = self.store.add_criterion(
                _required_text(body, "name"), _optional_text(body, "description") or "", check
            )
            align(self.store, self.threshold)
            return {"id": criterion.id, "name": criterion.name, "version": criterion.version}

        return await self._write(request, action)

    async def api_edit_criterion(self, request: Request) -> Response:
        cid = request.path_params["cid"]

        def action(body: dict, client: str) -> dict:
            archived = body.get("archived")
            if archived is not None and not isinstance(archived, bool):
                raise HttpError(400, "archived must be true or false")
            criterion = self.store.update_criterion(
                cid,
                name=_optional_text(body, "name"),
                description=_optional_text(body, "description"),
                archived=archived,
            )
            return {"id": criterion.id, "name": criterion.name, "version": criterion.version}

        return await self._write(request, action)

    async def api_add_check(self, request: Request) -> Response:
        cid = request.path_params["cid"]

        def action(body: dict, client: str) -> dict:
            check_id = self.store.add_check(cid, CheckSpec.parse(_required_text(body, "check")))
            report = align(self.store, self.threshold)
            return {"check_id": check_id, "report": report.to_dict()}

        return await self._write(request, action)

    async def api_run_judges(self, request: Request) -> Response:
        cid = request.path_params["cid"]

        def action(body: dict, client: str) -> dict:
            if self.lm is None:
                raise HttpError(503, "no LM: start dspy-ext review with a program and --lm to run judges")
            criterion = self.store.criterion(cid)
            judged = 0
            labelled = [i for i in self.store.items() if i.grade is not None or cid in i.judgements]
            with self._lm_lock:  # one judge run at a time
                for check in (c for c in criterion.checks if c.spec.needs_lm):
                    judge = LMJudge(criterion.description or criterion.name, self.lm, self.adapter)
                    done = self.store.check_results(check.id)
                    results = {i.key: judge.passes(i.input_text, i.output_text) for i in labelled if i.key not in done}
                    self.store.record_check_results(check.id, results)
                    judged += len(results)
            report = align(self.store, self.threshold)
            return {"judged": judged, "report": report.to_dict()}

        return await self._write(request, action)

    async def api_propose(self, request: Request) -> Response:
        def action(body: dict, client: str) -> dict:
            if self.lm is None:
                raise HttpError(503, "no LM: start dspy-ext review with a program to get proposals")
            item = self.store.item(_required_text(body, "item"))
            critique = _optional_text(body, "reason") or item.reason or ""
            existing = [f"{c.name}: {c.description}" for c in self.store.criteria()]
            with self._lm_lock:
                proposer = CriterionProposer(self.lm, self.adapter)
                proposal = proposer.propose(item.input_text, item.output_text, critique, existing)
            return {"name": proposal.name, "description": proposal.description}

        return await self._write(request, action)


def _required_text(body: dict, name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise HttpError(400, f"{name!r} must be a string")
    return value


def _optional_text(body: dict, name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise HttpError(400, f"{name!r} must be a string or null")
    return value


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def _query_token(scope: dict) -> str | None:
    from urllib.parse import parse_qs

    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    return values[0] if values else None


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
